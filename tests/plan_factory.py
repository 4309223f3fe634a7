"""Small locked plans for producer tests: a local model, a random-letter corpus file, one producer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

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
