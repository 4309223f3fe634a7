"""The decode op's whole-row counting search alone (the resolve stage's fallback, taken when the band
misses or its candidate list overflows): passes per row, and (on a GPU) time per call.

    python3 lab/kernels/bench_select.py      on the H200: Llama-3.2-1B decode rows (B*32 rows of N
                                             randn fp32 scores), the op's default setting and others
    python lab/kernels/bench_select.py --cpu [KIND ...]   Triton interpreter, pass counts only (about
                                             80 s on 2 cores): fixed seeded rows of five score shapes
                                             (SELECT_SAMPLE=512 in the environment: a larger sample)

c = 0.15, k_min 64. Pass counts depend only on the inputs and the search, not on the machine, so
the CPU mode compares variants of the search without a GPU. Every row's threshold tau is checked:
at most k_eff scores above it, at least k_eff at or above it.
"""
import os
import sys

CPU = "--cpu" in sys.argv[1:]
if CPU:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from dcr.prereg.rule import TopKRule  # noqa: E402
from dcr.producers.kernels.decode import _resolve_kernel  # noqa: E402
from dcr.producers.kernels.triton_rule import rule_args  # noqa: E402

RULE = TopKRule("0.15", 64, 0)


def scores(kind: str, rows: int, N: int, device: str) -> torch.Tensor:
    """[rows, N] fp32 ranking scores of one shape, seeded by (kind, rows, N)."""
    torch.manual_seed(N + rows + len(kind))
    if kind == "randn":
        s = torch.randn(rows, N)
    elif kind == "qk_bf16":  # what the decode benchmark ranks: bf16 randn q . k, fp32 sums (4 rows share k)
        q = torch.randn(rows, 64).bfloat16().float()
        k = torch.randn(rows // 4, N, 64).bfloat16().float()
        s = (q.view(rows // 4, 4, 64) @ k.transpose(1, 2)).reshape(rows, N)
    elif kind == "sink":  # attention-sink outliers plus a drift along the position
        s = torch.randn(rows, N) * 0.5 + torch.linspace(0, 2, N)
        s[:, :4] = 50.0
    else:  # "heavy": Student t(2)
        s = torch.distributions.StudentT(2.0).sample((rows, N)) * 3
    return s.to(device)


def select(S: torch.Tensor, block: int, warps: int, samp: int = 256):
    """One launch over every row of S (samp: scores in the first probes' sample; block: scores per tile
    of a pass): (launch, passes [rows], ok). No candidates and nothing above the band: every row takes
    the whole-row search."""
    rows, N = S.shape
    dev = S.device
    lengths = torch.full((rows // 8,), N, device=dev, dtype=torch.int32)  # 8 ranking rows per batch
    thr = torch.empty(rows, 2, device=dev, dtype=torch.int32)
    passes = torch.empty(rows, device=dev, dtype=torch.int32)
    path = torch.empty(rows, device=dev, dtype=torch.int32)
    zero = torch.zeros(rows, device=dev, dtype=torch.int32)
    band = torch.zeros(rows, 2, device=dev)
    cand_s, cand_i = torch.empty(rows, 16, device=dev), torch.empty(rows, 16, device=dev, dtype=torch.int32)

    def launch():
        _resolve_kernel[(rows,)](S, band, zero, zero, cand_s, cand_i, lengths, thr, passes, path, N, 8,
                                 *rule_args(RULE), SAMP=samp, CAP=16, BLOCK=block, PDL=False, num_warps=warps)
    launch()
    k = RULE.k_eff(N)
    key = thr[:, 0]
    fl = torch.where(key < 0, key ^ 0x7FFFFFFF, key).view(torch.float32)
    ok = bool(((S > fl[:, None]).sum(1) <= k).all() and ((S >= fl[:, None]).sum(1) >= k).all())
    return launch, passes.float(), ok


def median_us(fn) -> float:
    """Median time of one call over 10 replays of a CUDA graph of 20 calls."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(20):
            fn()
    ts = []
    for _ in range(10):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) / 20 * 1e3)
    return sorted(ts)[len(ts) // 2]


def main() -> None:
    if CPU:
        kinds = [a for a in sys.argv[1:] if not a.startswith("--")]  # optional: only these kinds
        for N, rows, kind in ((32768, 96, "randn"), (32768, 64, "sink"), (32768, 64, "heavy"), (8192, 128, "randn"),
                              (32768, 128, "qk_bf16")):
            if kinds and kind not in kinds:
                continue
            samp = int(os.environ.get("SELECT_SAMPLE", "256"))
            _, p, ok = select(scores(kind, rows, N, "cpu"), 4096, 8, samp)
            print(f"{rows} x {N} {kind} sample {samp}: passes mean {p.mean():.2f} max {int(p.max())} "
                  f"(histogram {torch.bincount(p.long()).tolist()})  thresholds ok={ok}", flush=True)
    else:
        for N, B in ((8192, 4), (32768, 1), (32768, 4), (131072, 4)):
            S = scores("randn", B * 32, N, "cuda")
            for (block, warps), samp in [(cf, samp) for cf in ((4096, 16), (4096, 8)) for samp in (256, 512, 1024)]:
                launch, p, ok = select(S, block, warps, samp)
                print(f"N={N} B={B} BLOCK={block} W={warps} sample={samp}: {median_us(launch):7.1f} us  "
                      f"passes mean {p.mean():.2f} max {int(p.max())}  ok={ok}", flush=True)


if __name__ == "__main__":
    main()
