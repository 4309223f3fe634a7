"""examples/smollm2: the committed study of a real model re-computes from its plan and data.

The data ship as examples/smollm2/data.tar.gz (1.3 MB instead of 9 MB of small part files); the
test unpacks a copy and runs `dcr report verify` on the committed report, which re-computes every
number of the verdict, both renderings and the plots from the locked plan (version 2, amending
version 1) and the data.
"""
from __future__ import annotations

import shutil
import tarfile

import pytest
from plan_factory import ROOT
from typer.testing import CliRunner

from dcr.cli import app

EXAMPLE = ROOT / "examples" / "smollm2"


@pytest.mark.slow
def test_the_committed_report_reverifies_from_plan_and_data(tmp_path):
    copy = tmp_path / "smollm2"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("data", "pilot"))
    with tarfile.open(copy / "data.tar.gz") as tar:
        tar.extractall(copy, filter="data")
    runner = CliRunner()
    res = runner.invoke(app, ["prereg", "verify", str(copy / "smollm2-v2.yaml")])
    assert res.exit_code == 0, res.output
    assert "amends ← version 1" in res.output and "OK" in res.output
    res = runner.invoke(app, ["report", "verify", str(copy / "report")])
    assert res.exit_code == 0, res.output
    assert "re-computes from its plan and data" in res.output


def test_the_lock_of_version_1_names_the_registered_model_and_corpus():
    from dcr.prereg.lock import load_locked
    from dcr.producers.packaged_models import PACKAGED_MODELS

    plan = load_locked(EXAMPLE / "smollm2.lock.yaml").plan
    assert plan.model.source == "package" and plan.model.revision == PACKAGED_MODELS["smollm2-135m"].sha256
    assert plan.producers.quality.arms is not None and plan.windows.count == 16


def test_the_second_cpu_run_reproduces_the_first(tmp_path):
    """The README's reproduction table: run 2 of the CPU part (reproduction-cpu2.tar.gz) has every
    N = 1024 cell of run 1 (data.tar.gz) and the same figures within 0.1 ΔPPL percentage points."""
    import pyarrow.dataset as ds

    for name, into in (("data.tar.gz", tmp_path), ("reproduction-cpu2.tar.gz", tmp_path / "cpu2")):
        with tarfile.open(EXAMPLE / name) as tar:
            tar.extractall(into, filter="data")
    key = ["window_index", "N", "coverage", "arm"]
    run1 = ds.dataset(tmp_path / "data" / "quality").to_table().to_pandas()
    run1 = run1[run1.N == 1024]
    run2 = ds.dataset(tmp_path / "cpu2" / "quality").to_table().to_pandas()
    assert len(run1) == len(run2) == 144 and not run2.duplicated(key).any()
    m = run1.merge(run2, on=key, suffixes=("_1", "_2"))
    assert len(m) == 144
    diff = (m.delta_ppl_pct_2 - m.delta_ppl_pct_1).abs()
    assert diff.max() < 0.1 and (m.nll_sum_dense_2 - m.nll_sum_dense_1).abs().max() < 1e-3
