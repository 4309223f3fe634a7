"""Render a verdict (the engine's JSON, see docs/verdict-format.md) into a report folder.

A report folder holds::

    report.md              Markdown report (a pure function of the verdict + the provenance below)
    report.html            self-contained HTML: the same content, plots embedded as base64 PNG,
                           inline CSS, no scripts, no network fetches
    verdict.json           the verdict the report was rendered from
    plots/*.png            the plots (linked from the Markdown, embedded in the HTML)
    report.manifest.json   provenance: lock path, data dir, hashes of every file above,
                           renderer versions -- what ``dcr report verify`` re-checks

Numbers are formatted by one function (:func:`fmt`), so a re-rendered report is byte-identical
when the verdict is. Plan text (ids, labels, statements, reasons) is untrusted: autoescaped in the
HTML, backslash-escaped in the Markdown, control and bidirectional-formatting characters shown as
escapes in both.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from dcr.prereg.loading import visible_text
from dcr.prereg.provenance import sha256_file, versions

REPORT_FORMAT = 1
MD_NAME, HTML_NAME, VERDICT_NAME, MANIFEST_NAME, PLOTS_DIR = (
    "report.md", "report.html", "verdict.json", "report.manifest.json", "plots")
_TEMPLATES = Path(__file__).resolve().parent / "templates"


class ReportError(ValueError):
    """The verdict disagrees with its plan or data (from another plan, a data file missing or
    altered, a number that does not re-compute): a check found differences."""


class ReportInputError(ValueError):
    """An input that cannot be used (unreadable or malformed verdict, a folder that is not a report,
    a missing plan lock or data folder); the message names the file and the problem."""


# --------------------------------------------------------------------------- small helpers


def fmt(x: Any) -> str:
    """The one number format of the report: 6 significant digits, ints exact, NaN/inf spelled."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "+inf" if x > 0 else "−inf"
        if x == 0:
            return "0"
        if 1e-4 <= abs(x) < 1e6:
            return f"{x:.6g}"
        return f"{x:.4e}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in x) + "]"
    if isinstance(x, dict):  # sorted: the text must not depend on how the dict was built
        return "{" + ", ".join(f"{k}: {fmt(x[k])}" for k in sorted(x, key=str)) + "}"
    return str(x)


# CommonMark: escape what could start markup (emphasis, code, links, HTML, table cells); an
# underscore inside a word never does, so snake_case ids stay readable.
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def md_escape(x: Any) -> str:
    """Escape untrusted text for a Markdown table cell or line: no HTML, no links, no breaks."""
    text = x if isinstance(x, str) else fmt(x)
    text = " ".join(text.split())  # newlines would break a table row
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_code(x: Any) -> str:
    """Untrusted text for inside a Markdown code span: no backticks, no line breaks."""
    text = x if isinstance(x, str) else fmt(x)
    return " ".join(text.replace("`", "'").replace("|", "\\|").split())  # GFM tables: \| even in code


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True) + "\n"


# --------------------------------------------------------------------------- the view model
# Everything the templates read goes through `build_view`, so that a change of the verdict
# format (docs/verdict-format.md) touches this function only.


@dataclass
class Threshold:
    where: str  # "gate g1" or "rules[0] → STRICT"
    op: str
    value: Any


@dataclass
class StatView:
    id: str
    kind: str
    params: dict
    values: dict | None
    error: str | None
    warnings: list
    thresholds: dict[str, list[Threshold]] = field(default_factory=dict)  # field -> thresholds


def _registered_conditions(h: dict, decision: dict | None) -> dict[str, list[Threshold]]:
    """``'<stat>.<field>'`` → every registered threshold on it: the gates, and the decision rules
    (from the locked plan when known, else those the engine evaluated)."""
    out: dict[str, list[Threshold]] = {}
    for g in h.get("gates") or []:
        out.setdefault(g["stat"], []).append(Threshold(f"gate {g['id']}", g["op"], g["value"]))
    rules = (decision or {}).get("rules")
    if rules is None:
        rules = [{"label": r["label"], "when": r["conditions"]} for r in h.get("rules_checked") or []]
    for i, rule in enumerate(rules):
        for c in rule.get("when") or []:
            out.setdefault(c["stat"], []).append(Threshold(f"rules[{i}] → {rule['label']}", c["op"], c["value"]))
    return out


def _weights_random(entry: dict) -> bool:
    return bool((entry.get("model") or {}).get("weights_random"))


