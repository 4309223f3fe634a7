"""Registers and spill stack of the Triton kernels, compiled for an H100/H200 (sm_90) on a machine
WITHOUT a GPU: Triton compiles to a cubin offline and its bundled cuobjdump reads the resource use.

    python lab/kernels/kernel_resources.py            # every kernel of the decode op and the teacher-forced kernel
    python lab/kernels/kernel_resources.py --loops    # instructions per iteration of each loop of the
                                                      # teacher-forced kernels (their default tile, cap 32),
                                                      # with the source function and line of its loop statement
    python lab/kernels/kernel_resources.py --decode   # the decode kernels alone, with their loops

To compile with the GPU machine's Triton (3.6.0) instead, install it in a separate venv
(`python3 -m venv /tmp/t36 && /tmp/t36/bin/pip install triton==3.6.0 numpy pyyaml && /tmp/t36/bin/pip
install --no-deps -e .`) and run `/tmp/t36/bin/python lab/kernels/kernel_resources.py`: its registers and
spill stacks equal the GPU's own (checked on 2026-12-06: the teacher-forced counting kernels at 226 and
255 registers, the latter with the 176-byte stack the GPU reported as 44 spilled registers).

REG = registers per thread (255 is the maximum: more live values spill), STACK = bytes of spill
stack per thread (0 = no spills). The compiler here is the local Triton (CI's newest release), not
necessarily the GPU machine's, so treat the figures as indicative; the GPU's own figures come from
`dcr bench decode` / `dcr bench quality` (producers/kernels/diagnostics.py). Integer arguments are
compiled as i32 (strides that need i64 at run time add a few registers). Pointers and integer
arguments are compiled as divisible by 16, as Triton specializes them at run time (name an argument
in ``not_aligned`` of :func:`resources` to compile it without, e.g. N = 1000 in a test). With that, the shared memory matches
the GPU's own figures exactly (57,344 B for the 64 x 32 / 3-stage teacher-forced tile; 253,952 B for
a KV-group launch with N = 1,000, which the H200 refuses: its limit is 232,448 B).
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
import warnings

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

warnings.filterwarnings("ignore")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


# unit strides of the last dimension, which Triton specializes at run time (the GPU's kernel stats list them)
UNIT = dict(sqd=1, skd=1, svd=1, sod=1)
TF_COUNT_PTRS = dict(Q="*bf16", K="*bf16", ZQ="*fp32", STATS="*i32", STATE="*i32")
TF_ATTEND_PTRS = dict(Q="*bf16", K="*bf16", V="*bf16", O="*bf16", SEL="*i8", STATS="*i32",
                      STATE="*i32", SCR_P="*i64")


def _compile(fn, ptrs: dict, floats: set, constexprs: dict, num_warps: int, num_stages: int,
             not_aligned: frozenset = frozenset()):
    """Compile ``fn`` for sm_90 (no GPU needed); returns Triton's compiled kernel."""
    sig = {a: ptrs.get(a, "constexpr" if a in constexprs else "fp32" if a in floats else "i32") for a in fn.arg_names}
    # as Triton specializes at run time: pointers 16-byte aligned, integer arguments (strides, lengths)
    # divisible by 16, except the ones named in ``constexprs`` (e.g. unit strides)
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if a not in constexprs and a not in floats and a not in not_aligned}
    return triton.compile(ASTSource(fn, sig, constexprs=constexprs, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _dump(fn, ptrs: dict, floats: set, constexprs: dict, num_warps: int, num_stages: int, tool: str, flag: str,
          kernel=None) -> str:
    """Compile ``fn`` for sm_90 and return ``<tool> <flag> cubin`` (Triton's bundled cuobjdump or nvdisasm)."""
    kernel = kernel or _compile(fn, ptrs, floats, constexprs, num_warps, num_stages)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
        return subprocess.run([path, *([flag] if flag else []), f.name], capture_output=True, text=True, check=True).stdout


def resources(fn, ptrs: dict, floats: set, constexprs: dict, num_warps: int, num_stages: int = 3,
              not_aligned: frozenset = frozenset(), kernel=None) -> dict:
    """Compile ``fn`` for sm_90 (or take ``kernel``, compiled already) and return {"REG": registers per
    thread, "STACK": spill bytes per thread, "SHARED": bytes of shared memory per program (the H100/H200
    limit is 232,448)}."""
    kernel = kernel or _compile(fn, ptrs, floats, constexprs, num_warps, num_stages, frozenset(not_aligned))
    out = _dump(fn, ptrs, floats, constexprs, num_warps, num_stages, "cuobjdump", "--dump-resource-usage", kernel)
    res = {key: int(re.search(rf"\b{key}:(\d+)", out).group(1)) for key in ("REG", "STACK")}
    return {**res, "SHARED": int(kernel.metadata.shared)}


def source_of_loops(sass: str, module_file: str) -> dict[int, str]:
    """For an ``nvdisasm -g`` listing: {loop end address: "function:line"}, the function of ``module_file``
    (and the line) that the loop's backward branch is attributed to, i.e. the loop statement in the source."""
    with open(module_file) as f:
        tree = ast.parse(f.read())
    funcs = [(f.lineno, f.end_lineno, f.name) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)]
    where, cur = {}, None
    for line in sass.splitlines():
        m = re.search(r'//## File "(.*?)", line (\d+)', line)
        if m:
            cur = int(m.group(2)) if os.path.samefile(m.group(1), module_file) else None
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+[@A-Z]", line)
        if m and cur is not None:
            where[int(m.group(1), 16)] = cur
    out = {}
    for _a, b, _n, _mma in loops(sass):
        if b in where:
            inner = min((f for f in funcs if f[0] <= where[b] <= f[1]), key=lambda f: f[1] - f[0], default=None)
            out[b] = f"{inner[2] if inner else '?'}:{where[b]}"
    return out


def loops(sass: str) -> list[tuple[int, int, int, int]]:
    """(start, end address, instructions, tensor-core MMAs) of every loop (a backward branch to a label)
    of an nvdisasm listing: the static size of one iteration; a loop with a branch inside counts both sides."""
    ins, labels, pending = [], {}, []
    for line in sass.splitlines():
        m = re.match(r"\s*\.(L_x_\d+):", line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+([@A-Z].*?)\s*;", line)
        if m:
            addr = int(m.group(1), 16)
            ins.append((addr, m.group(2)))
            labels.update({name: addr for name in pending})
            pending = []
    out = []
    for addr, text in ins:
        m = re.search(r"BRA\s+`\(\.(L_x_\d+)\)", text)
        if m and labels.get(m.group(1), addr) < addr:
            body = [t for a, t in ins if labels[m.group(1)] <= a <= addr]
            out.append((labels[m.group(1)], addr, len(body), sum("HGMMA" in t for t in body)))
    return out


def decode_cases(chunk: int = 2048, block_n: int = 128, attend_block: int = 128) -> list[tuple]:
    """(name, kernel, pointers, floats, constexprs, warps, stages) of every decode kernel at Llama-3.2-1B
    shapes (group 4, D 64, bf16) and the workspace's default settings for N = 32K."""
    from dcr.producers.kernels import decode as dk

    bf, f32, i32 = "*bf16", "*fp32", "*i32"
    shape = dict(G=4, IEEE=False, D=64, BLOCK_M=16)
    band = dict(band_ptr=f32, nabove_ptr=i32, ncand_ptr=i32)
    cand = dict(cand_s=f32, cand_i=i32)
    cases = []
    for kv in (False, True):
        rule = "kv_group" if kv else "query_head"
        cases += [
            (f"decode sample, {rule}, M 1024", dk._sample_kernel, dict(Q=bf, K=bf, SAMP_S=f32, **band, lengths_ptr=i32),
             set(), dict(shape, KV_GROUP=kv, M=1024, TS=dk._SAMPLE_TILE, CAP=4096, PDL=True), 8, 3),
            (f"decode score, {rule}", dk._score_kernel, dict(Q=bf, K=bf, S=f32, R=f32, **band, **cand, lengths_ptr=i32),
             set(), dict(shape, KV_GROUP=kv, GP=4, CH=chunk, BLOCK_N=block_n, BLOCK_B=min(chunk, dk._BAND_BLOCK), CAP=4096,
                  PDL=True), 4, 3),
        ]
        cases.append((f"decode attend, {rule}", dk._attend_kernel,
                      dict(Q=bf, K=bf, V=bf, S=f32, R=f32, IDX=i32, thr_ptr=i32, lengths_ptr=i32, Mp=f32, Lp=f32,
                           Op=f32, MASK="*i8"), {"scale"},
                      dict(shape, KV_GROUP=kv, CH=chunk, BLOCK_N=attend_block, BLOCK_C=min(chunk, dk._COMPACT_BLOCK),
                           WRITE_MASK=False, PDL=True), 4, 3))
    res_ptrs = dict(RS=f32, **band, **cand, lengths_ptr=i32, thr_ptr=i32, passes_ptr=i32, path_ptr=i32)
    for cap, warps in ((4096, 8), (8192, 16)):
        cases.append((f"decode resolve, CAP {cap}", dk._resolve_kernel, res_ptrs, set(),
                      dict(SAMP=256, CAP=cap, BLOCK=4096, PDL=True), warps, 3))
    return cases


def main() -> None:
    from dcr.producers.bench_quality import CONFIGS
    from dcr.producers.kernels import teacher_forced_triton as tft

    cases = []
    # (block_m, block_n, warps, stages, collect_cap): bench_quality's sweep, then cap 0
    tiles = [*dict.fromkeys(c[:5] for c in CONFIGS), (64, 64, 4, 2, 0)]  # compiled without register caps
    for kv_group in (False, True):
        for bm, bn, w, st, cap in tiles:
            name = f"{'kv_group' if kv_group else 'query_head'} {bm}x{bn}, {w} warps, {st} stages, collect_cap {cap}"
            shape = dict(GROUP=4, KV_GROUP=kv_group, HEAD_D=64, BLOCK_M=bm, BLOCK_N=bn,
                         PREC="tf32", CAP=cap, **UNIT)
            cases.append((f"teacher-forced count {name}", tft._tf_count_kernel, TF_COUNT_PTRS, set(),
                          {k: v for k, v in shape.items() if k not in ("svd", "sod")}, w, st))
            cases.append((f"teacher-forced attend {name}", tft._tf_attend_kernel, TF_ATTEND_PTRS, {"scale_log2"},
                          dict(shape, WRITE_SEL=False, P_BF16=True), w, st))
    cases += decode_cases()
    print(f"Triton {triton.__version__}, target sm_90 (compiled offline, no GPU)")
    print("| kernel | REG / thread | spill STACK B / thread | shared B (limit 232,448) |")
    print("| --- | --- | --- | --- |")
    for name, fn, ptrs, floats, constexprs, warps, stages in cases:
        try:
            r = resources(fn, ptrs, floats, constexprs, warps, stages)
            over = " **over the limit**" if r["SHARED"] > 232448 else ""
            print(f"| {name} | {r['REG']} | {r['STACK']} | {r['SHARED']}{over} |", flush=True)
        except Exception as exc:  # a kernel that does not compile is reported, not fatal
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]} | | |", flush=True)


