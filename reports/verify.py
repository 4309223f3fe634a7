"""`dcr report verify DIR`: re-compute a report from its plan and data, name every mismatch;
and :func:`render_verified`, which renders a verdict only when checks 2-4 find nothing (`dcr report`).

Checks, in order (each failure is one named line; all are collected, none stops the others
unless a later check cannot run without it):

1. the report folder is complete and its files hash as its manifest recorded;
2. the lock recorded in the manifest exists and its plan hash is the verdict's;
3. every data file named in the verdict exists under the data dir with the recorded sha256, and
   the data dir holds no part file the verdict does not name;
4. the verdict re-computed by the engine (``analysis.engine.compute_verdict``) from the lock and
   the data equals the stored verdict (floats to 1e-9 relative; only keys in ``VOLATILE`` and
   library versions may differ, the latter reported as notes);
5. the Markdown re-rendered from the re-computed verdict equals the stored Markdown, the HTML
   likewise (embedded images aside), and the plots re-drawn from the data equal the stored ones
   (byte-exact when the matplotlib version is the one recorded; otherwise a note).

A folder that is not a report (no folder, a missing or malformed manifest) and an input that does
not exist are not mismatches: they raise :class:`render.ReportInputError` (exit 2 in the CLI).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dcr.prereg.provenance import sha256_file
from dcr.reports import render as R

# Keys whose values may legitimately differ between two computations of one verdict.
VOLATILE = frozenset({"computed_at", "generated_at", "created_at", "rendered_at", "elapsed_s", "duration_s"})
REL_TOL, ABS_TOL = 1e-9, 1e-12


@dataclass
class VerifyResult:
    report_dir: Path
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def diff_values(a: Any, b: Any, path: str = "$") -> list[str]:
    """Paths where JSON-like ``a`` (stored) and ``b`` (re-computed) differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k in VOLATILE:
                continue
            if k not in b:
                out.append(f"{path}.{k}: in the stored verdict, absent from the re-computed one")
            elif k not in a:
                out.append(f"{path}.{k}: absent from the stored verdict, re-computed as {_short(b[k])}")
            else:
                out.extend(diff_values(a[k], b[k], f"{path}.{k}"))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: stored has {len(a)} entries, re-computed {len(b)}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(diff_values(x, y, f"{path}[{i}]"))
        return out
    if _num(a) and _num(b):
        fa, fb = float(a), float(b)
        if (math.isnan(fa) and math.isnan(fb)) or math.isclose(fa, fb, rel_tol=REL_TOL, abs_tol=ABS_TOL):
            return []
        return [f"{path}: stored {R.fmt(a)}, re-computed {R.fmt(b)}"]
    if a != b:
        return [f"{path}: stored {_short(a)}, re-computed {_short(b)}"]
    return []


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _short(x: Any) -> str:
    s = json.dumps(x, sort_keys=True, default=str)
    return s if len(s) <= 120 else s[:117] + "..."


def _text_diff(stored: str, fresh: str, name: str, limit: int = 8) -> list[str]:
    out = []
    for line in difflib.unified_diff(stored.splitlines(), fresh.splitlines(), "stored", "re-rendered", n=0, lineterm=""):
        if line.startswith(("---", "+++", "@@")):
            continue
        out.append(f"{name}: {'stored    ' if line[0] == '-' else 're-render '}| {line[1:][:200]}")
        if len(out) >= limit:
            out.append(f"{name}: … (more differing lines)")
            break
    return out


def _resolve(report_dir: Path, prov: dict, key: str) -> Path | None:
    """A recorded path: relative to the report folder first (a moved tree), then absolute."""
    rel, absolute = prov.get(f"{key}_relative"), prov.get(key)
    for cand in ([report_dir / rel] if rel else []) + ([Path(absolute)] if absolute else []):
        if cand.exists():
            return cand
    if absolute or rel:
        return Path(absolute or report_dir / rel)
    return None


def _engine() -> Callable[[Path, Path], dict]:
    from dcr.analysis.engine import compute_verdict

    return compute_verdict


# --------------------------------------------------------------------------- shapes of the inputs


def _is_str_or_none(x: Any) -> bool:
    return x is None or isinstance(x, str)


