#!/usr/bin/env bash
# Nsight Compute profile of the decode op's sample, score, resolve and attend kernels
# (lab/kernels/profile_decode.py), on the device tool's machine (arguments: N, B, selection):
#   run(command="bash lab/kernels/gpu_profile_decode.sh 32768 4 kv_group", carry=[".whl"])
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
source lab/gpu/env.sh
N=${1:-32768}
B=${2:-4}
SEL=${3:-query_head}
# 2 calls x (sample, score, resolve, attend) = 8 launches; profile the second call
timeout 300 ncu --clock-control none --kernel-name regex:"_sample|_score|_resolve|_attend" --launch-skip 4 --launch-count 4 \
  --set full --import-source no -o "$OUT/decode_${N}_$B" python3 lab/kernels/profile_decode.py --n "$N" --b "$B" \
  --selection "$SEL" > "$OUT/ncu_run.log" 2>&1
tail -5 "$OUT/ncu_run.log"
ncu -i "$OUT/decode_${N}_$B.ncu-rep" --page details > "$OUT/details.txt" 2>&1
for k in _resolve _attend; do  # the instructions where each kernel's warps wait most
  ncu -i "$OUT/decode_${N}_$B.ncu-rep" --page source --csv --print-source sass --kernel-name regex:$k > "$OUT/source$k.csv" 2>&1
  echo "== $k"; python3 lab/kernels/ncu_top_stalls.py "$OUT/source$k.csv" --top 25 2>&1 | cut -c1-260
done
grep -E "^  _|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Issued Ipc|No Eligible|L2 Hit" "$OUT/details.txt" | head -120
