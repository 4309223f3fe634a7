#!/usr/bin/env bash
# Nsight Compute profile of one teacher-forced Top-K call (the kernels' warp stalls, per SASS
# instruction; lab/kernels/profile_tf.py), on the device tool's H200:
#   run(command="bash lab/kernels/gpu_profile_tf.sh 8192", carry=[".whl"])
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
source lab/gpu/env.sh
N=${1:-8192}
timeout 400 ncu --clock-control none --kernel-name regex:_tf_ --launch-skip 2 --launch-count 2 --set full \
  --import-source no -o "$OUT/tf_$N" python3 lab/kernels/profile_tf.py --n "$N" > "$OUT/ncu_run.log" 2>&1
tail -5 "$OUT/ncu_run.log"
ncu -i "$OUT/tf_$N.ncu-rep" --page details > "$OUT/details.txt" 2>&1
ncu -i "$OUT/tf_$N.ncu-rep" --page source --csv --print-source sass > "$OUT/sass.csv" 2>&1
grep -E -A3 "Warp Cycles|Issued Ipc|No Eligible|Achieved Occupancy|Registers Per|Stall|Theoretical Occ" "$OUT/details.txt" | head -80
ls -la "$OUT"
