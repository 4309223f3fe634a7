"""CLI of `analysis`: ``dcr verdict --plan PLAN.lock.yaml --data DIR --out VERDICT.json``.

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
    from dcr.analysis.loading import MeasurementError
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
    typer.echo(f"wrote {out}")
