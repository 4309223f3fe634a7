"""Every statistic kind against scipy / pingouin / statsmodels called directly on the same fresh
random data (or, where no library has the estimator, against an independent brute force)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from dcr.prereg import statistics as S
from dcr.prereg.statistics import KINDS, validate_params


@pytest.fixture
def rng():
    return np.random.default_rng(20250118)


def run(kind, x, rows=None, params=None, all_rows=None):
    stat = validate_params(kind, params or {})
    rows = pd.DataFrame(index=range(len(x))) if rows is None else rows
    out = stat.compute(np.asarray(x, dtype=np.float64), rows, rows if all_rows is None else all_rows)
    missing = set(KINDS[kind].outputs) - set(out)
    assert not missing, f"{kind} lacks registered outputs {missing}"
    return out


def test_params_are_all_required():
    with pytest.raises(ValueError, match="alternative"):
        validate_params("wilcoxon", {"zero_method": "wilcox", "method": "auto", "correction": False})
    with pytest.raises(ValueError, match="cluster"):
        validate_params("bootstrap_ci", {"statistic": "median", "method": "BCa", "n_resamples": 1000,
                                         "confidence_level": 0.95, "alternative": "two-sided",
                                         "random_seed": 1, "cluster": "w", "degenerate_fallback": "percentile"})


def test_describe(rng):
    x = rng.normal(0.4, 0.1, 17)
    o = run("describe", x, params={"ddof": 1})
    assert o["mean"] == pytest.approx(np.mean(x), rel=1e-14) and o["sd"] == pytest.approx(np.std(x, ddof=1), rel=1e-14)
    assert o["median"] == np.median(x) and o["n"] == 17
    with pytest.raises(S.InsufficientData):
        run("describe", x[:1], params={"ddof": 1})


@pytest.mark.parametrize("alt", ["two-sided", "less", "greater"])
def test_mean_t_ci(rng, alt):
    x = rng.normal(0.4, 0.1, 9)
    o = run("mean_t_ci", x, params={"confidence_level": 0.9, "alternative": alt})
    ci = stats.ttest_1samp(x, 0, alternative=alt).confidence_interval(0.9)
    assert (o["low"], o["high"]) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))
    if alt == "two-sided":  # independent formula
        se = np.std(x, ddof=1) / 3
        lo, hi = stats.t.interval(0.9, 8, loc=np.mean(x), scale=se)
        assert o["low"] == pytest.approx(lo, rel=1e-10) and o["high"] == pytest.approx(hi, rel=1e-10)
    with pytest.raises(S.InsufficientData, match="at least 2"):
        run("mean_t_ci", x[:1], params={"confidence_level": 0.9, "alternative": alt})


BOOT = {"n_resamples": 2000, "confidence_level": 0.95, "alternative": "two-sided", "random_seed": 7,
        "degenerate_fallback": "percentile"}


@pytest.mark.parametrize("method,statistic", [("BCa", "mean"), ("percentile", "median"), ("basic", "mean")])
def test_bootstrap_ci_matches_scipy(rng, method, statistic):
    x = rng.exponential(1.0, 40)
    p = {**BOOT, "method": method, "statistic": statistic, "cluster": None}
    o = run("bootstrap_ci", x, params=p)
    fn = getattr(np, statistic)
    ref = stats.bootstrap((x,), lambda a, axis: fn(a, axis=axis), n_resamples=2000, batch=o["batch"],
                          vectorized=True, confidence_level=0.95, method=method, rng=np.random.default_rng(7))
    assert o["low"] == ref.confidence_interval.low and o["high"] == ref.confidence_interval.high
    assert o["estimate"] == fn(x) and o["method_used"] == method


def test_cluster_bootstrap_with_singleton_clusters_equals_row_bootstrap(rng):
    x = rng.normal(size=30)
    rows = pd.DataFrame({"w": np.arange(30)})
    a = run("bootstrap_ci", x, rows, {**BOOT, "method": "percentile", "statistic": "mean", "cluster": "w"})
    b = run("bootstrap_ci", x, None, {**BOOT, "method": "percentile", "statistic": "mean", "cluster": None})
    assert a["n_clusters"] == 30
    assert a["low"] == pytest.approx(b["low"], rel=1e-12) and a["high"] == pytest.approx(b["high"], rel=1e-12)


def test_cluster_bootstrap_width_matches_cluster_robust_se(rng):
    # 60 clusters of 50 strongly correlated rows: the row bootstrap is far too narrow, the cluster
    # bootstrap agrees with statsmodels' cluster-robust standard error of the mean.
    g = np.repeat(np.arange(60), 50)
    x = rng.normal(size=60)[g] + 0.3 * rng.normal(size=g.size)
    rows = pd.DataFrame({"w": g})
    o = run("bootstrap_ci", x, rows, {**BOOT, "method": "BCa", "statistic": "mean", "cluster": "w"})
    fit = sm.OLS(x, np.ones_like(x)).fit(cov_type="cluster", cov_kwds={"groups": g})
    width = 2 * stats.norm.ppf(0.975) * fit.bse[0]
    assert (o["high"] - o["low"]) == pytest.approx(width, rel=0.2)
    assert o["estimate"] == pytest.approx(x.mean(), rel=1e-12)
    naive = run("bootstrap_ci", x, None, {**BOOT, "method": "percentile", "statistic": "mean", "cluster": None})
    assert naive["high"] - naive["low"] < 0.5 * (o["high"] - o["low"])


def test_bootstrap_degenerate_fallback():
    x = np.full(12, 0.25)
    o = run("bootstrap_ci", x, None, {**BOOT, "method": "BCa", "statistic": "mean", "cluster": None})
    assert o["method_used"].startswith("percentile") and o["low"] == o["high"] == 0.25
    with pytest.raises(S.InsufficientData, match="degenerate"):
        run("bootstrap_ci", x, None, {**BOOT, "method": "BCa", "statistic": "mean", "cluster": None,
                                      "degenerate_fallback": "insufficient_data"})
    with pytest.raises(S.InsufficientData):
        run("bootstrap_ci", x[:1], None, {**BOOT, "method": "BCa", "statistic": "mean", "cluster": None})


@pytest.mark.parametrize("zero_method,alt,method", [("wilcox", "greater", "asymptotic"), ("pratt", "two-sided", "auto"),
                                                    ("zsplit", "less", "asymptotic"), ("wilcox", "two-sided", "exact")])
def test_wilcoxon_matches_scipy(rng, zero_method, alt, method):
    d = np.round(rng.normal(0.1, 1, 25), 1)  # rounding makes zeros and ties
    d[:3] = 0.0
    p = {"alternative": alt, "zero_method": zero_method, "method": method, "correction": False}
    o = run("wilcoxon", d, params=p)
    ref = stats.wilcoxon(d, alternative=alt, zero_method=zero_method, method=method, correction=False)
    assert o["statistic"] == ref.statistic and o["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert o["n_zeros"] == int(np.sum(d == 0)) >= 3
    nz = np.abs(d[d != 0])
    assert o["n_ties"] == sum(int(np.sum(nz == v)) for v in np.unique(nz) if np.sum(nz == v) > 1)
    rbc = pg.wilcoxon(d, alternative=alt, zero_method=zero_method, method=method, correction=False)["RBC"].iloc[0]
    assert o["rank_biserial"] == pytest.approx(rbc, rel=1e-12)


def test_wilcoxon_all_zero_is_insufficient():
    with pytest.raises(S.InsufficientData):
        run("wilcoxon", np.zeros(8), params={"alternative": "greater", "zero_method": "wilcox",
                                             "method": "auto", "correction": False})


@pytest.mark.parametrize("alt", ["two-sided", "greater", "less"])
def test_mann_whitney_matches_scipy_and_pingouin(rng, alt):
    x = np.round(rng.normal(size=70), 1)
    rows = pd.DataFrame({"conv": [True] * 50 + [False] * 20})
    p = {"group_column": "conv", "group_a": True, "group_b": False, "alternative": alt, "method": "asymptotic",
         "use_continuity": True}
    o = run("mann_whitney", x, rows, p)
    ref = stats.mannwhitneyu(x[:50], x[50:], alternative=alt, method="asymptotic", use_continuity=True)
    assert o["u"] == ref.statistic and o["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    pgr = pg.mwu(x[:50], x[50:], alternative=alt, method="asymptotic", use_continuity=True)
    assert o["rank_biserial"] == pytest.approx(pgr["RBC"].iloc[0], abs=1e-12)
    assert o["cles"] == pytest.approx(pgr["CLES"].iloc[0], abs=1e-12)
    assert (o["n_a"], o["n_b"]) == (50, 20)


def test_hodges_lehmann_against_brute_force(rng):
    x = rng.normal(0.3, 1, 23)
    o = run("hodges_lehmann", x, params={"group_column": None, "group_a": None, "group_b": None})
    walsh = [(a + b) / 2 for a, b in itertools.combinations_with_replacement(x, 2)]
    assert o["estimate"] == pytest.approx(np.median(walsh), rel=1e-12)
    rows = pd.DataFrame({"g": ["a"] * 13 + ["b"] * 10})
    o2 = run("hodges_lehmann", x, rows, {"group_column": "g", "group_a": "a", "group_b": "b"})
    assert o2["estimate"] == pytest.approx(np.median([a - b for a in x[:13] for b in x[13:]]), rel=1e-12)


def test_tost_matches_pingouin_and_scipy(rng):
    x = rng.normal(0.1, 0.3, 20)
    o = run("tost", x, params={"low": -0.5, "high": 0.5, "alpha": 0.05})
    assert o["p"] == pytest.approx(pg.tost(x, 0, bound=0.5)["pval"].iloc[0], rel=1e-10)
    o2 = run("tost", x, params={"low": -0.2, "high": 0.6, "alpha": 0.05})  # asymmetric
    lo = stats.ttest_1samp(x, -0.2, alternative="greater").pvalue
    hi = stats.ttest_1samp(x, 0.6, alternative="less").pvalue
    assert o2["p"] == pytest.approx(max(lo, hi), rel=1e-10)
    assert o2["equivalent"] == (max(lo, hi) < 0.05)


def test_difference_of_means_paired_and_unpaired(rng):
    x = rng.normal(size=12)
    rows = pd.DataFrame({"k": ["r"] * 6 + ["t"] * 6, "w": list(range(6)) + [5, 4, 3, 2, 1, 9]})
    p = {"group_column": "k", "minuend": "t", "subtrahend": "r", "pair_on": "w"}
    o = run("difference_of_means", x, rows, p)
    t = pd.Series(x[6:], index=rows.w[6:]); r = pd.Series(x[:6], index=rows.w[:6])
    common = sorted(set(t.index) & set(r.index))
    assert o["n"] == 5 and o["difference"] == pytest.approx(t[common].mean() - r[common].mean(), rel=1e-12)
    o2 = run("difference_of_means", x, rows, {**p, "pair_on": None})
    assert o2["difference"] == pytest.approx(x[6:].mean() - x[:6].mean(), rel=1e-12)


def test_ols_cluster_robust_matches_statsmodels(rng):
    n_ctx = np.array([256, 512, 1024, 2048, 4096])
    seeds = np.repeat(np.arange(6), 5)
    N = np.tile(n_ctx, 6)
    y = 0.4 * np.log(N) + 0.7 + rng.normal(0, 0.05, 6)[seeds] + rng.normal(0, 0.02, 30)
    rows = pd.DataFrame({"N": N, "seed": seeds})
    o = run("ols_loglinear", y, rows, {"x": "N", "x_transform": "ln", "cluster": "seed", "confidence_level": 0.95})
    fit = sm.OLS(y, sm.add_constant(np.log(N))).fit(cov_type="cluster", cov_kwds={"groups": seeds}, use_t=True)
    ci = fit.conf_int(0.05)
    assert o["slope"] == pytest.approx(fit.params[1], rel=1e-12) and o["slope_se"] == pytest.approx(fit.bse[1], rel=1e-10)
    assert (o["slope_low"], o["slope_high"]) == (pytest.approx(ci[1, 0], rel=1e-10), pytest.approx(ci[1, 1], rel=1e-10))
    assert o["n_clusters"] == 6
    lr = stats.linregress(np.log(N), y)
    o2 = run("ols_loglinear", y, rows, {"x": "N", "x_transform": "ln", "cluster": None, "confidence_level": 0.95})
    assert o2["slope"] == pytest.approx(lr.slope, rel=1e-10) and o2["intercept"] == pytest.approx(lr.intercept, rel=1e-10)
    assert o2["slope_se"] == pytest.approx(lr.stderr, rel=1e-8)


def test_slopes_by_group(rng):
    seeds = np.repeat([0, 1, 2, 42], 4)
    N = np.tile([256, 512, 1024, 2048], 4)
    y = rng.normal(1, 0.01, 4)[np.searchsorted([0, 1, 2, 42], seeds)] * np.log(N) + rng.normal(0, 0.01, 16)
    o = run("slopes_by_group", y, pd.DataFrame({"N": N, "seed": seeds}),
            {"x": "N", "x_transform": "ln", "group_column": "seed", "ddof": 1})
    slopes = [np.polyfit(np.log(N[seeds == s]), y[seeds == s], 1)[0] for s in (0, 1, 2, 42)]
    assert o["mean"] == pytest.approx(np.mean(slopes), rel=1e-10) and o["sd"] == pytest.approx(np.std(slopes, ddof=1), rel=1e-6)


def test_scaling_law_recovers_alpha_and_handles_nonpositive(rng):
    Ns = np.array([1000, 2000, 4000, 8000, 16000])
    w = np.repeat(np.arange(8), 5)
    N = np.tile(Ns, 8)
    alpha, A = 0.4, 30.0
    y = A * N ** -(1 - alpha) * np.exp(rng.normal(0, 0.05, N.size))
    rows = pd.DataFrame({"N": N, "w": w})
    base = {"x": "N", "cluster": "w", "min_distinct_x": 4, "confidence_level": 0.95}
    o = run("scaling_law", y, rows, {**base, "nonpositive": "drop_and_count"})
    fit = sm.OLS(np.log(y), sm.add_constant(np.log(N))).fit(cov_type="cluster", cov_kwds={"groups": w}, use_t=True)
    assert o["alpha_eff"] == pytest.approx(1 + fit.params[1], rel=1e-12) and o["alpha_eff"] == pytest.approx(alpha, abs=0.05)
    assert o["A"] == pytest.approx(np.exp(fit.params[0]), rel=1e-12)
    y2 = y.copy(); y2[[0, 7]] = -0.01
    o2 = run("scaling_law", y2, rows, {**base, "nonpositive": "drop_and_count"})
    assert o2["n_nonpositive"] == 2 and o2["n_fitted"] == 38
    o3 = run("scaling_law", y2, rows, {**base, "nonpositive": "mean_then_log"})
    means = pd.Series(y2).groupby(N).mean()
    lr = stats.linregress(np.log(means.index.to_numpy(float)), np.log(means.to_numpy()))
    assert o3["exponent"] == pytest.approx(lr.slope, rel=1e-10) and o3["n_x"] == 5
    with pytest.raises(S.InsufficientData, match="<= 0"):
        run("scaling_law", y2, rows, {**base, "nonpositive": "error"})
    with pytest.raises(S.InsufficientData, match="distinct"):
        keep = N <= 4000
        run("scaling_law", y[keep], rows[keep].reset_index(drop=True), {**base, "nonpositive": "error"})


def test_dose_response(rng):
    lam = np.repeat([0.05, 0.1, 0.15, 0.2, 0.3], 20)
    y = 0.5 * lam + rng.normal(0, 0.05, lam.size)
    o = run("dose_response", y, pd.DataFrame({"lam": lam}), {"x": "lam", "cluster": None, "confidence_level": 0.95,
                                                            "alternative": "greater"})
    r = stats.spearmanr(lam, y, alternative="greater")
    assert o["rho"] == pytest.approx(r.statistic, rel=1e-12) and o["rho_p"] == pytest.approx(r.pvalue, rel=1e-10)
    assert o["slope"] == pytest.approx(stats.linregress(lam, y).slope, rel=1e-10)


def test_ratio_of_medians_matches_scipy(rng):
    ms = np.concatenate([rng.normal(60, 2, 40), rng.normal(75, 2, 40)])
    rows = pd.DataFrame({"arm": ["dense"] * 40 + ["sparse"] * 40})
    p = {"group_column": "arm", "numerator": "dense", "denominator": "sparse", "method": "percentile",
         "n_resamples": 1000, "confidence_level": 0.95, "random_seed": 3, "degenerate_fallback": "percentile"}
    o = run("ratio_of_medians", ms, rows, p)
    ref = stats.bootstrap((ms[:40], ms[40:]), lambda a, b, axis: np.median(a, axis=axis) / np.median(b, axis=axis),
                          n_resamples=1000, batch=S._batch(1000, 80), vectorized=True, method="percentile",
                          rng=np.random.default_rng(3))
    assert o["ratio"] == np.median(ms[:40]) / np.median(ms[40:])
    assert o["low"] == ref.confidence_interval.low and o["high"] == ref.confidence_interval.high


def test_gate_statistics(rng):
    r = rng.normal(1, 1e-3, 50)
    rows = pd.DataFrame({"norm_ratio": r, "conv": rng.random(50) < 0.8, "fb": rng.random(50) < 0.1})
    x = np.zeros(50)
    assert run("max_abs_deviation", x, rows, {"column": "norm_ratio", "center": 1.0})["value"] == np.max(np.abs(r - 1))
    f = run("fraction_true", x, rows, {"column": "conv"})
    assert f["fraction"] == rows.conv.mean() and f["count"] == rows.conv.sum()
    assert run("count_true", x, rows, {"column": "fb"})["count"] == rows.fb.sum()
    rows.loc[3, "norm_ratio"] = np.nan
    assert run("max_abs_deviation", x, rows, {"column": "norm_ratio", "center": 1.0})["value"] == float("inf")


def test_single_value():
    rows = pd.DataFrame({"p": [0.76447]})
    assert run("single_value", np.zeros(1), rows, {"column": "p"})["value"] == 0.76447
    with pytest.raises(S.InsufficientData, match="exactly one"):
        run("single_value", np.zeros(2), pd.DataFrame({"p": [0.1, 0.2]}), {"column": "p"})


@pytest.mark.parametrize("method", ["holm", "bonferroni", "fdr_bh"])
def test_multiplicity_matches_statsmodels(rng, method):
    p = rng.random(6) * 0.1
    adj, rej = S.MultiplicityAdjusted.adjust(list(p), method, 0.05)
    ref = multipletests(p, alpha=0.05, method=method)
    assert np.allclose(adj, ref[1], rtol=1e-14) and rej == list(ref[0])


def test_null_cluster_ids_are_refused_not_dropped(rng):
    x = rng.normal(size=10)
    rows = pd.DataFrame({"w": [0, 0, 1, 1, 2, 2, None, 3, 3, 4], "N": np.arange(10) + 1.0})
    with pytest.raises(S.StatisticError, match="cluster column 'w'"):
        run("bootstrap_ci", x, rows, {**BOOT, "method": "percentile", "statistic": "mean", "cluster": "w"})
    with pytest.raises(S.StatisticError, match="cluster column 'w'"):
        run("ols_loglinear", x, rows, {"x": "N", "x_transform": "ln", "cluster": "w", "confidence_level": 0.95})


def test_slope_difference_matches_separate_fits_and_statsmodels_formula(rng):
    """Trained vs random α: the interaction fit equals two separate OLS slopes (point estimates)
    and statsmodels' formula API with cluster-robust errors (CI and p)."""
    import statsmodels.formula.api as smf

    prompts, Ns = 7, [128, 256, 512, 1024, 2048]
    rows = pd.DataFrame([(v, p, n) for v in ("trained", "random", "other") for p in range(prompts) for n in Ns],
                        columns=["variant", "prompt", "N"])
    slope = rows.variant.map({"trained": 0.4, "random": 1.0, "other": 3.0}).to_numpy()
    y = slope * np.log(rows.N) + rng.normal(0, 0.3, prompts)[rows.prompt] + rng.normal(0, 0.2, len(rows))
    params = {"x": "N", "x_transform": "ln", "group_column": "variant", "group_a": "trained",
              "group_b": "random", "cluster": "prompt", "confidence_level": 0.9}
    o = run("slope_difference", y, rows, params)
    both = rows.assign(y=y, lnN=np.log(rows.N))
    both = both[both.variant != "other"]
    sep = {v: stats.linregress(d.lnN, d.y).slope for v, d in both.groupby("variant")}
    assert o["slope_a"] == pytest.approx(sep["trained"], rel=1e-9)
    assert o["slope_b"] == pytest.approx(sep["random"], rel=1e-9)
    assert o["n"] == 2 * prompts * len(Ns) and o["n_clusters"] == prompts
    both = both.assign(is_trained=(both.variant == "trained").astype(float))
    fit = smf.ols("y ~ lnN * is_trained", both).fit(cov_type="cluster", cov_kwds={"groups": both.prompt}, use_t=True)
    lo, hi = fit.conf_int(alpha=0.1).loc["lnN:is_trained"]
    assert o["difference"] == pytest.approx(fit.params["lnN:is_trained"], rel=1e-9)
    assert (o["difference_low"], o["difference_high"]) == pytest.approx((lo, hi), rel=1e-9)
    assert o["difference_p"] == pytest.approx(fit.pvalues["lnN:is_trained"], rel=1e-9)
    with pytest.raises(S.InsufficientData):
        run("slope_difference", y[:5], rows.iloc[:5], params)


