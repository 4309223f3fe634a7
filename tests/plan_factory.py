"""Small plans for tests: locked plans for the producers (a local model, a random-letter corpus
file, one producer), locked copies of shipped plans, synthetic complete data for a plan, and a toy
quality study with data written directly (no producer run)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml


def locked_tiny_plan(tmp: Path, model_dir: Path, *, producer: str, cells: dict[str, Any], metric: str,
                     prompts: int, corpus_seed: int) -> Path:
    """Write and lock a plan with ``cells`` as its only producer and one descriptive hypothesis."""
    from dcr.prereg.lock import lock_plan

    rng = np.random.default_rng(corpus_seed)
    (tmp / "corpus.txt").write_text("".join(chr(c) for c in rng.integers(97, 123, 8000)))
    hyp = {"id": "h", "statement": "s", "producer": producer, "select": {}, "metric": metric,
           "nonfinite": "error", "statistics": [{"id": "d", "kind": "describe", "params": {"ddof": 1}}],
           "gates": [], "decision": {"rules": [], "fallback": "REPORTED"}, "family": None}
    plan = {
        "schema_version": 1,
        "study": {"id": f"{producer.replace('_', '-')}-test", "version": 1, "title": "t", "authors": ["a"],
                  "description": ""},
        "amends": None,
        "model": {"source": "local", "id": str(model_dir), "revision": None, "dtype": "float32", "preset_seed": None},
        "corpus": {"name": "c", "source": "file", "split": None, "path": str(tmp / "corpus.txt"), "sha256": None},
        "windows": {"placement": "disjoint", "count": prompts, "start": 0, "offsets": None},
        "attention": {"k_min": 4, "dispatch_threshold": 0, "selection": "query_head",
                      "tie_rule": "lower_index", "score_dtype": "float32"},
        "producers": {producer: cells},
        "hypotheses": [hyp], "multiplicity": [],
    }
    (tmp / "plan.yaml").write_text(yaml.safe_dump(plan))
    lock, _, _ = lock_plan(tmp / "plan.yaml")
    return lock


def locked_demo_quality_plan(tmp: Path, *, study_id: str, contexts: list[int], coverages: list[float],
                             arms: list[dict] | None = None, kernel: str = "reference",
                             per_position: bool | None = None) -> Path:
    """The shipped demo plan cut down to a small quality-only study on the shipped model
    (3 disjoint windows, k_min = dispatch threshold = 8), locked in ``tmp``; ``arms``: quality arms."""
    from dcr.prereg.lock import lock_plan

    root = Path(__file__).resolve().parents[1]
    plan = yaml.safe_load((root / "prereg" / "registrations" / "demo.yaml").read_text())
    plan["study"]["id"] = study_id
    plan["windows"] = {"placement": "disjoint", "count": 3, "start": 0, "offsets": None}
    plan["attention"]["k_min"] = 8
    plan["attention"]["dispatch_threshold"] = 8
    plan["producers"] = {"quality": {"contexts": contexts, "coverages": coverages, "layers": "all",
                                     "kernel": kernel}}
    if arms is not None:
        plan["producers"]["quality"]["arms"] = arms
    if per_position is not None:
        plan["producers"]["quality"]["per_position"] = per_position
    q = [h for h in plan["hypotheses"] if h["producer"] == "quality"][0]
    q["select"] = {"N": max(contexts), "coverage": min(coverages)}
    if arms is not None:
        q["select"]["arm"] = arms[0]["id"]
    q["gates"] = []
    plan["hypotheses"] = [q]
    plan["multiplicity"] = []
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False, allow_unicode=True))
    lock, _, _ = lock_plan(path)
    return lock


# ---------------------------------------------------------------------------- a toy quality study

TOY_N, TOY_C = 64, 0.5
TOY_PLAN: dict[str, Any] = {
    "schema_version": 1,
    "study": {"id": "toy-study", "version": 1, "title": "A toy quality study", "authors": ["tests"],
              "description": "tests/plan_factory.py"},
    "amends": None,
    "model": {"source": "preset", "id": "tiny-llama", "revision": None, "dtype": "float32", "preset_seed": 0},
    "corpus": {"name": "toy", "source": "shipped", "split": None, "path": None, "sha256": None},
    "windows": {"placement": "disjoint", "count": 4, "start": 0, "offsets": None},
    "attention": {"k_min": 4, "dispatch_threshold": 0, "selection": "query_head", "tie_rule": "lower_index",
                  "score_dtype": "float32"},
    "producers": {"quality": {"contexts": [TOY_N], "coverages": [TOY_C], "layers": "all", "kernel": "reference"}},
    "hypotheses": [{
        "id": "H", "statement": "ΔPPL is small", "producer": "quality", "select": {"N": TOY_N, "coverage": TOY_C},
        "metric": "delta_ppl_pct", "nonfinite": "error",
        "statistics": [{"id": "mean_ci", "kind": "mean_t_ci",
                        "params": {"confidence_level": 0.95, "alternative": "two-sided"}}],
        "gates": [],
        "decision": {"rules": [{"label": "STRICT", "when": [{"stat": "mean_ci.high", "op": "<=", "value": 0.5}]}],
                     "fallback": "UNUSABLE"},
        "family": None}],
    "multiplicity": [],
}


def toy_plan(*edits: Callable[[dict], None]) -> dict:
    """A deep copy of TOY_PLAN with each edit function applied to it."""
    plan = json.loads(json.dumps(TOY_PLAN))
    for edit in edits:
        edit(plan)
    return plan


def write_plan(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def toy_quality_row(window: int, delta: float):
    """One quality row (pyarrow table) of toy window ``window`` whose ΔPPL% is ``delta``; the NLL
    sums and perplexities agree with it."""
    import pyarrow as pa

    n = TOY_N
    nd = 2.0 * n
    ns = nd + n * math.log1p(delta / 100)
    return pa.table({
        "window_index": [window], "window_start": [window * (n + 1)], "N": [n], "coverage": [TOY_C],
        "kernel": ["reference"], "k_min": [4], "dispatch_threshold": [0], "n_tokens": [n],
        "nll_sum_dense": [nd], "nll_sum_sparse": [ns], "ppl_dense": [math.exp(nd / n)],
        "ppl_sparse": [math.exp(ns / n)], "delta_ppl_pct": [delta], "sparse_rows": [n], "dense_rows": [0]})


def write_toy_data(data_dir: Path, sha: str, *, windows: int, seed: int) -> None:
    """One part file per toy window; ΔPPL% drawn from N(0.3, 0.1) by a generator seeded ``seed``."""
    from dcr.prereg.measurements import write_part

    rng = np.random.default_rng(seed)
    for w in range(windows):
        write_part(data_dir, producer="quality", producer_version="0.1.0", prereg_sha256=sha,
                   cell={"window_index": w, "N": TOY_N, "coverage": TOY_C},
                   table=toy_quality_row(w, float(rng.normal(0.3, 0.1))), environment={"gpu": None},
                   model={"id": "tiny-llama", "weights_random": True}, corpus={"name": "toy"})


def locked_toy_study(d: Path, *edits: Callable[[dict], None], seed: int) -> tuple[Path, Path]:
    """Lock ``toy_plan(*edits)`` as d/plan/<study id>.yaml and write its data to d/data: (lock, data)."""
    from dcr.prereg.lock import lock_plan

    plan = toy_plan(*edits)
    lock, sha, _ = lock_plan(write_plan(d / "plan" / f"{plan['study']['id']}.yaml", plan))
    write_toy_data(d / "data", sha, windows=plan["windows"]["count"], seed=seed)
    return lock, d / "data"


def set_field(path: str, value: Any) -> Callable[[dict], None]:
    """An edit: set the dotted ``path`` (list indices as numbers) of a plan dict to ``value``."""
    def edit(d: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


ROOT = Path(__file__).resolve().parents[1]


def lock_copy(tmp: Path, plan_path: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """Copy the plan at ``plan_path`` into ``tmp``, apply ``edit`` to its data, lock it; returns the lock."""
    from dcr.prereg.lock import lock_plan

    data = yaml.safe_load(Path(plan_path).read_text(encoding="utf-8"))
    if edit is not None:
        edit(data)
    path = tmp / Path(plan_path).name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    lock, _, _ = lock_plan(path)
    return lock


def synthetic_rows(plan: Any, producer: str, cell: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Rows of one registered cell, drawn from ``rng``, that pass the shipped plans' gates: quality
    one row (the plan's kernel, ΔPPL% about 0.3), random_spectrum one row per (layer, head, prompt)
    of three heads (entropy linear in ln N), causal one row (d_nll about 0.05, checks passed)."""
    if producer == "quality":
        d = float(rng.normal(0.3, 0.1))
        return [{**cell, "window_start": 0, "kernel": plan.producers.quality.kernel, "k_min": plan.attention.k_min,
                 "dispatch_threshold": plan.attention.dispatch_threshold, "n_tokens": cell["N"],
                 "nll_sum_dense": 1.0, "nll_sum_sparse": 1.0, "ppl_dense": 5.0, "ppl_sparse": 5.0 * (1 + d / 100),
                 "delta_ppl_pct": d, "sparse_rows": 1, "dense_rows": 1}]
    if producer == "random_spectrum":
        slope = 0.6 if cell["variant"] == "trained" else 1.0
        return [{**cell, "layer": layer, "head": head, "prompt": prompt,
                 "entropy": float(0.5 + slope * np.log(cell["N"]) + rng.normal(0, 0.05))}
                for layer, head in ((0, 0), (0, 1), (1, 0)) for prompt in range(plan.producers.random_spectrum.prompts)]
    if producer == "causal":
        d = float(rng.normal(0.05, 0.02))
        return [{**cell, "nll_base": 3.0, "nll_treat": 3.0 + d, "nll_ctrl": 3.0, "d_nll": d, "delta_h_t": 0.02,
                 "delta_h_c": 0.0005, "norm_ratio": 1.0 + 1e-4, "fd_error": 1e-4, "ls_converged": True,
                 "ls_iterations": 5, "d_gap": 0.0, "dense_fallback": False}]
    raise NotImplementedError(f"no synthetic rows for producer {producer}")


def write_complete_data(lock_path: Path, data_dir: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    """One part file per registered cell of every producer of the locked plan (rows from
    :func:`synthetic_rows`, generator seeded with ``seed``); returns {producer: its cells}."""
    from dcr.prereg.lock import load_locked
    from dcr.prereg.measurements import PRODUCERS, expected_cells, write_part

    locked = load_locked(lock_path)
    rng = np.random.default_rng(seed)
    out = {}
    for producer in PRODUCERS:
        cells = expected_cells(locked.plan, producer)
        for cell in cells:
            write_part(data_dir, producer=producer, producer_version="synthetic", prereg_sha256=locked.sha256,
                       cell=cell, table=PRODUCERS[producer].table(synthetic_rows(locked.plan, producer, cell, rng)),
                       environment={}, model={}, corpus={})
        if cells:
            out[producer] = cells
    return out
