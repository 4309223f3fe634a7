#!/usr/bin/env bash
# One GPU round of the teacher-forced kernel on the device tool's machine, from the repository root:
#   run(command="bash lab/gpu/tf_round.sh", carry=[".whl"])
# 1. the kernel's GPU tests (exact sets at real shapes), 2. `dcr bench quality` at N = 32K, both rules
# (the dense and the Top-K forward of the random-weight Llama-3.2-1B, the one-call times and the counting
# passes). Arguments, if any, are passed to both benchmarks (e.g. --no-sweep). Logs and JSON under $OUT.
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
source lab/gpu/env.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/producers/test_teacher_forced_kernel.py 2>&1 \
  | tee "$OUT/tf_tests.log" | tail -3
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "GPU tests failed: no bench"; exit 1; }
for sel in query_head kv_group; do
  timeout 200 python3 -m dcr.producers.bench_quality --n 32768 --repeats 2 --selection "$sel" \
    --json "$OUT/bench_quality_$sel.json" "$@" 2>&1 | tee "$OUT/bench_quality_$sel.log" \
    | grep -E "ratio|one attention" | head -4
done
