"""The random-spectrum producer on tiny Llama models on the CPU: the k_proj variants against
independent references (nn.Linear's own init, scipy's singular values), restoration of the trained
weights by checksum, entropies against eager attention weights + scipy, α = 1 for uniform
attention (statsmodels OLS), and identical tables after an interrupted run is resumed."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.stats
import torch
import yaml
from plan_factory import locked_tiny_plan

from dcr.producers import random_spectrum as rs


def _tiny_model(seed: int = 0, qk_scale: float = 1.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=1024, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(qk_scale)
            layer.self_attn.k_proj.weight.mul_(qk_scale)
    return model


def _locked_plan(tmp: Path, model_dir: Path, *, variants, seeds, contexts, prompts) -> Path:
    cells = {"variants": list(variants), "seeds": list(seeds), "contexts": list(contexts),
             "prompts": prompts, "heads": "all", "query_row": "last"}
    return locked_tiny_plan(tmp, model_dir, producer="random_spectrum", cells=cells, metric="entropy",
                            prompts=prompts, corpus_seed=1)


def _table(out: Path) -> pd.DataFrame:
    return (pd.read_parquet(out / "random_spectrum")
            .sort_values(["variant", "seed", "N", "layer", "head", "prompt"]).reset_index(drop=True))


# ---------------------------------------------------------------------------- the variants


def test_default_init_is_nn_linear_default_init():
    shapes = [(32, 64), (32, 64), (48, 16)]
    got = rs.default_init_weights(shapes, seed=42)
    torch.manual_seed(42)  # nn.Linear draws from the global CPU generator, seeded the same way
    ref = [torch.nn.Linear(i, o, bias=False).weight.detach() for o, i in shapes]
    for g, r, (o, i) in zip(got, ref, shapes):
        assert torch.equal(g, r)
        assert float(g.abs().max()) <= 1 / math.sqrt(i)  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert not torch.equal(rs.default_init_weights(shapes, seed=43)[0], got[0])


def test_scale_matched_keeps_singular_values_in_a_random_basis():
    w = [torch.randn(32, 64, generator=torch.Generator().manual_seed(i)) * (i + 1) for i in range(2)]
    a = rs.scale_matched_weights(w, seed=0)
    b = rs.scale_matched_weights(w, seed=1)
    for wi, ai, bi in zip(w, a, b):
        np.testing.assert_allclose(scipy.linalg.svdvals(ai.numpy()), scipy.linalg.svdvals(wi.double().numpy()),
                                   rtol=1e-10)
        assert float(torch.linalg.matrix_norm(ai - wi.double())) > 0.5 * float(torch.linalg.matrix_norm(wi))
        assert not torch.allclose(ai, bi)
    assert torch.equal(rs.scale_matched_weights(w, seed=0)[0], a[0])


def test_trained_weights_are_restored_and_checked():
    from dcr.producers.models import weights_sha256

    model = _tiny_model()
    before, kbefore = weights_sha256(model), rs.k_proj_checksum(model)
    variants = rs.KProjVariants(model)
    for variant, seed in [("default_init", 0), ("scale_matched", 0), ("scale_matched", 1), ("default_init", 1)]:
        variants.install(variant, seed)
        assert rs.k_proj_checksum(model) != kbefore
        w = model.model.layers[1].self_attn.k_proj.weight.detach().double()
        if variant == "scale_matched":
            np.testing.assert_allclose(scipy.linalg.svdvals(w.numpy()),
                                       scipy.linalg.svdvals(variants.trained[1].double().numpy()), rtol=1e-5)
    variants.install("trained", 5)
    assert rs.k_proj_checksum(model) == kbefore and weights_sha256(model) == before
    # a restoration that does not give back the trained bytes is refused
    variants.install("default_init", 0)
    variants.trained[0][0, 0] += 1e-3
    with pytest.raises(RuntimeError, match="not restored"):
        variants.restore()


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rs")
    _tiny_model(qk_scale=8.0).save_pretrained(tmp / "model")
    lock = _locked_plan(tmp, tmp / "model", variants=["trained", "default_init", "scale_matched"], seeds=[0, 3],
                        contexts=[32, 64, 128], prompts=3)
    rs.produce_random_spectrum(lock, tmp / "full", device="cpu", progress=False)
    return tmp, lock, _table(tmp / "full")


def test_entropies_match_eager_attention(peaked):
    """The trained rows against an independent path: transformers' eager attention weights
    (output_attentions) of the last row, entropy by scipy."""
    from transformers import AutoModelForCausalLM

    from dcr.prereg.measurements import RANDOM_SPECTRUM, expected_cells, rows_per_cell
    from dcr.producers.plan_inputs import load_plan_windows
    from dcr.producers.corpus import ByteTokenizer
    from dcr.prereg.lock import load_locked

    tmp, lock, df = peaked
    required, optional = RANDOM_SPECTRUM.required, RANDOM_SPECTRUM.optional
    assert set(df.columns) == set(required) | set(optional)
    # (trained once + 2 random variants x 2 seeds) x contexts x (layers x heads x prompts)
    assert len(df) == (1 + 2 * 2) * 3 * (2 * 4 * 3)
    plan = load_locked(lock).plan  # the budget's row model counts one head for heads: all: a lower bound
    assert sum(rows_per_cell(plan, "random_spectrum", c, "entropy") for c in expected_cells(plan, "random_spectrum")) \
        == len(df) // (2 * 4)
    eager = AutoModelForCausalLM.from_pretrained(tmp / "model", attn_implementation="eager").eval()
    windows = load_plan_windows(load_locked(lock).plan, ByteTokenizer(512), base_dir=tmp)
    for n in (32, 128):
        ids = torch.stack([torch.from_numpy(windows.prompt(p, n)[:n]) for p in range(3)])
        with torch.no_grad():
            att = eager(input_ids=ids, output_attentions=True).attentions  # per layer [B, H, N, N]
        rows = df[(df.variant == "trained") & (df.N == n)]
        for r in rows.itertuples():
            p = att[r.layer][r.prompt, r.head, -1].double().numpy()
            assert r.entropy == pytest.approx(scipy.stats.entropy(p), abs=1e-5)
    # trained rows carry no seed; random variants depend on theirs
    assert df[df.variant == "trained"].seed.isna().all()
    for v in ("default_init", "scale_matched"):
        x = df[df.variant == v]
        assert not np.allclose(x[x.seed == 0].entropy, x[x.seed == 3].entropy)
    assert (df.logit_scale > 0).all()


def test_resume_gives_identical_table(peaked, monkeypatch):
    tmp, lock, full = peaked
    real, calls = rs.compute_cell, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 7:  # stop inside the second (variant, seed) block
            raise KeyboardInterrupt("interrupted")
        return real(*a, **k)

    monkeypatch.setattr(rs, "compute_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        rs.produce_random_spectrum(lock, tmp / "resumed", device="cpu", progress=False)
    monkeypatch.setattr(rs, "compute_cell", real)
    s = rs.produce_random_spectrum(lock, tmp / "resumed", device="cpu", progress=False)
    assert s.skipped == 7 and len(s.written) == 15 - 7
    pd.testing.assert_frame_equal(_table(tmp / "resumed"), full)
    for rank in (1, 0):  # a sharded run starts each rank's variants from the restored weights
        rs.produce_random_spectrum(lock, tmp / "sharded", device="cpu", progress=False, rank=rank, world_size=2)
    pd.testing.assert_frame_equal(_table(tmp / "sharded"), full)


def test_uniform_attention_has_alpha_one(tmp_path):
    """k_proj = 0: every logit is 0, H_N = ln N exactly, so the OLS slope of H on ln N is 1."""
    import statsmodels.api as sm

    model = _tiny_model()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.zero_()
    model.save_pretrained(tmp_path / "model")
    lock = _locked_plan(tmp_path, tmp_path / "model", variants=["trained"], seeds=[0],
                        contexts=[16, 32, 64, 128], prompts=2)
    rs.produce_random_spectrum(lock, tmp_path / "out", device="cpu", progress=False)
    df = _table(tmp_path / "out")
    np.testing.assert_allclose(df.entropy, np.log(df.N), rtol=0, atol=1e-6)
    fit = sm.OLS(df.entropy.to_numpy(), sm.add_constant(np.log(df.N.to_numpy(dtype=float)))).fit()
    assert fit.params[1] == pytest.approx(1.0, abs=1e-6) and fit.params[0] == pytest.approx(0.0, abs=1e-5)
    assert (df.logit_scale == 0).all()
