"""The verdict engine end to end on small synthetic measurement folders: decision tables, gates,
INSUFFICIENT_DATA, hash mismatch, corrupt/truncated/wrong-schema files, cell reports,
non-finite handling, multiplicity, determinism and the CLI."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from dcr.analysis.engine import compute_verdict, verdict_json
from dcr.analysis.loading import MeasurementError, PreregMismatchError
from dcr.prereg.loading import dump_yaml, load_plan
from dcr.prereg.lock import lock_plan
from dcr.prereg.measurements import expected_cells, part_path, write_part

TIERS = {"rules": [{"label": "STRICT", "when": [{"stat": "d.mean", "op": "<=", "value": 0.5}]},
                   {"label": "STANDARD", "when": [{"stat": "d.mean", "op": "<=", "value": 1.0}]}],
         "fallback": "UNUSABLE"}


def hyp(hid="tier", statistics=None, gates=(), decision=None, select=None, metric="delta_ppl_pct",
        nonfinite="error", family=None):
    return {"id": hid, "statement": "test hypothesis", "producer": "quality",
            "select": {"N": 64} if select is None else select, "metric": metric, "nonfinite": nonfinite,
            "statistics": statistics or [{"id": "d", "kind": "describe", "params": {"ddof": 1}}],
            "gates": list(gates), "decision": decision or TIERS, "family": family}


def plan_data(hypotheses, windows=4, multiplicity=()):
    return {
        "schema_version": 1,
        "study": {"id": "engine-test", "version": 1, "title": "t", "authors": ["a"], "description": ""},
        "amends": None,
        "model": {"source": "preset", "id": "tiny", "revision": None, "dtype": "float32", "preset_seed": 1},
        "corpus": {"name": "c", "source": "shipped", "split": None, "path": None, "sha256": None},
        "windows": {"placement": "disjoint", "count": windows, "start": 0, "offsets": None},
        "attention": {"k_min": 4, "dispatch_threshold": 0, "selection": "query_head", "tie_rule": "lower_index",
                      "score_dtype": "float32"},
        "producers": {"quality": {"contexts": [64], "coverages": [0.25], "layers": "all", "kernel": "reference"}},
        "hypotheses": list(hypotheses),
        "multiplicity": list(multiplicity),
    }


def lock(tmp: Path, data: dict, name="plan") -> tuple[Path, str]:
    p = tmp / f"{name}.yaml"
    p.write_text(dump_yaml(data))
    lock_path, sha, _ = lock_plan(p)
    return lock_path, sha


def quality_row(cell, delta, positions=None, **over):
    row = {"window_index": cell["window_index"], "window_start": cell["window_index"] * 65, "N": cell["N"],
           "coverage": cell["coverage"], "kernel": "reference", "k_min": 4, "dispatch_threshold": 0,
           "n_tokens": cell["N"], "nll_sum_dense": 100.0, "nll_sum_sparse": 100.0 * (1 + delta / 100),
           "ppl_dense": 5.0, "ppl_sparse": 5.0 * (1 + delta / 100), "delta_ppl_pct": delta,
           "sparse_rows": 60, "dense_rows": 4}
    row.update(over)
    types = {"kernel": pa.string(), "coverage": pa.float64()}
    cols = {}
    for k, v in row.items():
        t = types.get(k, pa.float64() if isinstance(v, float) or k.startswith(("nll", "ppl", "delta")) else pa.int64())
        cols[k] = pa.array([v], type=t)
    if positions is not None:
        dense, sparse = positions
        cols["nll_dense"] = pa.array([dense], type=pa.list_(pa.float64()))
        cols["nll_sparse"] = pa.array([sparse], type=pa.list_(pa.float64()))
    return pa.table(cols)


def write_cells(tmp: Path, lock_path: Path, sha: str, deltas, data_dir=None, **kw) -> Path:
    plan = load_plan(lock_path.with_name(lock_path.name.replace(".lock.yaml", ".yaml")))
    d = data_dir or tmp / "data"
    for cell, delta in zip(expected_cells(plan, "quality"), deltas):
        write_part(d, producer="quality", producer_version="test", prereg_sha256=sha, cell=cell,
                   table=quality_row(cell, delta, **kw), environment={"gpu": None}, model={"weights_random": True},
                   corpus={"name": "c"})
    return d


def only(v, hid="tier"):
    return next(h for h in v["hypotheses"] if h["id"] == hid)


# ------------------------------------------------------------------------------ decision table


@pytest.mark.parametrize("deltas,label,index", [([0.3, 0.4, 0.2, 0.5], "STRICT", 0),
                                                ([0.9, 0.8, 0.6, 0.7], "STANDARD", 1),
                                                ([3.0, 2.0, 1.5, 4.0], "UNUSABLE", None)])
def test_rules_first_match_and_fallback(tmp_path, deltas, label, index):
    lp, sha = lock(tmp_path, plan_data([hyp()]))
    d = write_cells(tmp_path, lp, sha, deltas)
    h = only(compute_verdict(lp, d))
    assert h["label"] == label and h["status"] == "decided"
    if index is None:
        assert h["fallback"] is True and h["rule"] is None
    else:
        assert h["rule"]["index"] == index
        (c,) = h["rule"]["conditions"]
        assert c["observed"] == pytest.approx(np.mean(deltas)) and c["holds"] is True
    assert h["statistics"][0]["values"]["mean"] == pytest.approx(np.mean(deltas), rel=1e-14)


def test_failed_gate_makes_invalid(tmp_path):
    gate = {"id": "no_outlier", "stat": "d.max", "op": "<=", "value": 1.0, "reason": "a window above 1 pp"}
    lp, sha = lock(tmp_path, plan_data([hyp(gates=[gate])]))
    v = compute_verdict(lp, write_cells(tmp_path, lp, sha, [0.1, 0.2, 0.3, 1.5]))
    h = only(v)
    assert h["label"] == "INVALID" and "no_outlier" in h["reason"] and "a window above 1 pp" in h["reason"]
    assert h["gates"][0]["observed"] == 1.5 and h["gates"][0]["passed"] is False and h["rule"] is None
    lp2, sha2 = lock(tmp_path, plan_data([hyp(gates=[gate])]), name="plan2")
    assert only(compute_verdict(lp2, write_cells(tmp_path, lp2, sha2, [0.1, 0.2, 0.3, 0.9], tmp_path / "d2")))["label"] == "STRICT"


def test_insufficient_data_one_window_for_a_ci(tmp_path):
    ci = {"id": "ci", "kind": "mean_t_ci", "params": {"confidence_level": 0.95, "alternative": "less"}}
    dec = {"rules": [{"label": "STRICT", "when": [{"stat": "ci.high", "op": "<=", "value": 0.5}]}], "fallback": "NOT_STRICT"}
    lp, sha = lock(tmp_path, plan_data([hyp(statistics=[ci], decision=dec)], windows=1))
    h = only(compute_verdict(lp, write_cells(tmp_path, lp, sha, [0.1])))
    assert h["label"] == "INSUFFICIENT_DATA" and "at least 2" in h["reason"]
    assert h["statistics"][0]["values"] is None and h["statistics"][0]["error"]["status"] == "insufficient_data"


def test_insufficient_data_empty_selection(tmp_path):
    lp, sha = lock(tmp_path, plan_data([hyp(select={"N": 64, "kernel": "triton"})]))
    h = only(compute_verdict(lp, write_cells(tmp_path, lp, sha, [0.1, 0.2, 0.3, 0.4])))
    assert h["label"] == "INSUFFICIENT_DATA" and "empty" in h["reason"] and h["n_rows"] == 0


def test_unread_failing_statistic_does_not_change_label(tmp_path):
    stats_ = [{"id": "d", "kind": "describe", "params": {"ddof": 1}},
              {"id": "hl", "kind": "hodges_lehmann", "params": {"group_column": "kernel", "group_a": "x", "group_b": "y"}}]
    lp, sha = lock(tmp_path, plan_data([hyp(statistics=stats_)]))
    h = only(compute_verdict(lp, write_cells(tmp_path, lp, sha, [0.1, 0.2, 0.3, 0.4])))
    assert h["label"] == "STRICT" and h["statistics"][1]["error"]["status"] == "insufficient_data"


# ------------------------------------------------------------------------------ bad input


def test_hash_mismatch_lists_every_offending_file(tmp_path):
    lp, sha = lock(tmp_path, plan_data([hyp()]))
    d = write_cells(tmp_path, lp, "f" * 64, [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(PreregMismatchError) as e:
        compute_verdict(lp, d)
    assert len(e.value.files) == 4 and all(h == "f" * 64 for _, h in e.value.files)
    assert sha in str(e.value) and "quality/part-" in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_or_truncated_file_is_named(tmp_path, damage):
    lp, sha = lock(tmp_path, plan_data([hyp()]))
    d = write_cells(tmp_path, lp, sha, [0.1, 0.2, 0.3, 0.4])
    victim = sorted((d / "quality").glob("part-*.parquet"))[1]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not parquet" * 20)
    with pytest.raises(MeasurementError, match=victim.name):
        compute_verdict(lp, d)


def test_wrong_schema_is_refused(tmp_path):
    lp, sha = lock(tmp_path, plan_data([hyp()]))
    d = write_cells(tmp_path, lp, sha, [0.1, 0.2, 0.3, 0.4])
    cell = expected_cells(load_plan(tmp_path / "plan.yaml"), "quality")[0]
    t = quality_row(cell, 0.1)
    t = t.set_column(t.schema.get_field_index("delta_ppl_pct"), "delta_ppl_pct", pa.array(["0.1"]))
    write_part(d, producer="quality", producer_version="t", prereg_sha256=sha, cell=cell, table=t,
               environment={}, model={}, corpus={})
    with pytest.raises(MeasurementError, match=r"delta_ppl_pct.*string"):
        compute_verdict(lp, d)
    t2 = quality_row(cell, 0.1).append_column("surprise", pa.array([1.0]))
    write_part(d, producer="quality", producer_version="t", prereg_sha256=sha, cell=cell, table=t2,
               environment={}, model={}, corpus={})
    with pytest.raises(MeasurementError, match="unexpected column 'surprise'"):
        compute_verdict(lp, d)
    t3 = quality_row(cell, 0.1).drop_columns(["n_tokens"])
    write_part(d, producer="quality", producer_version="t", prereg_sha256=sha, cell=cell, table=t3,
               environment={}, model={}, corpus={})
    with pytest.raises(MeasurementError, match="missing required column.*n_tokens"):
        compute_verdict(lp, d)


def test_rows_disagreeing_with_their_cell_are_refused(tmp_path):
    lp, sha = lock(tmp_path, plan_data([hyp()]))
    d = write_cells(tmp_path, lp, sha, [0.1, 0.2, 0.3, 0.4])
    cell = expected_cells(load_plan(tmp_path / "plan.yaml"), "quality")[2]
    write_part(d, producer="quality", producer_version="t", prereg_sha256=sha, cell=cell,
               table=quality_row({**cell, "window_index": 0}, 0.1), environment={}, model={}, corpus={})
    with pytest.raises(MeasurementError, match="window_index"):
        compute_verdict(lp, d)


def test_missing_duplicated_unexpected_cells(tmp_path):
    lp, sha = lock(tmp_path, plan_data([hyp()]))
    d = write_cells(tmp_path, lp, sha, [0.1, 0.2, 0.3, 0.4])
    plan = load_plan(tmp_path / "plan.yaml")
    cells = expected_cells(plan, "quality")
    kept = part_path(d, "quality", cells[3]).read_bytes()
    part_path(d, "quality", cells[3]).unlink()
    v = compute_verdict(lp, d)
    rep = v["cells"]["quality"]
    assert rep["missing"] == [cells[3]] and rep["found"] == 3 and rep["expected"] == 4
    h = only(v)  # strict completeness: a missing cell never decides
    assert h["missing_cells"] == [cells[3]] and h["n_rows"] == 3 and h["label"] == "INSUFFICIENT_DATA"
    assert '"window_index":3' in h["reason"] and h["completeness"]["policy"] == "strict"
    part_path(d, "quality", cells[3]).write_bytes(kept)
    # an unexpected cell: reported, its rows not used
    extra = {"window_index": 9, "N": 64, "coverage": 0.25}
    write_part(d, producer="quality", producer_version="t", prereg_sha256=sha, cell=extra,
               table=quality_row(extra, 50.0), environment={}, model={}, corpus={})
    v = compute_verdict(lp, d)
    assert v["cells"]["quality"]["unexpected"][0]["cell"] == extra and only(v)["label"] == "STRICT"
    # a duplicated cell (same cell under another file name): INVALID, never double-counted
    shutil.copy(part_path(d, "quality", cells[0]), d / "quality" / "part-copy.parquet")
    v = compute_verdict(lp, d)
    assert v["cells"]["quality"]["duplicated"][0]["cell"] == cells[0]
    assert only(v)["label"] == "INVALID" and "duplicated" in only(v)["reason"]
    # stray files are listed, not silently skipped
    (d / "notes.txt").write_text("x")
    assert "notes.txt" in compute_verdict(lp, d)["data"]["ignored_files"]


@pytest.mark.parametrize("nonfinite", ["error", "drop_and_count"])
def test_nonfinite_rows(tmp_path, nonfinite):
    lp, sha = lock(tmp_path, plan_data([hyp(nonfinite=nonfinite)]))
    h = only(compute_verdict(lp, write_cells(tmp_path, lp, sha, [0.1, float("nan"), 0.3, float("inf")])))
    assert h["n_nonfinite"] == 2
    if nonfinite == "error":
        assert h["label"] == "INVALID" and "non-finite" in h["reason"]
    else:
        assert h["label"] == "STRICT" and h["statistics"][0]["values"]["n"] == 2
        assert h["statistics"][0]["values"]["mean"] == pytest.approx(0.2)


# ------------------------------------------------------------------------------ positions, multiplicity


def test_per_position_wilcoxon_cluster_bootstrap_and_multiplicity(tmp_path):
    rng = np.random.default_rng()
    wil = {"id": "w", "kind": "wilcoxon", "params": {"alternative": "greater", "zero_method": "wilcox",
                                                     "method": "asymptotic", "correction": False}}
    boot = {"id": "b", "kind": "bootstrap_ci", "params": {"statistic": "mean", "method": "BCa", "n_resamples": 1000,
            "confidence_level": 0.95, "alternative": "two-sided", "random_seed": 5, "cluster": "window_index",
            "degenerate_fallback": "percentile"}}
    adj = {"id": "adj", "kind": "multiplicity_adjusted", "params": {"family": "fam"}}
    dec = {"rules": [{"label": "WORSE", "when": [{"stat": "adj.p_adjusted", "op": "<", "value": 0.05}]}],
           "fallback": "NO_EVIDENCE"}
    h1 = hyp("pos", statistics=[wil, boot, adj], decision=dec, metric="position.d_nll", family="fam")
    h2 = hyp("pos2", statistics=[wil, adj], decision=dec, metric="position.d_nll", family="fam",
             select={"N": 64, "window_index": [0, 1]})
    fam = {"id": "fam", "hypotheses": ["pos", "pos2"], "p_value": "w.p", "method": "holm", "alpha": 0.05}
    lp, sha = lock(tmp_path, plan_data([h1, h2], windows=6, multiplicity=[fam]))
    plan = load_plan(tmp_path / "plan.yaml")
    d, dn, sp = tmp_path / "data", [], []
    for cell in expected_cells(plan, "quality"):
        a = rng.exponential(2.0, 64)
        b = a + rng.normal(0.02, 0.05, 64)
        dn.append(a); sp.append(b)
        write_part(d, producer="quality", producer_version="t", prereg_sha256=sha, cell=cell,
                   table=quality_row(cell, 0.1, positions=(a.tolist(), b.tolist())), environment={}, model={}, corpus={})
    v = compute_verdict(lp, d)
    h = only(v, "pos")
    diff = np.concatenate(sp) - np.concatenate(dn)
    w = h["statistics"][0]["values"]
    ref = stats.wilcoxon(diff, alternative="greater", method="asymptotic", correction=False)
    assert w["n"] == 6 * 64 and w["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    b = h["statistics"][1]["values"]
    assert b["n_clusters"] == 6 and b["estimate"] == pytest.approx(diff.mean(), rel=1e-12)
    p2 = stats.wilcoxon(diff[: 2 * 64], alternative="greater", method="asymptotic", correction=False).pvalue
    padj = multipletests([ref.pvalue, p2], method="holm")[1]
    (fam_out,) = v["multiplicity"]
    assert [m["p_adjusted"] for m in fam_out["members"]] == pytest.approx(list(padj), rel=1e-12)
    assert h["statistics"][2]["values"]["p_adjusted"] == pytest.approx(padj[0], rel=1e-12)
    assert h["label"] == ("WORSE" if padj[0] < 0.05 else "NO_EVIDENCE")


# ------------------------------------------------------------------------------ output


def test_deterministic_json_and_cli(tmp_path):
    boot = {"id": "b", "kind": "bootstrap_ci", "params": {"statistic": "mean", "method": "BCa", "n_resamples": 2000,
            "confidence_level": 0.95, "alternative": "two-sided", "random_seed": 5, "cluster": None,
            "degenerate_fallback": "percentile"}}
    lp, sha = lock(tmp_path, plan_data([hyp(statistics=[{"id": "d", "kind": "describe", "params": {"ddof": 1}}, boot])]))
    d = write_cells(tmp_path, lp, sha, [0.1, 0.25, 0.3, 0.45])
    a, b = compute_verdict(lp, d), compute_verdict(lp, d)
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    a2.pop("created_at"); b2.pop("created_at")
    assert verdict_json(a2) == verdict_json(b2)
    assert a["plan"]["sha256"] == sha and a["format_version"] == 1
    assert {f["path"] for f in a["data"]["files"]} == {p.relative_to(d).as_posix() for p in d.rglob("*.parquet")}

    from typer.testing import CliRunner

    from dcr.cli import app

    out = tmp_path / "v.json"
    r = CliRunner().invoke(app, ["verdict", "--plan", str(lp), "--data", str(d), "--out", str(out)])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert got["summary"] == {"tier": "STRICT"} and got["hypotheses"][0]["statistics"][1]["values"] == a["hypotheses"][0]["statistics"][1]["values"]
    bad = write_cells(tmp_path, lp, "0" * 64, [0.1], data_dir=tmp_path / "bad")
    r = CliRunner().invoke(app, ["verdict", "--plan", str(lp), "--data", str(bad), "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "another plan" in r.output and not (tmp_path / "x.json").exists()


def test_amendment_chain_is_reported(tmp_path):
    from dcr.prereg.lock import amend_plan

    lp, sha = lock(tmp_path, plan_data([hyp()]))
    data2 = plan_data([hyp()])
    data2["study"]["version"] = 2
    data2["hypotheses"][0]["decision"]["rules"][0]["when"][0]["value"] = 0.4
    (tmp_path / "plan-v2.yaml").write_text(dump_yaml(data2))
    lp2, sha2, _ = amend_plan(tmp_path / "plan-v2.yaml", lp, "tighter STRICT threshold (test)")
    plan2 = load_plan(tmp_path / "plan-v2.yaml")
    d = tmp_path / "d"
    for cell, x in zip(expected_cells(plan2, "quality"), [0.45, 0.45, 0.45, 0.45]):
        write_part(d, producer="quality", producer_version="t", prereg_sha256=sha2, cell=cell,
                   table=quality_row(cell, x), environment={}, model={}, corpus={})
    v = compute_verdict(lp2, d)
    assert v["plan"]["sha256"] == sha2 and v["plan"]["amends"]["parent_sha256"] == sha
    assert [c["sha256"] for c in v["plan"]["amendment_chain"]] == [sha]
    assert only(v)["label"] == "STANDARD"  # 0.45 > 0.4: the amended rule applies
    with pytest.raises(PreregMismatchError):  # data of the amended plan are not the parent's
        compute_verdict(lp, d)


def test_plan_column_lint():
    from dcr.analysis.loading import plan_column_problems
    from dcr.prereg.loading import plan_from_data

    good = plan_from_data(plan_data([hyp()]), "t")
    assert plan_column_problems(good) == []
    bad = plan_from_data(plan_data([hyp(select={"context": 64}, metric="latency")]), "t")
    assert plan_column_problems(bad) == ["tier: select 'context' is not a column of quality",
                                         "tier: metric 'latency' is not a column of quality"]


def test_every_shipped_plan_names_only_documented_columns():
    """Registrations and script plans select and read columns the producers write. (The seed-v3
    example's plans also read transcribed summary columns, declared per file; not checked here.)"""
    from pathlib import Path

    from dcr.analysis.loading import plan_column_problems
    from dcr.prereg.loading import load_plan

    root = Path(__file__).resolve().parents[2]
    plans = [p for pattern in ("prereg/registrations/*.yaml", "lab/gpu/*/plan.yaml")
             for p in sorted(root.glob(pattern)) if not p.name.endswith(".lock.yaml")]
    assert len(plans) >= 8 and root / "lab/gpu/multigpu/plan.yaml" in plans
    problems = {p.name: plan_column_problems(load_plan(p)) for p in plans}
    assert not any(problems.values()), problems
