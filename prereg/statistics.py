"""Registry of statistic kinds a plan may register, with their required parameters.

This module is the contract between plans (validated at lock time) and the verdict engine
(``analysis/``), which implements each kind. Every parameter is required: no default fills an
alpha, a resample count, a zero method or a seed. Outputs of each kind (the fields decision
rules may read as ``<statistic id>.<field>``) are listed in ``OUTPUT_FIELDS``.

Statistics read the hypothesis' ``metric`` column of the selected rows (after the registered
``nonfinite`` treatment), except the gate kinds (``max_abs_deviation``, ``fraction_true``,
``count_true``), which read their own ``column`` over *all* selected rows, so that a row dropped
for a non-finite metric cannot hide a failed gate.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Alternative = Literal["two-sided", "less", "greater"]
Level = Annotated[float, Field(gt=0, lt=1)]
GroupValue = bool | int | float | str


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Describe(_Params):
    """n, mean, sd (with ``ddof``), median, min, max of the metric."""

    ddof: Annotated[int, Field(ge=0)]


class MeanTCI(_Params):
    """Student-t confidence interval of the mean (scipy.stats.ttest_1samp(...).confidence_interval).

    ``alternative`` "less" gives (-inf, upper bound]; "greater" gives [lower bound, inf).
    Needs n >= 2 (else INSUFFICIENT_DATA)."""

    confidence_level: Level
    alternative: Alternative


class BootstrapCI(_Params):
    """scipy.stats.bootstrap of ``statistic``; with ``cluster`` set, whole clusters are resampled
    (cluster bootstrap of the mean: resample (cluster sum, cluster count) pairs; estimate =
    Σ sums / Σ counts, i.e. the row mean). ``degenerate_fallback``: what to do when the registered
    method gives no interval (BCa on degenerate data)."""

    statistic: Literal["mean", "median"]
    method: Literal["BCa", "percentile", "basic"]
    n_resamples: Annotated[int, Field(ge=100)]
    confidence_level: Level
    alternative: Alternative
    random_seed: int
    cluster: str | None
    degenerate_fallback: Literal["percentile", "insufficient_data"]

    @model_validator(mode="after")
    def _cluster_mean_only(self) -> BootstrapCI:
        if self.cluster is not None and self.statistic != "mean":
            raise ValueError("a cluster bootstrap is implemented for the mean only")
        return self


class Wilcoxon(_Params):
    """scipy.stats.wilcoxon of the metric (a paired difference) against 0 (via pingouin.wilcoxon,
    which calls scipy with the same arguments and adds the matched-pairs rank-biserial r)."""

    alternative: Alternative
    zero_method: Literal["wilcox", "pratt", "zsplit"]
    method: Literal["auto", "exact", "asymptotic"]
    correction: bool


class MannWhitney(_Params):
    """scipy.stats.mannwhitneyu of the metric between two groups of ``group_column``
    (U of group_a), with rank-biserial r and common-language effect size."""

    group_column: str
    group_a: GroupValue
    group_b: GroupValue
    alternative: Alternative
    method: Literal["auto", "exact", "asymptotic"]
    use_continuity: bool


class HodgesLehmann(_Params):
    """Hodges-Lehmann estimate: one-sample pseudo-median (median of Walsh averages) when
    ``group_column`` is null, else the two-sample shift median(a_i - b_j)."""

    group_column: str | None
    group_a: GroupValue | None
    group_b: GroupValue | None

    @model_validator(mode="after")
    def _groups(self) -> HodgesLehmann:
        two = self.group_column is not None
        if two != (self.group_a is not None) or two != (self.group_b is not None):
            raise ValueError("group_a and group_b are required with group_column and only with it")
        return self


class TOST(_Params):
    """Two one-sided t-tests of the metric's mean against the interval [low, high]:
    p = max(p(mean > low), p(mean < high)); equivalent = p < alpha."""

    low: float
    high: float
    alpha: Level

    @model_validator(mode="after")
    def _order(self) -> TOST:
        if not self.low < self.high:
            raise ValueError("low must be < high")
        return self


class DifferenceOfMeans(_Params):
    """mean(metric | group == minuend) - mean(metric | group == subtrahend), paired on ``pair_on``
    (only keys present in both groups are used) or unpaired when ``pair_on`` is null."""

    group_column: str
    minuend: GroupValue
    subtrahend: GroupValue
    pair_on: str | None


class OLSLogLinear(_Params):
    """OLS of y on ln(x) (or x): slope (alpha), intercept (beta); cluster-robust errors over
    ``cluster`` (statsmodels cov_type="cluster"), classical errors when ``cluster`` is null."""

    x: str
    x_transform: Literal["ln", "none"]
    cluster: str | None
    confidence_level: Level


class SlopesByGroup(_Params):
    """One OLS slope of y on ln(x) (or x) per value of ``group_column`` (e.g. per seed), then the
    mean, SD (``ddof``), min and max of the slopes."""

    x: str
    x_transform: Literal["ln", "none"]
    group_column: str
    ddof: Annotated[int, Field(ge=0)]


class SlopeDifference(_Params):
    """Difference of two groups' OLS slopes of y on ln(x) (or x), from one fit with an interaction:
    y = b0 + b1·x + b2·[group == group_a] + b3·x·[group == group_a] over the rows of the two
    groups, so b3 = slope_a − slope_b. Cluster-robust errors over ``cluster`` (statsmodels), so
    rows of both groups that share a cluster (e.g. the same prompt) are not taken as independent.
    """

    x: str
    x_transform: Literal["ln", "none"]
    group_column: str
    group_a: bool | int | str
    group_b: bool | int | str
    cluster: str | None
    confidence_level: Level


class ScalingLaw(_Params):
    """Fit ln ΔPPL = ln A - (1 - α_eff)·ln N over the selected rows (select one coverage c).

    ``nonpositive`` says what a ΔPPL <= 0 does (its logarithm is undefined):

    * "mean_then_log": average the metric over rows at each N first (keeps every window,
      so negative windows pull the mean down instead of being discarded), then fit the per-N
      means (classical OLS errors, n = number of N values); a mean <= 0 is INSUFFICIENT_DATA;
    * "drop_and_count": fit row-level, drop rows <= 0 and report how many (biases A upward
      and α_eff toward the N where drops are rare; cluster-robust errors over ``cluster``);
    * "error": any row <= 0 makes the statistic fail (INSUFFICIENT_DATA with the count).

    At least ``min_distinct_x`` (>= 4) distinct values of N are required.
    """

    x: str
    nonpositive: Literal["mean_then_log", "drop_and_count", "error"]
    cluster: str | None
    min_distinct_x: Annotated[int, Field(ge=4)]
    confidence_level: Level


class DoseResponse(_Params):
    """Dose-response of the metric on a numeric dose column: OLS slope (cluster-robust over
    ``cluster`` when set) and Spearman's rho (scipy.stats.spearmanr) with ``alternative``."""

    x: str
    cluster: str | None
    confidence_level: Level
    alternative: Alternative


