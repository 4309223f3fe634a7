"""The seed-v3 example: published figures -> transcribed measurement files -> locked plans -> verdicts.

Public API:

* :func:`ingest(published, plan_name, lock_path, data_dir, source_sha256) -> list[Path]` — write
  the published figures a plan reads as part files (``prereg.measurements.write_part``), flagged
  as transcribed (file metadata ``dcr.transcribed``), under the locked plan's hash, recording the
  lock (``dcr.lock``).
* :func:`run_example(out_dir, published_json_path) -> dict[str, dict]` — copy the example's
  plans (``PLANS_DIR``: analysis/assets/seed_v3/plans/*.yaml, shipped in the package) to
  ``out_dir/plans``, lock them, ingest, compute every verdict, write
  ``out_dir/<plan>.verdict.json``; returns {plan name: verdict}.

Nothing here is a measurement: every value is a transcribed published figure (see the example's
README for what each plan can and cannot reproduce).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from dcr.prereg.measurements import with_metadata, write_part
from dcr.prereg.provenance import lock_record

ASSETS = Path(__file__).resolve().parent / "assets" / "seed_v3"
PLANS_DIR = ASSETS / "plans"
PUBLISHED_JSON = ASSETS / "seed_v3_published.json"  # copy of the release's published figures
PLAN_NAMES = ("hero-as-run", "m1-m4-as-run", "entropy-trained-as-run", "random-spectrum-as-run",
              "causal-as-run", "hero-recommended")
PRODUCER_VERSION = "transcribed:seed-v3.0.0"
SEED_OFFSETS = (0, 1, 2, 42, 100)  # the seed's "seeds": window start = seed * 1000 tokens

_ENV = {"source": "DCR-attention v3.0.0 release (data/raw), transcribed", "gpu": "NVIDIA GeForce RTX 4060 Ti",
        "torch": None, "triton": None, "transformers": None, "cuda": None, "git_commit": None, "git_dirty": None}
_MODEL = {"id": "meta-llama/Llama-3.2-1B", "revision": None, "weights_sha256": None, "weights_random": False}
_CORPUS = {"name": "wikitext-2-raw-v1 validation", "tokens_sha256": None}


@dataclass(frozen=True)
class _Target:
    """Where ingested files go: the data folder, the plan hash, the lock record."""

    data_dir: Path
    sha: str
    lock: dict[str, str]


def _write(to: _Target, producer: str, cell: dict, columns: dict[str, tuple[list, pa.DataType]],
           transcribed: dict[str, Any], model: dict | None = None) -> Path:
    table = pa.table({k: pa.array(v, type=t) for k, (v, t) in columns.items()})
    return write_part(to.data_dir, producer=producer, producer_version=PRODUCER_VERSION, prereg_sha256=to.sha,
                      cell=cell, table=with_metadata(table, transcribed=transcribed), environment=_ENV,
                      model=model or _MODEL, corpus=_CORPUS, lock=to.lock)


def _t(source_sha: str, what: str, **extra: Any) -> dict[str, Any]:
    return {"source": "seed_v3_published.json", "source_sha256": source_sha, "what": what, **extra}


I64, F64, STR = pa.int64(), pa.float64(), pa.string()


def ingest(published: dict[str, Any], plan_name: str, lock_path: str | Path, data_dir: str | Path,
           source_sha256: str) -> list[Path]:
    """Write the figures ``plan_name`` reads to ``data_dir`` under the locked plan ``lock_path``."""
    from dcr.prereg.lock import load_locked

    d = _Target(Path(data_dir), load_locked(lock_path, search_dirs=[Path(lock_path).parent]).sha256,
                lock_record(lock_path))
    out = []
    if plan_name in ("hero-as-run", "hero-recommended"):
        hq = published["hero_quality"]
        for i, row in enumerate(hq["per_seed"]):
            cell = {"window_index": i, "N": 32000, "coverage": 0.15}
            note = row.get("note", "per-seed figures as released")
            out.append(_write(d, "quality", cell, {
                "window_index": ([i], I64), "window_start": ([row["seed"] * 1000], I64), "N": ([32000], I64),
                "coverage": ([0.15], F64), "kernel": (["reference"], STR), "ppl_dense": ([row["ppl_dense"]], F64),
                "ppl_sparse": ([row["ppl_sparse"]], F64), "delta_ppl_pct": ([row["delta_ppl_pct"]], F64)},
                _t(source_sha256, "hero_quality.per_seed", note=note)))
    elif plan_name == "m1-m4-as-run":
        m1, m4 = published["m1_acceptance"]["delta_ppl_pct_by_seed"], published["m4_acceptance"]["delta_ppl_pct_by_seed"]
        for i, s in enumerate(SEED_OFFSETS):
            cell = {"window_index": i, "N": 2000, "coverage": 0.5}
            out.append(_write(d, "quality", cell, {
                "window_index": ([i, i], I64), "window_start": ([s * 1000] * 2, I64), "N": ([2000, 2000], I64),
                "coverage": ([0.5, 0.5], F64), "kernel": (["reference", "triton"], STR),
                "delta_ppl_pct": ([m1[str(s)], m4[str(s)]], F64)},
                _t(source_sha256, "m1_acceptance / m4_acceptance delta_ppl_pct_by_seed")))
    elif plan_name == "entropy-trained-as-run":
        es = published["entropy_scaling_trained"]
        for n, h in zip(es["N"], es["mean_H"]):
            cell = {"variant": "trained", "seed": None, "N": n}
            out.append(_write(d, "random_spectrum", cell, {
                "variant": (["trained"], STR), "seed": ([None], I64), "N": ([n], I64), "entropy": ([h], F64)},
                _t(source_sha256, "entropy_scaling_trained.mean_H",
                   note="mean over the seed's 12 heads x 25 prompts (per-head rows not released)")))
    elif plan_name == "random-spectrum-as-run":
        rs = published["random_spectrum"]
        for s, a in rs["alpha_by_seed"].items():
            s = int(s)
            cell = {"variant": "default_init", "seed": s}
            covers = [{"variant": "default_init", "seed": s, "N": n} for n in rs["setting"]["N"]]
            out.append(_write(d, "random_spectrum", cell, {
                "variant": (["default_init"], STR), "seed": ([s], I64), "alpha": ([a], F64)},
                _t(source_sha256, "random_spectrum.alpha_by_seed", summary_columns={"alpha": "float64"},
                   covers_cells=covers, note="per-seed fitted alpha; per-head entropies not released")))
    elif plan_name == "causal-as-run":
        ca = published["causal_as_run"]
        pooled, bias = ca["pooled"], ca["pooled"]["bias_check"]
        cols = {"scope": "string", "n": "int64", "median_D": "float64", "ci_low": "float64",
                "ci_high": "float64", "mean_D": "float64", "wilcoxon_p": "float64", "mw_u": "float64",
                "mw_p": "float64", "n_stalled": "int64", "n_converged": "int64"}
        out.append(_write(d, "causal", {"scope": "pooled"}, {
            "scope": (["pooled"], STR), "n": ([pooled["n"]], I64), "median_D": ([pooled["median_D"]], F64),
            "ci_low": ([pooled["ci95"][0]], F64), "ci_high": ([pooled["ci95"][1]], F64),
            "mean_D": ([pooled["mean_D"]], F64), "wilcoxon_p": ([pooled["wilcoxon_p"]], F64),
            "mw_u": ([float(bias["U"])], F64), "mw_p": ([bias["p"]], F64), "n_stalled": ([bias["n_stalled"]], I64),
            "n_converged": ([bias["n_converged"]], I64)},
            _t(source_sha256, "causal_as_run.pooled", summary_columns=cols, covers_cells="all",
               note="released summary of all cells; per-cell D values were never released")))
        bc = ca["by_context"]
        out.append(_write(d, "causal", {"scope": "by_context"}, {
            "scope": (["by_context"] * len(bc), STR), "N": ([r["N"] for r in bc], I64), "n": ([r["n"] for r in bc], I64),
            "median_D": ([r["median_D"] for r in bc], F64), "ci_low": ([r["ci95"][0] for r in bc], F64),
            "ci_high": ([r["ci95"][1] for r in bc], F64), "wilcoxon_p": ([r["wilcoxon_p"] for r in bc], F64),
            "mw_p": ([r["mw_p"] for r in bc], F64), "n_stalled": ([r["n_stalled"] for r in bc], I64)},
            _t(source_sha256, "causal_as_run.by_context", summary_columns=cols, covers_cells=[],
               note="per-context summaries of the same cells the pooled row covers")))
    else:
        raise KeyError(f"unknown seed-v3 plan '{plan_name}' (known: {', '.join(PLAN_NAMES)})")
    return out


class PublishedFiguresError(ValueError):
    """The published-figures file cannot be read or lacks a figure the plans need (names the file)."""


def run_example(out_dir: str | Path, published_json_path: str | Path) -> dict[str, dict[str, Any]]:
    """Ingest -> lock -> verdict for every seed-v3 plan; returns {plan name: verdict dict}.
    Raises :class:`PublishedFiguresError` for an unreadable or malformed published-figures file.

    Writes ``out_dir/plans/<name>.yaml`` (+ ``.lock.yaml``), ``out_dir/data/<name>/…`` and
    ``out_dir/<name>.verdict.json``. Re-running into the same folder re-uses identical locks and
    replaces the data.
    """
    from dcr.analysis.engine import compute_verdict, verdict_json
    from dcr.prereg.lock import lock_plan

    out, src = Path(out_dir), Path(published_json_path)
    try:
        raw = src.read_bytes()
        published, source_sha = json.loads(raw), hashlib.sha256(raw).hexdigest()
    except (OSError, ValueError) as exc:
        raise PublishedFiguresError(f"{src}: cannot read the published figures: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(published, dict):
        raise PublishedFiguresError(f"{src}: the published figures are a JSON object, not {type(published).__name__}")
    (out / "plans").mkdir(parents=True, exist_ok=True)
    verdicts: dict[str, dict[str, Any]] = {}
    for name in PLAN_NAMES:
        plan_copy = out / "plans" / f"{name}.yaml"
        shutil.copyfile(PLANS_DIR / f"{name}.yaml", plan_copy)
        lock_path, _, _ = lock_plan(plan_copy)
        data_dir = out / "data" / name
        if data_dir.exists():
            shutil.rmtree(data_dir)
        try:
            ingest(published, name, lock_path, data_dir, source_sha)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PublishedFiguresError(f"{src}: not the seed's published figures (plan {name}: "
                                        f"{type(exc).__name__}: {exc})") from None
        v = compute_verdict(lock_path, data_dir)
        (out / f"{name}.verdict.json").write_text(verdict_json(v), encoding="utf-8")
        verdicts[name] = v
    return verdicts
