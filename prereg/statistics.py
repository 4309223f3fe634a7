"""The statistic kinds a plan may register: one declaration per kind.

Each kind is one class, registered with ``@statistic(kind, outputs=...)``:

* its pydantic fields are the parameters. Every one is required (no default fills an alpha, a
  resample count, a zero method or a seed); plans are validated against them at lock time;
* ``outputs`` are the fields decision rules, gates and multiplicity families may read as
  ``<statistic id>.<field>``;
* ``compute(x, rows, all_rows) -> dict`` is the implementation the verdict engine calls, and
  the class docstring names the library call it wraps;
* ``cost(n, distinct) -> int`` estimates the work of ``compute`` on ``n`` rows in element
  operations (what the lock-time budget of :mod:`prereg.budget` adds up): ``n`` unless the kind
  resamples or pairs its data.

``compute`` arguments: ``x`` (float64, shape (n,)) is the hypothesis' ``metric`` after the
registered ``nonfinite`` treatment; ``rows`` (pandas DataFrame, n rows) the selected rows aligned
with ``x``; ``all_rows`` every selected row. The gate kinds (``max_abs_deviation``,
``fraction_true``, ``count_true``) and ``single_value`` read their own ``column`` over
``all_rows``, so that a row dropped for a non-finite metric cannot hide a failed gate. The result
holds every field of ``outputs`` plus informative extras (``warnings``: library warnings; ``batch``,
``n_fitted``, ...). Too little data raises :class:`InsufficientData`, anything else that stops a
statistic :class:`StatisticError`, each with the reason; nothing is invented.

Every test statistic, p-value and interval comes from scipy.stats, pingouin or statsmodels; the
few lines written by hand say why. Those libraries, numpy and pandas are imported inside the
functions that use them, so that loading this module (at lock time) loads none of them.

Use: ``validate_params(kind, params)`` returns the validated statistic (a :class:`Statistic`),
whose ``compute`` gives the values; ``KINDS[kind].outputs`` lists a kind's output fields. To add a
kind, declare a :class:`Statistic` subclass with ``@statistic`` here; nothing else lists kinds.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

Alternative = Literal["two-sided", "less", "greater"]
Level = Annotated[float, Field(gt=0, lt=1)]
GroupValue = bool | int | float | str

# Bootstrap resamples are generated in batches; the batch size changes which random numbers go
# where, so it is a fixed function of the data size (recorded in the output), never of the machine.
BOOTSTRAP_ELEMENTS_PER_BATCH = 1 << 24
# Hodges-Lehmann needs every pairwise (Walsh) average; above this many we refuse rather than
# exhaust memory (no library offers an O(n log n) version).
HL_MAX_PAIRS = 20_000_000


class InsufficientData(Exception):
    """Too little data for a registered statistic; the message says what is missing."""


class StatisticError(Exception):
    """A statistic could not be computed for another reason (message says why)."""


# ------------------------------------------------------------------------------- registry


class Statistic(BaseModel):
    """A statistic kind: the fields are its parameters, ``compute`` its implementation."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    kind: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]]

    def compute(self, x: np.ndarray, rows: pd.DataFrame, all_rows: pd.DataFrame) -> dict:
        """Values of this statistic: every field of ``outputs``, plus informative extras."""
        raise NotImplementedError(f"statistic kind '{self.kind}' is not computed per hypothesis")

    def cost(self, n: int, distinct: Callable[[str], int]) -> int:
        """Estimated element operations of :meth:`compute` on ``n`` rows; ``distinct(column)`` is
        the number of distinct values of ``column`` among them (at most ``n``). Linear by default."""
        return n


KINDS: dict[str, type[Statistic]] = {}


def statistic(kind: str, outputs: tuple[str, ...]) -> Callable[[type[Statistic]], type[Statistic]]:
    """Class decorator: register a :class:`Statistic` subclass as ``kind`` with ``outputs``."""

    def register(cls: type[Statistic]) -> type[Statistic]:
        cls.kind, cls.outputs = kind, outputs
        KINDS[kind] = cls
        return cls

    return register


def validate_params(kind: str, params: dict) -> Statistic:
    """The statistic ``kind`` with ``params``; ValueError naming the kind and the bad fields."""
    cls = KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown statistic kind '{kind}' (known: {', '.join(sorted(KINDS))})")
    try:
        return cls.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"statistic kind '{kind}': {problems}") from None


# ------------------------------------------------------------------------------- helpers


def _f(v: Any) -> Any:
    """numpy scalar -> Python scalar."""
    import numpy as np

    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    return v


def _need(n: int, k: int, what: str) -> None:
    if n < k:
        raise InsufficientData(f"{what} needs at least {k} value(s), the selection has {n}")