def _transcribed(entry: dict) -> bool:
    """Data that are transcribed summaries (e.g. published figures), not raw measurements."""
    return bool(entry.get("transcribed"))


def _error_text(err: Any) -> str | None:
    if err is None:
        return None
    if isinstance(err, dict):
        return f"{err.get('status', 'error')}: {err.get('message', '')}"
    return str(err)


def _ordered_values(kind: str, values: dict | None) -> dict | None:
    """A statistic's values in the registry's order of its outputs, then any others sorted."""
    from dcr.prereg.statistics import KINDS

    if values is None:
        return None
    known = [k for k in (KINDS[kind].outputs if kind in KINDS else ()) if k in values]
    return {k: values[k] for k in known + sorted(k for k in values if k not in known)}


def build_view(verdict: dict, provenance: dict, plan_decisions: dict[str, dict] | None = None) -> dict:
    """Normalise a verdict into what the templates show. Pure: no I/O, no clock.

    ``plan_decisions``: hypothesis id → its registered ``decision`` ({rules, fallback}) from the
    locked plan, to show every registered threshold (the verdict holds the rules it evaluated).
    Every mapping is read in a fixed order, so a verdict read back from JSON (sorted keys) and
    the engine's dict render to the same text.
    """
    from dcr.analysis.loading import why_not_read

    verdict = json.loads(json.dumps(verdict, sort_keys=True, allow_nan=True))
    plan = verdict.get("plan") or {}
    flags = (plan.get("lock") or {}).get("flags") or {}
    hyps = []
    for h in verdict.get("hypotheses") or []:
        decision = (plan_decisions or {}).get(h.get("id"))
        by_stat = _registered_conditions(h, decision)
        stats = []
        for s in h.get("statistics") or []:
            sv = StatView(s["id"], s.get("kind", "?"), s.get("params") or {},
                          _ordered_values(s.get("kind", "?"), s.get("values")),
                          _error_text(s.get("error")), list(s.get("warnings") or []))
            for key, ths in by_stat.items():
                sid, _, fld = key.partition(".")
                if sid == sv.id:
                    sv.thresholds[fld] = ths
            stats.append(sv)
        rule = h.get("rule")
        rule_text = (f"rules[{rule['index']}]" if rule else "fallback" if h.get("fallback") else "none")
        hyps.append({
            "id": h.get("id"), "statement": h.get("statement", ""), "producer": h.get("producer"),
            "metric": h.get("metric"), "select": h.get("select") or {}, "status": h.get("status"),
            "label": h.get("label"), "n_rows": h.get("n_rows"), "n_nonfinite": h.get("n_nonfinite"),
            "nonfinite_policy": h.get("nonfinite"), "data_kind": h.get("data_kind"),
            "missing_cells": h.get("missing_cells") or [], "doubled_cells": h.get("doubled_cells") or [],
            "completeness": _completeness_text(h.get("completeness") or {}),
            "statistics": stats, "gates": h.get("gates") or [], "rule": rule, "rule_text": rule_text,
            "fallback": h.get("fallback"), "reason": h.get("reason", ""), "family": h.get("family"),
            "decision": decision, "counts": _counts(h.get("statistics") or []),
        })
    data = verdict.get("data") or {}
    files = [{**f, "weights_random": _weights_random(f), "transcribed": _transcribed(f),
              "env_short": _env_short(f.get("environment") or {}), "model_short": _model_short(f.get("model") or {}),
              "origin": _file_origin(f.get("provenance") or {}),
              "source": (f.get("transcribed") or {}).get("source") if _transcribed(f) else None}
             for f in data.get("files") or []]
    cell_rows, deviations = [], []
    for prod, rep in (verdict.get("cells") or {}).items():
        cell_rows.append({"producer": prod, "expected": rep.get("expected"), "found": rep.get("found"),
                          **{k: len(rep.get(k) or []) for k in ("missing", "duplicated", "unexpected")}})
        for c in rep.get("missing") or []:
            deviations.append({"kind": f"{prod}: cell missing", "what": fmt(c)})
        for c in rep.get("duplicated") or []:
            deviations.append({"kind": f"{prod}: cell duplicated",
                               "what": f"{fmt(c.get('cell'))}: {c.get('reason') or fmt(c.get('files'))}"})
        for c in rep.get("unexpected") or []:
            deviations.append({"kind": f"{prod}: cell not registered", "what": f"{fmt(c.get('cell'))} in {c.get('file')}"})
        for c in rep.get("claims_not_in_rows") or []:
            deviations.append({"kind": f"{prod}: transcribed claim not in the rows",
                               "what": f"{c.get('file')} claims {fmt(c.get('cells'))}, which its rows do not show (not counted)"})
        for c in rep.get("claims_unchecked") or []:
            deviations.append({"kind": f"{prod}: transcribed claim unchecked",
                               "what": f"{c.get('file')}: its rows carry no cell key; its claim of {fmt(c.get('cells'))} "
                                       "cell(s) is counted as declared"})
    for f in data.get("ignored_files") or []:
        deviations.append({"kind": "file ignored", "what": f"{f} ({why_not_read(f)})"})
    for h in hyps:
        if h["n_nonfinite"]:
            deviations.append({"kind": "nonfinite rows", "what": f"{h['id']}: {h['n_nonfinite']} row(s) of "
                               f"{h['metric']} not finite (policy: {h['nonfinite_policy']})"})
        if h["data_kind"] in ("transcribed", "mixed"):
            deviations.append({"kind": "transcribed data", "what": f"{h['id']}: reads {h['data_kind']} data"})
        if h["completeness"]["partial"]:
            deviations.append({"kind": "decided on partial data", "what": f"{h['id']}: {h['completeness']['text']}"})
        for s in h["statistics"]:
            if s.error:
                deviations.append({"kind": "statistic not computed", "what": f"{h['id']}.{s.id}: {s.error}"})
            for w in s.warnings:
                deviations.append({"kind": "statistic warning", "what": f"{h['id']}.{s.id}: {w}"})
    chain = list(reversed(plan.get("amendment_chain") or []))  # oldest first
    if plan.get("amends"):
        a = plan["amends"]
        deviations.append({"kind": "plan amendment", "what": f"this plan (v{plan.get('version')}) amends "
                           f"{a.get('parent_sha256')}: {a.get('reason')}"})
    overlap = flags.get("overlapping_windows") or []
    return {
        "format": verdict.get("format"), "format_version": verdict.get("format_version"),
        "created_at": verdict.get("created_at"),
        "plan": {"id": plan.get("id"), "version": plan.get("version"), "sha256": plan.get("sha256"),
                 "locked_at": plan.get("locked_at"), "title": plan.get("title"), "amends": plan.get("amends"),
                 "chain": chain, "flags": flags, "compute_budget": plan.get("compute_budget")},
        "hypotheses": hyps, "files": files, "cells": cell_rows,
        "any_random": any(f["weights_random"] for f in files) or bool(flags.get("weights_random")),
        "n_random": sum(f["weights_random"] for f in files),
        "any_transcribed": any(f["transcribed"] for f in files),
        "n_transcribed": sum(f["transcribed"] for f in files),
        "overlapping_windows": overlap,
        "libraries": verdict.get("libraries") or {},
        "multiplicity": verdict.get("multiplicity") or [],
        "deviations": deviations,
        "origin": _origin(plan, files),
        "provenance": provenance,
        "commands": _commands(provenance),
    }