def verdict_problems(v: Any) -> list[str]:
    """How ``v`` falls short of the verdict fields the checks read before comparing it with its
    re-computation ([] when it has them): ``plan.sha256``, ``data.files[].path/sha256``,
    ``data.ignored_files``."""
    if not isinstance(v, dict):
        return [f"$: a verdict is a JSON object, not {type(v).__name__}"]
    problems = []
    plan, data = v.get("plan"), v.get("data")
    if not isinstance(plan, dict) or not isinstance(plan.get("sha256"), str):
        problems.append("$.plan.sha256: missing or not a string")
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return problems + ["$.data.files: missing or not a list"]
    for i, f in enumerate(data["files"]):
        if not isinstance(f, dict) or not all(isinstance(f.get(k), str) for k in ("path", "sha256")):
            problems.append(f"$.data.files[{i}]: not an object with string 'path' and 'sha256'")
    ignored = data.get("ignored_files", [])
    if not isinstance(ignored, list) or not all(isinstance(x, str) for x in ignored):
        problems.append("$.data.ignored_files: not a list of strings")
    return problems


def manifest_problems(m: Any) -> list[str]:
    """How ``m`` falls short of a report manifest ([] when it does not)."""
    if not isinstance(m, dict):
        return [f"$: a manifest is a JSON object, not {type(m).__name__}"]
    problems = []
    files, prov, plots = m.get("files"), m.get("provenance"), m.get("plots", [])
    if not isinstance(files, dict) or not all(isinstance(x, str) for x in files.values()):
        problems.append("$.files: not an object of file name → sha256")
    if not isinstance(prov, dict) or not all(_is_str_or_none(x) for x in prov.values()):
        problems.append("$.provenance: not an object of paths and hashes")
    if not isinstance(plots, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) and _is_str_or_none(p.get("file"))
            and _is_str_or_none(p.get("sha256")) for p in plots):
        problems.append("$.plots: not a list of {name, file, sha256}")
    if not isinstance(m.get("renderer", {}), dict):
        problems.append("$.renderer: not an object")
    return problems


# --------------------------------------------------------------------------- the verdict against plan and data


@dataclass
class VerdictCheck:
    """What :func:`check_verdict` found. ``fresh``: the verdict re-computed from the lock and the
    data (None when it could not be); ``decisions``: the lock's registered decisions."""

    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    fresh: dict | None = None
    decisions: dict | None = None
    data_ok: bool = False


def check_verdict(stored: dict, lock: Path, data: Path, *,
                  compute: Callable[[Path, Path], dict] | None = None) -> VerdictCheck:
    """Checks 2-4 of the module docstring: the lock's plan hash is the verdict's; every data file
    named in the verdict is under ``data`` with its recorded sha256 and no other part file is; the
    verdict re-computed from the lock and the data equals ``stored`` (see :func:`diff_values`).
    ``stored`` has the fields :func:`verdict_problems` asks for."""
    res = VerdictCheck()
    mm = res.mismatches

    # 2. the plan
    plan_ok = False
    if not lock.is_file():
        mm.append(f"plan lock missing: {lock}")
    else:
        try:
            have, res.decisions = R.load_lock(lock)
            want = stored["plan"]["sha256"]
            if have != want:
                mm.append(f"plan hash: the stored verdict is from plan sha256 {want}, the lock {lock} has {have}")
            else:
                plan_ok = True
        except Exception as exc:  # noqa: BLE001 - any refusal of the lock is a named mismatch
            mm.append(f"plan lock {lock} refused: {type(exc).__name__}: {exc}")
    res.checked.append("plan hash of the lock against the verdict")

    # 3. the data
    if not data.is_dir():
        mm.append(f"data dir missing: {data}")
    else:
        problems = R.check_data(stored, data)
        listed = {f["path"] for f in stored["data"]["files"]} | set(stored["data"].get("ignored_files") or [])
        for p in sorted(data.rglob("*.parquet")):
            rel = p.relative_to(data).as_posix()
            if rel not in listed and not p.name.startswith("."):
                problems.append(f"data file not in the verdict's manifest: {rel} (added after the verdict was computed?)")
        mm.extend(problems)
        res.data_ok = not problems
    res.checked.append("sha256 of every data file against the verdict's manifest")

    # 4. re-compute the verdict
    if plan_ok:
        try:
            res.fresh = (compute or _engine())(lock, data)
        except Exception as exc:  # noqa: BLE001 - the engine's refusal is the finding
            mm.append(f"re-computation failed: {type(exc).__name__}: {exc}")
    if res.fresh is not None:
        lib_a, lib_b = stored.get("libraries") or {}, res.fresh.get("libraries") or {}
        if lib_a != lib_b:
            res.notes.append(f"library versions differ from the stored verdict's: stored {lib_a}, now {lib_b}")
        diffs = diff_values({k: v for k, v in stored.items() if k != "libraries"},
                            {k: v for k, v in res.fresh.items() if k != "libraries"})
        mm.extend(f"verdict differs from its re-computation at {x}" for x in diffs)
        res.checked.append("verdict re-computed from the lock and the data")
    return res


