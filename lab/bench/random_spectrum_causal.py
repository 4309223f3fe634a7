"""Time the random-spectrum and causal grids on a random-weight preset (GPU or CPU).

    python3 lab/bench/random_spectrum_causal.py --preset llama-3.2-1b-random --device cuda --out /tmp/bench.json
    python3 lab/bench/random_spectrum_causal.py --preset tiny-llama-random --device cpu --dtype float32 \
        --out /tmp/bench.json

Grids (as registered in prereg/registrations/{causal-gap1,random-spectrum}.yaml, model swapped for
the preset and the corpus for random ASCII text, since no weights or data can be downloaded):
causal 12 heads x 25 prompts x N=256 (3 arms per forward); random spectrum 3 variants x 5 seeds x
4 contexts {256..2048} x 10 prompts, all heads. Reports the time of the cell loop (``run_cells``:
every cell computed and written) apart from the model load, and sanity figures of the rows.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

GAP1_HEADS = [[1, 3], [1, 19], [2, 11], [2, 27], [7, 5], [7, 21], [8, 13], [8, 29],
              [13, 7], [13, 23], [14, 15], [14, 31]]


def _plan(tmp: Path, name: str, preset: str, dtype: str, producers: dict, count: int, metric: str,
          producer: str) -> Path:
    from dcr.prereg.lock import lock_plan

    hyp = {"id": "h", "statement": "s", "producer": producer, "select": {}, "metric": metric,
           "nonfinite": "drop_and_count", "statistics": [{"id": "d", "kind": "describe", "params": {"ddof": 1}}],
           "gates": [], "decision": {"rules": [], "fallback": "REPORTED"}, "family": None}
    plan = {"schema_version": 1,
            "study": {"id": name, "version": 1, "title": name, "authors": ["bench"], "description": ""},
            "amends": None,
            "model": {"source": "preset", "id": preset, "revision": None, "dtype": dtype, "preset_seed": 0},
            "corpus": {"name": "random-ascii", "source": "file", "split": None, "path": str(tmp / "corpus.txt"),
                       "sha256": None},
            "windows": {"placement": "disjoint", "count": count, "start": 0, "offsets": None},
            "attention": {"k_min": 64, "dispatch_threshold": 64, "selection": "query_head",
                          "tie_rule": "lower_index", "score_dtype": "float32"},
            "producers": producers, "hypotheses": [hyp], "multiplicity": []}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan))
    return lock_plan(path)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b-random")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--small", action="store_true", help="a CPU-sized grid (contexts / 8, fewer seeds)")
    args = ap.parse_args()

    import pandas as pd
    import torch

    import dcr.producers.runner as runner
    from dcr.producers.causal import produce_causal
    from dcr.producers.models import preset_config
    from dcr.producers.random_spectrum import produce_random_spectrum

    cfg = preset_config(args.preset)
    heads = [[l % cfg.num_hidden_layers, h % cfg.num_attention_heads] for l, h in GAP1_HEADS]
    heads = [list(x) for x in dict.fromkeys(tuple(h) for h in heads)]
    scale = 8 if args.small else 1
    rs_contexts = [n // scale for n in (256, 512, 1024, 2048)]
    seeds = [0, 1] if args.small else [0, 1, 2, 42, 100]
    causal_n = 256 // scale
    times: dict[str, float] = {}
    real = runner.run_cells

    def timed(**kw):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        s = real(**kw)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times[kw["producer"]] = time.perf_counter() - t
        times[kw["producer"] + "_cells"] = len(s.written)
        return s

    runner.run_cells = timed
    report: dict = {"preset": args.preset, "device": args.device, "dtype": args.dtype,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rng = np.random.default_rng(0)
        words = ["".join(chr(c) for c in rng.integers(97, 123, rng.integers(1, 9))) for _ in range(20000)]
        (tmp / "corpus.txt").write_text(" ".join(words))
        causal_lock = _plan(tmp, "bench-causal", args.preset, args.dtype, {"causal": {
            "heads": heads, "prompts": 25, "contexts": [causal_n], "delta_target": 0.25, "pilot_targets": [0.25],
            "line_search": {"tolerance": 0.0025, "max_iterations": 60}, "finite_difference_eps": 0.001,
            "gap_coverage": 0.5, "seed": 20261128}}, 25, "d_nll", "causal")
        rs_lock = _plan(tmp, "bench-rs", args.preset, args.dtype, {"random_spectrum": {
            "variants": ["trained", "default_init", "scale_matched"], "seeds": seeds, "contexts": rs_contexts,
            "prompts": 10, "heads": "all", "query_row": "last"}}, 10, "entropy", "random_spectrum")
        t = time.perf_counter()
        produce_causal(causal_lock, tmp / "out", device=args.device, progress=False)
        times["causal_total_with_load"] = time.perf_counter() - t
        t = time.perf_counter()
        produce_random_spectrum(rs_lock, tmp / "out", device=args.device, progress=False)
        times["random_spectrum_total_with_load_and_checks"] = time.perf_counter() - t
        c = pd.read_parquet(tmp / "out" / "causal")
        r = pd.read_parquet(tmp / "out" / "random_spectrum")
    report["times_s"] = times
    report["causal"] = {
        "rows": len(c), "converged": int(c.ls_converged.sum()), "dense_fallback": int(c.dense_fallback.sum()),
        "max_abs_norm_ratio_minus_1": float((c.norm_ratio - 1).abs().max()),
        "max_abs_dh_t_minus_target_converged": float((c[c.ls_converged].delta_h_t - 0.25).abs().max()),
        "max_abs_dh_c": float(c.delta_h_c.abs().max()), "median_abs_dh_c": float(c.delta_h_c.abs().median()),
        "max_fd_error": float(c.fd_error.max()), "mean_d_nll": float(c.d_nll.mean()),
    }
    slopes = {}
    for v, grp in r.groupby("variant"):
        slopes[v] = float(np.polyfit(np.log(grp.N.to_numpy(dtype=float)), grp.entropy.to_numpy(), 1)[0])
    report["random_spectrum"] = {"rows": len(r), "ols_slope_by_variant": slopes,
                                 "mean_logit_scale_by_variant": r.groupby("variant").logit_scale.mean().to_dict()}
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
