"""The `dcr` command: one root app; each subsystem owns its part.

Sub-apps are plain Typer apps whose modules import nothing heavy at import time
(torch, triton, transformers, scipy are imported inside the commands), so that
`dcr prereg …` and `dcr verdict …` start fast and `analysis` never loads torch.
"""
from __future__ import annotations

import typer

from dcr.analysis.cli import app as analysis_app
from dcr.orchestrate import app as orchestrate_app
from dcr.prereg.cli import app as prereg_app
from dcr.producers.cli import bench_app, model_app, produce_app
from dcr.reports.cli import app as report_app

app = typer.Typer(
    help=(
        "Pre-registered study of exact Top-K sparse attention (DCR-attention v3, re-built).\n\n"
        "Workflow: `dcr prereg lock PLAN` → `dcr produce … --plan PLAN.lock.yaml --out DATA` → "
        "`dcr verdict --plan PLAN.lock.yaml --data DATA --out VERDICT.json` → "
        "`dcr report --verdict VERDICT.json --plan PLAN.lock.yaml --data DATA --out REPORT`. "
        "`dcr demo` runs all of it on the CPU. Exit codes: 0 success, 1 a check found differences, "
        "2 bad input."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(prereg_app, name="prereg", help="Lock, verify, diff and amend pre-registrations.")
app.add_typer(produce_app, name="produce", help="Run a producer over a locked plan's cells → Parquet.")
app.add_typer(report_app, name="report", help="Render and re-verify classification reports.")
app.add_typer(model_app, name="model", help="Packaged pretrained models: fetch, verify, convert.")
app.add_typer(bench_app, name="bench", help="Benchmarks: speed ratios measured in one run (GPU).")
# Single commands (`dcr verdict`, `dcr demo`, `dcr example …`) are mounted at the top level.
for sub in (analysis_app, orchestrate_app):
    app.registered_commands.extend(sub.registered_commands)
    app.registered_groups.extend(sub.registered_groups)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
