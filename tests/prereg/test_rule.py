"""The attention rule (dcr.prereg.rule): k_eff against a brute force in exact rationals, the same
answer for ints, numpy arrays and torch tensors, and the checks of coverage, k_min, threshold and
selection (shared with the plan schema)."""
from __future__ import annotations

import math
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from dcr.prereg.rule import SELECTIONS, TopKRule, coverage_k, parse_coverage
from dcr.prereg.schema import CausalCells, QualityCells

REGISTRATIONS = Path(__file__).resolve().parents[2] / "prereg" / "registrations"


def brute_k_eff(coverage: str, t: int, k_min: int, threshold: int) -> int:
    """k_eff from its definition, with Fraction parsing the decimal string itself."""
    if t < threshold:
        return t
    return min(t, max(k_min, math.floor(Fraction(coverage) * t)))


def _coverages(rng: random.Random, n: int) -> list[str]:
    """Decimal strings in (0, 1] with 1 to 6 digits, and the edge cases."""
    out = ["1", "1.0", "0.5", "0.15", "0.29", "0.07", "0.3", "0.333333", "0.000001"]
    for _ in range(n):
        digits = rng.randint(1, 6)
        out.append(f"{rng.randint(1, 10**digits) / 10**digits:.{digits}f}")
    return out


def test_k_eff_against_brute_force():
    rng = random.Random(20261201)
    for c in _coverages(rng, 60):
        for _ in range(5):
            k_min, thr = rng.randint(1, 300), rng.choice([0, 1, rng.randint(2, 500)])
            rule = TopKRule(c, k_min, thr)
            ts = [0, 1, 2, thr - 1, thr, thr + 1, k_min - 1, k_min, k_min + 1] + [rng.randint(0, 10**6) for _ in range(40)]
            for t in (t for t in ts if t >= 0):
                assert rule.k_eff(t) == brute_k_eff(c, t, k_min, thr), (c, k_min, thr, t)


def test_ints_numpy_and_torch_agree():
    rng = random.Random(7)
    t_list = list(range(0, 3000)) + [rng.randint(0, 2**24) for _ in range(500)]
    for c in _coverages(rng, 10):
        rule = TopKRule(c, rng.randint(1, 100), rng.randint(0, 200))
        want = [rule.k_eff(t) for t in t_list]
        for t in (np.array(t_list, dtype=np.int32), np.array(t_list, dtype=np.int64),
                  torch.tensor(t_list, dtype=torch.int32), torch.tensor(t_list, dtype=torch.int64)):
            got = rule.k_eff(t)
            assert type(got) is type(t) and str(got.dtype).endswith("int64")
            assert got.tolist() == want, (c, t.dtype)
        square = np.array(t_list[:900], dtype=np.int64).reshape(30, 30)
        assert rule.k_eff(square).shape == (30, 30)
        assert rule.k_eff(torch.from_numpy(square)).tolist() == rule.k_eff(square).tolist()
        assert rule.k_eff(np.int64(1234)) == rule.k_eff(1234) and isinstance(rule.k_eff(np.int64(1234)), int)


@pytest.mark.parametrize("coverage", [0.29, 0.57])
def test_float_products_below_the_integer_are_not_floored_down(coverage):
    """The float product c*t lands just below an integer for some t (0.29 * 100 = 28.999999999999996):
    the rule, and coverage_k, give the exact floor there."""
    exact = Fraction(str(coverage))
    below = [t for t in range(1, 5000) if math.floor(coverage * t) < math.floor(exact * t)]
    assert below, "no t where the float product lands below: the test would check nothing"
    rule = TopKRule(coverage, 1, 0)
    for t in below:
        assert rule.k_eff(t) == coverage_k(coverage, t) == math.floor(exact * t) >= 1
    t = np.array(below)
    assert rule.k_eff(t).tolist() == [math.floor(exact * x) for x in below]
    assert coverage_k(coverage, torch.tensor(below)).tolist() == [math.floor(exact * x) for x in below]


def test_parse_coverage():
    assert parse_coverage("0.15") == parse_coverage(0.15) == parse_coverage(Fraction(3, 20)) == Fraction(3, 20)
    assert parse_coverage(1) == parse_coverage("1.0") == 1
    for bad, why in (("0", r"in \(0, 1\]"), ("1.5", r"in \(0, 1\]"), (-0.1, r"in \(0, 1\]"), (Fraction(0), r"in \(0, 1\]"),
                     ("abc", "decimal number"), (True, "decimal number"), (float("nan"), "decimal number"),
                     (float("inf"), "decimal number"), (None, "decimal number")):
        with pytest.raises(ValueError, match=f"coverage must be .*{why}"):
            parse_coverage(bad)


def test_rule_checks_its_fields():
    rule = TopKRule("0.15", 4.0, 0, "kv_group")
    assert rule.k_min == 4 and isinstance(rule.k_min, int) and rule.coverage_fraction == Fraction(3, 20)
    assert rule == TopKRule("0.15", 4, 0, "kv_group") and SELECTIONS == ("query_head", "kv_group")
    for kwargs, match in ((dict(coverage="1.25"), "coverage"), (dict(k_min=0), "k_min must be an integer >= 1"),
                          (dict(k_min=2.5), "k_min"), (dict(k_min=True), "k_min"),
                          (dict(dispatch_threshold=-1), "dispatch_threshold must be an integer >= 0"),
                          (dict(dispatch_threshold=float("inf")), "dispatch_threshold"),
                          (dict(selection="per_head"), "selection must be 'query_head' or 'kv_group'")):
        with pytest.raises(ValueError, match=match):
            TopKRule(**{**dict(coverage="0.15", k_min=4, dispatch_threshold=0), **kwargs})
    with pytest.raises(ValueError, match="integer numpy array or torch tensor"):
        rule.k_eff(np.array([1.0, 2.0]))


def test_from_plan_takes_the_attention_section():
    from dcr.prereg.loading import load_plan

    plans = sorted(p for p in REGISTRATIONS.glob("*.yaml") if not p.name.endswith(".lock.yaml"))
    assert len(plans) >= 5
    for path in plans:
        plan = load_plan(path)
        a = plan.attention
        rule = TopKRule.from_plan(a, 0.15)
        assert (rule.k_min, rule.dispatch_threshold, rule.selection) == (a.k_min, a.dispatch_threshold, a.selection)
        assert rule.coverage_fraction == Fraction(3, 20)


def test_schema_checks_coverage_through_the_rule():
    cells = dict(contexts=[8], layers="all", kernel="reference")
    assert QualityCells(coverages=[0.29, 1], **cells).coverages == [0.29, 1.0]
    for bad in (0, 0.0, 1.5, -0.2):
        with pytest.raises(pydantic.ValidationError, match=r"coverage must be in \(0, 1\]"):
            QualityCells(coverages=[bad], **cells)
    with pytest.raises(pydantic.ValidationError, match="gap_coverage"):
        CausalCells(heads=[[0, 0]], prompts=1, contexts=[8], delta_target=0.1, pilot_targets=[],
                    line_search={"tolerance": 0.01, "max_iterations": 5}, finite_difference_eps=1e-3,
                    gap_coverage=2.0, seed=0)


def test_the_rule_imports_neither_torch_nor_numpy():
    code = "import sys, dcr.prereg.rule, dcr.prereg.schema; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
