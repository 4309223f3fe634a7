"""The teacher-forced counting kernel's search, replayed in numpy on sampled row blocks, to count its
passes for variants of the search without a GPU (the kernel: producers/kernels/teacher_forced_triton.py,
``_tf_count_kernel``; this file copies its arithmetic in float32 / int64).

    python lab/kernels/simulate_tf_passes.py --n 32768 --blocks 24 [--variants "kernel|8 probes"]

Scores are q.k of Gaussian q, k (rounded to bf16), as ``dcr bench quality`` times the kernel on. It prints
the mean passes over the sampled programs and the mean weighted by the keys each program reads (the one
time follows), for each variant named in VARIANTS.
"""
import argparse

import numpy as np
import torch

from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.teacher_forced import _gauss_quantiles


def key_of(s):
    s = np.where(s == 0.0, np.float32(0.0), s).astype(np.float32)
    b = s.view(np.int32).astype(np.int64)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


def float_of(c):
    c = np.asarray(c, dtype=np.int64)
    b = (c ^ ((c >> 31) & 0x7FFFFFFF)).astype(np.int32)
    return b.view(np.float32)


def cand(x, lo, hi):
    kx = np.trunc(x.astype(np.float64)).astype(np.int64)
    return np.minimum(np.maximum(kx, lo + 1), hi - 1)


