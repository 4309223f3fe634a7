"""`dcr bench quality`: teacher-forced dense vs Top-K forward of a Llama-3.2-1B-architecture model (GPU).

The model is the ``llama-3.2-1b-random`` preset: the exact architecture with RANDOM weights (no
weights can be downloaded here), so the NLLs printed describe nothing about language; the timings
and memory do describe the real shapes. One window of N random token ids, bf16.

Per N: outputs are checked first (finite NLLs, path counts = every row sparse, the kernel's rows vs
the decode reference at sampled rows of a full-size attention call), then the dense forward (the
model's SDPA) and the sparse forward (Top-K in every layer, Triton kernel) are timed interleaved
(warm-up excluded; CUDA events; median of ``repeats``), and the peak memory of each is measured
(``torch.cuda.max_memory_allocated`` after a reset, weights included; "activ." = peak minus what was
allocated before the call). A kernel-only line times one attention call at the model's shapes
(SDPA causal with GQA vs ours) and reports the counting passes the kernel needed.

Run: ``PYTHONPATH=. python3 -m dcr.producers.bench_quality --n 8192 --n 32768`` or ``dcr bench quality``.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import typer

# Triton kernel configs tried per N (block_m, block_n, num_warps, num_stages, collect_cap, count_maxnreg,
# attend_maxnreg); the fastest is used. The first is the kernel's default (the one --no-sweep runs: the rule's
# register caps, teacher_forced.MAXNREG); the others set one kernel's cap (a config equal to an earlier one
# is skipped).
CONFIGS = [(64, 64, 4, 2, 32, "auto", "auto"), (64, 64, 4, 2, 32, 128, "auto"), (64, 64, 4, 2, 32, 168, "auto"),
           (64, 64, 4, 2, 32, "auto", 168), (64, 64, 4, 2, 32, "auto", None)]


def resolve_configs(configs: list[tuple], selection: str) -> list[tuple]:
    """``configs`` with each "auto" register cap replaced by the rule's own (``teacher_forced.MAXNREG``), in
    order, a config equal to an earlier one (the same kernel) dropped."""
    from dcr.producers.kernels.teacher_forced import MAXNREG

    auto = MAXNREG[selection]
    return list(dict.fromkeys(c[:5] + tuple(a if r == "auto" else r for r, a in zip(c[5:], auto)) for c in configs))


def keys_weighted_passes(passes, block_m: int, n: int) -> float:
    """Mean of the per-program pass counts [ranking rows, ceil(n/block_m)] (block_m: the query rows
    of a program, the kernel's ``rows_per_program``), each program weighted by the keys
    one of its passes reads (the visible prefix of its last row, min((m+1)*block_m, n)): the mean that
    time follows, where the plain mean counts a program of short rows as much as one of long rows."""
    import torch

    keys = torch.clamp((torch.arange(passes.shape[1]) + 1) * block_m, max=n).to(passes.device, torch.float64)
    return float((passes.double() * keys).sum() / (keys.sum() * passes.shape[0]))


def cli(
    n: list[int] = typer.Option([8192, 32768], "--n", help="window lengths N (repeatable; 8192, 32768, 131072)"),
    coverage: str = typer.Option("0.15", help="coverage c of the rule"),
    k_min: int = typer.Option(64, help="k_min of the rule"),
    dispatch_threshold: int = typer.Option(0, help="rows seeing fewer keys stay dense (0 = every row sparse)"),
    selection: str = typer.Option("query_head", help="query_head or kv_group"),
    repeats: int = typer.Option(5, help="timed repeats of each arm (median reported)"),
    seed: int = typer.Option(0, help="seed of the random weights and token ids"),
    checksum: bool = typer.Option(True, help="hash the random weights (a few seconds)"),
    json_out: Path | None = typer.Option(None, "--json", help="write all figures here"),
    sweep: bool = typer.Option(True, help="time every kernel tile config and keep the fastest (--no-sweep: the "
                               "first config only; at 128K the sweep alone takes minutes)"),
    dry_run_cpu: bool = typer.Option(False, hidden=True, help="tiny preset on the CPU (Triton interpreter): "
                                     "exercises the code path, measures nothing meaningful"),
) -> None:
    """Time the dense (SDPA) and the Top-K teacher-forced forward of one window, in one run."""
    import contextlib
    import os
    import time

    import torch

    if dry_run_cpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        dev, preset, configs = "cpu", "tiny-llama-random", [(16, 16, 4, 2, 0, None, None), (32, 16, 4, 2, 32, 128, 168)]
    elif not torch.cuda.is_available():
        raise SystemExit("dcr bench quality needs a CUDA GPU (none found)")
    else:
        dev, preset, configs = "cuda", "llama-3.2-1b-random", CONFIGS
    cuda = dev == "cuda"
    import triton
    import transformers

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from dcr.producers.attention import sequence_nll
    from dcr.prereg.rule import TopKRule
    from dcr.producers.kernels.diagnostics import kernel_times_ms
    from dcr.producers.kernels.reference import decode_reference
    from dcr.producers.kernels.teacher_forced import teacher_forced_triton
    from dcr.producers.models import load_model

    bad = [x for x in n if x < 2]
    if bad:
        raise SystemExit(f"--n must be >= 2, got {bad}")
    FUSED = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    rule = TopKRule(coverage, k_min, dispatch_threshold, selection)  # type: ignore[arg-type]
    configs = resolve_configs(configs, rule.selection)[:None if sweep else 1]
    print(f"GPU: {torch.cuda.get_device_name() if cuda else 'none (dry run)'}  torch {torch.__version__}  triton {triton.__version__}  "
          f"transformers {transformers.__version__}")
    lm = load_model(preset, dtype="bf16", device=dev, seed=seed, checksum=checksum)
    model, info = lm.model, lm.info
    cfg = model.config
    print(f"model: {info.model} -- Llama-3.2-1B architecture with RANDOM weights (weights_random="
          f"{info.weights_random}, seed {seed}, sha256 {info.weights_sha256[:16]}); NLLs are not language quality")
    print(f"rule: c={coverage} k_min={k_min} dispatch_threshold={dispatch_threshold} selection={selection}")
    results = []
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else []
    fused = (lambda: sdpa_kernel(FUSED)) if cuda else contextlib.nullcontext

    def timed(fn):
        if not cuda:
            t0 = time.perf_counter()
            out = fn()
            return time.perf_counter() - t0, out
        ev[0].record()
        out = fn()
        ev[1].record()
        torch.cuda.synchronize()
        return ev[0].elapsed_time(ev[1]) / 1e3, out

    def peak(fn):
        if not cuda:
            fn()
            return 1, 0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        p = torch.cuda.max_memory_allocated()
        return p, p - base

    for N in n:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + N)
        ids = torch.randint(0, cfg.vocab_size, (N + 1,), generator=gen)

        def dense_fn():
            with fused():  # never the O(N^2)-memory math backend
                return sequence_nll(model, ids, rule=None)

        sparse_fn = lambda: sequence_nll(model, ids, rule=rule, backend="triton")  # noqa: E731

        # ---- outputs first (this also compiles the kernel: warm-up, not timed)
        d_nll, d_counts = dense_fn()
        s_nll, s_counts = sparse_fn()
        n_rows = cfg.num_hidden_layers * cfg.num_attention_heads * N
        dense_rows = cfg.num_hidden_layers * cfg.num_attention_heads * min(N, max(0, dispatch_threshold - 1))
        assert torch.isfinite(d_nll).all() and torch.isfinite(s_nll).all(), "non-finite NLL"
        assert s_counts.sparse_rows == n_rows - dense_rows and s_counts.dense_rows == dense_rows, s_counts
        d_mean, s_mean = d_nll.mean().item(), s_nll.mean().item()

        # ---- kernel only, one attention call at the model's shapes: every tile config checked against
        # the decode reference at sampled rows, then timed (median); the fastest is used in the model
        hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        kg = torch.Generator(device=dev).manual_seed(seed + N)
        q = torch.randn(1, hq, N, d, device=dev, generator=kg).bfloat16()
        k = torch.randn(1, hkv, N, d, device=dev, generator=kg).bfloat16()
        v = torch.randn(1, hkv, N, d, device=dev, generator=kg).bfloat16()
        rows = sorted({N - 1, N // 2, min(63, N - 1), *torch.randint(0, N, (5,), generator=gen).tolist()})
        refs = {t: decode_reference(q[:, :, t], k[:, :, : t + 1], v[:, :, : t + 1], torch.tensor([t + 1]), rule)
                for t in rows}
        worst, timings = 0.0, []
        for bm, bn, nw, ns, cap, count_regs, attend_regs in configs:
            opts = dict(block_m=bm, block_n=bn, num_warps=nw, num_stages=ns, collect_cap=cap, count_maxnreg=count_regs,
                        attend_maxnreg=attend_regs)
            try:  # a config that does not compile here is reported, not fatal
                out, ex = teacher_forced_triton(q, k, v, rule, return_passes=True, **opts)
            except Exception as exc:  # noqa: BLE001 (Triton raises several compile error types)
                print(f"  N={N} kernel {opts}: FAILED {type(exc).__name__}: {str(exc).splitlines()[-1][:120]}")
                continue
            for t, ref in refs.items():
                worst = max(worst, ((out[:, :, t].float() - ref).norm() / ref.norm()).item())
            assert worst < 2e-2, f"kernel {opts} vs reference rel. error {worst:.2e}"
            tk = statistics.median(timed(lambda: teacher_forced_triton(q, k, v, rule, **opts))[0] for _ in range(3))
            weighted = keys_weighted_passes(ex["passes"], ex["rows_per_program"], N)
            timings.append((tk, opts, ex["passes"].float(), weighted))
            print(f"  N={N} kernel {opts}: {tk * 1e3:.2f} ms, full passes mean "
                  f"{ex['passes'].float().mean().item():.2f} (weighted by keys read {weighted:.2f}) "
                  f"max {int(ex['passes'].max())}")
        k_sparse, best, passes, passes_weighted = min(timings, key=lambda x: x[0])
        kernel_ms = kernel_times_ms(lambda: teacher_forced_triton(q, k, v, rule, **best)) if q.is_cuda else {}
        full = TopKRule(1, 1, 0)  # every row dense-by-rule: only the attention pass runs
        k_attn_only = statistics.median(timed(lambda: teacher_forced_triton(q, k, v, full, **best))[0] for _ in range(3))
        with fused():
            k_dense = statistics.median(
                timed(lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True, scale=1 / math.sqrt(d)))[0]
                for _ in range(5))
        del q, k, v, refs
        sparse_fn = lambda: sequence_nll(model, ids, rule=rule, backend="triton", kernel_options=best)  # noqa: E731

        # ---- timing: interleaved, median
        td, ts = [], []
        for _ in range(repeats):
            td.append(timed(dense_fn)[0])
            ts.append(timed(sparse_fn)[0])
        t_dense, t_sparse = statistics.median(td), statistics.median(ts)
        # bf16 rounding noise of the model, for scale: the same NLLs with other kernel tiles, and the
        # dense function computed by the kernel (c = 1) vs SDPA
        again, _ = sparse_fn()
        tiles_diff = (again - s_nll).abs()
        c1, _ = sequence_nll(model, ids, rule=full, backend="triton", kernel_options=best)
        c1_diff = (c1 - d_nll).abs()
        pk_d, act_d = peak(dense_fn)
        pk_s, act_s = peak(sparse_fn)

        r = dict(
            n=N, coverage=coverage, k_min=k_min, dispatch_threshold=dispatch_threshold, selection=selection,
            weights_random=info.weights_random, weights_sha256=info.weights_sha256,
            mean_nll_dense=d_mean, mean_nll_sparse=s_mean, kernel_vs_reference_rel_err=worst,
            max_abs_dnll_other_tiles=tiles_diff.max().item(), mean_abs_dnll_other_tiles=tiles_diff.mean().item(),
            max_abs_dnll_c1_vs_sdpa=c1_diff.max().item(), mean_abs_dnll_c1_vs_sdpa=c1_diff.mean().item(),
            dense_s=t_dense, sparse_s=t_sparse, ratio=t_sparse / t_dense, total_s=t_dense + t_sparse,
            dense_times_s=td, sparse_times_s=ts,
            peak_dense_gib=pk_d / 2**30, peak_sparse_gib=pk_s / 2**30,
            activ_dense_gib=act_d / 2**30, activ_sparse_gib=act_s / 2**30,
            attn_call_sdpa_ms=k_dense * 1e3, attn_call_topk_ms=k_sparse * 1e3,
            attn_call_topk_attention_pass_only_ms=k_attn_only * 1e3, attn_call_kernel_ms=kernel_ms,
            kernel_options=best,
            kernel_sweep=[dict(ms=t * 1e3, **o) for t, o, _, _ in timings],
            passes_mean=passes.mean().item(), passes_max=int(passes.max().item()),
            passes_keys_weighted_mean=passes_weighted,
        )
        results.append(r)
        print(f"\nN={N}: mean NLL dense {d_mean:.4f}  sparse {s_mean:.4f} (random weights); "
              f"kernel vs reference (sampled rows) rel. err {worst:.1e}")
        print(f"  bf16 noise: |dNLL| other tiles max {r['max_abs_dnll_other_tiles']:.3f} mean "
              f"{r['mean_abs_dnll_other_tiles']:.4f}; kernel at c=1 vs SDPA max {r['max_abs_dnll_c1_vs_sdpa']:.3f} "
              f"mean {r['mean_abs_dnll_c1_vs_sdpa']:.4f} (nats)")
        print(f"  forward dense (SDPA) {t_dense:.3f} s   sparse (Top-K) {t_sparse:.3f} s   "
              f"ratio sparse/dense {r['ratio']:.2f}x   dense+sparse {r['total_s']:.3f} s")
        print(f"  peak memory dense {r['peak_dense_gib']:.2f} GiB (activ. {r['activ_dense_gib']:.2f})   "
              f"sparse {r['peak_sparse_gib']:.2f} GiB (activ. {r['activ_sparse_gib']:.2f})   "
              f"ratio {pk_s / pk_d:.2f}x")
        print(f"  one attention call [1,32,{N},64]: SDPA {r['attn_call_sdpa_ms']:.2f} ms  "
              f"Top-K {r['attn_call_topk_ms']:.2f} ms ({k_sparse / k_dense:.1f}x; a c = 1 query_head attention "
              f"pass alone {k_attn_only * 1e3:.2f} ms); full passes before it per program mean {r['passes_mean']:.2f} "
              f"max {r['passes_max']}; tiles {best}")
        if kernel_ms:
            print("  its kernels (CUPTI, median of 3 calls): "
                  + ", ".join(f"{name} {ms:.2f} ms" for name, ms in kernel_ms.items()))

    print("\n| N | dense s | sparse s | sparse/dense | dense+sparse s | peak dense GiB | peak sparse GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['n']} | {r['dense_s']:.3f} | {r['sparse_s']:.3f} | {r['ratio']:.2f} | {r['total_s']:.3f} | "
              f"{r['peak_dense_gib']:.2f} | {r['peak_sparse_gib']:.2f} |")
    from dcr.producers.kernels import teacher_forced_triton as tft
    from dcr.producers.kernels.diagnostics import format_stats, kernel_stats

    stats = kernel_stats(tft._tf_count_kernel, tft._tf_attend_kernel)
    if stats:
        print("\ncompiled kernels (registers per thread, spills; 255 registers or any spill = low occupancy):")
        print(format_stats(stats))
    if json_out is not None:
        json_out.write_text(json.dumps({"model": info.as_dict(), "results": results, "kernels": stats}, indent=2))


if __name__ == "__main__":
    typer.run(cli)
