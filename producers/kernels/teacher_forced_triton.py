"""Triton kernels of teacher-forced exact Top-K attention (the algorithm: :mod:`producers.kernels.teacher_forced`).

Two kernels with one program per (ranking row, block of BLOCK_M query rows) (:func:`_program`; ranking rows:
B*Hq query heads, or B*Hkv KV groups for ``kv_group``): :func:`_tf_count_kernel` (the counting passes) and
:func:`_tf_attend_kernel` (the attention pass, one softmax per head of the ranking row). Imported lazily by
``teacher_forced.py``; on a machine without CUDA set ``TRITON_INTERPRET=1`` before importing
(``teacher_forced._triton_module`` does).
"""
import triton
import triton.language as tl

from dcr.producers.kernels.triton_rule import float_of_key, k_eff, order_key

@triton.jit
def _key_of(s):
    """fp32 -> int32 order key with -0.0 counted as +0.0 (the scores come straight from tl.dot)."""
    return order_key(tl.where(s == 0.0, 0.0, s))


@triton.jit
def _entry(key, idx):
    """A list entry, int64: (key << 32) + (2^32 - 1 - idx), so that a larger entry is a better key (a larger
    score, or the same score and a lower index); key, idx int32 [BLOCK_M]."""
    return key.to(tl.int64) * 4294967296 + (4294967295 - idx.to(tl.int64))


@triton.jit
def _entry_index(e):
    """The key index (int32) of list entries e (:func:`_entry`)."""
    return (4294967295 - (e & 4294967295)).to(tl.int32)


@triton.jit
def _ranking_q(q_ptrs, sqh, row_ok, HEADS: tl.constexpr):
    """The query tiles [BLOCK_M, HEAD_D] of a ranking row's HEADS heads (1 for query_head, the group for
    kv_group), heads sqh apart from q_ptrs, as a tuple. Loaded once per program, outside the key loops."""
    qs = ()
    for h in tl.static_range(HEADS):
        qs = qs + (tl.load(q_ptrs + h * sqh, mask=row_ok[:, None], other=0.0),)
    return qs


@triton.jit
def _rank_scores(qr, kt, PREC: tl.constexpr):
    """Scores used for ranking, [BLOCK_M, BLOCK_N] fp32, from the tuple qr of :func:`_ranking_q`: the own
    head's q . kt (query_head), or the sum of the group's heads' scores (kv_group; it ranks as the group mean
    does) accumulated head by head in one chain of tensor-core dots. The counting and attention kernels both
    call this, so their ranking scores agree bit for bit."""
    r = tl.dot(qr[0], kt, input_precision=PREC)
    for h in tl.static_range(1, len(qr)):
        r = tl.dot(qr[h], kt, r, input_precision=PREC)
    return r


@triton.jit
def _cand(xk, lo, hi):
    """Candidate key near the fp32 key-space position xk, clamped into [lo + 1, hi - 1] (int32)."""
    kx = xk.to(tl.int64)
    kx = tl.minimum(tl.maximum(kx, lo + 1), hi - 1)
    return kx.to(tl.int32)


@triton.jit
def _load_kt(k_base, offs_n, offs_d, skn, skd, N, MASKED: tl.constexpr):
    """K^T tile [HEAD_D, BLOCK_N]."""
    if MASKED:
        return tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd, mask=offs_n[None, :] < N, other=0.0)
    else:
        return tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd)


