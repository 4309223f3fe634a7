"""Top-K attention inside a transformers model, through ``AttentionInterface`` (no monkey-patching).

:func:`register` adds the attention function :data:`ATTN_NAME` to transformers' global
``AttentionInterface``; a model loaded with ``attn_implementation=ATTN_NAME`` (what
:func:`producers.models.load_model` does) calls :func:`topk_attention_forward` in every attention
layer. That function reads a :class:`TopKContext` from the forward's keyword argument
:data:`CTX_KWARG` (transformers passes unknown forward kwargs down to the attention function):

* no context, or ``rule=None``, or a layer not in ``ctx.layers`` -> transformers' own
  ``sdpa_attention_forward`` (dense, exactly the library's SDPA path);
* otherwise the exact Top-K rule: teacher-forced (query length == key length, causal) through
  :func:`producers.kernels.teacher_forced.topk_attention_teacher_forced`, or one decode row
  (query length 1 against the KV cache) through :func:`producers.kernels.reference.decode_reference`.

The context collects the path counts of the forward it was passed to (no global counters), so a
caller can prove that no sparse layer silently fell back to dense.

:func:`sequence_nll` is the teacher-forced measurement (one forward over N tokens, per-position NLL);
:func:`sequence_nll_decode` runs the same window one token at a time through a KV cache (tests: it
proves teacher-forced == decode).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.reference import decode_reference
from dcr.producers.kernels.teacher_forced import PathCounts, topk_attention_teacher_forced

ATTN_NAME = "dcr_topk"
CTX_KWARG = "dcr_topk"


@dataclass
class TopKContext:
    """The rule of one forward and the counts it collects.

    rule: the Top-K rule, or None (every layer dense SDPA).
    layers: indices of the layers that use the rule (None = all layers); the others use SDPA.
    backend: "auto" | "triton" | "reference" (see topk_attention_teacher_forced).
    chunk_rows: rows per chunk of the CPU reference path.
    kernel_options: tile options of the Triton kernel (speed only; see teacher_forced_triton).
    capture: a list to which every Top-K call appends (layer_idx, query, key, value, output) --
    diagnostics and tests only (it keeps all of them in memory).
    """

    rule: TopKRule | None
    layers: frozenset[int] | None = None
    backend: str = "auto"
    chunk_rows: int = 256
    kernel_options: dict | None = None
    capture: list | None = None
    counts: PathCounts = field(default_factory=PathCounts)
    sparse_layer_calls: int = 0
    dense_layer_calls: int = 0

    def uses_rule(self, layer_idx: int | None) -> bool:
        if self.rule is None:
            return False
        if self.layers is None:
            return True
        if layer_idx is None:
            raise ValueError("the attention module has no layer_idx; cannot choose layers")
        return layer_idx in self.layers


def _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def topk_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """AttentionInterface function. query [B,Hq,Nq,D], key/value [B,Hkv,Nk,D] -> ([B,Nq,Hq,D], None)."""
    ctx: TopKContext | None = kwargs.pop(CTX_KWARG, None)
    layer_idx = getattr(module, "layer_idx", None)
    if ctx is None or not ctx.uses_rule(layer_idx):
        if ctx is not None:
            ctx.dense_layer_calls += 1
        return _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs)
    if dropout:
        raise ValueError("Top-K attention is for evaluation: dropout must be 0 (call model.eval())")
    if attention_mask is not None:
        raise NotImplementedError("Top-K attention takes unpadded causal input only (attention_mask must be None)")
    rule = ctx.rule
    bsz, hq, nq, _ = query.shape
    nk = key.shape[2]
    if nq == 1:  # one decode row against the cache (also the first token of a window)
        lengths = torch.full((bsz,), nk, dtype=torch.int64, device=query.device)
        out = decode_reference(query[:, :, 0], key, value, lengths, rule, scale=scaling)
        out = out.to(query.dtype).unsqueeze(2)
        dense = nk < rule.dispatch_threshold
        ctx.counts = ctx.counts + PathCounts(sparse_rows=0 if dense else bsz * hq, dense_rows=bsz * hq if dense else 0)
    elif nq == nk:
        out, counts = topk_attention_teacher_forced(
            query, key, value, rule, scale=scaling, backend=ctx.backend, chunk_rows=ctx.chunk_rows,
            kernel_options=ctx.kernel_options,
        )
        ctx.counts = ctx.counts + counts
    else:
        raise NotImplementedError(f"query length {nq} with {nk} keys: only teacher forcing (equal) or one decode row")
    ctx.sparse_layer_calls += 1
    if ctx.capture is not None:
        ctx.capture.append((layer_idx, query.detach().clone(), key.detach().clone(), value.detach().clone(),
                            out.detach().clone()))
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register :data:`ATTN_NAME` with transformers' AttentionInterface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, topk_attention_forward)


def _check_model(model, rule) -> None:
    impl = getattr(model.config, "_attn_implementation", None)
    if rule is not None and impl != ATTN_NAME:
        raise ValueError(
            f"the model runs attention {impl!r}; Top-K needs attn_implementation={ATTN_NAME!r} "
            "(load it with producers.models.load_model)"
        )
    if getattr(model.config, "final_logit_softcapping", None):
        raise NotImplementedError("models with final logit soft-capping are not supported")


def _nll_from_hidden(model, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-position NLL float64 [N] from final hidden states [N, H], the LM head applied in chunks."""
    head = model.get_output_embeddings()
    out = torch.empty(targets.shape[0], dtype=torch.float64, device=hidden.device)
    for i in range(0, hidden.shape[0], chunk):
        logits = head(hidden[i:i + chunk]).float()  # [c, V] (model dtype product, fp32 softmax)
        lse = torch.logsumexp(logits, dim=-1)
        tgt = logits.gather(-1, targets[i:i + chunk, None]).squeeze(-1)
        out[i:i + chunk] = (lse - tgt).double()
    return out


