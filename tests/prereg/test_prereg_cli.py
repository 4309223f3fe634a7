"""`dcr prereg hash | lock | verify | diff | amend` through typer's CliRunner, on temp copies."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcr.cli import app
from dcr.prereg.canonical import plan_sha256
from dcr.prereg.loading import dump_yaml, load_plan, read_yaml
from dcr.prereg.lock import PlanError, _artifact_hash, load_locked, lock_path_for

REG = Path(__file__).resolve().parents[2] / "prereg" / "registrations"
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, ["prereg", *map(str, args)])


@pytest.fixture
def plan(tmp_path) -> Path:
    p = tmp_path / "hero.yaml"
    shutil.copy(REG / "seed-v3-hero-as-run.yaml", p)
    return p


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_hash_prints_64_hex(plan):
    res = cli("hash", plan)
    assert res.exit_code == 0
    assert res.stdout.strip() == plan_sha256(load_plan(plan))
    assert len(res.stdout.strip()) == 64 and int(res.stdout.strip(), 16) >= 0


def test_lock_writes_artifact_and_hash_of_lock_agrees(plan):
    res = cli("lock", plan)
    assert res.exit_code == 0, res.output
    lock = lock_path_for(plan)
    assert lock.name == "hero.lock.yaml" and lock.exists()
    sha = plan_sha256(load_plan(plan))
    assert f"sha256: {sha}" in res.stdout
    assert "3 pairs of windows overlap" in res.stdout  # seeds 0, 1, 2 at N = 32,000
    assert cli("hash", lock).stdout.strip() == sha
    data, _ = read_yaml(lock)
    assert data["sha256"] == sha and data["study"] == {"id": "seed-v3-hero-as-run", "version": 1}
    assert data["flags"] == {"overlapping_windows": [[0, 1], [0, 2], [1, 2]], "weights_random": False,
                             "amended": False}
    assert data["locked_at"].endswith("Z") and data["tool"]["name"] == "dcr-prereg"
    assert data["git"] is None  # tmp_path is not in a git work tree
    assert data["parent"] is None
    locked = load_locked(lock)
    assert locked.sha256 == sha and locked.plan == load_plan(plan) and locked.chain == [sha]


def test_lock_records_git_commit_inside_a_repo():
    repo = Path(__file__).resolve().parents[2]
    from dcr.prereg.lock import _git_record
    info = _git_record(repo / "prereg" / "registrations" / "demo.yaml")
    if info is None:
        pytest.skip("not a git checkout")
    assert info["plan_path"] == "prereg/registrations/demo.yaml"
    assert info["commit"] is None or len(info["commit"]) == 40


def test_relock_identical_is_idempotent_even_after_reformatting(plan):
    assert cli("lock", plan).exit_code == 0
    before = (lock_path_for(plan)).read_bytes()
    edit(plan, "study:\n", "# a new comment\nstudy:\n")  # formatting only
    res = cli("lock", plan)
    assert res.exit_code == 0 and "already locked" in res.stdout
    assert lock_path_for(plan).read_bytes() == before


def test_relock_different_content_same_version_refused(plan):
    assert cli("lock", plan).exit_code == 0
    before = files(plan.parent)
    edit(plan, "k_min: 64", "k_min: 32")
    res = cli("lock", plan)
    assert res.exit_code == 2
    assert "same id/version" in res.stderr and "amend" in res.stderr
    assert files(plan.parent) == {**before, "hero.yaml": plan.read_bytes()}


def test_same_id_version_under_another_file_name_refused(plan):
    assert cli("lock", plan).exit_code == 0
    other = plan.with_name("copy.yaml")
    other.write_text(plan.read_text().replace("k_min: 64", "k_min: 32"))
    res = cli("lock", other)
    assert res.exit_code == 2 and "hero.lock.yaml" in res.stderr
    assert not lock_path_for(other).exists()


def test_verify_ok_and_changed_fields(plan):
    assert cli("lock", plan).exit_code == 0
    res = cli("verify", plan)
    assert res.exit_code == 0 and res.stdout.startswith("OK")
    edit(plan, "k_min: 64", "k_min: 32")
    edit(plan, "value: 0.5}", "value: 0.4}")
    res = cli("verify", plan)
    assert res.exit_code == 1
    assert "~ attention.k_min: 64 → 32" in res.stdout
    assert "~ hypotheses[id=hero_tier].decision.rules[0].when[0].value: 0.5 → 0.4" in res.stdout
    assert "2 field(s)" in res.stdout


def test_verify_without_lock_fails(plan):
    res = cli("verify", plan)
    assert res.exit_code == 1 and "no lock file" in res.stdout


def test_verify_invalid_plan_is_bad_input(plan):
    assert cli("lock", plan).exit_code == 0
    edit(plan, "k_min: 64", "k_min: sixty-four")
    res = cli("verify", plan)
    assert res.exit_code == 2 and "attention.k_min" in res.stderr


@pytest.mark.parametrize("how", ["plan_value", "metadata", "plan_and_artifact_hash", "flags_forged"])
def test_edited_frozen_artifact_detected(plan, how):
    assert cli("lock", plan).exit_code == 0
    lock = lock_path_for(plan)
    if how == "plan_value":
        edit(lock, "k_min: 64", "k_min: 65")
    elif how == "metadata":
        edit(lock, "locked_at: ", "locked_at: '1999-01-01T00:00:00Z' #")
    else:
        data, _ = read_yaml(lock)
        if how == "plan_and_artifact_hash":  # a forger who recomputes the artifact hash only
            data["plan"]["attention"]["k_min"] = 65
        else:
            data["flags"]["overlapping_windows"] = []
        data["artifact_sha256"] = _artifact_hash(data)
        lock.write_text(dump_yaml(data))
    res = cli("verify", plan)
    assert res.exit_code == 1 and "edited frozen artifact" in res.stdout
    if how in ("plan_value", "plan_and_artifact_hash"):  # the edited field is named
        assert "~ attention.k_min: 65 → 64" in res.stdout
    assert cli("verify", lock).exit_code == 1
    assert cli("hash", lock).exit_code == 2
    with pytest.raises(PlanError, match="edited frozen artifact"):
        load_locked(lock)


def test_load_locked_refuses_a_plain_plan(plan):
    with pytest.raises(PlanError, match="not a lock file"):
        load_locked(plan)


def test_diff_text_and_json(plan, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(plan.read_text().replace("k_min: 64", "k_min: 128").replace(
        "  - id: seed_stability", "  - id: seed_stability_renamed"))
    res = cli("diff", plan, other)
    assert res.exit_code == 1
    sa, sb = plan_sha256(load_plan(plan)), plan_sha256(load_plan(other))
    assert sa in res.stdout and sb in res.stdout
    assert "~ attention.k_min: 64 → 128" in res.stdout
    assert "- hypotheses[id=seed_stability]:" in res.stdout
    assert "+ hypotheses[id=seed_stability_renamed]:" in res.stdout
    res = cli("diff", plan, other, "--json")
    out = json.loads(res.stdout)
    assert out["a"]["sha256"] == sa and out["b"]["sha256"] == sb and out["identical"] is False
    assert {"path": "attention.k_min", "change": "changed", "old": 64, "new": 128} in out["changes"]
    same = cli("diff", plan, plan, "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)["changes"] == []


def test_diff_reports_reordered_rules_and_hypotheses(plan, tmp_path):
    data, _ = read_yaml(plan)
    data["hypotheses"] = data["hypotheses"][::-1]
    other = tmp_path / "reordered.yaml"
    other.write_text(dump_yaml(data))
    res = cli("diff", plan, other, "--json")
    changes = json.loads(res.stdout)["changes"]
    assert [c["path"] for c in changes] == ["hypotheses(order)"]


def test_diff_lock_against_plan(plan):
    assert cli("lock", plan).exit_code == 0
    res = cli("diff", lock_path_for(plan), plan)
    assert res.exit_code == 0 and "identical" in res.stdout


def test_diff_bad_input(plan, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [")
    res = cli("diff", plan, bad)
    assert res.exit_code == 2 and str(bad) in res.stderr


# ---------------------------------------------------------------------------- amend


def make_v2(plan: Path, name: str = "hero-v2.yaml", version: int = 2, change=("k_min: 64", "k_min: 32")) -> Path:
    v2 = plan.with_name(name)
    import re
    text = re.sub(r"(?m)^  version: \d+$", f"  version: {version}", plan.read_text(), count=1)
    v2.write_text(text.replace(*change))
    return v2


def test_amend_chain_of_three_and_verify_walks_it(plan, tmp_path):
    assert cli("lock", plan).exit_code == 0
    v2 = make_v2(plan)
    res = cli("amend", v2, "--parent", lock_path_for(plan), "--reason", "k_min 32 after the pilot")
    assert res.exit_code == 0, res.output
    assert "~ attention.k_min: 64 → 32" in res.stdout
    text = v2.read_text()
    assert "# meta-llama/Llama-3.2-1B at hub commit" in text  # comments kept
    assert f"parent_sha256: {plan_sha256(load_plan(plan))}" in text
    v3 = make_v2(v2, "hero-v3.yaml", 3, ("k_min: 32", "k_min: 16"))
    res = cli("amend", v3, "--parent", lock_path_for(v2), "--reason", "k_min 16 after the second pilot")
    assert res.exit_code == 0, res.output
    res = cli("verify", v3)
    assert res.exit_code == 0, res.output
    assert "version 2" in res.stdout and "version 1" in res.stdout
    locked = load_locked(lock_path_for(v3))
    assert locked.chain == [plan_sha256(load_plan(p)) for p in (v3, v2, plan)]
    assert locked.flags["amended"] and locked.plan.amends.reason == "k_min 16 after the second pilot"
    # idempotent
    res = cli("amend", v3, "--parent", lock_path_for(v2), "--reason", "k_min 16 after the second pilot")
    assert res.exit_code == 0 and "already locked" in res.stdout

    # a missing parent breaks the chain; --locks-dir finds it elsewhere
    elsewhere = tmp_path / "archive"
    elsewhere.mkdir()
    shutil.move(lock_path_for(plan), elsewhere / "moved.lock.yaml")
    res = cli("verify", v3)
    assert res.exit_code == 1 and "not found" in res.stdout
    assert cli("verify", v3, "--locks-dir", elsewhere).exit_code == 0
    # an edited ancestor breaks it too
    edit(elsewhere / "moved.lock.yaml", "k_min: 64", "k_min: 63")
    res = cli("verify", v3, "--locks-dir", elsewhere)
    assert res.exit_code == 1 and "edited frozen artifact" in res.stdout


def test_lock_of_an_amending_plan_goes_through_amend(plan):
    assert cli("lock", plan).exit_code == 0
    v2 = make_v2(plan)
    assert cli("amend", v2, "--parent", lock_path_for(plan), "--reason", "k_min 32 after the pilot").exit_code == 0
    lock_path_for(v2).unlink()
    res = cli("lock", v2)
    assert res.exit_code == 2 and "amend" in res.stderr


@pytest.mark.parametrize("case", ["version_not_greater", "other_study", "short_reason", "parent_is_target",
                                  "parent_is_plain_plan", "parent_edited"])
def test_amend_refusals_write_nothing(plan, case):
    assert cli("lock", plan).exit_code == 0
    reason = "a sufficiently long reason"
    parent = lock_path_for(plan)
    if case == "version_not_greater":
        v2 = make_v2(plan, version=1)
    elif case == "other_study":
        v2 = make_v2(plan, change=("id: seed-v3-hero-as-run", "id: another-study"))
    elif case == "short_reason":
        v2, reason = make_v2(plan), "short"
    elif case == "parent_is_target":
        edit(plan, "  version: 1\n", "  version: 2\n")
        v2 = plan
    elif case == "parent_is_plain_plan":
        v2, parent = make_v2(plan), plan
    else:
        v2 = make_v2(plan)
        edit(parent, "k_min: 64", "k_min: 65")
    before = files(plan.parent)
    res = cli("amend", v2, "--parent", parent, "--reason", reason)
    assert res.exit_code == 2, res.output
    expected = {"version_not_greater": "study.version", "other_study": "study.id", "short_reason": "amends.reason",
                "parent_is_target": "overwrite the parent lock", "parent_is_plain_plan": "not a lock file",
                "parent_edited": "edited frozen artifact"}[case]
    assert expected in res.stderr
    assert files(plan.parent) == before


def test_amend_of_a_flow_style_plan_rewrites_it_canonically(plan):
    assert cli("lock", plan).exit_code == 0
    data, _ = read_yaml(plan)
    data["study"]["version"] = 2
    data["attention"]["k_min"] = 32
    v2 = plan.with_name("flow.yaml")
    v2.write_text(json.dumps(data))  # JSON is YAML; no top-level `amends:` line to edit in place
    res = cli("amend", v2, "--parent", lock_path_for(plan), "--reason", "k_min 32 after the pilot")
    assert res.exit_code == 0, res.output
    assert v2.read_text().startswith("# Rewritten by `dcr prereg amend`")
    assert load_plan(v2).amends.parent_sha256 == plan_sha256(load_plan(plan))
    assert cli("verify", v2).exit_code == 0


def test_verify_with_explicit_lock_and_load_locked_chain_option(plan, tmp_path):
    assert cli("lock", plan).exit_code == 0
    v2 = make_v2(plan)
    assert cli("amend", v2, "--parent", lock_path_for(plan), "--reason", "k_min 32 after the pilot").exit_code == 0
    moved = tmp_path / "elsewhere.yaml"
    shutil.copy(v2, moved)
    assert cli("verify", moved, "--lock", lock_path_for(v2)).exit_code == 0
    res = cli("verify", moved, "--lock", lock_path_for(plan))  # the wrong lock: v1 vs v2
    assert res.exit_code == 1 and "~ study.version: 1 → 2" in res.stdout
    lock_path_for(plan).unlink()
    with pytest.raises(PlanError, match="parent lock with sha256"):
        load_locked(lock_path_for(v2))
    assert load_locked(lock_path_for(v2), check_chain=False).parents == ()
