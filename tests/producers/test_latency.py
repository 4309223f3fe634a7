"""The static-cache decode step and `dcr produce latency`.

Independent references: the Hugging Face model's own forward (SDPA attention, not ours) for the
dense step; the HF forward with the Top-K rule through ``producers.attention`` (reference
backend, teacher-forced) for the sparse step; the Triton decode op against the reference rule.
The latency protocol is tested on the CPU as a dry run with a fake timer (never a measurement);
GPU tests (``gpu`` mark) run the real thing at small sizes.
"""
from __future__ import annotations

import json
import os

import pytest
import torch


from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml
from typer.testing import CliRunner

from dcr.prereg.rule import TopKRule
from dcr.producers.static_decode import StaticDecoder

ROOT = Path(__file__).resolve().parents[2]


def _tiny(device="cpu", dtype="fp32", attn="sdpa", seed=3):
    from dcr.producers.models import load_model

    return load_model("tiny-llama-random", dtype=dtype, device=device, seed=seed, attn_implementation=attn,
                      checksum=False).model


# ---------------------------------------------------------------------------- static decode step
def test_dense_step_equals_hf_forward():
    model = _tiny()
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, 512, (3, 40), generator=g)
    with torch.no_grad():
        ref = model(ids).logits.double()  # transformers' own SDPA path, full teacher-forced forward
    dec = StaticDecoder(model, batch=3, max_len=48, attention="dense")
    last = dec.prefill(ids[:, :25])
    torch.testing.assert_close(last.double(), ref[:, 24], rtol=1e-5, atol=1e-5)
    for p in range(25, 40):
        torch.testing.assert_close(dec.step(ids[:, p], p).double(), ref[:, p], rtol=1e-5, atol=1e-5)
    # a wrong position (the cache holds 40 tokens; stepping at 20 reads 21 keys) gives other logits
    assert not torch.allclose(dec.step(ids[:, 39], 20).double(), ref[:, 39], atol=1e-3)


def test_sparse_reference_step_equals_hf_topk_forward():
    from dcr.producers.attention import CTX_KWARG, TopKContext

    model = _tiny(attn=None)  # load_model's default: the project's attention (Top-K when a context is given)
    rule = TopKRule("0.25", k_min=4, dispatch_threshold=8)
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(0, 512, (2, 40), generator=g)
    ctx = TopKContext(rule=rule, backend="reference")
    with torch.no_grad():
        ref = model(ids, **{CTX_KWARG: ctx}).logits.double()  # teacher-forced, each row its own causal Top-K
    assert ctx.sparse_layer_calls > 0
    dec = StaticDecoder(model, batch=2, max_len=40, attention="sparse", rule=rule, sparse_impl="reference")
    dec.prefill(ids[:, :7])  # rows 0..6 see < 8 keys: dense under the rule, so a dense prefill is exact
    for p in range(7, 40):
        torch.testing.assert_close(dec.step(ids[:, p], p).double(), ref[:, p], rtol=1e-5, atol=1e-5)
    dense = model(ids).logits.double()
    assert (ref[:, 39] - dense[:, 39]).abs().max() > 1e-4  # the rule really dropped keys


@pytest.mark.parametrize("selection", ["query_head", "kv_group"])
def test_sparse_triton_step_equals_reference_step(selection):
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs the Triton interpreter
    model = _tiny(device=dev)
    rule = TopKRule("0.2", k_min=4, dispatch_threshold=4, selection=selection)
    g = torch.Generator().manual_seed(13)
    ids = torch.randint(0, 512, (2, 33), generator=g).to(dev)
    base = StaticDecoder(model, batch=2, max_len=33, attention="dense")
    base.prefill(ids[:, :32])
    cache = lambda: ([t.clone() for t in base.k_cache], [t.clone() for t in base.v_cache])  # noqa: E731
    tri = StaticDecoder(model, batch=2, max_len=33, attention="sparse", rule=rule, sparse_impl="triton", cache=cache())
    ref = StaticDecoder(model, batch=2, max_len=33, attention="sparse", rule=rule, sparse_impl="reference", cache=cache())
    torch.testing.assert_close(tri.step(ids[:, 32], 32), ref.step(ids[:, 32], 32), rtol=1e-4, atol=1e-4)


