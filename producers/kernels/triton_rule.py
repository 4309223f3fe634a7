"""What the decode and teacher-forced Triton kernels share: the rule's arguments and its k_eff, and
the order keys of fp32 scores.

* :func:`rule_args` (host): a :class:`~dcr.prereg.rule.TopKRule` as the four integers each kernel
  takes, ``(NUM, DEN, KMIN, THR)``: the coverage ``c = NUM / DEN`` and the clamped k_min and
  dispatch threshold.
* :func:`k_eff` (device): ``k_eff(t)`` from those integers, exact integer arithmetic.
* :func:`order_key` / :func:`float_of_key` (device): fp32 <-> int32 keys whose signed integer order
  is the float order, so that a threshold can be searched for in integer key space.
"""
from __future__ import annotations

import triton
import triton.language as tl

from dcr.prereg.rule import TopKRule

_I32_MAX = 2**31 - 1


def rule_args(rule: TopKRule) -> tuple[int, int, int, int]:
    """``(NUM, DEN, KMIN, THR)`` of ``rule`` for :func:`k_eff`: c = NUM / DEN in lowest terms (both
    below 2**31, so that ``t * NUM`` fits in int64 for any t < 2**31), and k_min and the dispatch
    threshold clamped to 2**31 - 1 (int32; no row sees that many keys, so k_eff is unchanged)."""
    if not isinstance(rule, TopKRule):
        raise ValueError(f"rule must be a TopKRule, got {type(rule).__name__}")
    c = rule.coverage_fraction
    if c.numerator > _I32_MAX or c.denominator > _I32_MAX:
        raise ValueError(f"rule.coverage {rule.coverage!r}: numerator/denominator must be < 2**31 for the kernels")
    return c.numerator, c.denominator, min(rule.k_min, _I32_MAX), min(rule.dispatch_threshold, _I32_MAX)


@triton.jit
def k_eff(t, NUM, DEN, KMIN, THR):
    """k_eff of rows that see ``t`` keys (an int32 scalar or block): ``min(t, max(KMIN, (t * NUM) // DEN))``,
    or ``t`` where ``t < THR``; int32, t's shape. The product is taken in int64."""
    t64 = t.to(tl.int64)
    k = tl.minimum(tl.maximum((t64 * NUM) // DEN, KMIN), t64)
    return tl.where(t64 < THR, t64, k).to(tl.int32)


@triton.jit
def order_key(x):
    """fp32 -> int32 whose signed order is the float order (x finite or +-inf; -0.0 gets the key -1,
    below +0.0's 0: callers that must tie the two zeros map -0.0 to +0.0 first)."""
    b = x.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def float_of_key(key):
    """Inverse of :func:`order_key` (the map is an involution on the bits): int32 -> fp32."""
    b = key ^ ((key >> 31) & 0x7FFFFFFF)
    return b.to(tl.float32, bitcast=True)
