"""Whole-pipeline commands: `dcr example seed-v3` and `dcr demo`."""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)
example_app = typer.Typer(no_args_is_help=True, help="Worked examples that run end to end.")
app.add_typer(example_app, name="example")

REPO = Path(__file__).resolve().parents[1]
SEED_PUBLISHED = REPO / "examples" / "seed-v3" / "seed_v3_published.json"


@example_app.command("seed-v3")
def seed_v3(
    out: Path = typer.Option(..., "--out", help="Folder for plans, locks, data, verdicts and reports."),
    published: Path = typer.Option(SEED_PUBLISHED, "--published",
                                   help="The seed's published figures (JSON, transcribed from its release)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Render a report per verdict."),
) -> None:
    """Re-decide the seed's published figures: ingest → lock → verdict → report.

    Six plans (examples/seed-v3/plans/): the seed's own rules as it applied them, and the hero data
    under our recommended registration. Every input is a transcribed published figure, not a new
    measurement; the reports say so.
    """
    from analysis.seed_v3 import run_example

    if not published.is_file():
        typer.echo(f"error: no published-figures file at {published}", err=True)
        raise typer.Exit(2)
    verdicts = run_example(out, published)
    for name, v in verdicts.items():
        labels = ", ".join(f"{h['id']}={h['label']}" for h in v["hypotheses"])
        line = f"{name}: {labels}\n    verdict: {out / (name + '.verdict.json')}"
        if report:
            from reports.render import render_report

            html = render_report(v, out / "reports" / name, data_dir=out / "data" / name,
                                 lock_path=out / "plans" / f"{name}.lock.yaml")
            line += f"\n    report:  {html}"
        typer.echo(line)
