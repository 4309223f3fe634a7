"""Frozen artifacts: lock, load (verified), verify against a plan, amend with a parent chain.

A lock file ``<plan stem>.lock.yaml`` lies beside its plan and carries::

    lock_format: 1
    sha256: <plan hash, see prereg.canonical>
    study: {id, version}
    locked_at: <UTC ISO 8601>
    tool: {name: dcr-prereg, version}
    git: null | {commit, plan_path, plan_committed, tree_dirty}
    source: {file, file_sha256}          # the plan file's name and byte hash when it was locked
    flags: {overlapping_windows: [[i, j], ...], weights_random, amended}
    parent: null | {sha256, lock_file, reason}
    plan: {...}                            # the canonical content (plan.model_dump(mode="json"))
    artifact_sha256: <sha256 of the canonical JSON of every key above>

Producers and the verdict engine take the LOCK FILE (``--plan X.lock.yaml``) and call
:func:`load_locked`, which refuses a plain plan, an edited artifact, and a broken amendment chain.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcr.prereg.budget import budget_problem
from dcr.prereg.canonical import canonical_json, diff_plans, plan_data, plan_sha256
from dcr.prereg.loading import PlanError, dump_yaml, load_plan, parse_yaml, plan_from_data, read_yaml
from dcr.prereg.provenance import TOOL_NAME, git_state, sha256_file, tool_version
from dcr.prereg.schema import Amendment, Plan, overlapping_windows

LOCK_FORMAT = 1
LOCK_SUFFIX = ".lock.yaml"
_KEYS = ("lock_format", "sha256", "study", "locked_at", "tool", "git", "source", "flags", "parent",
         "plan", "artifact_sha256")
_HEADER = ("# FROZEN pre-registration written by `dcr prereg lock`. Do not edit: `dcr prereg verify`\n"
           "# recomputes both hashes. To change the plan, copy it to a new file, bump study.version\n"
           "# and run `dcr prereg amend NEW.yaml --parent THIS.lock.yaml --reason \"...\"`.\n")

__all__ = ["LockedPlan", "VerifyReport", "PlanError", "load_plan", "load_locked", "lock_plan",
           "amend_plan", "verify", "lock_path_for", "load_any", "plan_flags", "tool_version"]


def lock_path_for(plan_path: str | Path) -> Path:
    """``dir/name.yaml`` -> ``dir/name.lock.yaml``."""
    p = Path(plan_path)
    if p.name.endswith(LOCK_SUFFIX):
        raise PlanError(f"{p}: is a lock file, not a plan")
    stem = p.name[: -len(p.suffix)] if p.suffix in (".yaml", ".yml") else p.name
    return p.with_name(stem + LOCK_SUFFIX)


def plan_flags(plan: Plan) -> dict[str, Any]:
    """Facts a reader must not miss, derived from the plan (recomputed and checked on load)."""
    return {
        "overlapping_windows": [list(pair) for pair in overlapping_windows(plan)],
        "weights_random": plan.model.weights_random,
        "amended": plan.amends is not None,
    }


@dataclass(frozen=True)
class LockedPlan:
    """A verified frozen plan. ``parents``: the amendment chain, nearest parent first."""

    plan: Plan
    sha256: str
    path: Path
    locked_at: str
    tool: dict[str, Any]
    git: dict[str, Any] | None
    source: dict[str, Any]
    flags: dict[str, Any]
    parent: dict[str, Any] | None
    parents: tuple[LockedPlan, ...] = field(default=())

    @property
    def chain(self) -> list[str]:
        """Hashes from this plan back to the original: [self, parent, grandparent, ...]."""
        return [self.sha256] + [p.sha256 for p in self.parents]


# ---------------------------------------------------------------------------- helpers


def _git_record(path: Path) -> dict[str, Any] | None:
    """The lock's ``git`` entry: {commit, plan_path, plan_committed, tree_dirty} when ``path`` lies
    in a git work tree, else None."""
    g = git_state(path)
    return None if g is None else {"commit": g["commit"], "plan_path": g["path"], "plan_committed": g["committed"],
                                   "tree_dirty": g["dirty"]}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _artifact_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in body.items() if k != "artifact_sha256"})).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _artifact(plan: Plan, plan_path: Path, parent: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "lock_format": LOCK_FORMAT,
        "sha256": plan_sha256(plan),
        "study": {"id": plan.study.id, "version": plan.study.version},
        "locked_at": _now(),
        "tool": {"name": TOOL_NAME, "version": tool_version()},
        "git": _git_record(plan_path),
        "source": {"file": plan_path.name, "file_sha256": sha256_file(plan_path)},
        "flags": plan_flags(plan),
        "parent": parent,
        "plan": plan_data(plan),
    }
    body["artifact_sha256"] = _artifact_hash(body)
    return body


def _is_lock_data(data: Any) -> bool:
    return isinstance(data, dict) and "lock_format" in data


# ---------------------------------------------------------------------------- load


def _load_single(lock_path: Path) -> LockedPlan:
    """Parse and verify one artifact (not its parents)."""
    data, marks = read_yaml(lock_path)
    src = str(lock_path)
    if not _is_lock_data(data):
        raise PlanError(f"{src}: not a lock file (no 'lock_format'); producers take the .lock.yaml "
                        "written by `dcr prereg lock`")
    if data.get("lock_format") != LOCK_FORMAT:
        raise PlanError(f"{src}: lock_format {data.get('lock_format')!r} is not supported (expected {LOCK_FORMAT})")
    missing = [k for k in _KEYS if k not in data]
    extra = [k for k in data if k not in _KEYS]
    if missing or extra:
        raise PlanError(f"{src}: edited frozen artifact: "
                        + "; ".join([f"missing key '{k}'" for k in missing] + [f"unknown key '{k}'" for k in extra]))
    if data["artifact_sha256"] != _artifact_hash(data):
        raise PlanError(f"{src}: edited frozen artifact: artifact_sha256 does not match its content "
                        "(the lock was changed after it was written)")
    sub_marks = {k[1:]: v for k, v in marks.items() if k[:1] == ("plan",)}
    try:
        plan = plan_from_data(data["plan"], f"{src} (plan section)", sub_marks)
    except PlanError as exc:
        raise PlanError(f"{exc} [the frozen plan no longer validates: edited, or the schema/statistics "
                        "registry changed since it was locked]") from None
    sha = plan_sha256(plan)
    if sha != data["sha256"]:
        raise PlanError(f"{src}: edited frozen artifact: sha256 {data['sha256']} does not match the "
                        f"frozen plan's hash {sha}")
    if data["study"] != {"id": plan.study.id, "version": plan.study.version}:
        raise PlanError(f"{src}: edited frozen artifact: 'study' does not match plan.study")
    if data["flags"] != plan_flags(plan):
        raise PlanError(f"{src}: edited frozen artifact: flags {data['flags']} differ from the plan's "
                        f"{plan_flags(plan)}")
    parent = data["parent"]
    if plan.amends is None and parent is not None:
        raise PlanError(f"{src}: edited frozen artifact: 'parent' is set but plan.amends is null")
    if plan.amends is not None:
        if not isinstance(parent, dict) or parent.get("sha256") != plan.amends.parent_sha256 \
                or parent.get("reason") != plan.amends.reason:
            raise PlanError(f"{src}: edited frozen artifact: 'parent' does not match plan.amends")
    return LockedPlan(plan=plan, sha256=sha, path=lock_path, locked_at=data["locked_at"], tool=data["tool"],
                      git=data["git"], source=data["source"], flags=data["flags"], parent=parent)


def _find_parent(child: LockedPlan, search_dirs: list[Path]) -> LockedPlan:
    want = child.parent["sha256"]
    candidates: list[Path] = []
    hint = child.parent.get("lock_file")
    if isinstance(hint, str) and hint:
        candidates.append((child.path.parent / hint))
    for d in [child.path.parent] + list(search_dirs):
        if Path(d).is_dir():
            candidates.extend(sorted(Path(d).glob(f"*{LOCK_SUFFIX}")))
    seen: set[Path] = set()
    problems: list[str] = []
    for cand in candidates:
        key = cand.resolve()
        if key in seen or not cand.is_file() or key == child.path.resolve():
            continue
        seen.add(key)
        try:
            got = _load_single(cand)
        except PlanError as exc:
            try:
                claims = read_yaml(cand)[0].get("sha256") == want
            except (PlanError, AttributeError):
                claims = False
            if claims:  # the parent is there, but it does not verify
                problems.append(str(exc))
            continue
        if got.sha256 == want:
            return got
    where = ", ".join(str(d) for d in [child.path.parent] + list(search_dirs))
    extra = f" ({'; '.join(problems)})" if problems else ""
    raise PlanError(f"{child.path}: parent lock with sha256 {want} not found in {where}{extra}; "
                    "pass the directory that holds it (--locks-dir)")


def load_locked(lock_path: str | Path, *, search_dirs: list[str | Path] | tuple = (),
                check_chain: bool = True) -> LockedPlan:
    """Read and verify a frozen plan; raise :class:`PlanError` if it is not a lock or was altered.

    Verifies: the artifact hash, the plan's schema and hash, study/flags/parent consistency, and
    (``check_chain``) every ancestor: each parent lock is found beside the lock (or in
    ``search_dirs``), itself intact, with the hash ``amends.parent_sha256``, the same study id and
    a lower version. Producers and the verdict engine call this with the ``.lock.yaml`` path.
    """
    lock_path = Path(lock_path)
    head = _load_single(lock_path)
    if not check_chain:
        return head
    dirs = [Path(d) for d in search_dirs]
    chain: list[LockedPlan] = []
    node, visited = head, {head.sha256}
    while node.parent is not None:
        par = _find_parent(node, dirs)
        if par.sha256 in visited:
            raise PlanError(f"{lock_path}: the amendment chain has a cycle at {par.sha256}")
        if par.plan.study.id != node.plan.study.id:
            raise PlanError(f"{node.path}: parent {par.path} is study '{par.plan.study.id}', not "
                            f"'{node.plan.study.id}'")
        if not par.plan.study.version < node.plan.study.version:
            raise PlanError(f"{node.path}: parent {par.path} has version {par.plan.study.version}, not "
                            f"below {node.plan.study.version}")
        visited.add(par.sha256)
        chain.append(par)
        node = par
    return LockedPlan(**{**head.__dict__, "parents": tuple(chain)})


def load_any(path: str | Path, *, search_dirs: list[str | Path] | tuple = ()) -> tuple[Plan, str, LockedPlan | None]:
    """(plan, sha256, LockedPlan or None) of a plan file or a lock file (the lock is verified)."""
    data, marks = read_yaml(path)
    if _is_lock_data(data):
        locked = load_locked(path, search_dirs=search_dirs, check_chain=False)
        return locked.plan, locked.sha256, locked
    plan = plan_from_data(data, str(path), marks)
    return plan, plan_sha256(plan), None


# ---------------------------------------------------------------------------- lock


def _check_budget(plan: Plan, plan_path: Path) -> None:
    """Refuse a plan whose registered statistics exceed its compute budget (:mod:`prereg.budget`)."""
    problem = budget_problem(plan)
    if problem:
        raise PlanError(f"{plan_path}: compute_budget: {problem}")


def _check_target(plan: Plan, sha: str, target: Path) -> bool:
    """True if ``target`` already holds this exact plan; raise if it or a sibling conflicts."""
    same = False
    if target.exists():
        try:
            existing = _load_single(target)
        except PlanError as exc:
            raise PlanError(f"{target}: an existing lock is in the way and does not verify ({exc}); "
                            "refusing to overwrite a frozen artifact") from None
        if existing.sha256 != sha:
            ident = (existing.plan.study.id, existing.plan.study.version) == (plan.study.id, plan.study.version)
            raise PlanError(
                f"{target}: study '{existing.plan.study.id}' version {existing.plan.study.version} is "
                f"already locked with sha256 {existing.sha256}; this plan hashes to {sha}. "
                + ("Re-locking different content under the same id/version is refused: "
                   if ident else "Refusing to overwrite a frozen artifact: ")
                + "copy the plan to a new file, bump study.version and use `dcr prereg amend`.")
        same = True
    for sib in sorted(target.parent.glob(f"*{LOCK_SUFFIX}")):
        if sib.resolve() == target.resolve():
            continue
        try:
            other = _load_single(sib)
        except PlanError:
            continue  # someone else's problem; `verify` reports it
        if (other.plan.study.id, other.plan.study.version) == (plan.study.id, plan.study.version) \
                and other.sha256 != sha:
            raise PlanError(
                f"{sib}: study '{plan.study.id}' version {plan.study.version} is already locked there "
                f"with sha256 {other.sha256}; this plan hashes to {sha}. Different content under the "
                "same id/version is refused: bump study.version and use `dcr prereg amend`.")
    return same


def lock_plan(plan_path: str | Path) -> tuple[Path, str, bool]:
    """Validate ``plan_path`` and write ``<stem>.lock.yaml`` beside it.

    Returns (lock path, sha256, written): written is False when the identical plan was already
    locked there (idempotent). Raises :class:`PlanError` (nothing written) on a bad plan, on a
    plan whose statistics exceed its compute budget (:mod:`prereg.budget`), on a plan with
    ``amends`` set (use :func:`amend_plan`), or on a conflicting existing lock.
    """
    plan_path = Path(plan_path)
    target = lock_path_for(plan_path)
    plan = load_plan(plan_path)
    _check_budget(plan, plan_path)
    sha = plan_sha256(plan)
    if _check_target(plan, sha, target):
        return target, sha, False
    if plan.amends is not None:
        raise PlanError(f"{plan_path}: amends: this plan amends {plan.amends.parent_sha256}; lock it with "
                        "`dcr prereg amend PLAN --parent PARENT.lock.yaml --reason ...` so the chain is checked")
    _atomic_write(target, _HEADER + dump_yaml(_artifact(plan, plan_path, None)))
    return target, sha, True


# ---------------------------------------------------------------------------- amend


def _replace_top_level(text: str, key: str, block: str) -> str | None:
    """Replace the top-level ``key:`` block of YAML ``text`` by ``block``; None if not found."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith(f"{key}:")), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t"):
        end += 1
    while end - 1 > start and not lines[end - 1].strip():
        end -= 1  # keep the blank lines that separate blocks
    return "".join(lines[:start]) + block + "".join(lines[end:])


