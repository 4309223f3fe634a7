"""The loop every producer shares: locked plan → its cells → one atomic Parquet part per cell.

* refuses an unlocked or altered plan (``prereg.lock.load_locked`` verifies the hash);
* the cells come from the plan (``prereg.measurements.expected_cells``), never from ad-hoc flags;
* cells already written are skipped, so a crashed run resumes where it stopped; a part file that
  fails :func:`prereg.measurements.check_part` (truncated, no rows, another plan's or another
  cell's metadata) is moved aside to ``part-<key>.parquet.broken[-n]`` (logged, listed in
  ``RunSummary.moved_aside``) and its cell is produced again;
* under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) cell i goes to rank ``i % WORLD_SIZE``: each
  rank writes its own part files and a re-sharded run completes exactly the missing cells;
* every random draw in a cell comes from :func:`cell_generator_seed`, a seed derived from the
  plan hash and the cell, so results do not depend on which cells ran before;
* every part file records :func:`measurement_environment` (``dcr.environment``) and the lock file
  it ran under (``dcr.lock``, :func:`prereg.provenance.lock_record`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from dcr.prereg import measurements, provenance


log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    producer: str
    total: int
    shard: list[int]
    written: list[Path] = field(default_factory=list)
    skipped: int = 0
    moved_aside: list[tuple[Path, Path, str]] = field(default_factory=list)  # (part file, moved to, problem)


def shard_of(world_size: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """(rank, world_size) from the arguments or torchrun's environment (default: 0, 1)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not (0 <= rank < world_size):
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return rank, world_size


def measurement_environment() -> dict[str, Any]:
    """``dcr.environment`` of a part file: :func:`prereg.provenance.environment` plus torch, triton,
    CUDA and, when a GPU is visible, its name, count and driver (None for what is missing)."""
    env = provenance.environment()
    try:
        import torch
    except Exception:  # noqa: BLE001 - absent or broken torch: recorded as missing
        return {**env, "torch": None, "triton": None, "cuda": None, "gpu": None}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - absent or broken triton: recorded as missing
        env["triton"] = None
    env["torch"], env["cuda"], env["gpu"] = torch.__version__, torch.version.cuda, None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
        env["gpu_count"] = torch.cuda.device_count()
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = None
    return env


def cell_generator_seed(plan_sha256: str, cell: dict[str, Any]) -> int:
    """A 63-bit seed for the cell's own generator: sha256(plan hash + the cell's canonical JSON)."""
    blob = plan_sha256 + measurements.cell_json(cell)
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big") >> 1


def select_cells(cells: list[dict[str, Any]], where: dict[str, list[str]] | None) -> list[dict[str, Any]]:
    """The cells whose value of each key in ``where`` is one of its values (compared as text, so
    ``N=1024`` and ``coverage=0.15`` match 1024 and 0.15). ValueError naming a key that is not a cell
    key or a value no cell has."""
    if not where:
        return cells
    keys = set().union(*(c.keys() for c in cells)) if cells else set()
    for key, values in where.items():
        if key not in keys:
            raise ValueError(f"--where {key}=...: '{key}' is not a cell key of these cells ({', '.join(sorted(keys))})")
        present = {str(c.get(key)) for c in cells}
        unknown = [v for v in values if v not in present]
        if unknown:
            raise ValueError(f"--where {key}: no cell has {key} in {unknown} (values: {', '.join(sorted(present))})")
    return [c for c in cells if all(str(c.get(k)) in vs for k, vs in where.items())]


def _part_problem(path: Path, producer: str, plan_sha256: str, cell: dict[str, Any]) -> str | None:
    """What is wrong with the existing part file ``path`` of ``cell`` under this plan (None: it is finished)."""
    try:
        meta, _ = measurements.check_part(path, producer, prereg_sha256=plan_sha256)
    except measurements.PartFileError as exc:
        return str(exc)
    if measurements.cell_id(meta["cell"]) != measurements.cell_id(cell):
        return f"{path}: dcr.cell is {measurements.cell_json(meta['cell'])}, not this file's cell {measurements.cell_json(cell)}"
    return None


def _move_aside(path: Path) -> Path:
    """Rename a broken part file to ``<name>.broken`` (``.broken-2``, … when taken); returns the new path."""
    n, target = 1, path.with_name(path.name + ".broken")
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.broken-{n}")
    os.replace(path, target)
    return target


def run_cells(
    *,
    producer: str,
    producer_version: str,
    locked: Any,
    cells: list[dict[str, Any]],
    out_dir: Path,
    compute: Callable[[dict[str, Any]], pa.Table],
    model_info: dict[str, Any],
    corpus_info: dict[str, Any],
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    where: dict[str, list[str]] | None = None,
) -> RunSummary:
    """Compute and write every cell of this rank's shard that has no finished part file yet.

    ``locked`` is the verified lock (``prereg.lock.LockedPlan``) the cells come from.
    ``compute(cell) -> pyarrow.Table`` returns the cell's rows; it must take all randomness from
    ``cell_generator_seed(locked.sha256, cell)``. ``where`` runs only some cells (:func:`select_cells`):
    the rest of the plan's cells are left for another run into the same folder.
    """
    from tqdm.auto import tqdm

    cells = select_cells(cells, where)
    rank, world_size = shard_of(world_size, rank)
    mine = [i for i in range(len(cells)) if i % world_size == rank]
    summary = RunSummary(producer=producer, total=len(cells), shard=mine)
    todo = []
    for i in mine:
        path = measurements.part_path(out_dir, producer, cells[i])
        if path.exists():
            problem = _part_problem(path, producer, locked.sha256, cells[i])
            if problem is None:
                continue
            moved = _move_aside(path)
            log.warning("%s: broken part file moved aside to %s; its cell is produced again (%s)", path, moved, problem)
            summary.moved_aside.append((path, moved, problem))
        todo.append(i)
    summary.skipped = len(mine) - len(todo)
    env = measurement_environment()
    lock = provenance.lock_record(locked.path)
    bar = tqdm(todo, desc=f"{producer} (rank {rank}/{world_size})", unit="cell", disable=not progress)
    for i in bar:
        cell = cells[i]
        table = compute(cell)
        summary.written.append(measurements.write_part(
            out_dir, producer=producer, producer_version=producer_version, prereg_sha256=locked.sha256,
            cell=cell, table=table, environment=env, model=model_info, corpus=corpus_info, lock=lock))
    return summary
