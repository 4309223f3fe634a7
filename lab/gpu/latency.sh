#!/usr/bin/env bash
# Latency producer on one GPU. Run from the repository root on the GPU machine:
#   source lab/gpu/env.sh; bash lab/gpu/latency.sh OUTDIR
# 1. locks a copy of prereg/registrations/latency-hero-v3.yaml with the model swapped for the
#    random-weight preset of the exact Llama-3.2-1B architecture (no hub weights can be fetched)
#    and the corpus for the shipped held-out text (byte tokens): same cells, same protocol;
# 2. `dcr produce latency` on it, then `dcr verdict` (the registered decision rules);
# 3. the tests of tests/producers/test_latency.py (its GPU tests included).
set -u
OUT=${1:?usage: lab/gpu/latency.sh OUTDIR}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit,temperature.gpu \
  --format=csv > "$OUT/nvidia_smi.csv" 2>&1
python3 - "$OUT" <<'EOF'
import sys, yaml
from pathlib import Path
from dcr.prereg.lock import lock_plan
out = Path(sys.argv[1])
plan = yaml.safe_load(Path("prereg/registrations/latency-hero-v3.yaml").read_text())
plan["amends"] = None
plan["study"]["id"] = "latency-hero-preset"
plan["study"]["description"] += (" This copy: model = random-weight preset llama-3.2-1b-random (exact "
                                 "architecture, seed 0), corpus = the shipped held-out text (byte tokens).")
plan["model"] = {"source": "preset", "id": "llama-3.2-1b-random", "revision": None, "dtype": "bfloat16",
                 "preset_seed": 0}
plan["corpus"] = {"name": "reference-model-heldout", "source": "shipped", "split": None, "path": None,
                  "sha256": None}
p = out / "latency-hero-preset.yaml"
p.write_text(yaml.safe_dump(plan, sort_keys=False, allow_unicode=True))
lock, sha, _ = lock_plan(p)
print("locked", lock, sha)
EOF
LOCK="$OUT/latency-hero-preset.lock.yaml"
( time timeout 330 python3 -m dcr.cli produce latency --plan "$LOCK" --out "$OUT/data" --device cuda --no-progress ) \
  > "$OUT/produce.log" 2>&1
echo "produce rc=$?" >> "$OUT/produce.log"
timeout 60 python3 -m dcr.cli verdict --plan "$LOCK" --data "$OUT/data" --out "$OUT/verdict.json" > "$OUT/verdict.log" 2>&1
python3 - "$OUT" <<'EOF' > "$OUT/summary.txt" 2>&1
import json, sys
from pathlib import Path
import pandas as pd, pyarrow.dataset as ds, pyarrow.parquet as pq
out = Path(sys.argv[1])
df = ds.dataset(out / "data" / "latency").to_table().to_pandas()
g = df.groupby(["level", "N", "B", "coverage", "session", "arm"]).ms.median().unstack("arm")
sparse_arms = [a for a in g.columns if a != "dense"]
for a in sparse_arms:
    g[f"speedup_{a}"] = g["dense"] / g[a]
print(g.to_string())
a = df.groupby(["level", "arm"]).ms.agg(["median", "mean", "min", "max", "count"])
print(a.to_string())
for lvl in ("op", "model"):
    d = df[df.level == lvl]
    for arm in sparse_arms:
        print(lvl, arm, "ratio of medians dense/sparse:", d[d.arm == "dense"].ms.median() / d[d.arm == arm].ms.median())
for p in sorted((out / "data" / "latency").glob("part-*.parquet")):
    m = json.loads(pq.read_schema(p).metadata[b"dcr.latency"])
    c = json.loads(pq.read_schema(p).metadata[b"dcr.cell"])
    print(c, m["dense_backend"], m["sdpa_probe_ms"], m["checks"], m["gpu_before"].get("clocks.sm"),
          m["gpu_after"].get("clocks.sm"), m["gpu_before"].get("temperature.gpu"))
EOF
( time timeout 100 python3 -m pytest tests/producers/test_latency.py -q -rs ) > "$OUT/gpu_tests.log" 2>&1
cat "$OUT/produce.log" "$OUT/summary.txt" "$OUT/verdict.log" | tail -c 6000
tail -5 "$OUT/gpu_tests.log"