def main_loops() -> None:
    from dcr.producers.bench_quality import CONFIGS
    from dcr.producers.kernels import teacher_forced_triton as tft

    bm, bn, w, st, cap = CONFIGS[0][:5]  # the kernels' default tile
    print(f"Triton {triton.__version__}, sm_90, teacher-forced kernels {bm} x {bn}, {w} warps, {st} stages, cap {cap}, "
          "group 4")
    for kv_group in (False, True):
        shape = dict(GROUP=4, KV_GROUP=kv_group, HEAD_D=64, BLOCK_M=bm, BLOCK_N=bn, PREC="tf32", CAP=cap)
        for fn, ptrs, floats, cx in (
                (tft._tf_count_kernel, TF_COUNT_PTRS, set(), dict(shape, sqd=1, skd=1)),
                (tft._tf_attend_kernel, TF_ATTEND_PTRS, {"scale_log2"}, dict(shape, WRITE_SEL=False, P_BF16=True, **UNIT))):
            _print_loops(fn, ptrs, floats, cx, w, st, "kv_group" if kv_group else "query_head")


def _print_loops(fn, ptrs, floats, cx, w, st, rule) -> None:
    """Registers, spill stack and instructions per loop iteration of one compiled teacher-forced kernel."""
    kernel = _compile(fn, ptrs, floats, cx, w, st)
    sass = _dump(fn, ptrs, floats, cx, w, st, "nvdisasm", "-g", kernel)
    src = source_of_loops(sass, fn.fn.__code__.co_filename)
    r = resources(fn, ptrs, floats, cx, w, st, kernel=kernel)
    print(f"\n{fn.__name__} ({rule}): {r['REG']} registers, {r['STACK']} B spill stack per thread")
    print("| loop (SASS addresses) | source (function:line) | instructions per iteration | tensor-core MMAs | global loads | spill loads / stores |")
    print("| --- | --- | --- | --- | --- | --- |")
    body = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]+)\*/\s+([@A-Z][^;]*);", sass)]
    for a, b, n, mma in loops(sass):
        if n > 40:
            ldl = sum("LDL" in t for ad, t in body if a <= ad <= b)
            stl = sum("STL" in t for ad, t in body if a <= ad <= b)
            ldg = sum(t.split()[1 if t.startswith("@") else 0].startswith("LDG") for ad, t in body if a <= ad <= b)
            print(f"| {a:#x}-{b:#x} | {src.get(b, '?')} | {n} | {mma} | {ldg} | {ldl} / {stl} |")


