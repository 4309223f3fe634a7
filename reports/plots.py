"""Plots of a report, drawn from the data files the verdict names (matplotlib, Agg, lazy import).

Each plot function takes the verdict and the producers' tables (pandas DataFrames, one per
producer, concatenated over the part files the verdict lists) and returns a figure or ``None``
when its data are absent. A plot never fails the report: an exception while drawing one is
turned into a caption-less omission with a note (see :func:`draw_all`).

Fitted lines come from the verdict where it has them (registered ``ols_loglinear`` statistics);
the ΔPPL-vs-N law on log–log axes is a descriptive least-squares fit, and its caption says so.
PNG output carries no timestamp or version metadata, so the same data give the same bytes
with the same matplotlib.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable

from dcr.prereg.measurements import CAUSAL, LATENCY, QUALITY, RANDOM_SPECTRUM, read_part

# The contract's columns the plots draw (a name the contract lacks fails at import).
Q_WINDOW, Q_N, Q_COVERAGE, Q_DELTA_PPL = QUALITY.cols("window_index", "N", "coverage", "delta_ppl_pct")
Q_ARM = QUALITY.cols("arm")[0]
RS_N, RS_ENTROPY, RS_VARIANT = RANDOM_SPECTRUM.cols("N", "entropy", "variant")
LAT_N, LAT_COVERAGE, LAT_SESSION, LAT_ARM, LAT_MS = LATENCY.cols("N", "coverage", "session", "arm", "ms")
C_LAYER, C_HEAD = CAUSAL.cols("layer", "head")
RATIO, SPARSE_ARM = "ratio", "sparse_arm"  # latency_wide's columns: median dense ms / median ms of the sparse arm


def _has(df, *names: str) -> bool:
    return set(names) <= set(df.columns)


def load_tables(verdict: dict, data_dir: Path) -> dict[str, Any]:
    """producer → DataFrame of every part file the verdict lists for it (files that exist)."""
    import pandas as pd

    parts: dict[str, list] = {}
    for f in (verdict.get("data") or {}).get("files") or []:
        p = Path(data_dir) / f["path"]
        if p.is_file() and p.suffix == ".parquet":
            parts.setdefault(f.get("producer") or p.parent.name, []).append(read_part(p)[1].to_pandas())
    return {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}


def select_rows(df, select: dict):
    """Rows of ``df`` matching a hypothesis' ``select`` (scalar = equality, list = membership)."""
    mask = None
    for k, want in (select or {}).items():
        if k not in df.columns:
            return df.iloc[0:0]
        m = df[k].isin(want) if isinstance(want, list) else df[k] == want
        mask = m if mask is None else (mask & m)
    return df if mask is None else df[mask]


def _stats(h: dict) -> dict[str, dict]:
    """statistic id → its record (kind, params, values, error) in a verdict's hypothesis."""
    return {s["id"]: s for s in h.get("statistics") or []}


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in xs)


def _ci_of(h: dict) -> tuple[str, float, float, float] | None:
    """(statistic id, estimate, low, high) of the first statistic with a CI in a hypothesis."""
    for sid, s in _stats(h).items():
        v = s.get("values") or {}
        est = v.get("estimate", v.get("mean", v.get("ratio")))
        if _finite(est, v.get("low"), v.get("high")):
            return sid, float(est), float(v["low"]), float(v["high"])
    return None


_LOCATION_FIELDS = {"mean", "estimate", "low", "high", "median", "value", "min", "max", "ratio"}


def _thresholds(h: dict, decisions: dict) -> list[tuple[float, str]]:
    """Numeric thresholds of a hypothesis' registered rules on location fields (on the metric's
    scale: mean, CI bounds, …; not sd or p), as (value, 'label (stat op value)')."""
    rules = (decisions.get(h.get("id")) or {}).get("rules")
    if rules is None:
        rules = [{"label": r["label"], "when": r["conditions"]} for r in h.get("rules_checked") or []]
    out = set()
    for r in rules:
        for c in r.get("when") or []:
            if _finite(c.get("value")) and c["stat"].partition(".")[2] in _LOCATION_FIELDS:
                out.add((float(c["value"]), f"{r['label']} ({c['stat']} {c['op']} {c['value']:g})"))
    return sorted(out)


def _hyps(verdict: dict, producer: str) -> list[dict]:
    return [h for h in verdict.get("hypotheses") or [] if h.get("producer") == producer]


