"""The matched-magnitude (Gap-1) causal producer: maths on random logits against independent
references (autograd, scipy), and end to end on a tiny Llama (2 layers, hidden 64, 4 heads,
2 KV heads) on the CPU: gates, the baseline arm against a plain forward, batch independence,
silent-fallback detection, resume and sharding."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
import torch
import yaml
from plan_factory import locked_tiny_plan

from dcr.prereg.rule import coverage_k
from dcr.producers import causal
from dcr.producers.entropy import entropy, entropy_grad, fd_error, line_search, orthogonal_control, truncation_gap

TARGET, TOL = 0.25, 0.0025


def _ref_entropy(l: np.ndarray) -> float:
    return float(scipy.stats.entropy(scipy.special.softmax(l)))


# ---------------------------------------------------------------------------- row maths


@pytest.mark.parametrize("seed", range(5))
def test_gradient_against_autograd_and_finite_differences(seed):
    g0 = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 300, (1,), generator=g0))
    scale = float(torch.rand(1, generator=g0)) * 6
    l = torch.randn(n, dtype=torch.float64, generator=g0) * scale
    # H itself against scipy
    assert float(entropy(l)) == pytest.approx(_ref_entropy(l.numpy()), abs=1e-12)
    # g against autograd of an independently written H
    x = l.clone().requires_grad_(True)
    p = torch.exp(x - torch.logsumexp(x, 0))
    (auto,) = torch.autograd.grad(-(p * torch.log(p)).sum(), x)
    g = entropy_grad(l)
    torch.testing.assert_close(g, auto, rtol=1e-10, atol=1e-13)
    assert abs(float(g.sum())) < 1e-12  # softmax is shift-invariant
    # the producer's finite-difference check is small for the right gradient, large for a wrong one
    assert fd_error(l, g, 1e-3) < 1e-4
    assert fd_error(l, 1.1 * g, 1e-3) > 0.05
    # fp32 logits (what the producer reads) still pass the registered 1e-2 gate
    assert fd_error(l.float().double(), entropy_grad(l.float()).double(), 1e-3) < 1e-2


@pytest.mark.parametrize("seed", range(6))
def test_treatment_and_control_on_random_logits(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    n = [256, 1000][seed % 2]
    l = torch.randn(n, dtype=torch.float64, generator=gen) * (2.5 + 0.5 * float(torch.rand(1, generator=gen)))
    res = causal.plan_perturbations(l, delta_target=TARGET, tolerance=TOL, max_iterations=60,
                                    fd_eps=1e-3, generator=torch.Generator().manual_seed(seed))
    d0, dt, dc = res["deltas"]
    assert float(d0.abs().max()) == 0.0
    ls = res["ls"]
    assert ls.converged and ls.iterations <= 60
    # realised ΔH of the treatment, measured independently (scipy), within the tolerance
    h0 = _ref_entropy(l.numpy())
    assert abs(_ref_entropy((l + dt).numpy()) - h0 - TARGET) <= TOL
    # ... and still within it after rounding to fp32, as the forward applies it
    lf = l.float()
    assert abs(_ref_entropy((lf + dt.float()).double().numpy()) - _ref_entropy(lf.double().numpy()) - TARGET) <= TOL
    # treatment along +g; control orthogonal to g with the same norm
    g = entropy_grad(l)
    assert float(torch.dot(dt, g)) / (float(dt.norm()) * float(g.norm())) == pytest.approx(1.0, abs=1e-12)
    assert float(dt.norm() / dc.norm()) == pytest.approx(1.0, abs=1e-12)
    assert abs(float(torch.dot(dc, g))) < 1e-12 * float(dc.norm() * g.norm()) + 1e-15
    # the control is entropy-neutral to first order: ΔH_C(ε·δ_C) = ½ ε² δ_Cᵀ ∇²H δ_C + O(ε³)
    # (Hessian by autograd, an independent path)
    hess = torch.autograd.functional.hessian(lambda x: -(torch.softmax(x, 0) * torch.log_softmax(x, 0)).sum(), l)
    quad = 0.5 * float(dc @ hess @ dc)
    for eps in (1e-2, 1e-3):
        got = _ref_entropy((l + eps * dc).numpy()) - h0
        assert got == pytest.approx(eps**2 * quad, rel=0.05, abs=1e-3 * eps**2 * float(dc.norm()) ** 2)
    # and on these rows (N >= 256, logit std >= 2.5) the registered gate |ΔH_C| <= 0.1 Δ holds
    assert abs(_ref_entropy((l + dc).numpy()) - h0) <= 0.1 * TARGET


def test_line_search_matches_scipy_root_and_reports_unreachable_targets():
    gen = torch.Generator().manual_seed(7)
    l = torch.randn(200, dtype=torch.float64, generator=gen) * 2
    g = entropy_grad(l)
    u = g / g.norm()
    ls = line_search(l, u, TARGET, 1e-9, 200)
    h0 = _ref_entropy(l.numpy())
    root = scipy.optimize.brentq(lambda s: _ref_entropy((l + s * u).numpy()) - h0 - TARGET, 0, 50)
    assert ls.converged and ls.step == pytest.approx(root, rel=1e-6)
    # uniform row: g = 0, nothing can be reached
    flat = line_search(torch.zeros(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64), TARGET, TOL, 60)
    assert not flat.converged and flat.step == 0.0
    # near-uniform row: H0 + target > ln N, unreachable; the search stops at the peak of ΔH
    near = torch.randn(64, dtype=torch.float64, generator=gen) * 0.05
    gn = entropy_grad(near)
    r = line_search(near, gn / gn.norm(), TARGET, TOL, 60)
    assert not r.converged and r.iterations <= 60 and 0 < r.delta_h < math.log(64) - float(entropy(near))
    # very peaked row: ΔH along the straight g-ray peaks below 0.25 (golden section finds the peak)
    peaked = torch.randn(256, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 8
    gp = entropy_grad(peaked)
    up = gp / gp.norm()
    r = line_search(peaked, up, TARGET, TOL, 60)
    grid = max(_ref_entropy((peaked + s * up).numpy()) for s in np.linspace(0, 5, 5001)) - _ref_entropy(peaked.numpy())
    assert not r.converged and grid < TARGET and r.delta_h == pytest.approx(grid, abs=1e-5)


def test_control_generator_is_the_only_randomness():
    g = torch.randn(50, dtype=torch.float64)
    a = orthogonal_control(g, 2.0, torch.Generator().manual_seed(3))
    b = orthogonal_control(g, 2.0, torch.Generator().manual_seed(3))
    c = orthogonal_control(g, 2.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and float(a.norm()) == pytest.approx(2.0, rel=1e-14)


@pytest.mark.parametrize("n,c", [(256, 0.5), (100, 0.29), (1000, 0.15), (7, 1.0)])
def test_truncation_gap_against_numpy(n, c):
    k = coverage_k(c, n)
    assert k == {(256, 0.5): 128, (100, 0.29): 29, (1000, 0.15): 150, (7, 1.0): 7}[(n, c)]
    l = np.random.default_rng(n).normal(size=n) * 3
    p = scipy.special.softmax(l)
    ref = 1.0 - np.sort(p)[::-1][:k].sum()
    assert truncation_gap(torch.from_numpy(l), k) == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------------------- end to end


def _tiny_model_dir(path: Path, qk_scale: float) -> Path:
    """A tiny random Llama (fp32) whose q/k projections are scaled so that attention is peaked."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=1024, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(qk_scale)
            layer.self_attn.k_proj.weight.mul_(qk_scale)
    model.save_pretrained(path)
    return path


