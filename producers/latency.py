"""`dcr produce latency`: dense vs exact Top-K decode latency, per registered cell, one row per rep.

Cells (``prereg.measurements.expected_cells``): level x N x B x coverage x session. Both levels
time ONE decode step whose new row sees exactly N keys (the cache holds N - 1 prompt tokens of the
plan's corpus, the step adds the N-th), on a static KV cache [B, Hkv, N, D] in the plan's dtype:

* ``op``    -- the attention op alone at layer ``num_layers // 2`` (:data:`OP_LAYER`), with the
  query the model computes there for the next corpus token: ``dense`` = fused SDPA
  (``enable_gqa=True``, no mask) with the fastest fused backend on this cache (cuDNN, flash,
  efficient: each probed, the refused ones skipped; recorded in ``backend`` and the metadata);
  each sparse arm = :func:`producers.kernels.decode.topk_decode` with the registered rule;
* ``model`` -- the whole decode step (embedding, all layers, norm, LM head) of
  :class:`producers.static_decode.StaticDecoder`, dense (same SDPA backend) vs each sparse arm
  (Triton op in every layer), all on the same cache.

The sparse arms: one named ``sparse`` with ``attention.selection``, or the plan's
``producers.latency.sparse_arms`` (each its id and selection; e.g. ``query_head`` and ``kv_group``
timed against the same dense baseline in one session).

Protocol (from the plan): a session = one cell = a fresh copy of the prompt's cache, fresh CUDA
graphs (each arm captured once: a repetition is one graph replay), fresh output checks. Before
timing, outputs are checked: op -- each sparse arm vs :func:`decode_reference` (fp32) and dense
vs the reference at c = 1 on batch row 0; model -- each graph vs its eager step, and each sparse
graph vs an eager step through :func:`decode_reference` in every layer; a failed check raises.
Then ``warmup`` untimed rounds, then ``repetitions`` rounds; each round runs every arm once, in
random order per round (``interleaved_random``, from the cell's own generator) or dense first
(``interleaved_fixed``). The L2 cache is flushed (a 256 MB memset, outside the timed interval)
before every call; a call is timed with CUDA events around one graph replay. Every timed call is
a row (``prereg.measurements.LATENCY``); GPU name, clocks, power, temperature (``nvidia-smi``
before and after the cell) and the checks go into the part file's ``dcr.latency`` metadata.

The prompt cache is built once per (N, B) by a dense prefill (not timed) and copied per session.
Batch row b uses window ``b % windows.count``. On the CPU the producer refuses to run: latency
there is meaningless. ``dry_run=True`` runs everything up to the timings on any device (eager
calls, no graphs; on the CPU the sparse arm is the reference rule) with an injected fake timer and
writes to ``OUT/latency_dry_run/`` with ``dcr.latency.dry_run = true`` (NaN timings by default),
so it cannot pass for a measurement. ``backend`` (every row) names the dense baseline's backend.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable

from dcr.prereg.measurements import LATENCY, LATENCY_DRY_RUN, expected_cells, with_metadata

PRODUCER = LATENCY.name
DRY_RUN_PRODUCER = LATENCY_DRY_RUN  # dry runs' folder: LATENCY's rows, never read by the verdict engine
VERSION = "1.0.0"
OP_LAYER = "num_layers // 2"  # the layer whose attention the op level times
FLUSH_BYTES = 256 * 2**20  # > 4x the H200's 60 MB L2
CHECK_TOL = {"op": 2e-2, "model_graph": 1e-2, "model_reference": 5e-2}  # max relative Frobenius error


def run_order(order: str, repetitions: int, generator, arms: tuple[str, ...] = ("dense", "sparse")
              ) -> list[tuple[int, str]]:
    """[(rep, arm)] of one session: each round runs every arm once; ``interleaved_random`` shuffles
    each round with ``generator`` (a torch.Generator), ``interleaved_fixed`` runs them in the order
    of ``arms`` (dense first)."""
    import torch

    if order not in ("interleaved_random", "interleaved_fixed"):
        raise ValueError(f"unknown order {order!r}")
    seq: list[tuple[int, str]] = []
    for r in range(repetitions):
        if order == "interleaved_fixed":
            rnd = arms
        else:
            rnd = tuple(arms[i] for i in torch.randperm(len(arms), generator=generator).tolist())
        seq.extend((r, a) for a in rnd)
    return seq


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def gpu_state(device) -> dict[str, Any]:
    """nvidia-smi query of the GPU ``device`` runs on (name, driver, clocks, power, temperature)."""
    import torch

    fields = ["name", "uuid", "driver_version", "pstate", "clocks.sm", "clocks.mem", "clocks.max.sm",
              "clocks.max.mem", "clocks.applications.graphics", "power.draw", "power.limit",
              "temperature.gpu", "persistence_mode", "compute_mode"]
    sel: list[str] = []
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        sel = ["-i", uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"]
    except Exception:  # noqa: BLE001 - older torch: no uuid; fall back to the visible index
        sel = ["-i", str(torch.device(device).index or 0)]
    try:
        out = subprocess.run(["nvidia-smi", *sel, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        vals = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
        state = dict(zip(fields, vals)) if len(vals) == len(fields) else {"raw": out.stdout.strip()}
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        state = {"error": f"{type(exc).__name__}: {exc}"}
    state["torch_device_name"] = torch.cuda.get_device_name(device)
    return state


def cuda_timer(device) -> Callable[[Callable[[], Any]], float]:
    """timer(fn) -> ms of one call of fn, CUDA events around it, L2 flushed before (not timed)."""
    import torch

    flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timer(fn: Callable[[], Any]) -> float:
        flush.zero_()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return timer


def _graph(fn: Callable[[], Any], device, warmup: int = 2):
    """Capture fn() in a CUDA graph (after ``warmup`` eager calls on a side stream); returns replay."""
    import torch

    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize(device)
    return g.replay


def best_sdpa_backend(q, k, v, scale: float, timer, trials: int = 15) -> tuple[Any, dict[str, Any]]:
    """The fastest fused SDPA backend for q [B, Hq, 1, D] on k, v [B, Hkv, T, D] (CUDA).

    Each of cuDNN, flash, efficient is tried; one that raises is recorded as refused; the others
    are captured in a graph and timed ``trials`` times (median). Returns (backend, {name: ms|reason})."""
    import statistics

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import warnings

    probe: dict[str, Any] = {}
    best = None
    warnings.filterwarnings("ignore", message=".*(kernel not used because|has been runtime disabled|"
                            "fused kernels require query, key and value).*")  # the probe's refusals
    for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def call(be=be):
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
        try:
            call()
            replay = _graph(call, q.device)
        except Exception as exc:  # noqa: BLE001 - a backend that does not run here is reported
            torch.cuda.synchronize(q.device)
            probe[name] = f"refused: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            continue
        for _ in range(3):
            replay()
        ms = statistics.median(timer(replay) for _ in range(trials))
        probe[name] = ms
        if best is None or ms < probe[best[0]]:
            best = (name, be)
    if best is None:
        raise RuntimeError(f"no fused SDPA backend runs on this cache: {probe}")
    return best, probe


def produce_latency(
    lock_path: str | Path,
    out_dir: str | Path,
    *,
    device: str,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    dry_run: bool = False,
    timer: Callable[[Callable[[], Any]], float] | None = None,
    where: dict[str, list[str]] | None = None,
) -> Any:
    """Time every latency cell of the locked plan not yet written under ``out_dir/latency/``.

    device: a CUDA device ("cuda", "cuda:1"); the CPU is refused unless ``dry_run``.
    dry_run: run the protocol without graphs or real timings (``timer`` injected, default NaN);
    rows go to ``out_dir/latency_dry_run/``. timer: timer(fn) -> ms (dry runs and tests only).
    """
    import numpy as np
    import pyarrow as pa
    import torch

    from dcr.prereg.rule import TopKRule
    from dcr.producers.kernels.reference import decode_reference
    from dcr.producers.plan_inputs import model_info, open_plan
    from dcr.producers.runner import cell_generator_seed, run_cells
    from dcr.producers.static_decode import StaticDecoder, check_llama_family

    dev = torch.device(device)
    if dev.type != "cuda" and not dry_run:
        raise ValueError(f"latency needs a CUDA GPU (got device {device!r}): timings on the CPU are "
                         "meaningless. Run on a GPU machine (--device cuda); tests use dry_run=True.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device is available")
    if timer is not None and not dry_run:
        raise ValueError("timer= is only for dry runs; real runs use CUDA events")
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    run = open_plan(lock_path, PRODUCER, device=str(dev))
    locked, plan, spec, loaded, windows = run.locked, run.plan, run.cells, run.loaded, run.windows
    check_llama_family(loaded.model)
    model = loaded.model
    n_layers = len(model.model.layers)
    op_layer = spec.op_layer
    if "op" in spec.levels and (op_layer is None or op_layer >= n_layers):
        raise ValueError(
            f"the plan's producers.latency.op_layer is {op_layer!r}: the op level needs a registered layer "
            f"in 0..{n_layers - 1} (the model has {n_layers}); amend the plan (dcr prereg amend)")
    selections = spec.sparse_selections(plan.attention.selection)  # {sparse arm: selection}
    arms = ("dense", *selections)
    graphs = dev.type == "cuda" and not dry_run
    sparse_impl = "triton" if dev.type == "cuda" else "reference"  # CPU dry runs: the rule's reference
    if timer is None:
        timer = cuda_timer(dev) if graphs else (lambda fn: (fn(), float("nan"))[1])
    prompts: dict[tuple[int, int], tuple] = {}  # (N, B) -> (k list, v list, next tokens [B]): one entry

    def prompt_cache(n: int, b: int):
        if (n, b) not in prompts:
            prompts.clear()
            ids = np.stack([windows.prompt(i % len(windows.starts), n - 1) for i in range(b)])
            ids = torch.from_numpy(ids).to(dev)  # [B, N]: N - 1 prompt tokens + the step's token
            d = StaticDecoder(model, batch=b, max_len=n, attention="dense")
            d.prefill(ids[:, :n - 1])
            prompts[(n, b)] = (d.k_cache, d.v_cache, ids[:, n - 1].clone())
            del d
        return prompts[(n, b)]

    def compute(cell: dict[str, Any]) -> pa.Table:
        level, n, b, c, session = cell["level"], cell["N"], cell["B"], cell["coverage"], cell["session"]
        if n < 2:
            raise ValueError(f"latency needs N >= 2 (a prompt and a step), got {n}")
        gen = torch.Generator().manual_seed(cell_generator_seed(locked.sha256, cell))
        before = gpu_state(dev) if dev.type == "cuda" else None
        k0, v0, tokens = prompt_cache(n, b)
        kc, vc = [t.clone() for t in k0], [t.clone() for t in v0]  # the session's fresh cache
        rules = {arm: TopKRule.from_plan(plan.attention, c, selection=sel) for arm, sel in selections.items()}
        pos = n - 1
        # the op layer's query for the step's token, from an eager dense step on this cache
        dense = StaticDecoder(model, batch=b, max_len=n, attention="dense", cache=(kc, vc))
        dense.record_q = True
        logits_eager_plain = dense.step(tokens, pos)
        dense.record_q = False
        q = dense.last_q[op_layer].contiguous()  # [B, Hq, D]
        kl, vl = kc[op_layer], vc[op_layer]
        if graphs:
            (backend_name, backend), probe = best_sdpa_backend(q[:, :, None], kl, vl, dense.scale, timer)
            backends = [backend]
        else:
            backend_name, probe, backends = f"{dev.type}-default", {}, None
        checks: dict[str, float] = {}
        meta_extra: dict[str, Any] = {}
        if level == "op":
            import torch.nn.functional as F

            from dcr.producers.kernels.decode import DecodeWorkspace, topk_decode

            q4 = q[:, :, None].clone()
            out_d = torch.empty_like(q4)
            lengths = torch.full((b,), n, device=dev, dtype=torch.int32)

            def op_dense():
                if backends is not None:
                    from torch.nn.attention import sdpa_kernel

                    with sdpa_kernel(backends):
                        out_d.copy_(F.scaled_dot_product_attention(q4, kl, vl, scale=dense.scale, enable_gqa=True))
                else:
                    out_d.copy_(F.scaled_dot_product_attention(q4, kl, vl, scale=dense.scale, enable_gqa=True))

            fns = {"dense": _graph(op_dense, dev) if graphs else op_dense}
            outs = {}
            for arm, rule in rules.items():
                out_s = outs[arm] = torch.empty_like(q)
                if sparse_impl == "triton":
                    ws = DecodeWorkspace(b, q.shape[1], kl.shape[1], n, q.shape[2], rule.selection, dev)

                    def op_sparse(rule=rule, out_s=out_s, ws=ws):
                        topk_decode(q, kl, vl, lengths, rule, scale=dense.scale, out=out_s, workspace=ws,
                                    check_lengths=False)
                else:
                    def op_sparse(rule=rule, out_s=out_s):
                        out_s.copy_(decode_reference(q, kl, vl, lengths, rule, scale=dense.scale))
                fns[arm] = _graph(op_sparse, dev) if graphs else op_sparse
            for fn in fns.values():
                fn()
            one = torch.full((1,), n, device=dev, dtype=torch.int64)
            for arm, rule in rules.items():
                ref_s = decode_reference(q[:1], kl[:1], vl[:1], one, rule, scale=dense.scale)
                checks[f"{arm}_vs_reference"] = rel_err(outs[arm][:1], ref_s)
            full = TopKRule(coverage="1", k_min=1, dispatch_threshold=0, selection="query_head")
            ref_d = decode_reference(q[:1], kl[:1], vl[:1], one, full, scale=dense.scale)
            checks["dense_vs_reference_c1"] = rel_err(out_d[:1, :, 0], ref_d)
            tol = CHECK_TOL["op"]
            meta_extra["op_layer"] = op_layer
        else:
            dense = StaticDecoder(model, batch=b, max_len=n, attention="dense", sdpa_backends=backends, cache=(kc, vc))
            if graphs:
                gd = dense.capture(pos, tokens)
                fns = {"dense": gd.replay}
                ld_graph = gd.replay().clone()
                checks["dense_graph_vs_eager"] = rel_err(ld_graph, dense.step(tokens, pos))
            else:
                fns = {"dense": lambda: dense.step(tokens, pos)}
                checks["dense_vs_plain_sdpa"] = rel_err(dense.step(tokens, pos), logits_eager_plain)
            decoders = {}  # kept alive until the timings end: the graphs use their buffers
            for arm, rule in rules.items():
                sparse = decoders[arm] = StaticDecoder(model, batch=b, max_len=n, attention="sparse", rule=rule,
                                                       sparse_impl=sparse_impl, cache=(kc, vc))
                reference = StaticDecoder(model, batch=b, max_len=n, attention="sparse", rule=rule,
                                          sparse_impl="reference", cache=(kc, vc))
                if graphs:
                    gs = sparse.capture(pos, tokens)
                    fns[arm] = gs.replay
                    ls_graph = gs.replay().clone()
                    checks[f"{arm}_graph_vs_eager"] = rel_err(ls_graph, sparse.step(tokens, pos))
                else:
                    fns[arm] = lambda sparse=sparse: sparse.step(tokens, pos)
                    ls_graph = sparse.step(tokens, pos)
                checks[f"{arm}_vs_reference"] = rel_err(ls_graph, reference.step(tokens, pos))
            tol = CHECK_TOL["model_reference"]
            for key in checks:
                if key.endswith(("_graph_vs_eager", "dense_vs_plain_sdpa")) and checks[key] > CHECK_TOL["model_graph"]:
                    raise RuntimeError(f"cell {cell}: check {key} = {checks[key]:.3g} > {CHECK_TOL['model_graph']}")
        bad = {k: v for k, v in checks.items() if not (v <= tol)}
        if bad:
            raise RuntimeError(f"cell {cell}: output check failed before timing: {bad} (tolerance {tol})")
        order = run_order(spec.order, spec.repetitions, gen, arms)
        warm = run_order(spec.order, spec.warmup, gen, arms)
        for _, arm in warm:  # untimed warm-up rounds, same interleaving
            timer(fns[arm])
        rows = []
        for j, (rep, arm) in enumerate(order):
            ms = timer(fns[arm])
            rows.append({"level": level, "N": n, "B": b, "coverage": float(c), "arm": arm, "session": session,
                         "rep": rep, "order_index": j, "ms": float(ms),
                         "backend": f"sdpa-{backend_name}"})
        after = gpu_state(dev) if dev.type == "cuda" else None
        meta = {"dry_run": bool(not graphs), "protocol": {"warmup": spec.warmup, "repetitions": spec.repetitions,
                                                          "order": spec.order, "timer": "cuda-events" if graphs else "injected",
                                                          "l2_flush_bytes": FLUSH_BYTES if graphs else 0,
                                                          "cuda_graphs": graphs, "keys_seen_by_step": n},
                "sdpa_probe_ms": probe, "dense_backend": backend_name, "sparse_impl": sparse_impl,
                "checks": checks, "check_tolerance": tol, "gpu_before": before, "gpu_after": after,
                "rules": {arm: {"coverage": str(c), "k_min": r.k_min, "dispatch_threshold": r.dispatch_threshold,
                                "selection": r.selection, "k_eff": int(r.k_eff(n))} for arm, r in rules.items()},
                **meta_extra}
        return with_metadata(LATENCY.table(rows), latency=meta)

    cells = expected_cells(plan, PRODUCER)
    return run_cells(producer=DRY_RUN_PRODUCER if not graphs else PRODUCER, producer_version=VERSION,
                     locked=locked, cells=cells, out_dir=Path(out_dir), compute=compute,
                     model_info=model_info(loaded), corpus_info=windows.info, rank=rank, world_size=world_size,
                     progress=progress, where=where)