def _caught(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``fn()`` and the sorted, de-duplicated warnings it raised (deprecations left out)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn()
    return out, sorted({f"{type(x.message).__name__}: {x.message}" for x in w
                        if not issubclass(x.category, DeprecationWarning)})


def _cluster_ok(rows, col: str) -> None:
    if col not in rows.columns:
        raise StatisticError(f"no cluster column '{col}' in the selected rows")
    if rows[col].isna().any():  # a null cluster id would be dropped silently by groupby
        raise StatisticError(f"{int(rows[col].isna().sum())} row(s) have no value in cluster column '{col}'")


def _group(rows, x: np.ndarray, column: str, value: Any) -> np.ndarray:
    """The values of ``x`` whose row has ``column == value``."""
    if column not in rows.columns:
        raise StatisticError(f"no column '{column}' in the selected rows")
    return x[(rows[column] == value).to_numpy()]


def _xcol(rows, name: str, transform: str) -> np.ndarray:
    """Regressor column ``name`` as float64, ln-transformed when ``transform`` is "ln"."""
    import numpy as np

    if name not in rows.columns:
        raise StatisticError(f"no column '{name}' in the selected rows")
    v = rows[name].to_numpy(np.float64)
    if transform == "ln":
        if np.any(v <= 0):
            raise StatisticError(f"ln({name}) of a non-positive value")
        return np.log(v)
    return v


def _gate_column(all_rows, column: str):
    if column not in all_rows.columns:
        raise StatisticError(f"no column '{column}' in the selected rows")
    _need(len(all_rows), 1, f"a gate over '{column}'")
    return all_rows[column]


def _bools(all_rows, column: str) -> np.ndarray:
    s = _gate_column(all_rows, column)
    if s.isna().any():
        raise InsufficientData(f"{int(s.isna().sum())} row(s) have no value in gate column '{column}'")
    return s.to_numpy(bool)


# ------------------------------------------------------------------------------- descriptive


@statistic("describe", outputs=("n", "mean", "sd", "median", "min", "max"))
class Describe(Statistic):
    """n, mean, sd (numpy, with ``ddof``), median, min, max of the metric."""

    ddof: Annotated[int, Field(ge=0)]

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np

        _need(len(x), self.ddof + 1, f"describe (ddof={self.ddof})")
        return {"n": len(x), "mean": _f(np.mean(x)), "sd": _f(np.std(x, ddof=self.ddof)),
                "median": _f(np.median(x)), "min": _f(np.min(x)), "max": _f(np.max(x))}


@statistic("single_value", outputs=("n", "value"))
class SingleValue(Statistic):
    """The value of ``column`` in a selection of exactly one row (transcribed summaries: a
    released p-value, a released median). Anything but one row, or a null, is INSUFFICIENT_DATA."""

    column: str

    def compute(self, x, rows, all_rows) -> dict:
        import pandas as pd

        v = _gate_column(all_rows, self.column)
        if len(v) != 1:
            raise InsufficientData(f"single_value needs exactly one row, the selection has {len(v)}")
        if pd.isna(v.iloc[0]):
            raise InsufficientData(f"'{self.column}' is null in the selected row")
        return {"n": 1, "value": _f(v.iloc[0])}


@statistic("mean_t_ci", outputs=("n", "mean", "low", "high"))
class MeanTCI(Statistic):
    """Student-t confidence interval of the mean (scipy.stats.ttest_1samp(...).confidence_interval).

    ``alternative`` "less" gives (-inf, upper bound]; "greater" gives [lower bound, inf).
    Needs n >= 2 (else INSUFFICIENT_DATA)."""

    confidence_level: Level
    alternative: Alternative

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np
        from scipy import stats

        _need(len(x), 2, "a t-based CI of the mean")
        res, w = _caught(lambda: stats.ttest_1samp(x, 0.0, alternative=self.alternative))
        ci = res.confidence_interval(confidence_level=self.confidence_level)
        if np.isnan(ci.low) or np.isnan(ci.high):
            raise InsufficientData("the t interval is undefined (zero variance)")
        return {"n": len(x), "mean": _f(np.mean(x)), "low": _f(ci.low), "high": _f(ci.high), "warnings": w}


# ------------------------------------------------------------------------------- bootstrap

Resampling = Literal["BCa", "percentile", "basic"]


def _batch(n_resamples: int, n: int) -> int:
    """Resamples per batch for ``n`` resampled elements (see BOOTSTRAP_ELEMENTS_PER_BATCH)."""
    return int(max(1, min(n_resamples, BOOTSTRAP_ELEMENTS_PER_BATCH // max(n, 1))))


def _interval_ok(ci, alternative: str) -> bool:
    import numpy as np

    lo, hi = ci.low, ci.high
    if alternative == "two-sided":
        return bool(np.isfinite(lo) and np.isfinite(hi))
    return bool(np.isfinite(hi) if alternative == "less" else np.isfinite(lo))


def _bootstrap_cost(p: BootstrapCI | RatioOfMedians, m: int, arrays: int = 1) -> int:
    """Elements a bootstrap of ``arrays`` paired arrays of ``m`` values each puts through its
    statistic: n_resamples × m per array, plus for BCa the jackknife (m leave-one-out statistics
    over m - 1 values each, bounded by m²)."""
    return arrays * (p.n_resamples * m + (m * m if p.method == "BCa" else 0))


def _bootstrap(data: tuple, stat: Callable, p: BootstrapCI | RatioOfMedians, paired: bool, n: int,
               alternative: str):
    """scipy.stats.bootstrap with ``p``'s registered method, or the percentile method when that
    gives no interval and ``p.degenerate_fallback`` allows it: (result, method used, warnings)."""
    import numpy as np
    from scipy import stats

    def run(method: str):
        return _caught(lambda: stats.bootstrap(
            data, stat, n_resamples=p.n_resamples, batch=_batch(p.n_resamples, n), vectorized=True,
            paired=paired, confidence_level=p.confidence_level, alternative=alternative, method=method,
            rng=np.random.default_rng(p.random_seed)))

    res, w = run(p.method)
    used = p.method
    if not _interval_ok(res.confidence_interval, alternative):
        if p.degenerate_fallback == "insufficient_data" or p.method == "percentile":
            raise InsufficientData(f"the {p.method} bootstrap interval is degenerate ({'; '.join(w) or 'NaN bounds'})")
        res, w2 = run("percentile")
        w = sorted(set(w) | set(w2))
        used = f"percentile (registered fallback: {p.method} degenerate)"
        if not _interval_ok(res.confidence_interval, alternative):
            raise InsufficientData("the percentile bootstrap interval is degenerate too")
    return res, used, w


@statistic("bootstrap_ci", outputs=("n", "n_clusters", "estimate", "low", "high", "method_used"))
class BootstrapCI(Statistic):
    """scipy.stats.bootstrap CI of ``statistic`` of the metric; with ``cluster`` set, whole
    clusters are resampled (cluster bootstrap of the mean: resample (cluster sum, cluster count)
    pairs; estimate = Σ sums / Σ counts, i.e. the row mean). ``degenerate_fallback``: what to do
    when the registered method gives no interval (BCa on degenerate data)."""

    statistic: Literal["mean", "median"]
    method: Resampling
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

    def cost(self, n: int, distinct: Callable[[str], int]) -> int:
        if self.cluster is None:
            return n + _bootstrap_cost(self, n)
        return n + _bootstrap_cost(self, distinct(self.cluster), arrays=2)  # (cluster sum, count) pairs

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np

        alt = self.alternative
        if self.cluster is None:
            _need(len(x), 2, "a bootstrap CI")
            fn = np.mean if self.statistic == "mean" else np.median
            res, used, w = _bootstrap((x,), lambda a, axis=-1: fn(a, axis=axis), self, False, len(x), alt)
            est, n_clusters = fn(x), None
        else:
            import pandas as pd

            col = self.cluster
            _cluster_ok(rows, col)
            # Resample whole clusters as (sum, count) pairs, so one resample costs O(#clusters)
            # instead of O(#rows); Σsums/Σcounts is the row mean of the resampled clusters.
            # scipy.stats.bootstrap does the resampling, BCa jackknife and CI.
            g = pd.DataFrame({"k": rows[col].to_numpy(), "x": x}).groupby("k", sort=True)["x"]
            sums, counts = g.sum().to_numpy(np.float64), g.count().to_numpy(np.float64)
            _need(len(sums), 2, f"a cluster bootstrap over '{col}' (clusters)")
            res, used, w = _bootstrap((sums, counts), lambda s, c, axis=-1: s.sum(axis=axis) / c.sum(axis=axis),
                                      self, True, len(sums), alt)
            est, n_clusters = sums.sum() / counts.sum(), len(sums)
        ci = res.confidence_interval
        return {"n": len(x), "n_clusters": n_clusters, "estimate": _f(est), "low": _f(ci.low),
                "high": _f(ci.high), "method_used": used,
                "batch": _batch(self.n_resamples, n_clusters or len(x)), "warnings": w}


@statistic("ratio_of_medians", outputs=("n_numerator", "n_denominator", "ratio", "low", "high", "method_used"))
class RatioOfMedians(Statistic):
    """median(metric | group == numerator) / median(metric | group == denominator) with a
    scipy.stats.bootstrap CI (the two groups resampled independently). For a latency speed-up:
    numerator = dense arm, denominator = sparse arm."""

    group_column: str
    numerator: GroupValue
    denominator: GroupValue
    method: Resampling
    n_resamples: Annotated[int, Field(ge=100)]
    confidence_level: Level
    random_seed: int
    degenerate_fallback: Literal["percentile", "insufficient_data"]

    def cost(self, n: int, distinct: Callable[[str], int]) -> int:
        return n + _bootstrap_cost(self, n)  # both groups together hold at most n rows

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np

        a = _group(rows, x, self.group_column, self.numerator)
        b = _group(rows, x, self.group_column, self.denominator)
        _need(len(a), 2, "ratio_of_medians (numerator group)")
        _need(len(b), 2, "ratio_of_medians (denominator group)")
        if np.median(b) == 0:
            raise StatisticError("the denominator median is 0")
        res, used, w = _bootstrap(
            (a, b), lambda u, v, axis=-1: np.median(u, axis=axis) / np.median(v, axis=axis),
            self, False, len(a) + len(b), "two-sided")
        ci = res.confidence_interval
        return {"n_numerator": len(a), "n_denominator": len(b), "ratio": _f(np.median(a) / np.median(b)),
                "low": _f(ci.low), "high": _f(ci.high), "method_used": used, "warnings": w}


# ------------------------------------------------------------------------------- rank tests


@statistic("wilcoxon", outputs=("n", "n_used", "n_zeros", "n_ties", "statistic", "p", "rank_biserial"))
class Wilcoxon(Statistic):
    """scipy.stats.wilcoxon of the metric (a paired difference) against 0, via pingouin.wilcoxon,
    which calls scipy with the same arguments and adds the matched-pairs rank-biserial r
    (Kerby 2014; sign follows pingouin's convention)."""

    alternative: Alternative
    zero_method: Literal["wilcox", "pratt", "zsplit"]
    method: Literal["auto", "exact", "asymptotic"]
    correction: bool

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np
        import pingouin as pg

        n = len(x)
        zeros = int(np.sum(x == 0))
        nz = np.abs(x[x != 0])
        # scipy/pingouin do not report ties; count the nonzero |d| that share their value.
        _, counts = np.unique(nz, return_counts=True)
        n_ties = int(counts[counts > 1].sum())
        n_used = n - zeros if self.zero_method == "wilcox" else n
        _need(n_used, 1, f"Wilcoxon (zero_method={self.zero_method}, {zeros} zero(s))")
        if n - zeros == 0:
            raise InsufficientData(f"every one of the {n} differences is zero")
        res, w = _caught(lambda: pg.wilcoxon(x, alternative=self.alternative, zero_method=self.zero_method,
                                             method=self.method, correction=self.correction))
        return {"n": n, "n_used": n_used, "n_zeros": zeros, "n_ties": n_ties,
                "statistic": _f(res["W_val"].iloc[0]), "p": _f(res["p_val"].iloc[0]),
                "rank_biserial": _f(res["RBC"].iloc[0]), "warnings": w}


@statistic("mann_whitney", outputs=("n_a", "n_b", "u", "p", "rank_biserial", "cles"))
class MannWhitney(Statistic):
    """scipy.stats.mannwhitneyu of the metric between two groups of ``group_column``
    (U of group_a), with rank-biserial r and common-language effect size."""

    group_column: str
    group_a: GroupValue
    group_b: GroupValue
    alternative: Alternative
    method: Literal["auto", "exact", "asymptotic"]
    use_continuity: bool

    def compute(self, x, rows, all_rows) -> dict:
        from scipy import stats

        a = _group(rows, x, self.group_column, self.group_a)
        b = _group(rows, x, self.group_column, self.group_b)
        _need(len(a), 1, f"Mann-Whitney (group {self.group_a!r})")
        _need(len(b), 1, f"Mann-Whitney (group {self.group_b!r})")
        res, w = _caught(lambda: stats.mannwhitneyu(a, b, alternative=self.alternative, method=self.method,
                                                    use_continuity=self.use_continuity))
        u = float(res.statistic)
        # pingouin.mwu gives the same two effect sizes but materialises an n_a x n_b matrix; from U
        # they are closed-form: CLES = U_a/(n_a n_b) (ties 1/2), rank-biserial = 2·CLES - 1.
        cles = u / (len(a) * len(b))
        if self.alternative == "less":
            cles = 1 - cles
        return {"n_a": len(a), "n_b": len(b), "u": u, "p": _f(res.pvalue),
                "rank_biserial": _f(2 * (u / (len(a) * len(b))) - 1), "cles": _f(cles), "warnings": w}


@statistic("hodges_lehmann", outputs=("n", "estimate"))
class HodgesLehmann(Statistic):
    """Hodges-Lehmann estimate: one-sample pseudo-median (median of Walsh averages) when
    ``group_column`` is null, else the two-sample shift median(a_i - b_j). Written here: no
    scipy/pingouin/statsmodels function gives it; computed exactly (numpy)."""

    group_column: str | None
    group_a: GroupValue | None
    group_b: GroupValue | None

    @model_validator(mode="after")
    def _groups(self) -> HodgesLehmann:
        two = self.group_column is not None
        if two != (self.group_a is not None) or two != (self.group_b is not None):
            raise ValueError("group_a and group_b are required with group_column and only with it")
        return self

    def cost(self, n: int, distinct: Callable[[str], int]) -> int:
        return n * (n + 1) // 2  # Walsh averages (a two-sample shift has at most n²/4 differences)

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np

        if self.group_column is None:
            n = len(x)
            _need(n, 1, "Hodges-Lehmann")
            if n * (n + 1) // 2 > HL_MAX_PAIRS:
                raise StatisticError(f"{n * (n + 1) // 2} Walsh averages exceed the limit {HL_MAX_PAIRS}")
            i, j = np.triu_indices(n)
            return {"n": n, "estimate": _f(np.median((x[i] + x[j]) / 2))}
        a = _group(rows, x, self.group_column, self.group_a)
        b = _group(rows, x, self.group_column, self.group_b)
        _need(min(len(a), len(b)), 1, "a two-sample Hodges-Lehmann shift")
        if len(a) * len(b) > HL_MAX_PAIRS:
            raise StatisticError(f"{len(a) * len(b)} pairwise differences exceed the limit {HL_MAX_PAIRS}")
        return {"n": len(a) + len(b), "estimate": _f(np.median(a[:, None] - b[None, :]))}


# ------------------------------------------------------------------------------- means


@statistic("tost", outputs=("n", "mean", "p_low", "p_high", "p", "equivalent"))
class TOST(Statistic):
    """Two one-sided t-tests of the metric's mean against the interval [low, high]
    (pingouin.tost; the one-sided p-values from scipy.stats.ttest_1samp):
    p = max(p(mean > low), p(mean < high)); equivalent = p < alpha."""

    low: float
    high: float
    alpha: Level

    @model_validator(mode="after")
    def _order(self) -> TOST:
        if not self.low < self.high:
            raise ValueError("low must be < high")
        return self

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np

        _need(len(x), 2, "TOST")
        lo, hi, pv = _tost(x, self.low, self.high)
        return {"n": len(x), "mean": _f(np.mean(x)), "p_low": lo, "p_high": hi, "p": pv,
                "equivalent": bool(pv < self.alpha)}


def _groups(rows: pd.DataFrame, x: np.ndarray, column: str, a: GroupValue, b: GroupValue,
            pair_on: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The metric of group ``a`` and of group ``b`` of ``column``; with ``pair_on``, aligned on the
    keys present in both groups (a key repeated inside one group is an error: ambiguous pairing)."""
    import pandas as pd

    if column not in rows.columns:
        raise StatisticError(f"no column '{column}' in the selected rows")
    d = pd.DataFrame({"g": rows[column].to_numpy(), "x": x})
    if pair_on is None:
        return d[d.g == a]["x"].to_numpy(), d[d.g == b]["x"].to_numpy()
    if pair_on not in rows.columns:
        raise StatisticError(f"no column '{pair_on}' in the selected rows")
    d["k"] = rows[pair_on].to_numpy()
    sa, sb = d[d.g == a].set_index("k")["x"], d[d.g == b].set_index("k")["x"]
    for s, value in ((sa, a), (sb, b)):
        if s.index.duplicated().any():
            raise StatisticError(f"group {column} == {value!r} has repeated '{pair_on}' keys: pairing is ambiguous")
    keys = sa.index.intersection(sb.index)
    return sa.loc[keys].to_numpy(), sb.loc[keys].to_numpy()


def _tost(d: np.ndarray, low: float, high: float) -> tuple[float, float, float]:
    """Two one-sided t-tests of mean(d) against [low, high]: (p_low, p_high, p) with
    p = max(p_low, p_high) (scipy.stats.ttest_1samp for the sides; pingouin.tost for p)."""
    import numpy as np
    import pingouin as pg
    from scipy import stats

    if np.std(d) == 0:
        raise InsufficientData("TOST is undefined for zero variance")
    lo = stats.ttest_1samp(d, low, alternative="greater").pvalue
    hi = stats.ttest_1samp(d, high, alternative="less").pvalue
    # pingouin.tost takes a symmetric bound around y: shift the interval's centre to 0.
    mid, half = (low + high) / 2, (high - low) / 2
    return _f(lo), _f(hi), float(pg.tost(d - mid, 0.0, bound=half)["pval"].iloc[0])


@statistic("difference_of_means", outputs=("n", "n_minuend", "n_subtrahend", "mean_minuend",
                                           "mean_subtrahend", "difference"))
class DifferenceOfMeans(Statistic):
    """mean(metric | group == minuend) - mean(metric | group == subtrahend), paired on ``pair_on``
    (only keys present in both groups are used) or unpaired when ``pair_on`` is null (numpy)."""

    group_column: str
    minuend: GroupValue
    subtrahend: GroupValue
    pair_on: str | None

    def compute(self, x, rows, all_rows) -> dict:
        a, b = _groups(rows, x, self.group_column, self.minuend, self.subtrahend, self.pair_on)
        _need(len(a), 1, f"difference_of_means ({self.group_column} == {self.minuend!r})")
        _need(len(b), 1, f"difference_of_means ({self.group_column} == {self.subtrahend!r})")
        return {"n": min(len(a), len(b)) if self.pair_on else len(a) + len(b), "n_minuend": len(a),
                "n_subtrahend": len(b), "mean_minuend": _f(a.mean()), "mean_subtrahend": _f(b.mean()),
                "difference": _f(a.mean() - b.mean())}


@statistic("paired_difference", outputs=("n", "mean_a", "mean_b", "difference", "low", "high", "p",
                                         "tost_p", "equivalent"))
class PairedDifference(Statistic):
    """The paired difference a - b of the metric between groups ``group_a`` and ``group_b`` of
    ``group_column``, paired on ``pair_on`` (keys present in both groups): its mean, the paired
    t confidence interval and two-sided p (scipy.stats.ttest_rel), and the equivalence test of the
    mean difference against [equivalence_low, equivalence_high] (two one-sided t-tests on the paired
    differences, pingouin.tost): equivalent = tost_p < alpha."""

    group_column: str
    group_a: GroupValue
    group_b: GroupValue
    pair_on: str
    confidence_level: Level
    equivalence_low: float
    equivalence_high: float
    alpha: Level

    @model_validator(mode="after")
    def _order(self) -> PairedDifference:
        if not self.equivalence_low < self.equivalence_high:
            raise ValueError("equivalence_low must be < equivalence_high")
        return self

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np
        from scipy import stats

        a, b = _groups(rows, x, self.group_column, self.group_a, self.group_b, self.pair_on)
        _need(len(a), 2, f"a paired difference ({self.group_column}: {self.group_a!r} - {self.group_b!r}, pairs)")
        res, w = _caught(lambda: stats.ttest_rel(a, b))
        ci = res.confidence_interval(confidence_level=self.confidence_level)
        if not (np.isfinite(ci.low) and np.isfinite(ci.high)):
            raise InsufficientData("the paired t interval is undefined (zero variance of the differences)")
        _, _, tost_p = _tost(a - b, self.equivalence_low, self.equivalence_high)
        return {"n": len(a), "mean_a": _f(a.mean()), "mean_b": _f(b.mean()), "difference": _f((a - b).mean()),
                "low": _f(ci.low), "high": _f(ci.high), "p": _f(res.pvalue), "tost_p": tost_p,
                "equivalent": bool(tost_p < self.alpha), "warnings": w}


# ------------------------------------------------------------------------------- regressions


def _fit(model, cluster: np.ndarray | None):
    """Fit a statsmodels OLS ``model``: classical errors, or cluster-robust over the cluster id
    of each row (cov_type="cluster", t reference with G-1 degrees of freedom).
    Returns (fit, warnings, number of clusters or None)."""
    import pandas as pd

    if cluster is None:
        fit, w = _caught(lambda: model.fit())
        return fit, w, None
    codes = pd.factorize(cluster, sort=True)[0]
    n_clusters = int(codes.max() + 1)
    _need(n_clusters, 2, "cluster-robust errors (clusters)")
    fit, w = _caught(lambda: model.fit(cov_type="cluster", cov_kwds={"groups": codes}, use_t=True))
    return fit, w, n_clusters


def _ols(y: np.ndarray, xv: np.ndarray, cluster: np.ndarray | None, level: float) -> dict:
    """statsmodels OLS of y on [1, xv] (errors as :func:`_fit`)."""
    import numpy as np
    import statsmodels.api as sm

    X = sm.add_constant(xv.astype(np.float64), has_constant="add")
    fit, w, n_clusters = _fit(sm.OLS(y.astype(np.float64), X), cluster)
    ci = fit.conf_int(alpha=1 - level)
    return {"n": len(y), "n_clusters": n_clusters, "slope": _f(fit.params[1]), "slope_se": _f(fit.bse[1]),
            "slope_low": _f(ci[1, 0]), "slope_high": _f(ci[1, 1]), "slope_p": _f(fit.pvalues[1]),
            "intercept": _f(fit.params[0]), "intercept_low": _f(ci[0, 0]), "intercept_high": _f(ci[0, 1]),
            "r2": _f(fit.rsquared), "warnings": w}


@statistic("ols_loglinear", outputs=("n", "n_clusters", "slope", "slope_se", "slope_low", "slope_high",
                                     "slope_p", "intercept", "intercept_low", "intercept_high", "r2"))
class OLSLogLinear(Statistic):
    """statsmodels OLS of the metric on ln(x) (or x): slope (alpha), intercept (beta);
    cluster-robust errors over ``cluster`` (cov_type="cluster"), classical errors when ``cluster``
    is null."""

    x: str
    x_transform: Literal["ln", "none"]
    cluster: str | None
    confidence_level: Level

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np

        xv = _xcol(rows, self.x, self.x_transform)
        _need(len(x), 3, "an OLS fit with a CI")
        if len(np.unique(xv)) < 2:
            raise InsufficientData(f"an OLS slope needs two distinct values of {self.x}")
        if self.cluster:
            _cluster_ok(rows, self.cluster)
        cl = rows[self.cluster].to_numpy() if self.cluster else None
        return _ols(x, xv, cl, self.confidence_level)


@statistic("slopes_by_group", outputs=("n_groups", "mean", "sd", "min", "max"))
class SlopesByGroup(Statistic):
    """One OLS slope of the metric on ln(x) (or x) per value of ``group_column`` (e.g. per seed;
    scipy.stats.linregress), then the mean, SD (``ddof``), min and max of the slopes."""

    x: str
    x_transform: Literal["ln", "none"]
    group_column: str
    ddof: Annotated[int, Field(ge=0)]

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np
        import pandas as pd
        from scipy import stats

        xv = _xcol(rows, self.x, self.x_transform)
        g = rows[self.group_column].to_numpy()
        slopes = []
        for key in sorted(pd.unique(g), key=str):
            m = g == key
            if len(np.unique(xv[m])) < 2:
                raise InsufficientData(f"group {self.group_column}={key!r} has fewer than two distinct {self.x}")
            slopes.append(stats.linregress(xv[m], x[m]).slope)
        s = np.asarray(slopes)
        _need(len(s), self.ddof + 1, f"slopes_by_group SD (ddof={self.ddof}) (groups)")
        return {"n_groups": len(s), "mean": _f(s.mean()), "sd": _f(s.std(ddof=self.ddof)),
                "min": _f(s.min()), "max": _f(s.max())}


@statistic("slope_difference", outputs=("n", "n_clusters", "slope_a", "slope_b", "difference",
                                        "difference_low", "difference_high", "difference_p"))
class SlopeDifference(Statistic):
    """Difference of two groups' OLS slopes of the metric on ln(x) (or x), from one statsmodels
    OLS fit with an interaction: y = b0 + b1·x + b2·[group == group_a] + b3·x·[group == group_a]
    over the rows of the two groups, so b3 = slope_a − slope_b. Cluster-robust errors over
    ``cluster`` (cov_type="cluster"), so rows of both groups that share a cluster (e.g. the same
    prompt) are not taken as independent.
    """

    x: str
    x_transform: Literal["ln", "none"]
    group_column: str
    group_a: bool | int | str
    group_b: bool | int | str
    cluster: str | None
    confidence_level: Level

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np
        import statsmodels.api as sm

        if self.group_column not in rows.columns:
            raise StatisticError(f"no column '{self.group_column}' in the selected rows")
        g = rows[self.group_column].to_numpy()
        keep = (g == self.group_a) | (g == self.group_b)
        xv, y = _xcol(rows, self.x, self.x_transform)[keep], x[keep]
        is_a = (g[keep] == self.group_a).astype(float)
        for name, m in (("group_a", is_a == 1), ("group_b", is_a == 0)):
            if len(np.unique(xv[m])) < 2:
                raise InsufficientData(f"{name}={getattr(self, name)!r} has fewer than two distinct "
                                       f"values of {self.x}")
        X = np.column_stack([np.ones_like(xv), xv, is_a, xv * is_a])
        if self.cluster:
            _cluster_ok(rows, self.cluster)
        cl = rows[self.cluster].to_numpy()[keep] if self.cluster else None
        fit, w, n_clusters = _fit(sm.OLS(y.astype(np.float64), X), cl)
        ci = fit.conf_int(alpha=1 - self.confidence_level)
        return {"n": int(keep.sum()), "n_clusters": n_clusters, "slope_a": _f(fit.params[1] + fit.params[3]),
                "slope_b": _f(fit.params[1]), "difference": _f(fit.params[3]), "difference_low": _f(ci[3, 0]),
                "difference_high": _f(ci[3, 1]), "difference_p": _f(fit.pvalues[3]), "warnings": w}


@statistic("scaling_law", outputs=("n", "n_x", "n_nonpositive", "exponent", "alpha_eff", "alpha_eff_low",
                                   "alpha_eff_high", "A", "r2"))
class ScalingLaw(Statistic):
    """Fit ln ΔPPL = ln A - (1 - α_eff)·ln N over the selected rows (select one coverage c) by
    statsmodels OLS.

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

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np
        import pandas as pd

        nv = _xcol(rows, self.x, "none")
        nonpos = int(np.sum(x <= 0))
        mode = self.nonpositive
        if mode == "error" and nonpos:
            raise InsufficientData(f"{nonpos} value(s) <= 0 and nonpositive='error'")
        if mode == "mean_then_log":
            means = pd.Series(x).groupby(nv).mean()
            if (means <= 0).any():
                raise InsufficientData(f"mean metric <= 0 at {self.x} = {list(means.index[means <= 0])}")
            y, xv, cl = np.log(means.to_numpy()), np.log(means.index.to_numpy(np.float64)), None
        else:
            keep = x > 0
            y, xv = np.log(x[keep]), np.log(nv[keep])
            if self.cluster:
                _cluster_ok(rows, self.cluster)
            cl = rows[self.cluster].to_numpy()[keep] if self.cluster else None
        n_x = len(np.unique(xv))
        _need(n_x, self.min_distinct_x, f"the scaling-law fit (distinct {self.x})")
        _need(len(y), 3, "the scaling-law fit")
        fit = _ols(y, xv, cl, self.confidence_level)
        return {"n": len(x), "n_x": n_x, "n_nonpositive": nonpos, "exponent": fit["slope"],
                "alpha_eff": 1 + fit["slope"], "alpha_eff_low": 1 + fit["slope_low"],
                "alpha_eff_high": 1 + fit["slope_high"], "A": _f(np.exp(fit["intercept"])), "r2": fit["r2"],
                "n_fitted": len(y), "n_clusters": fit["n_clusters"], "warnings": fit["warnings"]}


@statistic("dose_response", outputs=("n", "n_clusters", "slope", "slope_low", "slope_high", "slope_p",
                                     "rho", "rho_p"))
class DoseResponse(Statistic):
    """Dose-response of the metric on a numeric dose column: statsmodels OLS slope
    (cluster-robust over ``cluster`` when set) and Spearman's rho (scipy.stats.spearmanr) with
    ``alternative``."""

    x: str
    cluster: str | None
    confidence_level: Level
    alternative: Alternative

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np
        from scipy import stats

        xv = _xcol(rows, self.x, "none")
        _need(len(x), 3, "dose-response")
        if len(np.unique(xv)) < 2:
            raise InsufficientData(f"dose-response needs two distinct doses of {self.x}")
        if self.cluster:
            _cluster_ok(rows, self.cluster)
        fit = _ols(x, xv, rows[self.cluster].to_numpy() if self.cluster else None, self.confidence_level)
        rho = stats.spearmanr(xv, x, alternative=self.alternative)
        return {"n": len(x), "n_clusters": fit["n_clusters"], "slope": fit["slope"], "slope_low": fit["slope_low"],
                "slope_high": fit["slope_high"], "slope_p": fit["slope_p"], "rho": _f(rho.statistic),
                "rho_p": _f(rho.pvalue), "warnings": fit["warnings"]}


# ------------------------------------------------------------------------------- gates


@statistic("max_abs_deviation", outputs=("n", "value"))
class MaxAbsDeviation(Statistic):
    """Gate statistic: max |column - center| over all selected rows (numpy; NaN counts as a
    failure: value = inf)."""

    column: str
    center: float

    def compute(self, x, rows, all_rows) -> dict:
        import numpy as np

        v = _gate_column(all_rows, self.column).to_numpy(np.float64)
        dev = np.abs(v - self.center)
        value = float("inf") if np.any(~np.isfinite(dev)) else float(dev.max())
        return {"n": len(v), "value": value}


@statistic("fraction_true", outputs=("n", "count", "fraction"))
class FractionTrue(Statistic):
    """Gate statistic: count and fraction of rows where boolean ``column`` is true."""

    column: str

    def compute(self, x, rows, all_rows) -> dict:
        b = _bools(all_rows, self.column)
        return {"n": len(b), "count": int(b.sum()), "fraction": float(b.mean())}


@statistic("count_true", outputs=("n", "count"))
class CountTrue(Statistic):
    """Gate statistic: number of rows where boolean ``column`` is true (e.g. dense fallbacks)."""

    column: str

    def compute(self, x, rows, all_rows) -> dict:
        b = _bools(all_rows, self.column)
        return {"n": len(b), "count": int(b.sum())}


# ------------------------------------------------------------------------------- multiplicity


@statistic("multiplicity_adjusted", outputs=("p_raw", "p_adjusted", "reject"))
class MultiplicityAdjusted(Statistic):
    """The hypothesis' p-value adjusted over its registered multiplicity family
    (statsmodels multipletests with the family's method). Not computed per hypothesis: the engine
    calls :meth:`adjust` on the family's p-values once every hypothesis' own statistics exist."""

    family: str

    @staticmethod
    def adjust(p_values: list[float], method: str, alpha: float) -> tuple[list[float], list[bool]]:
        """statsmodels multipletests: adjusted p-values and reject flags, in input order."""
        import numpy as np
        from statsmodels.stats.multitest import multipletests

        reject, padj, _, _ = multipletests(np.asarray(p_values, dtype=np.float64), alpha=alpha, method=method)
        return [float(v) for v in padj], [bool(r) for r in reject]