def render_verified(verdict: Any, out_dir, *, lock_path, data_dir, source: str = "the verdict",
                    compute: Callable[[Path, Path], dict] | None = None) -> Path:
    """Render ``verdict`` (:func:`render.render_report`) only when it re-computes from the lock at
    ``lock_path`` and the data in ``data_dir`` (:func:`check_verdict`, the checks of
    ``dcr report verify``); return the HTML report's path.

    Raises :class:`render.ReportInputError` (``source`` names the verdict in messages) when an input
    cannot be used, :class:`render.ReportError` naming every field that differs. Nothing is
    written then.
    """
    lock, data = Path(lock_path), Path(data_dir)
    problems = verdict_problems(verdict)
    if problems:
        raise R.ReportInputError(f"{source} is not a verdict written by `dcr verdict`: " + "; ".join(problems))
    if not lock.is_file():
        raise R.ReportInputError(f"{lock}: no such plan lock (--plan takes the .lock.yaml the verdict was computed from)")
    try:
        R.load_lock(lock)
    except Exception as exc:  # noqa: BLE001 - PlanError, OSError, YAML errors: the lock cannot be used
        raise R.ReportInputError(f"the plan lock {lock} cannot be used: {exc}") from None
    if not data.is_dir():
        raise R.ReportInputError(f"{data}: no such data folder (--data takes the folder the verdict was computed from)")
    found = check_verdict(verdict, lock, data, compute=compute)
    if found.mismatches:
        raise R.ReportError(f"{source} does not re-compute from the plan {lock} and the data {data}; "
                            f"refusing to render it ({len(found.mismatches)} difference(s)):\n"
                            + "\n".join(f"  {m}" for m in found.mismatches))
    return R.render_report(verdict, out_dir, data_dir=data, lock_path=lock)


# --------------------------------------------------------------------------- a report folder


