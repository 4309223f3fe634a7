"""producers.kernels.diagnostics: compiled-kernel statistics (registers, spills) for benchmark logs."""
from __future__ import annotations

import types

import pytest
import torch

from dcr.producers.kernels.diagnostics import format_stats, kernel_stats


def _fake_jit(name, variants):
    """An object shaped like a Triton JITFunction after compilation: device -> (kernels, ...); each
    variant's source holds its constants as ASTSource does, {(arg index,): value}."""
    kernels = {i: types.SimpleNamespace(name=name, n_regs=r, n_spills=sp,
                                        src=types.SimpleNamespace(constants={(1,): bm, (2,): "tf32"}),
                                        metadata=types.SimpleNamespace(num_warps=w, num_stages=2, shared=sh))
               for i, (r, sp, w, sh, bm) in enumerate(variants)}
    return types.SimpleNamespace(__name__=name, arg_names=["X", "BLOCK_M", "PREC"],
                                 device_caches={0: (kernels, {}, None, None, None)})


def test_kernel_stats_reads_every_compiled_variant():
    a = _fake_jit("_a", [(255, 12, 4, 8192, 64), (96, 0, 8, 0, 32)])
    b = _fake_jit("_b", [(40, 0, 4, 1024, 16)])
    rows = kernel_stats(a, b, object())  # an object without compiled variants adds nothing
    assert [(r["kernel"], r["registers"], r["spills"], r["warps"], r["shared_bytes"]) for r in rows] == [
        ("_a", 255, 12, 4, 8192), ("_a", 96, 0, 8, 0), ("_b", 40, 0, 4, 1024)]
    assert [r["constexprs"] for r in rows] == [{"BLOCK_M": 64, "PREC": "tf32"}, {"BLOCK_M": 32, "PREC": "tf32"},
                                                {"BLOCK_M": 16, "PREC": "tf32"}]
    text = format_stats(rows)
    assert "_a: 255 registers/thread, 12 spilled, 4 warps" in text and text.count("\n") == 2
    assert "| BLOCK_M=32 PREC=tf32" in text.splitlines()[1]


@pytest.mark.gpu
def test_kernel_stats_of_a_real_launch():
    from dcr.producers.kernels import decode as dk
    from dcr.prereg.rule import TopKRule

    q = torch.randn(1, 8, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 1024, 64, device="cuda", dtype=torch.bfloat16)
    dk.topk_decode(q, k, k, torch.tensor([1024], device="cuda"), TopKRule("0.15", 16, 0))
    rows = kernel_stats(dk._score_kernel, dk._resolve_kernel)
    assert rows and all(0 < r["registers"] <= 255 and r["spills"] >= 0 for r in rows)
    assert any(r["constexprs"].get("CAP") == 1024 for r in rows)  # the resolve's candidate list: the whole row


def _rec(name, dur_us):
    return {"name": name, "ts": 0.0, "dur": dur_us}


def test_kernel_times_ms_sums_per_call_and_takes_the_median(monkeypatch):
    """kernel_times_ms: one warm-up call, then per profiled call each name's durations summed (µs -> ms),
    and the median over calls; a name missing from some call is dropped (it is not one call's kernel)."""
    import dcr.producers.kernels.diagnostics as diag

    calls = []
    records = iter([
        [_rec("a", 1000.0), _rec("a", 500.0), _rec("b", 10.0)],
        [_rec("a", 3000.0), _rec("b", 30.0)],
        [_rec("a", 2000.0), _rec("b", 20.0), _rec("c", 7.0)],
    ])

    def fake_records(call):
        call()
        return next(records)

    monkeypatch.setattr(diag, "kernel_records", fake_records)
    out = diag.kernel_times_ms(lambda: calls.append(1), calls=3)
    assert len(calls) == 4  # the warm-up and 3 profiled calls
    assert out == pytest.approx({"a": 2.0, "b": 0.02})  # medians of (1.5, 3, 2) and (0.01, 0.03, 0.02) ms
