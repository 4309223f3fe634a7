"""Turn the seed's published figures into transcribed measurement files and verdicts.

    python examples/seed-v3/ingest.py --published analysis/assets/seed_v3/seed_v3_published.json --out DIR

copies the plans of analysis/assets/seed_v3/plans/ to DIR/plans, locks them, writes DIR/data/<plan>/<producer>/part-*.parquet
(file metadata ``dcr.transcribed`` marks every file as a transcribed summary, not a measurement)
and DIR/<plan>.verdict.json. With ``--plan NAME --lock LOCK --data DIR`` it only writes the data of
one plan under an existing lock (then run ``dcr verdict --plan LOCK --data DIR --out V.json``).
The work is done by :mod:`analysis.seed_v3` (``run_example`` / ``ingest``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--published", required=True, type=Path, help="seed_v3_published.json")
    ap.add_argument("--out", type=Path, help="run the whole example into this folder")
    ap.add_argument("--plan", help="only ingest the data of this plan (see analysis.seed_v3.PLAN_NAMES)")
    ap.add_argument("--lock", type=Path, help="with --plan: the plan's lock file")
    ap.add_argument("--data", type=Path, help="with --plan: the measurement folder to write")
    a = ap.parse_args()
    from dcr.analysis.seed_v3 import ingest, run_example

    if a.out is not None:
        for name, v in run_example(a.out, a.published).items():
            print(f"{name}: " + ", ".join(f"{h} {lab}" for h, lab in v["summary"].items()))
        print(f"verdicts in {a.out}/<plan>.verdict.json")
        return
    if not (a.plan and a.lock and a.data):
        ap.error("give --out, or --plan with --lock and --data")
    raw = a.published.read_bytes()
    files = ingest(json.loads(raw), a.plan, a.lock, a.data, hashlib.sha256(raw).hexdigest())
    print(f"wrote {len(files)} part file(s) under {a.data}")


if __name__ == "__main__":
    main()
