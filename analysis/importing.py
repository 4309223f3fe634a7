"""`dcr import`: per-cell figures from a CSV or Parquet table → transcribed part files under a
locked plan (docs/measurements.md, "Importing figures").

Public API: :func:`import_table(lock_path, table_path, producer, out_dir, source=…) -> ImportResult`.

The table holds one or more rows per registered cell of one producer: every cell-key column, any
of the producer's columns (cast to the contract's type) and further columns of figures (kept as
declared summary columns). Refused (:class:`ImportRefused`, nothing written): an unreadable table,
a missing cell-key column, a column that does not cast to its contract type, a column a hypothesis
of the plan reads that the table lacks, a cell the plan does not register, rows that share a row
key (``Producer.row_key``), a part file already in place (unless ``replace``). Missing registered
cells are not refused: the written files are accounted for like any others
(:func:`analysis.loading.account_cells`) and the result names them; the verdict decides what they
mean (strict completeness, or the plan's ``partial_data``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dcr.analysis.loading import TABLE_SUFFIXES, hypothesis_columns, load_measurements
from dcr.prereg.measurements import (PRODUCERS, cell_id, cell_json, doubled_rows, expected_cells, part_path,
                                     type_name, with_metadata, write_part)
from dcr.prereg.provenance import lock_record, sha256_file

PRODUCER_VERSION = "transcribed"


class ImportRefused(ValueError):
    """The table cannot be imported (the message names the file, the column or the rows)."""


@dataclass
class ImportResult:
    written: list[Path]
    summary_columns: dict[str, str]  # columns of figures the contract does not list, with their types
    cells: dict[str, Any]  # the producer's cell report over the whole data folder after the import


def read_table(path: str | Path) -> pa.Table:
    """A ``.csv`` (pyarrow's CSV reader: types inferred, empty fields null) or ``.parquet`` table."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ImportRefused(f"{p}: a table to import is a .csv or .parquet file")
    try:
        if suffix == ".csv":
            from pyarrow import csv

            return csv.read_csv(p)
        import pyarrow.parquet as pq

        return pq.read_table(p)
    except (OSError, pa.ArrowException) as exc:
        raise ImportRefused(f"{p}: cannot be read as {suffix[1:]} ({type(exc).__name__}: {exc})") from None


def _summary_type(name: str, typ: pa.DataType) -> pa.DataType:
    """The contract type a column of figures is stored as."""
    if pa.types.is_integer(typ):
        return pa.int64()
    if pa.types.is_floating(typ):
        return pa.float64()
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return pa.string()
    if pa.types.is_boolean(typ):
        return pa.bool_()
    if (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and (
            pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)):
        return pa.list_(pa.float64())
    raise ImportRefused(f"column '{name}' has type {typ} (empty, or not a number, string, bool or list of numbers)")


def _typed(table: pa.Table, producer: str, src: str) -> tuple[pa.Table, dict[str, str]]:
    """The table with every column cast to its contract type (summary columns to theirs)."""
    types = PRODUCERS[producer].types
    cols, summary = {}, {}
    for name in table.column_names:
        if name.startswith("_"):
            raise ImportRefused(f"{src}: column '{name}': names starting with '_' are reserved")
        want = types.get(name) or _summary_type(name, table.column(name).type)
        if name not in types:
            summary[name] = type_name(want)
        try:
            cols[name] = pc.cast(table.column(name), want, safe=True)
        except pa.ArrowException as exc:
            raise ImportRefused(f"{src}: column '{name}' does not cast to {type_name(want)} "
                                f"({type(exc).__name__}: {exc})") from None
    return pa.table(cols), summary


def _columns_read(plan: Any, producer: str) -> list[tuple[str, str]]:
    """(hypothesis id, column) of every column the plan's hypotheses over ``producer`` read from
    the table (a per-position metric reads the per-position lists)."""
    out = []
    for h in plan.hypotheses:
        if h.producer == producer:
            for where, col in hypothesis_columns(h):
                lists = where == "metric" and h.metric.startswith("position.")
                out += [(h.id, c) for c in (("nll_dense", "nll_sparse") if lists else (col,))]
    return out


def import_table(lock_path: str | Path, table_path: str | Path, producer: str, out_dir: str | Path, *,
                 source: str, environment: dict[str, Any] | None = None, replace: bool = False) -> ImportResult:
    """Write the rows of ``table_path`` as transcribed part files of ``producer``, one per cell,
    under the locked plan ``lock_path``, into ``out_dir/<producer>/``.

    source: where the figures come from (a citation, a URL, a run id), recorded in every file's
    ``dcr.transcribed``. environment: what is known of the environment that measured them (recorded
    as ``dcr.environment``; {} when unknown, which the report shows). replace: overwrite part files
    already in place.
    """
    from dcr.prereg.lock import load_locked

    locked = load_locked(lock_path, search_dirs=[Path(lock_path).parent])
    plan, src = locked.plan, str(table_path)
    if producer not in PRODUCERS:
        raise ImportRefused(f"unknown producer '{producer}' (known: {', '.join(PRODUCERS)})")
    expected = expected_cells(plan, producer)
    if not expected:
        raise ImportRefused(f"{lock_path}: the plan registers no {producer} cells")
    if not source.strip():
        raise ImportRefused("--source is empty: say where the figures come from")
    table = read_table(table_path)
    if table.num_rows == 0:
        raise ImportRefused(f"{src}: the table has no rows")
    keys = tuple(expected[0])  # this plan's cell keys (quality's arm only where the plan registers arms)
    missing_keys = [k for k in keys if k not in table.column_names]
    if missing_keys:
        raise ImportRefused(f"{src}: missing cell-key column(s) {missing_keys}: every row names its {producer} cell "
                            f"({', '.join(keys)})")
    lacking = [f"hypothesis {hid} reads column '{c}'" for hid, c in _columns_read(plan, producer)
               if c not in table.column_names]
    if lacking:
        raise ImportRefused(f"{src}: the table lacks what the plan reads: " + "; ".join(dict.fromkeys(lacking)))
    table, summary = _typed(table, producer, src)
    doubled = doubled_rows(table, producer)
    if doubled:
        raise ImportRefused(f"{src}: rows share a row key ({', '.join(PRODUCERS[producer].row_key)}): "
                            + "; ".join(f"{cell_json(d['key'])} × {d['rows']}" for d in doubled[:5]))
    registered = {cell_id(c): c for c in expected}
    rows_of: dict[tuple, list[int]] = {}
    for i, values in enumerate(zip(*(table.column(k).to_pylist() for k in keys))):
        rows_of.setdefault(cell_id(dict(zip(keys, values))), []).append(i)
    unregistered = [cell_json(dict(cid)) for cid in rows_of if cid not in registered]
    if unregistered:
        raise ImportRefused(f"{src}: {len(unregistered)} cell(s) the plan does not register: "
                            + "; ".join(unregistered[:5]))
    cells = [registered[cid] for cid in rows_of]
    present = [part_path(out_dir, producer, c) for c in cells if part_path(out_dir, producer, c).exists()]
    if present and not replace:
        raise ImportRefused(f"{len(present)} part file(s) already in place (e.g. {present[0]}); "
                            "pass --replace to overwrite them")
    transcribed = {"source": source, "table": Path(table_path).name, "table_sha256": sha256_file(table_path),
                   "what": "per-cell figures imported with `dcr import`",
                   **({"summary_columns": summary} if summary else {})}
    model = {"id": plan.model.id, "revision": plan.model.revision, "source": plan.model.source,
             "weights_random": plan.model.weights_random, "note": "as the plan registers it; not checked"}
    corpus = {"name": plan.corpus.name, "source": plan.corpus.source, "tokens_sha256": None}
    lock = lock_record(lock_path)
    written = [write_part(out_dir, producer=producer, producer_version=PRODUCER_VERSION, prereg_sha256=locked.sha256,
                          cell=cell, table=with_metadata(table.take(rows_of[cell_id(cell)]), transcribed=transcribed),
                          environment=dict(environment or {}), model=model, corpus=corpus, lock=lock)
               for cell in cells]
    meas = load_measurements(out_dir, plan, locked.sha256)
    return ImportResult(written, summary, meas.cells[producer])


def read_environment(path: str | Path) -> dict[str, Any]:
    """A JSON object of environment facts (``--environment FILE``)."""
    try:
        env = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImportRefused(f"{path}: not a readable JSON file ({type(exc).__name__}: {exc})") from None
    if not isinstance(env, dict):
        raise ImportRefused(f"{path}: the environment is a JSON object ({{\"gpu\": …, \"torch\": …}})")
    return env
