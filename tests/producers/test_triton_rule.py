"""The kernels' shared Triton helpers (producers/kernels/triton_rule.py): k_eff against the rule's own,
the order keys against the float order, and the kernel arguments of a rule."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.triton_rule import float_of_key, k_eff, order_key, rule_args

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = 512


@triton.jit
def _k_eff_of(T, OUT, NUM, DEN, KMIN, THR, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(OUT + i, k_eff(tl.load(T + i), NUM, DEN, KMIN, THR))


@triton.jit
def _keys_of(X, KEY, BACK, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    key = order_key(tl.load(X + i))
    tl.store(KEY + i, key)
    tl.store(BACK + i, float_of_key(key))


@pytest.mark.parametrize("rule", [TopKRule("0.29", 1, 0), TopKRule("0.15", 64, 100), TopKRule("0.5", 3000, 0),
                                  TopKRule(1, 1, 0), TopKRule("0.000123", 5, 2**40), TopKRule("0.999999", 2**40, 7)],
                         ids=repr)
def test_k_eff_matches_the_rule(rule):
    gen = torch.Generator().manual_seed(11)
    t = torch.cat([torch.arange(0, 3 * BLOCK), torch.randint(0, 2**24, (BLOCK,), generator=gen)]).to(torch.int32)
    out = torch.empty(t.shape, dtype=torch.int32, device=DEV)
    _k_eff_of[(t.numel() // BLOCK,)](t.to(DEV), out, *rule_args(rule), BLOCK=BLOCK)
    assert out.dtype == torch.int32
    assert out.cpu().tolist() == rule.k_eff(t).tolist()


def test_order_keys_follow_the_float_order_and_invert():
    gen = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(BLOCK - 8, generator=gen) * 10.0 ** torch.randint(-30, 30, (BLOCK - 8,), generator=gen),
                   torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-45, -1e-45, 3.4e38, -3.4e38])])
    key, back = torch.empty(BLOCK, dtype=torch.int32, device=DEV), torch.empty(BLOCK, device=DEV)
    _keys_of[(1,)](x.to(DEV), key, back, BLOCK=BLOCK)
    key, back = key.cpu().long(), back.cpu()
    assert torch.equal(back.view(torch.int32), x.view(torch.int32))  # bit for bit, -0.0 included
    pos_zero = x.view(torch.int32) == 0
    assert key[pos_zero].tolist() == [0] and key[x.view(torch.int32) == -(2**31)].tolist() == [-1]
    nonzero = x != 0  # +-0.0 compare equal as floats but get keys 0 and -1
    xs, ks = x[nonzero].double(), key[nonzero]
    assert torch.equal(torch.sign(xs[:, None] - xs[None, :]), torch.sign(ks[:, None] - ks[None, :]).double())


def test_rule_args():
    assert rule_args(TopKRule("0.15", 64, 128)) == (3, 20, 64, 128)
    assert rule_args(TopKRule("0.5", 2**40, 2**50)) == (1, 2, 2**31 - 1, 2**31 - 1)
    with pytest.raises(ValueError, match=r"< 2\*\*31"):
        rule_args(TopKRule("0.0000000001", 1, 0))
    with pytest.raises(ValueError, match="rule must be a TopKRule"):
        rule_args("0.15")
