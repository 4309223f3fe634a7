#!/usr/bin/env bash
# Every GPU-only test and every benchmark, on one H200, in one call of the device tool (< 10 min):
#   run(command="bash lab/gpu/checks.sh", carry=[".whl"])    (fetch .whl first: lab/gpu/fetch_wheels.sh)
# 1) correctness: all tests marked `gpu` (real shapes); 2) benchmarks (ratios measured in the same
# run): decode op at c = 0.15, its select stage alone, the quality forward at 32K (times the
# kernel's default against the other settings of bench_quality's sweep), the latency-hero plan on
# the random-weight preset.
# Logs go to $OUT (the device tool's folder) or /tmp/gpu_out; each step has its own time limit.
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
source lab/gpu/env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt"
timeout 320 python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/ > "$OUT/gpu_tests.log" 2>&1
status=$?
tail -3 "$OUT/gpu_tests.log"
timeout 90 python3 -m dcr.producers.bench_decode --c 0.15 --no-sweep --rounds 15 --json "$OUT/bench_decode.json" \
  > "$OUT/bench_decode.log" 2>&1
tail -11 "$OUT/bench_decode.log"
timeout 60 python3 lab/kernels/bench_select.py > "$OUT/bench_select.log" 2>&1
cut -c1-120 "$OUT/bench_select.log"
timeout 240 python3 -m dcr.producers.bench_quality --n 32768 --repeats 2 --json "$OUT/bench_quality.json" \
  > "$OUT/bench_quality.log" 2>&1
grep -E "kernel|forward|peak|passes|FAILED" "$OUT/bench_quality.log" | cut -c1-200
bash lab/gpu/latency.sh /tmp/latency_out > /dev/null 2>&1  # its Parquet parts stay there (too many files to return)
cp /tmp/latency_out/summary.txt "$OUT/latency_summary.txt"; cp /tmp/latency_out/verdict.log "$OUT/latency_verdict.log"
cp /tmp/latency_out/gpu_tests.log "$OUT/latency_gpu_tests.log"
grep -E "ratio" "$OUT/latency_summary.txt"; cat "$OUT/latency_verdict.log"
exit $status