def test_decoder_rejects_bad_arguments():
    model = _tiny()
    with pytest.raises(ValueError, match="rule"):
        StaticDecoder(model, batch=1, max_len=8, attention="sparse")
    with pytest.raises(ValueError, match="dense' or 'sparse"):
        StaticDecoder(model, batch=1, max_len=8, attention="flash")
    d = StaticDecoder(model, batch=1, max_len=8, attention="dense")
    with pytest.raises(ValueError, match="outside the cache"):
        d.step(torch.zeros(1, dtype=torch.long), 8)


# ---------------------------------------------------------------------------- protocol
def test_run_order():
    from dcr.producers.latency import run_order

    fixed = run_order("interleaved_fixed", 4, torch.Generator().manual_seed(0))
    assert fixed == [(r, a) for r in range(4) for a in ("dense", "sparse")]
    a = run_order("interleaved_random", 60, torch.Generator().manual_seed(5))
    b = run_order("interleaved_random", 60, torch.Generator().manual_seed(5))
    c = run_order("interleaved_random", 60, torch.Generator().manual_seed(6))
    assert a == b and a != c
    for r in range(60):  # every round holds both arms, once each
        assert sorted(x for rr, x in a if rr == r) == ["dense", "sparse"]
    firsts = [a[2 * r][1] for r in range(60)]
    assert 10 < firsts.count("dense") < 50  # randomised (P(fail) < 1e-5 for a fair coin)
    arms = ("dense", "query_head", "kv_group")
    assert run_order("interleaved_fixed", 2, None, arms) == [(r, a) for r in range(2) for a in arms]
    three = run_order("interleaved_random", 60, torch.Generator().manual_seed(5), arms)
    for r in range(60):
        assert sorted(x for rr, x in three if rr == r) == sorted(arms)
    assert len({tuple(x for rr, x in three if rr == r) for r in range(60)}) == 6  # all 3! orders occur


def _lock_latency_plan(d: Path, dtype: str, op_layer: int | None = 1, sparse_arms: list | None = None) -> Path:
    from dcr.prereg.lock import lock_plan

    plan = yaml.safe_load((ROOT / "prereg" / "registrations" / "latency-hero-v2.yaml").read_text())
    plan["amends"] = None  # a new study of its own
    plan["study"]["id"] = "latency-dry-run-test"
    plan["model"] = {"source": "preset", "id": "tiny-llama-random", "revision": None, "dtype": dtype,
                     "preset_seed": 7}
    plan["corpus"] = {"name": "reference-model-heldout", "source": "shipped", "split": None, "path": None,
                      "sha256": None}
    plan["windows"] = {"placement": "disjoint", "count": 2, "start": 0, "offsets": None}
    plan["attention"]["k_min"] = 4
    plan["attention"]["dispatch_threshold"] = 4
    plan["producers"]["latency"] = {"levels": ["op", "model"], "contexts": [40], "batch_sizes": [1, 3],
                                    "coverages": [0.25], "warmup": 2, "repetitions": 5, "sessions": 2,
                                    "order": "interleaved_random", "seed": 1, "op_layer": op_layer}
    if sparse_arms is not None:
        plan["producers"]["latency"]["sparse_arms"] = sparse_arms
        for h in plan["hypotheses"]:
            h["statistics"][0]["params"]["denominator"] = sparse_arms[-1]["id"]
    for h in plan["hypotheses"]:
        h["select"] = {**h["select"], "N": 40, "B": 3, "coverage": 0.25}
        h["gates"][0]["value"] = 10
    path = d / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False, allow_unicode=True))
    lock, _, _ = lock_plan(path)
    return lock


@pytest.fixture(scope="module")
def latency_plan(tmp_path_factory):
    return _lock_latency_plan(tmp_path_factory.mktemp("latency"), "float32")