class RatioOfMedians(_Params):
    """median(metric | group == numerator) / median(metric | group == denominator) with a
    scipy.stats.bootstrap CI (the two groups resampled independently). For a latency speed-up:
    numerator = dense arm, denominator = sparse arm."""

    group_column: str
    numerator: GroupValue
    denominator: GroupValue
    method: Literal["BCa", "percentile", "basic"]
    n_resamples: Annotated[int, Field(ge=100)]
    confidence_level: Level
    random_seed: int
    degenerate_fallback: Literal["percentile", "insufficient_data"]


class MaxAbsDeviation(_Params):
    """Gate statistic: max |column - center| over all selected rows (NaN counts as a failure:
    value = inf)."""

    column: str
    center: float


class FractionTrue(_Params):
    """Gate statistic: count and fraction of rows where boolean ``column`` is true."""

    column: str


class CountTrue(_Params):
    """Gate statistic: number of rows where boolean ``column`` is true (e.g. dense fallbacks)."""

    column: str


class SingleValue(_Params):
    """The value of ``column`` in a selection of exactly one row (transcribed summaries: a
    released p-value, a released median). Anything but one row, or a null, is INSUFFICIENT_DATA."""

    column: str


class MultiplicityAdjusted(_Params):
    """The hypothesis' p-value adjusted over its registered multiplicity family (statsmodels
    multipletests with the family's method); computed after every hypothesis' own statistics."""

    family: str


