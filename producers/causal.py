"""`dcr produce causal`: the matched-magnitude (Gap-1) causal test, as pre-registered.

Cells (``prereg.measurements.expected_cells(plan, "causal")``): ``{layer, head, prompt, N}``. Per
cell, the window's first N tokens go through the model ONCE as a batch of three identical rows
("arms": 0 baseline, 1 treatment, 2 control). At layer ``layer`` the attention function of
:mod:`producers.entropy` (registered with ``AttentionInterface``) computes the fp32 logits ℓ of
query head ``head``'s last query row (position N − 1, N keys) and, from arm 0's ℓ (float64, CPU):

* g = ∂H/∂ℓ = −p ⊙ (log p + H), checked against central finite differences with the registered
  ``finite_difference_eps`` → ``fd_error`` = ‖g_fd − g‖ / ‖g‖;
* treatment δ_T = s · g/‖g‖, s from a line search (bracketing + bisection, at most
  ``line_search.max_iterations`` entropy evaluations) so that ΔH hits ``delta_target`` within
  ``line_search.tolerance`` → ``ls_converged``, ``ls_iterations``;
* control δ_C: Gaussian r from a CPU generator seeded with
  ``cell_generator_seed(plan_sha256, cell + {"causal_seed": seed})``, its g-component removed,
  rescaled to ‖δ_T‖ (exactly the contract; r's component along the all-ones vector, which softmax
  ignores, is kept).

Each arm's row output is then softmax(ℓ_a + δ_a) · V in fp32 (δ_0 = 0: the baseline takes the same
fp32 path), every other row/head/layer is SDPA. The next token's NLL per arm comes from the same
forward (fp32 log-softmax of the last position's logits). Realised quantities are recomputed in
float64 from the fp32 logits and perturbations the forward used.

Rows (``prereg.measurements.CAUSAL``; one per cell): layer, head, prompt, N, nll_base, nll_treat,
nll_ctrl, d_nll (= nll_treat − nll_ctrl), delta_h_t, delta_h_c, norm_ratio (‖δ_T‖/‖δ_C‖),
fd_error, ls_converged, ls_iterations, d_gap (dropped softmax mass outside the top
k_eff = ⌊gap_coverage·N⌋ logits, treatment − control), dense_fallback (True when the perturbation
was not applied to exactly the three arms at that layer, i.e. some arm ran plain attention; its
derived columns are then NaN).

Pilot mode (``pilot=True``): the same grid once per ``pilot_targets`` value, producer
``causal_pilot`` (``prereg.measurements.CAUSAL_PILOT``), cells ``{layer, head, prompt, N,
delta_target}``, the same columns plus ``delta_target``; its output is the evidence a plan
amendment cites when it locks Δ_target.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from dcr.prereg.measurements import CAUSAL, CAUSAL_PILOT, expected_cells

PRODUCER = CAUSAL.name
PILOT_PRODUCER = CAUSAL_PILOT.name
PRODUCER_VERSION = "1"


def plan_perturbations(logits: torch.Tensor, *, delta_target: float, tolerance: float,
                       max_iterations: int, fd_eps: float, generator: torch.Generator) -> dict[str, Any]:
    """The three arms' perturbations of one row. logits: [N] (float64 used, CPU).

    Returns {"deltas": float64 [3, N] (0, δ_T, δ_C), "fd_error", "ls" (LineSearchResult)}.
    """
    from dcr.producers.entropy import entropy_grad, fd_error, line_search, orthogonal_control

    l = logits.detach().double().reshape(-1).cpu()
    g = entropy_grad(l)
    gn = float(torch.linalg.vector_norm(g))
    u = g / gn if gn > 0 else torch.zeros_like(g)
    ls = line_search(l, u, delta_target, tolerance, max_iterations)
    d_t = ls.step * u
    d_c = orthogonal_control(g, float(torch.linalg.vector_norm(d_t)), generator)
    return {"deltas": torch.stack([torch.zeros_like(l), d_t, d_c]), "fd_error": fd_error(l, g, fd_eps), "ls": ls}


def compute_cell(model, windows, cell: dict, *, spec, plan_sha256: str, delta_target: float) -> dict[str, Any]:
    """One measurement (a dict of the row's columns) for cell {layer, head, prompt, N[, delta_target]}."""
    from dcr.prereg.rule import coverage_k
    from dcr.producers.entropy import PROBE_KWARG, ProbeContext, entropy, truncation_gap
    from dcr.producers.runner import cell_generator_seed

    layer, head, prompt, n = (int(cell[k]) for k in ("layer", "head", "prompt", "N"))
    cfg = model.config
    if not (0 <= layer < cfg.num_hidden_layers and 0 <= head < cfg.num_attention_heads):
        raise ValueError(f"cell {cell}: no head {head} in layer {layer} of this model")
    ids = torch.from_numpy(windows.prompt(prompt, n)).to(model.device)
    batch = ids[:n].unsqueeze(0).expand(3, n).contiguous()
    nxt = int(ids[n])
    gen = torch.Generator().manual_seed(cell_generator_seed(plan_sha256, {**cell, "causal_seed": spec.seed}))
    record: dict[str, Any] = {}

    def plan(l0: torch.Tensor) -> torch.Tensor:
        record.update(plan_perturbations(
            l0, delta_target=delta_target, tolerance=spec.line_search.tolerance,
            max_iterations=spec.line_search.max_iterations, fd_eps=spec.finite_difference_eps,
            generator=gen))
        return record["deltas"]

    ctx = ProbeContext(mode="perturb", layer=layer, head=head, plan=plan)
    with torch.inference_mode():
        out = model(input_ids=batch, use_cache=False, logits_to_keep=1, **{PROBE_KWARG: ctx})
    logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    nll = (-logp[:, nxt]).double().cpu()
    row = {"layer": layer, "head": head, "prompt": prompt, "N": n,
           "nll_base": float(nll[0]), "nll_treat": float(nll[1]), "nll_ctrl": float(nll[2]),
           "d_nll": float(nll[1] - nll[2])}
    fallback = ctx.perturbed_arms != 3 or ctx.layer_calls.get(layer, 0) != 1 or ctx.logits is None
    nan = math.nan
    if fallback:
        row.update(delta_h_t=nan, delta_h_c=nan, norm_ratio=nan, fd_error=record.get("fd_error", nan),
                   ls_converged=False, ls_iterations=record["ls"].iterations if "ls" in record else 0,
                   d_gap=nan, dense_fallback=True)
        return row
    lg = ctx.logits.double().cpu()  # fp32 values, [3, N]
    pert = (ctx.logits + ctx.deltas).double().cpu()  # exactly the fp32 rows the softmax saw
    dl = ctx.deltas.double().cpu()
    k = coverage_k(spec.gap_coverage, n)
    nt, nc = float(torch.linalg.vector_norm(dl[1])), float(torch.linalg.vector_norm(dl[2]))
    row.update(
        delta_h_t=float(entropy(pert[1]) - entropy(lg[1])),
        delta_h_c=float(entropy(pert[2]) - entropy(lg[2])),
        norm_ratio=nt / nc if nc > 0 else nan,
        fd_error=float(record["fd_error"]),
        ls_converged=bool(record["ls"].converged),
        ls_iterations=int(record["ls"].iterations),
        d_gap=truncation_gap(pert[1], k) - truncation_gap(pert[2], k),
        dense_fallback=False,
    )
    return row


def causal_cells(plan: Any, *, pilot: bool) -> list[dict[str, Any]]:
    """The registered causal cells, or (pilot) those cells once per pilot target, target outermost."""
    base = expected_cells(plan, PRODUCER)
    if not pilot:
        return base
    return [{**c, "delta_target": float(t)} for t in plan.producers.causal.pilot_targets for c in base]


def produce_causal(lock_path, out_dir, *, device: str, pilot: bool = False, progress: bool = True,
                   rank: int | None = None, world_size: int | None = None, where: dict[str, list[str]] | None = None):
    """Run the locked plan's causal cells into ``out_dir/causal/`` (pilot: ``out_dir/causal_pilot/``).

    lock_path: the plan's ``.lock.yaml`` (verified). device: "cpu", "cuda", ... pilot: run every
    ``pilot_targets`` value instead of the registered ``delta_target``. rank/world_size: shard
    (default: torchrun's environment). Returns the runner's ``RunSummary``.
    """
    from dcr.producers.entropy import PROBE_ATTN_NAME, register_probe
    from dcr.producers.plan_inputs import model_info as model_meta
    from dcr.producers.plan_inputs import open_plan
    from dcr.producers.runner import run_cells

    register_probe()
    run = open_plan(lock_path, PRODUCER, device=device, attn_implementation=PROBE_ATTN_NAME)
    locked, plan, spec, loaded, windows = run.locked, run.plan, run.cells, run.loaded, run.windows
    if pilot and not spec.pilot_targets:
        raise ValueError(f"{lock_path}: pilot mode, but the plan registers no pilot_targets")
    model_info = {**model_meta(loaded), "plan_model": plan.model.model_dump(mode="json")}

    def compute(cell: dict) -> pa.Table:
        target = cell["delta_target"] if pilot else spec.delta_target
        row = compute_cell(loaded.model, windows, cell, spec=spec, plan_sha256=locked.sha256,
                           delta_target=float(target))
        if pilot:
            row["delta_target"] = float(target)
        return (CAUSAL_PILOT if pilot else CAUSAL).table([row])

    return run_cells(producer=PILOT_PRODUCER if pilot else PRODUCER, producer_version=PRODUCER_VERSION,
                     locked=locked, cells=causal_cells(plan, pilot=pilot), out_dir=Path(out_dir),
                     compute=compute, model_info=model_info, corpus_info=windows.info,
                     rank=rank, world_size=world_size, progress=progress, where=where)
