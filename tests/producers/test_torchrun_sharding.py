"""Multi-process runs under torchrun: `torchrun --nproc-per-node G -m dcr.cli produce quality ...`.

Sharding needs no process group: each rank reads RANK / WORLD_SIZE (set by torchrun) and takes
cell i when i % WORLD_SIZE == RANK (producers/runner.py); ranks never talk to each other, so no
gloo/NCCL group is created. Checked here on the CPU with real torchrun processes on the quality
producer (shipped reference model, small plan): 2 ranks write exactly the cells 1 rank writes,
with identical numbers; after deleting some part files, a re-sharded run (3 ranks) writes exactly
the missing cells and leaves the others untouched.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from plan_factory import locked_demo_quality_plan

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")


@pytest.fixture(scope="module")
def plan_lock(tmp_path_factory):
    return locked_demo_quality_plan(tmp_path_factory.mktemp("torchrun"), study_id="torchrun-sharding-test",
                                    contexts=[32], coverages=[0.25, 0.5])


def _torchrun(nproc: int, lock: Path, out: Path) -> list[tuple[int, int, int, int]]:
    """Run the CLI under torchrun; returns each rank's (written, already done, in shard, total)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "dcr.cli", "produce", "quality",
           "--plan", str(lock), "--out", str(out), "--device", "auto", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    found = re.findall(r"quality: (\d+) cell\(s\) written, (\d+) already done, (\d+) in this shard of (\d+)",
                       res.stdout + res.stderr)
    assert len(found) == nproc, res.stdout + res.stderr
    return [tuple(map(int, f)) for f in found]


def _table(out: Path):
    return ds.dataset(out / "quality").to_table().to_pandas().sort_values(["window_index", "N", "coverage"])


def test_two_ranks_equal_one_rank_and_reshard_completes_missing(plan_lock, tmp_path):
    from dcr.producers.quality import produce_quality

    one = tmp_path / "one"
    single = produce_quality(plan_lock, one, device="cpu", progress=False, rank=0, world_size=1)
    assert len(single.written) == single.total == 6

    two = tmp_path / "two"
    ranks = _torchrun(2, plan_lock, two)
    assert sorted(r[2] for r in ranks) == [3, 3] and all(r[0] == 3 and r[1] == 0 and r[3] == 6 for r in ranks)
    names1 = sorted(p.name for p in (one / "quality").glob("part-*.parquet"))
    names2 = sorted(p.name for p in (two / "quality").glob("part-*.parquet"))
    assert names1 == names2 and len(names1) == 6
    a, b = _table(one), _table(two)
    for col in ["window_index", "window_start", "N", "coverage", "nll_sum_dense", "nll_sum_sparse",
                "delta_ppl_pct", "sparse_rows", "dense_rows"]:
        assert a[col].tolist() == b[col].tolist(), col  # bit-identical: same cells, same maths

    # resume with another world size: delete two parts, 3 ranks write exactly those two
    parts = sorted((two / "quality").glob("part-*.parquet"))
    gone = {parts[1].name, parts[4].name}
    for p in parts:
        if p.name in gone:
            p.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (two / "quality").glob("part-*.parquet")}
    ranks = _torchrun(3, plan_lock, two)
    assert sum(r[0] for r in ranks) == 2 and sum(r[1] for r in ranks) == 4 and sum(r[2] for r in ranks) == 6
    after = {p.name: p.stat().st_mtime_ns for p in (two / "quality").glob("part-*.parquet")}
    assert set(after) == set(kept) | gone
    assert all(after[n] == t for n, t in kept.items())  # finished cells were not rewritten
    c = _table(two)
    for col in ["nll_sum_dense", "nll_sum_sparse", "delta_ppl_pct"]:
        assert a[col].tolist() == c[col].tolist(), col
