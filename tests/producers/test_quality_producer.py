"""`dcr produce quality` end to end on the shipped reference model (CPU, small contexts).

Independent references: the dense arm against transformers' own eager model with the NLL taken
in float64 from its logits; the sparse arm against step-by-step decode through the decode
reference; c = 1 against dense. Also: resume, torchrun-style sharding, refusal of altered locks.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
import yaml
from plan_factory import locked_demo_quality_plan
from typer.testing import CliRunner

from dcr.cli import app
from dcr.producers.quality import produce_quality, sparse_active
from dcr.producers.reference_model import heldout_text_path, reference_model_dir

CONTEXTS = [48, 80]
COVERAGES = [0.25, 1.0]


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    d = tmp_path_factory.mktemp("quality")
    lock = locked_demo_quality_plan(d, study_id="quality-producer-test", contexts=CONTEXTS, coverages=COVERAGES)
    out = d / "data"
    summary = produce_quality(lock, out, device="cpu", progress=False)
    return lock, out, summary


def _table(out):
    return ds.dataset(out / "quality").to_table().to_pandas().sort_values(["window_index", "N", "coverage"])


def test_all_cells_written_once(locked):
    _, out, summary = locked
    df = _table(out)
    assert summary.total == 3 * len(CONTEXTS) * len(COVERAGES) == len(df) == len(summary.written)
    assert not df.duplicated(["window_index", "N", "coverage"]).any()
    # stored summaries agree with the stored per-position NLLs
    for _, r in df.iterrows():
        assert len(r.nll_dense) == len(r.nll_sparse) == r.N == r.n_tokens
        assert math.isclose(r.ppl_dense, math.exp(np.mean(r.nll_dense)), rel_tol=1e-12)
        assert math.isclose(r.delta_ppl_pct, (r.ppl_sparse / r.ppl_dense - 1) * 100, rel_tol=1e-9, abs_tol=1e-12)
        assert r.sparse_rows + r.dense_rows == r.N * 6 * 8  # positions x layers x query heads


def test_dense_arm_matches_transformers_eager(locked):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out, _ = locked
    r = _table(out).iloc[-1]
    d = reference_model_dir()
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(d)
    ids = torch.tensor(tok(heldout_text_path().read_text(), add_special_tokens=False)["input_ids"])
    w = ids[r.window_start:r.window_start + r.N + 1]
    with torch.no_grad():
        logits = model(w[None, :-1]).logits[0].double()
    nll = -torch.log_softmax(logits, -1).gather(-1, w[1:, None]).squeeze(-1)
    np.testing.assert_allclose(r.nll_dense, nll.numpy(), rtol=1e-4, atol=1e-4)


def test_full_coverage_equals_dense(locked):
    df = _table(locked[1])
    full = df[df.coverage == 1.0]
    for _, r in full.iterrows():
        np.testing.assert_allclose(r.nll_sparse, r.nll_dense, rtol=1e-5, atol=1e-5)


def test_sparse_arm_matches_step_by_step_decode(locked):
    from dcr.producers.attention import sequence_nll_decode
    from dcr.producers.models import load_model
    from dcr.prereg.lock import load_locked
    from dcr.prereg.rule import TopKRule

    lock, out, _ = locked
    r = _table(out).query("N == 48 and coverage == 0.25").iloc[1]
    plan = load_locked(lock).plan
    loaded = load_model(str(reference_model_dir()), dtype="fp32", device="cpu")
    ids = torch.tensor(loaded.tokenizer(heldout_text_path().read_text(), add_special_tokens=False)["input_ids"])
    w = ids[r.window_start:r.window_start + r.N + 1]
    nll, _ = sequence_nll_decode(loaded.model, w, rule=TopKRule.from_plan(plan.attention, 0.25))
    np.testing.assert_allclose(r.nll_sparse, nll.numpy(), rtol=1e-4, atol=1e-4)
    assert r.delta_ppl_pct != 0.0  # c = 0.25 really drops keys at N = 48 with k_min 8


def test_sparse_active_positions():
    from dcr.prereg.rule import TopKRule

    rule = TopKRule("0.25", k_min=8, dispatch_threshold=8)
    act = sparse_active(48, rule)
    # position i sees t = i + 1 keys; active iff max(8, floor(t/4)) < t, i.e. t >= 9
    assert act.tolist() == [t >= 9 for t in range(1, 49)]


def test_resume_and_shards_complete_exactly_the_missing_cells(locked, tmp_path):
    lock, out, _ = locked
    again = produce_quality(lock, out, device="cpu", progress=False)
    assert again.written == [] and again.skipped == again.total
    shard_out = tmp_path / "sharded"
    a = produce_quality(lock, shard_out, device="cpu", progress=False, rank=0, world_size=2)
    b = produce_quality(lock, shard_out, device="cpu", progress=False, rank=1, world_size=2)
    assert set(a.shard).isdisjoint(b.shard) and len(a.written) + len(b.written) == a.total
    one, two = _table(out), _table(shard_out)
    for col in ["window_index", "N", "coverage", "nll_sum_dense", "nll_sum_sparse", "delta_ppl_pct"]:
        np.testing.assert_array_equal(one[col].to_numpy(), two[col].to_numpy())


@pytest.mark.parametrize("select,metric", [({"N": 80}, "delta_ppl_pct"), ({"coverage": 0.25}, "position.d_nll"),
                                           ({}, "position.nll_dense")])
def test_budget_row_model_counts_the_rows_of_the_part_files(locked, select, metric):
    """prereg.budget's rows for a hypothesis equal the rows (or, for a position. metric, the stored
    per-position NLLs) of the part files this producer wrote for the cells it selects."""
    from dcr.prereg.budget import estimate
    from dcr.prereg.lock import load_locked

    lock, out, _ = locked
    plan = load_locked(lock).plan
    h = plan.hypotheses[0].model_copy(update={"select": select, "metric": metric})
    df = _table(out)
    for col, want in select.items():
        df = df[df[col] == want]
    stored = int(df.nll_dense.map(len).sum()) if metric.startswith("position.") else len(df)
    assert {e.rows for e in estimate(plan.model_copy(update={"hypotheses": [h]}))} == {stored}


def test_cli_refuses_unlocked_and_altered_plans(locked, tmp_path):
    lock, _, _ = locked
    runner = CliRunner()
    plain = lock.with_name("plan.yaml")
    res = runner.invoke(app, ["produce", "quality", "--plan", str(plain), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and not (tmp_path / "o").exists()
    altered = tmp_path / "altered.lock.yaml"
    altered.write_text(lock.read_text().replace("      - 0.25\n", "      - 0.5\n", 1))
    assert altered.read_text() != lock.read_text()
    res = runner.invoke(app, ["produce", "quality", "--plan", str(altered), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and not (tmp_path / "o").exists()


ARMS = [{"id": "qh", "selection": "query_head", "dense_layers": []},
        {"id": "kvg", "selection": "kv_group", "dense_layers": []},
        {"id": "qh_dense01", "selection": "query_head", "dense_layers": [0, 1]}]


def test_arms_run_their_own_rule_and_where_runs_a_subset(tmp_path):
    """Each arm is its own cell: its selection and dense layers, recorded in the row. Independent
    reference: step-by-step decode through the decode reference with the arm's rule in its sparse
    layers only (the kv_group arm and the dense-layers arm). `--where` runs a subset; a second run
    completes exactly the rest."""
    from dcr.producers.attention import sequence_nll_decode
    from dcr.producers.models import load_model
    from dcr.prereg.lock import load_locked
    from dcr.prereg.measurements import expected_cells
    from dcr.prereg.rule import TopKRule

    lock = locked_demo_quality_plan(tmp_path, study_id="quality-arms-test", contexts=[40], coverages=[0.25],
                                    arms=ARMS, kernel="auto", per_position=True)
    plan = load_locked(lock).plan
    cells = expected_cells(plan, "quality")
    assert len(cells) == 3 * 3 and {c["arm"] for c in cells} == {"qh", "kvg", "qh_dense01"}
    out = tmp_path / "data"
    runner = CliRunner()
    res = runner.invoke(app, ["produce", "quality", "--plan", str(lock), "--out", str(out), "--device", "cpu",
                              "--no-progress", "--where", "arm=kvg,qh_dense01", "--where", "window_index=1"])
    assert res.exit_code == 0, res.output
    first = ds.dataset(out / "quality").to_table().to_pandas()
    assert sorted(first.arm) == ["kvg", "qh_dense01"] and set(first.window_index) == {1}
    res = runner.invoke(app, ["produce", "quality", "--plan", str(lock), "--out", str(out), "--device", "cpu",
                              "--no-progress", "--where", "arm=nope"])
    assert res.exit_code == 2 and "no cell has arm in ['nope']" in res.output
    res = runner.invoke(app, ["produce", "quality", "--plan", str(lock), "--out", str(out), "--device", "cpu",
                              "--no-progress", "--where", "bogus"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    summary = produce_quality(lock, out, device="cpu", progress=False)
    assert len(summary.written) == 7 and summary.skipped == 2
    df = ds.dataset(out / "quality").to_table().to_pandas()
    assert len(df) == 9 and not df.duplicated(["window_index", "arm"]).any()
    assert set(df.kernel) == {"reference"}  # kernel auto on the CPU
    for arm in ARMS:
        rows = df[df.arm == arm["id"]]
        assert set(rows.selection) == {arm["selection"]}
        assert all(list(d) == arm["dense_layers"] for d in rows.dense_layers)
    loaded = load_model(str(reference_model_dir()), dtype="fp32", device="cpu")
    ids = torch.tensor(loaded.tokenizer(heldout_text_path().read_text(), add_special_tokens=False)["input_ids"])
    a = plan.attention
    for arm_id, selection, sparse in (("kvg", "kv_group", range(6)), ("qh_dense01", "query_head", range(2, 6))):
        r = df[(df.arm == arm_id) & (df.window_index == 2)].iloc[0]
        w = ids[r.window_start:r.window_start + r.N + 1]
        rule = TopKRule("0.25", k_min=a.k_min, dispatch_threshold=a.dispatch_threshold, selection=selection)
        nll, _ = sequence_nll_decode(loaded.model, w, rule=rule, layers=list(sparse))
        np.testing.assert_allclose(r.nll_sparse, nll.numpy(), rtol=1e-4, atol=1e-4)
    by_arm = {k: df[(df.arm == k) & (df.window_index == 2)].iloc[0].nll_sparse for k in ("qh", "kvg", "qh_dense01")}
    assert not np.allclose(by_arm["qh"], by_arm["kvg"]) and not np.allclose(by_arm["qh"], by_arm["qh_dense01"])


def test_arms_need_layers_all_and_unique_ids(tmp_path):
    from dcr.prereg.loading import PlanError

    with pytest.raises(PlanError, match="duplicate arm ids"):
        locked_demo_quality_plan(tmp_path, study_id="x", contexts=[40], coverages=[0.25],
                                 arms=[{**ARMS[0], "dense_layers": []}, {**ARMS[0], "dense_layers": []}])
    with pytest.raises(PlanError, match="dense_layers repeat"):
        locked_demo_quality_plan(tmp_path, study_id="x", contexts=[40], coverages=[0.25],
                                 arms=[{**ARMS[0], "dense_layers": [1, 1]}])


def test_per_position_false_leaves_the_lists_out(tmp_path):
    from dcr.prereg.loading import PlanError

    lock = locked_demo_quality_plan(tmp_path, study_id="quality-no-positions", contexts=[24], coverages=[0.5],
                                    per_position=False)
    produce_quality(lock, tmp_path / "data", device="cpu", progress=False, where={"window_index": ["0"]})
    df = ds.dataset(tmp_path / "data" / "quality").to_table().to_pandas()
    assert len(df) == 1 and df.nll_dense.isna().all() and df.nll_sparse.isna().all()
    assert df.delta_ppl_pct.notna().all()
    plan = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    plan["hypotheses"][0]["metric"] = "position.d_nll"
    (tmp_path / "p2").mkdir()
    (tmp_path / "p2" / "plan.yaml").write_text(yaml.safe_dump(plan))
    from dcr.prereg.lock import lock_plan

    with pytest.raises(PlanError, match="per_position is false"):
        lock_plan(tmp_path / "p2" / "plan.yaml")
