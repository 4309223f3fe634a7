"""Registers and spill stack of the Triton kernels, compiled for an H100/H200 (sm_90) on a machine
WITHOUT a GPU: Triton compiles to a cubin offline and its bundled cuobjdump reads the resource use.

    python scripts/kernel_resources.py            # every kernel of the decode op and the teacher-forced kernel

REG = registers per thread (255 is the maximum: more live values spill), STACK = bytes of spill
stack per thread (0 = no spills). The compiler here is the local Triton (CI's newest release), not
necessarily the GPU machine's, so treat the figures as indicative; the GPU's own figures come from
`dcr bench decode` / `dcr bench quality` (producers/kernels/diagnostics.py). Integer arguments are
compiled as i32 (strides that need i64 at run time add a few registers).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import warnings

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

warnings.filterwarnings("ignore")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def resources(fn, ptrs: dict, floats: set, constexprs: dict, num_warps: int, num_stages: int = 3) -> dict:
    """Compile ``fn`` for sm_90 and return {"REG": registers per thread, "STACK": spill bytes per thread}."""
    sig = {a: ptrs.get(a, "constexpr" if a in constexprs else "fp32" if a in floats else "i32") for a in fn.arg_names}
    kernel = triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {key: int(re.search(rf"\b{key}:(\d+)", out).group(1)) for key in ("REG", "STACK")}


def main() -> None:
    from producers.kernels import decode as dk
    from producers.kernels import teacher_forced_triton as tft

    bf, f32, i32 = "*bf16", "*fp32", "*i32"
    cases = []
    for cap in (0, 32, 128):
        for bm, bn, w in ((64, 32, 4), (64, 32, 8), (128, 64, 8)):
            cases.append((f"teacher-forced block {bm}x{bn}, {w} warps, collect_cap {cap}", tft._tf_topk_kernel,
                          dict(Q=bf, K=bf, V=bf, O=bf, SEL="*i8", ZQ=f32, STATS=i32, SCR_K=i32, SCR_I=i32),
                          {"scale_log2"},
                          dict(GROUP=4, KV_GROUP=False, HEAD_D=64, BLOCK_M=bm, BLOCK_N=bn, PREC="tf32",
                               WRITE_SEL=False, P_BF16=True, CAP=cap), w, 2))
    dec = dict(G=4, IEEE=False, D=64, CH=2048, BLOCK_N=128, BLOCK_M=16)
    sel_ptrs = dict(RS=f32, lengths_ptr=i32, thr_ptr=i32, passes_ptr=i32)
    cases += [
        ("decode score", dk._score_kernel, dict(Q=bf, K=bf, S=f32, R=f32, lengths_ptr=i32), set(),
         dict(dec, KV_GROUP=False), 4, 3),
        ("decode select (rows of 32K in registers)", dk._select_kernel, sel_ptrs, set(),
         dict(SAMP=256, BLOCK=32768, RESIDENT=True), 8, 3),
        ("decode select (rows of 32K in registers), 16 warps", dk._select_kernel, sel_ptrs, set(),
         dict(SAMP=256, BLOCK=32768, RESIDENT=True), 16, 3),
        ("decode select (rows of 8K in registers)", dk._select_kernel, sel_ptrs, set(),
         dict(SAMP=256, BLOCK=8192, RESIDENT=True), 8, 3),
        ("decode select (streamed, tiles of 4096)", dk._select_kernel, sel_ptrs, set(),
         dict(SAMP=256, BLOCK=4096, RESIDENT=False), 16, 3),
        ("decode attend (whole V tiles)", dk._attend_kernel, dict(S=f32, R=f32, V=bf, thr_ptr=i32, lengths_ptr=i32,
         Mp=f32, Lp=f32, Op=f32, MASK="*i8"), {"scale"}, dict(dec, KV_GROUP=False, WRITE_MASK=False, VMASK=False), 4, 3),
    ]
    print(f"Triton {triton.__version__}, target sm_90 (compiled offline, no GPU)")
    print("| kernel | REG / thread | spill STACK B / thread |")
    print("| --- | --- | --- |")
    for name, fn, ptrs, floats, constexprs, warps, stages in cases:
        try:
            r = resources(fn, ptrs, floats, constexprs, warps, stages)
            print(f"| {name} | {r['REG']} | {r['STACK']} |", flush=True)
        except Exception as exc:  # a kernel that does not compile is reported, not fatal
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]} | |", flush=True)


if __name__ == "__main__":
    main()
