"""Registers, spills and shared memory of the Triton kernels compiled so far in this process (GPU only).

``kernel_stats(fn, ...)`` reads each JIT function's compiled variants (one per specialization and
constexpr set) and returns one dict per variant: kernel name, its constexpr values (which variant
it is), registers per thread, spilled registers, warps, stages and shared memory in bytes. A kernel that spills or uses all 255
registers leaves few warps per SM: the first thing to look at when a kernel is slower than its
byte count predicts. Interpreted kernels (``TRITON_INTERPRET=1``) compile nothing: empty list.

``kernel_records(call)`` runs ``call()`` under torch.profiler and returns the GPU kernels it launched
(CUPTI: name, start and duration); ``kernel_times_ms(call)`` sums them per kernel name.
"""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path


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


def kernel_records(call) -> list[dict]:
    """The CUDA kernels ``call()`` launches, from CUPTI via torch.profiler: one dict per launch,
    {"name", "ts" (start, µs), "dur" (µs)}, in the profiler's order (CUDA GPU only). ``call`` is
    synchronized before the profile ends."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(Path(f.name).read_text()).get("traceEvents", [])
    return [{"name": e["name"], "ts": float(e["ts"]), "dur": float(e["dur"])}
            for e in events if e.get("cat") == "kernel"]


def kernel_times_ms(call, calls: int = 3) -> dict[str, float]:
    """GPU time of each kernel one ``call()`` launches, {kernel name: ms}: the median over ``calls``
    calls (after one warm-up) of each name's summed durations (:func:`kernel_records`) per call."""
    call()
    per_call: dict[str, list[float]] = {}
    for _ in range(calls):
        durations: dict[str, float] = {}
        for e in kernel_records(call):
            durations[e["name"]] = durations.get(e["name"], 0.0) + e["dur"] / 1e3
        for name, ms in durations.items():
            per_call.setdefault(name, []).append(ms)
    return {name: statistics.median(v) for name, v in per_call.items() if len(v) == calls}
