"""Reports: rendering, escaping, plots, and `dcr report verify` against each kind of tampering.

Everything here runs the real pipeline on a tiny study: a plan written and locked with
:mod:`prereg.lock`, Parquet part files written by :mod:`prereg.measurements`, the verdict computed
by :func:`analysis.engine.compute_verdict`. The numbers the report shows are checked against scipy
called directly (an independent reference).
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from dcr.analysis.engine import compute_verdict
from dcr.prereg.lock import lock_plan
from dcr.prereg.measurements import write_part
from dcr.reports import render as R
from dcr.reports import verify as V

XSS = "<script>alert('x')</script>"

PLAN = """\
schema_version: 1
study:
  id: toy-report
  version: 1
  title: "Toy study for the report tests {xss}"
  authors: ["tests"]
  description: "tiny"
amends: null
model: {{source: preset, id: tiny-llama, revision: null, dtype: float32, preset_seed: 0}}
corpus: {{name: toy, source: shipped, split: null, path: null, sha256: null}}
windows: {{placement: disjoint, count: 4, start: 0, offsets: null}}
attention: {{k_min: 4, dispatch_threshold: 0, selection: query_head, tie_rule: lower_index, score_dtype: float32}}
producers:
  quality: {{contexts: [64, 128], coverages: [0.25, 0.5], layers: all, kernel: reference}}
hypotheses:
  - id: H_quality
    statement: "ΔPPL is small {xss} & <b>bold</b>"
    producer: quality
    select: {{N: 64, coverage: 0.5}}
    metric: delta_ppl_pct
    nonfinite: error
    statistics:
      - {{id: mean_ci, kind: mean_t_ci, params: {{confidence_level: 0.95, alternative: two-sided}}}}
    gates:
      - {{id: enough_windows, stat: mean_ci.n, op: ">=", value: 3, reason: "three windows at least {xss}"}}
    decision:
      rules:
        - {{label: STRICT, when: [{{stat: mean_ci.high, op: "<=", value: 0.5}}]}}
        - {{label: STANDARD, when: [{{stat: mean_ci.high, op: "<=", value: 1.0}}]}}
      fallback: UNUSABLE
    family: null
multiplicity: []
"""


def _quality_table(window: int, N: int, c: float, delta: float) -> pa.Table:
    nd = 2.0 * N
    ns = nd + N * math.log1p(delta / 100)  # ppl_sparse / ppl_dense - 1 = delta / 100
    return pa.table({
        "window_index": [window], "window_start": [window * 129], "N": [N], "coverage": [c],
        "kernel": ["reference"], "k_min": [4], "dispatch_threshold": [0], "n_tokens": [N],
        "nll_sum_dense": [nd], "nll_sum_sparse": [ns], "ppl_dense": [math.exp(nd / N)],
        "ppl_sparse": [math.exp(ns / N)], "delta_ppl_pct": [delta], "sparse_rows": [N], "dense_rows": [0],
    })


def write_data(root: Path, sha: str, deltas: dict[tuple[int, int, float], float]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for (w, N, c), d in deltas.items():
        write_part(root, producer="quality", producer_version="0.1.0", prereg_sha256=sha,
                   cell={"window_index": w, "N": N, "coverage": c}, table=_quality_table(w, N, c, d),
                   environment={"gpu": None, "torch": "2.13.0", "git_commit": "abc123", "git_dirty": True},
                   model={"id": "tiny-llama", "revision": None, "weights_random": True},
                   corpus={"name": "toy", "sha256": "0" * 64})
    return root


def make_lock(dirpath: Path, title_extra: str = "") -> tuple[Path, str]:
    dirpath.mkdir(parents=True, exist_ok=True)
    plan = dirpath / "toy.yaml"
    plan.write_text(PLAN.format(xss=XSS).replace("tiny\"", f"tiny{title_extra}\""))
    lock, sha, _ = lock_plan(plan)
    return lock, sha


DELTAS = {(w, N, c): 0.1 + 0.05 * w + (0.3 if c == 0.25 else 0) * (64 / N)
          for w in range(4) for N in (64, 128) for c in (0.25, 0.5)}


@pytest.fixture
def report(tmp_path):
    lock, sha = make_lock(tmp_path / "plan")
    data = write_data(tmp_path / "data", sha, DELTAS)
    verdict = compute_verdict(lock, data)
    html = R.render_report(verdict, tmp_path / "rep", data_dir=data, lock_path=lock)
    return {"dir": tmp_path / "rep", "html": html, "data": data, "lock": lock, "verdict": verdict, "sha": sha}


def _verify(rep):
    return V.verify_report(rep["dir"])


def _rehash(rep_dir: Path, name: str) -> None:
    """What a careful forger does: update the manifest's hash of the file they edited."""
    m = json.loads((rep_dir / R.MANIFEST_NAME).read_text())
    m["files"][name] = R.sha256_file(rep_dir / name)
    (rep_dir / R.MANIFEST_NAME).write_text(json.dumps(m))


