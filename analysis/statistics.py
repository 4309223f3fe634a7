"""Implementations of the statistic kinds registered in :mod:`prereg.statistics`.

Each kind is a function ``f(x, rows, all_rows, params) -> dict`` where ``x`` (float64, shape
(n,)) is the hypothesis' metric after the registered non-finite treatment, ``rows`` the selected
rows aligned with ``x``, ``all_rows`` every selected row (gate kinds read these). Outputs are the
fields listed in ``prereg.statistics.OUTPUT_FIELDS`` (plus informative extras such as library
warnings). Too little data raises :class:`InsufficientData` with the reason; nothing is invented.

Every test statistic, p-value and interval comes from scipy.stats, pingouin or statsmodels; the
few lines written by hand say why.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd

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


def _f(v: Any) -> Any:
    """numpy scalar -> Python scalar."""
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


def _batch(n_resamples: int, n: int) -> int:
    return int(max(1, min(n_resamples, BOOTSTRAP_ELEMENTS_PER_BATCH // max(n, 1))))


def _caught(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn()
    return out, sorted({f"{type(x.message).__name__}: {x.message}" for x in w
                        if not issubclass(x.category, DeprecationWarning)})


def _cluster_ok(rows: pd.DataFrame, col: str) -> None:
    if col not in rows.columns:
        raise StatisticError(f"no cluster column '{col}' in the selected rows")
    if rows[col].isna().any():  # a null cluster id would be dropped silently by groupby
        raise StatisticError(f"{int(rows[col].isna().sum())} row(s) have no value in cluster column '{col}'")


def _group(rows: pd.DataFrame, x: np.ndarray, column: str, value: Any) -> np.ndarray:
    if column not in rows.columns:
        raise StatisticError(f"no column '{column}' in the selected rows")
    return x[(rows[column] == value).to_numpy()]


# ------------------------------------------------------------------------------- descriptive


def describe(x, rows, all_rows, p) -> dict:
    _need(len(x), p["ddof"] + 1, f"describe (ddof={p['ddof']})")
    return {"n": len(x), "mean": _f(np.mean(x)), "sd": _f(np.std(x, ddof=p["ddof"])),
            "median": _f(np.median(x)), "min": _f(np.min(x)), "max": _f(np.max(x))}


def single_value(x, rows, all_rows, p) -> dict:
    v = _gate_column(all_rows, p["column"])
    if len(v) != 1:
        raise InsufficientData(f"single_value needs exactly one row, the selection has {len(v)}")
    if pd.isna(v.iloc[0]):
        raise InsufficientData(f"'{p['column']}' is null in the selected row")
    return {"n": 1, "value": _f(v.iloc[0])}


def mean_t_ci(x, rows, all_rows, p) -> dict:
    from scipy import stats

    _need(len(x), 2, "a t-based CI of the mean")
    res, w = _caught(lambda: stats.ttest_1samp(x, 0.0, alternative=p["alternative"]))
    ci = res.confidence_interval(confidence_level=p["confidence_level"])
    if np.isnan(ci.low) or np.isnan(ci.high):
        raise InsufficientData("the t interval is undefined (zero variance)")
    return {"n": len(x), "mean": _f(np.mean(x)), "low": _f(ci.low), "high": _f(ci.high), "warnings": w}


# ------------------------------------------------------------------------------- bootstrap


def _bootstrap(data: tuple, stat: Callable, p: dict, method: str, paired: bool, n: int, alternative: str):
    from scipy import stats

    return _caught(lambda: stats.bootstrap(
        data, stat, n_resamples=p["n_resamples"], batch=_batch(p["n_resamples"], n),
        vectorized=True, paired=paired, confidence_level=p["confidence_level"],
        alternative=alternative, method=method, rng=np.random.default_rng(p["random_seed"])))


def _interval_ok(ci, alternative: str) -> bool:
    lo, hi = ci.low, ci.high
    if alternative == "two-sided":
        return bool(np.isfinite(lo) and np.isfinite(hi))
    return bool(np.isfinite(hi) if alternative == "less" else np.isfinite(lo))


def _bootstrap_with_fallback(data, stat, p, paired, n, alternative):
    res, w = _bootstrap(data, stat, p, p["method"], paired, n, alternative)
    used = p["method"]
    if not _interval_ok(res.confidence_interval, alternative):
        if p["degenerate_fallback"] == "insufficient_data" or p["method"] == "percentile":
            raise InsufficientData(f"the {p['method']} bootstrap interval is degenerate ({'; '.join(w) or 'NaN bounds'})")
        res, w2 = _bootstrap(data, stat, p, "percentile", paired, n, alternative)
        w = sorted(set(w) | set(w2))
        used = f"percentile (registered fallback: {p['method']} degenerate)"
        if not _interval_ok(res.confidence_interval, alternative):
            raise InsufficientData("the percentile bootstrap interval is degenerate too")
    return res, used, w


def bootstrap_ci(x, rows, all_rows, p) -> dict:
    alt = p["alternative"]
    if p["cluster"] is None:
        _need(len(x), 2, "a bootstrap CI")
        fn = np.mean if p["statistic"] == "mean" else np.median
        res, used, w = _bootstrap_with_fallback((x,), lambda a, axis=-1: fn(a, axis=axis), p, False, len(x), alt)
        est, n_clusters = fn(x), None
    else:
        col = p["cluster"]
        _cluster_ok(rows, col)
        # Cluster bootstrap of the mean: resample whole clusters as (sum, count) pairs, so one
        # resample costs O(#clusters) instead of O(#rows); Σsums/Σcounts is the row mean of the
        # resampled clusters. scipy.stats.bootstrap does the resampling, BCa jackknife and CI.
        g = pd.DataFrame({"k": rows[col].to_numpy(), "x": x}).groupby("k", sort=True)["x"]
        sums, counts = g.sum().to_numpy(np.float64), g.count().to_numpy(np.float64)
        _need(len(sums), 2, f"a cluster bootstrap over '{col}' (clusters)")
        res, used, w = _bootstrap_with_fallback(
            (sums, counts), lambda s, c, axis=-1: s.sum(axis=axis) / c.sum(axis=axis), p, True, len(sums), alt)
        est, n_clusters = sums.sum() / counts.sum(), len(sums)
    ci = res.confidence_interval
    return {"n": len(x), "n_clusters": n_clusters, "estimate": _f(est), "low": _f(ci.low),
            "high": _f(ci.high), "method_used": used, "batch": _batch(p["n_resamples"], n_clusters or len(x)),
            "warnings": w}


def ratio_of_medians(x, rows, all_rows, p) -> dict:
    a = _group(rows, x, p["group_column"], p["numerator"])
    b = _group(rows, x, p["group_column"], p["denominator"])
    _need(len(a), 2, "ratio_of_medians (numerator group)")
    _need(len(b), 2, "ratio_of_medians (denominator group)")
    if np.median(b) == 0:
        raise StatisticError("the denominator median is 0")
    res, used, w = _bootstrap_with_fallback(
        (a, b), lambda u, v, axis=-1: np.median(u, axis=axis) / np.median(v, axis=axis),
        p, False, len(a) + len(b), "two-sided")
    ci = res.confidence_interval
    return {"n_numerator": len(a), "n_denominator": len(b), "ratio": _f(np.median(a) / np.median(b)),
            "low": _f(ci.low), "high": _f(ci.high), "method_used": used, "warnings": w}


# ------------------------------------------------------------------------------- rank tests


def wilcoxon(x, rows, all_rows, p) -> dict:
    import pingouin as pg

    n = len(x)
    zeros = int(np.sum(x == 0))
    nz = np.abs(x[x != 0])
    # scipy/pingouin do not report ties; count the nonzero |d| that share their value.
    _, counts = np.unique(nz, return_counts=True)
    n_ties = int(counts[counts > 1].sum())
    n_used = n - zeros if p["zero_method"] == "wilcox" else n
    _need(n_used, 1, f"Wilcoxon (zero_method={p['zero_method']}, {zeros} zero(s))")
    if n - zeros == 0:
        raise InsufficientData(f"every one of the {n} differences is zero")
    # pingouin.wilcoxon calls scipy.stats.wilcoxon with these arguments and adds the
    # matched-pairs rank-biserial correlation (Kerby 2014; sign follows pingouin's convention).
    res, w = _caught(lambda: pg.wilcoxon(x, alternative=p["alternative"], zero_method=p["zero_method"],
                                         method=p["method"], correction=p["correction"]))
    return {"n": n, "n_used": n_used, "n_zeros": zeros, "n_ties": n_ties,
            "statistic": _f(res["W_val"].iloc[0]), "p": _f(res["p_val"].iloc[0]),
            "rank_biserial": _f(res["RBC"].iloc[0]), "warnings": w}


def mann_whitney(x, rows, all_rows, p) -> dict:
    from scipy import stats

    a = _group(rows, x, p["group_column"], p["group_a"])
    b = _group(rows, x, p["group_column"], p["group_b"])
    _need(len(a), 1, f"Mann-Whitney (group {p['group_a']!r})")
    _need(len(b), 1, f"Mann-Whitney (group {p['group_b']!r})")
    res, w = _caught(lambda: stats.mannwhitneyu(a, b, alternative=p["alternative"], method=p["method"],
                                                use_continuity=p["use_continuity"]))
    u = float(res.statistic)
    # pingouin.mwu gives the same two effect sizes but materialises an n_a x n_b matrix; from U
    # they are closed-form: CLES = U_a/(n_a n_b) (ties 1/2), rank-biserial = 2·CLES - 1.
    cles = u / (len(a) * len(b))
    if p["alternative"] == "less":
        cles = 1 - cles
    return {"n_a": len(a), "n_b": len(b), "u": u, "p": _f(res.pvalue),
            "rank_biserial": _f(2 * (u / (len(a) * len(b))) - 1), "cles": _f(cles), "warnings": w}


def hodges_lehmann(x, rows, all_rows, p) -> dict:
    # No scipy/pingouin/statsmodels function gives the Hodges-Lehmann estimator: median of the
    # Walsh averages (one sample) or of all pairwise differences (two samples), computed exactly.
    if p["group_column"] is None:
        n = len(x)
        _need(n, 1, "Hodges-Lehmann")
        if n * (n + 1) // 2 > HL_MAX_PAIRS:
            raise StatisticError(f"{n * (n + 1) // 2} Walsh averages exceed the limit {HL_MAX_PAIRS}")
        i, j = np.triu_indices(n)
        return {"n": n, "estimate": _f(np.median((x[i] + x[j]) / 2))}
    a = _group(rows, x, p["group_column"], p["group_a"])
    b = _group(rows, x, p["group_column"], p["group_b"])
    _need(min(len(a), len(b)), 1, "a two-sample Hodges-Lehmann shift")
    if len(a) * len(b) > HL_MAX_PAIRS:
        raise StatisticError(f"{len(a) * len(b)} pairwise differences exceed the limit {HL_MAX_PAIRS}")
    return {"n": len(a) + len(b), "estimate": _f(np.median(a[:, None] - b[None, :]))}


# ------------------------------------------------------------------------------- means


def tost(x, rows, all_rows, p) -> dict:
    import pingouin as pg
    from scipy import stats

    _need(len(x), 2, "TOST")
    if np.std(x) == 0:
        raise InsufficientData("TOST is undefined for zero variance")
    lo = stats.ttest_1samp(x, p["low"], alternative="greater").pvalue
    hi = stats.ttest_1samp(x, p["high"], alternative="less").pvalue
    # pingouin.tost takes a symmetric bound around y: shift the interval's centre to 0.
    mid, half = (p["low"] + p["high"]) / 2, (p["high"] - p["low"]) / 2
    pv = float(pg.tost(x - mid, 0.0, bound=half)["pval"].iloc[0])
    return {"n": len(x), "mean": _f(np.mean(x)), "p_low": _f(lo), "p_high": _f(hi), "p": pv,
            "equivalent": bool(pv < p["alpha"])}


def difference_of_means(x, rows, all_rows, p) -> dict:
    col = p["group_column"]
    if col not in rows.columns:
        raise StatisticError(f"no column '{col}' in the selected rows")
    d = pd.DataFrame({"g": rows[col].to_numpy(), "x": x})
    if p["pair_on"] is not None:
        d["k"] = rows[p["pair_on"]].to_numpy()
        a = d[d.g == p["minuend"]].set_index("k")["x"]
        b = d[d.g == p["subtrahend"]].set_index("k")["x"]
        for s, name in ((a, "minuend"), (b, "subtrahend")):
            if s.index.duplicated().any():
                raise StatisticError(f"{name} group has repeated '{p['pair_on']}' keys: pairing is ambiguous")
        keys = a.index.intersection(b.index)
        a, b = a.loc[keys].to_numpy(), b.loc[keys].to_numpy()
    else:
        a, b = d[d.g == p["minuend"]]["x"].to_numpy(), d[d.g == p["subtrahend"]]["x"].to_numpy()
    _need(len(a), 1, f"difference_of_means ({col} == {p['minuend']!r})")
    _need(len(b), 1, f"difference_of_means ({col} == {p['subtrahend']!r})")
    return {"n": min(len(a), len(b)) if p["pair_on"] else len(a) + len(b), "n_minuend": len(a),
            "n_subtrahend": len(b), "mean_minuend": _f(a.mean()), "mean_subtrahend": _f(b.mean()),
            "difference": _f(a.mean() - b.mean())}


# ------------------------------------------------------------------------------- regressions


def _ols(y: np.ndarray, xv: np.ndarray, cluster: np.ndarray | None, level: float) -> dict:
    import statsmodels.api as sm

    X = sm.add_constant(xv.astype(np.float64), has_constant="add")
    model = sm.OLS(y.astype(np.float64), X)
    if cluster is None:
        fit, w = _caught(lambda: model.fit())
        n_clusters = None
    else:
        codes = pd.factorize(cluster, sort=True)[0]
        n_clusters = int(codes.max() + 1)
        _need(n_clusters, 2, "cluster-robust errors (clusters)")
        # t reference with G-1 degrees of freedom (statsmodels' df correction for few clusters)
        fit, w = _caught(lambda: model.fit(cov_type="cluster", cov_kwds={"groups": codes}, use_t=True))
    ci = fit.conf_int(alpha=1 - level)
    return {"n": len(y), "n_clusters": n_clusters, "slope": _f(fit.params[1]), "slope_se": _f(fit.bse[1]),
            "slope_low": _f(ci[1, 0]), "slope_high": _f(ci[1, 1]), "slope_p": _f(fit.pvalues[1]),
            "intercept": _f(fit.params[0]), "intercept_low": _f(ci[0, 0]), "intercept_high": _f(ci[0, 1]),
            "r2": _f(fit.rsquared), "warnings": w}


def _xcol(rows: pd.DataFrame, name: str, transform: str) -> np.ndarray:
    if name not in rows.columns:
        raise StatisticError(f"no column '{name}' in the selected rows")
    v = rows[name].to_numpy(np.float64)
    if transform == "ln":
        if np.any(v <= 0):
            raise StatisticError(f"ln({name}) of a non-positive value")
        return np.log(v)
    return v


def ols_loglinear(x, rows, all_rows, p) -> dict:
    xv = _xcol(rows, p["x"], p["x_transform"])
    _need(len(x), 3, "an OLS fit with a CI")
    if len(np.unique(xv)) < 2:
        raise InsufficientData(f"an OLS slope needs two distinct values of {p['x']}")
    if p["cluster"]:
        _cluster_ok(rows, p["cluster"])
    cl = rows[p["cluster"]].to_numpy() if p["cluster"] else None
    return _ols(x, xv, cl, p["confidence_level"])


def slopes_by_group(x, rows, all_rows, p) -> dict:
    from scipy import stats

    xv = _xcol(rows, p["x"], p["x_transform"])
    g = rows[p["group_column"]].to_numpy()
    slopes = []
    for key in sorted(pd.unique(g), key=str):
        m = g == key
        if len(np.unique(xv[m])) < 2:
            raise InsufficientData(f"group {p['group_column']}={key!r} has fewer than two distinct {p['x']}")
        slopes.append(stats.linregress(xv[m], x[m]).slope)
    s = np.asarray(slopes)
    _need(len(s), p["ddof"] + 1, f"slopes_by_group SD (ddof={p['ddof']}) (groups)")
    return {"n_groups": len(s), "mean": _f(s.mean()), "sd": _f(s.std(ddof=p["ddof"])),
            "min": _f(s.min()), "max": _f(s.max())}


def slope_difference(x, rows, all_rows, p) -> dict:
    """slope_a − slope_b from one OLS with a group interaction (see prereg.statistics.SlopeDifference)."""
    import statsmodels.api as sm

    if p["group_column"] not in rows.columns:
        raise StatisticError(f"no column '{p['group_column']}' in the selected rows")
    g = rows[p["group_column"]].to_numpy()
    keep = (g == p["group_a"]) | (g == p["group_b"])
    xv, y, is_a = _xcol(rows, p["x"], p["x_transform"])[keep], x[keep], (g[keep] == p["group_a"]).astype(float)
    for name, m in (("group_a", is_a == 1), ("group_b", is_a == 0)):
        if len(np.unique(xv[m])) < 2:
            raise InsufficientData(f"{name}={p[name]!r} has fewer than two distinct values of {p['x']}")
    X = np.column_stack([np.ones_like(xv), xv, is_a, xv * is_a])
    model = sm.OLS(y.astype(np.float64), X)
    if p["cluster"]:
        _cluster_ok(rows, p["cluster"])
        codes = pd.factorize(rows[p["cluster"]].to_numpy()[keep], sort=True)[0]
        n_clusters = int(codes.max() + 1)
        _need(n_clusters, 2, "cluster-robust errors (clusters)")
        fit, w = _caught(lambda: model.fit(cov_type="cluster", cov_kwds={"groups": codes}, use_t=True))
    else:
        n_clusters = None
        fit, w = _caught(lambda: model.fit())
    ci = fit.conf_int(alpha=1 - p["confidence_level"])
    return {"n": int(keep.sum()), "n_clusters": n_clusters, "slope_a": _f(fit.params[1] + fit.params[3]),
            "slope_b": _f(fit.params[1]), "difference": _f(fit.params[3]), "difference_low": _f(ci[3, 0]),
            "difference_high": _f(ci[3, 1]), "difference_p": _f(fit.pvalues[3]), "warnings": w}


def scaling_law(x, rows, all_rows, p) -> dict:
    nv = _xcol(rows, p["x"], "none")
    nonpos = int(np.sum(x <= 0))
    mode = p["nonpositive"]
    if mode == "error" and nonpos:
        raise InsufficientData(f"{nonpos} value(s) <= 0 and nonpositive='error'")
    if mode == "mean_then_log":
        means = pd.Series(x).groupby(nv).mean()
        if (means <= 0).any():
            raise InsufficientData(f"mean metric <= 0 at {p['x']} = {list(means.index[means <= 0])}")
        y, xv, cl = np.log(means.to_numpy()), np.log(means.index.to_numpy(np.float64)), None
    else:
        keep = x > 0
        y, xv = np.log(x[keep]), np.log(nv[keep])
        if p["cluster"]:
            _cluster_ok(rows, p["cluster"])
        cl = rows[p["cluster"]].to_numpy()[keep] if p["cluster"] else None
    n_x = len(np.unique(xv))
    _need(n_x, p["min_distinct_x"], f"the scaling-law fit (distinct {p['x']})")
    _need(len(y), 3, "the scaling-law fit")
    fit = _ols(y, xv, cl if mode != "mean_then_log" else None, p["confidence_level"])
    return {"n": len(x), "n_x": n_x, "n_nonpositive": nonpos, "exponent": fit["slope"],
            "alpha_eff": 1 + fit["slope"], "alpha_eff_low": 1 + fit["slope_low"],
            "alpha_eff_high": 1 + fit["slope_high"], "A": _f(np.exp(fit["intercept"])), "r2": fit["r2"],
            "n_fitted": len(y), "n_clusters": fit["n_clusters"], "warnings": fit["warnings"]}


def dose_response(x, rows, all_rows, p) -> dict:
    from scipy import stats

    xv = _xcol(rows, p["x"], "none")
    _need(len(x), 3, "dose-response")
    if len(np.unique(xv)) < 2:
        raise InsufficientData(f"dose-response needs two distinct doses of {p['x']}")
    if p["cluster"]:
        _cluster_ok(rows, p["cluster"])
    fit = _ols(x, xv, rows[p["cluster"]].to_numpy() if p["cluster"] else None, p["confidence_level"])
    rho = stats.spearmanr(xv, x, alternative=p["alternative"])
    return {"n": len(x), "n_clusters": fit["n_clusters"], "slope": fit["slope"], "slope_low": fit["slope_low"],
            "slope_high": fit["slope_high"], "slope_p": fit["slope_p"], "rho": _f(rho.statistic),
            "rho_p": _f(rho.pvalue), "warnings": fit["warnings"]}


# ------------------------------------------------------------------------------- gates


def _gate_column(all_rows: pd.DataFrame, column: str) -> pd.Series:
    if column not in all_rows.columns:
        raise StatisticError(f"no column '{column}' in the selected rows")
    _need(len(all_rows), 1, f"a gate over '{column}'")
    return all_rows[column]


def max_abs_deviation(x, rows, all_rows, p) -> dict:
    v = _gate_column(all_rows, p["column"]).to_numpy(np.float64)
    dev = np.abs(v - p["center"])
    value = float("inf") if np.any(~np.isfinite(dev)) else float(dev.max())  # NaN fails the gate
    return {"n": len(v), "value": value}


def _bools(all_rows, column) -> np.ndarray:
    s = _gate_column(all_rows, column)
    if s.isna().any():
        raise InsufficientData(f"{int(s.isna().sum())} row(s) have no value in gate column '{column}'")
    return s.to_numpy(bool)


def fraction_true(x, rows, all_rows, p) -> dict:
    b = _bools(all_rows, p["column"])
    return {"n": len(b), "count": int(b.sum()), "fraction": float(b.mean())}


def count_true(x, rows, all_rows, p) -> dict:
    b = _bools(all_rows, p["column"])
    return {"n": len(b), "count": int(b.sum())}


KINDS: dict[str, Callable[..., dict]] = {
    "describe": describe, "single_value": single_value, "mean_t_ci": mean_t_ci,
    "bootstrap_ci": bootstrap_ci, "ratio_of_medians": ratio_of_medians, "wilcoxon": wilcoxon,
    "mann_whitney": mann_whitney, "hodges_lehmann": hodges_lehmann, "tost": tost,
    "difference_of_means": difference_of_means, "ols_loglinear": ols_loglinear,
    "slopes_by_group": slopes_by_group, "slope_difference": slope_difference, "scaling_law": scaling_law, "dose_response": dose_response,
    "max_abs_deviation": max_abs_deviation, "fraction_true": fraction_true, "count_true": count_true,
}
GATE_KINDS = {"max_abs_deviation", "fraction_true", "count_true"}


def multiplicity(pvals: list[float], method: str, alpha: float) -> tuple[list[float], list[bool]]:
    """statsmodels multipletests: adjusted p-values and reject flags, in input order."""
    from statsmodels.stats.multitest import multipletests

    reject, padj, _, _ = multipletests(np.asarray(pvals, dtype=np.float64), alpha=alpha, method=method)
    return [float(v) for v in padj], [bool(r) for r in reject]
