"""`dcr prereg …`: hash, lock, verify, diff, amend (see docs/prereg.md).

Exit codes: 0 success (verify: plan matches its lock and the chain holds; diff: identical),
1 verify found changes/problems or diff found differences, 2 bad input (message on stderr,
naming the file, the field path and the problem; nothing written).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def bad_input(message: str) -> NoReturn:
    """Stop with exit code 2 and ``error: <message>`` on stderr: every `dcr` command's answer to bad
    input (README: the message names the file, the field and the problem; nothing is written)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def output_problem(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` cannot be written as a folder (``folder``) or as a file, or None: it exists as
    the other kind, or the nearest existing parent is a file."""
    if folder and path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    if not folder and path.is_dir():
        return f"{path} is a folder, not a file"
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"{path} lies under {parent}, which is a file"
    return None


PlanArg = Annotated[Path, typer.Argument(help="a plan YAML (or, where stated, a .lock.yaml)", show_default=False)]
LocksDir = Annotated[Optional[list[Path]], typer.Option(
    "--locks-dir", help="another directory to look for parent locks in (repeatable)")]


@app.command("hash")
def hash_cmd(plan: PlanArg) -> None:
    """Print the plan's 64-hex SHA-256 (of a plan, or of a lock file after verifying it)."""
    from dcr.prereg.lock import PlanError, load_any

    try:
        _, sha, _ = load_any(plan)
    except PlanError as exc:
        bad_input(str(exc))
    typer.echo(sha)


@app.command("lock")
def lock_cmd(plan: PlanArg) -> None:
    """Validate PLAN and write PLAN-stem.lock.yaml beside it (idempotent for identical content)."""
    from dcr.prereg.lock import PlanError, load_locked, lock_plan

    try:
        target, sha, written = lock_plan(plan)
        flags = load_locked(target, check_chain=False).flags
    except PlanError as exc:
        bad_input(str(exc))
    typer.echo(f"{'locked' if written else 'already locked (unchanged)'}: {target}")
    typer.echo(f"sha256: {sha}")
    if flags["overlapping_windows"]:
        typer.echo(f"flag: {len(flags['overlapping_windows'])} pairs of windows overlap "
                   f"(e.g. {flags['overlapping_windows'][:3]}): samples are not independent")
    if flags["weights_random"]:
        typer.echo("flag: the model's weights are random (preset): not a trained model")


@app.command("verify")
def verify_cmd(
    plan: PlanArg,
    lock: Annotated[Optional[Path], typer.Option("--lock", help="the lock to check against (default: beside PLAN)")] = None,
    locks_dir: LocksDir = None,
) -> None:
    """Exit 0 when PLAN matches its lock and the amendment chain holds; else list what differs.

    PLAN may also be a .lock.yaml: then the artifact and its chain are checked.
    """
    from dcr.prereg.canonical import format_changes
    from dcr.prereg.lock import PlanError, verify

    try:
        rep = verify(plan, lock=lock, search_dirs=locks_dir or [])
    except PlanError as exc:
        bad_input(str(exc))
    if rep.changes:
        typer.echo(f"CHANGED: {plan} (sha256 {rep.plan_sha256}) differs from {rep.lock} "
                   f"(sha256 {rep.lock_sha256}) in {len(rep.changes)} field(s), locked → now:")
        for line in format_changes(rep.changes):
            typer.echo(f"  {line}")
    for p in rep.problems:
        typer.echo(f"PROBLEM: {p}")
    if not rep.ok:
        raise typer.Exit(1)
    typer.echo(f"OK: {plan} matches {rep.lock} (sha256 {rep.lock_sha256})")
    for sha, version, where in rep.chain[1:]:
        typer.echo(f"  amends ← version {version} sha256 {sha} ({where}): OK")


@app.command("diff")
def diff_cmd(
    a: Annotated[Path, typer.Argument(help="plan or lock file", show_default=False)],
    b: Annotated[Path, typer.Argument(help="plan or lock file", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Field-level semantic diff of two plans (or locks) with both hashes. Exit 1 if they differ."""
    from dcr.prereg.canonical import diff_plans, format_changes
    from dcr.prereg.lock import PlanError, load_any

    try:
        pa, sa, _ = load_any(a)
        pb, sb, _ = load_any(b)
    except PlanError as exc:
        bad_input(str(exc))
    changes = diff_plans(pa, pb)
    if as_json:
        typer.echo(json.dumps({"a": {"path": str(a), "sha256": sa}, "b": {"path": str(b), "sha256": sb},
                               "identical": sa == sb, "changes": changes}, indent=2, ensure_ascii=False))
    else:
        typer.echo(f"a: {a}  sha256 {sa}")
        typer.echo(f"b: {b}  sha256 {sb}")
        if not changes:
            typer.echo("identical (same canonical content)")
        for line in format_changes(changes):
            typer.echo(line)
    if changes:
        raise typer.Exit(1)


@app.command("amend")
def amend_cmd(
    plan: PlanArg,
    parent: Annotated[Path, typer.Option("--parent", help="the parent's .lock.yaml", show_default=False)],
    reason: Annotated[str, typer.Option("--reason", help="why the plan changes (≥ 10 characters)", show_default=False)],
    locks_dir: LocksDir = None,
) -> None:
    """Record PLAN (an edited copy, higher study.version) as an amendment of PARENT and lock it."""
    from dcr.prereg.canonical import diff_plans, format_changes
    from dcr.prereg.lock import PlanError, amend_plan, load_locked

    try:
        target, sha, written = amend_plan(plan, parent, reason, search_dirs=locks_dir or [])
        new = load_locked(target, search_dirs=locks_dir or [])
    except PlanError as exc:
        bad_input(str(exc))
    typer.echo(f"{'amended and locked' if written else 'already locked (unchanged)'}: {target}")
    typer.echo(f"sha256: {sha}  (amends {new.parents[0].sha256}, version "
               f"{new.parents[0].plan.study.version} → {new.plan.study.version})")
    for line in format_changes(diff_plans(new.parents[0].plan, new.plan)):
        typer.echo(f"  {line}")
