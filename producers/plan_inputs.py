"""What a locked plan names, made concrete: its model, its corpus tokens, its windows, its rule.

Every producer starts here, so they all read the same model, the same tokens and the same
windows for the same plan.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from producers.corpus import WIKITEXT, Window, load_text, make_windows, tokenize_cached
from producers.kernels.reference import TopKRule
from producers.models import LoadedModel, load_model


def token_cache_dir() -> Path:
    """Where token arrays are cached: $DCR_CACHE or ~/.cache/dcr/tokens."""
    return Path(os.environ.get("DCR_CACHE", Path.home() / ".cache" / "dcr")) / "tokens"


def load_plan_model(plan: Any, device: str) -> LoadedModel:
    """The model the plan registers (hub id pinned to its revision, local dir, shipped, or preset)."""
    m = plan.model
    if m.source == "shipped":
        from producers.reference_model import reference_model_dir

        return load_model(str(reference_model_dir()), dtype=m.dtype, device=device)
    if m.source == "preset":
        return load_model(m.id, dtype=m.dtype, device=device, seed=m.preset_seed)
    if m.source == "local":
        if not Path(m.id).is_dir():
            raise FileNotFoundError(f"plan model.id {m.id!r} is not a local directory")
        return load_model(m.id, dtype=m.dtype, device=device)
    return load_model(m.id, dtype=m.dtype, device=device, revision=m.revision)


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    """The `dcr.model` metadata of every part file (id, revision, checksum, weights_random)."""
    info = loaded.info.as_dict()
    return {"id": info["model"], "revision": info["revision"], "weights_sha256": info["weights_sha256"],
            "weights_random": info["weights_random"], **info}


@dataclass(frozen=True)
class PlanCorpus:
    tokens: np.ndarray  # int32 [T]
    info: dict[str, Any]  # the `dcr.corpus` metadata: name, source, text and token hashes


def load_plan_corpus(plan: Any, tokenizer: Any) -> PlanCorpus:
    """Tokenise the plan's corpus once (cached by content); check its registered text hash."""
    c = plan.corpus
    if c.source == "shipped":
        from producers.reference_model import heldout_text_path

        source = str(heldout_text_path())
    elif c.source == "file":
        source = c.path
    else:
        if (c.name, c.split) not in (("wikitext-2-raw-v1", "validation"), ("wikitext", "validation")):
            raise ValueError(f"datasets corpus {c.name}:{c.split} is not supported (only {WIKITEXT})")
        source = WIKITEXT
    text, text_meta = load_text(source)
    if c.sha256 is not None and text_meta["text_sha256"] != c.sha256:
        raise ValueError(f"corpus text sha256 {text_meta['text_sha256']} differs from the registered {c.sha256}")
    tokens, tok_meta = tokenize_cached(text, tokenizer, token_cache_dir())
    info = {"name": c.name, "split": c.split, "source": source, **text_meta, **tok_meta}
    info.pop("cache_file", None)
    return PlanCorpus(tokens=tokens, info=info)


def plan_windows(plan: Any, n_tokens: int) -> list[Window]:
    """The plan's windows, each ``max_context + 1`` tokens long; a cell of context N uses its first N + 1."""
    w = plan.windows
    if w.placement == "disjoint":
        return make_windows(n_tokens, plan.max_context, placement="disjoint", count=w.count, offset=w.start)
    return make_windows(n_tokens, plan.max_context, placement="offsets", starts=w.offsets)


def plan_rule(plan: Any, coverage: float) -> TopKRule:
    """The registered attention rule at coverage c (coverage read as its decimal, exactly)."""
    a = plan.attention
    return TopKRule(coverage=str(coverage), k_min=a.k_min, dispatch_threshold=a.dispatch_threshold,
                    selection=a.selection)
