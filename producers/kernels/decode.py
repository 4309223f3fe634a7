"""Exact Top-K sparse attention, decode mode, in Triton: one new query row per sequence.

Computes :func:`producers.kernels.reference.decode_reference` (and is tested against it): the rule
of :class:`dcr.prereg.rule.TopKRule`, fp32 scores, the ``k_eff(t)`` largest with ties to the lower
key index (``t`` = the sequence's length), dense rows when ``t < dispatch_threshold``, the softmax
over the set in fp32. ``selection="query_head"`` ranks each query head on its own scores (one
ranking row per query head); ``"kv_group"`` ranks once per KV head on the group's mean score (one
ranking row per KV head, shared by the group's query heads).

Shapes: q ``[B, Hq, D]``; the caches ``[B, Hkv, T, D]`` (``T`` = T_max, rows at or past a
sequence's length ignored); G = Hq / Hkv query heads per KV head. Five launches, no host sync, no
sort of the scores; score and attend are split along the keys into chunks of ``CH`` keys, so that
every SM has work at batch 1. On sm_90+ the launches after the first are programmatic dependent
launches (each may start while its predecessor finishes, and waits for it before reading its results):

1. ``sample``  grid (ranking rows,). Scores of a strided sample of ``M`` keys
   (positions ``j * t // M``), sorted; a band ``[lo, hi)`` of scores around the sample's estimate of the
   k_eff-th largest, +-4 binomial sd of its sample rank (plus a margin), that brackets the
   k_eff-th largest score with high probability. Zeroes the row's counters. Rows of at most
   ``CAP`` keys take every key into the band (no sample); dense rows get an empty band.
2. ``score``   grid (B*Hkv, chunks). The group's query heads (padded to 16 rows) times a K tile
   on the tensor cores, fp32 accumulation, K read once. ``query_head`` writes the fp32 scores
   ``S[B, Hq, T]`` (the attend's logits); ``kv_group`` writes only the group-mean ranking scores
   ``R[B, Hkv, T]`` (``-0.0`` mapped to ``+0.0``). Per ranking row, the keys at or above ``hi`` are
   counted (one atomic add per row per program) and the keys inside the band are appended to the
   row's candidate list (score and index; one atomic add per row per tile reserves the tile's range;
   entries past ``CAP`` are dropped but still counted). ``kv_group`` does this bookkeeping after its
   K loop, over its one row read back from L2 in steps of ``_BAND_BLOCK`` scores, so under PDL the
   K loop runs while the sample kernel finishes; ``query_head`` does it inside the K loop, on the
   group's rows in registers, after waiting for the sample.
3. ``resolve`` grid (ranking rows,). ``need = k_eff - #{score >= hi}``. If ``1 <= need <= n_band <=
   CAP``, the k_eff-th largest is the need-th largest candidate: a counting search over the list
   held in registers (:func:`_search`, 4 probes per pass) gives its score ``tau``, and a binary
   search over the candidates' indices the index bound ``i_star`` of split ties. Otherwise (the
   band missed, or the list overflowed: heavy ties, constant rows, adversarial rows) the same
   search runs over the whole row (streamed from memory), ties by position. Either way the set is
   ``{i : key_i > tau} ∪ {i : key_i == tau, i <= i_star}``: the k_eff largest, ties to the lower
   index, exactly the reference's set. ``DecodeWorkspace.path`` records which way each row went.
4. ``attend``  grid (B*Hkv, chunks). Membership from (tau, i_star), online softmax per head in
   fp32, P·V on the tensor cores (P rounded to the cache dtype, as in FlashAttention).
   ``kv_group`` first compacts the chunk's selected keys (in index order) into a list, then
   gathers only those K and V rows, full tiles of them (a row is 128 B at D = 64), and recomputes
   each head's logits from the K rows; ``query_head`` takes its logits from S and loads whole V
   tiles (the group's union of sets touches nearly every tile on random data, and loads whose
   addresses do not wait for the scores measured faster, also than listing the union and gathering
   only its rows), the next tile's scores loaded while the current tile's V rows are in flight.
   Writes each chunk's partial (max, sum, P·V) per query head.
5. ``combine`` grid (B*Hq,). Merges the chunks' partial results into the output (split-K).

Work buffers live in a :class:`DecodeWorkspace` (cached per shape), so the steady state allocates
nothing but the output and is CUDA-graph capturable. :func:`decode_launches` exposes the five
launches (for timing each stage).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import triton
import triton.language as tl

from dcr.prereg.rule import TopKRule, check_selection
from dcr.producers.kernels.triton_rule import float_of_key, k_eff, order_key, rule_args

_IMIN = tl.constexpr(-2147483648)  # int32 min, as a constexpr so it stays int32 in kernels
_IMAX = tl.constexpr(2147483647)
_BLOCK_M = 16  # query rows per tensor-core tile (the group padded)
_BAND_SD = tl.constexpr(4.0)  # half-width of the band in binomial sd of the k-th largest's sample rank
_BAND_MARGIN = tl.constexpr(2)  # sample ranks added on each side
_SAMPLE_TILE = 256  # sampled keys scored per step of the sample kernel
_COMBINE_BLOCK = 64  # chunks merged per step of the combine kernel
_COMPACT_BLOCK = 2048  # kv_group attend: ranking scores tested per step of the chunk's compaction
_BAND_BLOCK = 1024  # kv_group score kernel: ranking scores per step of the band bookkeeping
# how each ranking row's threshold was found (DecodeWorkspace.path)
PATH_BAND, PATH_MISS, PATH_OVERFLOW, PATH_DENSE = 0, 1, 2, 3


# ----------------------------------------------------------------------------- device helpers
@triton.jit
def _length(lengths_ptr, b, T):
    L = tl.load(lengths_ptr + b).to(tl.int32)
    return tl.minimum(tl.maximum(L, 1), T)  # memory safety only; values are checked on the host


@triton.jit
def _softmax_step(m_i, l_i, acc, s, sel, v, scale, IEEE: tl.constexpr):
    """Online softmax over one tile: the selected scores s [BLOCK_M, BLOCK_N] (fp32) times the V tile
    [BLOCK_N, D]; P rounded to the cache dtype for the tensor-core product (as FlashAttention)."""
    logits = tl.where(sel, s * scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(logits, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(logits - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc * alpha[:, None] + pv


@triton.jit
def _chunk_program(lengths_ptr, T, HKV, CH):
    """(b, kvh, L, c0, ch) of a program of the grid (B*Hkv, chunks): chunk ch starts at key c0."""
    pid = tl.program_id(0)
    ch = tl.program_id(1)
    b = pid // HKV
    L = _length(lengths_ptr, b, T)
    return b, pid % HKV, L, ch * CH, ch


@triton.jit
def _group_q(Q, b, kvh, sqb, sqh, G, D: tl.constexpr, BLOCK_M: tl.constexpr, DT: tl.constexpr):
    """The group's query heads as a [BLOCK_M, D] tile (rows >= G are zero), in the cache dtype."""
    m = tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(Q + b.to(tl.int64) * sqb + (kvh * G + m)[:, None] * sqh + d[None, :], mask=(m < G)[:, None], other=0.0)
    return q.to(DT)