def main_decode() -> None:
    """Resources and loops of the decode kernels alone: instructions, global loads (LDG), asynchronous
    copies (LDGSTS) and atomics (RED / ATOM) per iteration of each loop."""
    print(f"Triton {triton.__version__}, sm_90, decode kernels (Llama-3.2-1B shapes, N = 32K defaults)")
    for name, fn, ptrs, floats, cx, w, st in decode_cases():
        kernel = _compile(fn, ptrs, floats, cx, w, st)
        sass = _dump(fn, ptrs, floats, cx, w, st, "nvdisasm", "-g", kernel)
        src = source_of_loops(sass, fn.fn.__code__.co_filename)
        r = resources(fn, ptrs, floats, cx, w, st, kernel=kernel)
        body = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]+)\*/\s+([@A-Z][^;]*);", sass)]
        print(f"\n{name}: {r['REG']} registers, {r['STACK']} B spill stack, {r['SHARED']} B shared, "
              f"{len(body)} instructions")
        for a, b, n, mma in loops(sass):
            if n > 40:
                ops = [t.split()[1 if t.startswith("@") else 0].split(".")[0] for ad, t in body if a <= ad <= b]
                count = {op: ops.count(op) for op in ("HMMA", "HGMMA", "LDG", "LDGSTS", "RED", "ATOMG", "BAR", "SHFL", "STG", "STS", "LDS")}
                print(f"  loop {a:#x}-{b:#x} ({src.get(b, '?')}): {n} instructions, "
                      + ", ".join(f"{k} {v}" for k, v in count.items() if v))


if __name__ == "__main__":
    if "--loops" in sys.argv[1:]:
        main_loops()
    elif "--decode" in sys.argv[1:]:
        main_decode()
    else:
        main()
