"""The Triton Top-K decode op (producers/kernels/decode.py) against decode_reference.

On the CPU the kernels run in the Triton interpreter at small shapes (small chunks, tiles, samples
and candidate lists, so that several chunks and tiles per chunk, the band and both fallbacks are
exercised); on a GPU (``-m gpu``) at real shapes with the op's default settings.

Exact-set tests use "grid" inputs: q and k entries are multiples of 1/4 in [-1, 1], so every
score is a multiple of 1/16 computed exactly in fp32 whatever the summation order (reference and
kernel cannot disagree by rounding) and ties are plentiful; ties are also planted by duplicating
key rows. Chosen score rows (heavy tails, ties, constant rows, rows whose strided sample misleads
the band) reach the op through an fp32 cache and one-hot queries: the score of key i is then
exactly k[i, h]. With continuous inputs the two fp32 summation orders can differ in the last bit,
so the sets may differ only at the selection boundary (checked). Output tolerance (bf16 cache,
bf16 output): ||out - ref|| / ||ref|| <= 1e-2 against the float64 reference.
"""
from __future__ import annotations

import zlib

import pytest
import torch

from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.decode import (PATH_BAND, PATH_DENSE, PATH_MISS, PATH_OVERFLOW, DecodeWorkspace, _resolve,
                                          decode_launches, topk_decode)
from dcr.producers.kernels.reference import decode_reference, decode_set_differences

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


gpu = pytest.mark.gpu


BF16_TOL = 1e-2  # ||out - ref|| / ||ref|| for a bf16 cache and bf16 output


def _grid(shape, gen, device=DEV, dtype=torch.bfloat16):
    """Entries in {-1, -3/4, ..., 1}: exact products and sums in fp32."""
    return (torch.randint(-4, 5, shape, generator=gen) / 4).to(device=device, dtype=dtype)


