"""Corpus text, cached tokenisation and window placement."""
from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest

from dcr.producers.corpus import (
    WIKITEXT,
    ByteTokenizer,
    Window,
    load_text,
    make_windows,
    tokenize_cached,
    tokenizer_identity,
    window_tokens,
)

TEXT = "Héllo wörld.\n = Title = \nSome text, some more text; the end.\n" * 7


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_load_text_file(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(TEXT, encoding="utf-8")
    text, meta = load_text(str(f))
    assert text == TEXT
    assert meta["text_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest() and meta["chars"] == len(TEXT)
    with pytest.raises(FileNotFoundError):
        load_text(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_text(str(tmp_path / "empty.txt"))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_wikitext_without_datasets_says_what_to_do():
    with pytest.raises(RuntimeError, match="datasets"):
        load_text(WIKITEXT)


def test_tokenize_cached_bytes(tmp_path):
    tok = ByteTokenizer(vocab_size=512)
    tokens, meta = tokenize_cached(TEXT, tok, tmp_path)
    assert tokens.dtype == np.int32
    assert tokens.tolist() == list(TEXT.encode("utf-8"))  # independent: Python's own UTF-8 encoder
    assert meta["n_tokens"] == len(TEXT.encode("utf-8")) and meta["tokenizer"] == "bytes-utf8-v1"
    cache_file = meta["cache_file"]
    # second call reads the cache: same file, same array
    tokens2, meta2 = tokenize_cached(TEXT, tok, tmp_path)
    assert meta2["cache_file"] == cache_file and np.array_equal(tokens, tokens2)
    assert meta2["tokens_sha256"] == hashlib.sha256(tokens.tobytes()).hexdigest()
    # another text -> another cache file
    _, meta3 = tokenize_cached(TEXT + "x", tok, tmp_path)
    assert meta3["cache_file"] != cache_file
    assert len(list(tmp_path.glob("tokens-*.npy"))) == 2
    with pytest.raises(ValueError):
        ByteTokenizer(vocab_size=100)


def test_tokenize_cached_hf_tokenizer_identity(tmp_path):
    words = ["Some", "text", "some", "more", "the", "end", ".", ",", ";", "=", "Title"]
    tok_a = _word_tokenizer(words)
    tok_b = _word_tokenizer(words[:-1])  # another vocabulary: another identity and cache file
    assert tokenizer_identity(tok_a) != tokenizer_identity(tok_b)
    ta, ma = tokenize_cached(TEXT, tok_a, tmp_path)
    tb, mb = tokenize_cached(TEXT, tok_b, tmp_path)
    assert ma["cache_file"] != mb["cache_file"]
    assert ta.tolist() == tok_a(TEXT, add_special_tokens=False)["input_ids"]
    assert not np.array_equal(ta, tb)


def test_disjoint_windows():
    ws = make_windows(10_000, 999, placement="disjoint", count=4, offset=7)
    assert [w.start for w in ws] == [7, 1007, 2007, 3007]
    assert all(w.length == 1000 and not w.overlaps for w in ws)
    tokens = np.arange(10_000)
    assert window_tokens(tokens, ws[1]).tolist() == list(range(1007, 2007))
    # exactly fits
    assert make_windows(4007, 999, placement="disjoint", count=4, offset=7)[-1].start == 3007
    with pytest.raises(ValueError, match="short by 1"):
        make_windows(4006, 999, placement="disjoint", count=4, offset=7)


def test_offset_windows_flag_overlaps():
    # the seed's "seeds": start = seed * 1000 with N = 32,000 -> seeds 0, 1, 2 overlap (flaw 1);
    # 42 starts at 42,000 > 2,000 + 32,001, and 100 at 100,000 > 42,000 + 32,001
    ws = make_windows(300_000, 32_000, placement="offsets", starts=[s * 1000 for s in (0, 1, 2, 42, 100)])
    assert [w.overlaps for w in ws] == [True, True, True, False, False]
    assert ws[2] == Window(index=2, start=2_000, length=32_001, overlaps=True)
    ws = make_windows(10_000, 99, placement="offsets", starts=[0, 100, 5000])
    assert [w.overlaps for w in ws] == [False, False, False]
    ws = make_windows(10_000, 100, placement="offsets", starts=[0, 100])  # share token 100
    assert [w.overlaps for w in ws] == [True, True]
    with pytest.raises(ValueError, match="corpus too short"):
        make_windows(1000, 999, placement="offsets", starts=[1])


def test_window_arguments_are_explicit():
    with pytest.raises(ValueError):
        make_windows(100, 9, placement="disjoint", count=2)  # offset missing
    with pytest.raises(ValueError):
        make_windows(100, 9, placement="offsets", starts=[0], count=1)
    with pytest.raises(ValueError):
        make_windows(100, 9, placement="random", count=1, offset=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_windows(100, 0, placement="offsets", starts=[0])
