"""`dcr bench quality` on the CPU (hidden --dry-run-cpu: tiny random Llama, Triton interpreter).

Measures nothing meaningful; checks that the command runs end to end and that --no-sweep times one
kernel config where the sweep times every one.
"""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from producers.cli import bench_app


@pytest.mark.parametrize("sweep,n_configs", [("--sweep", 2), ("--no-sweep", 1)])
def test_bench_quality_dry_run_sweep_flag(tmp_path, monkeypatch, sweep, n_configs):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "q.json"
    res = CliRunner().invoke(bench_app, ["quality", "--dry-run-cpu", "--n", "96", "--repeats", "1", sweep,
                                         "--no-checksum", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["results"]
    assert [r["n"] for r in rows] == [96]
    assert len(rows[0]["kernel_sweep"]) == n_configs
    assert rows[0]["sparse_s"] > 0 and rows[0]["dense_s"] > 0
