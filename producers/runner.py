"""The loop every producer shares: locked plan → its cells → one atomic Parquet part per cell.

* refuses an unlocked or altered plan (``prereg.lock.load_locked`` verifies the hash);
* the cells come from the plan (``prereg.cells.expected_cells``), never from ad-hoc flags;
* cells already written are skipped, so a crashed run resumes where it stopped;
* under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) cell i goes to rank ``i % WORLD_SIZE``: each
  rank writes its own part files and a re-sharded run completes exactly the missing cells;
* every random draw in a cell comes from :func:`cell_generator_seed`, a seed derived from the
  plan hash and the cell, so results do not depend on which cells ran before (flaw 13).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from dcr.producers import sink


@dataclass
class RunSummary:
    producer: str
    total: int
    shard: list[int]
    written: list[Path] = field(default_factory=list)
    skipped: int = 0


def shard_of(world_size: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """(rank, world_size) from the arguments or torchrun's environment (default: 0, 1)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not (0 <= rank < world_size):
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return rank, world_size


def cell_generator_seed(plan_sha256: str, cell: dict[str, Any]) -> int:
    """A 63-bit seed for the cell's own generator: sha256(plan hash + canonical cell)."""
    blob = plan_sha256 + json.dumps(cell, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big") >> 1


def run_cells(
    *,
    producer: str,
    producer_version: str,
    plan_sha256: str,
    cells: list[dict[str, Any]],
    out_dir: Path,
    compute: Callable[[dict[str, Any]], pa.Table],
    model_info: dict[str, Any],
    corpus_info: dict[str, Any],
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> RunSummary:
    """Compute and write every cell of this rank's shard that is not written yet.

    ``compute(cell) -> pyarrow.Table`` returns the cell's rows; it must take all randomness from
    ``cell_generator_seed(plan_sha256, cell)``.
    """
    from tqdm.auto import tqdm

    rank, world_size = shard_of(world_size, rank)
    mine = [i for i in range(len(cells)) if i % world_size == rank]
    summary = RunSummary(producer=producer, total=len(cells), shard=mine)
    todo = [i for i in mine if not sink.is_done(out_dir, producer, cells[i])]
    summary.skipped = len(mine) - len(todo)
    env = sink.environment()
    bar = tqdm(todo, desc=f"{producer} (rank {rank}/{world_size})", unit="cell", disable=not progress)
    for i in bar:
        cell = cells[i]
        table = compute(cell)
        summary.written.append(sink.write_part(
            out_dir, producer=producer, producer_version=producer_version, prereg_sha256=plan_sha256,
            cell=cell, table=table, environment=env, model=model_info, corpus=corpus_info))
    return summary
