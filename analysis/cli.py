"""CLI of `analysis`: ``dcr verdict --plan PLAN.lock.yaml --data DIR --out VERDICT.json`` and
``dcr import --plan PLAN.lock.yaml --table FILE --producer P --source TEXT --out DIR``.

Imports nothing heavy at import time (scipy/pandas load inside the command); never torch.
"""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("verdict")
def verdict(
    plan: Path = typer.Option(..., "--plan", help="The locked plan (PLAN.lock.yaml, from `dcr prereg lock`)."),
    data: Path = typer.Option(..., "--data", help="Measurement folder: DIR/<producer>/part-*.parquet."),
    out: Path = typer.Option(..., "--out", help="Where to write the verdict JSON (docs/verdict-format.md)."),
) -> None:
    """Apply a locked plan's registered statistics and decision tables to its measurements."""
    from dcr.analysis.engine import compute_verdict, verdict_json
    from dcr.analysis.loading import MeasurementError, why_not_read
    from dcr.prereg.cli import bad_input, output_problem
    from dcr.prereg.loading import PlanError

    problem = output_problem(out, folder=False)
    if problem:
        bad_input(f"--out: {problem} (the verdict JSON file to write)")
    try:
        v = compute_verdict(plan, data)
    except (MeasurementError, PlanError) as exc:
        bad_input(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(verdict_json(v), encoding="utf-8")
    width = max((len(h) for h in v["summary"]), default=0)
    for h in v["hypotheses"]:
        typer.echo(f"{h['id']:<{width}}  {h['label']:<20} {h['reason']}")
    for producer, rep in v["cells"].items():
        if rep["missing"] or rep["duplicated"] or rep["unexpected"]:
            typer.echo(f"cells[{producer}]: {len(rep['missing'])} missing, {len(rep['duplicated'])} duplicated, "
                       f"{len(rep['unexpected'])} unexpected (of {rep['expected']} expected)", err=True)
    for f in v["data"]["ignored_files"]:
        typer.echo(f"not read: {f} ({why_not_read(f)})", err=True)
    typer.echo(f"wrote {out}")


@app.command("import")
def import_(
    plan: Path = typer.Option(..., "--plan", help="The locked plan (PLAN.lock.yaml) the figures are decided under."),
    table: Path = typer.Option(..., "--table", help="CSV or Parquet table: one or more rows per registered cell, "
                               "with every cell-key column of the producer (docs/measurements.md)."),
    producer: str = typer.Option(..., "--producer", help="Whose cells the rows are: quality, random_spectrum, "
                                 "causal or latency."),
    source: str = typer.Option(..., "--source", help="Where the figures come from (a citation, a URL, a run id); "
                               "recorded in every file and shown in the report."),
    out: Path = typer.Option(..., "--out", help="Measurement folder; part files go to OUT/<producer>/."),
    environment: Path | None = typer.Option(None, "--environment", help="JSON object of what is known of the "
                                            "environment that measured the figures (gpu, torch, cuda, …); "
                                            "without it the report shows the environment as not recorded."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite part files already in place for these cells."),
) -> None:
    """Import per-cell figures from elsewhere as transcribed measurements under a locked plan.

    Every row is checked like a measurement: its cell must be registered, no two rows may share
    a row key, columns of the producer's schema must have their type, and every column the plan's
    hypotheses read must be present; otherwise nothing is written (exit 2). Registered cells the
    table lacks are named: the verdict treats them as missing. Example: examples/import/README.md.
    """
    from dcr.analysis.importing import ImportRefused, import_table, read_environment
    from dcr.analysis.loading import MeasurementError
    from dcr.prereg.loading import PlanError
    from dcr.prereg.measurements import cell_json

    try:
        env = read_environment(environment) if environment is not None else None
        res = import_table(plan, table, producer, out, source=source, environment=env, replace=replace)
    except (ImportRefused, MeasurementError, PlanError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    rep = res.cells
    typer.echo(f"wrote {len(res.written)} transcribed part file(s) under {out / producer}"
               + (f" (columns of figures beyond the schema: {', '.join(res.summary_columns)})" if res.summary_columns else ""))
    typer.echo(f"cells[{producer}]: {rep['found']} of {rep['expected']} registered cells present in {out}")
    if rep["missing"]:
        typer.echo(f"missing: {len(rep['missing'])} registered cell(s): "
                   + "; ".join(cell_json(c) for c in rep["missing"][:10])
                   + (" …" if len(rep["missing"]) > 10 else "")
                   + " (hypotheses reading them are INSUFFICIENT_DATA unless the plan registers partial_data)", err=True)
    for d in rep["duplicated"]:
        typer.echo(f"duplicated: {cell_json(d['cell'])} ({d['reason']})", err=True)