def amend_plan(plan_path: str | Path, parent_lock: str | Path, reason: str, *,
               search_dirs: list[str | Path] | tuple = ()) -> tuple[Path, str, bool]:
    """Make ``plan_path`` (an edited copy of the parent's plan) an amendment of ``parent_lock``.

    Checks the parent (and its chain), the study id (equal) and version (greater) and the compute
    budget (:mod:`prereg.budget`), sets the plan file's ``amends`` block to ``{parent_sha256,
    reason}`` (comments elsewhere kept), and locks it. Returns (lock path, sha256, written).
    Nothing is written on any error.
    """
    plan_path, parent_lock = Path(plan_path), Path(parent_lock)
    target = lock_path_for(plan_path)
    if target.resolve() == parent_lock.resolve():
        raise PlanError(f"{plan_path}: its lock would overwrite the parent lock {parent_lock}; copy the "
                        "plan to a new file (e.g. NAME-v2.yaml), edit it there and amend that")
    parent = load_locked(parent_lock, search_dirs=search_dirs)
    data, marks = read_yaml(plan_path)
    if _is_lock_data(data):
        raise PlanError(f"{plan_path}: is a lock file; pass the edited plan")
    plan = plan_from_data(data, str(plan_path), marks)
    if plan.study.id != parent.plan.study.id:
        raise PlanError(f"{plan_path}: study.id: '{plan.study.id}' differs from the parent's "
                        f"'{parent.plan.study.id}'; an amendment keeps the study id")
    if not plan.study.version > parent.plan.study.version:
        raise PlanError(f"{plan_path}: study.version: {plan.study.version} must be greater than the "
                        f"parent's {parent.plan.study.version}")
    try:
        amendment = Amendment(parent_sha256=parent.sha256, reason=reason)
    except ValueError as exc:
        msg = "; ".join(e["msg"] for e in exc.errors()) if hasattr(exc, "errors") else str(exc)
        raise PlanError(f"{plan_path}: amends.reason: {msg}") from None
    new_data = dict(data)
    new_data["amends"] = amendment.model_dump(mode="json")
    new_plan = plan_from_data(new_data, str(plan_path))
    _check_budget(new_plan, plan_path)
    sha = plan_sha256(new_plan)
    if not diff_plans(parent.plan, new_plan):
        raise PlanError(f"{plan_path}: identical to the parent")
    already = _check_target(new_plan, sha, target)
    text = plan_path.read_text(encoding="utf-8")
    if plan_sha256(plan) == sha:
        new_text = text  # the file already carries this amendment
    else:
        new_text = _replace_top_level(text, "amends", dump_yaml({"amends": new_data["amends"]}))
        if new_text is None or _text_sha(new_text, plan_path) != sha:
            new_text = ("# Rewritten by `dcr prereg amend` (the original layout could not be kept).\n"
                        + dump_yaml(new_data))
        if _text_sha(new_text, plan_path) != sha:  # should not happen: refuse rather than guess
            raise PlanError(f"{plan_path}: could not write the amends block reproducibly")
    if already and new_text == text:
        return target, sha, False
    try:
        rel_parent = os.path.relpath(parent_lock.resolve(), target.parent.resolve())
    except ValueError:
        rel_parent = str(parent_lock.resolve())
    parent_meta = {"sha256": parent.sha256, "lock_file": rel_parent, "reason": reason}
    if new_text != text:
        _atomic_write(plan_path, new_text)
    if already:
        return target, sha, False
    _atomic_write(target, _HEADER + dump_yaml(_artifact(new_plan, plan_path, parent_meta)))
    return target, sha, True


