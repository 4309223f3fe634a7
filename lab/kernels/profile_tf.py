"""One teacher-forced Top-K attention call at Llama-3.2-1B shapes (bf16, random inputs), for a profiler:

    ncu --clock-control none --kernel-name regex:_tf_ --launch-skip 2 --launch-count 2 --set full \
        -o OUT/tf python3 lab/kernels/profile_tf.py --n 8192

The first call compiles and warms up; the second is the one to profile (hence --launch-skip 2: each call launches a counting kernel and an attention kernel).
"""
import argparse

import torch

from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.teacher_forced import teacher_forced_triton

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--n", type=int, default=8192, help="window length (keys = queries)")
ap.add_argument("--c", default="0.15", help="coverage")
args = ap.parse_args()
gen = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(1, 32, args.n, 64, device="cuda", generator=gen).bfloat16()
k = torch.randn(1, 8, args.n, 64, device="cuda", generator=gen).bfloat16()
v = torch.randn(1, 8, args.n, 64, device="cuda", generator=gen).bfloat16()
rule = TopKRule(args.c, 64, 0)
for _ in range(2):
    out, ex = teacher_forced_triton(q, k, v, rule, return_passes=True)
torch.cuda.synchronize()
print(f"N={args.n} c={args.c}: passes mean {ex['passes'].float().mean():.2f} max {ex['passes'].max().item()}")
