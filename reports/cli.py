"""CLI of `reports`: `dcr report --verdict V --out DIR` and `dcr report verify DIR`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(invoke_without_command=True, no_args_is_help=False, add_completion=False)


@app.callback(invoke_without_command=True)
def report(
    ctx: typer.Context,
    verdict: Optional[Path] = typer.Option(None, "--verdict", help="Verdict JSON written by `dcr verdict`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder to write (created)."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="The locked plan the verdict was computed from "
                                        "(checked against the verdict's plan hash; recorded for `verify`)."),
    data: Optional[Path] = typer.Option(None, "--data", help="The data dir the verdict was computed from "
                                        "(hashes checked; plots drawn from it; recorded for `verify`)."),
) -> None:
    """Render a verdict into a Markdown + self-contained HTML report (and copy the verdict there)."""
    if ctx.invoked_subcommand is not None:
        return
    if verdict is None or out is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    from dcr.reports.render import ReportError, render_report

    try:
        v = json.loads(verdict.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        typer.echo(f"error: cannot read the verdict {verdict}: {exc}", err=True)
        raise typer.Exit(2) from None
    if plan is None or data is None:
        typer.echo("warning: without --plan and --data the report cannot be re-verified "
                   "(`dcr report verify` will fail) and has no plots", err=True)
    try:
        html = render_report(v, out, data_dir=data, lock_path=plan)
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
    from dcr.reports.verify import verify_report

    res = verify_report(report_dir, lock_path=plan, data_dir=data)
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
