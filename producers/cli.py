"""CLI of `producers`: `dcr produce …` and `dcr bench …`.

Each command lives in its own module; this file only wires them. Command modules import
torch/triton inside the command bodies, never at import time.
"""
from __future__ import annotations

import typer

from producers import bench_decode, bench_quality

produce_app = typer.Typer(no_args_is_help=True)
bench_app = typer.Typer(no_args_is_help=True)

bench_app.command("decode", help="Decode op: ours vs every SDPA backend vs naive top-k (GPU).")(bench_decode.cli)
bench_app.command("quality", help="Teacher-forced dense vs sparse forward of a model (GPU).")(bench_quality.cli)
