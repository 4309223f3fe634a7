"""Completeness is the default: every registered cell a hypothesis could read must be present
exactly once (by cell key, inside and across part files, for transcribed files too), or the
hypothesis is INSUFFICIENT_DATA (missing) / INVALID (duplicated) with the cells named; a plan
decides on partial data only under a registered ``partial_data`` policy. Each case builds fresh
data from a fixed seed and checks the engine's numbers against numpy."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dcr.analysis.engine import compute_verdict
from dcr.analysis.loading import MeasurementError
from dcr.cli import app
from dcr.prereg.canonical import plan_sha256
from dcr.prereg.loading import load_plan
from dcr.prereg.lock import load_locked
from dcr.prereg.measurements import QUALITY, expected_cells, part_path, read_part, with_metadata, write_part
from plan_factory import ROOT, lock_copy, synthetic_rows, write_complete_data

HERO_AS_RUN = ROOT / "analysis" / "assets" / "seed_v3" / "plans" / "hero-as-run.yaml"  # gates: []
SEED_REGISTRATION = ROOT / "prereg" / "registrations" / "seed-v3-hero-as-run.yaml"


def hyp(v, hid):
    return next(h for h in v["hypotheses"] if h["id"] == hid)


def quality_rows(plan, cell, delta):
    row = synthetic_rows(plan, "quality", cell, np.random.default_rng(0))[0]
    return [{**row, "delta_ppl_pct": float(delta)}]


def write_quality(lock, data, deltas, skip=()):
    """One part file per registered quality cell i with ΔPPL% deltas[i] (cells in ``skip`` left out)."""
    locked = load_locked(lock)
    for i, cell in enumerate(expected_cells(locked.plan, "quality")):
        if i not in skip:
            write_part(data, producer="quality", producer_version="t", prereg_sha256=locked.sha256, cell=cell,
                       table=QUALITY.table(quality_rows(locked.plan, cell, deltas[i])),
                       environment={}, model={}, corpus={})
    return locked


def hero_label(x):
    """The seed's hero rule (hero-as-run.yaml), applied with numpy: the independent reference."""
    m, sd = np.mean(x), np.std(x, ddof=1)
    if m <= 0.7 and sd <= 0.15:
        return "HERO_CONFIRMED"
    if m <= 1.0 and sd <= 0.20:
        return "HERO_MARGINAL"
    return "HERO_HIGH_VARIANCE" if m <= 1.0 else "HERO_COLLAPSED"


# ------------------------------------------------------------------------------ doubled rows (issue case 1)


def test_a_part_file_holding_its_window_twice_is_invalid_not_n_plus_one(tmp_path):
    rng = np.random.default_rng(11)
    deltas = rng.normal(0.4, 0.1, 5)
    lock = lock_copy(tmp_path, HERO_AS_RUN)
    locked = write_quality(lock, tmp_path / "data", deltas)
    assert hyp(compute_verdict(lock, tmp_path / "data"), "hero_verdict")["label"] == hero_label(deltas)
    cell = expected_cells(locked.plan, "quality")[3]
    path = part_path(tmp_path / "data", "quality", cell)
    meta, table = read_part(path)
    doubled = pa.concat_tables([table, table]).replace_schema_metadata(table.schema.metadata)
    pq.write_table(doubled, path)  # the same window twice in its own file
    v = compute_verdict(lock, tmp_path / "data")
    for hid in ("hero_tier", "hero_verdict"):
        h = hyp(v, hid)
        assert h["status"] == "invalid" and h["label"] == "INVALID", h
        assert [d["cell"] for d in h["doubled_cells"]] == [cell]
        assert '"window_index":3' in h["reason"] and "2 rows with row key" in h["reason"]
    (d,) = v["cells"]["quality"]["duplicated"]
    assert d["cell"] == cell and d["files"] == [path.relative_to(tmp_path / "data").as_posix()]