# ----------------------------------------------------------------------------- content


def _stat(verdict: dict, hid: str, sid: str) -> dict:
    h = next(h for h in verdict["hypotheses"] if h["id"] == hid)
    return next(s for s in h["statistics"] if s["id"] == sid)


def test_report_shows_the_verdict_and_its_numbers(report):
    md = (report["dir"] / "report.md").read_text()
    v = _stat(report["verdict"], "H_quality", "mean_ci")["values"]
    x = np.array([d for (w, N, c), d in DELTAS.items() if N == 64 and c == 0.5])
    ci = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))  # independent reference
    assert math.isclose(v["low"], ci[0], rel_tol=1e-9) and math.isclose(v["high"], ci[1], rel_tol=1e-9)
    for num in (v["mean"], v["low"], v["high"]):
        assert f"| {R.fmt(num)} |" in md
    plan = report["verdict"]["plan"]
    assert report["sha"] in md and plan["locked_at"] in md
    assert ci[1] <= 0.5 and report["verdict"]["hypotheses"][0]["label"] == "STRICT"
    assert "| H_quality | decided | **STRICT** | rules\\[0\\] | 4 |" in md
    assert "rules\\[0\\] → STRICT: \\<= 0.5; rules\\[1\\] → STANDARD: \\<= 1" in md  # thresholds beside
    assert "| enough_windows | `mean_ci.n >= 3` | 4 | true |" in md
    assert "RANDOM MODEL WEIGHTS" in md and "RANDOM MODEL WEIGHTS" in report["html"].read_text()
    for f in report["verdict"]["data"]["files"]:
        assert f["sha256"] in md
    assert "| quality | 16 | 16 | 0 | 0 | 0 |" in md
    assert "dcr report verify" in md and str(report["lock"].resolve()) in md
    assert json.loads((report["dir"] / "verdict.json").read_text()) == report["verdict"]


def test_amended_plan_shows_its_chain_and_verifies(tmp_path):
    from dcr.prereg.lock import amend_plan

    lock1, sha1 = make_lock(tmp_path / "plan")
    v2 = tmp_path / "plan" / "toy-v2.yaml"
    v2.write_text(PLAN.format(xss=XSS).replace("  version: 1", "  version: 2").replace("count: 4", "count: 5"))
    reason = "one more window, <i>disjoint</i>"
    lock2, sha2, _ = amend_plan(v2, lock1, reason)
    deltas = {k: d for k, d in DELTAS.items()} | {(4, N, c): 0.2 for N in (64, 128) for c in (0.25, 0.5)}
    data = write_data(tmp_path / "data", sha2, deltas)
    html = R.render_report(compute_verdict(lock2, data), tmp_path / "rep", data_dir=data, lock_path=lock2)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"1. v1 `{sha1}` locked" in md and f"2. v2 `{sha2}` (this plan): one more window, \\<i\\>disjoint" in md
    assert f"| amends | `{sha1}`: one more window" in md
    assert "| plan amendment | this plan (v2) amends " + sha1 in md
    assert "&lt;i&gt;disjoint&lt;/i&gt;" in html.read_text()
    assert V.verify_report(tmp_path / "rep").ok


def test_plan_text_is_escaped_in_html_and_markdown(report):
    html = report["html"].read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "report tests &lt;script&gt;" in html
    assert "http://" not in html and "https://" not in html and "<link" not in html
    md = (report["dir"] / "report.md").read_text()
    assert "<script>" not in md and "\\<script\\>" in md


def test_fmt_and_md_escape():
    assert R.fmt(0.1234567891) == "0.123457" and R.fmt(3) == "3" and R.fmt(True) == "true"
    assert R.fmt(float("nan")) == "NaN" and R.fmt(1.5e-7) == "1.5000e-07" and R.fmt(None) == "—"
    assert R.md_escape("a|b\nc <x>") == "a\\|b c \\<x\\>"
    assert R.md_code("a`b|c") == "a'b\\|c"


