"""`dcr bench decode`: the Top-K decode op, per selection rule, vs every SDPA backend vs a naive
PyTorch top-k (GPU).

Llama-3.2-1B attention shapes (Hq 32, Hkv 8, D 64), bf16, random inputs, full caches (length = N).
For each (N, B) and rule: outputs are checked first (ours vs the fp32 PyTorch reference of the rule,
set sizes; SDPA vs a dense fp32 softmax); then every method, every prefix of the op's launches
(sample, + score, + resolve, + attend; the whole op adds combine) and the first two launches under a
dense rule (the score kernel without band work) are captured in CUDA graphs (R calls each, rotating
input sets while they fit in 3x the L2) and replayed interleaved; the median per call is reported.
A stage's time is the difference of two prefixes.

Byte floors, at the copy bandwidth measured on the card first (a device-to-device copy, bytes read
plus written):
* query_head: all of K once + the V rows of the union of each group's sets;
* kv_group: all of K once + the k_eff selected V rows per KV head + the fp32 ranking row written
  and read once.
Each stage is also set against its own bytes: score, K + the fp32 rows it writes; attend, the rows
it reads (query_head: S + the V rows it loads; kv_group: R + the selected K and V rows).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import typer

HQ, HKV, D = 32, 8, 64
G = HQ // HKV
L2_BYTES = 60 * 2**20
STAGES = ("sample", "score", "resolve", "attend", "combine")


def _sweep_settings(selection: str, ws) -> list[dict]:
    """Workspace settings timed against the default, one changed at a time."""
    out = [{"chunk": max(256, ws.chunk // 2)}, {"sample": ws.sample * 2}, {"capacity": ws.capacity * 2},
           {"select_warps": ws.swarps * 2}, {"select_warps": max(1, ws.swarps // 2)}]
    if ws.sample >= 512:  # a smaller sample with a longer list: the same band width in sd
        out.append({"sample": ws.sample // 2, "capacity": ws.capacity * 2})
    if selection == "kv_group" and ws.attend_block >= 32:
        out.append({"attend_block": ws.attend_block // 2})
    if ws.pdl:
        out.append({"pdl": False})
    return out


def copy_bandwidth(dev) -> float:
    """Bytes per second read + written by a 2 GiB device-to-device copy on ``dev`` (median of 10 after 2
    warm-up copies, each timed with CUDA events): the bandwidth the byte floors use."""
    import torch

    src = torch.empty(2**30, device=dev, dtype=torch.int16)
    dst = torch.empty_like(src)
    ts = []
    for _ in range(12):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        dst.copy_(src)
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e-3)
    return 2 * src.numel() * 2 / sorted(ts[2:])[len(ts[2:]) // 2]


def graph_of(fn, nsets: int, reps: int):
    """reps calls of fn(i % nsets) captured in one CUDA graph, after min(nsets, 3) eager calls on a side
    stream: (graph, None), or (None, reason) if the capture fails."""
    import torch

    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(min(nsets, 3)):
                fn(i)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for i in range(reps):
                    fn(i % nsets)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        return g, None
    except Exception as exc:  # a backend that does not run here is reported, not fatal
        torch.cuda.synchronize()
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


def time_graphs(graphs: dict, reps: dict, rounds: int) -> dict:
    """Median ms per call of each graph (reps[name] calls per replay): one warm-up replay each
    (excluded), then `rounds` rounds of interleaved replays."""
    import torch

    ts = {k: [] for k in graphs}
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    for g in graphs.values():
        g.replay()
    for _ in range(rounds):
        for name, g in graphs.items():
            ev[0].record()
            g.replay()
            ev[1].record()
            ev[1].synchronize()
            ts[name].append(ev[0].elapsed_time(ev[1]) / reps[name])
    return {k: sorted(v)[len(v) // 2] for k, v in ts.items()}


def sdpa_fails(f, ref) -> str | None:
    """Why the SDPA baseline f (f(0) -> [B, Hq, 1, D]) cannot be timed: it raises here, or its output is
    off the dense reference ref [B, Hq, D] by a relative error >= 1e-2; None if it is fine."""
    try:
        o = f(0).squeeze(2).double()
        err = ((o - ref.double()).norm() / ref.double().norm()).item()
    except Exception as exc:  # a backend that does not run here is reported, not fatal
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    return None if err < 1e-2 else f"wrong output (rel err {err:.2e})"


SDPA_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "math": "MATH"}  # name -> torch.nn.attention.SDPBackend member


def sdpa_baselines(inputs, ref, scale: float, names=tuple(SDPA_BACKENDS)) -> tuple[dict, dict]:
    """The SDPA backends named that run here and agree with the dense reference ref [B, Hq, D]
    (:func:`sdpa_fails`): ({name: f}, {name: why not}). f(i) is the decode attention of
    inputs(i) = (q [B, Hq, D], k, v [B, Hkv, T, D]) in that backend, logits scaled by scale."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    fine, why_not = {}, {}
    for name in names:
        def f(i, backend=getattr(SDPBackend, SDPA_BACKENDS[name])):
            q, k, v = inputs(i)
            with sdpa_kernel(backend):
                return sdpa(q.unsqueeze(2), k, v, scale=scale, enable_gqa=True)

        why = sdpa_fails(f, ref)
        if why:
            why_not[name] = why
        else:
            fine[name] = f
    return fine, why_not


