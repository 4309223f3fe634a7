"""Corpus text, its token array (tokenised once, cached by content hash), and windows on it.

* :func:`load_text` -- WikiText-2-raw-v1 (``"wikitext-2-raw-v1:validation"``) through the optional
  ``datasets`` extra, from its local cache only; or any local UTF-8 text file.
* :func:`tokenize_cached` -- tokenise the joined text once; the int32 token array is cached on disk
  under ``sha256(text) + tokenizer identity``, so a changed text or tokenizer is a new file.
* :func:`make_windows` -- windows of ``n + 1`` tokens (n predicted positions) placed as registered:
  ``disjoint`` (window i = tokens[offset + i(n+1) : offset + (i+1)(n+1)]) or ``offsets`` (explicit
  starts, e.g. the seed's ``seed * 1000``), each with its start, length and whether it overlaps
  another window of the set (the seed's "seeds" at offsets ``seed * 1000`` overlap).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

WIKITEXT = "wikitext-2-raw-v1:validation"


class ByteTokenizer:
    """UTF-8 bytes as token ids (0..255): the tokenizer of random-weight presets, which have none."""

    def __init__(self, vocab_size: int):
        if vocab_size < 256:
            raise ValueError(f"ByteTokenizer needs a vocabulary of >= 256 ids, got {vocab_size}")
        self.vocab_size = vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def tokenizer_identity(tok) -> str:
    """A string that changes when the tokenizer's behaviour can change: name + hash of its definition."""
    if isinstance(tok, ByteTokenizer):
        return "bytes-utf8-v1"
    name = getattr(tok, "name_or_path", type(tok).__name__)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = json.dumps(tok.get_vocab(), sort_keys=True)
    return f"{name}@{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def load_text(source: str) -> tuple[str, dict]:
    """The corpus as one string, and where it came from.

    source: ``"wikitext-2-raw-v1:validation"`` (needs the ``data`` extra and the dataset in the local
    ``datasets`` cache; its lines joined with "\n\n", the transformers perplexity-guide convention) or a path to
    a UTF-8 text file. Returns (text, {"source", "text_sha256", "chars"}).
    """
    if source == WIKITEXT:
        try:
            import datasets  # optional extra: pip install dcr-prereg[data]
        except ImportError as exc:
            raise RuntimeError(
                f"{WIKITEXT} needs the optional 'datasets' package (pip install 'dcr-prereg[data]') "
                "and the dataset in its local cache; or pass a local text file"
            ) from exc
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="validation")
        # joined with blank lines, as in transformers' "perplexity of fixed-length models" guide
        text = "\n\n".join(ds["text"])
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"corpus {source!r} is neither {WIKITEXT!r} nor a text file")
        text = path.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"corpus {source!r} is empty")
    return text, {"source": source, "text_sha256": hashlib.sha256(text.encode()).hexdigest(), "chars": len(text)}


def _encode(tok, text: str) -> list[int]:
    if isinstance(tok, ByteTokenizer):
        return tok.encode(text)
    from transformers.utils import logging as hf_logging

    # The whole corpus is tokenised once and cut into windows afterwards: the tokenizer's
    # "sequence longer than model_max_length" warning does not apply, so it is silenced here.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return tok(text, add_special_tokens=False)["input_ids"]
    finally:
        hf_logging.set_verbosity(level)


def tokenize_cached(text: str, tok, cache_dir: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Token ids int32 [T] of ``text`` (no special tokens), cached under cache_dir by content hash.

    Returns (tokens, meta) with meta = {"text_sha256", "tokenizer", "n_tokens", "tokens_sha256", "cache_file"}.
    """
    text_sha = hashlib.sha256(text.encode()).hexdigest()
    ident = tokenizer_identity(tok)
    key = hashlib.sha256(f"{text_sha}|{ident}".encode()).hexdigest()[:32]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    f = cache / f"tokens-{key}.npy"
    if f.exists():
        tokens = np.load(f)
    else:
        tokens = np.asarray(_encode(tok, text), dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**31):
            raise ValueError("token ids do not fit int32")
        tokens = tokens.astype(np.int32)
        tmp = f.with_name(f.name + f".tmp{os.getpid()}.npy")
        np.save(tmp, tokens)
        os.replace(tmp, f)  # atomic: a crashed run never leaves half a cache file
    meta = {
        "text_sha256": text_sha,
        "tokenizer": ident,
        "n_tokens": int(tokens.size),
        "tokens_sha256": hashlib.sha256(tokens.tobytes()).hexdigest(),
        "cache_file": str(f),
    }
    return tokens, meta


@dataclass(frozen=True)
class Window:
    """tokens[start : start + length]; length = n + 1 (n predicted positions)."""

    index: int
    start: int
    length: int
    overlaps: bool  # shares a token with another window of the same set

    def as_dict(self) -> dict:
        return asdict(self)


def make_windows(
    n_tokens: int,
    n: int,
    *,
    placement: Literal["disjoint", "offsets"],
    count: int | None = None,
    offset: int | None = None,
    starts: Sequence[int] | None = None,
) -> list[Window]:
    """Place windows of n + 1 tokens on a corpus of ``n_tokens`` tokens.

    placement="disjoint": ``count`` windows back to back from ``offset`` (both required).
    placement="offsets": one window per explicit start in ``starts`` (e.g. [s * 1000 for s in seeds]).
    Raises ValueError when a window does not fit in the corpus (says how many tokens are missing).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    length = n + 1
    if placement == "disjoint":
        if count is None or offset is None or starts is not None:
            raise ValueError("placement='disjoint' needs count= and offset= (and no starts=)")
        if count < 1 or offset < 0:
            raise ValueError(f"count must be >= 1 and offset >= 0, got {count}, {offset}")
        st = [offset + i * length for i in range(count)]
    elif placement == "offsets":
        if starts is None or count is not None or offset is not None:
            raise ValueError("placement='offsets' needs starts= (and no count=/offset=)")
        st = [int(s) for s in starts]
        if not st or min(st) < 0:
            raise ValueError(f"starts must be a non-empty list of non-negative ints, got {list(starts)}")
    else:
        raise ValueError(f"placement must be 'disjoint' or 'offsets', got {placement!r}")
    need = max(st) + length
    if need > n_tokens:
        raise ValueError(
            f"corpus too short: {len(st)} window(s) of {length} tokens ({placement}) need {need} tokens, "
            f"the corpus has {n_tokens} (short by {need - n_tokens})"
        )
    out = []
    for i, s in enumerate(st):
        ov = any(j != i and s < o + length and o < s + length for j, o in enumerate(st))
        out.append(Window(index=i, start=s, length=length, overlaps=ov))
    return out


def window_tokens(tokens: np.ndarray, w: Window) -> np.ndarray:
    """The n + 1 token ids of a window (int64)."""
    return np.asarray(tokens[w.start:w.start + w.length], dtype=np.int64)
