"""`dcr bench decode`: the Top-K decode op vs every SDPA backend vs a naive PyTorch top-k (GPU).

Llama-3.2-1B attention shapes (Hq 32, Hkv 8, D 64), bf16, full caches (length = N). For each
(N, B): outputs are checked first (ours vs the fp32 PyTorch reference of the rule, SDPA vs a dense
fp32 softmax), then every method is captured in a CUDA graph (R calls, rotating input sets when
they fit in L2) and the graphs are replayed interleaved; the median per call is reported.
Byte floor of exact top-k = all of K read once + the union over each group's heads of the selected
V rows, at the measured copy bandwidth 4.27 TB/s (H200).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import typer

COPY_BW = 4.27e12  # B/s, device-to-device copy (read + write) measured on the H200
HQ, HKV, D = 32, 8, 64
L2_BYTES = 60 * 2**20


def cli(
    n: list[int] = typer.Option([8192, 32768, 131072], "--n", help="cache lengths N (repeatable)"),
    b: list[int] = typer.Option([1, 4, 8], "--b", help="batch sizes (repeatable)"),
    c: list[str] = typer.Option(["0.05", "0.15", "0.30"], "--c", help="coverages (repeatable)"),
    k_min: int = typer.Option(64, help="k_min of the rule"),
    selection: str = typer.Option("query_head", help="query_head or kv_group"),
    rounds: int = typer.Option(30, help="interleaved timing rounds (median over them)"),
    seed: int = typer.Option(0, help="seed of the random inputs"),
    json_out: Path | None = typer.Option(None, "--json", help="write all figures here"),
    sweep: bool = typer.Option(True, help="per (N, B): time a few workspace settings of ours (one changed at a time), keep the best"),
    config: list[str] = typer.Option([], "--config", help="workspace setting of ours, KEY=VALUE (repeatable; "
                                     "DecodeWorkspace keyword arguments, e.g. chunk=1024); with --no-sweep it is the one timed"),
) -> None:
    """Time our decode op against SDPA (cuDNN, flash, efficient, math) and naive top-k."""
    import warnings

    import torch

    forced = {}
    for kv in config:
        key, sep, val = kv.partition("=")
        if not sep or not val.lstrip("-").isdigit():
            raise typer.BadParameter(f"--config wants KEY=INTEGER (booleans as 0 / 1), got {kv!r}")
        forced[key] = int(val)
    warnings.filterwarnings("ignore", category=UserWarning)  # SDPA explains every backend it skips
    if not torch.cuda.is_available():
        raise SystemExit("dcr bench decode needs a CUDA GPU (none found); run it on the GPU machine (lab/gpu/decode.sh)")
    import triton  # noqa: F401
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from dcr.producers.kernels.decode import DecodeWorkspace, _auto_chunk, topk_decode
    from dcr.prereg.rule import TopKRule
    from dcr.producers.kernels.reference import decode_reference

    dev = torch.device("cuda")
    scale = 1.0 / math.sqrt(D)
    results = []
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")

    def graph_of(fn, nsets, reps):
        """Capture reps calls of fn(i % nsets) in one CUDA graph; None (+ reason) if it fails."""
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

    def time_graphs(graphs: dict, reps: dict) -> dict:
        """Median ms per call of each graph, replays interleaved over `rounds` rounds."""
        ts = {k: [] for k in graphs}
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        for name, g in graphs.items():  # warm-up
            g.replay()
        for _ in range(rounds):
            for name, g in graphs.items():
                ev[0].record()
                g.replay()
                ev[1].record()
                ev[1].synchronize()
                ts[name].append(ev[0].elapsed_time(ev[1]) / reps[name])
        return {k: sorted(v)[len(v) // 2] for k, v in ts.items()}

    for N in n:
        for B in b:
            kv_bytes = 2 * B * HKV * N * D * 2
            nsets = max(1, min(6, math.ceil(3 * L2_BYTES / kv_bytes)))
            # inputs drawn per shape: the same (seed, N, B) gives the same inputs whatever else runs (the
            # select's time follows its slowest row, so other inputs move the op's time by up to ~15 %)
            gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + N * 16 + B)
            qs = [torch.randn(B, HQ, D, device=dev, generator=gen, dtype=torch.bfloat16) for _ in range(nsets)]
            ks = [torch.randn(B, HKV, N, D, device=dev, generator=gen, dtype=torch.bfloat16) for _ in range(nsets)]
            vs = [torch.randn(B, HKV, N, D, device=dev, generator=gen, dtype=torch.bfloat16) for _ in range(nsets)]
            lengths = torch.full((B,), N, device=dev, dtype=torch.int32)
            outs = [torch.empty(B, HQ, D, device=dev, dtype=torch.bfloat16) for _ in range(nsets)]

            # ---- dense baselines: check, then graph
            dense_ref = torch.softmax((qs[0].float().view(B, HKV, HQ // HKV, D) @ ks[0].float().transpose(-1, -2)) * scale, -1)
            dense_ref = (dense_ref @ vs[0].float()).view(B, HQ, D)
            base = {}
            base_err = {}
            for bname, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                              ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)):
                if bname == "math" and B * N > 4 * 131072:
                    base_err[bname] = "skipped (math backend materialises the expanded cache)"
                    continue

                def f(i, be=be):
                    with sdpa_kernel(be):
                        return sdpa(qs[i].unsqueeze(2), ks[i], vs[i], enable_gqa=True)

                try:
                    o = f(0).squeeze(2).float()
                    err = ((o - dense_ref).norm() / dense_ref.norm()).item()
                    if not err < 1e-2:
                        base_err[bname] = f"wrong output (rel err {err:.2e})"
                        continue
                except Exception as exc:
                    base_err[bname] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                    continue
                base[bname] = f
            del dense_ref

            # ---- our configuration: the op's default, or the best of a few (timed on the first c)
            auto = _auto_chunk(B, HKV, N)
            cfgs = {"default" if not forced else ",".join(config): forced}
            if sweep:  # one setting changed at a time (DecodeWorkspace keyword arguments)
                for cf in ({"chunk": max(256, auto // 2)}, {"select_sample": 512}, {"select_sample": 1024}):
                    cfgs[",".join(f"{k}={v}" for k, v in cf.items())] = cf
            wss = {name: DecodeWorkspace(B, HQ, HKV, N, D, selection, dev, **cf) for name, cf in cfgs.items()}
            rule0 = TopKRule(c[0], k_min=k_min, dispatch_threshold=0, selection=selection)
            sweep_t = {}
            if len(cfgs) > 1:
                gs, rp = {}, {}
                for name, w in wss.items():
                    def fcf(i, w=w):
                        topk_decode(qs[i], ks[i], vs[i], lengths, rule0, out=outs[i], check_lengths=False, workspace=w)
                    rp[name] = 10
                    g, why = graph_of(fcf, nsets, rp[name])
                    if g is not None:
                        gs[name] = g
                    else:
                        print(f"    config {name} not run: {why}")
                sweep_t = time_graphs(gs, rp)
                del gs
            best_cfg = min(sweep_t, key=sweep_t.get) if sweep_t else next(iter(cfgs))
            ws = wss[best_cfg]
            print(f"N={N} B={B}: configs -> ms at c={c[0]}: "
                  + ", ".join(f"{cf}: {t:.4f}" for cf, t in sweep_t.items()) + f"; using {best_cfg}")

            for cs in c:
                rule = TopKRule(cs, k_min=k_min, dispatch_threshold=0, selection=selection)
                keff = rule.k_eff(N)
                # ---- correctness of ours first (fp32 reference of the rule; sets compared in size)
                out, mask = topk_decode(qs[0], ks[0], vs[0], lengths, rule, return_indices=True, workspace=ws)
                ref, rmask = decode_reference(qs[0], ks[0], vs[0], lengths, rule, return_indices=True)
                err = ((out.float() - ref).norm() / ref.norm()).item()
                set_diff = (mask != rmask).sum().item() / rmask.sum().item()
                ok = err < 1e-2 and bool((mask.sum(-1) == keff).all())
                union_rows = mask.view(B, HKV, HQ // HKV, N).any(2).sum().item()
                passes = ws.passes.float()  # select passes per ranking row of that call
                passes_mean, passes_max = passes.mean().item(), int(passes.max().item())
                del ref, rmask
                floor_bytes = B * HKV * N * D * 2 + union_rows * D * 2
                floor_ms = floor_bytes / COPY_BW * 1e3

                def ours(i, rule=rule):
                    topk_decode(qs[i], ks[i], vs[i], lengths, rule, out=outs[i], check_lengths=False, workspace=ws)

                def naive(i, keff=keff):
                    qg = qs[i].view(B, HKV, HQ // HKV, D)
                    sc = (qg @ ks[i].transpose(-1, -2)).float()  # bf16 product, fp32 accumulate
                    val, idx = torch.topk(sc, keff, dim=-1)  # [B, Hkv, G, k]
                    vsel = torch.gather(vs[i].unsqueeze(2).expand(B, HKV, HQ // HKV, N, D), 3,
                                        idx.unsqueeze(-1).expand(B, HKV, HQ // HKV, keff, D))
                    p = torch.softmax(val * scale, -1)
                    return (p.unsqueeze(-2) @ vsel.float()).view(B, HQ, D)

                nerr = ((naive(0) - out.float()).norm() / out.float().norm()).item()
                methods = {"ours": ours, "naive_topk": naive}
                methods.update({f"sdpa_{k}": v for k, v in base.items()})
                # calls per graph: about 2 ms of work each (one eager timing per method)
                reps, graphs, errs = {}, {}, dict(base_err)
                for name, fn in methods.items():
                    fn(0)
                    torch.cuda.synchronize()
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    fn(0)
                    e1.record()
                    e1.synchronize()
                    reps[name] = max(1, min(50, int(2.0 / max(e0.elapsed_time(e1), 1e-3))))
                    g, why = graph_of(fn, nsets, reps[name])
                    if g is None:
                        errs[name] = why
                    else:
                        graphs[name] = g
                t = time_graphs(graphs, reps)
                del graphs
                sd = {k: v for k, v in t.items() if k.startswith("sdpa_")}
                best = min(sd, key=sd.get) if sd else None
                row = dict(N=N, B=B, c=cs, k_eff=keff, selection=selection, ok=ok, rel_err=err,
                           config=best_cfg, sweep_ms=sweep_t,
                           set_diff_frac=set_diff, naive_vs_ours_rel=nerr, union_v_rows=union_rows,
                           select_passes_mean=passes_mean, select_passes_max=passes_max,
                           floor_ms=floor_ms, times_ms=t, not_run=errs, best_sdpa=best,
                           speedup_vs_best_sdpa=(t[best] / t["ours"]) if best and "ours" in t else None,
                           floor_fraction=floor_ms / t["ours"] if "ours" in t else None, nsets=nsets)
                results.append(row)
                sp = row["speedup_vs_best_sdpa"]
                print(f"N={N:6d} B={B} c={cs:4s} k={keff:5d} ok={ok} err={err:.1e} setdiff={set_diff:.1e} | "
                      f"ours {t.get('ours', float('nan')):.4f} ms | "
                      + " ".join(f"{k[5:]} {v:.4f}" for k, v in sd.items())
                      + f" | naive {t.get('naive_topk', float('nan')):.4f} | x{sp if sp else float('nan'):.2f} vs {best}"
                      f" | floor {floor_ms:.4f} ms = {100 * (row['floor_fraction'] or 0):.0f}%"
                      f" | passes mean {passes_mean:.2f} max {passes_max}", flush=True)
                if errs:
                    print(f"    not run: {errs}")
                if json_out is not None:  # after every row, so a run cut short keeps what it measured
                    json_out.parent.mkdir(parents=True, exist_ok=True)
                    json_out.write_text(json.dumps({"rows": results, "kernels": []}, indent=1))
            del qs, ks, vs, outs, wss, ws
            torch.cuda.empty_cache()

    from dcr.producers.kernels import decode as dk
    from dcr.producers.kernels.diagnostics import format_stats, kernel_stats

    stats = kernel_stats(dk._score_kernel, dk._select_kernel, dk._attend_kernel, dk._combine_kernel)
    if stats:
        print("\ncompiled kernels (registers per thread, spills; 255 registers or any spill = low occupancy):")
        print(format_stats(stats))
    if json_out is not None:
        json_out.write_text(json.dumps({"rows": results, "kernels": stats}, indent=1))
    print("\nsummary (c=0.15 goals: >=1.3x best SDPA at N>=32K & B>=4; >=1.0x at B=1; >=70% of floor at N>=32K)")
    print(f"{'N':>7} {'B':>2} {'c':>5} {'ours ms':>8} {'bestSDPA':>9} {'speedup':>7} {'floor%':>6}")
    for r in results:
        t = r["times_ms"]
        print(f"{r['N']:7d} {r['B']:2d} {r['c']:>5} {t.get('ours', float('nan')):8.4f} "
              f"{t.get(r['best_sdpa'], float('nan')) if r['best_sdpa'] else float('nan'):9.4f} "
              f"{r['speedup_vs_best_sdpa'] or float('nan'):7.2f} {100 * (r['floor_fraction'] or 0):6.0f}")


if __name__ == "__main__":  # on the GPU box, without the `dcr` entry point: python3 -m dcr.producers.bench_decode
    typer.run(cli)
