"""Kernel timeline of the decode op on a GPU: when each of its five launches (sample, score, resolve,
attend, combine) starts and ends within one call, from CUPTI's kernel records (torch.profiler), so
that the gaps between launches, and any overlap under programmatic dependent launch, can be seen.

    python3 lab/bench/trace_decode.py --n 32768 --b 4 [--selection kv_group] [--pdl both] [--calls 20]
        [--eager] [--json OUT/trace_decode.json] [--ws select_warps=8] [--const _COMBINE_BLOCK=64]

Randn bf16 inputs at Llama-3.2-1B shapes (32 query heads, 8 KV heads, head_dim 64), c = 0.15, k_min 64,
every row at full length; `calls` replays of a CUDA graph of one call (as `dcr bench decode` times it; `--eager`:
eager calls instead, whose gaps include the Python launch cost) after 3 warm-up calls. Prints, per setting of
dependent launch, the median over calls of each kernel's start (µs after the call's first kernel
started), its duration and its gap to the previous kernel's end (negative: it started before that one
ended). CUPTI times a kernel from its first block's start to its last block's end.

Variants: ``--ws NAME=INT`` passes a DecodeWorkspace setting, ``--const NAME=INT`` sets a module constant
of ``producers.kernels.decode`` (e.g. ``_SAMPLE_TILE``, ``_COMBINE_BLOCK``) before the first call. Each
run first checks the op's selected sets against ``decode_reference`` (fp32): set sizes equal, and the keys
that differ (fp32 sums in another order can swap near-equal keys at the boundary) all within 1e-5 of the
largest |score| from the boundary (``decode_set_differences``, as the CPU tests check).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

STAGES = ("sample", "score", "resolve", "attend", "combine")


def timeline(events: list[dict]) -> list[dict]:
    """Calls of the op from chrome-trace kernel events ({"name", "ts", "dur"}, µs): the events whose
    name holds ``_<stage>_kernel``, in start order, cut into runs of the five stages in order. Returns
    one dict per complete call: {stage: (start after the call's first start, duration, gap to the
    previous stage's end)}; events of other kernels are ignored, incomplete runs dropped."""
    marked = []
    for e in events:
        stage = next((s for s in STAGES if f"_{s}_kernel" in e["name"]), None)
        if stage is not None:
            marked.append((float(e["ts"]), float(e["dur"]), stage))
    marked.sort()
    calls, run = [], []
    for ts, dur, stage in marked:
        if stage != STAGES[len(run)]:
            run = []
            if stage != STAGES[0]:
                continue
        run.append((ts, dur))
        if len(run) == len(STAGES):
            t0 = run[0][0]
            call, prev_end = {}, None
            for s, (ts_s, dur_s) in zip(STAGES, run):
                call[s] = (ts_s - t0, dur_s, None if prev_end is None else ts_s - prev_end)
                prev_end = ts_s + dur_s
            calls.append(call)
            run = []
    return calls


def summary(calls: list[dict]) -> dict:
    """Median over calls of each stage's (start, duration, gap), and of the call's span (µs)."""
    out = {}
    for s in STAGES:
        start, dur, gap = zip(*(c[s] for c in calls))
        out[s] = {"start_us": statistics.median(start), "dur_us": statistics.median(dur),
                  "gap_us": None if gap[0] is None else statistics.median(gap)}
    out["span_us"] = statistics.median(c["combine"][0] + c["combine"][1] for c in calls)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32768, help="keys per sequence (all rows at full length)")
    ap.add_argument("--b", type=int, default=4, help="batch")
    ap.add_argument("--selection", choices=("query_head", "kv_group"), default="kv_group")
    ap.add_argument("--pdl", choices=("on", "off", "both"), default="both", help="programmatic dependent launch")
    ap.add_argument("--calls", type=int, default=20, help="calls traced (after 3 warm-up calls)")
    ap.add_argument("--eager", action="store_true", help="eager calls instead of CUDA-graph replays")
    ap.add_argument("--json", help="write the per-call timelines and the medians here")
    ap.add_argument("--ws", action="append", default=[], metavar="NAME=INT", help="a DecodeWorkspace setting")
    ap.add_argument("--const", action="append", default=[], metavar="NAME=INT",
                    help="a module constant of producers.kernels.decode")
    a = ap.parse_args(argv)
    if a.calls < 1 or a.n < 1 or a.b < 1:
        ap.error("--n, --b and --calls must be >= 1")

    def pairs(items, what):
        out = {}
        for item in items:
            name, _, value = item.partition("=")
            try:
                out[name] = int(value)
            except ValueError:
                ap.error(f"{what} wants NAME=INT, got {item!r}")
        return out

    from dcr.producers.kernels import decode

    ws_settings = pairs(a.ws, "--ws")
    consts = pairs(a.const, "--const")
    for name, value in consts.items():
        if not hasattr(decode, name):
            ap.error(f"producers.kernels.decode has no constant {name}")
        setattr(decode, name, value)

    import torch

    if not torch.cuda.is_available():
        print("trace_decode needs a CUDA GPU (run it on the device tool's machine after `source lab/gpu/env.sh`)",
              file=sys.stderr)
        return 2
    from dcr.prereg.rule import TopKRule
    from dcr.producers.kernels.decode import DecodeWorkspace, topk_decode
    from dcr.producers.kernels.diagnostics import kernel_records
    from dcr.producers.kernels.reference import decode_reference, decode_set_differences

    Hq, Hkv, D = 32, 8, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(a.b, Hq, D, device="cuda", generator=gen).bfloat16()
    k = torch.randn(a.b, Hkv, a.n, D, device="cuda", generator=gen).bfloat16()
    v = torch.randn(a.b, Hkv, a.n, D, device="cuda", generator=gen).bfloat16()
    lengths = torch.full((a.b,), a.n, device="cuda", dtype=torch.int32)
    rule = TopKRule("0.15", k_min=64, dispatch_threshold=0, selection=a.selection)
    out = torch.empty_like(q)
    mode = "eager calls" if a.eager else "CUDA-graph replays"
    report = {"gpu": torch.cuda.get_device_name(), "n": a.n, "b": a.b, "selection": a.selection, "mode": mode,
              "ws": ws_settings, "const": consts, "runs": {}}
    print(f"GPU: {report['gpu']}  torch {torch.__version__}  N={a.n} B={a.b} {a.selection} c=0.15, "
          f"{a.calls} {mode}  ws {ws_settings}  const {report['const']}")
    _, ref_mask = decode_reference(q, k, v, lengths, rule, return_indices=True)
    report["check"] = {}
    for pdl in ((True, False) if a.pdl == "both" else (a.pdl == "on",)):
        ws = DecodeWorkspace(a.b, Hq, Hkv, a.n, D, a.selection, "cuda", pdl=pdl, **ws_settings)
        _, mask = topk_decode(q, k, v, lengths, rule, workspace=ws, return_indices=True, check_lengths=False)
        differing, gap = decode_set_differences(mask, ref_mask, q, k, a.selection)
        check = {"sizes_equal": bool(torch.equal(mask.sum(-1), ref_mask.sum(-1))), "keys_differing": differing,
                 "max_gap_rel": gap, "all_near_boundary": gap <= 1e-5}
        print(f"sets vs decode_reference: {check}")
        call = lambda: topk_decode(q, k, v, lengths, rule, out=out, workspace=ws, check_lengths=False)  # noqa: E731
        for _ in range(3):
            call()
        torch.cuda.synchronize()
        if not a.eager:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                call()
            call = graph.replay
            for _ in range(3):
                call()
            torch.cuda.synchronize()

        def traced(call=call):
            for _ in range(a.calls):
                call()

        kernels = kernel_records(traced)
        calls = timeline(kernels)
        label = f"pdl={'on' if ws.pdl else 'off'}"
        report["check"][label] = check
        if not calls:
            print(f"{label}: no complete call among {len(kernels)} kernel records")
            continue
        med = summary(calls)
        report["runs"][label] = {"calls": calls, "median": med}
        print(f"{label}: {len(calls)} calls, span {med['span_us']:.1f} us (median)")
        for s in STAGES:
            m = med[s]
            gap = "" if m["gap_us"] is None else f"  gap {m['gap_us']:+6.1f}"
            print(f"  {s:8s} start {m['start_us']:6.1f}  dur {m['dur_us']:6.1f}{gap}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
