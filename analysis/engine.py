"""The verdict engine: locked plan + measurement folder -> verdict (a JSON-ready dict).

Public API:

* :func:`compute_verdict(lock_path, data_dir) -> dict` — deterministic: same inputs give the same
  dict apart from ``created_at`` (resampling is seeded; files are read in sorted order).
* :func:`verdict_json(verdict) -> str` — the stable serialisation (sorted keys, 2-space indent,
  NaN -> null, ±inf -> "inf"/"-inf").

The format is documented in docs/verdict-format.md.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcr.analysis.decide import ERROR, INSUFFICIENT, INVALID, decide
from dcr.analysis.loading import Measurements, file_manifest, load_measurements, positions_table
from dcr.prereg.budget import DEFAULT_OPERATIONS, estimate
from dcr.prereg.measurements import ENVIRONMENT_KEYS, POSITION_PREFIX, cell_json, cell_selected, expected_cells
from dcr.prereg.provenance import sha256_file, versions
from dcr.prereg.statistics import InsufficientData, MultiplicityAdjusted, StatisticError, validate_params

FORMAT = "dcr-verdict"
FORMAT_VERSION = 1
ENGINE_VERSION = "2"  # bump when any computation changes


# ------------------------------------------------------------------------------- lock


def _load_locked(lock_path: str | Path) -> dict[str, Any]:
    """{plan, sha256, lock (metadata), amendments (chain)} of a verified lock file."""
    from dcr.prereg.lock import load_locked

    got = load_locked(lock_path, search_dirs=[Path(lock_path).parent])
    lock = {"locked_at": got.locked_at, "tool": got.tool, "git": got.git, "source": got.source,
            "flags": got.flags, "parent": got.parent}
    chain = [{"sha256": p.sha256, "version": p.plan.study.version, "locked_at": p.locked_at,
              "reason": None if p.plan.amends is None else p.plan.amends.reason} for p in got.parents]
    return {"plan": got.plan, "sha256": got.sha256, "lock": _plain(lock), "amendments": chain}


def _plain(v: Any) -> Any:
    if hasattr(v, "model_dump"):
        return v.model_dump(mode="json")
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    return v


# ------------------------------------------------------------------------------- selection


def _select(df: pd.DataFrame, select: dict[str, Any]) -> pd.DataFrame:
    if not len(df):
        return df
    mask = np.ones(len(df), dtype=bool)
    for col, want in select.items():
        if col not in df.columns:
            raise StatisticError(f"select names column '{col}', which the table does not have")
        vals = df[col]
        mask &= (vals.isin(want) if isinstance(want, list) else (vals == want)).to_numpy(bool)
    return df[mask]


def _cells_text(cells: list[dict[str, Any]], limit: int = 5) -> str:
    shown = "; ".join(cell_json(c) for c in cells[:limit])
    return shown + (f"; … and {len(cells) - limit} more" if len(cells) > limit else "")


def completeness(h: Any, plan: Any, meas: Measurements) -> dict[str, Any]:
    """The cells hypothesis ``h`` could read: ``policy`` ("strict", or "partial_data" with its
    ``min_fraction`` and ``reason``), ``registered``, ``present``, ``missing`` / ``doubled`` (the
    cells, as in the cell report) and ``complete_enough`` (whether the policy lets it decide)."""
    select = dict(h.select)
    rep = meas.cells.get(h.producer, {})
    registered = [c for c in expected_cells(plan, h.producer) if cell_selected(c, select)]
    missing = [c for c in rep.get("missing", []) if cell_selected(c, select)]
    doubled = [d for d in rep.get("duplicated", []) if cell_selected(d["cell"], select)]
    present = len(registered) - len(missing)
    policy = h.partial_data
    out: dict[str, Any] = {"policy": "strict" if policy is None else "partial_data",
                           "registered": len(registered), "present": present, "missing": missing, "doubled": doubled}
    if policy is None:
        out["complete_enough"] = not missing
    else:
        out.update(min_fraction=policy.min_fraction, reason=policy.reason,
                   complete_enough=bool(registered) and present / len(registered) >= policy.min_fraction)
    return out


# ------------------------------------------------------------------------------- per hypothesis


def _error(status: str, message: str) -> dict:
    return {"status": status, "message": message}


def _run_statistic(spec: Any, x: np.ndarray, rows: pd.DataFrame, all_rows: pd.DataFrame) -> dict:
    rec: dict[str, Any] = {"id": spec.id, "kind": spec.kind, "params": dict(spec.params), "values": None, "error": None}
    try:
        vals = validate_params(spec.kind, spec.params).compute(x, rows, all_rows)
        warns = vals.pop("warnings", [])
        rec["values"], rec["warnings"] = vals, warns
    except InsufficientData as exc:
        rec["error"] = _error("insufficient_data", str(exc))
    except StatisticError as exc:
        rec["error"] = _error("error", str(exc))
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:  # library refusal: name it
        rec["error"] = _error("error", f"{type(exc).__name__}: {exc}")
    return rec


def _completeness_reason(comp: dict[str, Any], ignored_tables: list[str]) -> str | None:
    """Why the cells of a hypothesis do not let it decide (None when they do)."""
    if comp["doubled"]:
        why = "; ".join(f"{cell_json(d['cell'])} ({d['reason']})" for d in comp["doubled"][:5])
        more = f"; … and {len(comp['doubled']) - 5} more" if len(comp["doubled"]) > 5 else ""
        return (f"{len(comp['doubled'])} registered cell(s) this selection reads are duplicated: {why}{more}"
                + (f"; {len(comp['missing'])} more are missing: {_cells_text(comp['missing'])}" if comp["missing"] else ""))
    if comp["complete_enough"]:
        return None
    n, k = comp["registered"], len(comp["missing"])
    if comp["policy"] == "strict":
        why = (f"{k} of the {n} registered cell(s) this selection reads are missing: {_cells_text(comp['missing'])} "
               "(strict completeness: the plan registers no partial_data policy for this hypothesis)")
    else:
        why = (f"{comp['present']} of the {n} registered cell(s) this selection reads are present, below the "
               f"registered partial_data min_fraction {comp['min_fraction']}; missing: {_cells_text(comp['missing'])}")
    if ignored_tables:
        why += (f"; not read: {', '.join(ignored_tables)} (files in the data folder that are not part files; "
                "a table of figures goes in through `dcr import`)")
    return why


def _hypothesis(h: Any, plan: Any, meas: Measurements) -> tuple[dict, dict[str, dict]]:
    comp = completeness(h, plan, meas)
    base = {"id": h.id, "statement": h.statement, "producer": h.producer, "metric": h.metric,
            "select": dict(h.select), "nonfinite": h.nonfinite, "family": h.family,
            "missing_cells": comp["missing"], "doubled_cells": comp["doubled"],
            "completeness": {k: v for k, v in comp.items() if k not in ("missing", "doubled")}}
    table = meas.tables.get(h.producer, pd.DataFrame({"_file": pd.Series([], dtype=object)}))
    base["data_kind"] = "none"
    results: dict[str, dict] = {}

    def early(status: str, label: str, reason: str, **extra) -> tuple[dict, dict]:
        stats = [{"id": s.id, "kind": s.kind, "params": dict(s.params), "values": None,
                  "error": _error(status if status != "invalid" else "not_computed", reason)} for s in h.statistics]
        for s in stats:
            results[s["id"]] = s
        return ({**base, **extra, "status": status, "label": label, "reason": reason, "statistics": stats,
                 "gates": [], "rule": None, "fallback": False, "rules_checked": []}, results)

    try:
        if h.metric.startswith(POSITION_PREFIX):
            if h.producer != "quality":
                raise StatisticError("per-position metrics exist for the quality producer only")
            table = positions_table(table) if len(table) else table
            metric = h.metric[len(POSITION_PREFIX):]
        else:
            metric = h.metric
        sel = _select(table, dict(h.select))
        if len(sel) and metric not in sel.columns:
            raise StatisticError(f"metric column '{metric}' is not in the {h.producer} table")
    except Exception as exc:  # noqa: BLE001 - a broken selection is reported, not raised
        return early("error", ERROR, str(exc), n_rows=0, n_nonfinite=0)
    files = sorted(set(sel["_file"])) if len(sel) else []
    transcribed = {r.path for r in meas.files if r.transcribed is not None}
    base["data_kind"] = ("transcribed" if files and all(f in transcribed for f in files)
                         else "mixed" if any(f in transcribed for f in files) else
                         "measurement" if files else "none")
    why = _completeness_reason(comp, meas.ignored_tables)
    if why is not None:
        status, label = ("invalid", INVALID) if comp["doubled"] else ("insufficient_data", INSUFFICIENT)
        return early(status, label, why, n_rows=len(sel), n_nonfinite=0)
    if not len(sel):
        return early("insufficient_data", INSUFFICIENT, "the selection is empty (no rows match select)",
                     n_rows=0, n_nonfinite=0)
    x_all = pd.to_numeric(sel[metric], errors="coerce").to_numpy(np.float64)
    finite = np.isfinite(x_all)
    n_nonfinite = int((~finite).sum())
    extra = {"n_rows": len(sel), "n_nonfinite": n_nonfinite}
    if n_nonfinite and h.nonfinite == "error":
        return early("invalid", INVALID, f"{n_nonfinite} of {len(sel)} rows have a non-finite '{metric}' "
                     "and the plan registers nonfinite: error", **extra)
    x, rows = x_all[finite], sel[finite]
    stats = []
    for spec in h.statistics:
        if spec.kind == "multiplicity_adjusted":
            rec = {"id": spec.id, "kind": spec.kind, "params": dict(spec.params), "values": None,
                   "error": _error("error", "pending")}
        else:
            rec = _run_statistic(spec, x, rows, sel)
        stats.append(rec)
        results[spec.id] = rec
    return {**base, **extra, "statistics": stats}, results


def _multiplicity(plan: Any, all_results: dict[str, dict[str, dict]]) -> list[dict]:
    fams = []
    for f in plan.multiplicity:
        sid, _, field = f.p_value.partition(".")
        members, problems = [], []
        for hid in f.hypotheses:
            r = all_results[hid].get(sid)
            v = None if r is None or r["values"] is None else r["values"].get(field)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                why = (r or {}).get("error") or {"message": "no value"}
                problems.append(f"{hid}: {why['message']}")
            members.append({"hypothesis": hid, "p_raw": v})
        fam = {"id": f.id, "method": f.method, "alpha": f.alpha, "p_value": f.p_value, "members": members}
        if problems:
            fam.update(status="insufficient_data",
                       reason="not adjusted: a member's p-value is unavailable (" + "; ".join(problems) + ")")
            for m in members:
                m.update(p_adjusted=None, reject=None)
        else:
            padj, rej = MultiplicityAdjusted.adjust([m["p_raw"] for m in members], f.method, f.alpha)
            for m, pa, rj in zip(members, padj, rej):
                m.update(p_adjusted=pa, reject=rj)
            fam.update(status="computed", reason=None)
        fams.append(fam)
    return fams


def _fill_adjusted(h: Any, results: dict[str, dict], fams: list[dict]) -> None:
    for spec in h.statistics:
        if spec.kind != "multiplicity_adjusted":
            continue
        rec = results[spec.id]
        if rec["values"] is not None:
            continue
        fam = next((f for f in fams if f["id"] == spec.params["family"]), None)
        member = None if fam is None else next((m for m in fam["members"] if m["hypothesis"] == h.id), None)
        if member is None:
            rec["error"] = _error("error", f"hypothesis {h.id} is not a member of family {spec.params['family']}")
        elif member["p_adjusted"] is None:
            rec["error"] = _error("insufficient_data", fam["reason"])
        else:
            rec["values"] = {"p_raw": member["p_raw"], "p_adjusted": member["p_adjusted"], "reject": member["reject"]}
            rec["error"] = None


# ------------------------------------------------------------------------------- top level


def _compute_budget(plan: Any) -> dict[str, Any]:
    """``{"compute_budget": {operations, reason, estimated_operations, default_operations}}`` when
    the plan states a compute budget (prereg.budget), else {}."""
    if plan.compute_budget is None:
        return {}
    return {"compute_budget": {**_plain(plan.compute_budget), "default_operations": DEFAULT_OPERATIONS,
                               "estimated_operations": sum(c.operations for c in estimate(plan))}}


def library_versions() -> dict[str, str | None]:
    return {"python": platform.python_version(),
            **versions("numpy", "scipy", "pandas", "pyarrow", "statsmodels", "pingouin", "pydantic", "dcr-prereg"),
            "engine": ENGINE_VERSION}


def file_provenance(entry: dict[str, Any], lock_file_sha256: str) -> dict[str, Any]:
    """What a data file records of where it came from: ``lock`` — "this_lock" (its ``dcr.lock``
    names the lock file of this verdict), "other_lock" (another lock file of the same plan hash)
    or "not_recorded"; ``environment_missing`` — the keys of ``ENVIRONMENT_KEYS`` its
    ``dcr.environment`` lacks."""
    lock = entry.get("lock")
    state = ("not_recorded" if not isinstance(lock, dict) or not lock.get("file_sha256")
             else "this_lock" if lock["file_sha256"] == lock_file_sha256 else "other_lock")
    env = entry.get("environment") if isinstance(entry.get("environment"), dict) else {}
    return {"lock": state, "environment_missing": [k for k in ENVIRONMENT_KEYS if k not in env]}


def compute_verdict(lock_path: str | Path, data_dir: str | Path) -> dict[str, Any]:
    """Verdict of the locked plan at ``lock_path`` over the measurement folder ``data_dir``.

    Raises :class:`analysis.loading.MeasurementError` (corrupt/wrong-schema files),
    :class:`analysis.loading.PreregMismatchError` (files of another plan) and the lock loader's
    errors (bad or altered lock). Everything else — missing cells, empty selections, failed gates,
    too little data — is reported inside the verdict.
    """
    locked = _load_locked(lock_path)
    plan, sha = locked["plan"], locked["sha256"]
    meas = load_measurements(data_dir, plan, sha)
    hyps, all_results = [], {}
    for h in plan.hypotheses:
        rec, results = _hypothesis(h, plan, meas)
        hyps.append(rec)
        all_results[h.id] = results
    fams = _multiplicity(plan, all_results)
    for h, rec in zip(plan.hypotheses, hyps):
        if "status" in rec:  # decided early (invalid / insufficient / error)
            continue
        _fill_adjusted(h, all_results[h.id], fams)
        rec.update(decide(h, all_results[h.id]))
        comp = rec["completeness"]
        if rec["status"] == "decided" and comp["present"] < comp["registered"]:
            rec["reason"] += (f" (decided on partial data: {comp['present']} of {comp['registered']} registered "
                              f"cells, registered partial_data min_fraction {comp['min_fraction']})")
    lock = locked["lock"]
    lock_sha = sha256_file(lock_path)
    files = [{**f, "provenance": file_provenance(f, lock_sha)} for f in file_manifest(meas)]
    verdict = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "plan": {"id": plan.study.id, "version": plan.study.version, "title": plan.study.title,
                 "sha256": sha, "locked_at": lock.get("locked_at"), "lock": lock, "lock_file_sha256": lock_sha,
                 "amends": _plain(plan.amends), "amendment_chain": locked["amendments"],
                 **_compute_budget(plan)},
        "libraries": library_versions(),
        "data": {"files": files, "ignored_files": meas.ignored,
                 "n_files": len(meas.files), "n_transcribed": sum(r.transcribed is not None for r in meas.files)},
        "cells": meas.cells,
        "hypotheses": hyps,
        "multiplicity": fams,
        "summary": {h["id"]: h["label"] for h in hyps},
    }
    return _sanitize(verdict)


def _sanitize(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _sanitize(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_sanitize(x) for x in v]
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    return v


def verdict_json(verdict: dict[str, Any]) -> str:
    """Stable text of a verdict: sorted keys, indent 2, trailing newline."""
    return json.dumps(verdict, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


__all__ = ["compute_verdict", "verdict_json", "FORMAT_VERSION", "library_versions"]
