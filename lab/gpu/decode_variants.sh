#!/usr/bin/env bash
# Kernel timelines of the decode op (graph replays, PDL on) for the current settings and a few variants,
# each run checking its selected sets against decode_reference first. From the repository root on the GPU:
#   source lab/gpu/env.sh; bash lab/gpu/decode_variants.sh OUTDIR
# Writes OUTDIR/variants.tgz (one file: the device tool returns a limited number of files).
set -u
OUT=${1:?usage: lab/gpu/decode_variants.sh OUTDIR}
mkdir -p "$OUT/v"
t() {  # name, then trace_decode arguments
  local name=$1; shift
  timeout 120 python3 lab/bench/trace_decode.py --pdl on --calls 20 --json "$OUT/v/$name.json" "$@" > "$OUT/v/$name.log" 2>&1
  echo "== $name ($*) rc=$?"; grep -E "sets vs|span|sample|score|resolve|attend|combine" "$OUT/v/$name.log" | grep -v GPU
}
t kvg_n32768_b4_base --b 4
t kvg_n32768_b1_base --b 1
t kvg_n131072_b4_base --n 131072 --b 4
t qh_n32768_b4_base --b 4 --selection query_head
tar czf "$OUT/variants.tgz" -C "$OUT" v && rm -r "$OUT/v"