def cli(
    n: list[int] = typer.Option([8192, 32768, 131072], "--n", help="cache lengths N (repeatable)"),
    b: list[int] = typer.Option([1, 4, 8], "--b", help="batch sizes (repeatable)"),
    c: list[str] = typer.Option(["0.05", "0.15", "0.30"], "--c", help="coverages (repeatable)"),
    k_min: int = typer.Option(64, help="k_min of the rule"),
    selection: list[str] = typer.Option(["query_head", "kv_group"], "--selection", help="rules (repeatable)"),
    rounds: int = typer.Option(20, help="interleaved timing rounds (median over them)"),
    seed: int = typer.Option(0, help="seed of the random inputs"),
    json_out: Path | None = typer.Option(None, "--json", help="write all figures here"),
    sweep: bool = typer.Option(True, help="per (N, B, rule): time a few workspace settings of ours (one changed at "
                               "a time) at the first coverage, keep the best"),
    config: list[str] = typer.Option([], "--config", help="workspace setting of ours, KEY=VALUE (repeatable; "
                                     "DecodeWorkspace keyword arguments, e.g. chunk=1024); with --no-sweep it is "
                                     "the one timed"),
) -> None:
    """Time our decode op (per rule, per stage) against SDPA (cuDNN, flash, efficient, math) and naive top-k."""
    import warnings

    import torch

    from dcr.prereg.rule import check_selection

    forced = {}
    for kv in config:
        key, sep, val = kv.partition("=")
        if not sep or not val.lstrip("-").isdigit():
            raise typer.BadParameter(f"--config wants KEY=INTEGER (booleans as 0 / 1), got {kv!r}")
        forced[key] = int(val)
    for sel in selection:
        try:
            check_selection(sel)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    warnings.filterwarnings("ignore", category=UserWarning)  # SDPA explains every backend it skips
    if not torch.cuda.is_available():
        raise SystemExit("dcr bench decode needs a CUDA GPU (none found); run it on the GPU machine "
                         "(lab/gpu/decode_round.sh)")
    import triton
    from dcr.prereg.rule import TopKRule
    from dcr.producers.kernels.decode import PATH_BAND, PATH_DENSE, PATH_MISS, PATH_OVERFLOW, DecodeWorkspace
    from dcr.producers.kernels.decode import decode_launches, topk_decode
    from dcr.producers.kernels.reference import decode_reference

    dev = torch.device("cuda")
    scale = 1.0 / math.sqrt(D)
    results = []
    card = torch.cuda.get_device_name()
    print(f"GPU: {card}  torch {torch.__version__}  triton {triton.__version__}")

    copy_bw = copy_bandwidth(dev)
    print(f"copy bandwidth (read + write): {copy_bw / 1e12:.2f} TB/s; byte floors below use it")

    def reps_of(fn) -> int:
        """Calls per graph: about 2 ms of work (one eager timing)."""
        fn(0)
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn(0)
        e1.record()
        e1.synchronize()
        return max(1, min(50, int(2.0 / max(e0.elapsed_time(e1), 1e-3))))

    for N in n:
        for B in b:
            kv_bytes = 2 * B * HKV * N * D * 2
            nsets = max(1, min(6, math.ceil(3 * L2_BYTES / kv_bytes)))
            # inputs drawn per shape: the same (seed, N, B) gives the same inputs whatever else runs
            gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + N * 16 + B)
            qs = [torch.randn(B, HQ, D, device=dev, generator=gen, dtype=torch.bfloat16) for _ in range(nsets)]
            ks = [torch.randn(B, HKV, N, D, device=dev, generator=gen, dtype=torch.bfloat16) for _ in range(nsets)]
            vs = [torch.randn(B, HKV, N, D, device=dev, generator=gen, dtype=torch.bfloat16) for _ in range(nsets)]
            lengths = torch.full((B,), N, device=dev, dtype=torch.int32)
            outs = [torch.empty(B, HQ, D, device=dev, dtype=torch.bfloat16) for _ in range(nsets)]

            # ---- dense baselines: check, then graph
            dense_ref = torch.softmax((qs[0].float().view(B, HKV, G, D) @ ks[0].float().transpose(-1, -2)) * scale, -1)
            dense_ref = (dense_ref @ vs[0].float()).view(B, HQ, D)
            names = list(SDPA_BACKENDS)
            if B * N > 4 * 131072:
                names.remove("math")
            base, base_err = sdpa_baselines(lambda i: (qs[i], ks[i], vs[i]), dense_ref, scale, names)
            if "math" not in names:
                base_err["math"] = "skipped (math backend materialises the expanded cache)"
            del dense_ref

            for sel in selection:
                kv_group = sel == "kv_group"
                # ---- our configuration: the op's default, or the best of a few (timed on the first c)
                default = DecodeWorkspace(B, HQ, HKV, N, D, sel, dev, **forced)
                cfgs = {"default" if not forced else ",".join(config): forced}
                if sweep:
                    for cf in _sweep_settings(sel, default):
                        cfgs[",".join(f"{k}={v}" for k, v in cf.items())] = {**forced, **cf}
                wss = {name: (default if cf == forced else DecodeWorkspace(B, HQ, HKV, N, D, sel, dev, **cf))
                       for name, cf in cfgs.items()}
                rule0 = TopKRule(c[0], k_min=k_min, dispatch_threshold=0, selection=sel)
                sweep_t = {}
                if len(cfgs) > 1:
                    gs, rp = {}, {}
                    for name, w in wss.items():
                        def fcf(i, w=w):
                            topk_decode(qs[i], ks[i], vs[i], lengths, rule0, out=outs[i], check_lengths=False,
                                        workspace=w)
                        rp[name] = 10
                        g, why = graph_of(fcf, nsets, rp[name])
                        if g is not None:
                            gs[name] = g
                        else:
                            print(f"    config {name} not run: {why}")
                    sweep_t = time_graphs(gs, rp, rounds)
                    del gs
                best_cfg = min(sweep_t, key=sweep_t.get) if sweep_t else next(iter(cfgs))
                ws = wss[best_cfg]
                print(f"N={N} B={B} {sel}: configs -> ms at c={c[0]}: "
                      + ", ".join(f"{cf}: {t:.4f}" for cf, t in sweep_t.items()) + f"; using {best_cfg}", flush=True)

                for cs in c:
                    rule = TopKRule(cs, k_min=k_min, dispatch_threshold=0, selection=sel)
                    dense_rule = TopKRule("1", k_min=k_min, dispatch_threshold=0, selection=sel)
                    keff = rule.k_eff(N)
                    # ---- correctness of ours first (fp32 reference of the rule; sets compared in size)
                    out, mask = topk_decode(qs[0], ks[0], vs[0], lengths, rule, return_indices=True, workspace=ws)
                    ref, rmask = decode_reference(qs[0], ks[0], vs[0], lengths, rule, return_indices=True)
                    err = ((out.float() - ref).norm() / ref.norm()).item()
                    set_diff = (mask != rmask).sum().item() / rmask.sum().item()
                    ok = err < 1e-2 and bool((mask.sum(-1) == keff).all())
                    union_rows = mask.view(B, HKV, G, N).any(2).sum().item()
                    paths = torch.bincount(ws.path.long(), minlength=4).tolist()
                    path_counts = {"band": paths[PATH_BAND], "band_missed": paths[PATH_MISS],
                                   "list_overflowed": paths[PATH_OVERFLOW], "dense": paths[PATH_DENSE]}
                    passes = ws.passes.float()
                    passes_mean, passes_max = passes.mean().item(), int(passes.max().item())
                    n_band = ws.ncand.float()
                    del ref, rmask

                    # ---- byte floors (the rule's, and each stage's own)
                    k_bytes = B * HKV * N * D * 2
                    row_bytes = B * (HKV if kv_group else HQ) * N * 4  # fp32 rows the score stage writes
                    if kv_group:
                        v_rows = B * HKV * keff
                        floor_bytes = k_bytes + v_rows * D * 2 + 2 * row_bytes
                        attend_bytes = row_bytes + 2 * v_rows * D * 2
                    else:
                        floor_bytes = k_bytes + union_rows * D * 2
                        attend_bytes = row_bytes + B * HKV * N * D * 2  # whole V tiles
                    stage_bytes = {"score": k_bytes + row_bytes, "attend": attend_bytes}
                    floor_ms = floor_bytes / copy_bw * 1e3

                    launches = [decode_launches(qs[i], ks[i], vs[i], lengths, rule, out=outs[i], workspace=ws)
                                for i in range(nsets)]
                    dense_launches = [decode_launches(qs[i], ks[i], vs[i], lengths, dense_rule, out=outs[i],
                                                      workspace=ws) for i in range(nsets)]

                    def ours(i, rule=rule):
                        topk_decode(qs[i], ks[i], vs[i], lengths, rule, out=outs[i], check_lengths=False, workspace=ws)

                    def prefix(j, dense=False):
                        def run(i):
                            for _, launch in (dense_launches if dense else launches)[i][:j]:
                                launch()
                        return run

                    def naive(i, keff=keff):
                        qg = qs[i].view(B, HKV, G, D)
                        sc = (qg @ ks[i].transpose(-1, -2)).float()  # bf16 product, fp32 accumulate
                        if kv_group:  # one set per KV head, from the group-mean scores
                            _, idx = torch.topk(sc.mean(2), keff, dim=-1)  # [B, Hkv, k]
                            ix = idx.unsqueeze(-1).expand(B, HKV, keff, D)
                            ksel, vsel = torch.gather(ks[i], 2, ix), torch.gather(vs[i], 2, ix)
                            p = torch.softmax((qg @ ksel.transpose(-1, -2)).float() * scale, -1)
                            return (p @ vsel.float()).view(B, HQ, D)
                        val, idx = torch.topk(sc, keff, dim=-1)  # [B, Hkv, G, k]
                        vsel = torch.gather(vs[i].unsqueeze(2).expand(B, HKV, G, N, D), 3,
                                            idx.unsqueeze(-1).expand(B, HKV, G, keff, D))
                        p = torch.softmax(val * scale, -1)
                        return (p.unsqueeze(-2) @ vsel.float()).view(B, HQ, D)

                    nerr = ((naive(0) - out.float()).norm() / out.float().norm()).item()
                    methods = {"ours": ours, "naive_topk": naive}
                    methods.update({f"sdpa_{k}": v for k, v in base.items()})
                    for j in range(1, len(STAGES)):  # the whole op is "ours"
                        methods[f"prefix{j}"] = prefix(j)
                    methods["dense_prefix1"] = prefix(1, dense=True)
                    methods["dense_prefix2"] = prefix(2, dense=True)
                    reps, graphs, errs = {}, {}, dict(base_err)
                    for name, fn in methods.items():
                        reps[name] = reps_of(fn)
                        g, why = graph_of(fn, nsets, reps[name])
                        if g is None:
                            errs[name] = why
                        else:
                            graphs[name] = g
                    t = time_graphs(graphs, reps, rounds)
                    del graphs
                    topk_decode(qs[0], ks[0], vs[0], lengths, rule, out=outs[0], workspace=ws)  # the rule's state
                    cum = [0.0] + [t.get(f"prefix{j}", float("nan")) for j in range(1, len(STAGES))] + [t.get("ours", float("nan"))]
                    stage_ms = {s: cum[j + 1] - cum[j] for j, s in enumerate(STAGES)}
                    score_dense = t.get("dense_prefix2", float("nan")) - t.get("dense_prefix1", float("nan"))
                    band_work_ms = stage_ms["score"] - score_dense  # what the band adds to the score kernel
                    select_ms = stage_ms["sample"] + stage_ms["resolve"] + band_work_ms
                    stage_floor = {s: by / copy_bw * 1e3 for s, by in stage_bytes.items()}
                    sd = {k: v for k, v in t.items() if k.startswith("sdpa_")}
                    best = min(sd, key=sd.get) if sd else None
                    row = dict(N=N, B=B, c=cs, k_eff=keff, selection=sel, card=card, copy_bw=copy_bw, ok=ok,
                               rel_err=err, config=best_cfg, sweep_ms=sweep_t, set_diff_frac=set_diff,
                               naive_vs_ours_rel=nerr, union_v_rows=union_rows, paths=path_counts,
                               band_keys_mean=n_band.mean().item(), band_keys_max=int(n_band.max().item()),
                               capacity=ws.capacity, sample=ws.sample,
                               select_passes_mean=passes_mean, select_passes_max=passes_max,
                               floor_bytes=floor_bytes, floor_ms=floor_ms, times_ms=t, stage_ms=stage_ms,
                               score_dense_ms=score_dense, band_work_ms=band_work_ms, select_ms=select_ms,
                               select_share=select_ms / t["ours"] if "ours" in t else None,
                               stage_bytes=stage_bytes, stage_floor_ms=stage_floor, not_run=errs, best_sdpa=best,
                               speedup_vs_best_sdpa=(t[best] / t["ours"]) if best and "ours" in t else None,
                               floor_fraction=floor_ms / t["ours"] if "ours" in t else None, nsets=nsets)
                    results.append(row)
                    sp = row["speedup_vs_best_sdpa"]
                    us = {s: 1e3 * v for s, v in stage_ms.items()}
                    print(f"N={N:6d} B={B} {sel:10s} c={cs:4s} k={keff:5d} ok={ok} err={err:.1e} setdiff={set_diff:.1e} | "
                          f"ours {1e3 * t.get('ours', float('nan')):7.1f} us = "
                          + " + ".join(f"{s} {v:.1f}" for s, v in us.items())
                          + f" (band work in score {1e3 * band_work_ms:.1f}, select share "
                          f"{100 * (row['select_share'] or 0):.0f}%) | "
                          + " ".join(f"{k[5:]} {1e3 * v:.1f}" for k, v in sd.items())
                          + f" | naive {1e3 * t.get('naive_topk', float('nan')):.1f} | x{sp if sp else float('nan'):.2f}"
                          f" vs {best} | floor {1e3 * floor_ms:.1f} us ({floor_bytes / 1e6:.1f} MB) = "
                          f"{100 * (row['floor_fraction'] or 0):.0f}% | score {100 * stage_floor['score'] / stage_ms['score']:.0f}%"
                          f" / attend {100 * stage_floor['attend'] / stage_ms['attend']:.0f}% of own floor"
                          f" | paths {path_counts} | band keys mean {row['band_keys_mean']:.0f} max {row['band_keys_max']}"
                          f" | passes mean {passes_mean:.2f} max {passes_max}", flush=True)
                    if errs:
                        print(f"    not run: {errs}")
                    if json_out is not None:  # after every row, so a run cut short keeps what it measured
                        json_out.parent.mkdir(parents=True, exist_ok=True)
                        json_out.write_text(json.dumps({"rows": results, "kernels": []}, indent=1))
                del wss, ws, default, launches, dense_launches
            del qs, ks, vs, outs
            torch.cuda.empty_cache()

    from dcr.producers.kernels import decode as dk
    from dcr.producers.kernels.diagnostics import format_stats, kernel_stats

    stats = kernel_stats(dk._sample_kernel, dk._score_kernel, dk._resolve_kernel, dk._attend_kernel, dk._combine_kernel)
    if stats:
        print("\ncompiled kernels (registers per thread, spills; 255 registers or any spill = low occupancy):")
        print(format_stats(stats))
    if json_out is not None:
        json_out.write_text(json.dumps({"rows": results, "kernels": stats}, indent=1))
    print(f"\nsummary ({card}; goals at c = 0.15, N >= 32K, B >= 4: query_head >= 0.9x best SDPA and >= 65% of its "
          "floor, kv_group >= 1.3x and >= 70%; select share < 15%)")
    print(f"{'rule':>10} {'N':>7} {'B':>2} {'c':>5} {'ours us':>8} {'bestSDPA':>9} {'ratio':>6} {'floor us':>8} "
          f"{'floor%':>6} {'select%':>7} {'fallbacks':>9}")
    for r in results:
        t = r["times_ms"]
        fb = r["paths"]["band_missed"] + r["paths"]["list_overflowed"]
        print(f"{r['selection']:>10} {r['N']:7d} {r['B']:2d} {r['c']:>5} {1e3 * t.get('ours', float('nan')):8.1f} "
              f"{1e3 * t.get(r['best_sdpa'], float('nan')) if r['best_sdpa'] else float('nan'):9.1f} "
              f"{r['speedup_vs_best_sdpa'] or float('nan'):6.2f} {1e3 * r['floor_ms']:8.1f} "
              f"{100 * (r['floor_fraction'] or 0):6.0f} {100 * (r['select_share'] or 0):7.0f} {fb:9d}")


if __name__ == "__main__":  # on the GPU box, without the `dcr` entry point: python3 -m dcr.producers.bench_decode
    typer.run(cli)
