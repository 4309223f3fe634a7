"""A resumed producer never trusts a broken part file: it moves the file aside (named in the log
and the run summary) and produces the cell again; finished cells are skipped, and every part file
records the lock it ran under."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq

from dcr.analysis.engine import compute_verdict
from dcr.prereg.lock import load_locked
from dcr.prereg.measurements import QUALITY, check_part, expected_cells, part_path, read_part, write_part
from dcr.prereg.provenance import lock_record
from dcr.producers.runner import run_cells
from plan_factory import ROOT, lock_copy, synthetic_rows

PLAN = ROOT / "analysis" / "assets" / "seed_v3" / "plans" / "hero-as-run.yaml"


def _run(locked, data, calls):
    """run_cells over the plan's quality cells; a cell's rows are drawn from a generator seeded
    by its window, so a re-produced cell equals the first run's."""
    def compute(cell):
        calls.append(cell["window_index"])
        return QUALITY.table(synthetic_rows(locked.plan, "quality", cell, np.random.default_rng(cell["window_index"])))

    return run_cells(producer="quality", producer_version="t", locked=locked,
                     cells=expected_cells(locked.plan, "quality"), out_dir=data, compute=compute,
                     model_info={}, corpus_info={}, progress=False)


def test_resume_moves_broken_part_files_aside_and_produces_their_cells_again(tmp_path, caplog):
    lock = lock_copy(tmp_path, PLAN)
    locked = load_locked(lock)
    data = tmp_path / "data"
    calls: list[int] = []
    first = _run(locked, data, calls)
    assert calls == [0, 1, 2, 3, 4] and first.skipped == 0 and not first.moved_aside
    cells = expected_cells(locked.plan, "quality")
    original = {i: read_part(part_path(data, "quality", c))[1] for i, c in enumerate(cells)}
    assert all(read_part(p)[0]["lock"] == lock_record(lock) for p in first.written)

    paths = [part_path(data, "quality", c) for c in cells]
    raw = paths[0].read_bytes()
    paths[0].write_bytes(raw[: len(raw) // 2])  # truncated (a killed copy)
    write_part(data, producer="quality", producer_version="t", prereg_sha256=locked.sha256, cell=cells[1],
               table=QUALITY.table([]), environment={}, model={}, corpus={})  # no rows
    write_part(data, producer="quality", producer_version="t", prereg_sha256="f" * 64, cell=cells[2],
               table=original[2], environment={}, model={}, corpus={})  # another plan's
    pq.write_table(read_part(paths[4])[1], paths[3])  # cell 4's file (its dcr.* metadata kept) under cell 3's name

    calls.clear()
    with caplog.at_level(logging.WARNING, logger="dcr.producers.runner"):
        again = _run(locked, data, calls)
    assert sorted(calls) == [0, 1, 2, 3] and again.skipped == 1
    moved = {src: (dst, why) for src, dst, why in again.moved_aside}
    assert set(moved) == set(paths[:4])
    assert "not a readable Parquet file" in moved[paths[0]][1] and "holds no rows" in moved[paths[1]][1]
    assert f"made under plan sha256 {'f' * 64}" in moved[paths[2]][1]
    assert '"window_index":4' in moved[paths[3]][1]
    for src, (dst, _) in moved.items():
        assert dst == src.with_name(src.name + ".broken") and dst.exists()
        assert str(src) in caplog.text and str(dst) in caplog.text
    for i, p in enumerate(paths):  # every cell is whole again, with the same rows as the first run
        meta, table = check_part(p, "quality", prereg_sha256=locked.sha256)
        assert table.equals(original[i]) and meta["cell"] == cells[i]
    v = compute_verdict(lock, data)  # the moved files are listed, not read
    assert sorted(v["data"]["ignored_files"]) == sorted(f"quality/{p.name}.broken" for p in paths[:4])
    assert all(h["status"] == "decided" for h in v["hypotheses"])

    paths[0].write_bytes(b"garbage")
    third = _run(locked, data, calls)
    assert third.moved_aside[0][1] == paths[0].with_name(paths[0].name + ".broken-2")


def test_a_part_file_written_before_the_lock_was_recorded_still_counts(tmp_path):
    """A valid part file without dcr.lock is finished (resume keeps it); the verdict shows it as
    'lock not recorded'."""
    lock = lock_copy(tmp_path, PLAN)
    locked = load_locked(lock)
    data = tmp_path / "data"
    cell = expected_cells(locked.plan, "quality")[0]
    write_part(data, producer="quality", producer_version="t", prereg_sha256=locked.sha256, cell=cell,
               table=QUALITY.table(synthetic_rows(locked.plan, "quality", cell, np.random.default_rng(0))),
               environment={}, model={}, corpus={})
    calls: list[int] = []
    s = _run(locked, data, calls)
    assert calls == [1, 2, 3, 4] and s.skipped == 1 and not s.moved_aside
    files = {f["cell"]["window_index"]: f["provenance"]["lock"] for f in compute_verdict(lock, data)["data"]["files"]}
    assert files == {0: "not_recorded", 1: "this_lock", 2: "this_lock", 3: "this_lock", 4: "this_lock"}