@triton.jit
def _dot_scores(q, k, IEEE: tl.constexpr):
    """fp32 scores [BLOCK_M, BLOCK_N] of the query rows q [BLOCK_M, D] against the key rows k [BLOCK_N, D],
    -0.0 -> +0.0."""
    if IEEE:  # fp32 operands (fp32 cache, or the interpreter, whose bf16 dot is broken)
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return tl.where(s == 0.0, 0.0, s)


@triton.jit
def _tile_scores(q, kbase, n, nv, skt, IEEE: tl.constexpr, D: tl.constexpr):
    """fp32 scores [BLOCK_M, BLOCK_N] of the group's query rows against keys n (rows where nv)."""
    d = tl.arange(0, D)
    k = tl.load(kbase + n[:, None].to(tl.int64) * skt + d[None, :], mask=nv[:, None], other=0.0)
    return _dot_scores(q, k, IEEE)


@triton.jit
def _group_mean(s, rmask, G):
    """The kv_group ranking scores [BLOCK_N]: the mean of the group's fp32 scores s [BLOCK_M, BLOCK_N]."""
    r = tl.sum(tl.where(rmask[:, None], s, 0.0), 0) / G
    return tl.where(r == 0.0, 0.0, r)


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _sample_kernel(Q, K, SAMP_S, band_ptr, nabove_ptr, ncand_ptr, lengths_ptr,
                   sqb, sqh, skb, skh, skt, T, HKV, HQ, NUM, DEN, KMIN, THR,
                   G: tl.constexpr, KV_GROUP: tl.constexpr, IEEE: tl.constexpr, D: tl.constexpr,
                   M: tl.constexpr, TS: tl.constexpr, CAP: tl.constexpr, BLOCK_M: tl.constexpr, PDL: tl.constexpr):
    """The band [lo, hi) of one ranking row, written as fp32 (flo, fhi) to band[row]: a score x is in
    the band if flo <= x < fhi and above it if x >= fhi. Zeroes the row's counters. (Any band gives the
    exact set: the resolve checks that the k_eff-th largest lies inside it, else searches the whole row.)"""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()  # the score kernel's programs may start (they wait for this one)
    row = tl.program_id(0)
    if KV_GROUP:
        b = row // HKV
        kvh = row % HKV
        hl = 0
    else:
        b = row // HQ
        kvh = (row % HQ) // G
        hl = (row % HQ) % G
    L = _length(lengths_ptr, b, T)
    k = k_eff(L, NUM, DEN, KMIN, THR)
    tl.store(nabove_ptr + row, 0)
    tl.store(ncand_ptr + row, 0)
    flo = float("-inf")  # rows of at most CAP keys: every key is a candidate
    fhi = float("inf")
    if k >= L:  # dense row: no candidates, nothing above
        flo = float("inf")
    elif L > CAP:
        m = tl.arange(0, BLOCK_M)
        rmask = m < G
        q = _group_q(Q, b, kvh, sqb, sqh, G, D, BLOCK_M, K.dtype.element_ty)
        kbase = K + b.to(tl.int64) * skb + kvh.to(tl.int64) * skh
        sbase = SAMP_S + row.to(tl.int64) * M
        for j0 in range(0, M, TS):
            j = j0 + tl.arange(0, TS)
            n = ((j.to(tl.int64) * L) // M).to(tl.int32)
            s = _tile_scores(q, kbase, n, n < L, skt, IEEE, D)
            if KV_GROUP:
                x = _group_mean(s, rmask, G)
            else:
                x = tl.sum(tl.where((m == hl)[:, None], s, 0.0), 0)
            tl.store(sbase + j, x)
        tl.debug_barrier()  # the sample was written by other threads of this program
        si = tl.arange(0, M)
        ys = tl.sort(order_key(tl.load(sbase + si)))
        p = k / L
        r = M - 1 - ((k.to(tl.int64) * M) // L).to(tl.int32)  # the k-th largest's rank in the sample
        w = (tl.sqrt(M * p * (1.0 - p)) * _BAND_SD).to(tl.int32) + 1 + _BAND_MARGIN
        w = tl.minimum(w, ((3 * CAP * M) // (8 * L.to(tl.int64))).to(tl.int32))  # expected band <= 3/4 CAP
        ilo = r - w
        ihi = r + w
        klo = tl.sum(tl.where(si == ilo, ys, 0), 0)
        khi = tl.sum(tl.where(si == ihi, ys, 0), 0)
        flo = tl.where(ilo < 0, float("-inf"), float_of_key(klo))
        fhi = tl.where(ihi > M - 1, float("inf"), float_of_key(khi + 1))  # the band holds ys[ihi]
    tl.store(band_ptr + row * 2, flo)
    tl.store(band_ptr + row * 2 + 1, fhi)


@triton.jit
def _rank_in_rows(ib, G: tl.constexpr, GP: tl.constexpr, BLOCK_N: tl.constexpr):
    """Inclusive prefix counts along the keys of the 0 / 1 indicators ib [GP, BLOCK_N] (int32) of rows
    0..G-1, by one 1-D scan per word: the rows' indicators are packed into fields of the bits of an
    int32 per key (8-bit fields for BLOCK_N < 256, else 16-bit), so that a scan over the keys sums
    each row in its own field without carries."""
    FIELD: tl.constexpr = 8 if BLOCK_N < 256 else 16
    PER_WORD: tl.constexpr = 32 // FIELD
    m = tl.arange(0, GP)
    rank = tl.zeros([GP, BLOCK_N], dtype=tl.int32)
    for w in tl.static_range(0, G, PER_WORD):
        inw = (m >= w) & (m < w + PER_WORD)
        sh = tl.where(inw, (m - w) * FIELD, 0)[:, None]
        packed = tl.sum(tl.where(inw[:, None], ib << sh, 0), 0)
        cum = tl.cumsum(packed, 0)[None, :]
        rank = tl.where(inw[:, None], (cum >> sh) & ((1 << FIELD) - 1), rank)
    return rank


@triton.jit
def _band_tile(x, n, valid, flo, fhi, crow, cbase_s, cbase_i, ncand_ptr, above, CAP: tl.constexpr,
               ROWS: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BLOCK_N: tl.constexpr):
    """Band bookkeeping of one tile of the scores x of one ranking row ([BLOCK_N]) or, with ROWS, of
    the G rows of a [GP, BLOCK_N] tile, keys n along the last axis: appends the in-band (score, index)
    pairs to the rows' candidate lists (crow: the rows' numbers, cbase_s / cbase_i: their lists; one
    atomic add per row reserves the tile's range) and returns ``above`` (element-wise counts) plus
    the keys >= fhi."""
    above += tl.where(valid & (x >= fhi), 1.0, 0.0)  # fp32 counts: exact below 2^24
    inb = valid & (x >= flo) & (x < fhi)
    ib = inb.to(tl.int32)
    cnt = tl.sum(ib, -1)
    start = tl.atomic_add(ncand_ptr + crow, cnt, mask=cnt > 0, sem="relaxed")
    if ROWS:
        pos = start[:, None] + _rank_in_rows(ib, G, GP, BLOCK_N) - 1
        ok = inb & (pos < CAP)
        tl.store(cbase_s[:, None] + pos, x, mask=ok)
        tl.store(cbase_i[:, None] + pos, n, mask=ok)
    else:
        pos = start + tl.cumsum(ib, 0) - 1
        ok = inb & (pos < CAP)
        tl.store(cbase_s + pos, x, mask=ok)
        tl.store(cbase_i + pos, n, mask=ok)
    return above


@triton.jit
def _score_kernel(Q, K, S, R, band_ptr, nabove_ptr, ncand_ptr, cand_s, cand_i, lengths_ptr,
                  sqb, sqh, skb, skh, skt, T, HKV, HQ,
                  G: tl.constexpr, GP: tl.constexpr, KV_GROUP: tl.constexpr, IEEE: tl.constexpr, D: tl.constexpr,
                  CH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr,
                  CAP: tl.constexpr, PDL: tl.constexpr):
    """Scores of one chunk of keys for the G query heads of one KV head: S (query_head) or R
    (kv_group) written, and the band bookkeeping of the chunk's ranking rows (keys above the band
    counted into nabove, keys in the band appended to the candidate lists).

    kv_group: the K loop needs no band, so under PDL it runs while the sample kernel finishes; after
    waiting for it, the program reads its one ranking row back (from L2) in tiles of BLOCK_B for the
    bookkeeping. query_head: the bookkeeping of the group's GP rows runs inside the K loop, on the
    scores in registers (re-reading GP rows costs more than the wait saves), after the wait."""
    b, kvh, L, c0, ch = _chunk_program(lengths_ptr, T, HKV, CH)
    if c0 >= L:
        return
    m = tl.arange(0, BLOCK_M)
    rmask = m < G
    q = _group_q(Q, b, kvh, sqb, sqh, G, D, BLOCK_M, K.dtype.element_ty)
    kbase = K + b.to(tl.int64) * skb + kvh.to(tl.int64) * skh
    if KV_GROUP:
        crow = b * HKV + kvh
        rbase = R + crow.to(tl.int64) * T
        cbase_s = cand_s + crow.to(tl.int64) * CAP
        cbase_i = cand_i + crow.to(tl.int64) * CAP
        # 1. the ranking row written: K read once
        for i in range(0, CH, BLOCK_N):
            n = c0 + i + tl.arange(0, BLOCK_N)
            nv = n < L
            tl.store(rbase + n, _group_mean(_tile_scores(q, kbase, n, nv, skt, IEEE, D), rmask, G), mask=nv)
        if PDL:
            tl.extra.cuda.gdc_wait()  # the sample kernel's band and zeroed counters
        tl.debug_barrier()  # the row written above is read back by other threads of this program
        # 2. the band bookkeeping over the row just written (in L2)
        above = tl.zeros([BLOCK_B], dtype=tl.float32)
        flo = tl.load(band_ptr + crow * 2)
        fhi = tl.load(band_ptr + crow * 2 + 1)
        for i in range(0, CH, BLOCK_B):
            n = c0 + i + tl.arange(0, BLOCK_B)
            nv = n < L
            r = tl.load(rbase + n, mask=nv, other=0.0)
            above = _band_tile(r, n, nv, flo, fhi, crow, cbase_s, cbase_i, ncand_ptr, above, CAP, False, G, GP,
                               BLOCK_B)
    else:  # the group's G ranking rows as a [GP, BLOCK_N] tile (GP = G rounded up to a power of 2)
        g = tl.arange(0, GP)
        gmask = g < G
        crow = b * HQ + kvh * G + g
        cbase_s = cand_s + crow.to(tl.int64) * CAP
        cbase_i = cand_i + crow.to(tl.int64) * CAP
        if PDL:
            tl.extra.cuda.gdc_wait()  # the sample kernel's bands and zeroed counters
        above = tl.zeros([GP, BLOCK_N], dtype=tl.float32)
        flo = tl.load(band_ptr + crow * 2, mask=gmask, other=float("inf"))[:, None]
        fhi = tl.load(band_ptr + crow * 2 + 1, mask=gmask, other=float("inf"))[:, None]
        for i in range(0, CH, BLOCK_N):
            n = c0 + i + tl.arange(0, BLOCK_N)
            nv = n < L
            s = _tile_scores(q, kbase, n, nv, skt, IEEE, D)
            # rows 0..GP-1 of s (rows >= G are zero): the sum over the blocks of GP rows keeps block 0
            sg = tl.sum(tl.reshape(s, [BLOCK_M // GP, GP, BLOCK_N]), 0)
            valid = gmask[:, None] & nv[None, :]
            tl.store(S + crow.to(tl.int64)[:, None] * T + n[None, :], sg, mask=valid)
            above = _band_tile(sg, n[None, :], valid, flo, fhi, crow, cbase_s, cbase_i, ncand_ptr, above, CAP, True, G,
                               GP, BLOCK_N)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()  # the resolve's programs may start (they wait for this kernel)
    na = tl.sum(above, -1).to(tl.int32)
    if KV_GROUP:
        tl.atomic_add(nabove_ptr + crow, na, sem="relaxed")
    else:
        tl.atomic_add(nabove_ptr + crow, na, mask=gmask, sem="relaxed")


@triton.jit
def _count_ge(x, f):
    """#{x >= f} (int32). Summed as fp32 ones (exact below 2^24): the compare then yields 1.0 / 0.0 in one
    instruction (FSET.BF) where an int32 sum needs a compare and a select."""
    return tl.sum(tl.where(x >= f, 1.0, 0.0), 0).to(tl.int32)


@triton.jit
def _count_tiles(base, L, f0, f1, f2, f3, flo, fhi, BLOCK: tl.constexpr, SNAP: tl.constexpr):
    """One pass over base[0:L] in tiles of BLOCK: (#scores >= f0, ..., >= f3, and with SNAP the smallest
    score >= flo and the largest < fhi, else +inf / -inf). Element-wise accumulators, reduced once."""
    n0 = tl.zeros([BLOCK], dtype=tl.float32)  # fp32 counts, as in _count_ge (exact: L < 2^24)
    n1 = tl.zeros([BLOCK], dtype=tl.float32)
    n2 = tl.zeros([BLOCK], dtype=tl.float32)
    n3 = tl.zeros([BLOCK], dtype=tl.float32)
    mnacc = tl.full([BLOCK], float("inf"), tl.float32)
    mxacc = tl.full([BLOCK], float("-inf"), tl.float32)
    for c0 in range(0, L, BLOCK):
        i = c0 + tl.arange(0, BLOCK)
        x = tl.load(base + i, mask=i < L, other=float("-inf"))
        n0 += tl.where(x >= f0, 1.0, 0.0)
        n1 += tl.where(x >= f1, 1.0, 0.0)
        n2 += tl.where(x >= f2, 1.0, 0.0)
        n3 += tl.where(x >= f3, 1.0, 0.0)
        if SNAP:
            mnacc = tl.minimum(mnacc, tl.where(x >= flo, x, float("inf")))
            mxacc = tl.maximum(mxacc, tl.where(x < fhi, x, float("-inf")))
    mn = tl.full([], float("inf"), tl.float32)
    mx = tl.full([], float("-inf"), tl.float32)
    if SNAP:
        mn = tl.min(mnacc, 0)
        mx = tl.max(mxacc, 0)
    return (tl.sum(n0, 0).to(tl.int32), tl.sum(n1, 0).to(tl.int32), tl.sum(n2, 0).to(tl.int32),
            tl.sum(n3, 0).to(tl.int32), mn, mx)


@triton.jit
def _search(base, L, k, SAMP: tl.constexpr, BLOCK: tl.constexpr, RESIDENT: tl.constexpr):
    """Threshold search over the fp32 scores base[0:L] (finite; 1 <= k <= L) by counting 4 probes per pass.

    cnt(c) = #{scores >= c} is found for 4 probe keys c per pass (scores compared as floats, which for
    finite scores is the key order). The bracket lo < hi keeps cnt(lo) >= k > cnt(hi); the first
    probes are order statistics of a strided sample of SAMP scores, later ones sit around the
    linear interpolation of the count inside the bracket (+-1 binomial sd), plus its midpoint (so
    every pass at least halves the bracket). Every odd pass also snaps the bracket onto keys that
    exist. It ends when cnt(lo) == k (the set is every key >= lo) or no key lies strictly inside
    (lo, hi): then the keys equal to lo are ties. Returns (lo [int64 order key], cnt(lo), cnt(hi),
    passes). RESIDENT (BLOCK >= L): the row is loaded once and stays in registers for every pass;
    else every pass streams it in tiles of BLOCK.
    """
    P: tl.constexpr = 4
    j = tl.arange(0, P)
    # ---- first probes: order statistics of a strided sample around the k-th largest's rank
    si = tl.arange(0, SAMP)
    ys = tl.sort(order_key(tl.load(base + (si.to(tl.int64) * L) // SAMP)))
    r = SAMP - 1 - ((k.to(tl.int64) * SAMP) // L).to(tl.int32)
    spread = 2.0 * tl.sqrt(SAMP * (k / L) * (1.0 - k / L)) + 1.0
    rj = r + ((j.to(tl.float32) * 2.0 / (P - 1) - 1.0) * spread).to(tl.int32)
    rj = tl.minimum(tl.maximum(rj, 0), SAMP - 1)
    c = tl.sum(tl.where(rj[:, None] == si[None, :], ys[None, :], 0), 1)  # [P] probe keys
    # (padding is -inf, below every probe and below flo >= -FLT_MAX: no validity masks in the passes)
    lo = tl.full([], -2139095040, tl.int64)  # key(-FLT_MAX): cnt = L (finite scores)
    hi = tl.full([], 2139095041, tl.int64)  # key(+inf) + 1: cnt = 0
    cnt_lo = L
    cnt_hi = L * 0
    go = L > 0
    passes = L * 0
    if RESIDENT:
        ir = tl.arange(0, BLOCK)
        xr = tl.load(base + ir, mask=ir < L, other=float("-inf"))
    while go:
        passes += 1
        f = float_of_key(c)
        flo = float_of_key(lo.to(tl.int32))
        fhi = tl.where(hi > 2139095040, float("inf"), float_of_key(hi.to(tl.int32)))  # the initial hi: +inf
        f0 = tl.sum(tl.where(j == 0, f, 0.0), 0)
        f1 = tl.sum(tl.where(j == 1, f, 0.0), 0)
        f2 = tl.sum(tl.where(j == 2, f, 0.0), 0)
        f3 = tl.sum(tl.where(j == 3, f, 0.0), 0)
        snap = passes % 2 == 1  # snap (the min / max below) on odd passes only: 6 of ~14 ops per score
        # counts of the scores >= each probe; on snap passes also the smallest score >= flo and the largest
        # < fhi. The snap is decided at run time but each branch holds its own loop and reduces to scalars:
        # a branch inside the loop, or [BLOCK] accumulators carried out of it, kept 2 x BLOCK more values
        # alive (spills)
        if RESIDENT:
            s0 = _count_ge(xr, f0)
            s1 = _count_ge(xr, f1)
            s2 = _count_ge(xr, f2)
            s3 = _count_ge(xr, f3)
            mn = tl.full([], float("inf"), tl.float32)
            mx = tl.full([], float("-inf"), tl.float32)
            if snap:
                mn = tl.min(tl.where(xr >= flo, xr, float("inf")), 0)
                mx = tl.max(tl.where(xr < fhi, xr, float("-inf")), 0)
        else:
            if snap:
                s0, s1, s2, s3, mn, mx = _count_tiles(base, L, f0, f1, f2, f3, flo, fhi, BLOCK, True)
            else:
                s0, s1, s2, s3, mn, mx = _count_tiles(base, L, f0, f1, f2, f3, flo, fhi, BLOCK, False)
        n = tl.where(j == 0, s0, tl.where(j == 1, s1, tl.where(j == 2, s2, s3)))
        c64 = c.to(tl.int64)
        ge = n >= k
        new_lo = tl.max(tl.where(ge, c64, lo), 0)
        new_hi = tl.min(tl.where(ge, hi, c64), 0)
        cnt_lo = tl.where(new_lo > lo, tl.min(tl.where(ge, n, L), 0), cnt_lo)
        cnt_hi = tl.where(new_hi < hi, tl.max(tl.where(ge, 0, n), 0), cnt_hi)
        lo = new_lo
        hi = new_hi
        # snap onto existing keys: none lies in [old lo, mn) or (mx, old hi)
        if snap:
            lo = tl.maximum(lo, order_key(mn).to(tl.int64))
            hi = tl.minimum(hi, order_key(mx).to(tl.int64) + 1)
        go = (cnt_lo != k) & (hi - lo > 1)
        # next probes: interpolation of the count inside the bracket, +-1 sd (binomial), and the midpoint
        n_in = tl.maximum(cnt_lo - cnt_hi, 1).to(tl.float32)
        frac = (cnt_lo - k).to(tl.float32) / n_in
        width = (hi - lo).to(tl.float32)
        wk = tl.sqrt(frac * (1.0 - frac) / n_in + 1.0 / (n_in * n_in))
        off = (frac + (j.to(tl.float32) * 2.0 / (P - 2) - 1.0) * wk) * width
        c64 = lo + tl.minimum(tl.maximum(off, 1.0), width).to(tl.int64)
        c64 = tl.where(j == P - 1, lo + (hi - lo) // 2, c64)
        c = tl.minimum(tl.maximum(c64, lo + 1), hi - 1).to(tl.int32)
    return lo, cnt_lo, cnt_hi, passes


@triton.jit
def _ties_by_position(base, L, flo, need, BLOCK: tl.constexpr):
    """Position of the need-th score equal to flo in base[0:L] (in index order)."""
    seen = L * 0
    istar = L
    for c0 in range(0, L, BLOCK):
        if seen < need:
            i = c0 + tl.arange(0, BLOCK)
            eq = ((tl.load(base + i, mask=i < L, other=float("-inf")) == flo) & (i < L)).to(tl.int32)
            pos = seen + tl.cumsum(eq, 0)
            istar = tl.minimum(istar, tl.min(tl.where((eq > 0) & (pos == need), i, L), 0))
            seen += tl.sum(eq, 0)
    return istar


@triton.jit
def _ties_by_index(sbase, ibase, n, ftau, need, L, BLOCK: tl.constexpr):
    """The need-th smallest index among the entries of a candidate list (scores sbase[0:n], indices
    ibase[0:n], in any order) whose score equals ftau: a binary search over the index."""
    j = tl.arange(0, BLOCK)
    ok = j < n
    s = tl.load(sbase + j, mask=ok, other=float("-inf"))
    idx = tl.where(ok & (s == ftau), tl.load(ibase + j, mask=ok, other=0), _IMAX)
    lo = L * 0
    hi = L - 1
    while lo < hi:
        mid = (lo + hi) // 2
        enough = tl.sum((idx <= mid).to(tl.int32), 0) >= need
        hi = tl.where(enough, mid, hi)
        lo = tl.where(enough, lo, mid + 1)
    return lo


@triton.jit
def _resolve_kernel(RS, band_ptr, nabove_ptr, ncand_ptr, cand_s, cand_i, lengths_ptr, thr_ptr, passes_ptr, path_ptr,
                    T, ROWS_PER_B, NUM, DEN, KMIN, THR,
                    SAMP: tl.constexpr, CAP: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """(tau, i_star) of one ranking row, from its candidate list or, where the band missed or the
    list overflowed, by the counting search over the whole row RS[row, 0:L] (streamed in tiles of
    BLOCK). Writes thr[row] = (tau, i_star) as signed order keys (the set is key > tau, or key ==
    tau and index <= i_star), the search's passes and the row's path. Scores must be finite."""
    row = tl.program_id(0)
    L = _length(lengths_ptr, row // ROWS_PER_B, T)
    k = k_eff(L, NUM, DEN, KMIN, THR)
    if PDL:
        tl.extra.cuda.gdc_wait()  # the score kernel's counters, lists and scores
        tl.extra.cuda.gdc_launch_dependents()  # the attend's programs may start (they wait for this kernel)
    if k >= L:  # dense row: everything visible is selected
        tl.store(thr_ptr + row * 2, _IMIN)
        tl.store(thr_ptr + row * 2 + 1, _IMAX)
        tl.store(passes_ptr + row, 0)
        tl.store(path_ptr + row, 3)  # PATH_DENSE
        return
    n_band = tl.load(ncand_ptr + row)
    need = k - tl.load(nabove_ptr + row)
    if (need >= 1) & (need <= n_band) & (n_band <= CAP):
        # the k-th largest of the row is the need-th largest candidate
        sbase = cand_s + row.to(tl.int64) * CAP
        lo, cnt_lo, cnt_hi, passes = _search(sbase, n_band, need, SAMP, CAP, True)
        need_t = need - cnt_hi  # ties at lo to take, lowest indices first
        istar = _IMAX
        if need_t < cnt_lo - cnt_hi:
            istar = _ties_by_index(sbase, cand_i + row.to(tl.int64) * CAP, n_band,
                                   float_of_key(lo.to(tl.int32)), need_t, L, CAP)
        path = 0  # PATH_BAND
    else:
        base = RS + row.to(tl.int64) * T
        lo, cnt_lo, cnt_hi, passes = _search(base, L, k, SAMP, BLOCK, False)
        need_t = k - cnt_hi
        istar = _IMAX
        if need_t < cnt_lo - cnt_hi:
            istar = _ties_by_position(base, L, float_of_key(lo.to(tl.int32)), need_t, BLOCK)
        path = tl.where(n_band > CAP, 2, 1)  # PATH_OVERFLOW, PATH_MISS
    tl.store(thr_ptr + row * 2, lo.to(tl.int32))
    tl.store(thr_ptr + row * 2 + 1, istar)
    tl.store(passes_ptr + row, passes)
    tl.store(path_ptr + row, path)


@triton.jit
def _members(S, srow, n, nv, rmask, tau, istar):
    """query_head: scores [BLOCK_M, BLOCK_N] of keys n [BLOCK_N] (those where nv) and their membership in
    each head's set."""
    valid2 = rmask[:, None] & nv[None, :]
    s = tl.load(S + srow[:, None] + n[None, :], mask=valid2, other=0.0)
    sk = order_key(s)
    tie_ok = (sk == tau[:, None]) & (n[None, :] <= istar[:, None])
    return s, valid2 & ((sk > tau[:, None]) | tie_ok)


@triton.jit
def _group_members(R, rrow_t, n0, L, tau, istar, BLOCK_N: tl.constexpr):
    """kv_group: membership [BLOCK_N] of keys n0.. (n < L) in the group's set."""
    n = n0 + tl.arange(0, BLOCK_N)
    nv = n < L
    rk = order_key(tl.load(R + rrow_t + n, mask=nv, other=0.0))
    return nv & ((rk > tau) | ((rk == tau) & (n <= istar)))


@triton.jit
def _attend_kernel(Q, K, V, S, R, IDX, thr_ptr, lengths_ptr, Mp, Lp, Op, MASK,
                   sqb, sqh, skb, skh, skt, svb, svh, svt, T, HKV, HQ, NCH, scale,
                   G: tl.constexpr, KV_GROUP: tl.constexpr, IEEE: tl.constexpr,
                   D: tl.constexpr, CH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_M: tl.constexpr, WRITE_MASK: tl.constexpr, PDL: tl.constexpr):
    """Partial attention of one chunk of keys for the G query heads of one KV head: writes (max,
    sum, P.V) [BLOCK_M], [BLOCK_M], [BLOCK_M, D] (fp32) of the selected keys to Mp, Lp, Op.
    kv_group: the chunk's selected keys are compacted into a list, then only their K and V rows are
    gathered; query_head: whole V tiles."""
    b, kvh, L, c0, ch = _chunk_program(lengths_ptr, T, HKV, CH)
    if c0 >= L:
        return
    if PDL:
        tl.extra.cuda.gdc_wait()  # the resolve's thresholds and the score kernel's scores
    Lc = tl.minimum(L, c0 + CH)
    m = tl.arange(0, BLOCK_M)
    rmask = m < G
    d = tl.arange(0, D)
    h = kvh * G + m
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    srow = (b * HQ + h).to(tl.int64) * T
    vbase = V + b.to(tl.int64) * svb + kvh.to(tl.int64) * svh
    rrow_t = (b * HKV + kvh).to(tl.int64) * T
    if KV_GROUP:
        tau = tl.load(thr_ptr + (b * HKV + kvh) * 2)
        istar = tl.load(thr_ptr + (b * HKV + kvh) * 2 + 1)
        q = _group_q(Q, b, kvh, sqb, sqh, G, D, BLOCK_M, K.dtype.element_ty)
        kbase = K + b.to(tl.int64) * skb + kvh.to(tl.int64) * skh
        # 1. the chunk's selected keys, in index order, compacted into IDX[b, kvh, c0:c0 + count]
        ibase = IDX + rrow_t + c0
        count = c0 * 0
        for i in range(0, CH, BLOCK_C):
            n = c0 + i + tl.arange(0, BLOCK_C)
            sel = _group_members(R, rrow_t, c0 + i, Lc, tau, istar, BLOCK_C)
            si = sel.to(tl.int32)
            tl.store(ibase + count + tl.cumsum(si, 0) - 1, n, mask=sel)
            count += tl.sum(si, 0)
        tl.debug_barrier()  # the list was written by other threads of this program
        # 2. only the listed K and V rows, BLOCK_N of them per tile (a row is one 128 B line at D = 64)
        for j0 in range(0, count, BLOCK_N):
            j = j0 + tl.arange(0, BLOCK_N)
            jv = j < count
            n = tl.load(ibase + j, mask=jv, other=0)
            v = tl.load(vbase + n[:, None].to(tl.int64) * svt + d[None, :], mask=jv[:, None], other=0.0)
            k = tl.load(kbase + n[:, None].to(tl.int64) * skt + d[None, :], mask=jv[:, None], other=0.0)
            s = _dot_scores(q, k, IEEE)  # the logits recomputed from the K rows
            sel2 = rmask[:, None] & jv[None, :]
            m_i, l_i, acc = _softmax_step(m_i, l_i, acc, s, sel2, v, scale, IEEE)
            if WRITE_MASK:
                tl.store(MASK + srow[:, None] + n[None, :], sel2.to(tl.int8), mask=sel2)
    else:
        tau = tl.load(thr_ptr + (b * HQ + h) * 2, mask=rmask, other=0)
        istar = tl.load(thr_ptr + (b * HQ + h) * 2 + 1, mask=rmask, other=0)
        n = c0 + tl.arange(0, BLOCK_N)
        s, sel = _members(S, srow, n, n < Lc, rmask, tau, istar)
        for i in range(0, CH, BLOCK_N):
            n = c0 + i + tl.arange(0, BLOCK_N)
            # whole V tiles: their addresses do not depend on the scores, so the loads start at once
            v = tl.load(vbase + n[:, None].to(tl.int64) * svt + d[None, :], mask=(n < Lc)[:, None], other=0.0)
            # the next tile's scores are loaded while this tile's V rows are in flight
            s_next, sel_next = _members(S, srow, n + BLOCK_N, n + BLOCK_N < Lc, rmask, tau, istar)
            m_i, l_i, acc = _softmax_step(m_i, l_i, acc, s, sel, v, scale, IEEE)
            if WRITE_MASK:
                tl.store(MASK + srow[:, None] + n[None, :], sel.to(tl.int8), mask=rmask[:, None] & (n < L)[None, :])
            s = s_next
            sel = sel_next
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()  # the combine's programs may start (they wait for this kernel)
    prow = (b * HQ + h).to(tl.int64) * NCH + ch
    tl.store(Mp + prow, m_i, mask=rmask)
    tl.store(Lp + prow, l_i, mask=rmask)
    tl.store(Op + prow[:, None] * D + d[None, :], acc, mask=rmask[:, None])


@triton.jit
def _combine_kernel(Mp, Lp, Op, OUT, lengths_ptr, sob, soh, HQ, NCH, T,
                    D: tl.constexpr, CH: tl.constexpr, NCH_B: tl.constexpr, PDL: tl.constexpr):
    """Merge the split-K partial results (max, sum, P.V) of one query row's chunks into its output."""
    pid = tl.program_id(0)
    b = pid // HQ
    hh = pid % HQ
    L = _length(lengths_ptr, b, T)
    nch = (L + CH - 1) // CH
    if PDL:
        tl.extra.cuda.gdc_wait()  # the attend's partial results
    j = tl.arange(0, NCH_B)
    d = tl.arange(0, D)
    M = tl.max(tl.full([NCH_B], float("-inf"), dtype=tl.float32), 0)
    lsum = tl.sum(tl.zeros([NCH_B], dtype=tl.float32), 0)
    acc = tl.zeros([D], dtype=tl.float32)
    for j0 in range(0, NCH, NCH_B):
        jj = j0 + j
        jm = jj < nch
        prow = pid.to(tl.int64) * NCH + jj
        mp = tl.load(Mp + prow, mask=jm, other=float("-inf"))
        lp = tl.load(Lp + prow, mask=jm, other=0.0)
        op = tl.load(Op + prow[:, None] * D + d[None, :], mask=jm[:, None], other=0.0)
        M_new = tl.maximum(M, tl.max(mp, 0))
        M_safe = tl.where(M_new == float("-inf"), 0.0, M_new)
        w = tl.where(jm, tl.exp(mp - M_safe), 0.0)
        a = tl.exp(M - M_safe)
        lsum = lsum * a + tl.sum(w * lp, 0)
        acc = acc * a + tl.sum(w[:, None] * op, 0)
        M = M_new
    o = acc / lsum
    tl.store(OUT + b.to(tl.int64) * sob + hh * soh + d, o.to(OUT.dtype.element_ty))


# ----------------------------------------------------------------------------- host side
def _auto_chunk(B: int, Hkv: int, T: int) -> int:
    """Keys per program: the largest of 2048..256 that still gives >= ~4 programs per SM (132)."""
    for ch in (2048, 1024, 512):
        if B * Hkv * triton.cdiv(T, ch) >= 512:
            return ch
    return 256


def _pow2(name: str, value: int, least: int = 16) -> int:
    value = int(value)
    if value < least or value & (value - 1):
        raise ValueError(f"{name} must be a power of 2 >= {least}, got {value}")
    return value


class DecodeWorkspace:
    """Pre-allocated buffers of :func:`topk_decode` for one shape (re-used, never re-allocated).

    B, Hq, Hkv, T (= T_max), D: the problem shape; selection: "query_head" or "kv_group". Settings
    (None = automatic; none of them changes the selected sets, only the speed and, for those that
    tile the attend differently (chunk, attend_block), the rounding of its fp32 sums):

    * chunk: keys per score / attend program (power of 2, >= block_n); block_n: keys per score tile;
      attend_block: keys per attend tile (powers of 2 >= 16; capped at call time so that the tiles of
      wide rows fit in shared memory); warps: of the score and attend kernels;
    * sample: keys in the band's strided sample (M; power of 2 >= 16; 1,024); capacity: candidates
      kept per ranking row (CAP; power of 2 >= 16; 4,096 up to T = 64K, 16,384 above, T rounded up to
      a power of 2 if smaller); rows of at most CAP keys take every key as a candidate;
    * select_sample: scores in the strided sample that places the counting search's first probes;
      select_block: scores per tile of the whole-row search (the fallback); select_warps: of the
      resolve kernel;
    * pdl: programmatic dependent launch of the launches after the first (None: on CUDA devices of
      compute capability >= 9; never elsewhere).

    Buffers: S [B, Hq, T] fp32 scores (query_head); R [B, Hkv, T] fp32 group-mean scores (kv_group);
    per ranking row (``rows`` = B*Hq or B*Hkv): samp [rows, M] fp32 sample scores, band [rows, 2]
    fp32 (lo, hi), nabove and ncand [rows] int32 (keys above the band, in the band), cand_s
    [rows, CAP] fp32 and cand_i [rows, CAP] int32 (the candidate lists), thr [rows, 2] int32
    (tau, i_star), idx [B, Hkv, T] int32 (kv_group: the keys each attend chunk lists, compacted in the
    chunk's range; [B, Hkv, 1] for query_head), passes [rows] int32 (passes of the counting search),
    path [rows] int32 (how the threshold was found: PATH_BAND, PATH_MISS, PATH_OVERFLOW or
    PATH_DENSE); Mp, Lp [B, Hq, chunks]
    and Op [B, Hq, chunks, D] fp32 partial results of the attend stage.
    """

    def __init__(self, B: int, Hq: int, Hkv: int, T: int, D: int, selection: str, device,
                 chunk: int | None = None, block_n: int | None = None, attend_block: int | None = None,
                 warps: int = 4, sample: int | None = None, capacity: int | None = None,
                 select_sample: int = 256, select_block: int | None = None, select_warps: int | None = None,
                 pdl: bool | None = None) -> None:
        check_selection(selection)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.key = (B, Hq, Hkv, T, D, selection, str(device))
        self.chunk = _pow2("chunk", chunk if chunk is not None else _auto_chunk(B, Hkv, T))
        # 128 keys per tile and 4 warps: the fastest of (64, 128) x (4, 8 warps) on the H200 at every N, B
        self.block_n = _pow2("block_n", block_n if block_n is not None else min(128, self.chunk))
        self.attend_block = _pow2("attend_block", attend_block if attend_block is not None else self.block_n)
        if self.chunk < max(self.block_n, self.attend_block):
            raise ValueError(f"chunk ({self.chunk}) must be >= block_n ({self.block_n}) and attend_block "
                             f"({self.attend_block})")
        self.warps = int(warps)
        # 1,024 sampled keys (the sort of a larger sample costs more than the band it narrows); a list long
        # enough for the band of +-4 sd: 4,096 up to T = 64K, 16,384 above
        self.sample = _pow2("sample", sample if sample is not None else 1024)
        self.capacity = _pow2("capacity", capacity if capacity is not None else
                              min(16384 if T > 65536 else 4096, max(16, triton.next_power_of_2(T))))
        self.ssample = _pow2("select_sample", select_sample)
        self.sblock = _pow2("select_block", select_block if select_block is not None else min(4096, max(16, triton.next_power_of_2(T))))
        self.swarps = int(select_warps or max(4, min(8, self.capacity // 1024)))
        cuda9 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
        self.pdl = bool(cuda9 if pdl is None else pdl and cuda9)
        self.nch = triton.cdiv(T, self.chunk)
        self.rows = B * (Hq if selection == "query_head" else Hkv)  # ranking rows
        f32, i32 = torch.float32, torch.int32
        if selection == "query_head":
            self.S = torch.empty(B, Hq, T, device=device, dtype=f32)  # fp32 scores: the attend's logits
            self.R = self.S  # the ranking rows are the scores
        else:
            self.R = torch.empty(B, Hkv, T, device=device, dtype=f32)  # group-mean ranking scores
            self.S = self.R  # not read: the attend recomputes the logits from the selected K rows
        # kv_group: each attend program's selected keys, compacted in its chunk's range (int32 key indices)
        self.idx = torch.empty(B, Hkv, T if selection == "kv_group" else 1, device=device, dtype=i32)
        self.samp = torch.empty(self.rows, self.sample, device=device, dtype=f32)
        self.band = torch.empty(self.rows, 2, device=device, dtype=f32)
        self.nabove = torch.empty(self.rows, device=device, dtype=i32)
        self.ncand = torch.empty(self.rows, device=device, dtype=i32)
        self.cand_s = torch.empty(self.rows, self.capacity, device=device, dtype=f32)
        self.cand_i = torch.empty(self.rows, self.capacity, device=device, dtype=i32)
        self.thr = torch.empty(self.rows, 2, device=device, dtype=i32)  # (tau, i_star) per ranking row
        self.passes = torch.empty(self.rows, device=device, dtype=i32)  # counting-search passes per row
        self.path = torch.empty(self.rows, device=device, dtype=i32)  # PATH_* per row
        self.Mp = torch.empty(B, Hq, self.nch, device=device, dtype=f32)
        self.Lp = torch.empty(B, Hq, self.nch, device=device, dtype=f32)
        self.Op = torch.empty(B, Hq, self.nch, D, device=device, dtype=f32)


_WORKSPACES: dict[tuple, DecodeWorkspace] = {}
_MAX_CACHED = 8


def _workspace(B, Hq, Hkv, T, D, selection, device) -> DecodeWorkspace:
    key = (B, Hq, Hkv, T, D, selection, str(device))
    ws = _WORKSPACES.get(key)
    if ws is None:
        if len(_WORKSPACES) >= _MAX_CACHED:
            _WORKSPACES.pop(next(iter(_WORKSPACES)))
        ws = _WORKSPACES[key] = DecodeWorkspace(B, Hq, Hkv, T, D, selection, device)
    return ws


_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
def _check(q, k_cache, v_cache, lengths, scale, check_lengths):
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("lengths", lengths)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 3:
        raise ValueError(f"q must be [B, Hq, D], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache must be [B, Hkv, T_max, D], got shape {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    B, Hq, D = q.shape
    _, Hkv, T, _ = k_cache.shape
    if k_cache.shape[0] != B:
        raise ValueError(f"k_cache batch {k_cache.shape[0]} != q batch {B}")
    if k_cache.shape[3] != D:
        raise ValueError(f"k_cache head_dim {k_cache.shape[3]} != q head_dim {D}")
    if D not in (16, 32, 64, 128, 256):
        raise ValueError(f"q head_dim must be one of 16, 32, 64, 128, 256, got {D}")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"q heads ({Hq}) must be a multiple of k_cache heads ({Hkv})")
    if Hq // Hkv > _BLOCK_M:
        raise ValueError(f"q heads per KV head must be <= {_BLOCK_M}, got {Hq // Hkv}")
    if T < 1 or B < 1:
        raise ValueError(f"k_cache must have T_max >= 1 and B >= 1, got shape {tuple(k_cache.shape)}")
    if T >= 2**24:  # the select counts in fp32
        raise ValueError(f"k_cache T_max must be < 2**24 = {2**24}, got {T}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"q dtype must be one of {_DTYPES}, got {q.dtype}")
    if k_cache.dtype != q.dtype:
        raise ValueError(f"k_cache dtype {k_cache.dtype} must equal q dtype {q.dtype}")
    if v_cache.dtype != q.dtype:
        raise ValueError(f"v_cache dtype {v_cache.dtype} must equal q dtype {q.dtype}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"lengths dtype must be int32 or int64, got {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be [B] = [{B}], got shape {tuple(lengths.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("lengths", lengths)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}: all must be on one device")
    if not (q.device.type == "cuda" or (q.device.type == "cpu" and _interpreting())):
        raise ValueError(f"q must be on a CUDA device (or the CPU with TRITON_INTERPRET=1), got {q.device}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have unit stride in its last dimension")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    capturing = q.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if check_lengths and not capturing:  # one host sync; pass check_lengths=False in steady state
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > T:
            raise ValueError(f"lengths must lie in [1, T_max={T}], got min {lo}, max {hi}")


def _resolve(ws: DecodeWorkspace, lengths: torch.Tensor, rule: TopKRule) -> None:
    """The resolve stage alone: (tau, i_star) of every ranking row into ``ws.thr`` from the candidate
    lists and counters (``ws.cand_s``, ``ws.cand_i``, ``ws.ncand``, ``ws.nabove``), else from the rows of
    ``ws.R``."""
    B, Hq, Hkv, T = ws.key[:4]
    rows_per_b = Hkv if rule.selection == "kv_group" else Hq
    _resolve_kernel[(ws.rows,)](
        ws.R, ws.band, ws.nabove, ws.ncand, ws.cand_s, ws.cand_i, lengths, ws.thr, ws.passes, ws.path,
        T, rows_per_b, *rule_args(rule),
        SAMP=ws.ssample, CAP=ws.capacity, BLOCK=ws.sblock, PDL=ws.pdl, num_warps=ws.swarps,
        **(dict(launch_pdl=True) if ws.pdl else {}))


def decode_launches(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                    rule: TopKRule, *, out: torch.Tensor, scale: float | None = None,
                    workspace: DecodeWorkspace | None = None) -> list[tuple[str, Callable[[], None]]]:
    """The launches of one :func:`topk_decode` call, in order: ``[(stage name, launch), ...]`` for the
    stages sample, score, resolve, attend, combine (arguments as :func:`topk_decode`, lengths not
    checked). Running every launch in order is one call of the op; a prefix of them leaves the
    workspace as the op would at that point (the bench times the stages by prefixes)."""
    rule_args(rule)  # a TopKRule the kernels can take, else ValueError
    _check(q, k_cache, v_cache, lengths, scale, False)
    return _launches(q, k_cache, v_cache, lengths, rule, scale, out, workspace, None)


def _launches(q, k_cache, v_cache, lengths, rule, scale, out, workspace, mask):
    """decode_launches on checked arguments; mask: an int8 [B, Hq, T_max] tensor that receives the
    selected set, or None."""
    B, Hq, D = q.shape
    _, Hkv, T, _ = k_cache.shape
    G = Hq // Hkv
    kv_group = rule.selection == "kv_group"
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    ws = workspace if workspace is not None else _workspace(B, Hq, Hkv, T, D, rule.selection, q.device)
    if ws.key != (B, Hq, Hkv, T, D, rule.selection, str(q.device)):
        raise ValueError(f"workspace was made for {ws.key}, not this call")
    if out.shape != (B, Hq, D) or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError(f"out must be a [B, Hq, D] = {(B, Hq, D)} {q.dtype} tensor on {q.device}")
    CH, NCH = ws.chunk, ws.nch
    ieee = q.dtype == torch.float32 or _interpreting()  # the interpreter's bf16/fp16 dot is wrong
    num, den, kmin, thr = rule_args(rule)
    qs = (q.stride(0), q.stride(1))
    ks = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2))
    shape = dict(G=G, KV_GROUP=kv_group, IEEE=ieee, D=D, BLOCK_M=_BLOCK_M)

    # programmatic dependent launch (sm_90+): each launch after the first may start while its predecessor
    # finishes, and waits for it (gdc_wait) before reading what the predecessor wrote
    pdl = dict(launch_pdl=True) if ws.pdl else {}

    def sample():
        _sample_kernel[(ws.rows,)](
            q, k_cache, ws.samp, ws.band, ws.nabove, ws.ncand, lengths, *qs, *ks, T, Hkv, Hq,
            num, den, kmin, thr, M=ws.sample, TS=min(_SAMPLE_TILE, ws.sample), CAP=ws.capacity,
            PDL=ws.pdl, **shape, num_warps=8 if ws.sample >= 256 else 4)

    GP = triton.next_power_of_2(G)
    band_block = min(CH, _BAND_BLOCK)  # kv_group: keys per bookkeeping step

    def score():
        _score_kernel[(B * Hkv, NCH)](
            q, k_cache, ws.S, ws.R, ws.band, ws.nabove, ws.ncand, ws.cand_s, ws.cand_i, lengths, *qs, *ks, T, Hkv, Hq,
            GP=GP, CH=CH, BLOCK_N=ws.block_n, BLOCK_B=band_block, CAP=ws.capacity, PDL=ws.pdl, **shape,
            num_warps=ws.warps, **pdl)

    def resolve():
        _resolve(ws, lengths, rule)

    # the attend's tiles (K and V rows for kv_group, V for query_head; two pipeline stages) in <= 160 KB of
    # shared memory: attend_block capped for wide rows
    tile_bytes = 2 * (2 if kv_group else 1) * D * q.element_size()
    ab = min(ws.attend_block, 1 << ((163840 // tile_bytes).bit_length() - 1))

    def attend():
        _attend_kernel[(B * Hkv, NCH)](
            q, k_cache, v_cache, ws.S, ws.R, ws.idx, ws.thr, lengths, ws.Mp, ws.Lp, ws.Op, ws.Mp if mask is None else mask,
            *qs, *ks, v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), T, Hkv, Hq, NCH, scale,
            CH=CH, BLOCK_N=ab, BLOCK_C=min(CH, _COMPACT_BLOCK),
            WRITE_MASK=mask is not None, PDL=ws.pdl, **shape, num_warps=ws.warps, **pdl)

    def combine():
        _combine_kernel[(B * Hq,)](
            ws.Mp, ws.Lp, ws.Op, out, lengths, out.stride(0), out.stride(1), Hq, NCH, T,
            D=D, CH=CH, NCH_B=min(_COMBINE_BLOCK, triton.next_power_of_2(NCH)), PDL=ws.pdl, num_warps=4, **pdl)

    return [("sample", sample), ("score", score), ("resolve", resolve), ("attend", attend), ("combine", combine)]


def topk_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                rule: TopKRule, *, scale: float | None = None, return_indices: bool = False,
                out: torch.Tensor | None = None, workspace: DecodeWorkspace | None = None,
                check_lengths: bool = True):
    """One decode step of exact Top-K attention (the rule of ``decode_reference``).

    q: [B, Hq, D]; k_cache, v_cache: [B, Hkv, T_max, D] (same dtype as q: bf16, fp16 or fp32;
    rows >= lengths[b] are ignored); lengths: [B] int32/int64 on q's device, 1 <= length <= T_max;
    rule: the TopKRule (coverage, k_min, dispatch threshold, selection); scale: softmax scale
    (None = 1/sqrt(D)). Returns out [B, Hq, D] in q's dtype and, with ``return_indices``, the
    selected set as a bool mask [B, Hq, T_max] (as ``decode_reference`` returns it).

    out: optional pre-allocated output; workspace: optional :class:`DecodeWorkspace` (else one
    cached per shape); check_lengths: validate length values (one host sync; skipped while a CUDA
    graph is being captured).
    """
    rule_args(rule)  # a TopKRule the kernels can take, else ValueError
    _check(q, k_cache, v_cache, lengths, scale, check_lengths)
    if out is None:
        out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    mask = None
    if return_indices:
        mask = torch.zeros(q.shape[0], q.shape[1], k_cache.shape[2], device=q.device, dtype=torch.int8)
    for _, launch in _launches(q, k_cache, v_cache, lengths, rule, scale, out, workspace, mask):
        launch()
    if return_indices:
        return out, mask.bool()
    return out
