#!/usr/bin/env bash
# A/B of the teacher-forced kernel on the device tool's machine, in one call, from the repository root:
#   run(command="bash lab/gpu/tf_ab.sh .carry/old_tft.py [N]", carry=[".whl", ".carry/old_tft.py"])
# "new" = the working tree's producers/kernels/teacher_forced_triton.py, "old" = a copy of that file from
# another commit in the git-ignored .carry/ (so it cannot be committed by mistake; it travels because the call
# carries it), e.g. `git show main:producers/kernels/teacher_forced_triton.py > .carry/old_tft.py`.
# First the teacher-forced GPU tests on the new code (no timing if they fail), then `dcr bench quality` at N
# (default 32768) for each rule, new and old alternating, twice each.
# Logs under $OUT; the line per run names the version, the rule and the two kernels' CUPTI times.
set -o pipefail
OLD=${1:?usage: tf_ab.sh OLD.py [N]}
N=${2:-32768}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
source lab/gpu/env.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/producers/test_teacher_forced_kernel.py 2>&1 \
  | tee "$OUT/tf_tests.log" | tail -1
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "GPU tests failed: no timing"; exit 1; }
F=producers/kernels/teacher_forced_triton.py
cp "$F" /tmp/new_tft.py
trap 'cp /tmp/new_tft.py "$F"' EXIT
for sel in query_head kv_group; do
  for v in new old new old; do
    if [ "$v" = old ]; then cp "$OLD" "$F"; else cp /tmp/new_tft.py "$F"; fi
    timeout 150 python3 -m dcr.producers.bench_quality --n "$N" --repeats 1 --no-sweep --selection "$sel" 2>&1 \
      | tee -a "$OUT/bq_${sel}_$v.log" | grep -E "its kernels" \
      | sed -E "s/.*(_tf_count_kernel [0-9.]+ ms), (_tf_attend_kernel [0-9.]+ ms)/$v $sel: \1, \2/"
  done
done
