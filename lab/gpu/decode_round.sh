#!/usr/bin/env bash
# One GPU round of the decode op (issue 21) on the device tool's machine, from the repository root:
#   run(command="bash lab/gpu/decode_round.sh", carry=[".whl"], kind="nvidia-h200")
# 1. the decode op's GPU tests (stops on the first failure), 2. `dcr bench decode` at N in {32K, 128K},
# B in {1, 4, 8}, c = 0.15, both rules (arguments, if any, replace that grid). Logs and JSON under $OUT.
# The wheels the GPU image lacks travel in .whl/ (git-ignored; fetch them here with the pip download
# command of the device README: pydantic, pydantic_core, typing_inspection, annotated_types, rfc8785,
# pingouin, pandas_flavor, setuptools >= 77 for the editable install).
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
source lab/gpu/env.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/producers/test_decode_kernel.py 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "GPU tests failed: no bench"; exit 1; }
# the grid: N in {32K, 128K}, B in {1, 4, 8}, c = 0.15, unless arguments are given (they replace it)
GRID=(--n 32768 --n 131072 --b 4 --b 1 --b 8 --c 0.15 --rounds 10)
[ "$#" -gt 0 ] && GRID=("$@")
timeout 240 python3 -m dcr.producers.bench_decode "${GRID[@]}" --json "$OUT/bench_decode.json" 2>&1 | tee "$OUT/bench_decode.log" | grep -v "^    " | tail -60
