"""The lock-time cost guard (prereg/budget.py).

Independent references: the cost model of each resampling kind against the elements that
scipy.stats.bootstrap actually puts through the statistic (counted by wrapping it), on fresh data
from fixed seeds; the row model against plain counting of the registered grid. The guard itself
through `dcr prereg lock`: the issue's case (a row-level BCa bootstrap over about a million rows)
is refused with the estimate, and locks with an explicit, stated budget.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from dcr.cli import app
from dcr.prereg.budget import DEFAULT_OPERATIONS, estimate
from dcr.prereg.canonical import diff_plans, plan_sha256
from dcr.prereg.loading import dump_yaml, load_plan, plan_from_data, read_yaml
from dcr.prereg.lock import load_locked
from dcr.prereg.statistics import validate_params

REG = Path(__file__).resolve().parents[2] / "prereg" / "registrations"
runner = CliRunner()


@pytest.fixture
def counted(monkeypatch):
    """Wrap scipy.stats.bootstrap so that every element given to the statistic is counted."""
    seen = [0]
    original = stats.bootstrap

    def bootstrap(data, statistic, **kw):
        def counting(*arrays, axis=-1):
            seen[0] += sum(a.size for a in arrays)
            return statistic(*arrays, axis=axis)
        return original(data, counting, **kw)

    monkeypatch.setattr(stats, "bootstrap", bootstrap)
    return seen


BOOT = dict(statistic="mean", confidence_level=0.95, alternative="two-sided", random_seed=3,
            degenerate_fallback="percentile")


@pytest.mark.parametrize("kind,params,n", [
    ("bootstrap_ci", {**BOOT, "method": "BCa", "n_resamples": 1000, "cluster": None}, 300),
    ("bootstrap_ci", {**BOOT, "method": "percentile", "n_resamples": 2000, "cluster": None}, 500),
    ("bootstrap_ci", {**BOOT, "method": "BCa", "n_resamples": 1000, "cluster": "g"}, 600),
    ("bootstrap_ci", {**BOOT, "method": "basic", "n_resamples": 500, "cluster": "g"}, 400),
    ("ratio_of_medians", {"group_column": "arm", "numerator": "a", "denominator": "b", "method": "BCa",
                          "n_resamples": 1000, "confidence_level": 0.95, "random_seed": 3,
                          "degenerate_fallback": "percentile"}, 400),
])
def test_cost_model_counts_the_elements_scipy_resamples(kind, params, n, counted):
    rng = np.random.default_rng(n)
    x = rng.normal(5.0, 1.0, n)
    rows = pd.DataFrame({"g": rng.integers(0, 23, n), "arm": rng.choice(["a", "b"], n)})
    stat = validate_params(kind, params)
    stat.compute(x, rows, rows)
    cost = stat.cost(n, lambda column: rows[column].nunique())
    assert counted[0] > params["n_resamples"]
    assert counted[0] <= cost <= 1.05 * counted[0] + n, (cost, counted[0])


def test_hodges_lehmann_cost_is_the_number_of_walsh_averages():
    n = 57
    pairs = sum(1 for i in range(n) for j in range(i, n))
    stat = validate_params("hodges_lehmann", {"group_column": None, "group_a": None, "group_b": None})
    assert stat.cost(n, lambda c: n) == pairs


def _quality_plan(contexts: list[int], coverages: list[float], windows: int, select: dict, metric: str) -> dict:
    data, _ = read_yaml(REG / "demo.yaml")
    data["windows"] = {"placement": "disjoint", "count": windows, "start": 0, "offsets": None}
    data["producers"] = {"quality": {"contexts": contexts, "coverages": coverages, "layers": "all",
                                     "kernel": "reference"}}
    h = next(h for h in data["hypotheses"] if h["producer"] == "quality")
    h["select"], h["metric"], h["gates"] = select, metric, []
    data["hypotheses"], data["multiplicity"] = [h], []
    return data


@pytest.mark.parametrize("select,metric", [
    ({"N": 512, "coverage": 0.3}, "delta_ppl_pct"),
    ({"coverage": [0.15, 0.3]}, "delta_ppl_pct"),
    ({"N": [256, 1024], "kernel": "reference"}, "position.d_nll"),
    ({}, "position.nll_sparse"),
])
def test_rows_are_the_selected_cells_times_their_rows(select, metric):
    contexts, coverages, windows = [256, 512, 1024], [0.15, 0.3, 0.5], 7
    plan = plan_from_data(_quality_plan(contexts, coverages, windows, select, metric), "plan")

    def kept(key: str, value) -> bool:
        w = select.get(key, value)
        return value in w if isinstance(w, list) else value == w

    want = sum(n if metric.startswith("position.") else 1
               for _ in range(windows) for n in contexts for c in coverages if kept("N", n) and kept("coverage", c))
    assert {e.rows for e in estimate(plan)} == {want}


def _over_budget() -> dict:
    """The issue's registration: a row-level BCa bootstrap over every scored position of 32
    windows at N = 32,000 (1,024,000 rows)."""
    return _quality_plan([32000], [0.15], 32, {"N": 32000, "coverage": 0.15}, "position.d_nll")


def test_lock_refuses_a_registration_over_the_budget_and_names_the_estimate(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text(dump_yaml(_over_budget()), encoding="utf-8")
    res = runner.invoke(app, ["prereg", "lock", str(p)])
    assert res.exit_code == 2, res.output
    assert f"{p}: compute_budget: the registered statistics need an estimated" in res.stderr
    assert "1,024,000 rows" in res.stderr and "bootstrap_ci" in res.stderr
    assert f"more than the default budget of {DEFAULT_OPERATIONS:.2e}" in res.stderr
    assert res.stdout == "" and not (tmp_path / "big.lock.yaml").exists()


def test_an_explicit_budget_locks_and_is_hashed(tmp_path):
    data = _over_budget()
    total = sum(e.operations for e in estimate(plan_from_data(data, "plan")))
    assert total > 100 * DEFAULT_OPERATIONS
    data["compute_budget"] = {"operations": total - 1, "reason": "a cluster node has the time"}
    p = tmp_path / "big.yaml"
    p.write_text(dump_yaml(data), encoding="utf-8")
    res = runner.invoke(app, ["prereg", "lock", str(p)])
    assert res.exit_code == 2 and "more than its compute_budget" in res.stderr
    data["compute_budget"]["operations"] = total
    p.write_text(dump_yaml(data), encoding="utf-8")
    res = runner.invoke(app, ["prereg", "lock", str(p)])
    assert res.exit_code == 0, res.output
    locked = load_locked(tmp_path / "big.lock.yaml")
    assert locked.plan.compute_budget.operations == total
    unset = plan_from_data({k: v for k, v in data.items() if k != "compute_budget"}, "plan")
    assert [c["path"] for c in diff_plans(unset, locked.plan)] == ["compute_budget"]


@pytest.mark.parametrize("name", sorted(p.name for p in REG.glob("*.yaml") if not p.name.endswith(".lock.yaml")))
def test_shipped_plans_are_within_the_budget_and_an_unset_budget_is_not_hashed(name):
    plan = load_plan(REG / name)
    assert sum(e.operations for e in estimate(plan)) <= DEFAULT_OPERATIONS
    data, _ = read_yaml(REG / name)
    assert plan_sha256(plan_from_data({**data, "compute_budget": None}, "plan")) == plan_sha256(plan)
    lock = REG / name.replace(".yaml", ".lock.yaml")
    if lock.exists():
        assert load_locked(lock, check_chain=False).sha256 == plan_sha256(plan)
