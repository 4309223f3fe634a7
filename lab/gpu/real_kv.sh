#!/usr/bin/env bash
# The decode op on real KV caches of SmolLM2-135M (lab/bench/real_kv_decode.py `time`), on the device tool's
# machine, from the repository root:
#   run(command="bash lab/gpu/real_kv.sh", carry=[".whl", ".carry/real_kv"])
# The capture file arrives as the carried path .carry/real_kv/smollm2-135m-realkv.pt (git-ignored; made here on
# the CPU by `python lab/bench/real_kv_decode.py capture`, 36 MiB: layers 0, 15, 29, W = 2 windows, N = 8192).
# For each captured layer and on random caches of the same shape: B = 2, 4, 8 (the windows tiled), both rules,
# c = 0.15: the op's sets checked against decode_reference, then topk_decode vs the best SDPA backend in CUDA
# graphs. Arguments, if any, are passed to `time` after the defaults (e.g. --c 0.05 0.15 0.30, --rounds 100).
# Logs and JSON under $OUT: gpu.txt, install.log, real_kv_time.{log,json}. The wheels the GPU image lacks
# travel in .whl/ (lab/gpu/fetch_wheels.sh).
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
CAPTURE=.carry/real_kv/smollm2-135m-realkv.pt
[ -f "$CAPTURE" ] || { echo "no $CAPTURE: carry it (carry=[\".whl\", \".carry/real_kv\"])"; exit 1; }
source lab/gpu/env.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
sha256sum "$CAPTURE" producers/kernels/decode.py | tee -a "$OUT/gpu.txt"
timeout 420 python3 lab/bench/real_kv_decode.py time --file "$CAPTURE" --repeat 1 2 4 --c 0.15 \
  --json "$OUT/real_kv_time.json" "$@" 2>&1 | tee "$OUT/real_kv_time.log" | tail -40
exit "${PIPESTATUS[0]}"