def _locked_plan(tmp: Path, model_dir: Path, *, heads, prompts, contexts, pilot_targets=(0.25,)) -> Path:
    cells = {"heads": [list(h) for h in heads], "prompts": prompts, "contexts": list(contexts),
             "delta_target": TARGET, "pilot_targets": list(pilot_targets),
             "line_search": {"tolerance": TOL, "max_iterations": 60},
             "finite_difference_eps": 1e-3, "gap_coverage": 0.5, "seed": 11}
    return locked_tiny_plan(tmp, model_dir, producer="causal", cells=cells, metric="d_nll", prompts=prompts,
                            corpus_seed=0)


def _table(out: Path, producer: str = "causal") -> pd.DataFrame:
    df = pd.read_parquet(out / producer)
    return df.sort_values(["layer", "head", "prompt", "N"] + (["delta_target"] if "delta_target" in df else [])).reset_index(drop=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("causal")
    model_dir = _tiny_model_dir(tmp / "model", qk_scale=8.0)
    lock = _locked_plan(tmp, model_dir, heads=[(0, 0), (1, 1), (1, 2)], prompts=3, contexts=[64, 128],
                        pilot_targets=(0.25, 0.5))
    causal.produce_causal(lock, tmp / "full", device="cpu", progress=False)
    return tmp, model_dir, lock, _table(tmp / "full")


def test_rows_keep_the_contract(setup):
    """Schema, the line search's promise, norm matching, the gradient check. Whether the gates hold
    is a property of the data (a flat row cannot gain 0.25 nats; a tiny row's control can move H
    by second-order terms): here only the producer's own promises are asserted."""
    from dcr.prereg.lock import load_locked
    from dcr.prereg.measurements import CAUSAL, expected_cells, rows_per_cell

    tmp, _, _, df = setup
    required, optional = CAUSAL.required, CAUSAL.optional
    assert set(df.columns) == set(required)
    assert len(df) == 3 * 3 * 2
    plan = load_locked(setup[2]).plan
    assert len(df) == sum(rows_per_cell(plan, "causal", c, "d_nll") for c in expected_cells(plan, "causal"))
    assert not df.dense_fallback.any()
    assert (df.ls_iterations <= 60).all()
    conv = df[df.ls_converged]
    assert len(conv) >= len(df) // 2
    assert (conv.delta_h_t - TARGET).abs().max() <= TOL  # realised in the fp32 forward
    assert (df[~df.ls_converged].delta_h_t < TARGET).all()  # out of reach: stopped at the peak
    assert (df.norm_ratio - 1).abs().max() <= 1e-6
    assert df.fd_error.max() < 1e-2
    assert conv.delta_h_c.abs().median() < 0.1 * TARGET
    np.testing.assert_allclose(df.d_nll, df.nll_treat - df.nll_ctrl, rtol=0, atol=1e-12)
    assert df.d_nll.abs().max() > 0  # the perturbation reaches the NLL
    assert np.isfinite(df.d_gap).all() and df.d_gap.abs().max() > 0


def test_baseline_arm_equals_a_plain_forward(setup):
    """nll_base (δ = 0 through the fp32 row path, batch of 3) equals a plain SDPA forward (B = 1)."""
    from transformers import AutoModelForCausalLM

    from dcr.producers.plan_inputs import load_plan_windows
    from dcr.producers.corpus import ByteTokenizer
    from dcr.prereg.lock import load_locked

    tmp, model_dir, lock, df = setup
    plain = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    windows = load_plan_windows(load_locked(lock).plan, ByteTokenizer(512), base_dir=tmp)
    for row in df.itertuples():
        ids = torch.from_numpy(windows.prompt(row.prompt, row.N))
        with torch.no_grad():
            logits = plain(input_ids=ids[None, :-1]).logits[0, -1].double()
        ref = float(torch.logsumexp(logits, 0) - logits[ids[-1]])
        assert row.nll_base == pytest.approx(ref, abs=2e-5)


def test_arms_do_not_interact_in_the_batch(setup):
    """Treatment alone (B = 1 through the same probe) gives the batched treatment NLL."""
    from dcr.prereg.lock import load_locked
    from dcr.producers.plan_inputs import load_plan_model, load_plan_windows
    from dcr.producers.entropy import PROBE_ATTN_NAME, PROBE_KWARG, ProbeContext, register_probe

    tmp, _, lock, df = setup
    locked = load_locked(lock)
    register_probe()
    loaded = load_plan_model(locked.plan, device="cpu", attn_implementation=PROBE_ATTN_NAME, base_dir=tmp)
    windows = load_plan_windows(locked.plan, loaded.tokenizer, base_dir=tmp)
    spec = locked.plan.producers.causal
    cell = {"layer": 1, "head": 2, "prompt": 1, "N": 128}
    row = df[(df.layer == 1) & (df["head"] == 2) & (df.prompt == 1) & (df.N == 128)].iloc[0]
    ids = torch.from_numpy(windows.prompt(1, 128))

    def only_treatment(l0):
        d = causal.plan_perturbations(l0, delta_target=TARGET, tolerance=TOL, max_iterations=60, fd_eps=1e-3,
                                      generator=torch.Generator().manual_seed(0))["deltas"]
        return d[1:2]

    ctx = ProbeContext(mode="perturb", layer=1, head=2, plan=only_treatment)
    with torch.no_grad():
        out = loaded.model(input_ids=ids[None, :-1], use_cache=False, logits_to_keep=1, **{PROBE_KWARG: ctx})
    lg = out.logits[0, -1].double()
    assert float(torch.logsumexp(lg, 0) - lg[ids[-1]]) == pytest.approx(row.nll_treat, abs=2e-5)
    # the control actually used comes from the cell's own generator: recompute it from the row
    assert causal.compute_cell(loaded.model, windows, cell, spec=spec, plan_sha256=locked.sha256,
                               delta_target=TARGET) == pytest.approx(row.to_dict())


def test_silent_dense_fallback_is_recorded(setup):
    from dcr.prereg.lock import load_locked
    from dcr.producers.plan_inputs import load_plan_model, load_plan_windows

    tmp, _, lock, _ = setup
    locked = load_locked(lock)
    loaded = load_plan_model(locked.plan, device="cpu", attn_implementation="sdpa", base_dir=tmp)
    windows = load_plan_windows(locked.plan, loaded.tokenizer, base_dir=tmp)
    row = causal.compute_cell(loaded.model, windows, {"layer": 0, "head": 1, "prompt": 0, "N": 64},
                              spec=locked.plan.producers.causal, plan_sha256=locked.sha256, delta_target=TARGET)
    assert row["dense_fallback"] is True and math.isnan(row["delta_h_t"]) and row["d_nll"] == 0.0


def test_resume_and_shards_give_identical_tables(setup, monkeypatch):
    tmp, _, lock, full = setup
    real, calls = causal.compute_cell, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("interrupted")
        return real(*a, **k)

    monkeypatch.setattr(causal, "compute_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        causal.produce_causal(lock, tmp / "resumed", device="cpu", progress=False)
    assert len(list((tmp / "resumed" / "causal").glob("part-*.parquet"))) == 5
    monkeypatch.setattr(causal, "compute_cell", real)
    s = causal.produce_causal(lock, tmp / "resumed", device="cpu", progress=False)
    assert s.skipped == 5 and len(s.written) == 13
    pd.testing.assert_frame_equal(_table(tmp / "resumed"), full)
    # two shards (reverse order of ranks) give the same table too
    for rank in (1, 0):
        causal.produce_causal(lock, tmp / "sharded", device="cpu", progress=False, rank=rank, world_size=2)
    pd.testing.assert_frame_equal(_table(tmp / "sharded"), full)


def test_pilot_writes_its_own_producer(setup):
    tmp, _, lock, full = setup
    causal.produce_causal(lock, tmp / "pilot", device="cpu", pilot=True, progress=False)
    pil = _table(tmp / "pilot", "causal_pilot")
    assert not (tmp / "pilot" / "causal").exists()
    assert sorted(pil.delta_target.unique()) == [0.25, 0.5] and len(pil) == 2 * len(full)
    for t, grp in pil.groupby("delta_target"):
        ok = grp[grp.ls_converged]
        assert len(ok) > 0 and (ok.delta_h_t - t).abs().max() <= TOL
    # the pilot's 0.25 rows measure the same treatment as the main run (controls differ: own cells)
    p25 = pil[pil.delta_target == 0.25].reset_index(drop=True)
    np.testing.assert_allclose(p25.nll_treat, full.nll_treat, atol=1e-12)
    np.testing.assert_allclose(p25.nll_base, full.nll_base, atol=1e-12)
