"""Top-K attention inside a real transformers Llama (tiny, random weights, CPU).

Checks: teacher-forced sparse NLL == step-by-step decode with the reference per step; c = 1 == dense;
our dense path == transformers' own SDPA model; layer choice and per-call path counts; loading from
a ``save_pretrained`` directory; the Llama-3.2-1B preset's architecture.
"""
from __future__ import annotations

import os

import torch


import pytest
from transformers import AutoModelForCausalLM, LlamaConfig

from dcr.producers.attention import ATTN_NAME, sequence_nll, sequence_nll_decode
from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.teacher_forced import PathCounts
from dcr.producers.models import PRESETS, load_model, preset_config, weights_sha256

# fp32 on the CPU: the two execution modes differ only by summation order
TOL_NLL = 1e-5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # larger q/k weights than the 0.02 init so that attention is far from uniform and Top-K matters
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    return d, weights_sha256(model)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    d, _ = tiny_dir
    return load_model(str(d), dtype="fp32", device="cpu")


def _ids(seed, n, vocab=300):
    return torch.randint(0, vocab, (n + 1,), generator=torch.Generator().manual_seed(seed))


def test_load_local_dir_records_info(tiny_dir, tiny):
    d, sha = tiny_dir
    info = tiny.info
    assert info.source == "local" and info.weights_random is False and info.seed is None
    assert info.weights_sha256 == sha  # the saved weights came back unchanged
    assert info.attn_implementation == ATTN_NAME
    assert tiny.model.config._attn_implementation == ATTN_NAME


@pytest.mark.parametrize("selection", ["query_head", "kv_group"])
def test_teacher_forced_equals_decode(tiny, selection):
    ids = _ids(1, 70)
    rule = TopKRule("0.2", 3, 10, selection)
    tf, c_tf = sequence_nll(tiny.model, ids, rule=rule)
    dec, c_dec = sequence_nll_decode(tiny.model, ids, rule=rule)
    assert tf.dtype == torch.float64 and tf.shape == (70,)
    assert (tf - dec).abs().max().item() < TOL_NLL
    # rows 0..8 see < 10 keys: dense; 2 layers x 4 heads
    assert c_tf == c_dec == PathCounts(sparse_rows=2 * 4 * 61, dense_rows=2 * 4 * 9)
    dense, _ = sequence_nll(tiny.model, ids, rule=None)
    # the rule changes the result beyond the dispatch threshold, not before it
    assert (tf[:9] - dense[:9]).abs().max().item() < TOL_NLL
    assert (tf[9:] - dense[9:]).abs().max().item() > 1e-3


def test_layer_choice(tiny):
    ids = _ids(2, 50)
    rule = TopKRule("0.1", 2, 0)
    only1, c1 = sequence_nll(tiny.model, ids, rule=rule, layers=[1])
    dec1, _ = sequence_nll_decode(tiny.model, ids, rule=rule, layers=[1])
    both, c2 = sequence_nll(tiny.model, ids, rule=rule)
    assert c1 == PathCounts(sparse_rows=4 * 50, dense_rows=0)
    assert c2 == PathCounts(sparse_rows=2 * 4 * 50, dense_rows=0)
    assert (only1 - dec1).abs().max().item() < TOL_NLL
    assert (only1 - both).abs().max().item() > 1e-4
    with pytest.raises(RuntimeError, match="no layer"):
        sequence_nll(tiny.model, ids, rule=rule, layers=[])
    with pytest.raises(ValueError):
        sequence_nll(tiny.model, ids, rule=rule, layers=[5])


def test_full_coverage_equals_dense_and_dense_equals_library_sdpa(tiny_dir, tiny):
    ids = _ids(3, 64)
    dense, counts = sequence_nll(tiny.model, ids, rule=None)
    assert counts == PathCounts()
    full, _ = sequence_nll(tiny.model, ids, rule=TopKRule(1, 1, 0))
    assert (full - dense).abs().max().item() < TOL_NLL
    # transformers' own SDPA model, its own logits and a float64 cross-entropy
    d, _ = tiny_dir
    lib = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        logits = lib(ids[None, :-1]).logits[0].double()
    ref = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
    assert (dense - ref).abs().max().item() < TOL_NLL
    with pytest.raises(ValueError, match="attn_implementation"):
        sequence_nll(lib, ids, rule=TopKRule("0.5", 1, 0))


def _check_captured(capture, rule, tol):
    """Every captured attention call of the model vs the reference on the same q, k, v."""
    from dcr.producers.kernels.reference import teacher_forced_reference

    assert capture
    worst = 0.0
    for _layer, q, k, v, out in capture:
        ref = teacher_forced_reference(q, k, v, rule, scale=q.shape[-1] ** -0.5)
        worst = max(worst, ((out.double() - ref.double()).norm() / ref.double().norm()).item())
    assert worst < tol, worst
    return worst


