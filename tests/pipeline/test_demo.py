"""`dcr demo` end to end on the CPU: lock → produce (3 producers) → verdict → report → verify.

The slowest test of the suite (~50 s on 2 cores): it is the README's first command, so CI proves it.
"""
from __future__ import annotations

import json

import pytest

from typer.testing import CliRunner

from dcr.cli import app
from dcr.prereg.measurements import expected_cells
from dcr.prereg.lock import load_locked
from dcr.reports.verify import verify_report


@pytest.mark.slow
def test_demo_runs_the_whole_study_and_its_report_verifies(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    html = out / "report" / "report.html"
    assert f"report: {html}" in res.output
    locked = load_locked(out / "demo.lock.yaml")
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["plan"]["sha256"] == locked.sha256
    # every registered cell was measured (none transcribed, none missing), on trained weights
    for producer, rep in verdict["cells"].items():
        assert rep["found"] == rep["expected"] == len(expected_cells(locked.plan, producer)) > 0
        assert not rep["missing"] and not rep["duplicated"] and not rep["unexpected"]
    assert verdict["data"]["files"] and all(not f["model"]["weights_random"] for f in verdict["data"]["files"])
    ids = {h.id for h in locked.plan.hypotheses}
    assert {h["id"] for h in verdict["hypotheses"]} == ids
    assert all(h["status"] == "decided" for h in verdict["hypotheses"]), [h["reason"] for h in verdict["hypotheses"]]
    assert verify_report(out / "report").ok
    # a second run resumes: nothing is recomputed, the verdict is the same
    res2 = CliRunner().invoke(app, ["demo", "--out", str(out), "--no-progress"])
    assert res2.exit_code == 0 and "0 cell(s) written" in res2.output
    again = json.loads((out / "verdict.json").read_text())
    assert [h["label"] for h in again["hypotheses"]] == [h["label"] for h in verdict["hypotheses"]]
