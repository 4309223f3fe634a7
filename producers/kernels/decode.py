"""Exact Top-K sparse attention, decode mode, in Triton: one query row per sequence.

The rule is the one of :mod:`producers.kernels.reference` (tested against it): fp32 scores,
``k_eff(t) = min(t, max(k_min, floor(c*t)))`` in exact integer arithmetic, ties to the lower key
index, dense rows when ``t < dispatch_threshold``, softmax over the set in fp32.

Pipeline (every launch is split along N so that all SMs work at batch 1; no host sync, no sort):

1. ``score``   grid (B*Hkv, chunks). The group's query heads (padded to 16 rows) times a K tile
   on the tensor cores, fp32 accumulation. Writes fp32 scores ``S[B, Hq, T]`` (``-0.0`` mapped to
   ``+0.0``) and, for ``selection="kv_group"``, the group-mean ranking scores ``R[B, Hkv, T]``.
   K is read once; the cache is never expanded per query head.
2. ``select``  radix select of the k-th largest ranking score on the order-preserving int32 image
   of fp32, without a sort. Two passes (grid rows x chunks) count digits 0 and 1 (bits 31-24,
   then 23-16 of the keys that match digit 0) into per-row 256-bin histograms (per-program
   register histograms added atomically); the next kernel picks the bucket holding the k-th
   largest. ``compact`` appends the keys whose top 16 bits match with
   their indices to a per-row candidate list (for randn scores about 0.2 % of the keys by a
   back-of-envelope count; not measured; all of them if all scores are equal); ``finalize`` (one program per row) resolves the last
   16 bits on that list and, when keys equal to the threshold must be split, the index bound of
   the ties by bisection. Result per ranking row: ``(tau, i_star)``; the set is
   ``{i : key_i > tau} ∪ {i : key_i == tau, i <= i_star}`` — the k_eff largest, ties to the lower
   index, exactly the reference's set.
3. ``attend``  grid (B*Hkv, chunks). Re-reads the chunk's scores, tests membership against (tau, i_star),
   online softmax per head in fp32, gathers only the V rows that some head of the group selected
   (masked loads: unselected rows are not fetched) and multiplies on the tensor cores (the
   probabilities are rounded to the cache dtype for the product, as in FlashAttention).
   ``combine`` merges the per-chunk partial results (split-K).

Work buffers live in a :class:`DecodeWorkspace` (cached per shape), so the steady state allocates
nothing but the output and is CUDA-graph capturable.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import triton
import triton.language as tl

from producers.kernels.reference import TopKRule

_IMIN = tl.constexpr(-2147483648)  # int32 min, as a constexpr so it stays int32 in kernels
_IMAX = tl.constexpr(2147483647)
_NB = 256  # radix digit: 8 bits
_BLOCK_M = 16  # query rows per tensor-core tile (the group padded)


# ----------------------------------------------------------------------------- device helpers
@triton.jit
def _order_key(x):
    """fp32 -> int32 whose signed order is the float order (-0.0 must already be +0.0)."""
    b = x.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _keff(L, NUM, DEN, KMIN, THR):
    """k_eff(L) of the rule, exact integer arithmetic (L int32 scalar)."""
    k = ((L.to(tl.int64) * NUM) // DEN).to(tl.int32)
    k = tl.minimum(tl.maximum(k, KMIN), L)
    return tl.where(L < THR, L, k)


@triton.jit
def _length(lengths_ptr, b, T):
    L = tl.load(lengths_ptr + b).to(tl.int32)
    return tl.minimum(tl.maximum(L, 1), T)  # memory safety only; values are checked on the host


@triton.jit
def _find_bucket(h, krem, NB: tl.constexpr):
    """Bucket b holding the krem-th largest (1-based) of histogram h, and the count above b."""
    j = tl.arange(0, NB)
    total = tl.sum(h, 0)
    suf = total - tl.cumsum(h, 0) + h  # number of keys with digit >= j
    b = tl.sum((suf >= krem).to(tl.int32), 0) - 1
    above = tl.sum(tl.where(j > b, h, 0), 0)
    return b, above


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _score_kernel(Q, K, S, R, lengths_ptr, sqb, sqh, skb, skh, skt, T, HKV, HQ,
                  G: tl.constexpr, KV_GROUP: tl.constexpr, IEEE: tl.constexpr, D: tl.constexpr,
                  CH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid = tl.program_id(0)
    ch = tl.program_id(1)
    b = pid // HKV
    kvh = pid % HKV
    L = _length(lengths_ptr, b, T)
    c0 = ch * CH
    if c0 >= L:
        return
    m = tl.arange(0, BLOCK_M)
    rmask = m < G
    d = tl.arange(0, D)
    h = kvh * G + m
    q = tl.load(Q + b.to(tl.int64) * sqb + h[:, None] * sqh + d[None, :], mask=rmask[:, None], other=0.0)
    q = q.to(K.dtype.element_ty)
    kbase = K + b.to(tl.int64) * skb + kvh.to(tl.int64) * skh
    srow = (b * HQ + h).to(tl.int64) * T
    for i in range(0, CH, BLOCK_N):
        n = c0 + i + tl.arange(0, BLOCK_N)
        nv = n < L
        k = tl.load(kbase + n[:, None].to(tl.int64) * skt + d[None, :], mask=nv[:, None], other=0.0)
        if IEEE:  # fp32 operands (fp32 cache, or the interpreter, whose bf16 dot is broken)
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(s == 0.0, 0.0, s)  # -0.0 ties with +0.0
        tl.store(S + srow[:, None] + n[None, :], s, mask=rmask[:, None] & nv[None, :])
        if KV_GROUP:
            r = tl.sum(tl.where(rmask[:, None], s, 0.0), 0) / G
            r = tl.where(r == 0.0, 0.0, r)
            tl.store(R + (b * HKV + kvh).to(tl.int64) * T + n, r, mask=nv)


@triton.jit
def _select_pass_kernel(RS, lengths_ptr, hist_ptr, state_ptr, T, ROWS_PER_B, NROWS,
                        NUM, DEN, KMIN, THR,
                        LEVEL: tl.constexpr, CH: tl.constexpr, BLOCK: tl.constexpr):
    """Radix digit LEVEL (0: bits 31-24, 1: bits 23-16) of the keys that match the prefix so far."""
    row = tl.program_id(0)
    ch = tl.program_id(1)
    L = _length(lengths_ptr, row // ROWS_PER_B, T)
    k = _keff(L, NUM, DEN, KMIN, THR)
    c0 = ch * CH
    if (c0 >= L) | (k >= L):
        return
    j = tl.arange(0, 256)
    if LEVEL == 0:
        prefix = 0
        krem = k
    else:
        hprev = tl.load(hist_ptr + row * 256 + j)
        bk, above = _find_bucket(hprev, k, 256)
        prefix = bk << 24
        krem = k - above
    if ch == 0:
        tl.store(state_ptr + (row * 3 + LEVEL) * 2, prefix)
        tl.store(state_ptr + (row * 3 + LEVEL) * 2 + 1, krem)
    h = tl.zeros([256], dtype=tl.int32)
    base = RS + row.to(tl.int64) * T
    for i in range(0, CH, BLOCK):
        n = c0 + i + tl.arange(0, BLOCK)
        valid = n < L
        x = tl.load(base + n, mask=valid, other=0.0)
        u = _order_key(x) ^ _IMIN  # bit pattern whose unsigned order is the float order
        if LEVEL == 1:
            valid = valid & (((u ^ prefix) & -16777216) == 0)  # top 8 bits match
        h += tl.histogram((u >> (24 - 8 * LEVEL)) & 255, 256, mask=valid)
    tl.atomic_add(hist_ptr + (LEVEL * NROWS + row) * 256 + j, h, mask=h > 0)


@triton.jit
def _compact_kernel(RS, lengths_ptr, hist_ptr, cnt_ptr, state_ptr, cand_k, cand_i, T, ROWS_PER_B, NROWS,
                    NUM, DEN, KMIN, THR, CH: tl.constexpr, BLOCK: tl.constexpr):
    """Append the keys whose top 16 bits equal the k-th largest's (key bits, index) to the row's list."""
    row = tl.program_id(0)
    ch = tl.program_id(1)
    L = _length(lengths_ptr, row // ROWS_PER_B, T)
    k = _keff(L, NUM, DEN, KMIN, THR)
    c0 = ch * CH
    if (c0 >= L) | (k >= L):
        return
    j = tl.arange(0, 256)
    prefix = tl.load(state_ptr + (row * 3 + 1) * 2)
    krem = tl.load(state_ptr + (row * 3 + 1) * 2 + 1)
    hprev = tl.load(hist_ptr + (NROWS + row) * 256 + j)
    bk, above = _find_bucket(hprev, krem, 256)
    prefix = prefix | (bk << 16)
    krem = krem - above
    if ch == 0:
        tl.store(state_ptr + (row * 3 + 2) * 2, prefix)
        tl.store(state_ptr + (row * 3 + 2) * 2 + 1, krem)
    base = RS + row.to(tl.int64) * T
    obase = row.to(tl.int64) * T
    for i in range(0, CH, BLOCK):
        n = c0 + i + tl.arange(0, BLOCK)
        valid = n < L
        x = tl.load(base + n, mask=valid, other=0.0)
        u = _order_key(x) ^ _IMIN
        match = valid & (((u ^ prefix) & -65536) == 0)  # top 16 bits match
        mi = match.to(tl.int32)
        start = tl.atomic_add(cnt_ptr + row, tl.sum(mi, 0))  # slots for this tile's matches
        pos = start + tl.cumsum(mi, 0) - 1
        tl.store(cand_k + obase + pos, u, mask=match)
        tl.store(cand_i + obase + pos, n, mask=match)


@triton.jit
def _finalize_kernel(lengths_ptr, cnt_ptr, state_ptr, cand_k, cand_i, thr_ptr, T, ROWS_PER_B,
                     NUM, DEN, KMIN, THR, IB, CB: tl.constexpr):
    """Last 16 bits of tau from the row's candidate list, then the index bound of the ties.

    Writes thr[row] = (tau as signed order key, i_star): the set is key > tau, or key == tau and
    index <= i_star (i_star = the index of the k_tie-th key equal to tau, or IMAX: all of them).
    """
    row = tl.program_id(0)
    L = _length(lengths_ptr, row // ROWS_PER_B, T)
    k = _keff(L, NUM, DEN, KMIN, THR)
    if k >= L:  # dense row: everything visible is selected
        tl.store(thr_ptr + row * 2, _IMIN)
        tl.store(thr_ptr + row * 2 + 1, _IMAX)
    else:
        j = tl.arange(0, 256)
        prefix = tl.load(state_ptr + (row * 3 + 2) * 2)
        krem = tl.load(state_ptr + (row * 3 + 2) * 2 + 1)
        C = tl.load(cnt_ptr + row)
        obase = row.to(tl.int64) * T
        n_eq = krem  # overwritten below
        for lvl in tl.static_range(2):
            h = tl.zeros([256], dtype=tl.int32)
            for c0 in range(0, C, CB):
                ii = c0 + tl.arange(0, CB)
                m = ii < C
                u = tl.load(cand_k + obase + ii, mask=m, other=0)
                if lvl == 1:
                    m = m & (((u ^ prefix) & -256) == 0)
                h += tl.histogram((u >> (8 - 8 * lvl)) & 255, 256, mask=m)
            bk, above = _find_bucket(h, krem, 256)
            prefix = prefix | (bk << (8 - 8 * lvl))
            krem = krem - above
            n_eq = tl.sum(tl.where(j == bk, h, 0), 0)
        # ties: smallest i_star with #{key == tau, index <= i_star} >= krem (bisection on the index)
        split = krem < n_eq
        lo = IB * 0
        hi = (1 << IB) - 1
        for _ in range(0, tl.where(split, IB, 0)):
            mid = (lo + hi) >> 1
            cnt = IB * 0
            for c0 in range(0, C, CB):
                ii = c0 + tl.arange(0, CB)
                m = ii < C
                u = tl.load(cand_k + obase + ii, mask=m, other=0)
                idx = tl.load(cand_i + obase + ii, mask=m, other=0)
                cnt += tl.sum((m & (u == prefix) & (idx <= mid)).to(tl.int32), 0)
            ge = cnt >= krem
            hi = tl.where(ge, mid, hi)
            lo = tl.where(ge, lo, mid + 1)
        tl.store(thr_ptr + row * 2, prefix ^ _IMIN)
        tl.store(thr_ptr + row * 2 + 1, tl.where(split, lo, _IMAX))


@triton.jit
def _attend_kernel(S, R, V, thr_ptr, lengths_ptr, Mp, Lp, Op, MASK,
                   svb, svh, svt, T, HKV, HQ, NCH, scale,
                   G: tl.constexpr, KV_GROUP: tl.constexpr, IEEE: tl.constexpr, D: tl.constexpr,
                   CH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, WRITE_MASK: tl.constexpr):
    pid = tl.program_id(0)
    ch = tl.program_id(1)
    b = pid // HKV
    kvh = pid % HKV
    L = _length(lengths_ptr, b, T)
    c0 = ch * CH
    if c0 >= L:
        return
    m = tl.arange(0, BLOCK_M)
    rmask = m < G
    d = tl.arange(0, D)
    h = kvh * G + m
    if KV_GROUP:
        rrow = b * HKV + kvh + 0 * m
    else:
        rrow = b * HQ + h
    tau = tl.load(thr_ptr + rrow * 2, mask=rmask, other=0)
    istar = tl.load(thr_ptr + rrow * 2 + 1, mask=rmask, other=0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    srow = (b * HQ + h).to(tl.int64) * T
    vbase = V + b.to(tl.int64) * svb + kvh.to(tl.int64) * svh
    for i in range(0, CH, BLOCK_N):
        n = c0 + i + tl.arange(0, BLOCK_N)
        nv = n < L
        valid2 = rmask[:, None] & nv[None, :]
        s = tl.load(S + srow[:, None] + n[None, :], mask=valid2, other=0.0)
        if KV_GROUP:
            rs = tl.load(R + (b * HKV + kvh).to(tl.int64) * T + n, mask=nv, other=0.0)
            sk = _order_key(rs)[None, :]
        else:
            sk = _order_key(s)
        tie_ok = (sk == tau[:, None]) & (n[None, :] <= istar[:, None])
        sel = valid2 & ((sk > tau[:, None]) | tie_ok)
        logits = tl.where(sel, s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(logits - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        vm = tl.max(sel.to(tl.int32), 0) > 0  # union of the group's sets: only these V rows are read
        v = tl.load(vbase + n[:, None].to(tl.int64) * svt + d[None, :], mask=vm[:, None], other=0.0)
        if IEEE:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
        if WRITE_MASK:
            tl.store(MASK + srow[:, None] + n[None, :], sel.to(tl.int8), mask=valid2)
    prow = (b * HQ + h).to(tl.int64) * NCH + ch
    tl.store(Mp + prow, m_i, mask=rmask)
    tl.store(Lp + prow, l_i, mask=rmask)
    tl.store(Op + prow[:, None] * D + d[None, :], acc, mask=rmask[:, None])


@triton.jit
def _combine_kernel(Mp, Lp, Op, OUT, lengths_ptr, sob, soh, HQ, NCH, T,
                    D: tl.constexpr, CH: tl.constexpr, NCH_B: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // HQ
    hh = pid % HQ
    L = _length(lengths_ptr, b, T)
    nch = (L + CH - 1) // CH
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


class DecodeWorkspace:
    """Pre-allocated buffers of :func:`topk_decode` for one shape (re-used, never re-allocated).

    B, Hq, Hkv, T (= T_max), D: the problem shape; selection: "query_head" or "kv_group";
    chunk: keys per program along N (power of 2, >= block_n; None = automatic);
    block_n: keys per tile inside a program (power of 2, >= 16).
    """

    def __init__(self, B: int, Hq: int, Hkv: int, T: int, D: int, selection: str, device,
                 chunk: int | None = None, block_n: int | None = None, warps: int = 4) -> None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.key = (B, Hq, Hkv, T, D, selection, str(device))
        self.chunk = int(chunk) if chunk is not None else _auto_chunk(B, Hkv, T)
        # 128: the best of (64, 128) x (4, 8 warps) at every N, B of the H200 sweep (docs/performance.md)
        self.block_n = int(block_n) if block_n is not None else min(128, self.chunk)
        self.warps = int(warps)  # score and attend kernels
        self.sblock = min(self.chunk, 2048)  # keys per tile of a select pass
        self.swarps = 8 if self.sblock >= 2048 else 4
        ch, bn = self.chunk, self.block_n
        if ch & (ch - 1) or bn & (bn - 1) or bn < 16 or ch < bn:
            raise ValueError(f"chunk ({ch}) and block_n ({bn}) must be powers of 2 with 16 <= block_n <= chunk")
        self.nch = triton.cdiv(T, ch)
        self.rows = B * (Hq if selection == "query_head" else Hkv)  # ranking rows
        f32, i32 = torch.float32, torch.int32
        self.S = torch.empty(B, Hq, T, device=device, dtype=f32)  # fp32 scores
        self.R = torch.empty(B, Hkv, T, device=device, dtype=f32) if selection == "kv_group" else self.S
        nh = 2 * self.rows * _NB
        self.counts = torch.zeros(nh + self.rows, device=device, dtype=i32)  # zeroed every call
        self.hist = self.counts[:nh].view(2, self.rows, _NB)  # radix histograms of digits 0 and 1
        self.cnt = self.counts[nh:]  # candidates per ranking row
        self.cand_k = torch.empty(self.rows, T, device=device, dtype=i32)  # candidate key bits
        self.cand_i = torch.empty(self.rows, T, device=device, dtype=i32)  # candidate key index
        self.state = torch.empty(self.rows, 3, 2, device=device, dtype=i32)
        self.thr = torch.empty(self.rows, 2, device=device, dtype=i32)
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


def _check(q, k_cache, v_cache, lengths, rule, scale, check_lengths):
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("lengths", lengths)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not isinstance(rule, TopKRule):
        raise ValueError(f"rule must be a TopKRule, got {type(rule).__name__}")
    c = rule.coverage_fraction
    if not (0 < c <= 1):
        raise ValueError(f"rule.coverage must be in (0, 1], got {rule.coverage!r}")
    if c.numerator >= 2**31 or c.denominator >= 2**31:
        raise ValueError(f"rule.coverage {rule.coverage!r}: numerator/denominator must be < 2**31")
    if rule.selection not in ("query_head", "kv_group"):
        raise ValueError(f"rule.selection must be 'query_head' or 'kv_group', got {rule.selection!r}")
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


def topk_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                rule: TopKRule, *, scale: float | None = None, return_indices: bool = False,
                out: torch.Tensor | None = None, workspace: DecodeWorkspace | None = None,
                check_lengths: bool = True, stages: tuple[str, ...] = ("score", "select", "attend")):
    """One decode step of exact Top-K attention (the rule of ``decode_reference``).

    q: [B, Hq, D]; k_cache, v_cache: [B, Hkv, T_max, D] (same dtype as q: bf16, fp16 or fp32;
    rows >= lengths[b] are ignored); lengths: [B] int32/int64 on q's device, 1 <= length <= T_max;
    rule: the TopKRule (coverage, k_min, dispatch threshold, selection); scale: softmax scale
    (None = 1/sqrt(D)). Returns out [B, Hq, D] in q's dtype and, with ``return_indices``, the
    selected set as a bool mask [B, Hq, T_max] (as ``decode_reference`` returns it).

    out: optional pre-allocated output; workspace: optional :class:`DecodeWorkspace` (else one
    cached per shape); check_lengths: validate length values (one host sync; skipped while a CUDA
    graph is being captured); stages: run only some stages (for per-stage timing; the output is
    then meaningless).
    """
    _check(q, k_cache, v_cache, lengths, rule, scale, check_lengths)
    B, Hq, D = q.shape
    _, Hkv, T, _ = k_cache.shape
    G = Hq // Hkv
    kv_group = rule.selection == "kv_group"
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    ws = workspace if workspace is not None else _workspace(B, Hq, Hkv, T, D, rule.selection, q.device)
    if ws.key != (B, Hq, Hkv, T, D, rule.selection, str(q.device)):
        raise ValueError(f"workspace was made for {ws.key}, not this call")
    if out is None:
        out = torch.empty(B, Hq, D, device=q.device, dtype=q.dtype)
    elif out.shape != (B, Hq, D) or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError(f"out must be a [B, Hq, D] = {(B, Hq, D)} {q.dtype} tensor on {q.device}")
    c: Fraction = rule.coverage_fraction
    NUM, DEN = c.numerator, c.denominator
    KMIN = min(int(rule.k_min), 2**31 - 1)
    THR = min(int(rule.dispatch_threshold), 2**31 - 1)
    CH, BN, NCH = ws.chunk, ws.block_n, ws.nch
    ieee = q.dtype == torch.float32 or _interpreting()  # the interpreter's bf16/fp16 dot is wrong
    rows_per_b = Hkv if kv_group else Hq
    mask = torch.zeros(B, Hq, T, device=q.device, dtype=torch.int8) if return_indices else ws.Mp

    if "score" in stages:
        _score_kernel[(B * Hkv, NCH)](
            q, k_cache, ws.S, ws.R, lengths, q.stride(0), q.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), T, Hkv, Hq,
            G=G, KV_GROUP=kv_group, IEEE=ieee, D=D, CH=CH, BLOCK_N=BN, BLOCK_M=_BLOCK_M,
            num_warps=ws.warps)
    if "select" in stages:
        ws.counts.zero_()
        for level in (0, 1):
            _select_pass_kernel[(ws.rows, NCH)](
                ws.R, lengths, ws.hist, ws.state, T, rows_per_b, ws.rows,
                NUM, DEN, KMIN, THR, LEVEL=level, CH=CH, BLOCK=ws.sblock, num_warps=ws.swarps)
        _compact_kernel[(ws.rows, NCH)](
            ws.R, lengths, ws.hist, ws.cnt, ws.state, ws.cand_k, ws.cand_i, T, rows_per_b, ws.rows,
            NUM, DEN, KMIN, THR, CH=CH, BLOCK=ws.sblock, num_warps=ws.swarps)
        _finalize_kernel[(ws.rows,)](
            lengths, ws.cnt, ws.state, ws.cand_k, ws.cand_i, ws.thr, T, rows_per_b,
            NUM, DEN, KMIN, THR, max(1, (T - 1).bit_length()), CB=1024, num_warps=4)
    if "attend" in stages:
        _attend_kernel[(B * Hkv, NCH)](
            ws.S, ws.R, v_cache, ws.thr, lengths, ws.Mp, ws.Lp, ws.Op, mask,
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), T, Hkv, Hq, NCH, scale,
            G=G, KV_GROUP=kv_group, IEEE=ieee, D=D, CH=CH, BLOCK_N=BN, BLOCK_M=_BLOCK_M,
            WRITE_MASK=return_indices, num_warps=ws.warps)
        _combine_kernel[(B * Hq,)](
            ws.Mp, ws.Lp, ws.Op, out, lengths, out.stride(0), out.stride(1), Hq, NCH, T,
            D=D, CH=CH, NCH_B=min(16, triton.next_power_of_2(NCH)), num_warps=4)
    if return_indices:
        return out, mask.bool()
    return out
