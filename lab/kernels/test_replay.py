"""The simulators replay the kernels' threshold searches: the same number of passes, row by row.

``simulate_decode_select.py`` copies the decode op's select search and ``simulate_tf_passes.py``
the teacher-forced counting kernel's; both exist to count the passes of variants of a search
without a GPU, which is only worth anything while they stay exact copies. Run with
``python -m pytest lab/kernels`` (not part of CI; about a minute on two CPU cores).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import simulate_decode_select
import simulate_tf_passes
from dcr.prereg.rule import TopKRule
from dcr.producers.kernels.decode import _resolve_kernel
from dcr.producers.kernels.teacher_forced import _gauss_quantiles, teacher_forced_triton
from dcr.producers.kernels.triton_rule import rule_args

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decode_select_simulator_replays_the_search(seed):
    """Every row's passes, on scores of two shapes (Gaussian, and Student t with sink outliers). Runs
    on the scores as given, so it also holds on a GPU (no dot products involved)."""
    gen = torch.Generator().manual_seed(seed)
    rows, n = 16, 3000
    t2 = torch.randn(rows // 2, n, generator=gen) / torch.sqrt(-torch.log(torch.rand(rows // 2, n, generator=gen)))
    s = torch.cat([torch.randn(rows // 2, n, generator=gen), t2 * 3])  # Student t(2) = Z / sqrt(Exp(1))
    s[rows // 2:, :3] = 40.0
    rule = TopKRule("0.15", 64, 0)
    lengths = torch.full((rows // 8,), n, dtype=torch.int32, device=DEV)  # 8 ranking rows per sequence
    thr = torch.empty(rows, 2, dtype=torch.int32, device=DEV)
    passes = torch.empty(rows, dtype=torch.int32, device=DEV)
    path = torch.empty(rows, dtype=torch.int32, device=DEV)
    zero = torch.zeros(rows, dtype=torch.int32, device=DEV)  # no band candidates: the whole-row search
    cand_s, cand_i = torch.empty(rows, 16, device=DEV), torch.empty(rows, 16, dtype=torch.int32, device=DEV)
    _resolve_kernel[(rows,)](s.to(DEV), torch.zeros(rows, 2, device=DEV), zero, zero, cand_s, cand_i, lengths, thr,
                             passes, path, n, 8, *rule_args(rule), SAMP=256, CAP=16, BLOCK=4096, PDL=False, num_warps=8)
    k = rule.k_eff(n)
    replay = [simulate_decode_select.search(row, k)[0] for row in s.numpy().astype(np.float32)]
    assert passes.cpu().tolist() == replay


@pytest.mark.skipif(torch.cuda.is_available(), reason="replays the interpreter's fp32 scores; a GPU dot sums in "
                    "another order, so a near-tie may fall the other way")
@pytest.mark.parametrize("seed,heavy", [(1, False), (2, False), (3, True)])
def test_tf_passes_simulator_replays_the_counting_search(seed, heavy):
    """Every program's passes and every row's final bracket and counts (bit for bit), for two
    coverages, on Gaussian scores and on heavier-tailed ones (key norms spread log-normally, 4 sink
    keys: first guesses that miss, brackets wider than a binade, the density model's clamp)."""
    n, bm = 640, 64
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 1, n, 64, generator=gen) for _ in range(3))
    if heavy:
        k = k * torch.exp(torch.randn(1, 1, n, 1, generator=gen))
        k[:, :, :4] *= 8
    for rule in (TopKRule("0.15", 16, 0), TopKRule("0.3", 64, 0)):
        _, ex = teacher_forced_triton(q, k, v, rule, return_passes=True, block_m=bm, block_n=64)
        zq = _gauss_quantiles(n, rule, "cpu").numpy()
        scores = (q[0, 0] @ k[0, 0].T).numpy().astype(np.float32)
        replay, brackets = [], []
        for pid in range(n // bm):
            rows = np.arange(pid * bm, (pid + 1) * bm)
            t = rows + 1
            kk = rule.k_eff(t)
            vis = np.arange((pid + 1) * bm)[None, :] <= rows[:, None]
            replay.append(simulate_tf_passes.search(scores[rows, : (pid + 1) * bm], vis, t, kk, zq[rows],
                                                    end_n=(pid + 1) * bm, state=brackets))
        assert ex["passes"][0].tolist() == replay, rule
        assert np.array_equal(ex["brackets"][0].numpy(), np.concatenate(brackets)), rule
