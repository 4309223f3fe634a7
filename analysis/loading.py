"""Load and validate a measurement folder ``DIR/<producer>/part-*.parquet`` (pyarrow only).

Each part file is read through the contract's :func:`prereg.measurements.check_part`
(documented in docs/measurements.md); loading refuses (raises :class:`MeasurementError` naming the
file) a file it rejects: unreadable/corrupt/truncated Parquet, missing ``dcr.*`` metadata, a
producer directory that disagrees with the file's ``dcr.producer``, wrong column types, unknown
columns, missing required columns, no rows, rows whose cell columns disagree with the file's
``dcr.cell``. Files made under another plan raise :class:`PreregMismatchError` listing every
offending file.

Cells are then accounted for against the plan (:func:`account_cells`, reported, not raised):
every registered cell must be held exactly once — by one file, and by one row per row key
(``Producer.row_key``) inside it. A transcribed file's ``covers_cells`` claim is checked against the
cell keys its rows carry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dcr.prereg.measurements import (CELL_KEYS, PRODUCERS, OtherPlanError, PartFileError, cell_id, cell_json,
                                     check_part, doubled_rows, expected_cells)
from dcr.prereg.provenance import sha256_file

# Files under a data folder that `dcr import` could read: named when they are left there unread.
TABLE_SUFFIXES = (".csv", ".parquet")


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
    lock: dict[str, Any] | None  # dcr.lock: the lock file the producer ran under (None: not recorded)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "producer": self.producer,
                "producer_version": self.producer_version, "rows": self.rows, "cell": self.cell,
                "environment": self.environment, "model": self.model, "corpus": self.corpus,
                "transcribed": self.transcribed, "lock": self.lock}


@dataclass
class Measurements:
    """Validated measurements: one pandas DataFrame per producer (rows of files whose cells are all
    registered; column ``_file`` names the part file) and the cell report of :func:`account_cells`."""

    tables: dict[str, pd.DataFrame]
    files: list[FileRecord]
    cells: dict[str, dict[str, Any]]  # producer -> cell report
    ignored: list[str] = field(default_factory=list)  # paths under DIR that are not part files

    @property
    def ignored_tables(self) -> list[str]:
        """Ignored files that are tables `dcr import` could read (CSV, Parquet) left in the folder."""
        return [f for f in self.ignored if f.lower().endswith(TABLE_SUFFIXES)]


def why_not_read(path: str) -> str:
    """Why a file under a data folder was not read (a table: how its figures go in)."""
    return "not a part file" + ("; a table of figures goes in through `dcr import`"
                                if path.lower().endswith(TABLE_SUFFIXES) else "")


def _claimed(rel: str, transcribed: dict[str, Any], cell: dict[str, Any], expected: list[dict]) -> list[dict]:
    covers = transcribed.get("covers_cells")
    if covers is None:
        return [cell]
    if covers == "all":
        return list(expected)
    if not isinstance(covers, list) or not all(isinstance(c, dict) for c in covers):
        raise MeasurementError(f"{rel}: dcr.transcribed.covers_cells must be \"all\" or a list of cells (JSON objects)")
    return covers


def _held_cells(r: FileRecord, table: pa.Table, expected: list[dict]) -> tuple[list[dict], list[dict], bool]:
    """(cells the file holds, cells it claims that its rows do not show, claim unchecked).

    A measurement holds its ``dcr.cell``. A transcribed file holds what its rows show: with every
    cell-key column, the distinct cells of its rows; with some, the claimed cells (``covers_cells``,
    default its ``dcr.cell``) whose key values its rows carry; with none, its claim unchecked."""
    if r.transcribed is None:
        return [r.cell], [], False
    claimed = _claimed(r.path, r.transcribed, r.cell, expected)
    plan_keys = tuple(expected[0]) if expected else CELL_KEYS[r.producer]  # this plan's cell keys
    keys = [k for k in plan_keys if k in table.column_names]
    if not keys:
        return claimed, [], True
    rows = {cell_id(c): c for c in (dict(zip(keys, v)) for v in zip(*(table.column(k).to_pylist() for k in keys)))}
    shown = set(rows)
    if len(keys) == len(plan_keys):
        held = list(rows.values())
    else:
        held = [c for c in claimed if cell_id({k: c.get(k) for k in keys}) in shown]
    held_ids = {cell_id(c) for c in held}
    return held, [c for c in claimed if cell_id(c) not in held_ids], False


def _matches(cell: dict[str, Any], part: dict[str, Any]) -> bool:
    """Whether ``cell`` agrees with every cell-key value in ``part`` (other columns ignored)."""
    return all(cell_id({k: cell.get(k)}) == cell_id({k: v}) for k, v in part.items() if k in cell)


def account_cells(producer: str, expected: list[dict], files: list[tuple[FileRecord, pa.Table]]
                  ) -> tuple[dict[str, Any], set[str]]:
    """The cell report of one producer and the files whose rows are not used.

    Report: ``expected``, ``found`` (registered cells some used file holds), ``missing`` (cells),
    ``duplicated`` (``{cell, files, reason}``: a cell held by more than one file, or by rows that
    share a row key inside one file), ``unexpected`` (``{cell, file}``: a cell the plan does not
    register and the file holding it; none of that file's rows or cells count), ``claims_not_in_rows`` (``{file,
    cells}``: cells a transcribed file claims that its rows do not show; not counted),
    ``claims_unchecked`` (``{file, cells}``: a transcribed file whose rows carry no cell key, its
    claim of ``cells`` cells counted as declared)."""
    exp_ids = {cell_id(c): c for c in expected}
    held_by: dict[tuple, list[str]] = {}
    doubled: dict[tuple, list[str]] = {}
    unused: set[str] = set()
    unexpected, not_in_rows, unchecked = [], [], []
    for r, table in files:
        held, not_shown, is_unchecked = _held_cells(r, table, expected)
        foreign = [c for c in held if cell_id(c) not in exp_ids]
        if foreign:
            unused.add(r.path)
            unexpected += [{"cell": c, "file": r.path} for c in foreign]
            continue
        if not_shown:
            not_in_rows.append({"file": r.path, "cells": not_shown})
        if is_unchecked:
            unchecked.append({"file": r.path, "cells": len(held)})
        for c in held:
            held_by.setdefault(cell_id(c), []).append(r.path)
        for d in doubled_rows(table, r.producer):
            for c in held:
                if _matches(c, d["key"]):
                    doubled.setdefault(cell_id(c), []).append(
                        f"{d['rows']} rows with row key {cell_json(d['key'])} in {r.path}")
    duplicated = []
    for cid in exp_ids:
        by = held_by.get(cid, [])
        reasons = ([f"held by {len(by)} files: {', '.join(by)}"] if len(by) > 1 else []) + doubled.get(cid, [])
        if reasons:
            duplicated.append({"cell": exp_ids[cid], "files": held_by[cid], "reason": "; ".join(reasons)})
    report = {"expected": len(expected), "found": sum(cid in held_by for cid in exp_ids),
              "missing": [c for cid, c in exp_ids.items() if cid not in held_by], "duplicated": duplicated,
              "unexpected": unexpected, "claims_not_in_rows": not_in_rows, "claims_unchecked": unchecked}
    return report, unused


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

    read: dict[str, list[tuple[FileRecord, pa.Table]]] = {k: [] for k in producers}
    mismatched: list[tuple[str, str]] = []
    for rel, producer, path in files:
        try:
            meta, table = check_part(path, producer, prereg_sha256=plan_sha256, name=rel)
        except OtherPlanError as exc:
            mismatched.append((rel, exc.found))
            continue
        except PartFileError as exc:
            raise MeasurementError(str(exc)) from None
        read[producer].append((FileRecord(rel, sha256_file(path), producer, str(meta["producer_version"]),
                                          table.num_rows, meta["cell"], meta["environment"], meta["model"],
                                          meta["corpus"], meta.get("transcribed"), meta.get("lock")), table))
    if mismatched:
        raise PreregMismatchError(plan_sha256, mismatched)

    tables: dict[str, pd.DataFrame] = {}
    cells: dict[str, dict[str, Any]] = {}
    for producer in producers:
        exp = expected_cells(plan, producer)
        if not exp and not read[producer]:
            continue
        cells[producer], unused = account_cells(producer, exp, read[producer])
        keep = [t.to_pandas().assign(_file=r.path) for r, t in read[producer] if r.path not in unused]
        tables[producer] = (pd.concat(keep, ignore_index=True, sort=False) if keep
                            else pd.DataFrame({"_file": pd.Series([], dtype=object)}))
    records = [r for producer in producers for r, _ in read[producer]]
    return Measurements(tables, sorted(records, key=lambda r: r.path), cells, ignored)


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


def hypothesis_columns(h: Any) -> list[tuple[str, str]]:
    """(where, column) of every column hypothesis ``h`` reads: its select keys, its metric (a
    ``position.<col>`` metric: ``<col>`` of :func:`positions_table`), its column-valued statistic
    parameters."""
    metric = h.metric.split(".", 1)[1] if h.metric.startswith("position.") else h.metric
    return ([("select", k) for k in h.select] + [("metric", metric)]
            + [(f"statistics.{s.id}.{p}", s.params[p]) for s in h.statistics for p in _COLUMN_PARAMS
               if isinstance(s.params.get(p), str)])


def plan_column_problems(plan: Any) -> list[str]:
    """Names a plan uses that its producer's documented schema lacks (select keys, metric,
    column-valued statistic parameters). A lint for plans over measurements: transcribed
    summaries may legitimately declare extra columns."""
    out = []
    for h in plan.hypotheses:
        cols = set(PRODUCERS[h.producer].types) | {"_file"}
        if h.metric.startswith("position."):
            cols |= set(POSITION_COLUMNS)
        out += [f"{h.id}: {where} '{name}' is not a column of {h.producer}" for where, name in hypothesis_columns(h)
                if name not in cols]
    return out
