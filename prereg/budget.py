"""The lock-time cost guard: the work the registered statistics will need, against a budget.

The work of each statistic is estimated from the plan alone, in element operations: the rows its
hypothesis selects (the producer's registered cells whose cell keys match ``select``, times the
rows a cell yields, :func:`prereg.measurements.rows_per_cell`; ``select`` on other columns is not
counted) put through the kind's cost model (``Statistic.cost`` in :mod:`prereg.statistics`:
n_resamples × rows for a bootstrap, plus rows² for the BCa jackknife, rows²/2 for
Hodges-Lehmann, rows otherwise). ``dcr prereg lock`` and ``amend`` refuse a plan whose total
exceeds the budget: :data:`DEFAULT_OPERATIONS`, or the plan's explicit ``compute_budget``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dcr.prereg.measurements import cell_selected, expected_cells, rows_per_cell
from dcr.prereg.schema import Hypothesis, Plan
from dcr.prereg.statistics import validate_params

# About 2 to 6 minutes of one CPU core: a vectorised scipy bootstrap does 3e7 to 1.4e8 element
# operations per second (measured on this project's 2-core CPU machine).
DEFAULT_OPERATIONS = 10**10
SHOWN = 3  # the largest estimates a refusal names


@dataclass(frozen=True)
class StatisticCost:
    """The estimated work of one registered statistic."""

    where: str  # "hypotheses[0].statistics[1] (hypothesis H, statistic boot, bootstrap_ci)"
    rows: int  # rows its hypothesis selects
    operations: int


def selected_cells(plan: Plan, h: Hypothesis) -> list[dict[str, Any]]:
    """The registered cells of ``h``'s producer that its ``select`` keeps (cell-key filters only)."""
    return [c for c in expected_cells(plan, h.producer) if cell_selected(c, h.select)]


def _distinct_in(cells: list[dict[str, Any]], n: int) -> Callable[[str], int]:
    """``distinct(column)`` over the rows of ``cells``: counted for a cell key, else ``n`` (at most)."""
    return lambda column: len({c[column] for c in cells}) if column in (cells[0] if cells else {}) else n


def estimate(plan: Plan) -> list[StatisticCost]:
    """The estimated work of every registered statistic, in plan order."""
    out = []
    for i, h in enumerate(plan.hypotheses):
        cells = selected_cells(plan, h)
        n = sum(rows_per_cell(plan, h.producer, c, h.metric) for c in cells)
        for j, spec in enumerate(h.statistics):
            ops = validate_params(spec.kind, spec.params).cost(n, _distinct_in(cells, n))
            out.append(StatisticCost(f"hypotheses[{i}].statistics[{j}] (hypothesis {h.id}, statistic {spec.id}, "
                                     f"{spec.kind})", n, ops))
    return out


def operations_budget(plan: Plan) -> int:
    """The operations the plan may need: its ``compute_budget`` when it states one, else the default."""
    return plan.compute_budget.operations if plan.compute_budget is not None else DEFAULT_OPERATIONS


def budget_problem(plan: Plan) -> str | None:
    """Why the plan's statistics exceed its budget, with the estimate and its largest parts (None if
    they do not)."""
    costs = estimate(plan)
    total, limit = sum(c.operations for c in costs), operations_budget(plan)
    if total <= limit:
        return None
    largest = sorted(costs, key=lambda c: -c.operations)[:SHOWN]
    parts = "; ".join(f"{c.where} over {c.rows:,} rows: {c.operations:.2e}" for c in largest)
    source = "its compute_budget" if plan.compute_budget is not None else "the default budget"
    return (f"the registered statistics need an estimated {total:.2e} element operations, more than "
            f"{source} of {limit:.2e} (largest: {parts}). Register fewer rows or resamples, or state the "
            "budget and why: compute_budget: {operations: N, reason: \"...\"} (reports show it)")
