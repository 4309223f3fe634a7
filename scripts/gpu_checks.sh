#!/usr/bin/env bash
# Every GPU-only test and the benchmarks, on one H200, in one call of the device tool:
#   run(command="bash scripts/gpu_checks.sh", carry=[".whl"])    (fetch .whl first: scripts/fetch_gpu_wheels.sh)
# 1) correctness: all tests marked `gpu` (real shapes), 2) benchmarks (ratios measured in the same run).
# Logs go to $OUT (the device tool's folder) or /tmp/gpu_out.
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
source scripts/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu_tests.log"
status=$?
python3 -m producers.bench_decode --c 0.15 --no-sweep --json "$OUT/bench_decode.json" 2>&1 | tee "$OUT/bench_decode.log"
python3 -c 'from dcr.cli import main; main()' bench quality 2>&1 | tee "$OUT/bench_quality.log"
exit $status
