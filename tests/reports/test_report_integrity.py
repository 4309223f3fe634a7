"""Reports render only verified verdicts, escape whatever text reaches them, and show a stated
compute budget.

`dcr report` re-computes the verdict from the plan and the data (the checks of `dcr report verify`)
and refuses, exit 1, naming the field, any edit of any value of the verdict JSON (edited leaves
drawn by a seeded generator from the whole verdict); untouched verdicts render and verify, the
seed-v3 example's through the CLI too.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from plan_factory import locked_toy_study, set_field
from typer.testing import CliRunner

from dcr.analysis.engine import compute_verdict, verdict_json
from dcr.cli import app
from dcr.prereg.budget import DEFAULT_OPERATIONS, estimate
from dcr.prereg.loading import UNSAFE_TEXT
from dcr.prereg.lock import load_locked
from dcr.reports import render as R
from dcr.reports.verify import VOLATILE, verify_report

runner = CliRunner()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("integrity")
    lock, data = locked_toy_study(d, seed=23)
    verdict = compute_verdict(lock, data)
    path = d / "verdict.json"
    path.write_text(verdict_json(verdict), encoding="utf-8")
    return {"dir": d, "lock": lock, "data": data, "verdict": verdict, "path": path}


def _leaves(v, path="$"):
    """(JSON path as report verify writes it, value) of every leaf of a verdict."""
    if isinstance(v, dict):
        for k in sorted(v):
            if k not in VOLATILE and not (path == "$" and k == "libraries"):
                yield from _leaves(v[k], f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _leaves(x, f"{path}[{i}]")
    else:
        yield path, v


def _set_leaf(v: dict, path: str, value) -> None:
    keys = re.findall(r"\.([^.\[]+)|\[(\d+)\]", path)
    for name, index in keys[:-1]:
        v = v[name] if name else v[int(index)]
    name, index = keys[-1]
    v[name if name else int(index)] = value


def _edited(value):
    """A value that no tolerance takes for ``value``, of the same JSON type where there is one."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 + abs(value)
    if isinstance(value, str):
        return value + "x"
    return "edited"


def test_render_refuses_a_verdict_with_any_edited_value(study, tmp_path):
    leaves = list(_leaves(json.loads(study["path"].read_text())))
    assert len(leaves) > 60
    rng = np.random.default_rng(19)
    for i in rng.choice(len(leaves), size=24, replace=False):
        path, value = leaves[i]
        v = json.loads(study["path"].read_text())
        _set_leaf(v, path, _edited(value))
        forged = tmp_path / f"forged-{i}.json"
        forged.write_text(json.dumps(v))
        out = tmp_path / f"r{i}"
        res = runner.invoke(app, ["report", "--verdict", str(forged), "--plan", str(study["lock"]),
                                  "--data", str(study["data"]), "--out", str(out)])
        named = (f"at {path}:" in res.output or (path == "$.plan.sha256" and "plan hash:" in res.output)
                 or (path.endswith(".sha256") and "data file altered" in res.output)
                 or (path.endswith(".path") and "data file missing" in res.output))
        assert res.exit_code == 1 and named and "refusing to render it" in res.output, (path, res.output)
        assert not out.exists()


def test_untouched_verdict_renders_through_the_cli_and_verifies(study, tmp_path):
    out = tmp_path / "report"
    res = runner.invoke(app, ["report", "--verdict", str(study["path"]), "--plan", str(study["lock"]),
                              "--data", str(study["data"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["report", "verify", str(out)]).exit_code == 0


def test_seed_v3_example_reports_render_verified_and_verify(tmp_path):
    res = runner.invoke(app, ["example", "seed-v3", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    reports = sorted((tmp_path / "reports").iterdir())
    assert len(reports) == 6
    for rep in reports:
        res = runner.invoke(app, ["report", "verify", str(rep)])
        assert res.exit_code == 0, res.output
        again = tmp_path / "again" / rep.name
        res = runner.invoke(app, ["report", "--verdict", str(tmp_path / f"{rep.name}.verdict.json"),
                                  "--plan", str(tmp_path / "plans" / f"{rep.name}.lock.yaml"),
                                  "--data", str(tmp_path / "data" / rep.name), "--out", str(again)])
        assert res.exit_code == 0, res.output
        assert (again / R.MD_NAME).read_text() == (rep / R.MD_NAME).read_text()


UNSAFE = "\x00\x1b\r\x7f\x85\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_reports_show_control_and_bidi_characters_as_escapes(study, tmp_path):
    """The plan check refuses such text; a verdict that carries it anyway (hand-made, or data
    values) renders it escaped in both reports."""
    v = json.loads(study["path"].read_text())
    rng = np.random.default_rng(7)
    chars = list(UNSAFE)
    rng.shuffle(chars)
    h = v["hypotheses"][0]
    h["statement"] = "small" + "".join(chars)
    h["reason"] = "rule " + chars[0] + "fired"
    h["label"] = "STR" + chars[1] + "ICT"
    v["plan"]["title"] = "title" + chars[2]
    md, html, _ = R.render_all(v, R.make_provenance(tmp_path, None, None), None)
    for text in (md, html):
        assert UNSAFE_TEXT.search(text) is None
        assert "\\u202e" in text and "\\u0000" in text


def test_report_shows_a_stated_compute_budget(tmp_path):
    budget = {"operations": 10**6, "reason": "kept small on purpose: a laptop"}
    lock, data = locked_toy_study(tmp_path, set_field("compute_budget", budget), seed=29)
    plan = load_locked(lock).plan
    verdict = compute_verdict(lock, data)
    assert verdict["plan"]["compute_budget"] == {**budget, "default_operations": DEFAULT_OPERATIONS,
                                                 "estimated_operations": sum(e.operations for e in estimate(plan))}
    vpath = tmp_path / "v.json"
    vpath.write_text(verdict_json(verdict))
    res = runner.invoke(app, ["report", "--verdict", str(vpath), "--plan", str(lock), "--data", str(data),
                              "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / R.MD_NAME).read_text()
    assert (f"| compute budget | 1000000 element operations registered (the default is {DEFAULT_OPERATIONS}; "
            f"the statistics need an estimated {verdict['plan']['compute_budget']['estimated_operations']}): "
            f"{budget['reason']} |") in md
    assert "<th>compute budget</th><td>1000000 element operations" in (tmp_path / "rep" / R.HTML_NAME).read_text()
    assert verify_report(tmp_path / "rep").ok


def test_report_without_a_stated_budget_has_no_budget_row(study, tmp_path):
    assert "compute_budget" not in study["verdict"]["plan"]
    md, html, _ = R.render_all(study["verdict"], R.make_provenance(tmp_path, None, None), None)
    assert "compute budget" not in md and "compute budget" not in html