def _completeness_text(comp: dict) -> dict:
    """{text, partial}: the cells a hypothesis read against those registered, and the policy."""
    if not comp:
        return {"text": "not recorded", "partial": False}
    policy = ("strict completeness (every registered cell, exactly once)" if comp.get("policy") == "strict" else
              f"registered partial_data: decide with at least {fmt(comp.get('min_fraction'))} of the cells "
              f"({comp.get('reason')})")
    present, registered = comp.get("present"), comp.get("registered")
    return {"text": f"{fmt(present)} of {fmt(registered)} registered cells present; policy: {policy}",
            "partial": comp.get("policy") != "strict" and present != registered and bool(comp.get("complete_enough"))}


_LOCK_STATES = {"this_lock": "recorded this lock", "other_lock": "recorded another lock file of this plan",
                "not_recorded": "no lock recorded"}


def _file_origin(prov: dict) -> dict:
    """{text, ok}: which lock a data file's producer recorded, and which environment keys it lacks."""
    state, missing = prov.get("lock", "not_recorded"), prov.get("environment_missing")
    env = ("environment not checked" if missing is None else "environment recorded" if not missing
           else "environment lacks " + ", ".join(missing))
    return {"text": f"{_LOCK_STATES.get(state, state)}; {env}", "ok": state == "this_lock" and missing == []}


