"""Print the headline tables of the SmolLM2-135M study from its verdict (Markdown).

    python examples/smollm2/summarize.py examples/smollm2/verdict.json

Every number comes from the verdict JSON, which `dcr report verify` re-computes from the plan and
the data; this script only lays them out.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _values(h: dict, stat_id: str) -> dict:
    for s in h["statistics"]:
        if s["id"] == stat_id:
            return s["values"] or {}
    return {}


def _f(x, fmt: str = "{:.2f}") -> str:
    return "—" if x is None or isinstance(x, str) else fmt.format(x)


def tables(verdict: dict) -> str:
    hyps = {h["id"]: h for h in verdict["hypotheses"]}
    out = ["### Quality: mean ΔPPL % over 16 windows, its one-sided 95 % upper bound, the tier", "",
           "| N | c | rule (arm) | mean ΔPPL % | upper bound | label |", "| --- | --- | --- | --- | --- | --- |"]
    tiers = [h for h in verdict["hypotheses"] if h["id"].startswith("tier_")]
    for h in sorted(tiers, key=lambda h: (h["select"]["N"], h["select"]["coverage"], h["select"]["arm"])):
        up = _values(h, "upper")
        out.append(f"| {h['select']['N']} | {h['select']['coverage']} | {h['select']['arm']} | "
                   f"{_f(up.get('mean'))} | {_f(up.get('high'))} | {h['label']} |")
    out += ["", "### The price of one shared set per KV group: paired ΔPPL %(kvg) − ΔPPL %(qh), margin ±0.5 pp",
            "", "| N | c | mean difference | 95 % CI | TOST p (Holm-adjusted) | label |",
            "| --- | --- | --- | --- | --- | --- |"]
    for hid in sorted((k for k in hyps if k.startswith("rule_price_")),
                      key=lambda k: (hyps[k]["select"]["N"], hyps[k]["select"]["coverage"])):
        h = hyps[hid]
        p, adj = _values(h, "pair"), _values(h, "adjusted")
        out.append(f"| {h['select']['N']} | {h['select']['coverage']} | {_f(p.get('difference'))} | "
                   f"[{_f(p.get('low'))}, {_f(p.get('high'))}] | {_f(adj.get('p_adjusted'), '{:.3g}')} | {h['label']} |")
    out += ["", "### Layers 0-1 kept dense (c = 0.15): paired ΔPPL %(qh) − ΔPPL %(qh_dense01)", "",
            "| N | mean difference | 95 % CI | share of qh's loss | label |", "| --- | --- | --- | --- | --- |"]
    for hid in sorted((k for k in hyps if k.startswith("dense_layers01_")), key=lambda k: hyps[k]["select"]["N"]):
        h = hyps[hid]
        p = _values(h, "pair")
        share = (p["difference"] / p["mean_a"] * 100) if p.get("mean_a") else None
        out.append(f"| {h['select']['N']} | {_f(p.get('difference'))} | [{_f(p.get('low'))}, {_f(p.get('high'))}] | "
                   f"{_f(share, '{:.0f} %')} | {h['label']} |")
    out += ["", "### Entropy scaling α (H = α ln N + β, last query row of all 270 heads, 8 prompts, N 256-2048)", "",
            "| hypothesis | estimate | 95 % CI | label |", "| --- | --- | --- | --- |"]
    for hid in ("alpha_trained", "alpha_default_init", "alpha_scale_matched"):
        f = _values(hyps[hid], "fit")
        out.append(f"| α {hid[6:]} | {_f(f.get('slope'), '{:.3f}')} | [{_f(f.get('slope_low'), '{:.3f}')}, "
                   f"{_f(f.get('slope_high'), '{:.3f}')}] | {hyps[hid]['label']} |")
    for hid in ("alpha_trained_vs_default_init", "alpha_trained_vs_scale_matched"):
        d = _values(hyps[hid], "diff")
        out.append(f"| α trained − α {hid.split('_vs_')[1]} | {_f(d.get('difference'), '{:.3f}')} | "
                   f"[{_f(d.get('difference_low'), '{:.3f}')}, {_f(d.get('difference_high'), '{:.3f}')}] | "
                   f"{hyps[hid]['label']} |")
    h = hyps["causal_matched_magnitude"]
    ci, w, d = _values(h, "ci"), _values(h, "wilcoxon"), _values(h, "d")
    out += ["", "### Matched-magnitude causal test (12 heads × 16 prompts, N = 256)", "",
            f"mean D_NLL = {_f(d.get('mean'), '{:.2e}')} nats (n = {d.get('n')}), 95 % cluster-bootstrap CI "
            f"[{_f(ci.get('low'), '{:.2e}')}, {_f(ci.get('high'), '{:.2e}')}], Wilcoxon p = {_f(w.get('p'), '{:.3f}')} "
            f"→ **{h['label']}**"]
    out += ["", "### Scaling law of ΔPPL in N (c = 0.15, descriptive)", "",
            "| arm | α_eff | 95 % CI | label |", "| --- | --- | --- | --- |"]
    for arm in ("qh", "kvg", "qh_dense01"):
        law = _values(hyps[f"scaling_{arm}"], "law")
        out.append(f"| {arm} | {_f(law.get('alpha_eff'), '{:.3f}')} | [{_f(law.get('alpha_eff_low'), '{:.3f}')}, "
                   f"{_f(law.get('alpha_eff_high'), '{:.3f}')}] | {hyps[f'scaling_{arm}']['label']} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
