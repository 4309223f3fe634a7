"""CLI of `producers`: `dcr produce …` and `dcr bench …` (filled in by their issues)."""
from __future__ import annotations

import typer

produce_app = typer.Typer(no_args_is_help=True)
bench_app = typer.Typer(no_args_is_help=True)