@triton.jit
def _row_partials(x):
    """Partial row sums of x [BLOCK_M, BLOCK_N] as [BLOCK_M, 4]: column c goes to partial (c // 2) % 4, the
    thread of the row that holds it in the tensor-core accumulator layout, so the sum stays inside each thread
    (no shuffles); the counting pass sums the 4 partials once, after its key loop."""
    return tl.sum(tl.sum(tl.reshape(x, [x.shape[0], x.shape[1] // 8, 4, 2]), axis=3), axis=1)


@triton.jit
def _cnt1(sr, vis, f, MASKED: tl.constexpr):
    """Per row: number of visible scores >= f, as 4 partial counts [BLOCK_M, 4] (:func:`_row_partials`;
    fp32, exact below 2^24)."""
    if MASKED:
        return _row_partials(tl.where(vis & (sr >= f[:, None]), 1.0, 0.0))
    else:
        return _row_partials(tl.where(sr >= f[:, None], 1.0, 0.0))


@triton.jit
def _cnt_step(sr, vis, f0, f1, f2, f3, flo, fhi, n0, n1, n2, n3, mn, mx, MASKED: tl.constexpr, SNAP: tl.constexpr):
    """A counting pass over one key block. Scores are compared as floats with the thresholds
    ``f_j = float_of_key(c_j)``: for finite scores (-0.0 == +0.0), ``s >= f_j`` iff ``key(s) >= c_j``."""
    n0 += _cnt1(sr, vis, f0, MASKED)
    n1 += _cnt1(sr, vis, f1, MASKED)
    n2 += _cnt1(sr, vis, f2, MASKED)
    n3 += _cnt1(sr, vis, f3, MASKED)
    if SNAP:
        ge = sr >= flo[:, None]
        lt = sr < fhi[:, None]
        if MASKED:
            ge = ge & vis
            lt = lt & vis
        mn = tl.minimum(mn, tl.min(tl.where(ge, sr, float("inf")), axis=1))
        mx = tl.maximum(mx, tl.max(tl.where(lt, sr, float("-inf")), axis=1))
    return n0, n1, n2, n3, mn, mx


@triton.jit
def _count_blocks(start, stop, k_base, qr, offs_m, offs_n0, offs_d, skn, skd, N,
                  f0, f1, f2, f3, flo, fhi, n0, n1, n2, n3, mn, mx, PREC: tl.constexpr,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, SNAP: tl.constexpr):
    """A counting pass over the key blocks [start, stop): :func:`_cnt_step` on each. MASKED: the
    diagonal blocks (causal and length masks); SNAP a compile-time flag, so that each loop holds one
    version of the step (a runtime branch inside the loop would keep every tile's compare masks alive
    across it, about 2x the instructions per tile)."""
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + offs_n0
        kt = _load_kt(k_base, offs_n, offs_d, skn, skd, N, MASKED)
        sr = _rank_scores(qr, kt, PREC)
        if MASKED:
            vis = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < N)
        else:
            vis = sr
        n0, n1, n2, n3, mn, mx = _cnt_step(sr, vis, f0, f1, f2, f3, flo, fhi, n0, n1, n2, n3, mn, mx, MASKED, SNAP)
    return n0, n1, n2, n3, mn, mx


@triton.jit
def _upd(c, n, kk, lo, hi, cnt_lo, cnt_hi, open_):
    c64 = c.to(tl.int64)
    up_lo = open_ & (n >= kk) & (c64 > lo)
    lo = tl.where(up_lo, c64, lo)
    cnt_lo = tl.where(up_lo, n, cnt_lo)
    up_hi = open_ & (n < kk) & (c64 < hi)
    hi = tl.where(up_hi, c64, hi)
    cnt_hi = tl.where(up_hi, n, cnt_hi)
    return lo, hi, cnt_lo, cnt_hi


@triton.jit
def _next_estimate(lo, hi, cnt_lo, cnt_hi, kk, mu, ivar):
    """The next pass's estimate of each row's k-th largest key, xk, and its spread wk = 2.5 binomial sd
    of where the k-th of the bracket's keys lies (fp32, key space), from the bracket [lo, hi) and the
    counts at its ends. A bracket at most one binade wide (2^23 keys) with finite ends is interpolated
    in score space, with the scores' density taken as exp(-lam x) across it, lam = (x_mid - mu) / sd^2
    (the Gaussian's log-slope at the bracket's middle, from the first guess's sample): after the first
    pass the density changes by ~1.4x across the bracket, and a linear interpolation missed by more
    than the spread (lab/kernels/simulate_tf_passes.py: 3.94 -> 3.00 key-weighted passes at 32K).
    Other brackets (a first guess that missed, ends at +-inf) are interpolated linearly in key space."""
    n_in = tl.maximum(cnt_lo - cnt_hi, 1).to(tl.float32)
    frac = (cnt_lo - kk).to(tl.float32) / n_in  # where the k-th lies, as a fraction of the keys from lo
    sdf = tl.sqrt(frac * (1.0 - frac) / n_in + 1.0 / (n_in * n_in))
    width = (hi - lo).to(tl.float32)
    xk = lo.to(tl.float32) + width * frac
    wk = 2.5 * width * sdf
    nar = (hi - lo <= 8388608) & (lo > -2139095041) & (hi < 2139095040)
    flo = float_of_key(tl.where(nar, lo, 0).to(tl.int32))
    fhi = float_of_key(tl.where(nar, hi, 1).to(tl.int32))
    fw = fhi - flo
    a = tl.minimum(tl.maximum(((flo + fhi) * 0.5 - mu) * ivar * fw, -8.0), 8.0)  # lam * fw
    small = tl.abs(a) < 1e-3
    a_s = tl.where(small, 1.0, a)
    em = 1.0 - tl.exp(-a_s)
    u = tl.where(small, frac, -tl.log(1.0 - frac * em) / a_s)  # the k-th's position in [flo, fhi), 0..1
    dens = tl.where(small, 1.0, a_s * tl.exp(-a_s * u) / em)  # density there / the bracket's mean
    xf = flo + fw * u
    wf = 2.5 * fw * sdf / tl.maximum(dens, 1e-3)
    xk = tl.where(nar, _key_of(xf).to(tl.float32), xk)
    wk = tl.where(nar, (_key_of(xf + wf).to(tl.float32) - _key_of(xf - wf).to(tl.float32)) * 0.5, wk)
    return xk, wk


@triton.jit
def _attend_blocks(qr, k_base, v_base, SEL, SCR_P, scr, listed, sel_row, offs_m, offs_n0,
                   offs_d, row_ok, row_start, end_n, N, skn, skd, svn, svd, lo32, hi32, need, scale_log2,
                   HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                   WRITE_SEL: tl.constexpr, P_BF16: tl.constexpr, CAP: tl.constexpr, MODE: tl.constexpr):
    """The attention pass over key blocks [0, end_n) of the ranking row's heads (qr: their query tiles, one
    head for query_head, the group's for kv_group): the keys are selected once, on the ranking scores, and
    each head runs its own online softmax and P.V over them. Returns (accs [BLOCK_M, HEAD_D], ls, ms
    [BLOCK_M]: tuples, one per head; nc [BLOCK_M]). MODE (compile time, one loop per setting): 0 = every key
    >= lo; 1 (tie cut) = keys >= hi plus the lowest-index keys in [lo, hi) up to need per row; 2 (lists) =
    in ``listed`` rows the keys >= hi, and the keys in [lo, hi) go to the row's scratch list
    (:func:`_list_append_words`; nc words) for :func:`_list_finish`; other rows as 0. The fully visible blocks
    [0, row_start) run a loop without the causal and length masks. offs_m: the rows' positions; sel_row:
    the first head's row (b * HQ + h) of SEL."""
    taken = tl.zeros([BLOCK_M], tl.int32)
    nc = tl.zeros([BLOCK_M], tl.int32)
    accs = ()
    ls = ()
    ms = ()
    for _h in tl.static_range(len(qr)):
        accs = accs + (tl.zeros([BLOCK_M, HEAD_D], tl.float32),)
        ls = ls + (tl.zeros([BLOCK_M], tl.float32),)
        ms = ms + (tl.full([BLOCK_M], float("-inf"), tl.float32),)
    accs, ls, ms, nc, taken = _attend_range(
        0, row_start, accs, ls, ms, nc, taken, qr, k_base, v_base, SEL, SCR_P, scr, listed, sel_row,
        offs_m, offs_n0, offs_d, row_ok, N, skn, skd, svn, svd, lo32, hi32, need, scale_log2,
        BLOCK_N, PREC, WRITE_SEL, P_BF16, CAP, MODE, False)
    accs, ls, ms, nc, taken = _attend_range(
        row_start, end_n, accs, ls, ms, nc, taken, qr, k_base, v_base, SEL, SCR_P, scr, listed, sel_row,
        offs_m, offs_n0, offs_d, row_ok, N, skn, skd, svn, svd, lo32, hi32, need, scale_log2,
        BLOCK_N, PREC, WRITE_SEL, P_BF16, CAP, MODE, True)
    return accs, ls, ms, nc


@triton.jit
def _attend_range(start, stop, accs, ls, ms, nc, taken, qr, k_base, v_base, SEL, SCR_P, scr, listed,
                  sel_row, offs_m, offs_n0, offs_d, row_ok, N, skn, skd, svn, svd, lo32, hi32, need,
                  scale_log2, BLOCK_N: tl.constexpr, PREC: tl.constexpr, WRITE_SEL: tl.constexpr,
                  P_BF16: tl.constexpr, CAP: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr):
    """:func:`_attend_blocks` over the key blocks [start, stop); MASKED: the causal and length masks."""
    # the bracket as floats: for finite scores, key(s) >= c iff s >= float_of_key(c) once c is clamped into
    # [key(-inf), key(+inf)] (both ends stay meaning "every key" / "no key"), so no key per element
    flo = float_of_key(tl.maximum(lo32, -2139095041))[:, None]
    fhi = float_of_key(tl.minimum(hi32, 2139095040))[:, None]
    fthr = tl.where(listed[:, None], fhi, flo)
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + offs_n0
        kt = _load_kt(k_base, offs_n, offs_d, skn, skd, N, MASKED)
        sr = _rank_scores(qr, kt, PREC)
        if MASKED:
            vis = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < N)
        if MODE == 1:
            sel = sr >= fhi
            tie = (sr >= flo) & (sr < fhi)
            if MASKED:
                sel = sel & vis
                tie = tie & vis
            tie_i = tie.to(tl.int32)
            rank = tl.cumsum(tie_i, axis=1) - tie_i + taken[:, None]
            sel = sel | (tie & (rank < need[:, None]))
            taken += tl.sum(tie_i, axis=1)
        elif MODE == 2:
            sel = sr >= fthr
            band = listed[:, None] & (sr >= flo) & (sr < fhi)
            if MASKED:
                sel = sel & vis
                band = band & vis
            nc = _list_append_words(SCR_P, scr, nc, band, start_n, offs_n0, BLOCK_N, CAP)
        else:
            sel = sr >= flo
            if MASKED:
                sel = sel & vis
        if MASKED:
            vt = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=offs_n[:, None] < N, other=0.0)
        else:
            vt = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :] * svd)
        accs_n = ()
        ls_n = ()
        ms_n = ()
        for h in tl.static_range(len(qr)):
            if WRITE_SEL:
                sel_ptr = SEL + ((sel_row + h) * N + offs_m[:, None]) * N + offs_n[None, :]
                tl.store(sel_ptr, sel.to(tl.int8), mask=row_ok[:, None] & (offs_n[None, :] < N))
            if len(qr) == 1:
                s = sr  # one head: its ranking scores are its own
            else:
                s = tl.dot(qr[h], kt, input_precision=PREC)
            acc, l_i, m_i = _softmax_step(accs[h], ls[h], ms[h], s, sel, vt, scale_log2, PREC, P_BF16)
            accs_n = accs_n + (acc,)
            ls_n = ls_n + (l_i,)
            ms_n = ms_n + (m_i,)
        accs = accs_n
        ls = ls_n
        ms = ms_n
    return accs, ls, ms, nc, taken