def _origin(plan: dict, files: list[dict]) -> list[dict]:
    """Lines {text, ok} of the provenance section: where the lock was made, what the data files recorded."""
    git = (plan.get("lock") or {}).get("git")
    if not git:
        lines = [{"ok": False, "text": "The lock was not made inside a git repository: no commit records the "
                                       "plan's state."}]
    else:
        commit = git.get("commit")
        dirty = git.get("tree_dirty")
        lines = [{"ok": bool(commit) and bool(git.get("plan_committed")) and dirty is False,
                  "text": f"The lock was made inside a git repository at commit {commit or '— (no commit yet)'}; "
                          f"plan file committed: {fmt(git.get('plan_committed'))}; work tree: "
                          + ("clean" if dirty is False else "uncommitted changes" if dirty else "state not recorded")
                          + "."}]
    n = len(files)
    for state, what in _LOCK_STATES.items():
        k = sum((f.get("provenance") or {}).get("lock", "not_recorded") == state for f in files)
        if k:
            lines.append({"ok": state == "this_lock", "text": f"{k} of {n} data file(s): {what}."})
    k = sum((f.get("provenance") or {}).get("environment_missing") != [] for f in files)
    lines.append({"ok": not k, "text": f"{n - k} of {n} data file(s) recorded their producer's environment"
                                       + (f"; {k} lack some of its keys (see the data manifest)." if k else ".")})
    return lines


def _env_short(env: dict) -> str:
    keys = ("gpu", "driver", "cuda", "torch", "triton", "transformers", "git_commit", "git_dirty")
    parts = [f"{k}={str(env[k])[:12] if k == 'git_commit' and env[k] else fmt(env[k])}" for k in keys if k in env]
    return ", ".join(parts) if parts else fmt(env or None)


def _model_short(model: dict) -> str:
    keys = ("id", "revision", "source", "weights_random")
    parts = [f"{k}={fmt(model[k])}" for k in keys if k in model]
    return ", ".join(parts) if parts else fmt(model or None)


def _counts(stats: list) -> dict:
    """n, zeros and ties as reported by any statistic (wilcoxon reports zeros and ties)."""
    out: dict[str, Any] = {}
    for s in stats:
        for k in ("n", "n_used", "n_zeros", "n_ties", "n_a", "n_b", "n_clusters"):
            v = (s.get("values") or {}).get(k)
            if v is not None and k not in out:
                out[k] = v
    return out


def _commands(prov: dict) -> list[str]:
    lock = prov.get("lock_path") or "PLAN.lock.yaml"
    data = prov.get("data_dir") or "DATA_DIR"
    return [
        f"dcr prereg verify {lock}",
        f"dcr verdict --plan {lock} --data {data} --out verdict.json",
        f"dcr report --verdict verdict.json --plan {lock} --data {data} --out REPORT_DIR",
        "dcr report verify REPORT_DIR",
    ]


# --------------------------------------------------------------------------- rendering


def _visible(value: Any) -> Any:
    """Every text a template writes, with control and bidirectional-formatting characters shown as
    escapes (:func:`prereg.loading.visible_text`): the plan's own check refuses them, a report
    does not trust that it ran."""
    return type(value)(visible_text(value)) if isinstance(value, str) else value


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=autoescape, undefined=jinja2.StrictUndefined, finalize=_visible,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    env.filters["md"] = md_escape
    env.filters["mdcode"] = md_code
    env.filters["short"] = lambda s: (s or "?")[:12] + "…" if s else "—"
    return env


def render_markdown(view: dict, plots: list[dict]) -> str:
    return _env(False).get_template("report.md.j2").render(v=view, plots=plots)


def render_html(view: dict, plots: list[dict]) -> str:
    return _env(True).get_template("report.html.j2").render(v=view, plots=plots)


def strip_images(html: str) -> str:
    """The HTML with embedded image payloads replaced by a placeholder (for comparisons)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,…", html)


# --------------------------------------------------------------------------- inputs checks


def load_lock(lock_path: Path) -> tuple[str, dict[str, dict]]:
    """(plan sha256, hypothesis id → registered decision) of a lock file, verified by
    :func:`prereg.lock.load_locked` (which refuses a plain plan and an altered lock)."""
    from dcr.prereg.lock import load_locked

    got = load_locked(Path(lock_path), search_dirs=[Path(lock_path).parent])
    decisions = {h.id: h.decision.model_dump(mode="json") for h in got.plan.hypotheses}
    return got.sha256, decisions


def check_plan(verdict: dict, lock_path: Path) -> dict[str, dict]:
    """Refuse a verdict from another plan; return the lock's registered decisions."""
    want = (verdict.get("plan") or {}).get("sha256")
    try:
        have, decisions = load_lock(lock_path)
    except Exception as exc:  # noqa: BLE001 - PlanError, OSError, YAML errors: all refusals
        raise ReportError(f"the plan lock {lock_path} cannot be used: {type(exc).__name__}: {exc}") from None
    if want != have:
        raise ReportError(f"the verdict is from plan sha256 {want} but the lock {lock_path} "
                          f"has sha256 {have}: refusing to report it against this plan")
    return decisions


