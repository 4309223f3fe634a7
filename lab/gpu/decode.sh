#!/usr/bin/env bash
# Decode op on the H200 (through the device `run` tool, from the repo root):
#   bash scripts/gpu_decode.sh [bench options...]
# 1) the whole tests/test_decode_kernel.py on the GPU (real shapes included), 2) the benchmark.
# Logs go to $OUT (the run tool's folder) or /tmp/decode_out.
set -o pipefail
OUT=${OUT:-/tmp/decode_out}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests/test_decode_kernel.py -q -x -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m dcr.producers.bench_decode --json "$OUT/bench_decode.json" "$@" 2>&1 | tee "$OUT/bench_decode.log"
