"""Teacher-forced exact Top-K attention: all N rows of a window, row t sees keys 0..t.

Computes the function of :func:`producers.kernels.reference.teacher_forced_reference` (the rule:
``k_eff(t+1)`` largest fp32 scores among keys ``0..t``, ties to the lower key index, dense below the
dispatch threshold, selection per query head or per KV group, softmax over the set in fp32) without
ever holding an N x N score matrix:

* **GPU (Triton)** — two kernels, each with one program per (ranking row, block of ``BLOCK_M`` query
  rows): a ranking row is a query head (``query_head``), or a KV group (``kv_group``: a row's ranking
  score is the sum of its group's heads' scores, one chain of tensor-core dots per key tile, which ranks
  as the group mean does; the attention kernel selects once per group and runs each head's softmax over
  the same keys). The *counting kernel* finds each row's threshold by *selection over recomputed scores*: scores are mapped to
  order-preserving int32 keys; the mean / sd of the scores of 4 x block_n keys at strided positions
  give a first guess; then counting passes over all visible key blocks test 4 candidate thresholds
  per row at once (3 around an estimate of the k-th largest value -- a Gaussian quantile first, then
  an interpolation of the counts at the bracket's ends: in score space with an exponential
  density fitted to that Gaussian where the bracket is at most one binade wide, else linear in key
  space -- and the bracket's midpoint in key space, which bounds the number of passes by 33). A pass
  after one that left some open row's bracket count unchanged (ties) also snaps the bracket onto
  existing keys. A row is settled when a candidate has exactly ``k_eff`` keys at or above it, or the
  bracket ``[lo, hi)`` is one key wide (then ``lo`` is the k-th largest key and ties are cut by
  index). With ``collect_cap`` > 0 (default
  32), the counting passes stop as soon as every open row's bracket holds at most ``collect_cap``
  keys. The kernel leaves each row's bracket and counts (16 bytes per row) to the *attention kernel*,
  which lists each row's keys in ``[lo, hi)`` in a per-row scratch list while it runs over the keys
  ``>= hi``: one int64 *word* per 32 keys of a tile that hold any (the index of the word's first key and
  the 32-bit mask of its listed keys; one row reduction per word, nothing per key). After the key loop
  the words become keys, each key's ranking score recomputed in fp32 from its gathered K row (only keys
  within rounding of each other can rank otherwise than by the tile's tensor-core scores), and each row
  takes the best ``k_eff - cnt(>= hi)`` of its list (rank by counting) into its softmax, gathering their
  V rows. Only where a settled row has more than
  ``collect_cap`` keys tied at its threshold does a separate *collect pass* end the open rows'
  selection, and the attention pass then cuts the ties by index. Otherwise the attention pass is
  flash-style online softmax over the keys with ``key >= lo``. Memory: the output and O(rows) of
  state. K and V are read per KV head (GQA-native; nothing is expanded per query head).
* **CPU** — the reference itself, called on chunks of rows (memory O(chunk * N)), for the CPU demo
  and tests. (The reference expands K/V per query head internally; that is its business.)

Precision: scores are fp32 (bf16 inputs: exact products, fp32 accumulation on tensor cores; fp32
inputs: IEEE fp32 dots, no TF32). The softmax is fp32; on bf16 inputs the probabilities are cast to
bf16 for the P @ V product, as in flash attention, with fp32 accumulation.

Path counts are per call and counted per (batch, query head, row): ``dense_rows`` saw fewer keys
than the dispatch threshold, ``sparse_rows`` took the Top-K rule.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import torch

from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.reference import _attend, _check_qkv

Backend = Literal["auto", "triton", "reference"]


@dataclass(frozen=True)
class PathCounts:
    """Rows (per batch x query head x position) that took the sparse (Top-K) or the dense path."""

    sparse_rows: int = 0
    dense_rows: int = 0

    def __add__(self, other: "PathCounts") -> "PathCounts":
        return PathCounts(self.sparse_rows + other.sparse_rows, self.dense_rows + other.dense_rows)


def path_counts(batch: int, q_heads: int, n: int, rule: TopKRule) -> PathCounts:
    """Path counts of one teacher-forced call: row t (0-based) sees t + 1 keys; dense iff t + 1 < T_dispatch."""
    dense_per = min(n, max(0, rule.dispatch_threshold - 1))
    return PathCounts(sparse_rows=batch * q_heads * (n - dense_per), dense_rows=batch * q_heads * dense_per)


# --------------------------------------------------------------------------------------------- CPU path
def teacher_forced_chunked_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rule: TopKRule, *, scale: float | None, chunk_rows: int
) -> torch.Tensor:
    """The reference rule on chunks of ``chunk_rows`` rows. q [B,Hq,N,D]; k, v [B,Hkv,N,D] -> [B,Hq,N,D] fp32."""
    n = q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for r0 in range(0, n, chunk_rows):
        r1 = min(n, r0 + chunk_rows)
        rows = torch.arange(r0, r1, device=q.device)
        visible = (torch.arange(r1, device=q.device)[None, :] <= rows[:, None])[None, None]  # [1,1,R,r1]
        visible = visible.expand(q.shape[0], 1, r1 - r0, r1)
        o, _ = _attend(q[:, :, r0:r1], k[:, :, :r1], v[:, :, :r1], visible, rule, scale, torch.float32)
        out[:, :, r0:r1] = o
    return out


# --------------------------------------------------------------------------------------------- Triton
# register caps per thread of the (counting, attention) kernels per selection at the default tile (64 x 64,
# 4 warps; H100, N = 32K, `dcr bench quality`, one call; None = no cap). Counting: query_head compiles to
# 234 registers (2 programs per SM), at 128 4 fit with no spill in its loops: 66.2 -> 62.4 ms; kv_group
# (252; 64 KB of shared memory allows 3) at 168: 44.6 -> 43.3 ms. Attention: query_head (237-245
# registers) at 168 fits 3 programs per SM (73.7 ms uncapped); kv_group's kernel (a group's 4 heads per
# program, 98 KB of shared memory: 2 per SM whatever the cap) spills at 168: 65.8 ms capped.
MAXNREG: dict[str, tuple[int | None, int | None]] = {"query_head": (128, 168), "kv_group": (168, None)}


def _maxnreg(option: int | None | str, auto: int | None, cuda: bool) -> dict:
    """The launch option {"maxnreg": cap} of a kernel's register cap (``option``, or ``auto`` for "auto"); {}
    without a cap or off the GPU (the interpreter ignores it)."""
    cap = auto if option == "auto" else option
    return {"maxnreg": cap} if cap and cuda else {}


def _triton_module():
    """Import the Triton kernel module (interpreter mode when no CUDA device is present)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from dcr.producers.kernels import teacher_forced_triton

    return teacher_forced_triton


