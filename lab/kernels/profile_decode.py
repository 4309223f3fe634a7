"""Decode op calls at Llama-3.2-1B shapes (bf16, random inputs, full caches), for a profiler:

    ncu --clock-control none --kernel-name regex:"_sample|_score|_resolve|_attend" --launch-skip 4 --launch-count 4 \
        --set full -o OUT/decode python3 lab/kernels/profile_decode.py --n 32768 --b 4

Two calls: the first warms up, the second is the one to profile (each call launches sample, score,
resolve, attend, combine; the regex drops combine). --selection picks the rule.
"""
import argparse

import torch

from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.decode import DecodeWorkspace, topk_decode

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--n", type=int, default=32768, help="cache length")
ap.add_argument("--b", type=int, default=4, help="batch")
ap.add_argument("--c", default="0.15", help="coverage")
ap.add_argument("--selection", default="query_head", help="query_head or kv_group")
args = ap.parse_args()
gen = torch.Generator(device="cuda").manual_seed(0)
B, N = args.b, args.n
q = torch.randn(B, 32, 64, device="cuda", generator=gen).bfloat16()
k = torch.randn(B, 8, N, 64, device="cuda", generator=gen).bfloat16()
v = torch.randn(B, 8, N, 64, device="cuda", generator=gen).bfloat16()
lengths = torch.full((B,), N, device="cuda", dtype=torch.int32)
rule = TopKRule(args.c, 64, 0, selection=args.selection)
ws = DecodeWorkspace(B, 32, 8, N, 64, args.selection, "cuda")
for _ in range(2):
    out = topk_decode(q, k, v, lengths, rule, workspace=ws, check_lengths=False)
torch.cuda.synchronize()
print(f"N={N} B={B} c={args.c} {args.selection}: passes mean {ws.passes.float().mean():.2f} max {ws.passes.max().item()}, "
      f"paths (band, missed, overflowed, dense) {torch.bincount(ws.path.long(), minlength=4).tolist()}")
