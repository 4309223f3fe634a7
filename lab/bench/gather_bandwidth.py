"""Bandwidth of gathering random K and V rows (128 B each at D = 64, bf16), as the kv_group attend does:
the ceiling its byte floor should be measured against, next to the streaming copy bandwidth.

    python3 lab/bench/gather_bandwidth.py                      # GPU: B 4, Hkv 8, N 32K, densities 1, 0.3, 0.15, 0.05
    TRITON_INTERPRET=1 python3 lab/bench/gather_bandwidth.py --cpu-check   # the kernel vs torch, tiny shapes

For each density d, every (b, kv head) row keeps a random d * N of its keys; the key indices of each chunk
of 2,048 keys are listed in index order (as the attend compacts them). ``--sets`` independent draws are
timed in turn, so that a call's rows are not the previous call's (in L2, 50 MB on an H100) beyond the
chance overlap d. One program per (row, chunk) gathers
its listed K and V rows in tiles of ``--tile`` rows (``--stages`` software-pipeline stages) and sums them
(fp32, one [D] vector written per program). Output checked against torch before timing; times are medians
of interleaved CUDA-graph replays; bandwidth = bytes of the gathered rows / time.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl


@triton.jit
def _gather_sum(K, V, IDX, CNT, OUT, T, NCH, D: tl.constexpr, CH: tl.constexpr, TILE: tl.constexpr,
                STAGES: tl.constexpr):
    """OUT[row, ch, :] = sum over the listed keys n of K[row, n, :] + V[row, n, :] (fp32)."""
    row = tl.program_id(0)
    ch = tl.program_id(1)
    count = tl.load(CNT + row * NCH + ch)
    d = tl.arange(0, D)
    base = row.to(tl.int64) * T
    ibase = IDX + base + ch * CH
    acc = tl.zeros([TILE, D], dtype=tl.float32)
    for j0 in tl.range(0, count, TILE, num_stages=STAGES):
        j = j0 + tl.arange(0, TILE)
        jv = j < count
        n = tl.load(ibase + j, mask=jv, other=0).to(tl.int64)
        off = (base + n)[:, None] * D + d[None, :]
        k = tl.load(K + off, mask=jv[:, None], other=0.0)
        v = tl.load(V + off, mask=jv[:, None], other=0.0)
        acc += k.to(tl.float32) + v.to(tl.float32)
    tl.store(OUT + (row * NCH + ch).to(tl.int64) * D + d, tl.sum(acc, 0))


def lists(rows: int, T: int, CH: int, density: float, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random keys per row (each kept with probability ``density``), listed per chunk in index order:
    (IDX [rows, T] int32, the chunk's list at [ch * CH, ch * CH + count)), (CNT [rows, T // CH] int32)."""
    keep = torch.rand(rows, T, generator=gen) < density
    nch = T // CH
    keep = keep.view(rows, nch, CH)
    cnt = keep.sum(-1).to(torch.int32)
    pos = torch.arange(CH).expand(rows, nch, CH)
    key = torch.where(keep, pos, CH + pos)  # kept keys first, in index order
    order = key.sort(-1).indices
    idx = (order + torch.arange(nch).view(1, nch, 1) * CH).to(torch.int32).view(rows, T)
    return idx.to(device), cnt.to(device)


def reference(K, V, idx, cnt, CH) -> torch.Tensor:
    """float64 sums of the listed rows: [rows, nch, D]."""
    rows, T, D = K.shape
    nch = T // CH
    out = torch.zeros(rows, nch, D, dtype=torch.float64)
    Kc, Vc, ic, cc = K.double().cpu(), V.double().cpu(), idx.cpu().long(), cnt.cpu()
    for r in range(rows):
        for c in range(nch):
            n = ic[r, c * CH: c * CH + int(cc[r, c])]
            out[r, c] = (Kc[r, n] + Vc[r, n]).sum(0)
    return out


def launch(K, V, idx, cnt, out, CH, tile, stages):
    rows, T, D = K.shape
    _gather_sum[(rows, T // CH)](K, V, idx, cnt, out, T, T // CH, D=D, CH=CH, TILE=tile, STAGES=stages, num_warps=4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b", type=int, default=4)
    ap.add_argument("--hkv", type=int, default=8)
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--density", type=float, action="append", help="fraction of keys gathered (repeatable)")
    ap.add_argument("--tile", type=int, action="append", help="rows per tile (repeatable; default 64, 128)")
    ap.add_argument("--stages", type=int, action="append", help="pipeline stages (repeatable; default 1, 3)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--sets", type=int, default=4, help="independent draws of the lists, timed in turn")
    ap.add_argument("--cpu-check", action="store_true", help="tiny shapes through the interpreter, no timing")
    args = ap.parse_args()
    dens = args.density or [1.0, 0.3, 0.15, 0.05]
    tiles, stages = args.tile or [64, 128], args.stages or [1, 3]
    CH, D = 2048, 64
    if args.cpu_check:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--cpu-check needs TRITON_INTERPRET=1")
        dev, rows, T = "cpu", 2, 2 * CH
    else:
        if not torch.cuda.is_available():
            sys.exit("needs a CUDA GPU (or --cpu-check with TRITON_INTERPRET=1)")
        dev, rows, T = "cuda", args.b * args.hkv, args.n
    gen = torch.Generator().manual_seed(0)
    K = torch.randn(rows, T, D, generator=gen).bfloat16().to(dev)
    V = torch.randn(rows, T, D, generator=gen).bfloat16().to(dev)
    out = torch.empty(rows, T // CH, D, device=dev)
    cases, nsets = {}, 1 if args.cpu_check else args.sets
    for d in dens:
        draws = [lists(rows, T, CH, d, gen, dev) for _ in range(nsets)]
        idx, cnt = draws[0]
        ref = reference(K, V, idx, cnt, CH)
        for t in tiles:
            for s in stages:
                launch(K, V, idx, cnt, out, CH, t, s)
                err = (out.double().cpu() - ref).abs().max().item()
                ok = err <= 1e-3 * max(1.0, ref.abs().max().item())
                print(f"density {d:.2f} tile {t} stages {s}: max |out - ref| {err:.2e} {'ok' if ok else 'MISMATCH'}")
                if not ok:
                    sys.exit(1)
                cases[(d, t, s)] = draws
    if args.cpu_check:
        return
    from dcr.producers.bench_decode import copy_bandwidth, graph_of, time_graphs

    copy_bw = copy_bandwidth(dev)
    graphs, reps = {}, {}
    for key, draws in cases.items():
        graphs[key] = graph_of(lambda i, draws=draws, t=key[1], s=key[2]: launch(K, V, *draws[i], out, CH, t, s),
                               nsets, 4 * nsets)[0]
        reps[key] = 4 * nsets
    ms = time_graphs(graphs, reps, args.rounds)
    print(f"{torch.cuda.get_device_name()}: copy bandwidth (read + write) {copy_bw / 1e12:.2f} TB/s; "
          f"rows of {D * K.element_size()} B, B*Hkv {rows}, N {T}, chunk {CH}, {nsets} draws in turn")
    for (d, t, s), t_ms in ms.items():
        nbytes = sum(2 * int(c.sum()) * D * K.element_size() for _, c in cases[(d, t, s)]) / nsets
        bw = nbytes / (t_ms * 1e-3)
        print(f"density {d:.2f} tile {t:3d} stages {s}: {t_ms * 1e3:7.1f} us for {nbytes / 1e6:6.1f} MB (mean) = "
              f"{bw / 1e12:.2f} TB/s = {100 * bw / copy_bw:.0f} % of copy")


if __name__ == "__main__":
    main()