# --------------------------------------------------------------------------- the plots
# Each returns (figure, caption) or None.


def per_window_dppl(verdict, tables, plt, decisions):
    df = tables.get(QUALITY.name)
    if df is None:
        return None
    hs = [h for h in _hyps(verdict, QUALITY.name) if h.get("metric") in df.columns]
    if not hs or not _has(df, Q_WINDOW):
        return None
    h = hs[0]
    rows = select_rows(df, h.get("select"))
    if rows.empty:
        return None
    metric = h["metric"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    windows = sorted(rows[Q_WINDOW].unique())
    xs = [windows.index(w) for w in rows[Q_WINDOW]]
    ax.scatter(xs, rows[metric], color="#1f4e9c", zorder=3, label=f"{metric} per row")
    ths = _thresholds(h, decisions)
    ci = _ci_of(h)
    # y range: the data, the CI and the first threshold above them (higher tiers would squash the data)
    top = max([float(rows[metric].max())] + ([ci[3]] if ci else []))
    bottom = min([float(rows[metric].min()), 0.0] + ([ci[2]] if ci else []))
    above = [v for v, _ in ths if v >= top]
    hi = min(above) if above else max([top] + [v for v, _ in ths])
    ylim = (bottom - 0.08 * (hi - bottom or 1.0), hi + 0.12 * (hi - bottom or 1.0))
    palette = ["#d8f0d8", "#fff3c4", "#ffd9b3", "#f7c6c6"]
    edges = [v for v, _ in ths]
    for i, (v, name) in enumerate(ths):
        ax.axhspan(edges[i - 1] if i else min(ylim[0], v), v, color=palette[i % len(palette)], alpha=0.5, zorder=0)
        if ylim[0] <= v <= ylim[1]:
            ax.axhline(v, color="#555", lw=0.8, ls="--")
            ax.text(len(windows) - 0.5, v, f" {name}", va="bottom", ha="right", fontsize=7, color="#333")
    if ci:
        sid, est, low, high = ci
        ax.axhspan(low, high, color="#1f4e9c", alpha=0.15, zorder=1)
        ax.axhline(est, color="#1f4e9c", lw=1.2, zorder=2, label=f"{sid}: {est:.4g} [{low:.4g}, {high:.4g}]")
    for c in (h.get("rule") or {}).get("conditions") or []:  # what the decision read, where it lies
        if _finite(c.get("observed")) and c["stat"].partition(".")[2] in _LOCATION_FIELDS:
            ax.axhline(c["observed"], color="#c0392b", lw=1.6, zorder=2,
                       label=f"{c['stat']} = {c['observed']:.4g} (rules[{h['rule']['index']}] → {h['rule']['label']})")
    ax.set_ylim(*ylim)
    ax.set_xticks(range(len(windows)), [str(w) for w in windows])
    ax.set_xlabel(Q_WINDOW)
    ax.set_ylabel(metric)
    ax.set_title(f"{h['id']}: per-window {metric}")
    ax.legend(fontsize=8, loc="upper left")
    cap = (f"Each point is one row of {h['id']}'s selection; dashed lines and shaded bands are the registered "
           "decision thresholds" + (f"; the blue band is the registered CI ({ci[0]}) and its estimate" if ci else "")
           + ("; the red line is the value the decision rule read" if h.get("rule") else "") + ".")
    return fig, cap


def entropy_vs_lnN(verdict, tables, plt, decisions):
    import numpy as np

    df = tables.get(RANDOM_SPECTRUM.name)
    if df is None or not _has(df, RS_N, RS_ENTROPY):
        return None
    by_variant = _has(df, RS_VARIANT)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    groups = df.groupby(RS_VARIANT) if by_variant else [("all", df)]
    colors = {"trained": "#1f4e9c", "default_init": "#c0392b", "scale_matched": "#e67e22"}
    for name, g in groups:
        m = g.groupby(RS_N)[RS_ENTROPY].mean()
        ax.plot(np.log(m.index.to_numpy(float)), m.to_numpy(), "o", color=colors.get(name, "#555"),
                label=f"{name}: mean {RS_ENTROPY}")
    xs = np.log(np.array(sorted(df[RS_N].unique()), float))
    for h in _hyps(verdict, RANDOM_SPECTRUM.name):
        for sid, s in _stats(h).items():
            v = s.get("values") or {}
            if s.get("kind") == "ols_loglinear" and (s.get("params") or {}).get("x_transform") == "ln" \
                    and _finite(v.get("slope"), v.get("intercept")):
                name = (h.get("select") or {}).get(RS_VARIANT, h["id"]) if by_variant else h["id"]
                lab = f"{h['id']}.{sid}: α = {v['slope']:.4g}"
                if isinstance(v.get("slope_low"), (int, float)):
                    lab += f" [{v['slope_low']:.4g}, {v['slope_high']:.4g}]"
                ax.plot(xs, v["intercept"] + v["slope"] * xs, "-", color=colors.get(name, "#555"), label=lab)
    ax.set_xlabel("ln N")
    ax.set_ylabel(f"mean {RS_ENTROPY} (nats)")
    ax.set_title("Mean attention entropy vs ln N")
    ax.legend(fontsize=8)
    return fig, ("Points: mean entropy per context and variant over all rows; lines: the registered OLS fits "
                 "(slope α with its CI) read from the verdict.")


def dppl_vs_N(verdict, tables, plt, decisions):
    import numpy as np

    df = tables.get(QUALITY.name)
    if df is None or not _has(df, Q_N, Q_COVERAGE, Q_DELTA_PPL) or df[Q_N].nunique() < 2:
        return None
    by_arm = _has(df, Q_ARM) and df[Q_ARM].notna().any()
    # (arm, coverage) -> (hypothesis.stat, values) of a registered scaling_law fit
    laws = {}
    for h in _hyps(verdict, QUALITY.name):
        sel = h.get("select") or {}
        cov, arm = sel.get(Q_COVERAGE), sel.get(Q_ARM)
        for sid, st in _stats(h).items():
            v = st.get("values") or {}
            if st.get("kind") == "scaling_law" and _finite(v.get("exponent"), v.get("A")) \
                    and not isinstance(cov, list) and not isinstance(arm, list):
                laws.setdefault((arm, cov), (f"{h['id']}.{sid}", v))
    fig, ax = plt.subplots(figsize=(8, 7.5 if by_arm else 4.5))
    omitted, descriptive, registered = 0, False, False
    keys = [Q_ARM, Q_COVERAGE] if by_arm else [Q_COVERAGE]
    markers = dict(zip(sorted(df[Q_ARM].dropna().unique()) if by_arm else [None], "osD^v<>"))
    for key, g in sorted(df.groupby(keys), key=lambda kv: str(kv[0])):
        arm, cov = key if by_arm else (None, key[0] if isinstance(key, tuple) else key)
        m = g.groupby(Q_N)[Q_DELTA_PPL].mean()
        pos = m[m > 0]
        omitted += int((m <= 0).sum())
        if pos.empty:
            continue
        name = f"{arm}, c = {cov:g}" if by_arm else f"c = {cov:g}"
        line = ax.plot(pos.index, pos.to_numpy(), markers.get(arm, "o"), label=f"{name}: mean over windows")[0]
        xs = np.geomspace(m.index.min(), m.index.max(), 50)
        law = laws.get((arm, cov), laws.get((arm, None), laws.get((None, cov), laws.get((None, None)))))
        if law is not None:
            lname, v = law
            lab = f"{lname}: ΔPPL = {v['A']:.3g}·N^{v['exponent']:.3g}"
            if _finite(v.get("alpha_eff_low"), v.get("alpha_eff_high")):
                lab += f" (α_eff {v['alpha_eff']:.3g} [{v['alpha_eff_low']:.3g}, {v['alpha_eff_high']:.3g}])"
            ax.plot(xs, v["A"] * xs ** v["exponent"], "-", color=line.get_color(), lw=1.2, label=lab)
            registered = True
        elif len(pos) >= 2:
            b, a = np.polyfit(np.log(pos.index.to_numpy(float)), np.log(pos.to_numpy(float)), 1)
            ax.plot(xs, np.exp(a) * xs ** b, ":", color=line.get_color(), lw=1,
                    label=f"{name}: descriptive fit N^{b:+.3f}")
            descriptive = True
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("context N (tokens)")
    ax.set_ylabel(f"mean {Q_DELTA_PPL}")
    ax.set_title("ΔPPL vs N per " + ("arm and coverage" if by_arm else "coverage") + " (log–log)")
    if by_arm:  # one series per (arm, c): the legend goes below the axes
        ax.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        fig.tight_layout()
    else:
        ax.legend(fontsize=7)
    cap = "Mean over windows per (N, c" + (", arm)." if by_arm else ").")
    if registered:
        cap += " Solid lines: the registered scaling-law fits read from the verdict."
    if descriptive:
        cap += " Dotted lines: least-squares fit of ln ΔPPL on ln N — descriptive, not a registered statistic."
    if omitted:
        cap += f" {omitted} non-positive mean(s) cannot be drawn on log axes and are omitted."
    return fig, cap


def dose_response(verdict, tables, plt, decisions):
    import numpy as np

    for h in verdict.get("hypotheses") or []:
        df = tables.get(h.get("producer"))
        st = next((s for s in _stats(h).values() if s.get("kind") == "dose_response"), None)
        if df is None or st is None:
            continue
        x, y = (st.get("params") or {}).get("x"), h.get("metric")
        rows = select_rows(df, h.get("select"))
        if x not in rows.columns or y not in rows.columns or rows[x].nunique() < 2:
            continue
        g = rows.groupby(x)[y]
        mean, sd, n = g.mean(), g.std(ddof=1), g.count()
        se = (sd / np.sqrt(n)).fillna(0)
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.errorbar(mean.index, mean.to_numpy(), yerr=1.96 * se.to_numpy(), fmt="o-", capsize=4, color="#1f4e9c",
                    label="mean ± 1.96 SE per dose")
        v = st.get("values") or {}
        if _finite(v.get("slope"), v.get("slope_low"), v.get("slope_high")):
            xs = np.array([mean.index.min(), mean.index.max()], float)
            x0, y0 = float(np.mean(rows[x])), float(np.mean(rows[y]))
            ax.plot(xs, y0 + v["slope"] * (xs - x0), "-", color="#c0392b", lw=1,
                    label=f"{h['id']}.{st['id']}: slope {v['slope']:.3g} [{v['slope_low']:.3g}, {v['slope_high']:.3g}]")
        ax.axhline(0, color="#555", lw=0.8, ls="--")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(f"{h['id']}: dose–response")
        ax.legend(fontsize=8)
        return fig, ("Mean per dose ± 1.96 standard errors (descriptive, rows treated as independent); red: the "
                     "registered OLS slope through the data's centroid, with its CI from the verdict.")
    return None


def latency_wide(df):
    """Latency ratios (median dense ms / median ms of a sparse arm, > 1 = sparse faster), one row
    per cell (level, N, B, coverage, session) and sparse arm (``sparse_arm``: "sparse", or the ids of
    the plan's sparse arms), from the long format (one row per arm x rep); None without dense rows
    and rows of at least one sparse arm."""
    import pandas as pd

    if df is None or not _has(df, LAT_ARM, LAT_MS):
        return None
    arms = [a for a in df[LAT_ARM].unique() if a != "dense"]
    if "dense" not in set(df[LAT_ARM]) or not arms:
        return None
    keys = [c for c in LATENCY.cell_keys if c in df.columns]
    m = df.groupby(keys + [LAT_ARM])[LAT_MS].median().unstack(LAT_ARM)
    long = [m[["dense"]].assign(**{SPARSE_ARM: a, RATIO: m["dense"] / m[a]}) for a in sorted(arms)]
    return pd.concat(long).drop(columns="dense").reset_index()


def latency_ratio(verdict, tables, plt, decisions):
    df = latency_wide(tables.get(LATENCY.name))
    if df is None:
        return None
    keys = [c for c in LATENCY.cell_keys if c != LAT_SESSION and c in df.columns]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    groups = list(df.groupby(keys)) if keys else [((), df)]
    arms = sorted(df[SPARSE_ARM].unique())
    colors = ["#1f4e9c", "#2e8b57", "#b8860b", "#6a3d9a"]
    for i, (kv, g) in enumerate(groups):
        for j, arm in enumerate(arms):  # arms side by side around the cell's position
            ga = g[g[SPARSE_ARM] == arm]
            ax.scatter([i + (j - (len(arms) - 1) / 2) * 0.15] * len(ga), ga[RATIO], color=colors[j % len(colors)],
                       s=16, zorder=3, label=arm if i == 0 and len(arms) > 1 else None)
    if keys:
        labels = [", ".join(f"{k}={v}" for k, v in zip(keys, kv if isinstance(kv, tuple) else (kv,))) for kv, _ in groups]
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=7, ha="right")
    ax.axhline(1.0, color="#555", lw=0.8, ls="--", label="parity (1.0)")
    for h in _hyps(verdict, LATENCY.name):
        ci = _ci_of(h)
        if ci:
            sid, est, low, high = ci
            ax.axhspan(low, high, alpha=0.15, color="#c0392b")
            ax.axhline(est, color="#c0392b", lw=1.2, label=f"{h['id']}.{sid}: {est:.4g} [{low:.4g}, {high:.4g}]")
        for v, name in _thresholds(h, decisions):
            ax.axhline(v, color="#888", lw=0.7, ls=":")
            ax.text(ax.get_xlim()[1], v, f" {name}", fontsize=7, ha="right", va="bottom")
    ax.set_ylabel("median dense ms / median sparse ms")
    ax.set_title("Latency ratio per cell (> 1: sparse faster)")
    ax.legend(fontsize=8)
    return fig, ("Points: one per session and sparse arm (median over repetitions, dense over sparse); red band: "
                 "each hypothesis' registered CI and estimate from the verdict; dotted: registered thresholds.")


