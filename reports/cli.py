"""CLI of `reports`: `dcr report --verdict V --plan LOCK --data DIR --out OUT` and `dcr report verify DIR`.

Exit codes: 0 success; 1 the verdict or report does not re-compute from its plan and data (each
difference named); 2 bad input (message on stderr, naming the file and the problem; nothing written).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dcr.prereg.cli import bad_input, output_problem

app = typer.Typer(invoke_without_command=True, no_args_is_help=False, add_completion=False)


@app.callback(invoke_without_command=True)
def report(
    ctx: typer.Context,
    verdict: Optional[Path] = typer.Option(None, "--verdict", help="Verdict JSON written by `dcr verdict`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder to write (created)."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="The locked plan the verdict was computed from "
                                        "(the verdict is re-computed from it; recorded for `verify`)."),
    data: Optional[Path] = typer.Option(None, "--data", help="The data dir the verdict was computed from "
                                        "(the verdict is re-computed from it; plots drawn from it; recorded for `verify`)."),
) -> None:
    """Render a verdict into a Markdown + self-contained HTML report, only if it re-computes from the
    plan and the data (the checks of `dcr report verify`); exit 1 naming each field that differs."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [name for name, value in (("--verdict", verdict), ("--plan", plan), ("--data", data), ("--out", out))
               if value is None]
    if missing:
        bad_input(f"missing {', '.join(missing)}: a report renders a verdict only after re-computing it "
                  "from its plan and data")
    from dcr.reports.render import ReportError, ReportInputError
    from dcr.reports.verify import render_verified

    problem = output_problem(out, folder=True)
    if problem:
        bad_input(f"--out: {problem} (the report folder to write)")
    try:
        v = json.loads(verdict.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        bad_input(f"{verdict}: cannot read the verdict JSON: {getattr(exc, 'strerror', None) or exc}")
    try:
        html = render_verified(v, out, lock_path=plan, data_dir=data, source=f"the verdict {verdict}")
    except ReportInputError as exc:
        bad_input(str(exc))
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(html))


@app.command("verify")
def verify(
    report_dir: Path = typer.Argument(..., help="A report folder written by `dcr report`."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Override the lock path recorded in the report."),
    data: Optional[Path] = typer.Option(None, "--data", help="Override the data dir recorded in the report."),
) -> None:
    """Re-compute every number of a report from its plan and data; exit 1 naming each mismatch."""
    from dcr.reports.render import ReportInputError
    from dcr.reports.verify import verify_report

    try:
        res = verify_report(report_dir, lock_path=plan, data_dir=data)
    except ReportInputError as exc:
        bad_input(str(exc))
    for c in res.checked:
        typer.echo(f"checked: {c}")
    for n in res.notes:
        typer.echo(f"note: {n}")
    if res.ok:
        typer.echo(f"OK: {report_dir} re-computes from its plan and data")
        return
    for m in res.mismatches:
        typer.echo(f"MISMATCH: {m}", err=True)
    typer.echo(f"FAILED: {len(res.mismatches)} mismatch(es) in {report_dir}", err=True)
    raise typer.Exit(1)
