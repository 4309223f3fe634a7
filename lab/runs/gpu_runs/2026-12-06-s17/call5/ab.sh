#!/usr/bin/env bash
# A/B of two versions of the teacher-forced kernel file in one call: the working tree ("new") and lab/gpu/_ab/old.py
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
source lab/gpu/env.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/producers/test_teacher_forced_kernel.py 2>&1 | tail -1
F=producers/kernels/teacher_forced_triton.py; cp $F /tmp/new_tft.py
for sel in query_head kv_group; do vs="new old"; [ $sel = query_head ] && vs="new old new old"; for v in $vs; do
  if [ $v = old ]; then cp lab/gpu/_ab/old.py $F; else cp /tmp/new_tft.py $F; fi
  timeout 150 python3 -m dcr.producers.bench_quality --n 32768 --repeats 1 --no-sweep --selection "$sel" 2>&1 \
    | tee -a "$OUT/bq_${sel}_$v.log" | grep -E "its kernels" | sed -E "s/.*(_tf_count_kernel [0-9.]+ ms), (_tf_attend_kernel [0-9.]+ ms)/$v $sel: \1 \2/"
done; done
cp /tmp/new_tft.py $F