def quality_vs_speed(verdict, tables, plt, decisions):
    q, lat = tables.get(QUALITY.name), latency_wide(tables.get(LATENCY.name))
    if q is None or lat is None or not _has(q, Q_N, Q_COVERAGE, Q_DELTA_PPL) or not _has(lat, LAT_N, LAT_COVERAGE):
        return None
    qa = (q.groupby([Q_N, Q_COVERAGE])[Q_DELTA_PPL].mean().rename("quality").reset_index()
          .rename(columns={Q_N: "N", Q_COVERAGE: "c"}))
    la = (lat.groupby([LAT_N, LAT_COVERAGE, SPARSE_ARM])[RATIO].median().rename("speed").reset_index()
          .rename(columns={LAT_N: "N", LAT_COVERAGE: "c"}))
    j = qa.merge(la, on=["N", "c"])
    if j.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(j["speed"], j["quality"], color="#1f4e9c", zorder=3)
    several = j[SPARSE_ARM].nunique() > 1
    for _, r in j.iterrows():
        ax.annotate(f"N={r['N']:g}, c={r['c']:g}" + (f", {r[SPARSE_ARM]}" if several else ""),
                    (r["speed"], r["quality"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    best, pts = math.inf, []
    for _, r in j.sort_values(["speed", "quality"], ascending=[False, True]).iterrows():
        if r["quality"] < best:  # Pareto: a higher speed-up and a lower ΔPPL are both better
            best = r["quality"]
            pts.append((r["speed"], r["quality"]))
    if len(pts) > 1:
        ax.plot(*zip(*pts), "-", color="#c0392b", lw=1, label="Pareto front")
        ax.legend(fontsize=8)
    ax.axvline(1.0, color="#555", lw=0.8, ls="--")
    ax.set_xlabel("median latency ratio (> 1: sparse faster)")
    ax.set_ylabel(f"mean {Q_DELTA_PPL}")
    ax.set_title("Quality vs speed across cells")
    return fig, ("Cells measured by both producers, joined on (N, c): mean ΔPPL over windows against the median "
                 "dense/sparse ratio over sessions and levels, per sparse latency arm.")


def causal_effect(verdict, tables, plt, decisions):
    """The causal metric (e.g. D_NLL) of each measured (layer, head), with the registered CI and 0."""
    df = tables.get(CAUSAL.name)
    if df is None:
        return None
    for h in _hyps(verdict, CAUSAL.name):
        metric = h.get("metric")
        rows = select_rows(df, h.get("select"))
        if metric not in rows.columns or rows.empty or not _has(rows, C_LAYER, C_HEAD):
            continue
        groups = list(rows.groupby([C_LAYER, C_HEAD]))
        fig, ax = plt.subplots(figsize=(8, 4.2))
        for i, (_, g) in enumerate(groups):
            ax.scatter([i] * len(g), g[metric], color="#1f4e9c", s=10, alpha=0.6, zorder=3)
        ax.set_xticks(range(len(groups)), [f"L{l}H{hd}" for (l, hd), _ in groups], rotation=45, fontsize=7)
        ax.axhline(0, color="#555", lw=0.8, ls="--")
        ci = _ci_of(h)
        if ci:
            sid, est, low, high = ci
            ax.axhspan(low, high, color="#c0392b", alpha=0.15, zorder=1)
            ax.axhline(est, color="#c0392b", lw=1.2, label=f"{h['id']}.{sid}: {est:.4g} [{low:.4g}, {high:.4g}]")
            ax.legend(fontsize=8)
        ax.set_xlabel("(layer, head)")
        ax.set_ylabel(metric)
        ax.set_title(f"{h['id']}: {metric} per measured head")
        return fig, ("Points: one per measurement of the hypothesis' selection, by (layer, head); red band: the "
                     "registered CI and its estimate from the verdict; dashed: zero effect.")
    return None


def summary_cis(verdict, tables, plt, decisions):
    """Transcribed summaries that carry their own CIs (columns ci_low / ci_high): estimate ± CI per row."""
    for producer, df in sorted(tables.items()):
        if not {"ci_low", "ci_high"} <= set(df.columns):
            continue
        est = next((c for c in ("median_D", "mean_D", "estimate", "mean", "median") if c in df.columns), None)
        if est is None:
            continue
        keys = [c for c in ("scope", "lambda", "N", "coverage") if c in df.columns]
        d = df.sort_values(keys, key=lambda s: s.astype(str) if s.dtype == object else s) if keys else df
        labels = [", ".join(f"{k}={r[k]:g}" if isinstance(r[k], float) else f"{k}={r[k]}"
                            for k in keys if r[k] == r[k]) for _, r in d.iterrows()]  # r[k] == r[k]: not NaN
        fig, ax = plt.subplots(figsize=(8, 4.2))
        xs = range(len(d))
        y, lo, hi = d[est].to_numpy(float), d["ci_low"].to_numpy(float), d["ci_high"].to_numpy(float)
        ax.errorbar(xs, y, yerr=[y - lo, hi - y], fmt="o", capsize=4, color="#1f4e9c", label=f"{est} with its CI")
        ax.axhline(0, color="#555", lw=0.8, ls="--")
        ax.set_xticks(list(xs), labels, rotation=20, fontsize=7, ha="right")
        ax.set_ylabel(est)
        ax.set_title(f"{producer}: summary estimates with their CIs (as transcribed)")
        ax.legend(fontsize=8)
        return fig, ("Each point is one transcribed summary row with the CI its source published; nothing here "
                     "was re-computed from raw measurements.")
    return None


PLOTS: list[tuple[str, str, Callable]] = [
    ("per_window_dppl", "Per-window ΔPPL with tier bands and CI", per_window_dppl),
    ("entropy_vs_lnN", "Mean entropy vs ln N, trained vs random", entropy_vs_lnN),
    ("dppl_vs_N", "ΔPPL vs N per coverage", dppl_vs_N),
    ("causal_effect", "Causal effect per head with its CI", causal_effect),
    ("dose_response", "Dose–response", dose_response),
    ("latency_ratio", "Latency ratio with its CI", latency_ratio),
    ("quality_vs_speed", "Quality vs speed", quality_vs_speed),
    ("summary_cis", "Transcribed summary estimates with their CIs", summary_cis),
]


def draw_all(verdict: dict, data_dir: Path, decisions: dict[str, dict] | None = None) -> list[dict]:
    """[{name, title, caption, png}] for every plot whose data exist; never raises on plot errors."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    try:
        tables = load_tables(verdict, data_dir)
    except Exception as exc:  # noqa: BLE001 - unreadable data: the report renders without plots
        return [{"name": "no_plots", "title": "Plots unavailable", "png": None,
                 "caption": f"The data files could not be read: {type(exc).__name__}: {exc}"}]
    out = []
    with plt.rc_context({"svg.hashsalt": "dcr", "font.size": 9}):
        for name, title, fn in PLOTS:
            try:
                res = fn(verdict, tables, plt, decisions or {})
            except Exception as exc:  # noqa: BLE001 - a plot never fails the report: say why instead
                plt.close("all")
                out.append({"name": name, "title": title, "png": None,
                            "caption": f"This plot could not be drawn: {type(exc).__name__}: {exc}"})
                continue
            if res is None:
                continue
            fig, caption = res
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
            plt.close(fig)
            out.append({"name": name, "title": title, "caption": caption, "png": buf.getvalue()})
    return out