def test_plots_drawn_from_data_and_embedded(report):
    html = report["html"].read_text()
    names = [p["name"] for p in json.loads((report["dir"] / R.MANIFEST_NAME).read_text())["plots"]]
    assert names == ["per_window_dppl", "dppl_vs_N"]  # no entropy, causal or latency data: not drawn
    assert html.count("data:image/png;base64,") == 2
    for n in names:
        png = (report["dir"] / "plots" / f"{n}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_data_renders_without_plots(tmp_path, report):
    html = R.render_report(report["verdict"], tmp_path / "bare")
    assert "data:image/png" not in html.read_text()
    res = V.verify_report(tmp_path / "bare")
    assert not res.ok and "cannot re-compute" in res.mismatches[0]


def test_a_broken_plot_does_not_fail_the_report(tmp_path, report, monkeypatch):
    from dcr.reports import plots

    def boom(verdict, tables, plt, decisions):
        raise RuntimeError("kaputt")

    monkeypatch.setattr(plots, "PLOTS", [("boom", "Boom", boom)] + plots.PLOTS)
    html = R.render_report(report["verdict"], tmp_path / "r2", data_dir=report["data"], lock_path=report["lock"])
    assert "This plot could not be drawn: RuntimeError: kaputt" in html.read_text()


@pytest.mark.parametrize("arms", [("dense", "sparse"), ("dense", "query_head", "kv_group")])
def test_latency_ratio_from_long_format(arms):
    import pandas as pd

    from dcr.reports.plots import latency_wide

    rng = np.random.default_rng(0)
    rows = [{"level": "op", "N": 1024, "B": 1, "coverage": 0.1, "session": s, "rep": r, "arm": a,
             "order_index": 0, "ms": float(rng.uniform(1, 2))} for s in range(2) for r in range(3) for a in arms]
    df = pd.DataFrame(rows)
    w = latency_wide(df)
    assert len(w) == 2 * (len(arms) - 1)
    for s in range(2):
        d = np.median(df[(df.session == s) & (df.arm == "dense")].ms)
        for a in arms[1:]:
            sp = np.median(df[(df.session == s) & (df.arm == a)].ms)
            got = w[(w.session == s) & (w.sparse_arm == a)].ratio
            assert len(got) == 1 and math.isclose(float(got.iloc[0]), d / sp, rel_tol=1e-12)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dcr.reports.plots import latency_ratio

    fig, _ = latency_ratio({}, {"latency": df}, plt, {})  # every sparse arm drawn: one point per session
    points = [len(c.get_offsets()) for c in fig.axes[0].collections]
    assert sorted(points) == [2] * (len(arms) - 1)
    plt.close(fig)


# ----------------------------------------------------------------------------- bad input


def test_render_refuses_a_verdict_from_another_plan(tmp_path, report):
    other, _ = make_lock(tmp_path / "other", title_extra=" (changed)")
    with pytest.raises(R.ReportError, match="another plan|plan sha256"):
        R.render_report(report["verdict"], tmp_path / "x", data_dir=report["data"], lock_path=other)


def test_render_refuses_missing_or_altered_data(tmp_path, report):
    f = sorted(report["data"].rglob("*.parquet"))[0]
    f.unlink()
    with pytest.raises(R.ReportError, match="data file missing"):
        R.render_report(report["verdict"], tmp_path / "x", data_dir=report["data"], lock_path=report["lock"])


# ----------------------------------------------------------------------------- verify


def test_untouched_report_verifies(report):
    res = _verify(report)
    assert res.ok, res.mismatches
    assert len(res.checked) >= 6


def test_verify_fails_on_an_edited_number_in_the_markdown(report):
    md_path = report["dir"] / "report.md"
    v = _stat(report["verdict"], "H_quality", "mean_ci")["values"]
    md = md_path.read_text()
    assert R.fmt(v["high"]) in md
    md_path.write_text(md.replace(R.fmt(v["high"]), "0.123"))
    res = _verify(report)
    assert any(m.startswith("report.md: altered after rendering") for m in res.mismatches), res.mismatches
    _rehash(report["dir"], "report.md")  # forged manifest: the re-rendering still catches it
    res = _verify(report)
    assert not res.ok
    assert any("report.md: differs from the report re-rendered" in m for m in res.mismatches), res.mismatches
    assert any("0.123" in m for m in res.mismatches)


def test_verify_fails_on_an_edited_verdict(report):
    p = report["dir"] / "verdict.json"
    v = json.loads(p.read_text())
    v["hypotheses"][0]["statistics"][0]["values"]["mean"] += 0.01
    p.write_text(json.dumps(v))
    res = _verify(report)
    assert any(m.startswith("verdict.json: altered") for m in res.mismatches)
    _rehash(report["dir"], "verdict.json")
    res = _verify(report)
    assert any("verdict differs from its re-computation at $.hypotheses[0].statistics[0].values.mean" in m
               for m in res.mismatches), res.mismatches


def test_verify_fails_on_an_edited_or_replaced_data_file(report):
    f = sorted((report["data"] / "quality").glob("*.parquet"))[0]
    import pyarrow.parquet as pq

    t = pq.read_table(f)
    meta = t.schema.metadata
    d = t.column("delta_ppl_pct").to_pylist()
    t = t.set_column(t.schema.get_field_index("delta_ppl_pct"), "delta_ppl_pct", pa.array([d[0] + 0.2]))
    pq.write_table(t.replace_schema_metadata(meta), f)
    res = _verify(report)
    assert any(m.startswith(f"data file altered: quality/{f.name}") for m in res.mismatches), res.mismatches


def test_verify_fails_on_a_data_file_added(report):
    write_data(report["data"], report["sha"], {(9, 64, 0.5): 5.0})
    res = _verify(report)
    assert any(m.startswith("data file not in the verdict's manifest") for m in res.mismatches), res.mismatches


def test_verify_fails_on_a_missing_data_file(report):
    f = sorted((report["data"] / "quality").glob("*.parquet"))[-1]
    f.unlink()
    res = _verify(report)
    assert any(m.startswith(f"data file missing: quality/{f.name}") for m in res.mismatches), res.mismatches


def test_verify_fails_on_a_verdict_from_another_plan_hash(report):
    p = report["dir"] / "verdict.json"
    v = json.loads(p.read_text())
    _, other_sha = make_lock(report["dir"].parent / "other", title_extra=" (changed)")
    v["plan"]["sha256"] = other_sha
    p.write_text(json.dumps(v))
    _rehash(report["dir"], "verdict.json")
    res = _verify(report)
    assert any(m.startswith(f"plan hash: the stored verdict is from plan sha256 {other_sha}") for m in res.mismatches), \
        res.mismatches


def test_verify_fails_on_an_edited_html_or_plot(report):
    h = report["dir"] / "report.html"
    html = h.read_text()
    b64 = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html).group(1)
    h.write_text(html.replace(b64, b64[:-8] + "AAAAAAA="))
    _rehash(report["dir"], "report.html")
    res = _verify(report)
    assert any("embedded plot image differs" in m for m in res.mismatches), res.mismatches


