"""`dcr produce quality`: teacher-forced ΔPPL of every registered (window, N, c[, arm]) cell.

One cell = one window's first N + 1 tokens at coverage c: a dense forward (the model's SDPA) and
a sparse forward (exact causal Top-K in the sparse layers), each in ONE teacher-forced pass. The
sparse rule is the plan's attention rule at c, with the arm's selection and dense layers when the
plan registers arms (else ``attention.selection`` and the registered ``layers``).
Rows follow the contract ``prereg.measurements.QUALITY``, per-position NLLs included, so the verdict
engine can bootstrap over blocks and score sparse-active positions alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dcr.prereg.measurements import QUALITY, expected_cells

PRODUCER = QUALITY.name
VERSION = "1.0.0"


def sparse_active(n: int, rule) -> "np.ndarray":  # noqa: F821
    """bool [n]: position i (which sees i + 1 keys) really drops keys: dispatched and k_eff < i + 1."""
    import numpy as np
    import torch

    t = torch.arange(1, n + 1)
    return (rule.k_eff(t) < t).numpy().astype(bool) if n else np.zeros(0, bool)


def produce_quality(
    lock_path: str | Path,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    where: dict[str, list[str]] | None = None,
) -> Any:
    """Run every quality cell of the locked plan not yet written under ``out_dir/quality/``."""
    import pyarrow as pa
    import torch

    from dcr.prereg.rule import TopKRule
    from dcr.producers.attention import sequence_nll
    from dcr.producers.plan_inputs import model_info, open_plan
    from dcr.producers.runner import run_cells

    run = open_plan(lock_path, PRODUCER, device=device)
    locked, plan, cells_spec, loaded, windows = run.locked, run.plan, run.cells, run.loaded, run.windows
    n_layers = loaded.model.config.num_hidden_layers
    arms = {a.id: a for a in cells_spec.arms} if cells_spec.arms is not None else {}
    for a in arms.values():
        if any(layer >= n_layers for layer in a.dense_layers):
            raise ValueError(f"quality arm {a.id!r}: dense_layers {a.dense_layers} name layers the model lacks "
                             f"({n_layers} layers)")
    kernel = cells_spec.kernel
    if kernel == "auto":
        kernel = "triton" if loaded.model.device.type == "cuda" else "reference"
    dense_cache: dict[tuple[int, int], torch.Tensor] = {}  # (window, N) -> dense NLL [N]: c-independent

    def sparse_rule(cell: dict[str, Any]) -> tuple[TopKRule, list[int]]:
        """The cell's rule and its sparse layers."""
        a = plan.attention
        if "arm" in cell:
            arm = arms[cell["arm"]]
            dense = set(arm.dense_layers)
            return (TopKRule.from_plan(a, cell["coverage"], arm.selection),
                    [layer for layer in range(n_layers) if layer not in dense])
        sparse = list(range(n_layers)) if cells_spec.layers == "all" else list(cells_spec.layers)
        return TopKRule.from_plan(a, cell["coverage"]), sparse

    def compute(cell: dict[str, Any]) -> pa.Table:
        i, n, c = cell["window_index"], cell["N"], cell["coverage"]
        ids = torch.from_numpy(windows.prompt(i, n))
        key = (i, n)
        if key not in dense_cache:
            dense_cache.clear()  # cells come window by window: keep one entry, bounded memory
            dense_cache[key] = sequence_nll(loaded.model, ids, rule=None)[0].cpu()
        nll_d = dense_cache[key]
        rule, sparse_layers = sparse_rule(cell)
        nll_s, counts = sequence_nll(loaded.model, ids, rule=rule, layers=sparse_layers, backend=kernel)
        nll_s = nll_s.cpu()
        ppl_d, ppl_s = float(torch.exp(nll_d.mean())), float(torch.exp(nll_s.mean()))
        active = torch.from_numpy(sparse_active(n, rule))
        if bool(active.any()):
            dpa = (float(torch.exp(nll_s[active].mean() - nll_d[active].mean())) - 1.0) * 100.0
        else:
            dpa = None
        row = {
            "window_index": i, "window_start": windows.starts[i], "N": n, "coverage": float(c),
            "kernel": kernel, "k_min": plan.attention.k_min,
            "dispatch_threshold": plan.attention.dispatch_threshold, "n_tokens": n,
            "nll_sum_dense": float(nll_d.sum()), "nll_sum_sparse": float(nll_s.sum()),
            "ppl_dense": ppl_d, "ppl_sparse": ppl_s, "delta_ppl_pct": (ppl_s / ppl_d - 1.0) * 100.0,
            "sparse_rows": counts.sparse_rows, "dense_rows": counts.dense_rows,
            "delta_ppl_pct_sparse_active": dpa, "selection": rule.selection,
            "dense_layers": [layer for layer in range(n_layers) if layer not in sparse_layers],
        }
        if "arm" in cell:
            row["arm"] = cell["arm"]
        if cells_spec.per_position is not False:
            row["nll_dense"], row["nll_sparse"] = nll_d.tolist(), nll_s.tolist()
        return QUALITY.table([row])

    # Order cells window-major so the dense forward of a (window, N) is computed once.
    cells = sorted(expected_cells(plan, PRODUCER),
                   key=lambda c: (c["window_index"], c["N"], c["coverage"], c.get("arm", "")))
    return run_cells(producer=PRODUCER, producer_version=VERSION, locked=locked, cells=cells,
                     out_dir=Path(out_dir), compute=compute, model_info=model_info(loaded),
                     corpus_info=windows.info, rank=rank, world_size=world_size, progress=progress, where=where)

