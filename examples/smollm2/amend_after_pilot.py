"""Amend the SmolLM2-135M registration after the causal pilot, by the rule the plan states.

The registration (smollm2.yaml, version 1) leaves Δ_target provisional: the pilot
(`dcr produce causal --pilot`) measures every registered pilot target on the causal grid, and the
smallest target that is *measurable* is locked by an amendment before any measurement:

    measurable(target) = every pilot row converged (ls_converged), no dense fallback, and
                         max |ΔH_C| <= 0.1 · target (the control is entropy-neutral)

The amendment (version 2) also sets producers.quality.per_position: false (no hypothesis reads
per-position NLLs; the lists would add about 35 MB of float64 to the repository). This script was
committed before the pilot ran, so the rule cannot follow the data.

    python examples/smollm2/amend_after_pilot.py --pilot DATA_OF_THE_PILOT
        # writes examples/smollm2/smollm2-v2.yaml and its lock (dcr prereg amend)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.dataset as ds

from dcr.prereg.lock import amend_plan
from dcr.prereg.loading import dump_yaml, read_yaml

HERE = Path(__file__).resolve().parent
GATE_ID = "control_entropy_neutral"


def pilot_summary(pilot_dir: Path) -> list[dict]:
    """Per pilot target: rows, converged fraction, dense fallbacks, max |ΔH_C|, measurable."""
    df = ds.dataset(pilot_dir / "causal_pilot").to_table().to_pandas()
    out = []
    for target, g in sorted(df.groupby("delta_target"), key=lambda kv: kv[0]):
        max_dh = float(g.delta_h_c.abs().max())
        row = {"delta_target": float(target), "rows": int(len(g)), "converged": float(g.ls_converged.mean()),
               "dense_fallbacks": int(g.dense_fallback.sum()), "max_abs_delta_h_c": max_dh}
        row["measurable"] = bool(row["converged"] == 1.0 and row["dense_fallbacks"] == 0
                                 and max_dh <= 0.1 * float(target))
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pilot", type=Path, required=True, help="the pilot's data folder (holds causal_pilot/)")
    ap.add_argument("--plan", type=Path, default=HERE / "smollm2.yaml")
    ap.add_argument("--lock", type=Path, default=HERE / "smollm2.lock.yaml")
    ap.add_argument("--out", type=Path, default=HERE / "smollm2-v2.yaml")
    args = ap.parse_args()

    summary = pilot_summary(args.pilot)
    data, _ = read_yaml(args.plan)
    causal = data["producers"]["causal"]
    registered = sorted(float(t) for t in causal["pilot_targets"])
    if sorted(r["delta_target"] for r in summary) != registered:
        raise SystemExit(f"the pilot measured targets {[r['delta_target'] for r in summary]}, "
                         f"the plan registers {registered}")
    per_target = len(causal["heads"]) * int(causal["prompts"]) * len(causal["contexts"])
    short = [r["delta_target"] for r in summary if r["rows"] != per_target]
    if short:
        raise SystemExit(f"the pilot is incomplete: targets {short} lack some of the {per_target} registered rows")
    measurable = [r["delta_target"] for r in summary if r["measurable"]]
    table = "; ".join(f"{r['delta_target']:g}: {r['rows']} rows, converged {r['converged']:.3f}, "
                      f"max |ΔH_C| {r['max_abs_delta_h_c']:.4g}{' (measurable)' if r['measurable'] else ''}"
                      for r in summary)
    if measurable:
        target = min(measurable)
        why = f"locks Δ_target = {target:g} nats, the smallest measurable pilot target"
    else:
        target = float(causal["delta_target"])
        why = f"no pilot target is measurable: Δ_target stays {target:g} (its gates will decide INVALID)"
    causal["delta_target"] = target
    for h in data["hypotheses"]:
        for g in h["gates"]:
            if g["id"] == GATE_ID:
                g["value"] = round(0.1 * target, 12)
    data["producers"]["quality"]["per_position"] = False
    data["study"]["version"] = int(data["study"]["version"]) + 1
    data["amends"] = None  # set by dcr prereg amend
    reason = (f"Causal pilot (registered rule: measurable = every row converged, no dense fallback, "
              f"max |ΔH_C| <= 0.1 x target): {table}. The amendment {why}, and the control-entropy gate "
              f"follows (0.1 x Δ_target). producers.quality.per_position: false (no hypothesis reads "
              f"per-position NLLs; they would add about 35 MB to the repository). Made before any measurement.")
    header = ("# Version 2 of the SmolLM2-135M registration, written by examples/smollm2/amend_after_pilot.py\n"
              "# from the causal pilot (the amendment's reason gives the pilot's figures). Locked by\n"
              "# `dcr prereg amend` with version 1 as its parent; every measurement is made under it.\n")
    args.out.write_text(header + dump_yaml(data), encoding="utf-8")
    lock, sha, _ = amend_plan(args.out, args.lock, reason, search_dirs=[args.lock.parent])
    (args.out.parent / "pilot-summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"pilot: {table}\n{why}\namended: {lock} (sha256 {sha})")


if __name__ == "__main__":
    main()
