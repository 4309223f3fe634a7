"""Registry of statistic kinds a plan may register, with their required parameters.

This module is the contract between plans (validated at lock time) and the verdict engine
(``analysis/``), which implements each kind. Every parameter is required: no default fills an
alpha, a resample count, a zero method or a seed. Outputs of each kind (the fields decision
rules may read as ``<statistic id>.<field>``) are listed in ``OUTPUT_FIELDS``.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Alternative = Literal["two-sided", "less", "greater"]
Level = Annotated[float, Field(gt=0, lt=1)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Describe(_Params):
    """n, mean, sd (with ``ddof``), median, min, max of the metric."""

    ddof: Annotated[int, Field(ge=0)]


class MeanTCI(_Params):
    """Student-t confidence interval of the mean (scipy.stats.ttest_1samp(...).confidence_interval)."""

    confidence_level: Level
    alternative: Alternative


class BootstrapCI(_Params):
    """scipy.stats.bootstrap of ``statistic``; with ``cluster`` set, whole clusters are resampled."""

    statistic: Literal["mean", "median"]
    method: Literal["BCa", "percentile", "basic"]
    n_resamples: Annotated[int, Field(ge=100)]
    confidence_level: Level
    alternative: Alternative
    random_seed: int
    cluster: str | None
    degenerate_fallback: Literal["percentile", "insufficient_data"]


class Wilcoxon(_Params):
    """scipy.stats.wilcoxon of the metric (a paired difference) against 0."""

    alternative: Alternative
    zero_method: Literal["wilcox", "pratt", "zsplit"]
    method: Literal["auto", "exact", "asymptotic"]
    correction: bool


class MannWhitney(_Params):
    """scipy.stats.mannwhitneyu of the metric between two groups of ``group_column``."""

    group_column: str
    group_a: bool | int | str
    group_b: bool | int | str
    alternative: Alternative
    method: Literal["auto", "exact", "asymptotic"]
    use_continuity: bool


class TOST(_Params):
    """Two one-sided tests of the metric's mean against the interval [low, high] (pingouin.tost)."""

    low: float
    high: float
    alpha: Level


class DifferenceOfMeans(_Params):
    """mean(metric | group == minuend) - mean(metric | group == subtrahend), paired on ``pair_on``."""

    group_column: str
    minuend: bool | int | str
    subtrahend: bool | int | str
    pair_on: str | None


class OLSLogLinear(_Params):
    """OLS of y on ln(x) (or x): slope (alpha), intercept (beta), cluster-robust errors (statsmodels)."""

    x: str
    x_transform: Literal["ln", "none"]
    cluster: str | None
    confidence_level: Level


SPECS: dict[str, type[_Params]] = {
    "describe": Describe,
    "mean_t_ci": MeanTCI,
    "bootstrap_ci": BootstrapCI,
    "wilcoxon": Wilcoxon,
    "mann_whitney": MannWhitney,
    "tost": TOST,
    "difference_of_means": DifferenceOfMeans,
    "ols_loglinear": OLSLogLinear,
}

OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "describe": ("n", "mean", "sd", "median", "min", "max"),
    "mean_t_ci": ("n", "mean", "low", "high"),
    "bootstrap_ci": ("n", "estimate", "low", "high", "method_used"),
    "wilcoxon": ("n", "n_zeros", "n_ties", "statistic", "p"),
    "mann_whitney": ("n_a", "n_b", "u", "p"),
    "tost": ("n", "p", "equivalent"),
    "difference_of_means": ("n", "difference"),
    "ols_loglinear": ("n", "n_clusters", "slope", "slope_low", "slope_high", "intercept", "r2"),
}


def validate_params(kind: str, params: dict) -> _Params:
    """Validate ``params`` for ``kind``; raise ValueError naming the kind and the bad fields."""
    spec = SPECS.get(kind)
    if spec is None:
        raise ValueError(f"unknown statistic kind '{kind}' (known: {', '.join(sorted(SPECS))})")
    try:
        return spec.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"statistic kind '{kind}': {problems}") from None
