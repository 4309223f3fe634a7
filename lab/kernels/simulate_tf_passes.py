"""The teacher-forced counting kernel's search, replayed in numpy on sampled row blocks, to count its
passes for variants of the search without a GPU (the kernel: producers/kernels/teacher_forced_triton.py,
``_tf_count_kernel``; this file copies its arithmetic in float32 / int64).

    python lab/kernels/simulate_tf_passes.py --n 32768 --blocks 24 [--variants "kernel|8 probes"]
        [--selection kv_group] [--heavy 1.0] [--seed 1]

Scores are q.k of Gaussian q, k (rounded to bf16), as ``dcr bench quality`` times the kernel on (with
``--heavy``, key norms spread log-normally and 4 sink keys: heavier tails, as trained attention has). It prints
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


F = np.float32
NARROW = 2**23  # key-space width of one binade of fp32


def grid_cand(gc, gv, target, c_else, lo, hi):
    """A first probe from the sample's empirical quantile (``first="grid"``; built in the kernel in session 11
    and reverted, lab/decode-notes.md): the score at which
    the count of sampled scores >= it falls to ``target``, interpolated linearly between the grid points
    gv [M, G] with counts gc [M, G] around it; c_else where the grid does not bracket the target."""
    target = np.maximum(target, F(0.5))
    g = gc.shape[1]
    j = (gc >= target[:, None]).sum(1) - 1
    ok = (j >= 0) & (j < g - 1)
    jj = np.clip(j, 0, g - 2)
    rows = np.arange(gc.shape[0])
    ca, cb, va, vb = gc[rows, jj], gc[rows, jj + 1], gv[rows, jj], gv[rows, jj + 1]
    w = (ca - target) / np.maximum(ca - cb, F(1))
    val = va + w * (vb - va)
    return np.where(ok, cand(key_of(val).astype(F), lo, hi), c_else)


def search(sr, vis, t, kk, z, *, end_n, spreads=(-1.5, 0, 1.5), width0=0.3, snap_rule="stall",
           cap=32, sample_blocks=4, spreads_later=None, block_n=64, sd_mult=2.5, interp="exp", narrow=NARROW,
           first="gauss", first_sd=2.0, strided=True, state=None, n_grid=16):
    """One program: sr [M, T] fp32 scores, vis [M, T] bool, end_n its keys (the first guess samples key
    blocks of ``block_n`` from them, as the kernel does). Returns its passes. Each pass counts the
    probes at xk + spread * wk (``spreads``; ``spreads_later`` from the second pass on, if given) and
    the bracket's midpoint. snap_rule: "stall" (the
    kernel: snap after a pass that left some open row's bracket count unchanged), "none", or the passes
    that snap, e.g. "1,3+".

    After each pass the next estimate xk interpolates the count inside the bracket [lo, hi), and wk is
    ``sd_mult`` binomial sd of that estimate. interp: "exp" (the kernel: brackets at most ``narrow``
    keys wide (one binade) with both ends finite are interpolated in score space, the scores' density
    taken as exp(-lam x) across the bracket with lam = (x_mid - mu) / sd^2 from the first guess's
    sample; other brackets linearly in key space), "float" (the narrow ones linearly in score space),
    "key" (all linearly in key space: the kernel up to the eighth session, with sd_mult 3).
    first: "gauss" (the kernel: the first probes around the Gaussian quantile mu + sig * z of the sample's
    mean and sd, +-spread * ``width0`` sd), "grid" (not built: the sample's counts at ``n_grid`` scores
    mu + sig * (z + g), g evenly from -2 to 2, give its empirical quantiles; the first probes are the
    scores where the count falls to r -+ spread * first_sd binomial sd, r = the k-th largest's expected
    count among the sampled scores, interpolated between grid points; a probe the grid does not bracket
    falls back to "gauss"), or "order" (the sample's exact order statistics at those ranks).
    strided: the first guess's sample is ``sample_blocks * block_n`` keys at strided positions (the
    kernel); else ``sample_blocks`` whole key blocks.
    state: a list to which the rows' final (lo, hi, cnt_lo, cnt_hi) [M, 4] are appended (as the
    kernel leaves them for the attention pass)."""
    m = sr.shape[0]
    done = kk == t
    lo = np.where(done, -2**31, -2139095041).astype(np.int64)
    hi = np.where(done, 2**31 - 1, 2139095040).astype(np.int64)
    cnt_lo, cnt_hi = t.astype(np.int64), np.zeros(m, np.int64)
    if done.all():
        if state is not None:
            state.append(np.stack([lo, hi, cnt_lo, cnt_hi], 1))
        return 0
    n_blk = -(-end_n // block_n)
    s0, s1, s2 = np.zeros(m, F), np.zeros(m, F), np.zeros(m, F)
    width_ = sr.shape[1]
    samp_cols = []
    for j in range(sample_blocks):  # summed block by block, in the kernel's order (bit for bit)
        if strided:  # the kernel: sample_blocks * block_n keys at strided positions, block_n per block
            cols = ((j * block_n + np.arange(block_n)) * end_n) // (sample_blocks * block_n)
        else:  # whole key blocks spread over the visible range (the kernel up to the eighth session)
            cols = ((j * n_blk) // sample_blocks) * block_n + np.arange(block_n)
        samp_cols.append(cols[cols < width_])
        v = np.zeros((m, cols.size), bool)
        v[:, cols < width_] = vis[:, cols[cols < width_]]
        sv = np.zeros((m, cols.size), F)
        sv[:, cols < width_] = sr[:, cols[cols < width_]]
        sv = np.where(v, sv, F(0))
        s0 += np.where(v, F(1), F(0)).sum(1)
        s1 += sv.sum(1)
        s2 += (sv * sv).sum(1)
    tf = np.maximum(s0, np.float32(1))
    mu = s1 / tf
    sig = np.sqrt(np.maximum(s2 / tf - mu * mu, np.float32(0)))
    ivar = F(1) / np.maximum(sig * sig, F(1e-30))
    xk = key_of(mu + sig * z).astype(np.float32)
    wk = ((key_of(mu + sig * (z + np.float32(width0))).astype(np.float32)
           - key_of(mu + sig * (z - np.float32(width0))).astype(np.float32)) * np.float32(0.5))
    if first != "gauss":  # the sampled scores, and the k-th largest's expected count r among them, +- sd
        sc = np.concatenate(samp_cols)
        ys = np.where(vis[:, sc], sr[:, sc], F(-np.inf))
        p = kk.astype(F) / t.astype(F)
        r = s0 * p
        sd = np.sqrt(s0 * p * (F(1) - p))
    if first == "grid":  # the sample's counts at n_grid scores gv = mu + sig * (z + g), g evenly from -2 to 2
        gg = F(-2) + np.arange(n_grid, dtype=F) * F(4.0 / (n_grid - 1))
        gv = mu[:, None] + sig[:, None] * (z[:, None] + gg[None, :])  # [M, G], rising along G
        gc = (ys[:, :, None] >= gv[:, None, :]).sum(1).astype(F)  # [M, G], falling along G
    srv = np.where(vis, sr, np.float32(-np.inf))
    passes = 0
    stalled = False
    while True:
        passes += 1
        open_ = ~done
        sp = spreads if passes == 1 or spreads_later is None else spreads_later
        cs = [cand(xk + np.float32(f) * wk, lo, hi) for f in sp] + [lo + (hi - lo) // 2]
        if passes == 1 and first == "order":  # the sampled scores at ranks r -+ spread * first_sd sd
            ys_desc = np.sort(ys, 1)[:, ::-1]
            n_s = s0.astype(np.int64)
            ri = [np.clip(np.round(r - F(f * first_sd) * sd - 1), 0, np.maximum(n_s - 1, 0)).astype(np.int64)
                  for f in sp]  # rank 0 = the largest
            val = [ys_desc[np.arange(m), i] for i in ri]
            cs = [np.where(np.isfinite(v), np.minimum(np.maximum(key_of(v), lo + 1), hi - 1), lo + (hi - lo) // 2)
                  for v in val] + cs[-1:]
        if passes == 1 and first == "grid":
            cs = [grid_cand(gc, gv, r - F(f * first_sd) * sd, c, lo, hi) for f, c in zip(sp, cs[:-1])] + cs[-1:]
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
        n_in = np.maximum(cnt_lo - cnt_hi, 1).astype(F)
        frac = (cnt_lo - kk).astype(F) / n_in
        sdf = np.sqrt(frac * (F(1) - frac) / n_in + F(1) / (n_in * n_in))
        width = (hi - lo).astype(F)
        xk = lo.astype(F) + width * frac
        wk = F(sd_mult) * width * sdf
        if interp != "key":
            nar = (hi - lo <= narrow) & (lo > -2139095041) & (hi < 2139095040)
            flo = float_of(np.where(nar, lo, 0))
            fhi = float_of(np.where(nar, hi, 1))
            fw = fhi - flo
            if interp == "exp":
                a = np.minimum(np.maximum(((flo + fhi) * F(0.5) - mu) * ivar * fw, F(-8)), F(8))
            else:
                a = np.zeros_like(fw)
            small = np.abs(a) < F(1e-3)
            a_s = np.where(small, F(1), a)
            em = F(1) - np.exp(-a_s)
            u = np.where(small, frac, -np.log(F(1) - frac * em) / a_s)
            dens = np.where(small, F(1), a_s * np.exp(-a_s * u) / em)
            xf = flo + fw * u
            wf = F(sd_mult) * fw * sdf / np.maximum(dens, F(1e-3))
            xk = np.where(nar, key_of(xf).astype(F), xk)
            wk = np.where(nar, (key_of(xf + wf).astype(F) - key_of(xf - wf).astype(F)) * F(0.5), wk)
        if done.all() or (cap > 0 and np.where(done, 0, cnt_lo - cnt_hi).max() <= cap):
            if state is not None:
                state.append(np.stack([lo, hi, cnt_lo, cnt_hi], 1))
            return passes


# the kernel's search and variants of it. Key-weighted passes at 32K (query_head, seed 0): the kernel 3.00;
# the search before the eighth session ("previous kernel") 3.94; 8 probes per pass cost 634 instead of 349
# instructions per tile (sixth session: 4 probes ran faster at 3.94 than 8 at 3.00)
EIGHT = (-2, -0.8, -0.24, 0, 0.24, 0.8, 2)
VARIANTS = {
    "kernel": {},
    "previous kernel": dict(interp="key", sd_mult=3, strided=False),  # up to the eighth session
    "whole sample blocks": dict(strided=False),  # up to the ninth session
    "strided 1024": dict(sample_blocks=16),
    "order first 1024": dict(first="order", sample_blocks=16),
    "grid first 1024": dict(first="grid", sample_blocks=16),
    "grid first 1024, 8 points": dict(first="grid", sample_blocks=16, n_grid=8),
    "grid first 512": dict(first="grid", sample_blocks=8),
    "linear in score space": dict(interp="float"),
    "no binade limit": dict(narrow=2**32),
    "sd x2": dict(sd_mult=2),
    "cap 64": dict(cap=64),
    "8 probes": dict(spreads=EIGHT),
    "8 probes first, then 4": dict(spreads=EIGHT, spreads_later=(-1.5, 0, 1.5)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--blocks", type=int, default=24, help="row blocks of 64 sampled, spread over the window")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--c", default="0.15")
    ap.add_argument("--variants", default="|".join(VARIANTS), help="names of VARIANTS, separated by |")
    ap.add_argument("--selection", choices=("query_head", "kv_group"), default="query_head",
                    help="kv_group: rank by the mean score of a group of 4 query heads (Llama-3.2-1B's GQA)")
    ap.add_argument("--heavy", type=float, default=0.0, metavar="SIGMA",
                    help="heavier tails than Gaussian: key rows scaled by exp(SIGMA * N(0, 1)), 4 sink keys x 8")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rule = TopKRule(args.c, 64, 0)
    n = args.n
    gen = torch.Generator().manual_seed(args.seed)
    group = 4 if args.selection == "kv_group" else 1
    zq = _gauss_quantiles(n, rule, "cpu").numpy()
    n_prog = -(-n // 64)
    pids = sorted({int(x) for x in np.linspace(0, n_prog - 1, args.blocks).round()})
    progs = []
    for h in range(args.heads):
        qs = [torch.randn(n, 64, generator=gen).bfloat16().float() for _ in range(group)]
        k = torch.randn(n, 64, generator=gen)
        if args.heavy:
            k = k * torch.exp(args.heavy * torch.randn(n, 1, generator=gen))
            k[:4] *= 8
        k = k.bfloat16().float()
        for pid in pids:
            rows = np.arange(pid * 64, min(pid * 64 + 64, n))
            end_n = min(pid * 64 + 64, n)
            sr = (sum(q[rows] @ k[:end_n].T for q in qs) / group).numpy().astype(np.float32)
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
