"""Benchmark (not a test): a verdict over 1,000,000 paired per-position measurements.

Writes a locked plan and a quality measurement folder of W windows x T positions (dense and
sparse NLL lists per window; default 1000 x 1000 = 1,000,000 pairs) to a temporary folder, then
times ``compute_verdict`` with: a Wilcoxon signed-rank test over all 1M paired differences,
a 10,000-resample BCa cluster bootstrap of the mean difference over windows, a t CI, and a
10,000-resample BCa row bootstrap of the per-window dPPL% (1,000 rows).

    python lab/bench/verdict.py [--windows 1000] [--positions 1000] [--resamples 10000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from dcr.analysis.engine import compute_verdict
from dcr.prereg.loading import dump_yaml
from dcr.prereg.lock import lock_plan
from dcr.prereg.measurements import expected_cells, write_part


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=1000)
    ap.add_argument("--positions", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=10000)
    a = ap.parse_args()
    W, T, R = a.windows, a.positions, a.resamples
    boot = lambda cluster: {"statistic": "mean", "method": "BCa", "n_resamples": R, "confidence_level": 0.95,  # noqa: E731
                            "alternative": "two-sided", "random_seed": 1, "cluster": cluster,
                            "degenerate_fallback": "percentile"}
    plan = {
        "schema_version": 1,
        "study": {"id": "bench-verdict", "version": 1, "title": "bench", "authors": ["bench"], "description": ""},
        "amends": None,
        "model": {"source": "preset", "id": "bench", "revision": None, "dtype": "float32", "preset_seed": 0},
        "corpus": {"name": "bench", "source": "shipped", "split": None, "path": None, "sha256": None},
        "windows": {"placement": "disjoint", "count": W, "start": 0, "offsets": None},
        "attention": {"k_min": 64, "dispatch_threshold": 0, "selection": "query_head", "tie_rule": "lower_index",
                      "score_dtype": "float32"},
        "producers": {"quality": {"contexts": [T], "coverages": [0.15], "layers": "all", "kernel": "reference"}},
        "hypotheses": [
            {"id": "per_position", "statement": "sparse NLL exceeds dense NLL", "producer": "quality", "select": {},
             "metric": "position.d_nll", "nonfinite": "drop_and_count",
             "statistics": [
                 {"id": "w", "kind": "wilcoxon", "params": {"alternative": "greater", "zero_method": "wilcox",
                                                            "method": "asymptotic", "correction": False}},
                 {"id": "cb", "kind": "bootstrap_ci", "params": boot("window_index")},
                 {"id": "t", "kind": "mean_t_ci", "params": {"confidence_level": 0.95, "alternative": "two-sided"}}],
             "gates": [],
             "decision": {"rules": [{"label": "WORSE", "when": [{"stat": "cb.low", "op": ">", "value": 0.0}]}],
                          "fallback": "NOT_SHOWN"},
             "family": None},
            {"id": "per_window", "statement": "dPPL% upper bound", "producer": "quality", "select": {},
             "metric": "delta_ppl_pct", "nonfinite": "error",
             "statistics": [{"id": "b", "kind": "bootstrap_ci", "params": boot(None)}],
             "gates": [],
             "decision": {"rules": [{"label": "STRICT", "when": [{"stat": "b.high", "op": "<=", "value": 0.5}]}],
                          "fallback": "NOT_STRICT"},
             "family": None},
        ],
        "multiplicity": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "bench.yaml").write_text(dump_yaml(plan))
        lock_path, sha, _ = lock_plan(tmp / "bench.yaml")
        from dcr.prereg.loading import load_plan

        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for cell in expected_cells(load_plan(tmp / "bench.yaml"), "quality"):
            dense = rng.exponential(2.0, T)
            sparse = dense + rng.normal(0.002, 0.01, T) + rng.normal(0, 0.002)
            dppl = (np.exp(sparse.mean() - dense.mean()) - 1) * 100
            cols = {"window_index": ([cell["window_index"]], pa.int64()), "window_start": ([cell["window_index"] * (T + 1)], pa.int64()),
                    "N": ([T], pa.int64()), "coverage": ([0.15], pa.float64()), "kernel": (["reference"], pa.string()),
                    "k_min": ([64], pa.int64()), "dispatch_threshold": ([0], pa.int64()), "n_tokens": ([T], pa.int64()),
                    "nll_sum_dense": ([dense.sum()], pa.float64()), "nll_sum_sparse": ([sparse.sum()], pa.float64()),
                    "ppl_dense": ([np.exp(dense.mean())], pa.float64()), "ppl_sparse": ([np.exp(sparse.mean())], pa.float64()),
                    "delta_ppl_pct": ([dppl], pa.float64()), "sparse_rows": ([T], pa.int64()), "dense_rows": ([0], pa.int64())}
            table = pa.table({k: pa.array(v, type=t) for k, (v, t) in cols.items()})
            table = table.append_column("nll_dense", pa.array([dense], type=pa.list_(pa.float64())))
            table = table.append_column("nll_sparse", pa.array([sparse], type=pa.list_(pa.float64())))
            write_part(tmp / "data", producer="quality", producer_version="bench", prereg_sha256=sha, cell=cell,
                       table=table, environment={}, model={"weights_random": True}, corpus={})
        t1 = time.perf_counter()
        v = compute_verdict(lock_path, tmp / "data")
        t2 = time.perf_counter()
        h = v["hypotheses"][0]
        print(f"wrote {W} part files ({W * T:,} paired measurements) in {t1 - t0:.1f} s")
        print(f"compute_verdict: {t2 - t1:.1f} s  (Wilcoxon over {h['statistics'][0]['values']['n']:,} pairs, "
              f"{R:,}-resample BCa cluster bootstrap over {h['statistics'][1]['values']['n_clusters']} windows, "
              f"{R:,}-resample BCa bootstrap over {v['hypotheses'][1]['statistics'][0]['values']['n']} windows)")
        for hh in v["hypotheses"]:
            print(f"  {hh['id']}: {hh['label']}  {hh['reason']}")


if __name__ == "__main__":
    main()