def test_transcribed_covers_all_is_checked_against_its_rows(tmp_path):
    """covers_cells: "all" with window_index [0, 1, 3, 4, 4]: window 2 is missing, window 4 doubled."""
    rng = np.random.default_rng(12)
    deltas = rng.normal(0.4, 0.1, 5)
    lock = lock_copy(tmp_path, HERO_AS_RUN)
    locked = load_locked(lock)
    cells = expected_cells(locked.plan, "quality")
    shown = [0, 1, 3, 4, 4]
    table = pa.table({"window_index": pa.array(shown, pa.int64()), "N": pa.array([32000] * 5, pa.int64()),
                      "coverage": pa.array([0.15] * 5, pa.float64()),
                      "delta_ppl_pct": pa.array([deltas[i] for i in shown], pa.float64())})
    write_part(tmp_path / "data", producer="quality", producer_version="t", prereg_sha256=locked.sha256,
               cell={"N": 32000, "coverage": 0.15}, table=with_metadata(table, transcribed={"source": "test", "covers_cells": "all"}),
               environment={}, model={}, corpus={})
    v = compute_verdict(lock, tmp_path / "data")
    rep = v["cells"]["quality"]
    assert rep["missing"] == [cells[2]] and rep["found"] == 4
    assert [d["cell"] for d in rep["duplicated"]] == [cells[4]]
    assert rep["claims_not_in_rows"][0]["cells"] == [cells[2]]
    for hid in ("hero_tier", "hero_verdict"):
        h = hyp(v, hid)
        assert h["label"] == "INVALID" and h["missing_cells"] == [cells[2]], h
        assert '"window_index":4' in h["reason"] and '"window_index":2' in h["reason"]


# ------------------------------------------------------------------------------ missing cells (issue case 2)