def search(sr, vis, t, kk, z, *, end_n, spreads=(-1.5, 0, 1.5), width0=0.3, snap_rule="stall",
           cap=32, sample_blocks=4, spreads_later=None, block_n=64):
    """One program: sr [M, T] fp32 scores, vis [M, T] bool, end_n its keys (the first guess samples key
    blocks of ``block_n`` from them, as the kernel does). Returns its passes. Each pass counts the
    probes at xk + spread * wk (``spreads``; ``spreads_later`` from the second pass on, if given) and
    the bracket's midpoint. snap_rule: "stall" (the
    kernel: snap after a pass that left some open row's bracket count unchanged), "none", or the passes
    that snap, e.g. "1,3+"."""
    m = sr.shape[0]
    done = kk == t
    lo = np.where(done, -2**31, -2139095041).astype(np.int64)
    hi = np.where(done, 2**31 - 1, 2139095040).astype(np.int64)
    cnt_lo, cnt_hi = t.astype(np.int64), np.zeros(m, np.int64)
    if done.all():
        return 0
    n_blk = -(-end_n // block_n)
    cols = np.concatenate([((j * n_blk) // sample_blocks) * block_n + np.arange(block_n)
                           for j in range(sample_blocks)])
    cols = cols[cols < sr.shape[1]]
    v = vis[:, cols]
    sv = np.where(v, sr[:, cols], np.float32(0))
    s0 = v.sum(1).astype(np.float32)
    s1 = sv.sum(1, dtype=np.float32)
    s2 = (sv * sv).sum(1, dtype=np.float32)
    tf = np.maximum(s0, np.float32(1))
    mu = s1 / tf
    sig = np.sqrt(np.maximum(s2 / tf - mu * mu, np.float32(0)))
    xk = key_of(mu + sig * z).astype(np.float32)
    wk = ((key_of(mu + sig * (z + np.float32(width0))).astype(np.float32)
           - key_of(mu + sig * (z - np.float32(width0))).astype(np.float32)) * np.float32(0.5))
    srv = np.where(vis, sr, np.float32(-np.inf))
    passes = 0
    stalled = False
    while True:
        passes += 1
        open_ = ~done
        sp = spreads if passes == 1 or spreads_later is None else spreads_later
        cs = [cand(xk + np.float32(f) * wk, lo, hi) for f in sp] + [lo + (hi - lo) // 2]
        fs = np.stack([float_of(c) for c in cs], 1)  # [M, P]
        counts = (srv[:, :, None] >= fs[:, None, :]).sum(1)  # -inf never >= a finite probe
        rules = snap_rule.split(",")
        snap = (stalled if snap_rule == "stall" else
                (passes == 1 and "1" in rules) or (passes == 2 and "2" in rules) or (passes >= 3 and "3+" in rules))
        n_prev = cnt_lo - cnt_hi
        if snap:  # the smallest score >= lo and the largest < hi, of the bracket this pass started from
            flo, fhi = float_of(lo)[:, None], float_of(hi)[:, None]
            mn = np.where(vis & (sr >= flo), sr, np.float32(np.inf)).min(1)
            mx = np.where(vis & (sr < fhi), sr, np.float32(-np.inf)).max(1)
        for c, n in zip(cs, counts.T):
            up_lo = open_ & (n >= kk) & (c > lo)
            lo, cnt_lo = np.where(up_lo, c, lo), np.where(up_lo, n, cnt_lo)
            up_hi = open_ & (n < kk) & (c < hi)
            hi, cnt_hi = np.where(up_hi, c, hi), np.where(up_hi, n, cnt_hi)
        if snap:
            mn64, mx64 = key_of(mn), key_of(mx) + 1
            lo = np.where(open_ & (mn64 > lo) & (mn < np.inf), mn64, lo)
            hi = np.where(open_ & (mx64 < hi) & (mx > -np.inf), mx64, hi)
        done = done | (cnt_lo == kk) | (hi - lo <= 1)
        stalled = bool((~done & (cnt_lo - cnt_hi >= n_prev)).any())
        n_in = np.maximum(cnt_lo - cnt_hi, 1).astype(np.float32)
        frac = (cnt_lo - kk).astype(np.float32) / n_in
        width = (hi - lo).astype(np.float32)
        xk = lo.astype(np.float32) + width * frac
        wk = np.float32(3) * width * np.sqrt(frac * (1 - frac) / n_in + 1 / (n_in * n_in))
        if done.all() or (cap > 0 and np.where(done, 0, cnt_lo - cnt_hi).max() <= cap):
            return passes


def _times(m, base=(-1, -0.4, -0.12, 0, 0.12, 0.4, 1)):
    return tuple(m * b for b in base)


# the kernel's search and variants of it (key-weighted passes at 32K: 8 probes 3.00, the kernel's 4
# probes 3.94, but 4 run faster on the GPU: 72 vs 78 ms a call)
EIGHT = (-2, -0.8, -0.24, 0, 0.24, 0.8, 2)
VARIANTS = {
    "kernel": {},
    "8, width 0.45, snap 1, 3+": dict(spreads=_times(1), width0=0.45, snap_rule="1,3+"),
    "8 probes": dict(spreads=EIGHT),
    "8 probes, snap from pass 3": dict(spreads=EIGHT, snap_rule="3+"),
    "8 probes, no snap": dict(spreads=EIGHT, snap_rule="none"),
    "8, spread x0.5": dict(spreads=_times(0.5), width0=0.45),
    "8, spread x1.5": dict(spreads=_times(1.5), width0=0.45),
    "8, spread x2": dict(spreads=_times(2), width0=0.45),
    "8, spread x3": dict(spreads=_times(3), width0=0.45),
    "8, spread x4": dict(spreads=_times(4), width0=0.45),
    "8, uniform spread": dict(spreads=(-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1), width0=0.45),
    "8, first width 0.2": dict(spreads=EIGHT, width0=0.2),
    "8, cap 64": dict(spreads=EIGHT, cap=64),
    "8, cap 16": dict(spreads=EIGHT, cap=16),
    "8, sample 8 blocks": dict(spreads=EIGHT, sample_blocks=8),
    "8, then 4": dict(spreads=EIGHT, spreads_later=(-1.5, 0, 1.5)),
    "6 probes": dict(spreads=(-2.5, -0.8, 0, 0.8, 2.5)),
    "4 probes, +-1": dict(spreads=(-1, 0, 1)),
    "4 probes, +-2": dict(spreads=(-2, 0, 2)),
    "2 probes": dict(spreads=(0,)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--blocks", type=int, default=24, help="row blocks of 64 sampled, spread over the window")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--c", default="0.15")
    ap.add_argument("--variants", default="|".join(VARIANTS), help="names of VARIANTS, separated by |")
    args = ap.parse_args()
    rule = TopKRule(args.c, 64, 0)
    n = args.n
    gen = torch.Generator().manual_seed(0)
    zq = _gauss_quantiles(n, rule, "cpu").numpy()
    n_prog = -(-n // 64)
    pids = sorted({int(x) for x in np.linspace(0, n_prog - 1, args.blocks).round()})
    progs = []
    for h in range(args.heads):
        q = torch.randn(n, 64, generator=gen).bfloat16().float()
        k = torch.randn(n, 64, generator=gen).bfloat16().float()
        for pid in pids:
            rows = np.arange(pid * 64, min(pid * 64 + 64, n))
            end_n = min(pid * 64 + 64, n)
            sr = (q[rows] @ k[:end_n].T).numpy().astype(np.float32)
            vis = np.arange(end_n)[None, :] <= rows[:, None]
            t = rows + 1
            kk = rule.k_eff(t)
            progs.append((sr, vis, t, kk, zq[rows], end_n))
    weights = np.array([p[5] for p in progs], dtype=np.float64)
    for name in args.variants.split("|"):
        passes = np.array([search(sr, vis, t, kk, z, end_n=e, **VARIANTS[name]) for sr, vis, t, kk, z, e in progs])
        print(f"{name:22s} passes mean {passes.mean():.2f}  keys-weighted {np.average(passes, weights=weights):.2f}"
              f"  max {passes.max()}", flush=True)


if __name__ == "__main__":
    main()