def test_paired_difference_matches_scipy_and_pingouin(rng):
    """Paired on window: the t interval and p of scipy.stats.ttest_rel, the TOST of pingouin.tost
    (paired=True, symmetric bound) and the one-sided t-tests (asymmetric bounds), on shuffled rows."""
    n = 14
    a = rng.normal(0.4, 0.3, n)
    b = a - rng.normal(0.1, 0.2, n)
    rows = pd.DataFrame({"arm": ["a"] * n + ["b"] * n, "w": list(range(n)) + list(range(n))})
    x = np.concatenate([a, b])
    perm = rng.permutation(2 * n)
    rows, x = rows.iloc[perm].reset_index(drop=True), x[perm]
    p = {"group_column": "arm", "group_a": "a", "group_b": "b", "pair_on": "w", "confidence_level": 0.9,
         "equivalence_low": -0.25, "equivalence_high": 0.25, "alpha": 0.05}
    o = run("paired_difference", x, rows, p)
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(confidence_level=0.9)
    assert o["n"] == n and o["difference"] == pytest.approx((a - b).mean(), rel=1e-12)
    assert (o["low"], o["high"], o["p"]) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12),
                                             pytest.approx(ref.pvalue, rel=1e-12))
    assert o["tost_p"] == pytest.approx(pg.tost(a, b, bound=0.25, paired=True)["pval"].iloc[0], rel=1e-10)
    o2 = run("paired_difference", x, rows, {**p, "equivalence_low": -0.1, "equivalence_high": 0.3})
    lo = stats.ttest_1samp(a - b, -0.1, alternative="greater").pvalue
    hi = stats.ttest_1samp(a - b, 0.3, alternative="less").pvalue
    assert o2["tost_p"] == pytest.approx(max(lo, hi), rel=1e-10) and o2["equivalent"] == (max(lo, hi) < 0.05)


def test_paired_difference_refuses_ambiguous_or_missing_pairs(rng):
    rows = pd.DataFrame({"arm": ["a", "a", "b", "b"], "w": [0, 0, 0, 1]})
    p = {"group_column": "arm", "group_a": "a", "group_b": "b", "pair_on": "w", "confidence_level": 0.95,
         "equivalence_low": -1.0, "equivalence_high": 1.0, "alpha": 0.05}
    with pytest.raises(S.StatisticError, match="repeated 'w' keys"):
        run("paired_difference", rng.normal(size=4), rows, p)
    rows = pd.DataFrame({"arm": ["a", "b", "b"], "w": [0, 0, 1]})
    with pytest.raises(S.InsufficientData, match="pairs"):
        run("paired_difference", rng.normal(size=3), rows, p)
    with pytest.raises(ValueError, match="equivalence_low must be < equivalence_high"):
        run("paired_difference", rng.normal(size=3), rows, {**p, "equivalence_low": 2.0})