def _case(B, Hq, Hkv, T, D, gen, grid=True, dtype=torch.bfloat16, dup=True):
    if grid:
        q = _grid((B, Hq, D), gen, dtype=dtype)
        k = _grid((B, Hkv, T, D), gen, dtype=dtype)
    else:
        q = torch.randn(B, Hq, D, generator=gen).to(DEV, dtype)
        k = torch.randn(B, Hkv, T, D, generator=gen).to(DEV, dtype)
    if dup:  # planted ties: copies of key rows at other (later and earlier) positions
        src = torch.randint(0, T, (max(1, T // 8),), generator=gen)
        dst = torch.randint(0, T, (max(1, T // 8),), generator=gen)
        k[:, :, dst] = k[:, :, src].clone()
    v = torch.randn(B, Hkv, T, D, generator=gen).to(DEV, dtype)
    return q, k, v


def _ws(B, Hq, Hkv, T, D, sel, **kw):
    """Small chunks, tiles, samples and lists on the CPU (many chunks and tiles, a band narrower than
    the rows, even at T ~ 200); the op's defaults on the GPU."""
    if CUDA:
        return DecodeWorkspace(B, Hq, Hkv, T, D, sel, DEV, **kw)
    small = dict(chunk=64, block_n=16, attend_block=32, sample=32, capacity=64, select_block=32)
    return DecodeWorkspace(B, Hq, Hkv, T, D, sel, DEV, **{**small, **kw})


def _rel(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _check_exact(q, k, v, lengths, rule, ws=None):
    out, mask = topk_decode(q, k, v, lengths, rule, return_indices=True, workspace=ws)
    _, rmask = decode_reference(q, k, v, lengths, rule, return_indices=True)
    ref = decode_reference(q.double(), k.double(), v.double(), lengths, rule, compute_dtype=torch.float64)
    assert mask.shape == rmask.shape and mask.dtype == torch.bool
    bad = (mask != rmask).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} set entries differ, first {bad[:5].tolist()}"
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.isfinite(out).all()
    err = _rel(out, ref)
    tol = 1e-5 if q.dtype == torch.float32 else BF16_TOL
    assert err <= tol, f"rel err {err:.2e} > {tol}"
    return mask


# ---------------------------------------------------------------- CPU (interpreter) and GPU
@pytest.mark.parametrize(
    "Hq,Hkv,D,sel",
    [(4, 4, 64, "query_head"), (6, 2, 64, "query_head"), (8, 2, 64, "query_head"),
     pytest.param(16, 2, 128, "query_head", marks=pytest.mark.slow),
     (4, 4, 64, "kv_group"), (6, 2, 64, "kv_group"), (8, 2, 64, "kv_group"), (16, 2, 64, "kv_group"),
     (2, 2, 128, "kv_group")],
)
def test_exact_sets_mixed_lengths(Hq, Hkv, D, sel):
    """Group sizes 1, 3, 4, 8; mixed lengths (none a multiple of a block), a dense row (t <
    threshold), k_min > floor(c t); rows longer than the candidate list go through the band."""
    gen = torch.Generator().manual_seed(1000 + Hq * 10 + Hkv + D + len(sel))
    B, T = 4, 203
    q, k, v = _case(B, Hq, Hkv, T, D, gen)
    lengths = torch.tensor([203, 137, 5, 41], device=DEV)
    rule = TopKRule("0.15", k_min=8, dispatch_threshold=40, selection=sel)
    # k_eff: 203 -> 30, 137 -> 20, 5 -> dense (5), 41 -> max(8, 6) = 8
    ws = _ws(B, Hq, Hkv, T, D, sel)
    mask = _check_exact(q, k, v, lengths, rule, ws)
    assert mask.sum(-1)[:, 0].tolist() == [30, 20, 5, 8]
    path = ws.path.view(B, -1).cpu()
    assert (path[2] == PATH_DENSE).all() and not (path[[0, 1, 3]] == PATH_DENSE).any()


@pytest.mark.parametrize("sel", ["query_head", "kv_group"])
def test_kmin_above_t_and_keff_equal_t(sel):
    """k_min > t (k_eff = t, no dispatch) and c = 1 (k_eff = t) select every visible key."""
    gen = torch.Generator().manual_seed(7)
    B, Hq, Hkv, T, D = 3, 8, 2, 90, 64
    q, k, v = _case(B, Hq, Hkv, T, D, gen)
    lengths = torch.tensor([90, 17, 64], device=DEV, dtype=torch.int32)
    for rule, sizes in ((TopKRule("0.5", k_min=70, dispatch_threshold=0, selection=sel), [70, 17, 64]),
                        (TopKRule("1", k_min=1, dispatch_threshold=0, selection=sel), [90, 17, 64])):
        mask = _check_exact(q, k, v, lengths, rule, _ws(B, Hq, Hkv, T, D, sel))
        assert mask.sum(-1)[:, 0].tolist() == sizes


@pytest.mark.parametrize("sel", ["query_head", "kv_group"])
def test_all_ties_and_signed_zero(sel):
    """All keys equal (the set is the lowest indices); a zero query (every score +-0.0)."""
    gen = torch.Generator().manual_seed(11)
    B, Hq, Hkv, T, D = 2, 4, 1, 150, 64
    q, k, v = _case(B, Hq, Hkv, T, D, gen, dup=False)
    k[0] = k[0, :, :1].expand_as(k[0])  # batch 0: one key row repeated
    q[1, 0] = 0.0  # batch 1, head 0: every score is zero
    q[1, 1] = -q[1, 1].abs()  # head 1: scores of mixed sign
    k[1, :, ::3] = -k[1, :, ::3]
    lengths = torch.tensor([150, 113], device=DEV)
    rule = TopKRule("0.1", k_min=4, dispatch_threshold=0, selection=sel)
    mask = _check_exact(q, k, v, lengths, rule, _ws(B, Hq, Hkv, T, D, sel))
    assert mask[0, 0, :15].all() and not mask[0, 0, 15:].any()


@pytest.mark.parametrize("sel", ["query_head", "kv_group"])
def test_set_differences_helper(sel):
    """decode_set_differences against scores computed head by head here (float64): equal sets give (0, 0),
    a swap at the boundary the swapped key's gap, a swap of the largest key its (large) gap."""
    gen = torch.Generator().manual_seed(5)
    B, Hq, Hkv, T, D = 1, 4, 2, 64, 16
    q = torch.randn(B, Hq, D, generator=gen)
    k = torch.randn(B, Hkv, T, D, generator=gen)
    rule = TopKRule("0.25", k_min=4, dispatch_threshold=0, selection=sel)
    _, rmask = decode_reference(q.double(), k.double(), k.double(), torch.tensor([T]), rule, return_indices=True)
    assert decode_set_differences(rmask, rmask, q, k, sel) == (0, 0.0)
    g = Hq // Hkv
    head = torch.stack([q[0, h].double() @ k[0, h // g].double().T for h in range(Hq)])  # [Hq, T]
    rank = head.view(Hkv, g, T).mean(1).repeat_interleave(g, 0) if sel == "kv_group" else head
    row, top = rank[0], rank.abs().max()
    order = torch.argsort(row, descending=True)
    kk = int(rmask[0, 0].sum())
    for dropped, want in ((order[kk - 1], row[order[kk - 1]] - row[order[kk]]),  # the boundary key
                          (order[0], row[order[0]] - row[order[kk - 1]])):  # the largest key
        swapped = rmask.clone()
        swapped[0, 0, dropped] = False
        swapped[0, 0, order[kk]] = True  # the largest unselected key taken instead
        n, gap = decode_set_differences(swapped, rmask, q, k, sel)
        assert n == 2 and gap == pytest.approx((want / top).item(), rel=1e-9)


@pytest.mark.parametrize("sel", ["query_head", "kv_group"])
def test_continuous_inputs(sel):
    """randn bf16 inputs: sets equal up to last-bit score differences at the boundary; output tol."""
    gen = torch.Generator().manual_seed(23)
    B, Hq, Hkv, T, D = 2, 8, 2, 250, 64
    q, k, v = _case(B, Hq, Hkv, T, D, gen, grid=False, dup=False)
    lengths = torch.tensor([250, 171], device=DEV)
    rule = TopKRule("0.3", k_min=16, dispatch_threshold=0, selection=sel)
    out, mask = topk_decode(q, k, v, lengths, rule, return_indices=True, workspace=_ws(B, Hq, Hkv, T, D, sel))
    _, rmask = decode_reference(q, k, v, lengths, rule, return_indices=True)
    ref = decode_reference(q.double(), k.double(), v.double(), lengths, rule, compute_dtype=torch.float64)
    assert torch.equal(mask.sum(-1), rmask.sum(-1))
    _, gap = decode_set_differences(mask, rmask, q, k, sel)
    assert gap <= 1e-5  # only near-equal scores at the boundary may differ
    assert _rel(out, ref) <= BF16_TOL


def _score_rows(kind, rows, T, gen, keep=None):
    """fp32 ranking scores [rows, T] of one distribution shape (what the select sees); keep: the
    (length, k_eff) of each row, for "split_tie" (the k_eff-th and the next largest made equal, so
    that the set keeps one of two tied keys)."""
    if kind == "randn":
        return torch.randn(rows, T, generator=gen)
    if kind == "split_tie":
        x = torch.randn(rows, T, generator=gen)
        for r, (L, k) in enumerate(keep):
            order = torch.sort(-x[r, :L], stable=True).indices
            x[r, order[k]] = x[r, order[k - 1]]
        return x
    if kind == "heavy_tail":  # Student t(2) = Z / sqrt(chi2_2 / 2), chi2_2 / 2 ~ Exp(1): a few huge scores
        u = torch.rand(rows, T, generator=gen).clamp_min(1e-12)
        return torch.randn(rows, T, generator=gen) / torch.sqrt(-torch.log(u)) * 3
    if kind == "sink_and_trend":  # attention-sink outliers plus a drift along the position
        x = torch.randn(rows, T, generator=gen) * 0.5 + torch.linspace(0, 2, T)
        x[:, :4] = 50.0
        return x
    if kind == "few_values":  # heavy ties, straddling the threshold
        return torch.randint(-3, 4, (rows, T), generator=gen).float()
    if kind == "constant":
        return torch.zeros(rows, T)
    if kind == "tiny_spread":  # neighbouring floats only: the bracket closes on adjacent keys
        return 1.0 + torch.randint(0, 40, (rows, T), generator=gen).float() * 2.0**-23
    raise ValueError(kind)


def _keys(s):
    """Signed order keys of fp32 scores (the kernels' tau is one)."""
    key = s.float().view(torch.int32).long()
    return torch.where(key < 0, key ^ 0x7FFFFFFF, key)


def _want(s, k):
    """The k largest of s [L], ties to the lower index (a stable descending sort)."""
    want = torch.zeros(s.shape[0], dtype=torch.bool)
    want[torch.sort(-s.double(), stable=True).indices[:k]] = True
    return want


# chosen rows: (kind, how every row's threshold must be found with sample 256 and capacity 1,024)
CHOSEN = [("randn", PATH_BAND), ("heavy_tail", PATH_BAND), ("sink_and_trend", PATH_BAND), ("few_values", PATH_BAND),
          ("tiny_spread", PATH_BAND), ("split_tie", PATH_BAND), ("constant", PATH_OVERFLOW),
          ("misleading_sample", PATH_MISS), ("misleading_low", PATH_MISS)]


@pytest.mark.parametrize("sel", ["query_head", "kv_group"])
@pytest.mark.parametrize("kind,path", CHOSEN)
def test_band_and_fallbacks_on_chosen_rows(kind, path, sel):
    """The whole op on chosen ranking rows: the set is exactly the k_eff largest (ties to the lower
    index), and each row's threshold comes the expected way: from the band's candidate list, or by
    the whole-row search after the list overflowed (a constant row puts every key in the band) or
    the band missed (the strided sample sits on keys 100 above the rest: the band holds the sample
    only, too few keys for k_eff; or 100 below: every other key is above the band, too many)."""
    gen = torch.Generator().manual_seed(zlib.crc32(kind.encode()))  # fixed per kind (str hash() is salted)
    B, Hkv, G, T, D = 2, 2, 2, 1500, 16
    Hq, M = Hkv * G, 256
    lengths = torch.tensor([1500, 1300])
    rows = B * (Hq if sel == "query_head" else Hkv)
    rule = TopKRule("0.15", k_min=8, dispatch_threshold=0, selection=sel)
    keep = [(int(lengths[r * B // rows]), rule.k_eff(int(lengths[r * B // rows]))) for r in range(rows)]
    scores = _score_rows("randn" if kind.startswith("misleading") else kind, rows, T, gen, keep)
    if kind.startswith("misleading"):
        for r in range(rows):
            L = int(lengths[r * B // rows])
            scores[r, (torch.arange(M) * L) // M] += 100.0 if kind == "misleading_sample" else -100.0
    # one-hot queries: head h of a group reads column h (query_head) or every head column 0 (kv_group)
    q = torch.zeros(B, Hq, D)
    k = torch.randn(B, Hkv, T, D, generator=gen)
    if sel == "query_head":
        q[:, torch.arange(Hq), torch.arange(Hq) % G] = 1.0
        k[..., :G] = scores.view(B, Hkv, G, T).transpose(2, 3)
    else:
        q[..., 0] = 1.0
        k[..., 0] = scores.view(B, Hkv, T)
    v = torch.randn(B, Hkv, T, D, generator=gen)
    q, k, v = q.to(DEV), k.to(DEV), v.to(DEV)
    ws = DecodeWorkspace(B, Hq, Hkv, T, D, sel, DEV, sample=M, capacity=1024,
                         **({} if CUDA else dict(chunk=256, block_n=32, attend_block=32)))
    out, mask = topk_decode(q, k, v, lengths.to(DEV), rule, return_indices=True, workspace=ws)
    mask = mask.cpu()
    for r in range(rows):
        b, h = (r // Hq, r % Hq) if sel == "query_head" else (r // Hkv, (r % Hkv) * G)
        L = int(lengths[b])
        want = _want(scores[r, :L], rule.k_eff(L))
        assert torch.equal(mask[b, h, :L], want), f"row {r}: {int((mask[b, h, :L] != want).sum())} entries differ"
        assert not mask[b, h, L:].any()
    assert ws.path.cpu().tolist() == [path] * rows
    ref = decode_reference(q.double(), k.double(), v.double(), lengths.to(DEV), rule, compute_dtype=torch.float64)
    assert _rel(out, ref) <= 1e-5


@pytest.mark.parametrize("kind", ["randn", "heavy_tail", "sink_and_trend", "few_values", "constant", "tiny_spread",
                                  "split_tie"])
@pytest.mark.parametrize("select_block,select_sample",
                         [(128, 256), (2048, 256), pytest.param(2048, 1024, marks=pytest.mark.slow)])
def test_whole_row_search_against_stable_sort(kind, select_block, select_sample):
    """The fallback alone on chosen score rows (the band "missed": no candidates, nothing above):
    (tau, i_star) must describe exactly the k_eff largest scores, ties to the lower index."""
    gen = torch.Generator().manual_seed(zlib.crc32(kind.encode()))
    B, Hq, Hkv, T, D = 2, 4, 2, 1500, 16
    lengths = torch.tensor([1500, 777])
    rule = TopKRule("0.15", k_min=8, dispatch_threshold=0)
    ws = DecodeWorkspace(B, Hq, Hkv, T, D, "query_head", DEV, chunk=256, block_n=16, select_block=select_block,
                         select_sample=select_sample)
    keep = [(int(lengths[r // Hq]), rule.k_eff(int(lengths[r // Hq]))) for r in range(B * Hq)]
    scores = _score_rows(kind, B * Hq, T, gen, keep).to(torch.float32)
    ws.S.copy_(scores.view(B, Hq, T).to(DEV))
    ws.ncand.zero_()
    ws.nabove.zero_()
    _resolve(ws, lengths.to(DEV), rule)
    thr = ws.thr.cpu()
    assert ws.path.cpu().tolist() == [PATH_MISS] * (B * Hq)
    for row in range(B * Hq):
        L = int(lengths[row // Hq])
        tau, istar = int(thr[row, 0]), int(thr[row, 1])
        key = _keys(scores[row, :L])
        got = (key > tau) | ((key == tau) & (torch.arange(L) <= istar))
        want = _want(scores[row, :L], rule.k_eff(L))
        assert torch.equal(got, want), f"row {row}: {int((got != want).sum())} entries differ"


def test_fp32_cache():
    gen = torch.Generator().manual_seed(5)
    B, Hq, Hkv, T, D = 2, 4, 1, 100, 64
    q, k, v = _case(B, Hq, Hkv, T, D, gen, dtype=torch.float32)
    lengths = torch.tensor([100, 77], device=DEV)
    _check_exact(q, k, v, lengths, TopKRule("0.2", 4, 0), _ws(B, Hq, Hkv, T, D, "query_head"))


@pytest.mark.parametrize("sel", [pytest.param("query_head", marks=pytest.mark.slow), "kv_group"])
def test_every_output_written_and_no_stale_workspace(sel):
    """NaN-poisoned output and garbage-filled workspace give the same bits as a clean run; the
    launches of decode_launches, run in order, are one call of the op."""
    gen = torch.Generator().manual_seed(3)
    B, Hq, Hkv, T, D = 3, 8, 2, 130, 64
    q, k, v = _case(B, Hq, Hkv, T, D, gen)
    lengths = torch.tensor([130, 1, 66], device=DEV)
    rule = TopKRule("0.15", k_min=4, dispatch_threshold=0, selection=sel)
    ws = _ws(B, Hq, Hkv, T, D, sel)
    clean = topk_decode(q, k, v, lengths, rule, workspace=ws)
    for buf in (ws.S, ws.R, ws.samp, ws.band, ws.cand_s, ws.Mp, ws.Lp, ws.Op):
        buf.fill_(float("nan"))
    for buf in (ws.thr, ws.nabove, ws.ncand, ws.cand_i, ws.passes, ws.path):
        buf.random_(-(2**31), 2**31 - 1)
    out = torch.full((B, Hq, D), float("nan"), device=DEV, dtype=q.dtype)
    res = topk_decode(q, k, v, lengths, rule, out=out, workspace=ws)
    assert res.data_ptr() == out.data_ptr()
    assert not torch.isnan(out).any()
    assert torch.equal(out, clean)
    ref = decode_reference(q.double(), k.double(), v.double(), lengths, rule, compute_dtype=torch.float64)
    assert _rel(out, ref) <= BF16_TOL
    out.fill_(float("nan"))
    launches = decode_launches(q, k, v, lengths, rule, out=out, workspace=ws)
    assert [name for name, _ in launches] == ["sample", "score", "resolve", "attend", "combine"]
    for _, launch in launches:
        launch()
    assert torch.equal(out, clean)


def test_value_errors():
    gen = torch.Generator().manual_seed(0)
    B, Hq, Hkv, T, D = 2, 4, 2, 32, 64
    q, k, v = _case(B, Hq, Hkv, T, D, gen, dup=False)
    L = torch.tensor([32, 10], device=DEV)
    rule = TopKRule("0.15", 4, 0)

    def raises(match, *args, **kw):
        a = dict(q=q, k_cache=k, v_cache=v, lengths=L, rule=rule)
        a.update(kw)
        with pytest.raises(ValueError, match=match):
            topk_decode(a.pop("q"), a.pop("k_cache"), a.pop("v_cache"), a.pop("lengths"), a.pop("rule"), **a)

    raises("q must be", q=q[:, None])
    raises("k_cache must be", k_cache=k[0])
    raises("v_cache must have", v_cache=v[:, :, :16])
    raises("batch", q=q[:1])
    raises("head_dim", q=q[..., :32])
    raises("head_dim must be one of", q=q[..., :48], k_cache=k[..., :48], v_cache=v[..., :48])
    raises("multiple", q=q[:, :3])
    raises("q dtype", q=q.to(torch.int32))
    raises("k_cache dtype", k_cache=k.half())
    raises("v_cache dtype", v_cache=v.float())
    raises("lengths dtype", lengths=L.float())
    raises("lengths must be", lengths=L[:1])
    raises("lengths must lie", lengths=torch.tensor([33, 10], device=DEV))
    raises("lengths must lie", lengths=torch.tensor([0, 10], device=DEV))
    raises("rule must be", rule="0.15")
    raises("scale", scale=float("nan"))
    raises("unit stride", k_cache=k.transpose(2, 3).contiguous().transpose(2, 3))
    raises("out must be", out=torch.empty(B, Hq, D + 1, device=DEV, dtype=q.dtype))
    raises("workspace was made for", workspace=DecodeWorkspace(B, Hq, Hkv, T, D, "kv_group", DEV))
    huge = torch.empty(B, Hkv, 2**24, D, device="meta", dtype=k.dtype)  # no memory behind it
    raises("T_max must be <", q=q.to("meta"), k_cache=huge, v_cache=huge, lengths=L.to("meta"))
    if CUDA:
        raises("lengths is on", lengths=L.cpu())
    else:
        raises("CUDA", q=q.to("meta"), k_cache=k.to("meta"), v_cache=v.to("meta"), lengths=L.to("meta"))
    raises(r"< 2\*\*31", rule=TopKRule("0.0000000001", 4, 0))  # c = 1/10**10: past the kernels' int32
    with pytest.raises(ValueError, match="selection must be"):
        DecodeWorkspace(B, Hq, Hkv, T, D, "per_head", DEV)
    for name, value in (("sample", 48), ("capacity", 8), ("select_sample", 100), ("chunk", 96)):
        with pytest.raises(ValueError, match=f"{name} must be a power of 2"):
            DecodeWorkspace(B, Hq, Hkv, T, D, "query_head", DEV, **{name: value})
    with pytest.raises(ValueError, match="chunk .* must be >= block_n"):
        DecodeWorkspace(B, Hq, Hkv, T, D, "query_head", DEV, chunk=64, attend_block=128)


# ---------------------------------------------------------------- GPU only, real shapes
@gpu
@pytest.mark.parametrize("sel", ["query_head", "kv_group"])
@pytest.mark.parametrize("Hq,Hkv,D", [(32, 8, 64), (32, 4, 128), (8, 8, 64), (24, 8, 64)])
def test_gpu_real_shapes_exact(sel, Hq, Hkv, D):
    gen = torch.Generator().manual_seed(99 + Hq + Hkv + D)
    B, T = 4, 32768
    q, k, v = _case(B, Hq, Hkv, T, D, gen)
    lengths = torch.tensor([32768, 30001, 4095, 12345], device=DEV)
    rule = TopKRule("0.15", k_min=64, dispatch_threshold=4096, selection=sel)
    mask = _check_exact(q, k, v, lengths, rule, _ws(B, Hq, Hkv, T, D, sel))
    assert mask.sum(-1)[:, 0].tolist() == [4915, 4500, 4095, 1851]


@gpu
@pytest.mark.parametrize("sel", ["query_head", "kv_group"])
def test_gpu_fallbacks_at_real_shapes(sel):
    """A candidate list of 16: the band narrows to the keys equal to one sampled score (w capped at
    0), about a hundred grid scores, so every row's list overflows (or its band misses) and the
    whole-row search gives the set."""
    gen = torch.Generator().manual_seed(17)
    B, Hq, Hkv, T, D = 2, 32, 8, 32768, 64
    q, k, v = _case(B, Hq, Hkv, T, D, gen)
    lengths = torch.tensor([32768, 20001], device=DEV)
    rule = TopKRule("0.15", k_min=64, dispatch_threshold=0, selection=sel)
    ws = _ws(B, Hq, Hkv, T, D, sel, capacity=16)
    _check_exact(q, k, v, lengths, rule, ws)
    assert (ws.path != PATH_BAND).all()


@gpu
@pytest.mark.parametrize("sel", ["query_head", "kv_group"])
def test_gpu_continuous_and_graph_capture(sel):
    """Llama-3.2-1B shapes, randn inputs, T = 128K; the op captured in a CUDA graph and replayed."""
    gen = torch.Generator().manual_seed(5)
    B, Hq, Hkv, T, D = 2, 32, 8, 131072, 64
    q, k, v = _case(B, Hq, Hkv, T, D, gen, grid=False, dup=False)
    lengths = torch.tensor([131072, 70001], device=DEV)
    rule = TopKRule("0.05", k_min=64, dispatch_threshold=0, selection=sel)
    ref = decode_reference(q.double(), k.double(), v.double(), lengths, rule, compute_dtype=torch.float64)
    out = torch.full_like(q, float("nan"))
    topk_decode(q, k, v, lengths, rule, out=out, check_lengths=False)
    assert _rel(out, ref) <= BF16_TOL
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        topk_decode(q, k, v, lengths, rule, out=out, check_lengths=False)
        with torch.cuda.graph(g):
            topk_decode(q, k, v, lengths, rule, out=out, check_lengths=False)
    torch.cuda.current_stream().wait_stream(s)
    q2 = torch.randn(B, Hq, D, generator=gen).to(DEV, q.dtype)
    q.copy_(q2)
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    ref2 = decode_reference(q.double(), k.double(), v.double(), lengths, rule, compute_dtype=torch.float64)
    assert _rel(out, ref2) <= BF16_TOL


@gpu
@pytest.mark.parametrize("sel", ["query_head", "kv_group"])
def test_gpu_dependent_launches_race_free(sel):
    """The launches with programmatic dependent launch (the default on sm_90+) give the bits of serial
    launches, in 20 back-to-back calls captured in one CUDA graph with changing queries (a launch
    reading buffers before they are complete would differ somewhere)."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs compute capability >= 9")
    gen = torch.Generator().manual_seed(23)
    B, Hq, Hkv, T, D, calls = 4, 32, 8, 32768, 64, 20
    _, k, v = _case(B, Hq, Hkv, T, D, gen, grid=False, dup=False)
    qs = torch.randn(calls, B, Hq, D, generator=gen).to(DEV, k.dtype)
    lengths = torch.tensor([32768, 30001, 4097, 12345], device=DEV)
    rule = TopKRule("0.15", k_min=64, dispatch_threshold=0, selection=sel)
    outs = {}
    for pdl in (True, False):
        ws = DecodeWorkspace(B, Hq, Hkv, T, D, sel, DEV, pdl=pdl)
        assert ws.pdl is pdl
        out = torch.full((calls, B, Hq, D), float("nan"), device=DEV, dtype=k.dtype)
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            topk_decode(qs[0], k, v, lengths, rule, out=out[0], check_lengths=False, workspace=ws)
            with torch.cuda.graph(g):
                for i in range(calls):
                    topk_decode(qs[i], k, v, lengths, rule, out=out[i], check_lengths=False, workspace=ws)
        torch.cuda.current_stream().wait_stream(s)
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert (ws.path == PATH_BAND).all()
        outs[pdl] = out
    assert not torch.isnan(outs[True]).any()
    assert torch.equal(outs[True], outs[False])
    ref = decode_reference(qs[-1].double(), k.double(), v.double(), lengths, rule, compute_dtype=torch.float64)
    assert _rel(outs[True][-1], ref) <= BF16_TOL


def test_bench_sdpa_baseline_check():
    """The benchmark times an SDPA baseline only if it runs and matches the dense reference."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from dcr.producers.bench_decode import sdpa_fails

    gen = torch.Generator().manual_seed(8)
    B, Hq, Hkv, T, D = 2, 8, 2, 40, 16
    q, k, v = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((B, Hq, D), (B, Hkv, T, D), (B, Hkv, T, D)))
    p = torch.softmax((q.view(B, Hkv, Hq // Hkv, D) @ k.transpose(-1, -2)) / D**0.5, -1)
    ref = (p @ v).reshape(B, Hq, D)

    def good(i):
        return sdpa(q.unsqueeze(2), k, v, enable_gqa=True)

    def off(i):
        return good(i) * 1.1

    def broken(i):
        raise RuntimeError("no kernel for this shape\nsecond line")

    assert sdpa_fails(good, ref) is None
    assert sdpa_fails(off, ref).startswith("wrong output (rel err 1.0")
    assert sdpa_fails(broken, ref) == "RuntimeError: no kernel for this shape"


def test_bench_sdpa_baselines_scale_and_backends():
    """sdpa_baselines keeps the backends that run here and match a float64 softmax at the scale given (not
    SDPA's default 1 / sqrt(D)); on the CPU the math backend runs and cuDNN is reported, not raised."""
    from dcr.producers.bench_decode import sdpa_baselines

    gen = torch.Generator().manual_seed(9)
    B, Hq, Hkv, T, D, scale = 2, 6, 2, 33, 16, 0.7
    q, k, v = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((B, Hq, D), (B, Hkv, T, D), (B, Hkv, T, D)))
    ref = (torch.softmax((q.view(B, Hkv, Hq // Hkv, D) @ k.transpose(-1, -2)) * scale, -1) @ v).reshape(B, Hq, D)
    fine, why_not = sdpa_baselines(lambda i: (q, k, v), ref, scale)
    assert set(fine) | set(why_not) == {"cudnn", "flash", "efficient", "math"}
    assert "math" in fine
    assert _rel(fine["math"](0).squeeze(2), ref) < 1e-12
    if not torch.cuda.is_available():
        assert "cudnn" in why_not
    wrong_scale, _ = sdpa_baselines(lambda i: (q, k, v), ref, D**-0.5, ("math",))
    assert wrong_scale == {}
