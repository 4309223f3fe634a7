"""Attention-row entropy tools shared by the random-spectrum and causal producers.

Everything here is a pure function of tensors (no model), except :class:`ProbeContext` and
:func:`probe_attention_forward`, the ``AttentionInterface`` function both producers load models
with (:data:`PROBE_ATTN_NAME`). Conventions:

* a *row* is the attention logits of one query row of one query head: ``ℓ = scaling · q·K^T`` on
  post-RoPE q, K (``scaling`` = the module's, 1/√d for Llama), computed in fp32 from the model's
  q and k (whatever the model dtype);
* entropy ``H = −Σ p log p`` in nats, ``p = softmax(ℓ)``;
* its gradient ``g = ∂H/∂ℓ = −p ⊙ (log p + H)`` (Σ g = 0: adding a constant to ℓ changes nothing).

The causal producer's maths (line search, control, finite differences, truncation gap) runs in
float64 on the CPU on one row of N logits: it is small, and float64 keeps the gates (1e-3 norm
ratio, 1e-2 finite-difference error) far from round-off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

PROBE_ATTN_NAME = "dcr_probe"
PROBE_KWARG = "dcr_probe"

# ---------------------------------------------------------------------------- pure row maths


def row_logits(q_rows: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """fp32 logits of query rows against keys, GQA-aware.

    q_rows: [B, Hq, D] post-RoPE query rows; keys: [B, Hkv, N, D] post-RoPE keys (Hq % Hkv == 0;
    query head h reads KV head h // (Hq / Hkv), as transformers' ``repeat_kv``).
    Returns fp32 [B, Hq, N] = scaling · q·k.
    """
    b, hq, d = q_rows.shape
    hkv = keys.shape[1]
    if hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} KV heads")
    q = q_rows.float().reshape(b, hkv, hq // hkv, d)
    s = torch.einsum("bkgd,bknd->bkgn", q, keys.float())
    return (s * scaling).reshape(b, hq, keys.shape[2])


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = −Σ p log p (nats) over the last axis, in the dtype of ``logits`` ([..., N] -> [...])."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def entropy_grad(logits: torch.Tensor) -> torch.Tensor:
    """g = ∂H/∂ℓ = −p ⊙ (log p + H) over the last axis ([..., N] -> [..., N])."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    h = -(p * logp).sum(-1, keepdim=True)
    return -p * (logp + h)


def fd_gradient(logits: torch.Tensor, eps: float, chunk: int = 512) -> torch.Tensor:
    """Central finite differences of H at one row: [N] -> [N], (H(ℓ+εe_i) − H(ℓ−εe_i)) / 2ε.

    Computed in float64, ``chunk`` coordinates at a time ([2·chunk, N] rows in memory).
    """
    l = logits.detach().double().reshape(-1)
    n = l.numel()
    out = torch.empty(n, dtype=torch.float64, device=l.device)
    for i in range(0, n, chunk):
        idx = torch.arange(i, min(i + chunk, n), device=l.device)
        rows = l.expand(idx.numel(), n).clone()
        plus, minus = rows.clone(), rows
        plus[torch.arange(idx.numel()), idx] += eps
        minus[torch.arange(idx.numel()), idx] -= eps
        out[idx] = (entropy(plus) - entropy(minus)) / (2 * eps)
    return out


def fd_error(logits: torch.Tensor, g: torch.Tensor, eps: float) -> float:
    """Relative error of the analytic gradient g against central finite differences (float64):
    ‖g_fd − g‖ / ‖g‖ (inf when ‖g‖ = 0 and g_fd ≠ 0, 0 when both vanish)."""
    gfd = fd_gradient(logits, eps)
    g = g.detach().double().reshape(-1).to(gfd.device)
    num, den = float(torch.linalg.vector_norm(gfd - g)), float(torch.linalg.vector_norm(g))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


@dataclass(frozen=True)
class LineSearchResult:
    step: float  # s ≥ 0: δ_T = s · g/‖g‖
    delta_h: float  # H(ℓ + δ_T) − H(ℓ) reached (float64)
    converged: bool  # |delta_h − target| ≤ tolerance
    iterations: int  # entropy evaluations used (bracketing + bisection)


def line_search(logits: torch.Tensor, direction: torch.Tensor, target: float, tolerance: float,
                max_iterations: int) -> LineSearchResult:
    """Step s ≥ 0 along the unit ``direction`` u so that ΔH(s) = H(ℓ + s·u) − H(ℓ) = ``target`` (nats).

    1. Bracket: s = target / (g·u) (first order), doubled while ΔH(s) < target and ΔH still rises
       (sign of the directional derivative at s). If ΔH peaks below the target before that, a
       golden-section search locates the peak; a peak ≥ target closes the bracket, otherwise the
       target is out of reach along u (e.g. H(ℓ) + target > ln N) and the peak is returned.
    2. Bisection on [lo, hi] with ΔH(lo) < target ≤ ΔH(hi).
    It aims at |ΔH − target| ≤ tolerance/16 so that the fp32 forward applying the step stays well
    inside ``tolerance``; ``converged`` says whether the returned point is within ``tolerance``.
    ``iterations`` counts entropy evaluations (≤ ``max_iterations``). logits, direction: [N].
    """
    l = logits.detach().double().reshape(-1)
    u = direction.detach().double().reshape(-1).to(l.device)
    h0 = float(entropy(l))
    aim = tolerance / 16.0
    it = 0
    best = [0.0, 0.0]  # step, ΔH closest to the target so far

    def f(s: float) -> float:
        nonlocal it
        it += 1
        d = float(entropy(l + s * u)) - h0
        if abs(d - target) < abs(best[1] - target):
            best[0], best[1] = s, d
        return d

    def rising(s: float) -> bool:
        return float(torch.dot(entropy_grad(l + s * u), u)) > 0.0

    def result() -> LineSearchResult:
        return LineSearchResult(best[0], best[1], abs(best[1] - target) <= tolerance, it)

    slope = float(torch.dot(entropy_grad(l), u))
    if not slope > 0.0 or max_iterations < 1:  # flat row (uniform or one-hot) or wrong direction
        return result()
    lo, hi = 0.0, target / slope
    while True:  # 1. bracket
        if it >= max_iterations:
            return result()
        d = f(hi)
        if abs(d - target) <= aim:
            return result()
        if d >= target:
            break
        if rising(hi):
            lo, hi = hi, 2.0 * hi
            continue
        # past the peak of ΔH along u: golden-section search for it on [lo, hi]
        inv = (math.sqrt(5.0) - 1.0) / 2.0
        a, b = lo, hi
        c, e = b - inv * (b - a), a + inv * (b - a)
        if it + 2 > max_iterations:
            return result()
        fc, fe = f(c), f(e)
        while max(fc, fe) < target and it < max_iterations and (b - a) > 1e-12 * max(1.0, b):
            if fc > fe:
                b, e, fe = e, c, fc
                c = b - inv * (b - a)
                fc = f(c)
            else:
                a, c, fc = c, e, fe
                e = a + inv * (b - a)
                fe = f(e)
        if max(fc, fe) < target:
            return result()  # out of reach: the peak (closest point) is returned, not converged
        hi = c if fc >= target else e
        if abs(max(fc, fe) - target) <= aim:
            return result()
        break
    while it < max_iterations:  # 2. bisection: ΔH(lo) < target <= ΔH(hi)
        mid = 0.5 * (lo + hi)
        d = f(mid)
        if abs(d - target) <= aim:
            break
        if d < target:
            lo = mid
        else:
            hi = mid
    return result()


def orthogonal_control(g: torch.Tensor, norm: float, generator: torch.Generator) -> torch.Tensor:
    """The control perturbation: Gaussian r ~ N(0, I) from ``generator`` (CPU, float64), its
    component along g removed, rescaled to ``norm``. g: [N] -> [N] float64 (CPU)."""
    gd = g.detach().double().reshape(-1).cpu()
    r = torch.randn(gd.numel(), dtype=torch.float64, generator=generator)
    gn = torch.linalg.vector_norm(gd)
    if gn > 0:
        u = gd / gn
        r = r - torch.dot(r, u) * u
    return r * (norm / torch.linalg.vector_norm(r))


def truncation_gap(logits: torch.Tensor, k: int) -> float:
    """Softmax mass dropped by keeping only the k largest logits: 1 − Σ_{top k} p (float64; [N] row)."""
    p = torch.softmax(logits.detach().double().reshape(-1), dim=-1)
    if k >= p.numel():
        return 0.0
    return float(1.0 - torch.topk(p, k).values.sum())


# ---------------------------------------------------------------------------- the attention probe


@dataclass
class ProbeContext:
    """What one forward through :func:`probe_attention_forward` does; passed as ``dcr_probe=ctx``.

    mode "entropy": at every layer in ``layers`` (None = all), record the fp32 entropy of the last
    query row of every query head: ``entropy[layer]`` fp32 [B, Hq] and ``logit_std[layer]``
    [B, Hq] (standard deviation of the row's logits, a scale check).

    mode "perturb": at layer ``layer``, query head ``head``, last query row: compute the row's fp32
    logits ℓ_a of every batch element ("arm") a, call ``plan(ℓ_0) -> δ`` (float64 [B, N], one
    perturbation per arm; arm 0 is expected to be 0) once, and replace that head's output row by
    softmax(ℓ_a + δ_a) (fp32) · V. ``logits`` [B, N] fp32 and ``deltas`` [B, N] fp32 (what was
    added) are kept for the caller. Every other row, head and layer runs transformers' SDPA.

    Counters prove which path ran: ``perturbed_arms`` (arms whose row was replaced) and
    ``layer_calls`` (attention calls seen, per layer index).
    """

    mode: str
    layers: frozenset[int] | None = None
    layer: int | None = None
    head: int | None = None
    plan: Callable[[torch.Tensor], torch.Tensor] | None = None
    entropy: dict[int, torch.Tensor] = field(default_factory=dict)
    logit_std: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    deltas: torch.Tensor | None = None
    perturbed_arms: int = 0
    layer_calls: dict[int, int] = field(default_factory=dict)


def _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


def probe_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                            value: torch.Tensor, attention_mask: torch.Tensor | None,
                            scaling: float | None = None, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """AttentionInterface function. query [B,Hq,Nq,D], key/value [B,Hkv,Nk,D] (post-RoPE) ->
    ([B,Nq,Hq,D], None). Without a :class:`ProbeContext` it is exactly transformers' SDPA."""
    ctx: ProbeContext | None = kwargs.pop(PROBE_KWARG, None)
    out, _ = _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs)
    if ctx is None:
        return out, None
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise ValueError("the attention module has no layer_idx")
    ctx.layer_calls[layer] = ctx.layer_calls.get(layer, 0) + 1
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    nq, nk = query.shape[2], key.shape[2]
    if nq != nk:
        raise NotImplementedError(f"the probe reads teacher-forced forwards only ({nq} queries, {nk} keys)")
    if ctx.mode == "entropy":
        if ctx.layers is None or layer in ctx.layers:
            lg = row_logits(query[:, :, -1], key, scale)  # [B, Hq, N] fp32
            ctx.entropy[layer] = entropy(lg)
            ctx.logit_std[layer] = lg.std(dim=-1)
        return out, None
    if ctx.mode != "perturb":
        raise ValueError(f"unknown probe mode {ctx.mode!r}")
    if layer != ctx.layer:
        return out, None
    hq, hkv = query.shape[1], key.shape[1]
    kvh = ctx.head // (hq // hkv)
    lg = row_logits(query[:, ctx.head:ctx.head + 1, -1], key[:, kvh:kvh + 1], scale)[:, 0]  # [B, N]
    delta = ctx.plan(lg[0].detach().double().cpu()).to(device=lg.device, dtype=torch.float32)
    if delta.shape != lg.shape:
        raise ValueError(f"plan returned {tuple(delta.shape)}, expected {tuple(lg.shape)}")
    p = torch.softmax(lg + delta, dim=-1)  # fp32 softmax of the perturbed rows
    row = torch.einsum("bn,bnd->bd", p, value[:, kvh].float())
    out = out.clone()
    out[:, -1, ctx.head] = row.to(out.dtype)
    ctx.logits, ctx.deltas = lg.detach(), delta
    ctx.perturbed_arms += lg.shape[0]
    return out, None


def register_probe() -> None:
    """Register :data:`PROBE_ATTN_NAME` with transformers' AttentionInterface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PROBE_ATTN_NAME, probe_attention_forward)
