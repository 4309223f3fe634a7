"""A decode step for Llama-family models on a pre-allocated static KV cache (gpt-fast style).

The model's own weights and modules (embedding, norms, projections, MLP, LM head) are used as
they are; the loop over layers, the KV cache and the attention are ours:

* cache: per layer ``k, v`` of shape [B, Hkv, T_max, D] in the model's dtype, allocated once and
  updated in place (slice copy at the step's position); never expanded per query head;
* RoPE: cos/sin tables [T_max, D] precomputed with the model's own rotary module (so llama3
  scaling is the model's), indexed by position;
* attention of the single new row: ``"dense"`` = ``F.scaled_dot_product_attention`` on the
  cache slice [0, pos] with ``enable_gqa=True`` and no mask (one row sees every cached key), under
  an optional ``sdpa_kernel`` backend list; ``"sparse"`` = exact Top-K of the registered rule,
  through the Triton op :func:`producers.kernels.decode.topk_decode` (``sparse_impl="triton"``) or
  the PyTorch reference :func:`producers.kernels.reference.decode_reference` (``"reference"``,
  tests and checks).

:meth:`StaticDecoder.step` is one decode step (eager); :meth:`StaticDecoder.capture` records the
step at a fixed position into a CUDA graph (static token buffer in, static logits buffer out).
:meth:`StaticDecoder.prefill` fills the cache from a prompt with dense causal SDPA (it builds the
cache; it is not what latency times). Tests: ``tests/test_latency.py`` checks that the step's
logits equal the Hugging Face model's forward for the next token (dense), and that the sparse
path equals a forward through the reference rule.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.reference import decode_reference


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, D]; cos, sin [B or 1, S, D] (model dtype) -> x rotated (as the HF Llama does)."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class StaticDecoder:
    """One decode step of a Llama-family HF model over a static KV cache.

    model: a transformers Llama-family causal LM (``model.model.layers[i].self_attn.{q,k,v,o}_proj``,
    ``input_layernorm``, ``post_attention_layernorm``, ``mlp``; ``model.model.{embed_tokens, norm,
    rotary_emb}``; ``model.lm_head``), eval mode. batch: B; max_len: T_max (cache length).
    attention: "dense" or "sparse"; rule: the TopKRule (sparse only); sparse_impl: "triton" or
    "reference"; sdpa_backends: list of ``torch.nn.attention.SDPBackend`` for the dense path
    (None = PyTorch's choice). cache: an existing ``(k_list, v_list)`` to share (e.g. the dense
    and the sparse decoder of one session on the same cache), else allocated here.
    """

    def __init__(self, model: Any, *, batch: int, max_len: int, attention: Literal["dense", "sparse"],
                 rule: TopKRule | None = None, sparse_impl: Literal["triton", "reference"] = "triton",
                 sdpa_backends: list | None = None,
                 cache: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> None:
        if attention not in ("dense", "sparse"):
            raise ValueError(f"attention must be 'dense' or 'sparse', got {attention!r}")
        if attention == "sparse" and not isinstance(rule, TopKRule):
            raise ValueError("the sparse path needs rule= (a TopKRule)")
        if sparse_impl not in ("triton", "reference"):
            raise ValueError(f"sparse_impl must be 'triton' or 'reference', got {sparse_impl!r}")
        cfg = model.config
        self.model = model
        self.inner = model.model
        self.layers = list(self.inner.layers)
        self.B, self.T = int(batch), int(max_len)
        self.Hq = cfg.num_attention_heads
        self.Hkv = cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.attention, self.rule, self.sparse_impl = attention, rule, sparse_impl
        self.sdpa_backends = sdpa_backends
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.scale = float(getattr(self.layers[0].self_attn, "scaling", self.D ** -0.5))
        if cache is None:
            shape = (self.B, self.Hkv, self.T, self.D)
            cache = ([torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers],
                     [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers])
        self.k_cache, self.v_cache = cache
        if len(self.k_cache) != len(self.layers) or self.k_cache[0].shape != (self.B, self.Hkv, self.T, self.D):
            raise ValueError(f"cache must be {len(self.layers)} tensors of [B, Hkv, T_max, D] = "
                             f"{(self.B, self.Hkv, self.T, self.D)}")
        with torch.no_grad():  # cos/sin [T_max, D] from the model's own rotary module (llama3 scaling included)
            pos = torch.arange(self.T, device=self.device)[None]
            cos, sin = self.inner.rotary_emb(torch.zeros(1, device=self.device, dtype=self.dtype), pos)
        self.cos, self.sin = cos[0], sin[0]
        self.lengths = torch.zeros(self.B, device=self.device, dtype=torch.int32)  # sparse op: keys per row
        self.record_q = False
        self.last_q: list[torch.Tensor | None] = [None] * len(self.layers)  # post-RoPE q [B, Hq, D]
        self._ws = None
        self._attn_out = None
        if attention == "sparse" and sparse_impl == "triton":
            from dcr.producers.kernels.decode import DecodeWorkspace

            self._ws = DecodeWorkspace(self.B, self.Hq, self.Hkv, self.T, self.D, rule.selection, self.device)
            self._attn_out = torch.empty(self.B, self.Hq, self.D, device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ attention of one new row
    def _attend_row(self, q: torch.Tensor, layer: int, length: int) -> torch.Tensor:
        """q [B, Hq, D] (post-RoPE) against the first ``length`` cached keys -> [B, Hq, D]."""
        k, v = self.k_cache[layer], self.v_cache[layer]
        if self.attention == "dense":
            qs = q[:, :, None]  # [B, Hq, 1, D]
            ks, vs = k[:, :, :length], v[:, :, :length]
            if self.sdpa_backends is not None:
                from torch.nn.attention import sdpa_kernel

                with sdpa_kernel(self.sdpa_backends):
                    o = F.scaled_dot_product_attention(qs, ks, vs, scale=self.scale, enable_gqa=True)
            else:
                o = F.scaled_dot_product_attention(qs, ks, vs, scale=self.scale, enable_gqa=True)
            return o[:, :, 0]
        if self.sparse_impl == "reference":
            lengths = torch.full((self.B,), length, device=q.device, dtype=torch.int64)
            return decode_reference(q, k, v, lengths, self.rule, scale=self.scale).to(q.dtype)
        from dcr.producers.kernels.decode import topk_decode

        return topk_decode(q.contiguous(), k, v, self.lengths, self.rule, scale=self.scale,
                           out=self._attn_out, workspace=self._ws, check_lengths=False)

    # ------------------------------------------------------------------ one step, eager
    @torch.no_grad()
    def step(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """tokens [B] int64 at position ``pos`` (0-based; the cache holds positions < pos) ->
        logits [B, V] (the LM head's dtype). Writes this position's K, V into the cache."""
        B, Hq, Hkv, D = self.B, self.Hq, self.Hkv, self.D
        if not (0 <= pos < self.T):
            raise ValueError(f"pos {pos} outside the cache [0, {self.T})")
        length = pos + 1
        if self.attention == "sparse" and self.sparse_impl == "triton":
            self.lengths.fill_(length)
        cos, sin = self.cos[pos:pos + 1][None], self.sin[pos:pos + 1][None]  # [1, 1, D]
        x = self.inner.embed_tokens(tokens)  # [B, hidden]
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(B, Hq, 1, D)
            k = a.k_proj(h).view(B, Hkv, 1, D)
            v = a.v_proj(h).view(B, Hkv, 1, D)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            self.k_cache[i][:, :, pos:pos + 1] = k  # in place; a copy kernel (graph-capturable)
            self.v_cache[i][:, :, pos:pos + 1] = v
            q = q[:, :, 0]  # [B, Hq, D]
            if self.record_q:
                self.last_q[i] = q.clone()
            o = self._attend_row(q, i, length)  # [B, Hq, D]
            x = x + a.o_proj(o.reshape(B, Hq * D))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.lm_head(self.inner.norm(x))

    # ------------------------------------------------------------------ prefill (builds the cache)
    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, P] -> logits [B, V] of the last position; fills cache positions [0, P) with
        dense causal SDPA (the cache the decode step then reads)."""
        B, P = ids.shape
        if B != self.B or not (1 <= P <= self.T):
            raise ValueError(f"ids must be [B={self.B}, P] with 1 <= P <= {self.T}, got {tuple(ids.shape)}")
        Hq, Hkv, D = self.Hq, self.Hkv, self.D
        cos, sin = self.cos[:P][None], self.sin[:P][None]
        x = self.inner.embed_tokens(ids)  # [B, P, hidden]
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(B, P, Hq, D).transpose(1, 2)
            k = a.k_proj(h).view(B, P, Hkv, D).transpose(1, 2)
            v = a.v_proj(h).view(B, P, Hkv, D).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            self.k_cache[i][:, :, :P] = k
            self.v_cache[i][:, :, :P] = v
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
            x = x + a.o_proj(o.transpose(1, 2).reshape(B, P, Hq * D))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.lm_head(self.inner.norm(x[:, -1]))

    # ------------------------------------------------------------------ CUDA graph of one step
    def capture(self, pos: int, tokens: torch.Tensor, warmup: int = 2) -> "GraphStep":
        """Record :meth:`step` at position ``pos`` into a CUDA graph (CUDA only).

        tokens [B] int64 initial content of the static token buffer. The graph replays exactly
        the step at ``pos`` (cache slice and lengths are fixed at capture)."""
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        static_tokens = tokens.to(self.device, torch.int64).clone()
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):  # warm-up outside the graph (Triton compilation, cuBLAS handles)
            for _ in range(warmup):
                self.step(static_tokens, pos)
        torch.cuda.current_stream(self.device).wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.step(static_tokens, pos)
        return GraphStep(graph=graph, tokens=static_tokens, logits=logits)


class GraphStep:
    """A captured decode step: write ``tokens`` in place, ``replay()``, read ``logits`` [B, V]."""

    def __init__(self, graph, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        self.graph, self.tokens, self.logits = graph, tokens, logits

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.logits


def check_llama_family(model: Any) -> None:
    """Raise ValueError unless ``model`` has the modules :class:`StaticDecoder` uses."""
    inner = getattr(model, "model", None)
    need = ("embed_tokens", "norm", "rotary_emb", "layers")
    if inner is None or any(not hasattr(inner, n) for n in need) or not hasattr(model, "lm_head"):
        raise ValueError(f"{type(model).__name__} is not a Llama-family causal LM (needs model.model."
                         f"{{{', '.join(need)}}} and lm_head)")
    a = inner.layers[0].self_attn
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        if not hasattr(a, n):
            raise ValueError(f"{type(model).__name__}: attention has no {n}")