def _gauss_quantiles(n: int, rule: TopKRule, device) -> torch.Tensor:
    """z[t] = Phi^-1(1 - k_eff(t+1)/(t+1)), fp32 [n]: the first guess of each row's threshold in sd units."""
    t = torch.arange(1, n + 1, dtype=torch.int64)
    frac = rule.k_eff(t).to(torch.float64) / t.to(torch.float64)
    z = torch.special.ndtri((1.0 - frac).clamp(1e-9, 1 - 1e-9))
    return z.to(torch.float32).to(device)


def teacher_forced_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rule: TopKRule,
    *,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    return_selected: bool = False,
    return_passes: bool = False,
    collect_cap: int = 32,
    count_maxnreg: int | None | Literal["auto"] = "auto",
    attend_maxnreg: int | None | Literal["auto"] = "auto",
):
    """The Triton kernel. q [B,Hq,N,D]; k, v [B,Hkv,N,D] (bf16/fp16/fp32, same dtype).

    Returns out [B,Hq,N,D] in q's dtype; with ``return_selected`` or ``return_passes`` a tuple
    (out, extras) where extras["selected"] is the bool mask [B,Hq,N,N] of the selected keys (tests
    only: O(N^2) memory), extras["passes"] the number of full passes over the keys of each
    program before the attention pass (counting passes + a collect pass where one ran), int32
    [ranking rows, ceil(N / rows_per_program)], extras["brackets"] what the counting passes left per
    row, int32 [ranking rows, N, 4] = (lo, hi, cnt_lo, cnt_hi) (key space; counts of visible keys >= lo
    and >= hi), and extras["rows_per_program"] (= block_m). Ranking rows: B*Hq, one per query head, or for
    kv_group B*Hkv, one per KV group.
    collect_cap: once every open row's bracket holds at most this many keys, the selection ends on
    per-row lists of them (scratch of 8 * collect_cap bytes per ranking row and query row); 0 = counting
    passes only. A power of two, or 0. Tile defaults: the fastest of those timed at 32K (`dcr bench quality`'s
    sweeps, H200 and H100).
    block_n None = 64 for 16-bit inputs, 32 for fp32 ones (fp32 dots at 64 x 64 compile, offline for
    sm_90, to 32 registers and a 15 KB spill stack; at 64 x 32 to 255 registers and 4 KB).
    Two kernels run: the counting passes, then the attention pass.
    count_maxnreg / attend_maxnreg cap the counting / attention kernel's registers per thread (GPU only;
    None = no cap; "auto" = :data:`MAXNREG` of the rule's selection).
    """
    hq, hkv = _check_qkv(q, k, v)
    bsz, _, n, d = q.shape
    if k.shape[2] != n:
        raise ValueError(f"teacher forcing needs as many keys as queries: {n} vs {k.shape[2]}")
    if d & (d - 1) or d < 16:
        raise ValueError(f"head_dim must be a power of two >= 16, got {d}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_cuda and q.dtype != torch.float32:
        # Triton interpreter (CPU tensors): its bf16/fp16 tl.dot returns garbage (Triton 3.9),
        # so run the same function on fp32 copies (bf16 products are exact in fp32)
        res = teacher_forced_triton(q.float(), k.float(), v.float(), rule, scale=scale, block_m=block_m,
                                    block_n=block_n, num_warps=num_warps, num_stages=num_stages,
                                    return_selected=return_selected, return_passes=return_passes,
                                    collect_cap=collect_cap, count_maxnreg=count_maxnreg,
                                    attend_maxnreg=attend_maxnreg)
        return (res[0].to(q.dtype), res[1]) if isinstance(res, tuple) else res.to(q.dtype)
    if block_n is None:
        block_n = 32 if q.dtype == torch.float32 else 64
    if block_m % block_n:
        raise ValueError(f"block_m ({block_m}) must be a multiple of block_n ({block_n})")
    if collect_cap < 0 or collect_cap & (collect_cap - 1):
        raise ValueError(f"collect_cap must be 0 or a power of two, got {collect_cap}")
    if collect_cap and block_n > 64:
        raise ValueError(f"the lists (collect_cap > 0) hold at most 2 words of 32 keys per key block: block_n "
                         f"must be <= 64, got {block_n}")
    for name, cap in (("count_maxnreg", count_maxnreg), ("attend_maxnreg", attend_maxnreg)):
        if not (cap is None or cap == "auto" or (isinstance(cap, int) and 0 < cap <= 255)):
            raise ValueError(f"{name} must be None, 'auto' or registers per thread in 1..255, got {cap!r}")
    tfk = _triton_module()
    from dcr.producers.kernels.triton_rule import rule_args  # once _triton_module has chosen the mode

    rule_ints = rule_args(rule)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    out = torch.empty_like(q)
    sel = torch.zeros((bsz, hq, n, n), dtype=torch.int8, device=q.device) if return_selected else out
    zq = _gauss_quantiles(n, rule, q.device)
    kv_group = rule.selection == "kv_group"
    group = hq // hkv
    # both kernels: one program per ranking row (a query head, or a KV group) and block of block_m rows
    grid = (tfk.triton.cdiv(n, block_m), bsz * (hkv if kv_group else hq))
    stats = torch.zeros(grid[1] * grid[0], dtype=torch.int32, device=q.device)
    fp32 = q.dtype == torch.float32
    # scratch lists of the selection's end, per (ranking row, row, slot), one int64 each: a word of 32 keys, or
    # a key (its ranking key bits and index)
    scr_p = torch.empty(max(1, grid[1] * n * collect_cap), dtype=torch.int64, device=q.device)
    # per ranking row and query row, what the counting kernel leaves for the attention kernel: lo, hi, cnt_lo,
    # cnt_hi (int32)
    state = torch.empty(grid[1] * n * 4, dtype=torch.int32, device=q.device)
    shape = dict(GROUP=group, KV_GROUP=kv_group, HEAD_D=d, BLOCK_M=block_m, BLOCK_N=block_n,
                 PREC="ieee" if fp32 else "tf32", CAP=collect_cap)
    tfk._tf_count_kernel[grid](
        q, k, zq, stats, state, *q.stride(), *k.stride(), n, hq, *rule_ints,
        **shape, num_warps=num_warps, num_stages=num_stages, **_maxnreg(count_maxnreg, MAXNREG[rule.selection][0], q.is_cuda),
    )
    tfk._tf_attend_kernel[grid](
        q, k, v, out, sel, stats, state, scr_p,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        n, hq, scale * math.log2(math.e), *rule_ints,
        **shape, WRITE_SEL=return_selected, P_BF16=not fp32, num_warps=num_warps, num_stages=num_stages,
        **_maxnreg(attend_maxnreg, MAXNREG[rule.selection][1], q.is_cuda),
    )
    if not (return_selected or return_passes):
        return out
    extras = {"passes": stats.view(grid[1], grid[0]), "brackets": state.view(grid[1], n, 4),
              "rows_per_program": block_m}
    if return_selected:
        extras["selected"] = sel.bool()
    return out, extras


# --------------------------------------------------------------------------------------------- public
def topk_attention_teacher_forced(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rule: TopKRule,
    *,
    scale: float | None = None,
    backend: Backend = "auto",
    chunk_rows: int = 256,
    kernel_options: dict | None = None,
) -> tuple[torch.Tensor, PathCounts]:
    """Teacher-forced exact Top-K attention (row t sees keys 0..t).

    q: [B, Hq, N, D]; k, v: [B, Hkv, N, D]; scale: softmax scale (``1/sqrt(D)`` when None).
    backend: "triton" (CUDA, or the Triton interpreter on CPU tensors), "reference" (the PyTorch
    reference on ``chunk_rows`` rows at a time), "auto" = triton on CUDA tensors, reference otherwise.
    kernel_options: block_m / block_n / num_warps / num_stages for the Triton kernel (speed only).
    Returns (out [B, Hq, N, D] in q's dtype, PathCounts of this call).
    """
    hq, _ = _check_qkv(q, k, v)
    if backend == "auto":
        backend = "triton" if q.is_cuda else "reference"
    if backend == "triton":
        out = teacher_forced_triton(q, k, v, rule, scale=scale, **(kernel_options or {}))
    elif backend == "reference":
        if k.shape[2] != q.shape[2]:
            raise ValueError(f"teacher forcing needs as many keys as queries: {q.shape[2]} vs {k.shape[2]}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        out = teacher_forced_chunked_reference(q, k, v, rule, scale=scale, chunk_rows=chunk_rows).to(q.dtype)
    else:
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    return out, path_counts(q.shape[0], hq, q.shape[2], rule)
