#!/usr/bin/env bash
# The GPU part of the SmolLM2-135M study, in one call of the device tool, from the repository root.
#
# The model file (98 MB) is larger than one call carries (64 MiB with the tree), so it travels in
# three parts made here with `split -b 34000000 -d -a 1 FILE .carry/smol.gguf.part`: two calls
# made back to back copy .carry/smol.gguf.part0 and .part1 to /tmp/smol/ (the machine keeps /tmp
# while it stays warm); this script takes part2 from the carried tree:
#   run(command="mkdir -p /tmp/smol && cp .carry/smol.gguf.part0 /tmp/smol/", carry=[".carry/smol.gguf.part0"])
#   run(command="cp .carry/smol.gguf.part1 /tmp/smol/", carry=[".carry/smol.gguf.part1"])
#   run(command="bash examples/smollm2/run_gpu.sh", carry=[".carry/smol.gguf.part2", ".whl"], timeout_s=600)
#
# Then: the whole file's sha256 is checked, `dcr model fetch --gguf` converts it, the causal pilot
# runs under version 1 of the plan, examples/smollm2/amend_after_pilot.py amends the plan by its
# registered rule, and everything is measured under the amendment: quality at N = 2048, 4096, 8192
# (every arm, Triton kernel), the random spectrum, the causal test. Quality at N = 1024 is the CPU's
# part (examples/smollm2/README.md); it also runs here, into gpu-1024/, to compare the Triton kernel
# with the CPU's reference (not registered data). Everything comes back as one tarball in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/smollm2-out}
mkdir -p "$OUT"
source lab/gpu/env.sh || exit 1
export DCR_CACHE_DIR=/tmp/dcr-cache
D=/tmp/smollm2
rm -rf "$D" && mkdir -p "$D"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

cat /tmp/smol/smol.gguf.part0 /tmp/smol/smol.gguf.part1 .carry/smol.gguf.part2 > /tmp/smol.gguf || exit 1
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/smol.gguf" | sha256sum -c - || exit 1

step() {  # step NAME COMMAND...: run, time and log one step; a failed step does not stop the others
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$D/$name.log" 2>&1
  local rc=$?
  printf '%-22s rc=%d  %5d s\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$D/steps.txt"
  tail -3 "$D/$name.log" | cut -c1-200
  return $rc
}

V1=examples/smollm2/smollm2.lock.yaml
V2=examples/smollm2/smollm2-v2.lock.yaml
step fetch python3 -m dcr.cli model fetch smollm2-135m --gguf /tmp/smol.gguf || exit 1
step pilot python3 -m dcr.cli produce causal --plan $V1 --out "$D/pilot" --pilot --no-progress || exit 1
step amend python3 examples/smollm2/amend_after_pilot.py --pilot "$D/pilot" || exit 1
cp examples/smollm2/smollm2-v2.yaml examples/smollm2/smollm2-v2.lock.yaml examples/smollm2/pilot-summary.json "$D/"
step quality python3 -m dcr.cli produce quality --plan $V2 --out "$D/data" --where N=2048,4096,8192 --no-progress
step random_spectrum python3 -m dcr.cli produce random-spectrum --plan $V2 --out "$D/data" --no-progress
step causal python3 -m dcr.cli produce causal --plan $V2 --out "$D/data" --no-progress
step quality_gpu_1024 python3 -m dcr.cli produce quality --plan $V2 --out "$D/gpu-1024" --where N=1024 --no-progress
tar -czf "$OUT/smollm2-gpu.tar.gz" -C /tmp smollm2
if [ "$(stat -c %s "$OUT/smollm2-gpu.tar.gz")" -gt 15000000 ]; then  # a returned file is at most 16 MB
  split -b 15000000 -d "$OUT/smollm2-gpu.tar.gz" "$OUT/smollm2-gpu.tar.gz.part" && rm "$OUT/smollm2-gpu.tar.gz"
fi
ls -la "$OUT"
cat "$D/steps.txt"
