"""Passes per row of the decode op's select stage, on the CPU (Triton interpreter), for fixed inputs.

    python scripts/select_passes.py        (about 20 s on 2 cores)

The counts depend only on the inputs and the search (not on the machine), so they compare versions
of the search without a GPU. Rows are held in registers as on the GPU for N <= 32K; c = 0.15,
k_min 64; every row's threshold is checked (at most k_eff scores above it, at least k_eff at or
above it). Timing: scripts/bench_select.py on a GPU.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from producers.kernels.decode import _select_kernel  # noqa: E402

for N, rows, kind in ((32768, 96, "randn"), (32768, 64, "sink"), (32768, 64, "heavy"), (8192, 128, "randn")):
    g = torch.Generator().manual_seed(N + rows + len(kind))
    if kind == "randn":
        S = torch.randn(rows, N, generator=g)
    elif kind == "sink":  # attention-sink outliers plus a drift along the position
        S = torch.randn(rows, N, generator=g) * 0.5 + torch.linspace(0, 2, N)
        S[:, :4] = 50.0
    else:  # heavy tails: Student t(2)
        torch.manual_seed(N + rows)
        S = torch.distributions.StudentT(2.0).sample((rows, N)) * 3
    lengths = torch.full((rows // 8,), N, dtype=torch.int32)
    thr = torch.empty(rows, 2, dtype=torch.int32)
    passes = torch.empty(rows, dtype=torch.int32)
    _select_kernel[(rows,)](S, lengths, thr, passes, N, 8, 3, 20, 64, 0, SAMP=256, BLOCK=N, RESIDENT=True,
                            num_warps=8)
    k = int(0.15 * N)
    key = thr[:, 0]
    fl = torch.where(key < 0, key ^ 0x7FFFFFFF, key).view(torch.float32)
    ok = bool(((S > fl[:, None]).sum(1) <= k).all() and ((S >= fl[:, None]).sum(1) >= k).all())
    p = passes.float()
    print(f"{rows} x {N} {kind}: passes mean {p.mean():.2f} max {int(p.max())}  thresholds ok={ok}", flush=True)
