"""The select stage of the decode op alone, on the GPU: passes per row and time per call.

    python3 scripts/bench_select.py      (from the repo root on the H200; see docs/performance.md)

Llama-3.2-1B decode rows (B*32 ranking rows of N randn fp32 scores), c = 0.15, k_min 64: time of
one `_select_kernel` launch (median of CUDA-graph replays) for the op's default setting and a few
others (block >= N: the row stays in registers), the mean and max number of passes over a row, and
a check of every row's threshold tau: at most k_eff scores above it, at least k_eff at or above it.
"""
import torch

from producers.kernels.decode import _select_kernel

dev = "cuda"
for N, B in ((8192, 4), (32768, 1), (32768, 4), (131072, 4)):
    rows = B * 32
    S = torch.randn(rows, N, device=dev)
    lengths = torch.full((B,), N, device=dev, dtype=torch.int32)
    thr = torch.empty(rows, 2, device=dev, dtype=torch.int32)
    passes = torch.empty(rows, device=dev, dtype=torch.int32)
    k = int(0.15 * N)
    cfgs = [(BL, W) for BL, W in ((8192, 8), (32768, 8), (32768, 16)) if BL >= N] + [(4096, 16)]
    for BLOCK, W in cfgs:
        def f():
            _select_kernel[(rows,)](S, lengths, thr, passes, N, 32, 3, 20, 64, 0, SAMP=256, BLOCK=BLOCK,
                                    RESIDENT=BLOCK >= N, num_warps=W)
        f()
        torch.cuda.synchronize()
        key = thr[:, 0]
        fl = torch.where(key < 0, key ^ 0x7FFFFFFF, key).view(torch.float32)
        ok = bool(((S > fl[:, None]).sum(1) <= k).all() and ((S >= fl[:, None]).sum(1) >= k).all())
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(20):
                f()
        ts = []
        for _ in range(10):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            g.replay()
            e1.record()
            e1.synchronize()
            ts.append(e0.elapsed_time(e1) / 20 * 1e3)
        ts.sort()
        pf = passes.float()
        print(f"N={N} B={B} BLOCK={BLOCK} W={W} resident={BLOCK >= N}: {ts[len(ts)//2]:7.1f} us  passes mean "
              f"{pf.mean():.2f} max {int(pf.max())}  ok={ok}", flush=True)