SPECS: dict[str, type[_Params]] = {
    "describe": Describe,
    "mean_t_ci": MeanTCI,
    "bootstrap_ci": BootstrapCI,
    "wilcoxon": Wilcoxon,
    "mann_whitney": MannWhitney,
    "hodges_lehmann": HodgesLehmann,
    "tost": TOST,
    "difference_of_means": DifferenceOfMeans,
    "ols_loglinear": OLSLogLinear,
    "slopes_by_group": SlopesByGroup,
    "slope_difference": SlopeDifference,
    "scaling_law": ScalingLaw,
    "dose_response": DoseResponse,
    "ratio_of_medians": RatioOfMedians,
    "max_abs_deviation": MaxAbsDeviation,
    "fraction_true": FractionTrue,
    "count_true": CountTrue,
    "single_value": SingleValue,
    "multiplicity_adjusted": MultiplicityAdjusted,
}

OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "describe": ("n", "mean", "sd", "median", "min", "max"),
    "mean_t_ci": ("n", "mean", "low", "high"),
    "bootstrap_ci": ("n", "n_clusters", "estimate", "low", "high", "method_used"),
    "wilcoxon": ("n", "n_used", "n_zeros", "n_ties", "statistic", "p", "rank_biserial"),
    "mann_whitney": ("n_a", "n_b", "u", "p", "rank_biserial", "cles"),
    "hodges_lehmann": ("n", "estimate"),
    "tost": ("n", "mean", "p_low", "p_high", "p", "equivalent"),
    "difference_of_means": ("n", "n_minuend", "n_subtrahend", "mean_minuend", "mean_subtrahend",
                            "difference"),
    "ols_loglinear": ("n", "n_clusters", "slope", "slope_se", "slope_low", "slope_high", "slope_p",
                      "intercept", "intercept_low", "intercept_high", "r2"),
    "slopes_by_group": ("n_groups", "mean", "sd", "min", "max"),
    "slope_difference": ("n", "n_clusters", "slope_a", "slope_b", "difference", "difference_low",
                         "difference_high", "difference_p"),
    "scaling_law": ("n", "n_x", "n_nonpositive", "exponent", "alpha_eff", "alpha_eff_low",
                    "alpha_eff_high", "A", "r2"),
    "dose_response": ("n", "n_clusters", "slope", "slope_low", "slope_high", "slope_p", "rho",
                      "rho_p"),
    "ratio_of_medians": ("n_numerator", "n_denominator", "ratio", "low", "high", "method_used"),
    "max_abs_deviation": ("n", "value"),
    "fraction_true": ("n", "count", "fraction"),
    "count_true": ("n", "count"),
    "single_value": ("n", "value"),
    "multiplicity_adjusted": ("p_raw", "p_adjusted", "reject"),
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


def check_field(kind: str, field: str) -> None:
    """Raise ValueError when a rule reads a field that ``kind`` does not output."""
    if field not in OUTPUT_FIELDS[kind]:
        raise ValueError(f"statistic kind '{kind}' has no output '{field}' "
                         f"(outputs: {', '.join(OUTPUT_FIELDS[kind])})")
