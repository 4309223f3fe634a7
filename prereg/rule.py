"""The registered attention rule: how many keys each query row keeps, and whose scores rank them.

For one query row of one query head that sees ``t`` keys (``t >= 0``)::

    k_eff(t) = t                                  if t < dispatch_threshold   (a dense row)
             = min(t, max(k_min, floor(c * t)))   otherwise

The coverage ``c`` is the exact fraction of its decimal: "0.29" and the float 0.29 (read through
its shortest repr) are both 29/100, and ``floor(c * t) = (29 * t) // 100`` in integer arithmetic.
A float product can land just below the integer (``0.29 * 100 == 28.999999999999996``); the
integer one cannot.

The selected set is the ``k_eff`` largest fp32 scores ``q . k``, ties broken by the lower key
index. ``selection`` names whose scores rank the keys: ``"query_head"``, each query head its own;
``"kv_group"``, one set per KV head, ranked by the mean of its query heads' scores.

This module is the one definition of those facts: the plan schema validates coverage and selection
with it, and the PyTorch reference, the Triton kernels and the producers compute ``k_eff`` with it.
It imports neither numpy nor torch: :meth:`TopKRule.k_eff` takes a Python int, a numpy integer
array or a torch integer tensor and uses only operations the two array types share.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal, get_args

Selection = Literal["query_head", "kv_group"]
SELECTIONS: tuple[str, ...] = get_args(Selection)


def parse_coverage(coverage: Any) -> Fraction:
    """The coverage c as an exact :class:`~fractions.Fraction` in (0, 1].

    coverage: a decimal string ("0.15"), an int, a float (read through its shortest repr, so 0.15
    is 3/20) or a Fraction. Raises ValueError for anything else or a value outside (0, 1].
    """
    if isinstance(coverage, bool):
        raise ValueError(f"coverage must be a decimal number, got {coverage!r}")
    if isinstance(coverage, Fraction):
        c = coverage
    else:
        try:
            c = Fraction(Decimal(str(coverage)))
        except (ArithmeticError, ValueError):  # not a decimal, or nan / inf
            raise ValueError(f"coverage must be a decimal number, got {coverage!r}") from None
    if not 0 < c <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    return c


def check_selection(selection: Any) -> str:
    """``selection`` itself if it is one of :data:`SELECTIONS`, else ValueError."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be 'query_head' or 'kv_group', got {selection!r}")
    return selection


def _int64(t: Any) -> Any:
    """An integer numpy array or torch tensor as int64 (so that ``t * numerator`` cannot overflow int32)."""
    if "int" not in str(getattr(t, "dtype", "")):
        raise ValueError(f"t must be an int, or an integer numpy array or torch tensor; got {t!r}")
    return t.astype("int64") if hasattr(t, "astype") else t.long()  # numpy / torch


def _floor_times(c: Fraction, t: Any) -> Any:
    """floor(c * t) in integer arithmetic: int -> int, integer array -> int64 array of its shape."""
    if isinstance(t, numbers.Integral):
        return (c.numerator * int(t)) // c.denominator
    return (_int64(t) * c.numerator) // c.denominator


def coverage_k(coverage: Any, t: Any) -> Any:
    """floor(c * t): the keys that coverage c keeps of t, exactly (no k_min, no dispatch threshold).

    t: an int (returns an int) or an integer numpy array / torch tensor (returns int64 of its shape).
    """
    return _floor_times(parse_coverage(coverage), t)


def _check_count(name: str, value: Any, least: int) -> int:
    whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TopKRule:
    """The attention rule at one coverage.

    coverage: c in (0, 1], as a decimal string, int, float or Fraction (see :func:`parse_coverage`);
    k_min: the smallest set size (>= 1); dispatch_threshold: rows that see fewer keys stay dense
    (>= 0; 0 and 1 mean never); selection: "query_head" or "kv_group".
    coverage_fraction: c as an exact fraction (derived, not an argument).
    """

    coverage: str | int | float | Fraction
    k_min: int
    dispatch_threshold: int
    selection: Selection = "query_head"
    coverage_fraction: Fraction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "coverage_fraction", parse_coverage(self.coverage))
        object.__setattr__(self, "k_min", _check_count("k_min", self.k_min, 1))
        object.__setattr__(self, "dispatch_threshold",
                           _check_count("dispatch_threshold", self.dispatch_threshold, 0))
        check_selection(self.selection)

    @classmethod
    def from_plan(cls, attention: Any, coverage: Any, selection: str | None = None) -> TopKRule:
        """The plan's rule at coverage c: ``attention`` is a plan's ``attention`` section
        (k_min, dispatch_threshold, selection), ``coverage`` one of its cells' coverages; ``selection``
        (an arm's) replaces ``attention.selection`` when given."""
        return cls(coverage=coverage, k_min=attention.k_min, dispatch_threshold=attention.dispatch_threshold,
                   selection=attention.selection if selection is None else selection)

    def k_eff(self, t: Any) -> Any:
        """Selected-set size of rows that see ``t`` keys (t >= 0), the dispatch threshold applied.

        t: an int (returns an int) or an integer numpy array / torch tensor of any shape and device
        (returns int64 of the same kind, shape and device; no host synchronisation).
        """
        if isinstance(t, numbers.Integral):
            t = int(t)
            if t < self.dispatch_threshold:
                return t
            return min(t, max(self.k_min, _floor_times(self.coverage_fraction, t)))
        t = _int64(t)
        k = _floor_times(self.coverage_fraction, t).clip(min=self.k_min).clip(max=t)  # <= t
        return k + (t - k) * (t < self.dispatch_threshold)  # dense rows keep all t keys