def test_triton_backend_inside_model(tiny_dir):
    """The Triton kernel (interpreter on the CPU) inside the model equals the reference backend."""
    d, _ = tiny_dir
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    lm = load_model(str(d), dtype="fp32", device=dev, checksum=False)
    ids = _ids(4, 40)
    rule = TopKRule("0.25", 3, 5)
    capture = []
    tri, c_t = sequence_nll(lm.model, ids, rule=rule, backend="triton", capture=capture)
    ref, c_r = sequence_nll(lm.model, ids, rule=rule, backend="reference")
    assert c_t == c_r
    assert [c[0] for c in capture] == [0, 1]  # both layers, in order, through the kernel
    _check_captured(capture, rule, 1e-5)
    assert (tri - ref).abs().max().item() < 1e-4


def test_presets():
    assert PRESETS == ("llama-3.2-1b-random", "tiny-llama-random")
    cfg = preset_config("llama-3.2-1b-random")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (2048, 16, 32, 8)
    assert (cfg.head_dim, cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings) == (64, 8192, 128256, 131072)
    assert cfg.tie_word_embeddings is True
    rp = cfg.rope_parameters
    assert rp["rope_type"] == "llama3" and rp["rope_theta"] == 500000.0 and rp["factor"] == 32.0
    assert (rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]) == (1.0, 4.0, 8192)
    # parameter count by hand: embeddings + 16 x (q, k, v, o, 3 MLP mats, 2 norms) + final norm (tied head)
    per_layer = 2048 * 2048 * 2 + 2048 * 512 * 2 + 3 * 2048 * 8192 + 2 * 2048
    lm = load_model("llama-3.2-1b-random", dtype="bf16", device="meta", seed=0, checksum=False)
    assert lm.info.n_params == 128256 * 2048 + 16 * per_layer + 2048 == 1_235_814_400
    assert lm.info.weights_random is True and lm.info.source == "preset"
    with pytest.raises(ValueError, match="seed"):
        load_model("tiny-llama-random", dtype="fp32", device="cpu")
    a = load_model("tiny-llama-random", dtype="fp32", device="cpu", seed=5)
    b = load_model("tiny-llama-random", dtype="fp32", device="cpu", seed=5)
    c = load_model("tiny-llama-random", dtype="fp32", device="cpu", seed=6)
    assert a.info.weights_random is True and a.info.weights_sha256 == b.info.weights_sha256 != c.info.weights_sha256
    with pytest.raises(ValueError, match="revision"):
        load_model("org/not-a-local-dir", dtype="fp32", device="cpu")


@pytest.mark.gpu
def test_gpu_llama_1b_random_triton_vs_reference():
    """Full model, Llama-3.2-1B shapes: the Triton kernel inside the model vs the reference.

    Per layer, on the q, k, v the model produced (captured), the kernel equals the reference; the
    end-to-end NLLs agree on the mean (single positions move by rounding amplified over 16 layers).
    """
    ids = torch.randint(0, 128256, (1025,), generator=torch.Generator().manual_seed(0))
    rule = TopKRule("0.15", 64, 0)
    lm = load_model("llama-3.2-1b-random", dtype="fp32", device="cuda", seed=0, checksum=False)
    capture = []
    tri, c_t = sequence_nll(lm.model, ids, rule=rule, backend="triton", capture=capture)
    assert c_t == PathCounts(sparse_rows=16 * 32 * 1024, dense_rows=0)
    assert sorted(c[0] for c in capture) == list(range(16))
    # each layer's kernel output vs the reference on the same q, k, v (no amplification through layers)
    _check_captured(capture, rule, 1e-3)
    del capture
    ref, c_r = sequence_nll(lm.model, ids, rule=rule, backend="reference", chunk_rows=512)
    assert c_r == c_t
    # NLLs: fp32 summation order flips near-tied keys in and out of a set now and then, and the 16
    # random layers amplify that (seen on the H200, 2026-11-28: max |dNLL| 0.024 nat at 1024 tokens)
    assert abs(tri.mean().item() - ref.mean().item()) < 5e-3  # mean NLL ~12 nat
    assert (tri - ref).abs().max().item() < 0.1
    # the dense arm equals the library's own SDPA model (fp32: differences are rounding only)
    dense, _ = sequence_nll(lm.model, ids, rule=None)
    assert (tri - dense).abs().max().item() > 1e-3  # the rule was applied
    with torch.no_grad():
        lm.model.set_attn_implementation("sdpa")
        logits = lm.model(ids[None, :-1].cuda()).logits[0].double()
        lm.model.set_attn_implementation(ATTN_NAME)
    lib = torch.nn.functional.cross_entropy(logits, ids[1:].cuda(), reduction="none")
    assert (dense - lib).abs().max().item() < 1e-3
    del lm, logits
    lm = load_model("llama-3.2-1b-random", dtype="bf16", device="cuda", seed=0, checksum=False)
    capture = []
    tri, _ = sequence_nll(lm.model, ids, rule=rule, backend="triton", capture=capture)
    _check_captured(capture, rule, 2e-2)
    del capture
    ref, _ = sequence_nll(lm.model, ids, rule=rule, backend="reference", chunk_rows=512)
    assert abs(tri.mean().item() - ref.mean().item()) < 1e-3 * ref.mean().item()