def check_data(verdict: dict, data_dir: Path) -> list[str]:
    """Problems with the data files named in the verdict's manifest ([] when all match)."""
    problems = []
    for f in (verdict.get("data") or {}).get("files") or []:
        p = Path(data_dir) / f["path"]
        if not p.is_file():
            problems.append(f"data file missing: {f['path']} (expected under {data_dir})")
        elif sha256_file(p) != f["sha256"]:
            problems.append(f"data file altered: {f['path']} has sha256 {sha256_file(p)}, "
                            f"the verdict recorded {f['sha256']}")
    return problems


# --------------------------------------------------------------------------- public entry point


def _rel(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def make_provenance(out_dir: Path, data_dir: Path | None, lock_path: Path | None) -> dict:
    prov: dict[str, Any] = {"lock_path": None, "lock_path_relative": None, "lock_file_sha256": None,
                            "data_dir": None, "data_dir_relative": None}
    if lock_path is not None:
        prov.update(lock_path=str(Path(lock_path).resolve()), lock_path_relative=_rel(lock_path, out_dir),
                    lock_file_sha256=sha256_file(Path(lock_path)))
    if data_dir is not None:
        prov.update(data_dir=str(Path(data_dir).resolve()), data_dir_relative=_rel(data_dir, out_dir))
    return prov


def render_all(verdict: dict, provenance: dict, data_dir: Path | None,
               plan_decisions: dict[str, dict] | None = None) -> tuple[str, str, list[dict]]:
    """(markdown, html, plots) for a verdict; plots drawn from ``data_dir`` when given."""
    from dcr.reports import plots as plots_mod

    plots = plots_mod.draw_all(verdict, data_dir, plan_decisions) if data_dir is not None else []
    for p in plots:
        p["b64"] = base64.b64encode(p["png"]).decode("ascii") if p["png"] else None
        p["file"] = f"{PLOTS_DIR}/{p['name']}.png" if p["png"] else None
    view = build_view(verdict, provenance, plan_decisions)
    return render_markdown(view, plots), render_html(view, plots), plots


def render_report(verdict: dict, out_dir, *, data_dir=None, lock_path=None) -> Path:
    """Render ``verdict`` into ``out_dir`` (created); return the path of the HTML report.

    With ``lock_path``, refuses a verdict from another plan hash; with ``data_dir``, refuses when a
    data file named in the verdict is missing or altered, and draws the plots from the data.
    Without them the report renders, but ``dcr report verify`` cannot re-compute it.
    """
    out = Path(out_dir)
    decisions = None
    if lock_path is not None:
        decisions = check_plan(verdict, Path(lock_path))
    if data_dir is not None:
        problems = check_data(verdict, Path(data_dir))
        if problems:
            raise ReportError("; ".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    provenance = make_provenance(out, data_dir, lock_path)
    md, html, plots = render_all(verdict, provenance, Path(data_dir) if data_dir is not None else None, decisions)
    (out / PLOTS_DIR).mkdir(exist_ok=True)
    for old in (out / PLOTS_DIR).glob("*.png"):
        old.unlink()
    for p in plots:
        if p["png"]:
            (out / p["file"]).write_bytes(p["png"])
    (out / MD_NAME).write_text(md, encoding="utf-8")
    (out / HTML_NAME).write_text(html, encoding="utf-8")
    (out / VERDICT_NAME).write_text(canonical_json(verdict), encoding="utf-8")
    manifest = {
        "report_format": REPORT_FORMAT,
        "provenance": provenance,
        "files": {name: sha256_file(out / name) for name in (MD_NAME, HTML_NAME, VERDICT_NAME)},
        "plots": [{"name": p["name"], "title": p["title"], "file": p["file"],
                   "sha256": hashlib.sha256(p["png"]).hexdigest() if p["png"] else None} for p in plots],
        "renderer": _renderer_versions(),
    }
    (out / MANIFEST_NAME).write_text(canonical_json(manifest), encoding="utf-8")
    return out / HTML_NAME


def _renderer_versions() -> dict:
    return versions("dcr-prereg", "jinja2", "matplotlib", "numpy", "pandas", "pyarrow")