def _text_sha(text: str, path: Path) -> str | None:
    try:
        data, marks = parse_yaml(text, str(path))
        return plan_sha256(plan_from_data(data, str(path), marks))
    except PlanError:
        return None


# ---------------------------------------------------------------------------- verify


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`. ``ok`` iff no problems and no changes."""

    target: Path
    lock: Path | None
    plan_sha256: str | None
    lock_sha256: str | None
    changes: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    chain: list[tuple[str, int, str]] = field(default_factory=list)  # (sha256, version, lock path)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.changes


def verify(path: str | Path, *, lock: str | Path | None = None,
           search_dirs: list[str | Path] | tuple = ()) -> VerifyReport:
    """Check a plan against its lock (``<stem>.lock.yaml`` or ``lock``), or a lock file alone.

    Reports the changed fields (old = locked, new = plan file), an edited artifact, and every
    problem of the amendment chain. Raises :class:`PlanError` only when ``path`` itself cannot
    be read as a plan or lock, or a given ``lock`` is no file.
    """
    path = Path(path)
    if lock is not None and not Path(lock).is_file():
        raise PlanError(f"{lock}: no such lock file")
    data, marks = read_yaml(path)
    if _is_lock_data(data):
        plan, lock_path = None, path
    else:
        plan = plan_from_data(data, str(path), marks)
        lock_path = Path(lock) if lock is not None else lock_path_for(path)
    report = VerifyReport(target=path, lock=lock_path, plan_sha256=plan_sha256(plan) if plan else None,
                          lock_sha256=None)
    if not lock_path.exists():
        report.problems.append(f"{lock_path}: no lock file (run `dcr prereg lock {path}`)")
        return report
    try:
        head = _load_single(lock_path)
    except PlanError as exc:
        report.problems.append(str(exc))
        if plan is not None:  # best effort: which frozen fields no longer match the plan file
            try:
                frozen = plan_from_data(read_yaml(lock_path)[0]["plan"], str(lock_path))
                report.changes = diff_plans(frozen, plan)
            except (PlanError, KeyError, TypeError):
                pass
        return report
    report.lock_sha256 = head.sha256
    if plan is not None and head.sha256 != report.plan_sha256:
        report.changes = diff_plans(head.plan, plan)
    try:
        full = load_locked(lock_path, search_dirs=search_dirs)
        report.chain = [(x.sha256, x.plan.study.version, str(x.path)) for x in (full,) + full.parents]
    except PlanError as exc:
        report.problems.append(str(exc))
    return report