def verify_report(report_dir, *, lock_path=None, data_dir=None,
                  compute: Callable[[Path, Path], dict] | None = None) -> VerifyResult:
    """Re-check a report folder; ``lock_path``/``data_dir`` override the recorded ones.

    Raises :class:`render.ReportInputError` when ``report_dir`` is not a report folder (no folder,
    a manifest that is missing or malformed) or an override does not exist.
    """
    d = Path(report_dir)
    res = VerifyResult(d)
    mm = res.mismatches
    if not d.is_dir():
        raise R.ReportInputError(f"{d}: {'not a folder' if d.exists() else 'no such report folder'}")
    for given, what in ((lock_path, "no such plan lock (--plan)"), (data_dir, "no such data folder (--data)")):
        if given is not None and not Path(given).exists():
            raise R.ReportInputError(f"{given}: {what}")

    # 1. completeness and recorded hashes
    try:
        manifest = json.loads((d / R.MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise R.ReportInputError(f"{d / R.MANIFEST_NAME}: unreadable ({exc}); is {d} a report folder "
                                 "written by `dcr report`?") from None
    problems = manifest_problems(manifest)
    if problems:
        raise R.ReportInputError(f"{d / R.MANIFEST_NAME}: not a report manifest: " + "; ".join(problems))
    for name, want in manifest["files"].items():
        p = d / name
        if not p.is_file():
            mm.append(f"{name}: missing from the report folder")
        elif sha256_file(p) != want:
            mm.append(f"{name}: altered after rendering (sha256 {sha256_file(p)[:16]}…, "
                      f"manifest recorded {want[:16]}…)")
    res.checked.append("report files against the manifest's hashes")
    try:
        stored = json.loads((d / R.VERDICT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        mm.append(f"{R.VERDICT_NAME}: unreadable ({exc})")
        return res
    problems = verdict_problems(stored)
    if problems:
        mm.extend(f"{R.VERDICT_NAME}: not a verdict: {x}" for x in problems)
        return res
    prov = manifest["provenance"]

    lock = Path(lock_path) if lock_path else _resolve(d, prov, "lock_path")
    data = Path(data_dir) if data_dir else _resolve(d, prov, "data_dir")
    if lock is None or data is None:
        mm.append("cannot re-compute: the report was rendered without "
                  + " and ".join(x for x, v in (("a plan lock (--plan)", lock), ("a data dir (--data)", data)) if v is None)
                  + "; pass --plan/--data to verify against them")
        return res
    if lock.is_file() and prov.get("lock_file_sha256") and sha256_file(lock) != prov["lock_file_sha256"]:
        res.notes.append(f"the lock file's bytes changed since rendering ({lock}); its plan hash is checked below")

    # 2-4. the plan, the data, the re-computed verdict
    found = check_verdict(stored, lock, data, compute=compute)
    mm.extend(found.mismatches)
    res.notes.extend(found.notes)
    res.checked.extend(found.checked)
    fresh = found.fresh

    # 5. re-render
    # Render from the re-computed verdict (every number shown re-derived), carrying over only the
    # volatile stamps (created_at); with other library versions, tiny float changes could alter the
    # last printed digit, so the stored verdict is rendered instead (its numbers were compared above).
    if fresh is not None and (stored.get("libraries") or {}) == (fresh.get("libraries") or {}):
        basis = {**fresh, **{k: stored[k] for k in VOLATILE if k in stored}}
    else:
        basis = stored
    try:
        md, html, plots = R.render_all(basis, prov, data if data.is_dir() else None, found.decisions)
    except Exception as exc:  # noqa: BLE001
        mm.append(f"re-rendering failed: {type(exc).__name__}: {exc}")
        return res
    for name, text, cmp in ((R.MD_NAME, md, lambda s: s), (R.HTML_NAME, html, R.strip_images)):
        p = d / name
        if p.is_file():
            old = p.read_text(encoding="utf-8")
            if cmp(old) != cmp(text):
                mm.append(f"{name}: differs from the report re-rendered from the "
                          f"{'stored' if basis is stored else 're-computed'} verdict")
                mm.extend(_text_diff(cmp(old), cmp(text), name))
    res.checked.append("Markdown and HTML re-rendered")
    if found.data_ok:
        same_mpl = (manifest.get("renderer") or {}).get("matplotlib") == R._renderer_versions().get("matplotlib")
        stored_plots = {p["name"]: p for p in manifest.get("plots") or []}
        for p in plots:
            want = stored_plots.pop(p["name"], None)
            got = hashlib.sha256(p["png"]).hexdigest() if p["png"] else None
            if want is None:
                mm.append(f"plot {p['name']}: drawn from the data but absent from the report")
                continue
            f = d / want["file"] if want.get("file") else None
            if f is not None and f.is_file() and sha256_file(f) != want["sha256"]:
                mm.append(f"plot file {want['file']}: altered after rendering")
            if got != want["sha256"]:
                (mm if same_mpl else res.notes).append(
                    f"plot {p['name']}: re-drawn image differs from the stored one"
                    + ("" if same_mpl else " (another matplotlib version: not counted as a mismatch)"))
        for name in stored_plots:
            mm.append(f"plot {name}: in the report but not drawable from the data")
        if (d / R.HTML_NAME).is_file():
            html_old = (d / R.HTML_NAME).read_text(encoding="utf-8")
            if same_mpl and html_old != html and R.strip_images(html_old) == R.strip_images(html):
                mm.append(f"{R.HTML_NAME}: an embedded plot image differs from the one re-drawn from the data")
        res.checked.append("plots re-drawn from the data")
    return res
