"""Whole-pipeline commands: `dcr example seed-v3` and `dcr demo`."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import typer

from dcr.prereg.cli import bad_input, output_problem

app = typer.Typer(no_args_is_help=True)
example_app = typer.Typer(no_args_is_help=True, help="Worked examples that run end to end.")
app.add_typer(example_app, name="example")


@example_app.command("seed-v3")
def seed_v3(
    out: Path = typer.Option(..., "--out", help="Folder for plans, locks, data, verdicts and reports."),
    published: Path | None = typer.Option(
        None, "--published", help="The seed's published figures (JSON, transcribed from its release); "
        "default: the copy shipped in the package (analysis/assets/seed_v3/seed_v3_published.json)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Render a report per verdict."),
) -> None:
    """Re-decide the seed's published figures: ingest → lock → verdict → report.

    Six plans (analysis/assets/seed_v3/plans/): the seed's own rules as it applied them, and the hero data
    under our recommended registration. Every input is a transcribed published figure, not a new
    measurement; the reports say so.
    """
    from dcr.analysis.seed_v3 import PUBLISHED_JSON, PublishedFiguresError, run_example
    from dcr.prereg.loading import PlanError

    published = published or PUBLISHED_JSON
    problem = output_problem(out, folder=True)
    if problem:
        bad_input(f"--out: {problem} (the folder to write)")
    if not published.is_file():
        bad_input(f"{published}: no published-figures file there (--published)")
    try:
        verdicts = run_example(out, published)
    except (PublishedFiguresError, PlanError) as exc:  # PlanError: another plan locked in OUT/plans
        bad_input(str(exc))
    for name, v in verdicts.items():
        labels = ", ".join(f"{h['id']}={h['label']}" for h in v["hypotheses"])
        line = f"{name}: {labels}\n    verdict: {out / (name + '.verdict.json')}"
        if report:
            from dcr.reports.verify import render_verified

            html = render_verified(v, out / "reports" / name, data_dir=out / "data" / name,
                                   lock_path=out / "plans" / f"{name}.lock.yaml")
            line += f"\n    report:  {html}"
        typer.echo(line)


DEMO_PLAN = Path(str(files("dcr.prereg") / "registrations" / "demo.yaml"))


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("dcr-demo"), "--out", help="Folder for the plan, lock, data, verdict and report "
                             "(re-running into it resumes: finished cells are skipped)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """The whole study on the CPU with the shipped reference model: lock → produce → verdict → report.

    Uses prereg/registrations/demo.yaml: ΔPPL of exact Top-K on held-out Shakespeare windows, the
    random-spectrum baseline and the matched-magnitude causal test, with the PyTorch reference
    kernels. The model is a 5.6 M-parameter Llama-architecture model trained on Shakespeare
    (docs/reference-model.md), not Llama-3.2-1B: the demo shows the pipeline and measures that model.
    """
    import shutil
    import time

    from dcr.analysis.engine import compute_verdict, verdict_json
    from dcr.analysis.loading import MeasurementError
    from dcr.prereg.lock import PlanError, lock_plan
    from dcr.producers.causal import produce_causal
    from dcr.producers.quality import produce_quality
    from dcr.producers.random_spectrum import produce_random_spectrum
    from dcr.reports.verify import render_verified

    problem = output_problem(out, folder=True)
    if problem:
        bad_input(f"--out: {problem} (the folder to write)")
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    plan_copy = out / "demo.yaml"
    shutil.copyfile(DEMO_PLAN, plan_copy)
    try:  # bad input here: another plan locked in OUT, unusable part files in OUT/data
        lock_path, sha, written = lock_plan(plan_copy)
        typer.echo(f"[1/4] plan {'locked' if written else 'already locked'}: {lock_path}\n      sha256 {sha}")
        data = out / "data"
        typer.echo("[2/4] producing measurements on the CPU (reference kernels)")
        for step in (produce_quality, produce_random_spectrum, produce_causal):
            summary = step(lock_path, data, device="cpu", progress=progress)
            typer.echo(f"      {summary.producer}: {len(summary.written)} cell(s) written, {summary.skipped} resumed")
        verdict = compute_verdict(lock_path, data)
    except (PlanError, MeasurementError) as exc:
        bad_input(str(exc))
    verdict_path = out / "verdict.json"
    verdict_path.write_text(verdict_json(verdict), encoding="utf-8")
    typer.echo(f"[3/4] verdict: {verdict_path}")
    for h in verdict["hypotheses"]:
        typer.echo(f"      {h['id']:<40} {h['label']}")
    html = render_verified(verdict, out / "report", data_dir=data, lock_path=lock_path)
    typer.echo(f"[4/4] report: {html}\n      (markdown: {html.with_suffix('.md')}; "
               f"re-check with `dcr report verify {html.parent}`)  [{time.perf_counter() - t0:.0f} s]")
