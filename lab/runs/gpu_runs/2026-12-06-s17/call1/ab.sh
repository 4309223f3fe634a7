#!/usr/bin/env bash
# session 17 A/B: the word lists (working tree) against the round lists (HEAD), one call, interleaved by rule
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
source lab/gpu/env.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
timeout 200 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/producers/test_teacher_forced_kernel.py 2>&1 \
  | tee "$OUT/tf_tests.log" | tail -3
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "GPU tests failed: no bench"; exit 1; }
F=producers/kernels/teacher_forced_triton.py
cp $F /tmp/new_tft.py
for sel in query_head kv_group; do
  for v in new old; do
    if [ $v = old ]; then cp lab/gpu/_old/teacher_forced_triton.py $F; else cp /tmp/new_tft.py $F; fi
    timeout 200 python3 -m dcr.producers.bench_quality --n 32768 --repeats 2 --no-sweep --selection "$sel" \
      --json "$OUT/bq_${sel}_$v.json" 2>&1 | tee "$OUT/bq_${sel}_$v.log" | grep -E "ratio|its kernels" | sed "s/^/$v $sel: /"
  done
done
cp /tmp/new_tft.py $F
