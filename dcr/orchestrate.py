"""Whole-pipeline commands: `dcr demo` and `dcr example seed-v3`."""
from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
