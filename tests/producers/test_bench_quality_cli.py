"""`dcr bench quality` on the CPU (hidden --dry-run-cpu: tiny random Llama, Triton interpreter).

Measures nothing meaningful; checks that the command runs end to end and that --no-sweep times one
kernel config where the sweep times every one.
"""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dcr.producers.cli import bench_app


@pytest.mark.parametrize("sweep,n_configs", [("--sweep", 2), ("--no-sweep", 1)])
@pytest.mark.slow
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


def test_keys_weighted_passes_against_a_direct_sum():
    import torch

    from dcr.producers.bench_quality import keys_weighted_passes

    gen = torch.Generator().manual_seed(4)
    n, block_m = 200, 64  # programs cover rows 0-63, 64-127, 128-191, 192-199: keys 64, 128, 192, 200
    passes = torch.randint(0, 9, (3, 4), generator=gen, dtype=torch.int32)
    keys = [64, 128, 192, 200]
    direct = sum(int(passes[i, m]) * keys[m] for i in range(3) for m in range(4)) / (3 * sum(keys))
    assert keys_weighted_passes(passes, block_m, n) == pytest.approx(direct, rel=1e-12)
    # long rows weigh more: 1 pass in the first program, 5 in the last
    assert keys_weighted_passes(torch.tensor([[1, 5]]), 64, 128) == pytest.approx((64 + 5 * 128) / 192)


def test_bench_decode_rejects_a_malformed_config():
    """`dcr bench decode --config` wants KEY=INTEGER; checked before anything needs a GPU."""
    res = CliRunner().invoke(bench_app, ["decode", "--config", "chunk"])
    assert res.exit_code == 2
    assert "KEY=INTEGER" in res.output


def test_resolve_configs_puts_the_rules_caps_first_and_drops_repeats(monkeypatch):
    from dcr.producers import bench_quality
    from dcr.producers.kernels import teacher_forced

    monkeypatch.setitem(teacher_forced.MAXNREG, "query_head", (128, 168))
    monkeypatch.setitem(teacher_forced.MAXNREG, "kv_group", (168, None))
    tile = (64, 64, 4, 2, 32)
    configs = [tile + ("auto", "auto"), tile + (128, "auto"), tile + (168, "auto"), tile + ("auto", 168),
               tile + ("auto", None)]
    assert bench_quality.resolve_configs(configs, "query_head") == [tile + (128, 168), tile + (168, 168),
                                                                     tile + (128, None)]
    assert bench_quality.resolve_configs(configs, "kv_group") == [tile + (168, None), tile + (128, None),
                                                                   tile + (168, 168)]
    assert bench_quality.resolve_configs(bench_quality.CONFIGS, "kv_group")[0] == (
        bench_quality.CONFIGS[0][:5] + teacher_forced.MAXNREG["kv_group"])  # --no-sweep: the rule's default