def _layers(layers: Iterable[int] | None, n_layers: int) -> frozenset[int] | None:
    if layers is None:
        return None
    s = frozenset(int(i) for i in layers)
    bad = [i for i in s if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layer indices {sorted(bad)} outside 0..{n_layers - 1}")
    return s


def sequence_nll(
    model,
    token_ids: torch.Tensor,
    *,
    rule: TopKRule | None,
    layers: Iterable[int] | None = None,
    backend: str = "auto",
    chunk_rows: int = 256,
    head_chunk: int = 2048,
    kernel_options: dict | None = None,
    capture: list | None = None,
) -> tuple[torch.Tensor, PathCounts]:
    """Teacher-forced NLL of a window: one forward over its first N tokens.

    token_ids: int [N + 1] (a window). rule: the Top-K rule, or None for the dense arm (the model's
    SDPA). layers: the layers that use the rule (None = all). backend / chunk_rows / kernel_options:
    see :func:`topk_attention_teacher_forced`; head_chunk: rows per LM-head chunk (memory); capture:
    see :class:`TopKContext` (diagnostics). Returns (nll float64 [N] in nats,
    where nll[i] = -log p(token[i+1] | tokens[0..i]); PathCounts of the forward, summed over layers).
    Raises if a rule was given but no layer took it.
    """
    _check_model(model, rule)
    ids = token_ids.reshape(-1).to(device=model.device, dtype=torch.long)
    if ids.numel() < 2:
        raise ValueError("a window needs at least 2 tokens")
    n_layers = model.config.num_hidden_layers
    ctx = TopKContext(rule=rule, layers=_layers(layers, n_layers), backend=backend, chunk_rows=chunk_rows,
                      kernel_options=kernel_options, capture=capture)
    kw = {CTX_KWARG: ctx} if rule is not None else {}
    with torch.inference_mode():
        out = model.base_model(input_ids=ids[None, :-1], use_cache=False, **kw)
        nll = _nll_from_hidden(model, out.last_hidden_state[0], ids[1:], head_chunk)
    if rule is not None and ctx.sparse_layer_calls == 0:
        raise RuntimeError("a Top-K rule was given but no layer used it (silent dense fallback)")
    return nll, ctx.counts


def sequence_nll_decode(
    model,
    token_ids: torch.Tensor,
    *,
    rule: TopKRule | None,
    layers: Iterable[int] | None = None,
) -> tuple[torch.Tensor, PathCounts]:
    """The same NLL as :func:`sequence_nll`, one token at a time through a DynamicCache (tests only).

    Sparse layers use :func:`decode_reference` for every step. Returns (nll float64 [N], PathCounts).
    """
    from transformers import DynamicCache

    _check_model(model, rule)
    ids = token_ids.reshape(-1).to(device=model.device, dtype=torch.long)
    n = ids.numel() - 1
    ctx = TopKContext(rule=rule, layers=_layers(layers, model.config.num_hidden_layers))
    kw = {CTX_KWARG: ctx} if rule is not None else {}
    cache = DynamicCache(config=model.config)
    params = inspect.signature(model.base_model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
    nll = torch.empty(n, dtype=torch.float64, device=model.device)
    with torch.inference_mode():
        for i in range(n):
            pos = torch.tensor([[i]], device=model.device)
            out = model.base_model(
                input_ids=ids[None, i:i + 1], position_ids=pos, use_cache=True, **{cache_kw: cache}, **kw
            )
            nll[i] = _nll_from_hidden(model, out.last_hidden_state[0], ids[i + 1:i + 2], 1)[0]
    return nll, ctx.counts
