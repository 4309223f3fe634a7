"""Locate the small offline reference model shipped with the package.

``producers/assets/reference-model/`` is a Hugging Face model directory (Llama architecture,
5.57 M parameters, GQA 8 query / 2 KV heads, bf16 safetensors, byte-level BPE tokenizer with
4096 tokens) trained on Shakespeare by :mod:`dcr.producers.train_reference_model`. It is NOT
Llama-3.2-1B: it exists so tests and the CPU demo have trained weights offline. See
docs/reference-model.md.

    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> d = reference_model_dir()
    >>> model = AutoModelForCausalLM.from_pretrained(d, dtype="float32")  # doctest: +SKIP
    >>> tok = AutoTokenizer.from_pretrained(d)                            # doctest: +SKIP
"""
from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

_ASSET = ("assets", "reference-model")


def reference_model_dir() -> Path:
    """Path of the shipped model directory (config.json, model.safetensors, tokenizer files,
    heldout.txt, training_log.json). Raises FileNotFoundError if the package was installed
    without its assets or is imported from a zip."""
    root = importlib.resources.files("dcr.producers").joinpath(*_ASSET)
    path = Path(str(root))
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"reference model assets missing at {path}")
    return path


def heldout_text_path() -> Path:
    """Path of the held-out Shakespeare text (UTF-8 plain text; works never seen in training
    or tokenizer training: The Two Gentlemen of Verona and The Winter's Tale, both editions)."""
    path = reference_model_dir() / "heldout.txt"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def training_log() -> dict:
    """The training log shipped with the model (arguments, loss curve, held-out perplexities)."""
    return json.loads((reference_model_dir() / "training_log.json").read_text())
