"""The inputs a locked plan names, made concrete for every producer: the same model, the same
tokens and the same windows for the same plan.

* :func:`load_plan_model` — ``plan.model`` → :func:`producers.models.load_model` (preset, hub id at
  its pinned revision from the local cache, local directory, or the shipped reference model).
* :func:`load_plan_windows` — ``plan.corpus`` → text (hash checked when registered) → tokens
  (cached by content hash) → ``plan.windows`` placed with the plan's largest context, so window i
  is the same token span for every producer of the plan; prompt i is window i, and context N uses
  its first N + 1 tokens.
* :func:`model_info` — the ``dcr.model`` metadata.

The attention rule at a cell's coverage is ``dcr.prereg.rule.TopKRule.from_plan(plan.attention, c)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _resolve(path: str, base: Path) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists() or not (base / p).exists():
        return p
    return base / p


def load_plan_model(plan: Any, *, device: str, base_dir: Path, attn_implementation: str | None = None):
    """Load ``plan.model`` with ``attn_implementation``; returns a ``producers.models.LoadedModel``.

    base_dir: where relative local paths are looked up first (the lock file's folder).
    """
    from dcr.producers.models import load_model

    m = plan.model
    if m.source == "preset":
        return load_model(m.id, dtype=m.dtype, device=device, seed=m.preset_seed,
                          attn_implementation=attn_implementation)
    if m.source == "shipped":
        from dcr.producers.reference_model import reference_model_dir

        spec = str(reference_model_dir())
    elif m.source == "local":
        spec = str(_resolve(m.id, base_dir))
        if not Path(spec).is_dir():
            raise FileNotFoundError(f"plan model {m.id!r} (source local) is not a directory")
    else:  # hf (the local hub cache only, at the pinned revision) or package (fetched, hash-checked)
        spec = m.id
    return load_model(spec, dtype=m.dtype, device=device, revision=m.revision,
                      attn_implementation=attn_implementation)


@dataclass(frozen=True)
class PlanWindows:
    tokens: np.ndarray  # int32 [T]
    starts: list[int]  # window i starts at tokens[starts[i]]
    length: int  # max_context + 1
    info: dict[str, Any]  # corpus provenance (goes into every part file's dcr.corpus)

    def prompt(self, i: int, n: int) -> np.ndarray:
        """The first n + 1 token ids (int64) of window i: inputs tokens[0..n-1], next token tokens[n]."""
        if n + 1 > self.length:
            raise ValueError(f"context {n} exceeds the window length {self.length - 1}")
        s = self.starts[i]
        return np.asarray(self.tokens[s:s + n + 1], dtype=np.int64)


def load_plan_windows(plan: Any, tokenizer: Any, *, base_dir: Path, max_context: int | None = None) -> PlanWindows:
    """Tokenise ``plan.corpus`` with ``tokenizer`` and place ``plan.windows`` (length max_context + 1;
    ``max_context`` defaults to ``plan.max_context``, the largest quality/random-spectrum/causal N)."""
    from dcr.producers.corpus import WIKITEXT, load_text, make_windows, tokenize_cached

    c = plan.corpus
    if c.source == "datasets":
        src = f"{c.name}:{c.split}"
        if src != WIKITEXT:
            raise ValueError(f"corpus {src!r}: only {WIKITEXT!r} is supported from 'datasets'")
    elif c.source == "file":
        src = str(_resolve(c.path, base_dir))
    else:  # shipped: the reference model's held-out text
        from dcr.producers.reference_model import heldout_text_path

        src = str(heldout_text_path())
    text, tinfo = load_text(src)
    if c.sha256 is not None and tinfo["text_sha256"] != c.sha256:
        raise ValueError(f"corpus {c.name!r}: text sha256 {tinfo['text_sha256']} differs from the "
                         f"registered {c.sha256}")
    cache = Path(os.environ.get("DCR_CACHE_DIR", Path.home() / ".cache" / "dcr-prereg")) / "tokens"
    tokens, kinfo = tokenize_cached(text, tokenizer, cache)
    w = plan.windows
    n = plan.max_context if max_context is None else max_context
    if w.placement == "disjoint":
        wins = make_windows(tokens.size, n, placement="disjoint", count=w.count, offset=w.start)
    else:
        wins = make_windows(tokens.size, n, placement="offsets", starts=w.offsets)
    info = {"name": c.name, "source": c.source, "text_sha256": tinfo["text_sha256"],
            "tokens_sha256": kinfo["tokens_sha256"], "tokenizer": kinfo["tokenizer"],
            "n_tokens": kinfo["n_tokens"], "window_length": n + 1,
            "window_starts": [x.start for x in wins], "windows_overlap": any(x.overlaps for x in wins)}
    return PlanWindows(tokens=tokens, starts=[x.start for x in wins], length=n + 1, info=info)


@dataclass(frozen=True)
class PlanRun:
    """What a producer starts from: the verified lock, its cells, the model and the windows."""

    locked: Any  # prereg.lock.LockedPlan (hash verified)
    cells: Any  # the plan's cells of this producer (e.g. QualityCells)
    loaded: Any  # producers.models.LoadedModel
    windows: PlanWindows

    @property
    def plan(self) -> Any:
        return self.locked.plan


def open_plan(lock_path: str | Path, producer: str, *, device: str, attn_implementation: str | None = None) -> PlanRun:
    """Verify the lock (an unlocked or altered plan is refused), check that it registers cells for
    ``producer``, and load the plan's model and windows. Relative paths resolve from the lock's folder.

    Windows span ``max(plan.max_context, this producer's largest context) + 1`` tokens: the same
    windows for every producer, except that latency (whose contexts ``plan.max_context`` leaves
    out) may need longer ones."""
    from dcr.prereg.lock import load_locked

    lock_path = Path(lock_path)
    locked = load_locked(lock_path, search_dirs=[lock_path.parent])
    cells = getattr(locked.plan.producers, producer)
    if cells is None:
        raise ValueError(f"{lock_path}: the plan registers no {producer} cells")
    loaded = load_plan_model(locked.plan, device=device, base_dir=lock_path.parent,
                             attn_implementation=attn_implementation)
    n = max(locked.plan.max_context, max(getattr(cells, "contexts", [0])))
    windows = load_plan_windows(locked.plan, loaded.tokenizer, base_dir=lock_path.parent, max_context=n)
    return PlanRun(locked=locked, cells=cells, loaded=loaded, windows=windows)


def model_info(loaded: Any) -> dict[str, Any]:
    """The `dcr.model` metadata of every part file (id, revision, checksum, weights_random, …)."""
    info = loaded.info.as_dict()
    return {"id": info["model"], **info}
