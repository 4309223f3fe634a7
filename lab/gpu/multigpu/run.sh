#!/usr/bin/env bash
# 2-GPU sharding check on the device tool's nvidia-h200-x2, from the repository root:
#   run(kind="nvidia-h200-x2", command="bash lab/gpu/multigpu/run.sh", carry=[".whl"])
# Runs the quality producer on lab/gpu/multigpu/plan.lock.yaml twice: torchrun with 2 ranks (one
# GPU each) and 1 rank on GPU 0; then compares the two measurement sets (timings aside).
set -eo pipefail
OUT=${OUT:-/tmp/multigpu_out}
mkdir -p "$OUT"
source lab/gpu/env.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=index,name,driver_version --format=csv | tee "$OUT/gpus.txt"
LOCK=lab/gpu/multigpu/plan.lock.yaml
t0=$(date +%s)
torchrun --standalone --nproc-per-node 2 -m dcr.cli produce quality --plan $LOCK --out /tmp/two --no-progress 2>&1 | tee "$OUT/two.log"
t1=$(date +%s)
CUDA_VISIBLE_DEVICES=0 python3 -m dcr.cli produce quality --plan $LOCK --out /tmp/one --no-progress 2>&1 | tee "$OUT/one.log"
t2=$(date +%s)
echo "wall (model load included): 2 ranks $((t1 - t0)) s, 1 rank $((t2 - t1)) s" | tee "$OUT/wall.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/compare.txt"
import glob, json, numpy as np, pyarrow.parquet as pq
from dcr.prereg.measurements import read_metadata
def load(d):
    rows = {}
    for f in sorted(glob.glob(f"{d}/quality/part-*.parquet")):
        t = pq.read_table(f).to_pylist()[0]; m = read_metadata(f)
        rows[(t["window_index"], t["N"], t["coverage"])] = (t, m["environment"].get("gpu"))
    return rows
one, two = load("/tmp/one"), load("/tmp/two")
assert one.keys() == two.keys() and len(one) == 4, (one.keys(), two.keys())
worst = 0.0
for k in sorted(one):
    (a, ga), (b, gb) = one[k], two[k]
    diff = max(float(np.max(np.abs(np.asarray(a[c], float) - np.asarray(b[c], float)))) if a[c] is not None else 0.0
               for c in a if not isinstance(a[c], str))
    worst = max(worst, diff)
    print(k, f"max |1-rank - 2-rank| over columns = {diff:.3g}", f"dPPL% {a['delta_ppl_pct']:.5f} vs {b['delta_ppl_pct']:.5f}",
          f"gpu {ga} / {gb}")
print("measurement sets", "bit-identical" if worst == 0 else f"differ by at most {worst:.3g}", "(4 cells)")
PY
python3 -m dcr.cli verdict --plan $LOCK --data /tmp/two --out "$OUT/verdict.json" | tee "$OUT/verdict.txt"