def test_withholding_the_worst_window_does_not_flip_the_hero_label(tmp_path):
    """hero-as-run.yaml has gates: []: a missing window must not let the remaining four decide."""
    rng = np.random.default_rng(21)
    deltas = np.append(rng.normal(0.8, 0.04, 4), 2.5)  # the fifth window is the worst
    worst = int(np.argmax(deltas))
    rest = np.delete(deltas, worst)
    assert hero_label(deltas) == "HERO_COLLAPSED" and hero_label(rest) == "HERO_MARGINAL"  # it would flip
    lock = lock_copy(tmp_path, HERO_AS_RUN)
    write_quality(lock, tmp_path / "all", deltas)
    assert hyp(compute_verdict(lock, tmp_path / "all"), "hero_verdict")["label"] == "HERO_COLLAPSED"
    locked = write_quality(lock, tmp_path / "data", deltas, skip={worst})
    out = tmp_path / "v.json"
    r = CliRunner().invoke(app, ["verdict", "--plan", str(lock), "--data", str(tmp_path / "data"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    v = json.loads(out.read_text())
    missing = expected_cells(locked.plan, "quality")[worst]
    for h in v["hypotheses"]:
        assert h["status"] == "insufficient_data" and h["label"] == "INSUFFICIENT_DATA", h
        assert h["missing_cells"] == [missing] and "strict completeness" in h["reason"]
        assert h["completeness"] == {"policy": "strict", "registered": 5, "present": 4, "complete_enough": False}


def test_withholding_the_worst_seed_does_not_flip_stability_without_a_gate(tmp_path):
    """The registration's stability rule with its n == 5 gates removed (a copied plan): the
    missing window alone must keep the label undecided."""
    rng = np.random.default_rng(22)
    deltas = np.append(rng.normal(0.4, 0.01, 4), 0.55)
    worst = 4
    sd, sd_rest = np.std(deltas, ddof=1), np.std(deltas[:4], ddof=1)
    assert 0.05 <= sd < 0.15 and sd_rest < 0.05  # ACCEPTABLE with all five, STABLE without the worst

    def no_gates(data):
        for h in data["hypotheses"]:
            h["gates"] = []

    lock = lock_copy(tmp_path, SEED_REGISTRATION, no_gates)
    write_quality(lock, tmp_path / "all", deltas)
    assert hyp(compute_verdict(lock, tmp_path / "all"), "seed_stability")["label"] == "ACCEPTABLE"
    write_quality(lock, tmp_path / "data", deltas, skip={worst})
    h = hyp(compute_verdict(lock, tmp_path / "data"), "seed_stability")
    assert h["label"] == "INSUFFICIENT_DATA" and len(h["missing_cells"]) == 1


def test_only_hypotheses_whose_selection_could_read_the_cell_are_affected(tmp_path):
    """Select keys that are cell keys are matched exactly; other select keys conservatively."""
    def two_contexts(data):
        data["producers"]["quality"]["contexts"] = [16000, 32000]
        base = data["hypotheses"][0]
        data["hypotheses"] = [{**copy.deepcopy(base), "id": hid, "select": select} for hid, select in (
            ("at_16k", {"N": 16000, "coverage": 0.15}), ("at_32k", {"N": 32000, "coverage": 0.15}),
            ("at_32k_ref", {"N": 32000, "kernel": "reference"}), ("at_16k_ref", {"N": 16000, "kernel": "reference"}))]

    lock = lock_copy(tmp_path, HERO_AS_RUN, two_contexts)
    locked = load_locked(lock)
    cells = expected_cells(locked.plan, "quality")
    gone = next(i for i, c in enumerate(cells) if c["N"] == 16000 and c["window_index"] == 2)
    deltas = np.random.default_rng(23).normal(0.3, 0.1, len(cells))
    write_quality(lock, tmp_path / "data", deltas, skip={gone})
    v = compute_verdict(lock, tmp_path / "data")
    assert hyp(v, "at_16k")["label"] == hyp(v, "at_16k_ref")["label"] == "INSUFFICIENT_DATA"
    at32 = [d for c, d in zip(cells, deltas) if c["N"] == 32000]
    for hid in ("at_32k", "at_32k_ref"):
        h = hyp(v, hid)
        assert h["status"] == "decided" and h["statistics"][0]["values"]["mean"] == pytest.approx(np.mean(at32), rel=1e-12)
        assert h["missing_cells"] == [] and h["completeness"]["present"] == 5


# ------------------------------------------------------------------------------ the partial_data policy


def _partial(min_fraction):
    def edit(data):
        for h in data["hypotheses"]:
            h["partial_data"] = {"min_fraction": min_fraction,
                                 "reason": "a window may fail to load on the shared GPU; decide on four of five"}
    return edit


def test_a_registered_partial_data_policy_decides_and_says_so(tmp_path):
    rng = np.random.default_rng(24)
    deltas = rng.normal(0.4, 0.05, 5)
    lock = lock_copy(tmp_path, HERO_AS_RUN, _partial(0.8))
    write_quality(lock, tmp_path / "four", deltas, skip={1})
    h = hyp(compute_verdict(lock, tmp_path / "four"), "hero_verdict")
    rest = np.delete(deltas, 1)
    assert h["status"] == "decided" and h["label"] == hero_label(rest)
    assert h["statistics"][0]["values"]["n"] == 4 and h["statistics"][0]["values"]["mean"] == pytest.approx(rest.mean())
    assert "decided on partial data: 4 of 5" in h["reason"] and len(h["missing_cells"]) == 1
    assert h["completeness"]["policy"] == "partial_data" and h["completeness"]["min_fraction"] == 0.8
    write_quality(lock, tmp_path / "three", deltas, skip={1, 2})
    h = hyp(compute_verdict(lock, tmp_path / "three"), "hero_verdict")
    assert h["label"] == "INSUFFICIENT_DATA" and "below the registered partial_data min_fraction 0.8" in h["reason"]
    # a duplicated cell is never allowed, whatever the policy
    write_quality(lock, tmp_path / "dup", deltas)
    src = part_path(tmp_path / "dup", "quality", expected_cells(load_locked(lock).plan, "quality")[0])
    shutil.copy(src, src.with_name("part-copy.parquet"))
    assert hyp(compute_verdict(lock, tmp_path / "dup"), "hero_verdict")["label"] == "INVALID"


def test_partial_data_is_hashed_when_set_and_absent_from_the_hash_when_unset(tmp_path):
    plain = load_plan(HERO_AS_RUN)
    for name, edit, same in (("unset", lambda d: [h.update(partial_data=None) for h in d["hypotheses"]], True),
                             ("set", _partial(0.8), False), ("other", _partial(0.6), False)):
        (tmp_path / name).mkdir()
        lock = lock_copy(tmp_path / name, HERO_AS_RUN, edit)
        assert (load_locked(lock).sha256 == plan_sha256(plain)) is same, name
    with pytest.raises(Exception, match="min_fraction"):
        lock_copy(tmp_path, HERO_AS_RUN, _partial(1.5))


# ------------------------------------------------------------------------------ broken files and stray tables


def test_a_zero_row_part_file_is_a_clear_error(tmp_path):
    lock = lock_copy(tmp_path, HERO_AS_RUN)
    locked = write_quality(lock, tmp_path / "data", np.random.default_rng(25).normal(0.4, 0.1, 5))
    cell = expected_cells(locked.plan, "quality")[2]
    write_part(tmp_path / "data", producer="quality", producer_version="t", prereg_sha256=locked.sha256, cell=cell,
               table=QUALITY.table([]), environment={}, model={}, corpus={})
    with pytest.raises(MeasurementError, match=r"quality/part-.*\.parquet: holds no rows"):
        compute_verdict(lock, tmp_path / "data")
    r = CliRunner().invoke(app, ["verdict", "--plan", str(lock), "--data", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "v.json")])
    assert r.exit_code == 2 and "holds no rows" in r.output and not (tmp_path / "v.json").exists()


def test_a_csv_left_in_the_data_folder_is_reported(tmp_path):
    rng = np.random.default_rng(26)
    lock = lock_copy(tmp_path, HERO_AS_RUN)
    (tmp_path / "data").mkdir()
    rows = "window_index,N,coverage,delta_ppl_pct\n" + "".join(f"{i},32000,0.15,{x}\n"
                                                               for i, x in enumerate(rng.normal(0.4, 0.1, 5)))
    (tmp_path / "data" / "figures.csv").write_text(rows)
    out = tmp_path / "v.json"
    r = CliRunner().invoke(app, ["verdict", "--plan", str(lock), "--data", str(tmp_path / "data"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "not read: figures.csv" in r.output and "dcr import" in r.output
    v = json.loads(out.read_text())
    assert v["data"]["ignored_files"] == ["figures.csv"]
    for h in v["hypotheses"]:
        assert h["label"] == "INSUFFICIENT_DATA" and "not read: figures.csv" in h["reason"] and "dcr import" in h["reason"]


# ------------------------------------------------------------------------------ provenance


def test_verdict_states_lock_git_state_and_what_each_file_recorded(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    lock = lock_copy(tmp_path, HERO_AS_RUN)  # an untracked plan in a fresh repository: dirty, not committed
    locked = load_locked(lock)
    assert locked.git["tree_dirty"] is True and locked.git["plan_committed"] is False and locked.git["commit"] is None
    write_complete_data(lock, tmp_path / "data", seed=27)
    cells = expected_cells(locked.plan, "quality")
    from dcr.prereg.provenance import lock_record

    env = {k: None for k in ("python", "platform", "torch", "triton", "transformers", "cuda", "gpu", "git_commit",
                             "git_dirty")}
    write_part(tmp_path / "data", producer="quality", producer_version="t", prereg_sha256=locked.sha256, cell=cells[0],
               table=QUALITY.table(quality_rows(locked.plan, cells[0], 0.3)), environment=env, model={}, corpus={},
               lock=lock_record(lock))
    write_part(tmp_path / "data", producer="quality", producer_version="t", prereg_sha256=locked.sha256, cell=cells[1],
               table=QUALITY.table(quality_rows(locked.plan, cells[1], 0.3)), environment=env, model={}, corpus={},
               lock={"file": "elsewhere.lock.yaml", "file_sha256": "0" * 64})
    v = compute_verdict(lock, tmp_path / "data")
    assert v["plan"]["lock"]["git"]["tree_dirty"] is True
    prov = {f["cell"]["window_index"]: f["provenance"] for f in v["data"]["files"]}
    assert prov[0] == {"lock": "this_lock", "environment_missing": []}
    assert prov[1] == {"lock": "other_lock", "environment_missing": []}
    assert prov[2]["lock"] == "not_recorded" and prov[2]["environment_missing"] == list(env)

    from dcr.reports.render import render_report

    html = render_report(v, tmp_path / "report", data_dir=tmp_path / "data", lock_path=lock)
    md = html.with_suffix(".md").read_text()
    section = md.split("## Provenance", 1)[1].split("## Data manifest", 1)[0]
    assert "**⚠** The lock was made inside a git repository" in section and "work tree: uncommitted changes" in section
    assert "1 of 5 data file(s): recorded this lock." in section
    assert "**⚠** 1 of 5 data file(s): recorded another lock file of this plan." in section
    assert "**⚠** 3 of 5 data file(s): no lock recorded." in section
    assert "**⚠** 2 of 5 data file(s) recorded their producer's environment; 3 lack" in section
    assert 'id="provenance-lines"' in html.read_text()


def test_account_cells_checks_transcribed_claims_against_the_cell_keys_rows_carry():
    from dcr.analysis.loading import FileRecord, account_cells

    expected = [{"variant": "default_init", "seed": s, "N": n} for s in (1, 2) for n in (64, 128)]

    def rec(path, cell, covers):
        return FileRecord(path, "0" * 64, "random_spectrum", "t", 1, cell, {}, {}, {},
                          {"source": "test", "covers_cells": covers}, None)

    alpha = np.random.default_rng(28).normal(1.0, 0.01, 3)
    per_seed = pa.table({"variant": ["default_init", "default_init"], "seed": [1, 1], "alpha": alpha[:2]})
    claims_both = rec("random_spectrum/part-a.parquet", {"variant": "default_init"}, expected)
    rep, unused = account_cells("random_spectrum", expected, [(claims_both, per_seed)])
    # rows carry (variant, seed): seed 2 is claimed but not shown; seed 1 shows twice (doubled row)
    assert rep["missing"] == expected[2:] and rep["claims_not_in_rows"][0]["cells"] == expected[2:]
    assert [d["cell"] for d in rep["duplicated"]] == expected[:2] and not unused
    assert all("2 rows with row key" in d["reason"] for d in rep["duplicated"])
    pooled = pa.table({"alpha_mean": alpha[:1]})  # no cell key: the claim counts as declared
    rep, _ = account_cells("random_spectrum", expected, [(rec("random_spectrum/part-b.parquet", {}, "all"), pooled)])
    assert rep["missing"] == [] and rep["claims_unchecked"] == [{"file": "random_spectrum/part-b.parquet", "cells": 4}]
    full = pa.table({"variant": ["default_init"] * 2, "seed": [1, 9], "N": [64, 64], "entropy": alpha[1:]})
    rep, unused = account_cells("random_spectrum", expected, [(rec("random_spectrum/part-c.parquet", {}, []), full)])
    assert rep["unexpected"] == [{"cell": {"variant": "default_init", "seed": 9, "N": 64},
                                  "file": "random_spectrum/part-c.parquet"}]
    assert unused == {"random_spectrum/part-c.parquet"} and rep["found"] == 0