def test_verify_of_a_moved_report_tree(tmp_path, report):
    """Recorded paths are also relative: a copied tree (report + data + lock) verifies."""
    dst = tmp_path / "moved"
    dst.mkdir()
    for name in ("rep", "data", "plan"):
        src = tmp_path / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    shutil.rmtree(tmp_path / "data")
    res = V.verify_report(dst / "rep")
    assert res.ok, res.mismatches


def test_cli_render_and_verify(tmp_path, report):
    """Through the root `dcr` app, from a verdict file with sorted keys (as `dcr verdict` writes)."""
    from typer.testing import CliRunner

    from dcr.analysis.engine import verdict_json
    from dcr.cli import app

    vpath = tmp_path / "v.json"
    vpath.write_text(verdict_json(report["verdict"]))
    r = CliRunner().invoke(app, ["report", "--verdict", str(vpath), "--out", str(tmp_path / "c"),
                                 "--plan", str(report["lock"]), "--data", str(report["data"])])
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("report.html")
    r = CliRunner().invoke(app, ["report", "verify", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "OK:" in r.output
    (tmp_path / "c" / "report.md").write_text("tampered\n")
    r = CliRunner().invoke(app, ["report", "verify", str(tmp_path / "c")])
    assert r.exit_code == 1
    assert "MISMATCH: report.md" in r.output
    other, _ = make_lock(tmp_path / "other", title_extra=" (changed)")
    r = CliRunner().invoke(app, ["report", "--verdict", str(vpath), "--out", str(tmp_path / "d"),
                                 "--plan", str(other), "--data", str(report["data"])])
    assert r.exit_code == 1 and "refusing to render it" in r.output
    assert f"plan hash: the stored verdict is from plan sha256 {report['sha']}, the lock {other} has" in r.output
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- the seed-v3 example


def test_seed_v3_example_reports_render_flag_transcription_and_verify(tmp_path):
    from dcr.analysis.seed_v3 import PLAN_NAMES, PUBLISHED_JSON, run_example

    verdicts = run_example(tmp_path, PUBLISHED_JSON)
    for name in PLAN_NAMES:
        rep = tmp_path / "reports" / name
        html = R.render_report(verdicts[name], rep, data_dir=tmp_path / "data" / name,
                               lock_path=tmp_path / "plans" / f"{name}.lock.yaml")
        text = html.read_text()
        assert 'id="flag-transcribed"' in text and "TRANSCRIBED SUMMARY, NOT RAW DATA" in text
        for h in verdicts[name]["hypotheses"]:
            assert f"Hypothesis {h['id']} → <span class=\"label\">{h['label']}</span>" in text
        res = V.verify_report(rep)
        assert res.ok, (name, res.mismatches)
    md = (tmp_path / "reports" / "hero-recommended" / "report.md").read_text()
    assert "OVERLAPPING WINDOWS" in md and "| hero_tier_upper_bound | decided | **STANDARD** |" in md
    names = {p["name"] for p in json.loads((tmp_path / "reports" / "causal-as-run" / R.MANIFEST_NAME).read_text())["plots"]}
    assert names == {"summary_cis"}


# ----------------------------------------------------------------------------- plots, unit level


def _tables():
    import pandas as pd

    rng = np.random.default_rng(1)
    q = pd.DataFrame([{"window_index": w, "N": N, "coverage": c, "delta_ppl_pct": 0.5 * c ** -1 * N ** -0.3 + 0.01 * w}
                      for w in range(3) for N in (256, 1024, 4096) for c in (0.1, 0.3)])
    rs = pd.DataFrame([{"variant": v, "seed": s, "N": N, "layer": 0, "head": 0, "prompt": p,
                        "entropy": (0.39 if v == "trained" else 1.0) * math.log(N) + rng.normal(0, 0.05)}
                       for v in ("trained", "default_init") for s in (0, 1) for N in (256, 512, 1024) for p in range(3)])
    ca = pd.DataFrame([{"delta_target": d, "d_nll": 0.01 * d + rng.normal(0, 0.01), "prompt": p, "layer": p % 2, "head": 1}
                       for d in (0.25, 0.5, 1.0) for p in range(8)])
    la = pd.DataFrame([{"level": "op", "N": N, "B": 1, "coverage": c, "session": s, "rep": r, "arm": a,
                        "order_index": 0, "ms": (1.0 if a == "dense" else 0.8 + c) * N / 1024 + rng.normal(0, 0.01)}
                       for N in (1024, 4096) for c in (0.1, 0.3) for s in range(2) for r in range(3)
                       for a in ("dense", "sparse")])
    return {"quality": q, "random_spectrum": rs, "causal": ca, "latency": la}


def test_each_plot_draws_from_its_data_and_skips_without_it():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from dcr.reports import plots as P

    fit = {"id": "fit", "kind": "ols_loglinear", "params": {"x": "N", "x_transform": "ln"},
           "values": {"slope": 0.39, "intercept": 0.0, "slope_low": 0.3, "slope_high": 0.5}, "error": None}
    dose = {"id": "dr", "kind": "dose_response", "params": {"x": "delta_target"},
            "values": {"slope": 0.01, "slope_low": 0.0, "slope_high": 0.02}, "error": None}
    ratio = {"id": "r", "kind": "ratio_of_medians", "params": {},
             "values": {"ratio": 1.1, "low": 1.0, "high": 1.2}, "error": None}
    verdict = {"hypotheses": [
        {"id": "q", "producer": "quality", "metric": "delta_ppl_pct", "select": {"N": 4096, "coverage": 0.3},
         "statistics": [], "rules_checked": [{"label": "STRICT", "conditions": [{"stat": "m.mean", "op": "<=", "value": 0.5}]}]},
        {"id": "e", "producer": "random_spectrum", "metric": "entropy", "select": {"variant": "trained"}, "statistics": [fit]},
        {"id": "d", "producer": "causal", "metric": "d_nll", "select": {}, "statistics": [dose]},
        {"id": "l", "producer": "latency", "metric": "ms", "select": {}, "statistics": [ratio]},
    ]}
    tables = _tables()
    expected = {"per_window_dppl", "entropy_vs_lnN", "dppl_vs_N", "causal_effect", "dose_response", "latency_ratio",
                "quality_vs_speed"}
    drawn = set()
    for name, _, fn in P.PLOTS:
        res = fn(verdict, tables, plt, {})
        if res is not None:
            drawn.add(name)
            plt.close(res[0])
        assert fn(verdict, {}, plt, {}) is None  # no data: no plot, no error
    assert drawn == expected
    w = P.latency_wide(tables["latency"])
    assert len(w) == 8
    np.testing.assert_allclose(w["ratio"], 1.0 / (0.8 + w["coverage"]), rtol=0.05)  # dense ms / sparse ms


def test_demo_plan_with_synthetic_measurements_renders_all_its_plots_and_verifies(tmp_path):
    """The shipped demo registration over synthetic rows of every producer it registers (quality,
    random_spectrum, causal): real lock, real engine, every plot its data allow, verify passes."""
    from dcr.prereg.measurements import expected_cells
    from dcr.prereg.lock import load_locked

    shutil.copy(Path(__file__).resolve().parents[2] / "prereg" / "registrations" / "demo.yaml", tmp_path / "demo.yaml")
    lock, sha, _ = lock_plan(tmp_path / "demo.yaml")
    plan = load_locked(lock).plan
    rng = np.random.default_rng(0)
    data = tmp_path / "data"

    def part(producer, cell, cols):
        write_part(data, producer=producer, producer_version="0.1", prereg_sha256=sha, cell=cell,
                   table=pa.table(cols), environment={"gpu": None, "git_commit": "abc", "git_dirty": True},
                   model={"id": "reference-model", "revision": None, "weights_random": False},
                   corpus={"name": "heldout", "sha256": "0" * 64})

    for c in expected_cells(plan, "quality"):
        d = 2.0 * (0.15 / c["coverage"]) * c["N"] ** -0.4 + rng.normal(0, 0.03)
        part("quality", c, _quality_table(c["window_index"], c["N"], c["coverage"], d).to_pydict())
    for c in expected_cells(plan, "random_spectrum"):
        a = {"trained": 0.4, "default_init": 1.0, "scale_matched": 0.8}[c["variant"]]
        rows = [(l, h, p) for l in range(2) for h in range(2) for p in range(4)]
        part("random_spectrum", c, {
            "variant": [c["variant"]] * len(rows), "seed": [c["seed"]] * len(rows), "layer": [r[0] for r in rows],
            "head": [r[1] for r in rows], "prompt": [r[2] for r in rows], "N": [c["N"]] * len(rows),
            "entropy": list(a * np.log(c["N"]) + rng.normal(0, 0.1, len(rows)))})
    for c in expected_cells(plan, "causal"):
        d = float(rng.normal(0.002, 0.01))
        part("causal", c, {
            "layer": [c["layer"]], "head": [c["head"]], "prompt": [c["prompt"]], "N": [c["N"]], "nll_base": [3.0],
            "nll_treat": [3.0 + d], "nll_ctrl": [3.0], "d_nll": [d], "delta_h_t": [0.25], "delta_h_c": [0.001],
            "norm_ratio": [1.0], "fd_error": [1e-6], "ls_converged": [True], "ls_iterations": [5], "d_gap": [0.0],
            "dense_fallback": [False]})
    verdict = compute_verdict(lock, data)
    html = R.render_report(verdict, tmp_path / "rep", data_dir=data, lock_path=lock)
    names = [p["name"] for p in json.loads((tmp_path / "rep" / R.MANIFEST_NAME).read_text())["plots"]]
    assert names == ["per_window_dppl", "entropy_vs_lnN", "dppl_vs_N", "causal_effect"]
    assert html.read_text().count('src="data:image/png;base64,') == 4
    assert "RANDOM" not in html.read_text().split("<h2")[0]  # trained weights: no random-weights banner
    res = V.verify_report(tmp_path / "rep")
    assert res.ok, res.mismatches