class FakeTimer:
    """Records every call (and runs it); returns 1, 2, 3, ... ms: a counter, not a time."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn):
        fn()
        self.calls += 1
        return float(self.calls)


def test_cpu_is_refused(latency_plan, tmp_path):
    from dcr.cli import app
    from dcr.producers.latency import produce_latency

    with pytest.raises(ValueError, match="meaningless"):
        produce_latency(latency_plan, tmp_path / "o", device="cpu")
    res = CliRunner().invoke(app, ["produce", "latency", "--plan", str(latency_plan), "--out", str(tmp_path / "o"),
                                   "--device", "cpu"])
    assert res.exit_code == 2 and "meaningless" in res.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("op_layer", [None, 2])  # the tiny preset has 2 layers: 0 and 1
def test_op_level_needs_a_registered_layer(op_layer, tmp_path):
    from dcr.producers.latency import produce_latency

    lock = _lock_latency_plan(tmp_path, "float32", op_layer=op_layer)
    with pytest.raises(ValueError, match="op_layer"):
        produce_latency(lock, tmp_path / "o", device="cpu", dry_run=True)
    assert not (tmp_path / "o").exists()


def test_dry_run_cells_order_and_schema(latency_plan, tmp_path):
    from dcr.prereg.lock import load_locked
    from dcr.prereg.measurements import LATENCY, cell_id, expected_cells, read_metadata, rows_per_cell
    from dcr.producers.latency import DRY_RUN_PRODUCER, run_order
    from dcr.producers.runner import cell_generator_seed

    locked = load_locked(latency_plan)
    timer = FakeTimer()
    s = produce_latency_dry(latency_plan, tmp_path / "o", timer)
    cells = expected_cells(locked.plan, "latency")
    assert s.total == len(cells) == 2 * 1 * 2 * 1 * 2 and len(s.written) == len(cells)
    assert not (tmp_path / "o" / "latency").exists()  # a dry run never lands where the verdict engine reads
    R, W = 5, 2
    assert timer.calls == len(cells) * 2 * (W + R)
    required, optional = LATENCY.required, LATENCY.optional
    seen = set()
    for path in sorted((tmp_path / "o" / DRY_RUN_PRODUCER).glob("part-*.parquet")):
        meta = read_metadata(path)
        t = pq.read_table(path)
        for name, typ in {**required, **optional}.items():
            assert t.schema.field(name).type == typ
        df = t.to_pandas()
        cell = meta["cell"]
        seen.add(cell_id(cell))
        assert len(df) == 2 * R == rows_per_cell(locked.plan, "latency", cell, "ms")
        for k in ("level", "N", "B", "coverage", "session"):
            assert (df[k] == cell[k]).all()
        assert df.order_index.tolist() == list(range(2 * R))
        # the recorded order is the cell's own seeded order, after the same generator drew the warm-up
        g = torch.Generator().manual_seed(cell_generator_seed(locked.sha256, cell))
        assert list(zip(df.rep, df.arm)) == run_order("interleaved_random", R, g)
        # fake timer values: consecutive counters after the warm-up calls of this cell
        assert np.all(np.diff(df.ms.to_numpy()) == 1.0)
        lat = json.loads(pq.read_schema(path).metadata[b"dcr.latency"])
        assert lat["dry_run"] is True and lat["protocol"]["cuda_graphs"] is False
        assert lat["sparse_impl"] == "reference" and lat["rules"]["sparse"]["k_eff"] == 10
        assert all(v < 1e-4 for v in lat["checks"].values()), lat["checks"]
        assert set(df.arm) == {"dense", "sparse"}
    assert seen == {cell_id(c) for c in cells}
    again = produce_latency_dry(latency_plan, tmp_path / "o", FakeTimer())
    assert again.written == [] and again.skipped == again.total  # resume: nothing redone


def test_dry_run_sparse_arms(tmp_path, monkeypatch):
    """Registered sparse arms: every round times dense and each arm once, and each timed call of an
    arm runs the rule with that arm's selection (recorded from the reference rule's calls inside the
    timed call; the dense arm calls it never)."""
    import dcr.producers.kernels.reference as reference
    import dcr.producers.static_decode as static_decode
    from dcr.prereg.lock import load_locked
    from dcr.prereg.measurements import rows_per_cell
    from dcr.producers.latency import produce_latency

    seen: list[str] = []
    real = reference.decode_reference

    def recording(q, k, v, lengths, rule, **kw):
        seen.append(rule.selection)
        return real(q, k, v, lengths, rule, **kw)

    monkeypatch.setattr(reference, "decode_reference", recording)
    monkeypatch.setattr(static_decode, "decode_reference", recording)
    selections_of_call: dict[float, set[str]] = {}

    class RecordingTimer(FakeTimer):
        def __call__(self, fn):
            seen.clear()
            ms = super().__call__(fn)
            selections_of_call[ms] = set(seen)
            return ms

    arms = [{"id": "qh", "selection": "query_head"}, {"id": "kvg", "selection": "kv_group"}]
    lock = _lock_latency_plan(tmp_path, "float32", sparse_arms=arms)
    plan = load_locked(lock).plan
    timer = RecordingTimer()
    s = produce_latency(lock, tmp_path / "o", device="cpu", dry_run=True, timer=timer, progress=False)
    assert len(s.written) == 8 and timer.calls == 8 * 3 * (2 + 5)
    want = {"dense": set(), "qh": {"query_head"}, "kvg": {"kv_group"}}
    for path in sorted((tmp_path / "o" / "latency_dry_run").glob("part-*.parquet")):
        df = pq.read_table(path).to_pandas()
        lat = json.loads(pq.read_schema(path).metadata[b"dcr.latency"])
        assert len(df) == 15 == rows_per_cell(plan, "latency", {}, "ms")
        assert df.groupby("arm").size().to_dict() == {"dense": 5, "kvg": 5, "qh": 5}
        assert {a: r["selection"] for a, r in lat["rules"].items()} == {"qh": "query_head", "kvg": "kv_group"}
        assert {"qh_vs_reference", "kvg_vs_reference"} <= set(lat["checks"])
        for arm, ms in zip(df.arm, df.ms):
            assert selections_of_call[ms] == want[arm], (arm, ms)


def test_dry_run_default_timer_gives_nan(latency_plan, tmp_path):
    from dcr.producers.latency import produce_latency

    s = produce_latency(latency_plan, tmp_path / "o", device="cpu", dry_run=True, progress=False, rank=0,
                        world_size=8)
    df = ds.dataset(tmp_path / "o" / "latency_dry_run").to_table().to_pandas()
    assert len(s.written) == 1 and len(df) == 10 and df.ms.isna().all()



def produce_latency_dry(lock, out, timer):
    from dcr.producers.latency import produce_latency

    return produce_latency(lock, out, device="cpu", dry_run=True, timer=timer, progress=False)


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_graph_step_equals_eager_and_hf():
    model = _tiny(device="cuda", dtype="bf16", attn="sdpa")
    g = torch.Generator().manual_seed(21)
    ids = torch.randint(0, 512, (2, 300), generator=g).cuda()
    with torch.no_grad():
        ref = model(ids).logits.float()
    rule = TopKRule("0.15", k_min=16, dispatch_threshold=16)
    dense = StaticDecoder(model, batch=2, max_len=300, attention="dense")
    dense.prefill(ids[:, :299])
    sparse = StaticDecoder(model, batch=2, max_len=300, attention="sparse", rule=rule,
                           cache=(dense.k_cache, dense.v_cache))
    refdec = StaticDecoder(model, batch=2, max_len=300, attention="sparse", rule=rule, sparse_impl="reference",
                           cache=(dense.k_cache, dense.v_cache))
    gd, gs = dense.capture(299, ids[:, 299]), sparse.capture(299, ids[:, 299])
    ld = gd.replay().float().clone()
    torch.testing.assert_close(ld, dense.step(ids[:, 299], 299).float(), rtol=0, atol=0)
    assert (ld - ref[:, 299]).norm() / ref[:, 299].norm() < 2e-2
    ls = gs.replay().float().clone()
    lr = refdec.step(ids[:, 299], 299).float()
    assert (ls - lr).norm() / lr.norm() < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("sparse_arms", [None, [{"id": "qh", "selection": "query_head"},
                                                {"id": "kvg", "selection": "kv_group"}]])
def test_gpu_produce_latency_small(tmp_path, sparse_arms):
    from dcr.analysis.engine import compute_verdict
    from dcr.producers.latency import produce_latency
    from dcr.prereg.measurements import read_metadata

    # the fused SDPA backends want bf16/fp16
    lock = _lock_latency_plan(tmp_path, "bfloat16", sparse_arms=sparse_arms)
    s = produce_latency(lock, tmp_path / "o", device="cuda", progress=False)
    assert len(s.written) == s.total == 8
    df = ds.dataset(tmp_path / "o" / "latency").to_table().to_pandas()
    arms = 1 + (1 if sparse_arms is None else len(sparse_arms))
    assert len(df) == 8 * 5 * arms and np.isfinite(df.ms).all() and (df.ms > 0).all()
    assert df.groupby("arm").size().nunique() == 1 and df.arm.nunique() == arms
    v = compute_verdict(lock, tmp_path / "o")
    for h in v["hypotheses"]:  # each reads its own arm: 2 sessions x 5 repetitions
        assert h["status"] == "decided" and h["statistics"][0]["values"]["n_denominator"] == 10, h
    lat = json.loads(pq.read_schema(s.written[0]).metadata[b"dcr.latency"])
    assert lat["dry_run"] is False and lat["gpu_before"]["torch_device_name"]
    assert read_metadata(s.written[0])["environment"]["gpu"]
