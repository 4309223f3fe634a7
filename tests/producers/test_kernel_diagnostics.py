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
