#!/usr/bin/env bash
# Decode op on the H200 (through the device tool, from the repository root):
#   run(command="bash lab/gpu/decode.sh [bench options...]", carry=[".whl"])
# 1) the whole tests/producers/test_decode_kernel.py on the GPU (real shapes included), 2) the benchmark.
# Logs go to $OUT (the device tool's folder) or /tmp/decode_out.
set -o pipefail
OUT=${OUT:-/tmp/decode_out}
mkdir -p "$OUT"
source lab/gpu/env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests/producers/test_decode_kernel.py -q -x -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m dcr.producers.bench_decode --json "$OUT/bench_decode.json" "$@" 2>&1 | tee "$OUT/bench_decode.log"
