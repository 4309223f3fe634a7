"""The Parquet sink: one part file per cell, written atomically, with provenance metadata.

File metadata (Parquet key-value, UTF-8 JSON values) on every part file:

* ``dcr.prereg_sha256`` — hash of the locked plan the cell was produced under;
* ``dcr.producer`` / ``dcr.producer_version`` — who wrote it;
* ``dcr.cell`` — the cell's key (JSON object), also the file name's hash;
* ``dcr.environment`` — GPU, driver, torch, triton, transformers, CUDA, git commit, dirty flag;
* ``dcr.model`` — model id, revision, weights checksum, ``weights_random``;
* ``dcr.corpus`` — corpus name and token-array hash.

Nothing here imports torch at import time; :func:`environment` imports what is installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

META_PREFIX = "dcr."
REQUIRED_META = ("prereg_sha256", "producer", "producer_version", "cell", "environment", "model", "corpus")


def cell_key(cell: dict[str, Any]) -> str:
    """Stable short name of a cell: sha256 of its canonical JSON, first 16 hex digits."""
    return hashlib.sha256(json.dumps(cell, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def part_path(out_dir: Path, producer: str, cell: dict[str, Any]) -> Path:
    return Path(out_dir) / producer / f"part-{cell_key(cell)}.parquet"


def is_done(out_dir: Path, producer: str, cell: dict[str, Any]) -> bool:
    """A finished cell has its part file (written atomically, so existence means complete)."""
    return part_path(out_dir, producer, cell).exists()


def write_part(
    out_dir: Path,
    *,
    producer: str,
    producer_version: str,
    prereg_sha256: str,
    cell: dict[str, Any],
    table: pa.Table,
    environment: dict[str, Any],
    model: dict[str, Any],
    corpus: dict[str, Any],
) -> Path:
    """Write one cell's rows to ``out_dir/producer/part-<cellkey>.parquet`` atomically."""
    meta = {
        "prereg_sha256": prereg_sha256,
        "producer": producer,
        "producer_version": producer_version,
        "cell": cell,
        "environment": environment,
        "model": model,
        "corpus": corpus,
    }
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata(
        {**existing, **{f"{META_PREFIX}{k}".encode(): json.dumps(v, sort_keys=True).encode() for k, v in meta.items()}}
    )
    path = part_path(out_dir, producer, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)  # atomic on POSIX: a reader sees the old state or the whole file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``dcr.*`` metadata of a part file, JSON-decoded (raises on a corrupt file)."""
    raw = pq.read_schema(path).metadata or {}
    out = {}
    for k, v in raw.items():
        key = k.decode()
        if key.startswith(META_PREFIX):
            out[key[len(META_PREFIX):]] = json.loads(v.decode())
    return out


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Where the measurement was made: software versions, GPU, driver, git commit and dirty flag."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "triton", "transformers", "numpy", "pyarrow"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken package: record as missing
            env[name] = None
    try:
        import torch

        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
            env["gpu_count"] = torch.cuda.device_count()
            try:
                env["driver"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
            except (OSError, subprocess.SubprocessError, IndexError):
                env["driver"] = None
        else:
            env["gpu"] = None
    except Exception:  # noqa: BLE001
        env["gpu"] = None
    env["git_commit"] = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    env["git_dirty"] = None if status is None else bool(status)
    return env