@triton.jit
def _softmax_step(acc, l_i, m_i, s, sel, vt, scale_log2, PREC: tl.constexpr, P_BF16: tl.constexpr):
    """One key block of a head's online softmax: the selected scores s [BLOCK_M, BLOCK_N] (fp32) into
    (acc [BLOCK_M, HEAD_D], l_i, m_i [BLOCK_M]) with the block's V rows vt [BLOCK_N, HEAD_D]."""
    logit = tl.where(sel, s * scale_log2, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(logit, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(logit - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if P_BF16:
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
    else:
        acc = acc * alpha[:, None] + tl.dot(p, vt.to(tl.float32), input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def _list_append_keys(SCR_P, scr, nc, band, sr, offs_n, CAP: tl.constexpr):
    """The collect pass's list: append each row's keys in ``band`` [BLOCK_M, BLOCK_N] (ranking scores ``sr``,
    kept exactly: the tie cut after it compares them with the tile's scores) to its scratch list at
    scr + nc: one :func:`_entry` per key. Returns the new nc. Band keys are rare (a row holds at
    most CAP in all), so they are taken out in rounds, each row's lowest index first, as many rounds as the
    fullest row of the tile needs: row vectors only, no per-element stores (a per-element scatter goes through
    shared memory, with barriers in every tile)."""
    big = 2147483647
    rem = tl.where(band, offs_n[None, :], big)  # the index of each band key not yet listed, else big
    j = tl.min(rem, axis=1)  # each row's lowest such index
    while tl.min(j, axis=0) < big:
        has = j < big
        at = rem == j[:, None]
        kj = _key_of(tl.max(tl.where(at, sr, float("-inf")), axis=1))
        ok = has & (nc < CAP)  # never past the row's list (the counts say it holds them all)
        tl.store(SCR_P + scr + nc, _entry(kj, j), mask=ok)
        nc += has.to(tl.int32)
        rem = tl.where(at, big, rem)
        j = tl.min(rem, axis=1)
    return nc


@triton.jit
def _list_append_words(SCR_P, scr, nc, band, start_n, offs_n0, BLOCK_N: tl.constexpr, CAP: tl.constexpr):
    """The attention pass's lists: append each row's keys in ``band`` [BLOCK_M, BLOCK_N] (block of keys
    start_n + offs_n0) to its scratch list at scr + nc as words, one int64 per 32 keys of the block that hold
    any: (index of the word's first key << 32) + the 32-bit mask of its band keys. Returns the new nc. A row's
    band keys are rare (at most CAP in all), so this is one row reduction per word, with no per-key step and no
    reduction across warps; :func:`_list_words_to_keys` turns the words into keys after the key loop."""
    WORDS: tl.constexpr = (BLOCK_N + 31) // 32
    tl.static_assert(WORDS <= 2, "the lists hold at most 2 words per key block: BLOCK_N <= 64")
    bits = tl.where(band, (1 << (offs_n0 % 32))[None, :], 0)  # int32; the bits of one word are distinct
    m = tl.xor_sum(tl.reshape(bits, [bits.shape[0], WORDS, BLOCK_N // WORDS]), axis=2)  # [BLOCK_M, WORDS]
    has = (m != 0).to(tl.int32)
    jw = tl.arange(0, WORDS)[None, :]
    at = nc[:, None] + tl.where(jw == 1, tl.sum(tl.where(jw == 0, has, 0), axis=1)[:, None], 0)  # each word's slot
    word = (start_n + 32 * jw).to(tl.int64) * 4294967296 + (m.to(tl.int64) & 4294967295)
    tl.store(SCR_P + scr[:, None] + at, word, mask=(has != 0) & (at < CAP))  # one store; never past the list
    nc += tl.sum(has, axis=1)
    return nc


@triton.jit
def _list_words_to_keys(SCR_P, scr, nc, n_max, qr, k_base, offs_d, skn, skd,
                        BLOCK_M: tl.constexpr, CAP: tl.constexpr):
    """After the attention pass's key loop: each row's nc words (:func:`_list_append_words`) become one entry
    per band key (:func:`_entry` of its ranking score's key and its index), in place, as :func:`_list_ranks`
    reads them. The ranking score is recomputed from the key's gathered K row in fp32, as (the sum of the ranking
    row's query heads) . k (the tile's tensor-core score of the same key may differ in the last bits, so only
    keys within rounding of each other can rank otherwise). n_max: the most band keys of any row of the block.
    Returns each row's number of keys [BLOCK_M]."""
    tl.debug_barrier()  # the words were written by other threads of this program
    jj = tl.arange(0, CAP)
    words = tl.load(SCR_P + scr[:, None] + jj[None, :], mask=jj[None, :] < nc[:, None], other=0)
    tl.debug_barrier()  # every word is in registers before the keys overwrite them
    e = tl.zeros([BLOCK_M], tl.int32)  # the word each row reads
    cur = tl.sum(tl.where(jj[None, :] == 0, words, 0), axis=1)
    m = cur & 4294967295  # its keys not yet taken
    base = (cur >> 32).to(tl.int32)
    nk = tl.zeros([BLOCK_M], tl.int32)
    qs = qr[0].to(tl.float32)  # [BLOCK_M, HEAD_D]: the ranking row's query heads summed
    for h in tl.static_range(1, len(qr)):
        qs += qr[h].to(tl.float32)
    for s in range(0, n_max):
        has = m != 0
        low = m & -m  # the word's lowest bit left: its position is the exponent of low as a float
        idx = base + ((low.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127)
        kr = tl.load(k_base + idx[:, None] * skn + offs_d[None, :] * skd, mask=has[:, None], other=0.0)
        kr = kr.to(tl.float32)
        r = tl.sum(qs * kr, axis=1)
        tl.store(SCR_P + scr + s, _entry(_key_of(r), idx), mask=has)
        nk += has.to(tl.int32)
        m = m ^ low
        nxt = has & (m == 0)  # this word is used up: read the row's next one
        e += nxt.to(tl.int32)
        cur = tl.sum(tl.where(jj[None, :] == e[:, None], words, 0), axis=1)
        m = tl.where(nxt, cur & 4294967295, m)
        base = tl.where(nxt, (cur >> 32).to(tl.int32), base)
    return nk


@triton.jit
def _list_ranks(SCR_P, scr, nc, n_max, BLOCK_M: tl.constexpr, CAP: tl.constexpr):
    """Rank of each list entry in its row's list, [BLOCK_M, CAP] int32 = the number of better entries
    (see :func:`_list_append_keys`; n_max = the longest list of the block); also the packed entries
    [BLOCK_M, CAP] int64 and the validity mask."""
    tl.debug_barrier()  # the lists were written by other threads of this program
    jj = tl.arange(0, CAP)
    jv = jj[None, :] < nc[:, None]
    cp = tl.load(SCR_P + scr[:, None] + jj[None, :], mask=jv, other=0)
    rank = tl.zeros([BLOCK_M, CAP], tl.int32)
    for i in range(0, n_max):
        iv = i < nc
        pi = tl.load(SCR_P + scr + i, mask=iv, other=0)
        rank += (iv[:, None] & (pi[:, None] > cp)).to(tl.int32)
    return cp, rank, jv


@triton.jit
def _nth_best(cp, rank, jv, need):
    """Each row's need-th best list entry (int64 [BLOCK_M]; :func:`_list_ranks`' cp, rank, jv), or INT64_MIN
    where the row has none (entries are distinct, so one entry has rank need - 1)."""
    return tl.max(tl.where(jv & (rank == need[:, None] - 1), cp, -9223372036854775808), axis=1)


@triton.jit
def _list_finish(accs, ls, ms, nc, n_max, need, qr, k_base, v_base, SEL, SCR_P, scr, sel_row, offs_m, offs_d,
                 row_ok, N, skn, skd, svn, svd, scale_log2,
                 BLOCK_M: tl.constexpr, CAP: tl.constexpr, WRITE_SEL: tl.constexpr):
    """End of the attention pass in lists mode: each row takes the ``need`` best entries of its list into
    each head's online softmax, V rows gathered one list slot at a time (P kept in fp32). An entry's logit
    for a head is that head's score: with one head the listed (ranking) key itself; with a group, q_h . k of
    the gathered K row in fp32. n_max: the longest list of the block. Returns (accs, ls), one per head."""
    cp, rank, jv = _list_ranks(SCR_P, scr, nc, n_max, BLOCK_M, CAP)
    # a row takes the entries at or above its need-th best (a listed row has need >= 1, as the counting kernel
    # keeps fewer than k_eff keys above its bracket)
    thr = _nth_best(cp, rank, jv, need)
    for i in range(0, n_max):
        iv = i < nc
        pi = tl.load(SCR_P + scr + i, mask=iv, other=0)
        take = iv & (pi >= thr)
        ii = _entry_index(pi)
        vv = tl.load(v_base + ii[:, None] * svn + offs_d[None, :] * svd, mask=take[:, None], other=0.0).to(tl.float32)
        if len(qr) > 1:
            kr = tl.load(k_base + ii[:, None] * skn + offs_d[None, :] * skd, mask=take[:, None], other=0.0)
            kr = kr.to(tl.float32)
        accs_n = ()
        ls_n = ()
        ms_n = ()
        for h in tl.static_range(len(qr)):
            if len(qr) == 1:
                si = float_of_key((pi >> 32).to(tl.int32))
            else:
                si = tl.sum(qr[h].to(tl.float32) * kr, axis=1)
            logit = tl.where(take, si * scale_log2, float("-inf"))
            m_new = tl.maximum(ms[h], logit)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(logit - m_safe)
            alpha = tl.exp2(ms[h] - m_safe)
            ls_n = ls_n + (ls[h] * alpha + p,)
            accs_n = accs_n + (accs[h] * alpha[:, None] + p[:, None] * vv,)
            ms_n = ms_n + (m_new,)
            if WRITE_SEL:
                sel_ptr = SEL + ((sel_row + h) * N + offs_m) * N + ii
                tl.store(sel_ptr, tl.full([BLOCK_M], 1, tl.int8), mask=take & row_ok)
        accs = accs_n
        ls = ls_n
        ms = ms_n
    return accs, ls


@triton.jit
def _program(Q, K, sqb, sqh, sqn, sqd, skb, skh, N, HQ, GROUP: tl.constexpr, KV_GROUP: tl.constexpr,
             HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The program's block of BLOCK_M query rows of one ranking row, and its operands. Grid axis 1: the
    ranking row, b * HQ + h (query_head) or b * HQ / GROUP + kvh (kv_group). Returns (pid_m, b, h0 = the
    ranking row's first query head, kvh, offs_m [BLOCK_M] the rows, row_ok, q_ptrs [BLOCK_M, HEAD_D] head
    h0's query rows, k_base, end_n, row_start = a multiple of BLOCK_N such that every key before it is
    visible to every row of the block)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest rows first
    pid_bh = tl.program_id(1)
    if KV_GROUP:
        b = pid_bh // (HQ // GROUP)
        kvh = pid_bh % (HQ // GROUP)
        h0 = kvh * GROUP
    else:
        b = pid_bh // HQ
        h0 = pid_bh % HQ
        kvh = h0 // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    offs_d = tl.arange(0, HEAD_D)
    q_ptrs = Q + b.to(tl.int64) * sqb + h0.to(tl.int64) * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd
    k_base = K + b.to(tl.int64) * skb + kvh.to(tl.int64) * skh
    end_n = tl.minimum((pid_m + 1) * BLOCK_M, N)
    row_start = (pid_m * BLOCK_M) // BLOCK_N * BLOCK_N
    return pid_m, b, h0, kvh, offs_m, row_ok, q_ptrs, k_base, end_n, row_start


@triton.jit
def _tf_count_kernel(
    Q, K, ZQ, STATS, STATE,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd,
    N, HQ, cov_num, cov_den, k_min, dispatch,
    GROUP: tl.constexpr, KV_GROUP: tl.constexpr, HEAD_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, CAP: tl.constexpr,
):
    """Counting passes of one block of BLOCK_M rows of one ranking row (grid axis 1: b * HQ + h, or for
    kv_group b * HQ / GROUP + kvh: the group's heads share the ranking; see :func:`_program`): brackets each row's k-th
    largest score into [lo, hi) (key space) until every row is settled or (CAP > 0) every open row's bracket
    holds <= CAP keys. Writes STATE[ranking row, row] = (lo, hi, cnt_lo, cnt_hi) (int32: the counts of visible
    keys >= lo and >= hi) and STATS[program] = the passes. A kernel apart from the attention pass, so that
    each compiles to about half the code and the attention kernel can take a register cap of its own."""
    pid_m, _b, _h0, _kvh, offs_m, row_ok, q_ptrs, k_base, end_n, row_start = _program(
        Q, K, sqb, sqh, sqn, sqd, skb, skh, N, HQ, GROUP, KV_GROUP, HEAD_D, BLOCK_M, BLOCK_N)
    qr = _ranking_q(q_ptrs, sqh, row_ok, GROUP if KV_GROUP else 1)
    pid_bh = tl.program_id(1)
    t = offs_m + 1
    kk = k_eff(t, cov_num, cov_den, k_min, dispatch)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)

    lo = tl.full([BLOCK_M], -2147483648, tl.int64)
    hi = tl.full([BLOCK_M], 2147483647, tl.int64)
    cnt_lo = t
    cnt_hi = tl.zeros([BLOCK_M], tl.int32)
    done = (kk == t) | (~row_ok)
    passes = 0

    if tl.max(tl.where(done, 0, 1), axis=0) > 0:
        # ---- first guess from a sample: mean / sd of the scores of 4 * BLOCK_N keys at strided positions
        # over the visible range (not whole key blocks: a trained model's nearby keys score alike, and on
        # SmolLM2-135M's attention rows 4 whole blocks left 5.8-6.6 key-weighted passes at 8K, strided keys
        # 3.0-4.6; lab/bench/real_kv_decode.py tf-passes)
        s0 = tl.zeros([BLOCK_M], tl.float32)
        s1 = tl.zeros([BLOCK_M], tl.float32)
        s2 = tl.zeros([BLOCK_M], tl.float32)
        for j in tl.static_range(4):
            offs_n = (((j * BLOCK_N + offs_n0).to(tl.int64) * end_n) // (4 * BLOCK_N)).to(tl.int32)
            kt = _load_kt(k_base, offs_n, offs_d, skn, skd, N, True)
            sr = _rank_scores(qr, kt, PREC)
            vis = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < N)
            srv = tl.where(vis, sr, 0.0)
            s0 += tl.sum(tl.where(vis, 1.0, 0.0), axis=1)
            s1 += tl.sum(srv, axis=1)
            s2 += tl.sum(srv * srv, axis=1)
        # bracket [key(-inf), key(+inf)): cnt(>= lo) = t >= k_eff > 0 = cnt(>= hi) for finite scores
        lo = tl.where(done, lo, -2139095041)  # _key_of(-inf) = 0xFF800000 ^ 0x7FFFFFFF
        hi = tl.where(done, hi, 2139095040)  # _key_of(+inf): no finite score reaches it
        tf = tl.maximum(s0, 1.0)
        mu = s1 / tf
        sig = tl.sqrt(tl.maximum(s2 / tf - mu * mu, 0.0))
        ivar = 1.0 / tl.maximum(sig * sig, 1e-30)  # the density model of the later estimates (below)
        z = tl.load(ZQ + offs_m, mask=row_ok, other=0.0)
        # first estimate of the k-th largest score: a Gaussian quantile, +-0.3 sd, mapped to key space
        xk = _key_of(mu + sig * z).to(tl.float32)
        wk = (_key_of(mu + sig * (z + 0.3)).to(tl.float32) - _key_of(mu + sig * (z - 0.3)).to(tl.float32)) * 0.5

        # ---- counting passes: 4 candidate thresholds per row per pass (3 around the estimate, 1 midpoint),
        # until every row is settled or (CAP > 0) every open row's bracket holds <= CAP keys: then the
        # selection ends on per-row lists of those keys (below)
        go = True
        stalled = 0  # 1: the last pass left some open row's bracket count where it was: snap in this one
        while go:
            passes += 1
            n_prev = cnt_lo - cnt_hi
            open_ = ~done
            # 4 candidate thresholds: the estimate, +-1.5 w around it, and the bracket's midpoint
            c0 = _cand(xk - 1.5 * wk, lo, hi)
            c1 = _cand(xk, lo, hi)
            c2 = _cand(xk + 1.5 * wk, lo, hi)
            c3 = (lo + (hi - lo) // 2).to(tl.int32)
            f0 = float_of_key(c0)
            f1 = float_of_key(c1)
            f2 = float_of_key(c2)
            f3 = float_of_key(c3)
            flo = float_of_key(lo.to(tl.int32))
            fhi = float_of_key(hi.to(tl.int32))
            # each probe's count as 4 partial counts per row (_cnt1), summed after the key loop
            n0 = tl.zeros([BLOCK_M, 4], tl.float32)
            n1 = tl.zeros([BLOCK_M, 4], tl.float32)
            n2 = tl.zeros([BLOCK_M, 4], tl.float32)
            n3 = tl.zeros([BLOCK_M, 4], tl.float32)
            mn = tl.full([BLOCK_M], float("inf"), tl.float32)  # smallest score >= float(lo)
            mx = tl.full([BLOCK_M], float("-inf"), tl.float32)  # largest score < float(hi)
            # snapping (the bracket onto existing keys) settles ties; it runs only after a pass that
            # did not shrink some open row's bracket (ties, or no key between the probes): it changes no
            # pass count on continuous scores and costs 60 % more per tile. 4 probes per pass: 8 would
            # take fewer passes (2.6 instead of 3.0 key-weighted at 32K) at 634 instead of 349
            # instructions per tile (lab/kernels/simulate_tf_passes.py counts the passes of variants)
            snap = stalled > 0
            # the fully visible key blocks (one compiled loop per snap setting), then the diagonal ones
            if snap:
                n0, n1, n2, n3, mn, mx = _count_blocks(
                    0, row_start, k_base, qr, offs_m, offs_n0, offs_d, skn, skd, N,
                    f0, f1, f2, f3, flo, fhi, n0, n1, n2, n3, mn, mx, PREC, BLOCK_N, False, True)
            else:
                n0, n1, n2, n3, mn, mx = _count_blocks(
                    0, row_start, k_base, qr, offs_m, offs_n0, offs_d, skn, skd, N,
                    f0, f1, f2, f3, flo, fhi, n0, n1, n2, n3, mn, mx, PREC, BLOCK_N, False, False)
            n0, n1, n2, n3, mn, mx = _count_blocks(
                row_start, end_n, k_base, qr, offs_m, offs_n0, offs_d, skn, skd, N,
                f0, f1, f2, f3, flo, fhi, n0, n1, n2, n3, mn, mx, PREC, BLOCK_N, True, True)
            lo, hi, cnt_lo, cnt_hi = _upd(c0, tl.sum(n0, axis=1).to(tl.int32), kk, lo, hi, cnt_lo, cnt_hi, open_)
            lo, hi, cnt_lo, cnt_hi = _upd(c1, tl.sum(n1, axis=1).to(tl.int32), kk, lo, hi, cnt_lo, cnt_hi, open_)
            lo, hi, cnt_lo, cnt_hi = _upd(c2, tl.sum(n2, axis=1).to(tl.int32), kk, lo, hi, cnt_lo, cnt_hi, open_)
            lo, hi, cnt_lo, cnt_hi = _upd(c3, tl.sum(n3, axis=1).to(tl.int32), kk, lo, hi, cnt_lo, cnt_hi, open_)
            # snap the bracket onto keys that exist: no key lies in [old lo, mn) or [mx + 1, old hi)
            mn64 = _key_of(mn).to(tl.int64)
            mx64 = _key_of(mx).to(tl.int64) + 1
            lo = tl.where(snap & open_ & (mn64 > lo) & (mn < float("inf")), mn64, lo)
            hi = tl.where(snap & open_ & (mx64 < hi) & (mx > float("-inf")), mx64, hi)
            done = done | (cnt_lo == kk) | (hi - lo <= 1)
            n_now = cnt_lo - cnt_hi
            stalled = tl.max(tl.where(done | (n_now < n_prev), 0, 1), axis=0)
            # next estimate: the k-th largest interpolated from the counts at lo and hi, +-2.5 binomial sd
            xk, wk = _next_estimate(lo, hi, cnt_lo, cnt_hi, kk, mu, ivar)
            # go on while a row is open and (CAP = 0, or) some open row's bracket holds > CAP keys
            go = (tl.max(tl.where(done, 0, 1), axis=0) > 0) & (
                (CAP == 0) | (tl.max(tl.where(done, 0, cnt_lo - cnt_hi), axis=0) > CAP))

    st = STATE + (pid_bh.to(tl.int64) * N + offs_m) * 4
    tl.store(st, lo.to(tl.int32), mask=row_ok)
    tl.store(st + 1, hi.to(tl.int32), mask=row_ok)
    tl.store(st + 2, cnt_lo, mask=row_ok)
    tl.store(st + 3, cnt_hi, mask=row_ok)
    tl.store(STATS + pid_bh * tl.num_programs(0) + pid_m, passes)


@triton.jit
def _tf_attend_kernel(
    Q, K, V, O, SEL, STATS, STATE, SCR_P,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
    N, HQ, scale_log2, cov_num, cov_den, k_min, dispatch,
    GROUP: tl.constexpr, KV_GROUP: tl.constexpr, HEAD_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, WRITE_SEL: tl.constexpr,
    P_BF16: tl.constexpr, CAP: tl.constexpr,
):
    """The attention pass of one block of BLOCK_M rows of one ranking row (grid axis 1, as the counting
    kernel's: :func:`_program`) for each of its heads (kv_group: the group's, which take the same keys), from
    the brackets :func:`_tf_count_kernel` left in STATE and its passes in STATS: every key >= lo, or the tie
    cut, or the lists (and, where a settled row has more than CAP ties, a collect pass first). Adds the
    collect pass to STATS[ranking row, block]."""
    pid_m, b, h0, kvh, offs_m, row_ok, q_ptrs, k_base, end_n, row_start = _program(
        Q, K, sqb, sqh, sqn, sqd, skb, skh, N, HQ, GROUP, KV_GROUP, HEAD_D, BLOCK_M, BLOCK_N)
    qr = _ranking_q(q_ptrs, sqh, row_ok, GROUP if KV_GROUP else 1)
    pid_bh = tl.program_id(1)  # the ranking row
    kk = k_eff(offs_m + 1, cov_num, cov_den, k_min, dispatch)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    v_base = V + b.to(tl.int64) * svb + kvh.to(tl.int64) * svh
    sel_row = (b * HQ + h0).to(tl.int64)  # the first head's row of SEL
    st = STATE + (pid_bh.to(tl.int64) * N + offs_m) * 4
    lo = tl.load(st, mask=row_ok, other=0).to(tl.int64)
    hi = tl.load(st + 1, mask=row_ok, other=1).to(tl.int64)
    cnt_lo = tl.load(st + 2, mask=row_ok, other=0)
    cnt_hi = tl.load(st + 3, mask=row_ok, other=0)
    kk = tl.where(row_ok, kk, 0)
    done = (cnt_lo == kk) | (hi - lo <= 1)
    passes = tl.load(STATS + pid_bh * tl.num_programs(0) + pid_m)
    # the counting kernel stopped once every open row's bracket held <= CAP keys (CAP > 0)
    collect = tl.max(tl.where(done, 0, cnt_lo - cnt_hi), axis=0) <= CAP

    # ---- how the attention pass ends the selection. "part" rows keep only part of their keys in
    # [lo, hi) (open rows, and settled rows with ties at lo); the others keep every key >= lo.
    need = kk - cnt_hi
    part = row_ok & (cnt_lo != kk)
    any_part = tl.max(tl.where(part, 1, 0), axis=0) > 0
    scr = (pid_bh.to(tl.int64) * N + offs_m) * CAP  # [BLOCK_M] list starts (CAP = 0: unused)
    lists: tl.constexpr = False  # stays a compile-time False when CAP = 0: no list code is built
    if CAP > 0:  # (compile time: CAP = 0 builds no list code)
        # lists mode when every part row's [lo, hi) holds <= CAP keys: the attention pass itself lists
        # them and the selection ends on the lists after it (no pass of its own)
        lists = any_part & (tl.max(tl.where(part, cnt_lo - cnt_hi, 0), axis=0) <= CAP)
        if (not lists) & collect & (tl.max(tl.where(done, 0, 1), axis=0) > 0):
            # ---- collect pass (only where a settled row has more than CAP ties, so the tie cut must
            # run): each open row's keys in [lo, hi) to its list, then tau = the key of rank need - 1
            passes += 1
            open_ = ~done
            nc = tl.zeros([BLOCK_M], tl.int32)
            for start_n in range(0, end_n, BLOCK_N):
                offs_n = start_n + offs_n0
                kt = _load_kt(k_base, offs_n, offs_d, skn, skd, N, True)
                sr = _rank_scores(qr, kt, PREC)
                vis = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < N)
                key = _key_of(sr)
                band = vis & open_[:, None] & (key >= lo.to(tl.int32)[:, None]) & (key < hi.to(tl.int32)[:, None])
                nc = _list_append_keys(SCR_P, scr, nc, band, sr, offs_n, CAP)
            cp, rank, jv = _list_ranks(SCR_P, scr, nc, tl.max(nc, axis=0), BLOCK_M, CAP)
            ck = (cp >> 32).to(tl.int32)
            tau = (_nth_best(cp, rank, jv, need) >> 32).to(tl.int32)  # the need-th best key
            above = tl.sum((jv & (ck > tau[:, None])).to(tl.int32), axis=1)
            equal = tl.sum((jv & (ck == tau[:, None])).to(tl.int32), axis=1)
            lo = tl.where(open_, tau.to(tl.int64), lo)
            hi = tl.where(open_, tau.to(tl.int64) + 1, hi)
            cnt_hi = tl.where(open_, cnt_hi + above, cnt_hi)
            cnt_lo = tl.where(open_, cnt_hi + equal, cnt_lo)
            need = kk - cnt_hi
            part = row_ok & (cnt_lo != kk)
            any_part = tl.max(tl.where(part, 1, 0), axis=0) > 0

    # ---- attention pass (one compiled loop per mode): every key >= lo, or the tie cut, or lists
    lo32 = lo.to(tl.int32)
    hi32 = hi.to(tl.int32)
    if lists:
        accs, ls, ms, nc = _attend_blocks(
            qr, k_base, v_base, SEL, SCR_P, scr, part, sel_row, offs_m, offs_n0, offs_d, row_ok,
            row_start, end_n, N, skn, skd, svn, svd, lo32, hi32, need, scale_log2,
            HEAD_D, BLOCK_M, BLOCK_N, PREC, WRITE_SEL, P_BF16, CAP, 2)
        n_max = tl.max(tl.where(part, cnt_lo - cnt_hi, 0), axis=0)  # the most band keys of a row
        nc = _list_words_to_keys(SCR_P, scr, nc, n_max, qr, k_base, offs_d, skn, skd, BLOCK_M, CAP)
        accs, ls = _list_finish(accs, ls, ms, nc, n_max, need, qr, k_base, v_base, SEL, SCR_P, scr, sel_row, offs_m,
                                offs_d, row_ok, N, skn, skd, svn, svd, scale_log2, BLOCK_M, CAP, WRITE_SEL)
    elif any_part:  # some row keeps only part of its ties at lo: cut them by key index
        accs, ls, ms, nc = _attend_blocks(
            qr, k_base, v_base, SEL, SCR_P, scr, part, sel_row, offs_m, offs_n0, offs_d, row_ok,
            row_start, end_n, N, skn, skd, svn, svd, lo32, hi32, need, scale_log2,
            HEAD_D, BLOCK_M, BLOCK_N, PREC, WRITE_SEL, P_BF16, CAP, 1)
    else:  # every row keeps all keys >= lo
        accs, ls, ms, nc = _attend_blocks(
            qr, k_base, v_base, SEL, SCR_P, scr, part, sel_row, offs_m, offs_n0, offs_d, row_ok,
            row_start, end_n, N, skn, skd, svn, svd, lo32, hi32, need, scale_log2,
            HEAD_D, BLOCK_M, BLOCK_N, PREC, WRITE_SEL, P_BF16, CAP, 0)
    tl.store(STATS + pid_bh * tl.num_programs(0) + pid_m, passes)
    for h in tl.static_range(len(qr)):
        out = accs[h] / tl.where(ls[h] == 0.0, 1.0, ls[h])[:, None]
        o_ptr = (O + b.to(tl.int64) * sob + (h0 + h).to(tl.int64) * soh + offs_m[:, None] * son
                 + offs_d[None, :] * sod)
        tl.store(o_ptr, out.to(O.dtype.element_ty), mask=row_ok[:, None])

