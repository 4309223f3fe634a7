"""The cells a plan registers for each producer (torch-free; producers and the verdict engine
share it, so that the cell a producer writes is the cell the engine expects).

A cell is a flat JSON object of scalars; its key columns also appear, with the same values, in
every row of the cell's part file (see docs/measurements.md):

* quality:          {window_index, N, coverage}            windows x contexts x coverages
* random_spectrum:  {variant, seed, N}                     variants x seeds x contexts; the
                    "trained" variant does not depend on a seed: one cell per N with seed null
* causal:           {layer, head, prompt, N}               heads x prompts x contexts
* latency:          {level, N, B, coverage, session}       levels x contexts x batches x coverages x sessions
"""
from __future__ import annotations

import itertools
from typing import Any

CELL_KEYS: dict[str, tuple[str, ...]] = {
    "quality": ("window_index", "N", "coverage"),
    "random_spectrum": ("variant", "seed", "N"),
    "causal": ("layer", "head", "prompt", "N"),
    "latency": ("level", "N", "B", "coverage", "session"),
}


def expected_cells(plan: Any, producer: str) -> list[dict[str, Any]]:
    """The cells of ``producer`` registered in ``plan`` (a ``prereg.schema.Plan``), in a fixed
    order; [] when the plan registers no cells for it. Raises KeyError for an unknown producer."""
    keys = CELL_KEYS[producer]
    p = getattr(plan.producers, producer)
    if p is None:
        return []
    if producer == "quality":
        axes = [range(plan.windows.count), p.contexts, p.coverages]
    elif producer == "random_spectrum":
        return [dict(zip(keys, (v, None if v == "trained" else s, n)))
                for v in p.variants for s in ([None] if v == "trained" else p.seeds) for n in p.contexts]
    elif producer == "causal":
        heads = [tuple(h) for h in p.heads]
        return [dict(zip(keys, (l, h, pr, n))) for (l, h), pr, n
                in itertools.product(heads, range(p.prompts), p.contexts)]
    else:  # latency
        axes = [p.levels, p.contexts, p.batch_sizes, p.coverages, range(p.sessions)]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def cell_id(cell: dict[str, Any]) -> tuple:
    """Hashable identity of a cell (key order does not matter; 1 == 1.0 as in JSON)."""
    return tuple(sorted((k, float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                        for k, v in cell.items()))
