"""Registers, spills and shared memory of the Triton kernels compiled so far in this process (GPU only).

``kernel_stats(fn, ...)`` reads each JIT function's compiled variants (one per specialization and
constexpr set) and returns one dict per variant: kernel name, its constexpr values (which variant
it is), registers per thread, spilled registers, warps, stages and shared memory in bytes. A kernel that spills or uses all 255
registers leaves few warps per SM: the first thing to look at when a kernel is slower than its
byte count predicts. Interpreted kernels (``TRITON_INTERPRET=1``) compile nothing: empty list.
"""
from __future__ import annotations


def _constexprs(fn, kernel) -> dict:
    """{name: value} of the variant's compile-time constants (ASTSource.constants: {(arg index,): value})."""
    names = list(getattr(fn, "arg_names", []))
    out = {}
    for key, value in getattr(getattr(kernel, "src", None), "constants", {}).items():
        i = key[0] if isinstance(key, tuple) and len(key) == 1 else key
        if isinstance(i, int) and i < len(names) and isinstance(value, (bool, int, float, str)):
            out[names[i]] = value
    return out


def kernel_stats(*fns) -> list[dict]:
    """One dict per compiled variant of each Triton JIT function in ``fns`` (empty when none)."""
    rows = []
    for fn in fns:
        for cache in getattr(fn, "device_caches", {}).values():
            kernels = cache[0] if isinstance(cache, tuple) else cache
            for kernel in kernels.values():
                meta = getattr(kernel, "metadata", None)
                rows.append({
                    "kernel": getattr(kernel, "name", getattr(fn, "__name__", "?")),
                    "constexprs": _constexprs(fn, kernel),
                    "registers": getattr(kernel, "n_regs", None),
                    "spills": getattr(kernel, "n_spills", None),
                    "warps": getattr(meta, "num_warps", None),
                    "stages": getattr(meta, "num_stages", None),
                    "shared_bytes": getattr(meta, "shared", None),
                })
    return rows


def format_stats(rows: list[dict]) -> str:
    """One line per compiled variant, for benchmark logs."""
    return "\n".join(f"    {r['kernel']}: {r['registers']} registers/thread, {r['spills']} spilled, "
                     f"{r['warps']} warps, {r['stages']} stages, {r['shared_bytes']} B shared"
                     + (" | " + " ".join(f"{k}={v}" for k, v in r["constexprs"].items()) if r.get("constexprs") else "")
                     for r in rows)
