"""Load and validate a measurement folder ``DIR/<producer>/part-*.parquet`` (pyarrow only).

Each producer's table is validated against the contract ``prereg.measurements.PRODUCERS``
(documented in docs/measurements.md). Loading refuses (raises :class:`MeasurementError` naming the
file) on: unreadable/corrupt/truncated Parquet, missing ``dcr.*`` metadata, a producer directory
that disagrees with the file's ``dcr.producer``, wrong column types, unknown columns, missing
required columns, rows whose cell columns disagree with the file's ``dcr.cell``. Files made under
another plan raise :class:`PreregMismatchError` listing every offending file. Cells are checked
against the plan: missing, duplicated and unexpected cells are reported (not raised).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dcr.prereg.measurements import PRODUCERS, REQUIRED_META, TYPE_NAMES, cell_id, expected_cells, read_part
from dcr.prereg.provenance import sha256_file

class MeasurementError(ValueError):
    """A measurement file is unusable (message names the file)."""


class PreregMismatchError(MeasurementError):
    """Files were produced under another plan hash; ``files`` lists (relative path, hash)."""

    def __init__(self, expected: str, files: list[tuple[str, str]]):
        self.expected, self.files = expected, files
        lines = "\n".join(f"  {p}: prereg_sha256={h}" for p, h in files)
        super().__init__(f"{len(files)} measurement file(s) were made under another plan "
                         f"(locked plan sha256={expected}):\n{lines}")


@dataclass
class FileRecord:
    path: str  # relative to the data folder, POSIX
    sha256: str
    producer: str
    producer_version: str
    rows: int
    cell: dict[str, Any]
    environment: dict[str, Any]
    model: dict[str, Any]
    corpus: dict[str, Any]
    transcribed: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "producer": self.producer,
                "producer_version": self.producer_version, "rows": self.rows, "cell": self.cell,
                "environment": self.environment, "model": self.model, "corpus": self.corpus,
                "transcribed": self.transcribed}


@dataclass
class Measurements:
    """Validated measurements: one pandas DataFrame per producer (rows of expected cells only;
    column ``_file`` names the part file) and the cell report."""

    tables: dict[str, pd.DataFrame]
    files: list[FileRecord]
    cells: dict[str, dict[str, Any]]  # producer -> cell report
    ignored: list[str] = field(default_factory=list)  # paths under DIR that are not part files


def _check_schema(rel: str, producer: str, schema: pa.Schema, transcribed: dict | None, cell: dict) -> None:
    extra: dict[str, pa.DataType] = {}
    if transcribed is not None:
        try:
            extra = {k: TYPE_NAMES[v] for k, v in transcribed.get("summary_columns", {}).items()}
        except KeyError as exc:
            raise MeasurementError(f"{rel}: dcr.transcribed.summary_columns has unknown type {exc}") from None
    # a transcribed summary carries at least its own cell's key columns; a measurement, all required
    problems = PRODUCERS[producer].schema_problems(schema, extra=extra,
                                                   must=tuple(cell) if transcribed is not None else None)
    if problems:
        raise MeasurementError(f"{rel}: schema of producer '{producer}' violated: " + "; ".join(problems))


def _check_rows_match_cell(rel: str, df: pd.DataFrame, cell: dict[str, Any]) -> None:
    for k, v in cell.items():
        if k not in df.columns or isinstance(v, (list, dict)):
            continue
        col = df[k]
        bad = col.notna() if v is None else (col.isna() | (col != v))
        if bool(bad.any()):
            raise MeasurementError(f"{rel}: {int(bad.sum())} row(s) have {k} != {v!r}, the file's dcr.cell")


def load_measurements(data_dir: str | Path, plan: Any, plan_sha256: str) -> Measurements:
    """Read and validate every part file under ``data_dir`` against ``plan`` (a Plan)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise MeasurementError(f"{root}: no such measurement folder")
    producers = list(PRODUCERS)
    ignored: list[str] = []
    files: list[tuple[str, str, Path]] = []  # (rel, producer, path)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            continue
        parts = p.relative_to(root).parts
        if len(parts) == 2 and parts[0] in producers and parts[1].startswith("part-") and parts[1].endswith(".parquet"):
            files.append((rel, parts[0], p))
        else:
            ignored.append(rel)

    records: list[FileRecord] = []
    frames: dict[str, list[pd.DataFrame]] = {k: [] for k in producers}
    mismatched: list[tuple[str, str]] = []
    for rel, producer, path in files:
        try:
            meta, table = read_part(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise MeasurementError(f"{rel}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise MeasurementError(f"{rel}: missing dcr metadata {missing}")
        if meta["producer"] != producer:
            raise MeasurementError(f"{rel}: dcr.producer is '{meta['producer']}' but the file lies under '{producer}/'")
        if meta["prereg_sha256"] != plan_sha256:
            mismatched.append((rel, str(meta["prereg_sha256"])))
            continue
        transcribed = meta.get("transcribed")
        if not isinstance(meta["cell"], dict):
            raise MeasurementError(f"{rel}: dcr.cell is not a JSON object")
        if transcribed is not None and not isinstance(transcribed, dict):
            raise MeasurementError(f"{rel}: dcr.transcribed is not a JSON object")
        _check_schema(rel, producer, table.schema, transcribed, meta["cell"])
        df = table.to_pandas()
        _check_rows_match_cell(rel, df, meta["cell"])
        df["_file"] = rel
        frames[producer].append(df)
        records.append(FileRecord(rel, sha256_file(path), producer, str(meta["producer_version"]),
                                  table.num_rows, meta["cell"], meta["environment"], meta["model"],
                                  meta["corpus"], transcribed))
    if mismatched:
        raise PreregMismatchError(plan_sha256, mismatched)

    tables: dict[str, pd.DataFrame] = {}
    cells: dict[str, dict[str, Any]] = {}
    for producer in producers:
        exp = expected_cells(plan, producer)
        recs = [r for r in records if r.producer == producer]
        if not exp and not recs:
            continue
        exp_ids = {cell_id(c): c for c in exp}
        seen: dict[tuple, list[str]] = {}
        unexpected_files: list[str] = []
        for r in recs:
            covers = r.transcribed.get("covers_cells") if r.transcribed else None
            if covers == "all":
                covered = exp
            elif covers is not None:
                covered = covers
            else:
                covered = [r.cell]
            for c in covered:
                cid = cell_id(c)
                if cid in exp_ids:
                    seen.setdefault(cid, []).append(r.path)
                elif r.path not in unexpected_files:
                    unexpected_files.append(r.path)
        missing = [exp_ids[c] for c in exp_ids if c not in seen]
        duplicated = [{"cell": exp_ids[c], "files": fs} for c, fs in seen.items() if len(fs) > 1]
        unexpected = [{"cell": r.cell, "file": r.path} for r in recs if r.path in unexpected_files]
        cells[producer] = {"expected": len(exp), "found": len(seen), "missing": missing,
                           "duplicated": duplicated, "unexpected": unexpected}
        keep = [f for f in frames[producer] if f["_file"].iloc[0] not in unexpected_files] if frames[producer] else []
        keep = [f for f in keep if len(f)]
        if keep:
            tables[producer] = pd.concat(keep, ignore_index=True, sort=False)
        else:
            tables[producer] = pd.DataFrame({"_file": pd.Series([], dtype=object)})
    return Measurements(tables, records, cells, ignored)


POSITION_COLUMNS = ("position", "nll_dense", "nll_sparse", "d_nll")  # what positions_table adds


def positions_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-position view of a quality table: one row per scored position with columns
    window_index, N, coverage, kernel, position, nll_dense, nll_sparse, d_nll (= sparse - dense),
    _file. Needs the optional list columns nll_dense / nll_sparse (same length per row)."""
    if "nll_dense" not in df.columns or "nll_sparse" not in df.columns:
        raise MeasurementError("quality table has no per-position nll_dense / nll_sparse lists")
    lens = df["nll_dense"].map(lambda a: 0 if a is None else len(a)).to_numpy()
    lens_s = df["nll_sparse"].map(lambda a: 0 if a is None else len(a)).to_numpy()
    bad = np.nonzero(lens != lens_s)[0]
    if len(bad):
        raise MeasurementError(f"{df['_file'].iloc[bad[0]]}: nll_dense and nll_sparse differ in length")
    idx = np.repeat(np.arange(len(df)), lens)
    dense = np.concatenate([np.asarray(a, dtype=np.float64) for a in df["nll_dense"] if a is not None and len(a)]) if lens.sum() else np.zeros(0)
    sparse = np.concatenate([np.asarray(a, dtype=np.float64) for a in df["nll_sparse"] if a is not None and len(a)]) if lens.sum() else np.zeros(0)
    out = {c: df[c].to_numpy()[idx] for c in ("window_index", "N", "coverage", "kernel", "_file") if c in df.columns}
    out["position"] = np.concatenate([np.arange(n) for n in lens]) if lens.sum() else np.zeros(0, dtype=np.int64)
    out["nll_dense"], out["nll_sparse"], out["d_nll"] = dense, sparse, sparse - dense
    return pd.DataFrame(out)


def file_manifest(meas: Measurements) -> list[dict[str, Any]]:
    return [r.to_json() for r in sorted(meas.files, key=lambda r: r.path)]


_COLUMN_PARAMS = ("group_column", "cluster", "x", "column", "pair_on")


def plan_column_problems(plan: Any) -> list[str]:
    """Names a plan uses that its producer's documented schema lacks (select keys, metric,
    column-valued statistic parameters). A lint for plans over measurements: transcribed
    summaries may legitimately declare extra columns."""
    out = []
    for h in plan.hypotheses:
        cols = set(PRODUCERS[h.producer].types) | {"_file"}
        if h.metric.startswith("position."):
            cols |= set(POSITION_COLUMNS)
            metric = h.metric.split(".", 1)[1]
        else:
            metric = h.metric
        names = [("select", k) for k in h.select] + [("metric", metric)]
        names += [(f"statistics.{s.id}.{p}", s.params[p]) for s in h.statistics for p in _COLUMN_PARAMS
                  if isinstance(s.params.get(p), str)]
        out += [f"{h.id}: {where} '{name}' is not a column of {h.producer}" for where, name in names
                if name not in cols]
    return out
