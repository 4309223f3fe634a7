"""The exact Top-K attention rule in plain PyTorch: the reference every kernel is tested against.

The rule is :class:`dcr.prereg.rule.TopKRule` (``k_eff``, coverage, dispatch threshold, selection).
For one query row of one query head that sees ``t`` keys:

* scores ``s_i = q · k_i`` in fp32 on post-RoPE vectors; the selected set is the ``k_eff(t)``
  largest scores, ties broken by the **lower key index** (so the set is unique; ``-0.0 == 0.0``
  tie like any equal pair); a row with ``t < dispatch_threshold`` keeps all ``t`` keys;
* output ``o = sum_{j in S} softmax_S(s_j * scale) v_j`` in fp32 (``scale`` is the model's,
  ``1/sqrt(D)`` by default). The dropped mass is not corrected;
* ``selection="query_head"`` ranks each query head on its own scores; ``selection="kv_group"``
  ranks once per KV head on the group's mean score ``mean_h(q_h) · k_i`` and every query head of
  the group attends to that one set (still with its own softmax).

Two execution modes compute the same function: :func:`decode_reference` (one new row against a
cache) and :func:`teacher_forced_reference` (all rows of a window, row ``i`` sees keys ``0..i``).
The teacher-forced one holds O(N^2) memory: tests and the CPU only.
"""
from __future__ import annotations

import math

import torch

from dcr.prereg.rule import TopKRule


def _select_mask(scores: torch.Tensor, visible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the ``k`` largest visible scores along the last axis, ties to lower index.

    scores: [..., T] (any float dtype); visible: [..., T] bool; k: [...] int64 (k <= #visible).
    """
    ranked = scores.masked_fill(~visible, float("-inf"))
    # stable descending sort keeps equal scores in index order: lower index ranks first.
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return (rank < k.unsqueeze(-1)) & visible


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int]:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected 4-d q, k, v with k.shape == v.shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"batch or head_dim mismatch: q {tuple(q.shape)} vs k {tuple(k.shape)}")
    return hq, hkv


def _attend(q, k, v, visible, rule: TopKRule, scale: float, compute_dtype):
    """Core of both modes. q [B,Hq,R,D]; k, v [B,Hkv,T,D]; visible [B,1,R,T] bool.

    Returns (out [B,Hq,R,D] in compute_dtype, selected [B,Hq,R,T] bool).
    """
    hq, hkv = q.shape[1], k.shape[1]
    group = hq // hkv
    qf, kf, vf = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    kx = kf.repeat_interleave(group, dim=1)  # reference only: clarity over memory
    vx = vf.repeat_interleave(group, dim=1)
    scores = qf @ kx.transpose(-1, -2)  # [B,Hq,R,T]
    t = visible.sum(-1)  # [B,1,R] visible keys per row
    keff = rule.k_eff(t)
    if rule.selection == "query_head":
        rank_scores = scores
    else:
        b, _, r, tt = scores.shape
        rank_scores = scores.view(b, hkv, group, r, tt).mean(2).repeat_interleave(group, dim=1)
    selected = _select_mask(rank_scores, visible.expand_as(scores), keff.expand(scores.shape[:-1]))
    logits = (scores * scale).masked_fill(~selected, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with no visible key (t = 0) give zeros
    return probs @ vx, selected


def decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    rule: TopKRule,
    *,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
    return_indices: bool = False,
):
    """One decode step of exact Top-K attention.

    q: [B, Hq, D]; k_cache, v_cache: [B, Hkv, T_max, D] (rows >= lengths[b] are ignored);
    lengths: [B] int, 1 <= lengths[b] <= T_max. Returns out [B, Hq, D] in ``compute_dtype``
    and, with ``return_indices``, a bool mask [B, Hq, T_max] of the selected keys.
    """
    if q.dim() != 3:
        raise ValueError(f"q must be [B, Hq, D], got {tuple(q.shape)}")
    _check_qkv(q.unsqueeze(2), k_cache, v_cache)
    t_max = k_cache.shape[2]
    lengths = lengths.to(device=q.device, dtype=torch.int64)
    if lengths.shape != (q.shape[0],) or bool((lengths < 1).any()) or bool((lengths > t_max).any()):
        raise ValueError(f"lengths must be [B] with 1 <= length <= T_max={t_max}, got {lengths.tolist()}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    visible = (torch.arange(t_max, device=q.device) < lengths[:, None])[:, None, None, :]  # [B,1,1,T]
    out, selected = _attend(q.unsqueeze(2), k_cache, v_cache, visible, rule, scale, compute_dtype)
    out, selected = out.squeeze(2), selected.squeeze(2)
    return (out, selected) if return_indices else out


def teacher_forced_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rule: TopKRule,
    *,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
    return_indices: bool = False,
):
    """All rows of a window at once: row i of every query head sees keys 0..i (t = i + 1).

    q: [B, Hq, N, D]; k, v: [B, Hkv, N, D]. Returns out [B, Hq, N, D] in ``compute_dtype`` and,
    with ``return_indices``, the selected mask [B, Hq, N, N]. Memory is O(N^2): tests and CPU only.
    """
    _check_qkv(q, k, v)
    n = q.shape[2]
    if k.shape[2] != n:
        raise ValueError(f"teacher forcing needs as many keys as queries: {n} vs {k.shape[2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    visible = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()[None, None]  # [1,1,N,N]
    visible = visible.expand(q.shape[0], 1, n, n)
    out, selected = _attend(q, k, v, visible, rule, scale, compute_dtype)
    return (out, selected) if return_indices else out


def decode_set_differences(mask: torch.Tensor, ref_mask: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor,
                           selection: str) -> tuple[int, float]:
    """How two decode selections of continuous (randn) inputs differ: fp32 scores summed in another order
    can swap keys whose scores are within rounding of the boundary. mask, ref_mask: bool [B, Hq, T];
    q [B, Hq, D]; k_cache [B, Hkv, T, D]. Returns (the number of keys that differ, gap), gap = the largest
    distance of a differing key's ranking score from its row's boundary (the reference's smallest selected
    ranking score), relative to the largest |ranking score|; float64; (0, 0.0) when the sets are equal. A
    real miss is far from the boundary; a last-bit swap is within ~1e-6."""
    diff = (mask != ref_mask).cpu()
    n_diff = int(diff.sum())
    if n_diff == 0:
        return 0, 0.0
    b, hq, d = q.shape
    hkv = k_cache.shape[1]
    # [B, Hkv, G, T]: each query head against its KV head's keys (no copy of K per query head)
    scores = torch.einsum("bkgd,bktd->bkgt", q.double().cpu().view(b, hkv, hq // hkv, d), k_cache.double().cpu())
    if selection == "kv_group":
        scores = scores.mean(2, keepdim=True).expand_as(scores)
    scores = scores.reshape(b, hq, -1)
    tau = scores.masked_fill(~ref_mask.cpu(), float("inf")).amin(-1, keepdim=True)
    return n_diff, ((scores - tau).abs()[diff].max() / scores.abs().amax()).item()
