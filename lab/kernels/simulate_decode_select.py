"""The decode op's select search (``producers/kernels/decode.py::_search``), replayed in numpy, to count
its passes for variants of the search without a GPU (same float32 / int64 arithmetic).

    python lab/kernels/simulate_decode_select.py [--variants "kernel|sd x2"]

Rows are bench_select's score shapes (c = 0.15, k_min 64). The select's time follows the slowest row
of a launch (at B = 4, 128 rows on 132 SMs), so it prints the mean and the max of the passes per
row, and the passes that snap (a snapping pass counts 6 more compares per score than the 4 of a
plain one).
"""
import argparse

import numpy as np

from simulate_tf_passes import float_of, key_of


def search(x, k, samp=256, first_spread=2.0, sds=(-1.0, 0.0, 1.0), snap_rule="odd"):
    """One row: x [L] fp32 scores (finite), 1 <= k <= L. Returns (passes, snapping passes, lo key)."""
    L = x.shape[0]
    si = np.arange(samp, dtype=np.int64)
    ys = np.sort(key_of(x[(si * L) // samp]))
    r = samp - 1 - (k * samp) // L
    p = 4
    j = np.arange(p)
    kf, lf = np.float32(k), np.float32(L)
    spread = np.float32(first_spread) * np.sqrt(np.float32(samp) * (kf / lf) * (np.float32(1) - kf / lf)) + 1
    rj = r + np.trunc((j.astype(np.float32) * np.float32(2.0 / (p - 1)) - 1) * spread).astype(np.int64)
    c = ys[np.clip(rj, 0, samp - 1)]
    lo, hi = -2139095040, 2139095041
    cnt_lo, cnt_hi = L, 0
    passes = snaps = 0
    stalled = False
    while True:
        passes += 1
        f = float_of(c)
        flo = float_of(lo)
        fhi = np.float32(np.inf) if hi > 2139095040 else float_of(hi)
        n = (x[None, :] >= f[:, None]).sum(1)
        snap = (passes % 2 == 1) if snap_rule == "odd" else stalled if snap_rule == "stall" else False
        if snap:
            snaps += 1
            mn = x[x >= flo].min(initial=np.inf)
            mx = x[x < fhi].max(initial=-np.inf)
        n_prev = cnt_lo - cnt_hi
        ge = n >= k
        new_lo = max(np.where(ge, c, lo).max(), lo)
        new_hi = min(np.where(ge, hi, c).min(), hi)
        if new_lo > lo:
            cnt_lo = int(np.where(ge, n, L).min())
        if new_hi < hi:
            cnt_hi = int(np.where(ge, 0, n).max())
        lo, hi = int(new_lo), int(new_hi)
        if snap:
            lo = max(lo, int(key_of(np.float32(mn))))
            hi = min(hi, int(key_of(np.float32(mx))) + 1)
        if not (cnt_lo != k and hi - lo > 1):
            return passes, snaps, lo
        stalled = cnt_lo - cnt_hi >= n_prev
        n_in = np.float32(max(cnt_lo - cnt_hi, 1))
        frac = np.float32(cnt_lo - k) / n_in
        width = np.float32(hi - lo)
        wk = np.sqrt(frac * (np.float32(1) - frac) / n_in + np.float32(1) / (n_in * n_in))
        off = (frac + np.array(sds + (0.0,), np.float32)[:p] * wk) * width
        c64 = lo + np.trunc(np.minimum(np.maximum(off, np.float32(1)), width).astype(np.float64)).astype(np.int64)
        c64[p - 1] = lo + (hi - lo) // 2
        c = np.minimum(np.maximum(c64, lo + 1), hi - 1)


VARIANTS = {
    "kernel": {},
    "snap on stall": dict(snap_rule="stall"),
    "sd x2": dict(sds=(-2.0, 0.0, 2.0)),
    "sd x3": dict(sds=(-3.0, 0.0, 3.0)),
    "sd x2, snap on stall": dict(sds=(-2.0, 0.0, 2.0), snap_rule="stall"),
    "sd x3, snap on stall": dict(sds=(-3.0, 0.0, 3.0), snap_rule="stall"),
    "first spread 3": dict(first_spread=3.0),
    "first spread 1.5": dict(first_spread=1.5),
    "sample 512": dict(samp=512),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="|".join(VARIANTS), help="names of VARIANTS, separated by |")
    args = ap.parse_args()
    from bench_select import scores

    shapes = ((32768, 96, "randn"), (32768, 64, "sink"), (32768, 64, "heavy"), (8192, 128, "randn"),
              (32768, 128, "qk_bf16"))
    data = [(f"{rows} x {n} {kind}", scores(kind, rows, n, "cpu").numpy().astype(np.float32)) for n, rows, kind in shapes]
    for name in args.variants.split("|"):
        cells = []
        for label, s in data:
            k = max(64, int(0.15 * s.shape[1]))
            res = np.array([search(row, k, **VARIANTS[name])[:2] for row in s])
            cells.append(f"{label}: {res[:, 0].mean():.2f} / {res[:, 0].max()} ({res[:, 1].mean():.1f} snap)")
        print(f"{name:24s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
