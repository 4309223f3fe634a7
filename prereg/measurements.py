"""The measurement contract: what each producer writes, which cells a plan registers for it, and
how a cell's part file is laid out. Producers build their tables here, the verdict engine
validates against it, plots read column names from it, docs/measurements.md renders it.

Torch-free: imports pyarrow and the standard library only.

A measurement folder is ``DIR/<producer>/part-<cellkey>.parquet``, one part file per cell,
written atomically by :func:`write_part`. Each part file carries Parquet key-value metadata
(UTF-8 JSON values, keys prefixed ``dcr.``):

* ``dcr.prereg_sha256`` — hash of the locked plan the cell was produced under;
* ``dcr.producer`` / ``dcr.producer_version`` — who wrote it;
* ``dcr.cell`` — the cell (a JSON object), whose :func:`cell_key` names the file;
* ``dcr.environment`` — where it was measured (GPU, driver, torch, triton, transformers, CUDA,
  git commit, dirty flag);
* ``dcr.model`` — model id, revision, weights checksum, ``weights_random``;
* ``dcr.corpus`` — corpus name and token-array hash;
* optional: ``dcr.lock`` (the lock file the producer ran under: :func:`prereg.provenance.lock_record`),
  ``dcr.transcribed`` (transcribed figures, see docs/measurements.md) and ``dcr.latency`` (the
  latency producer's protocol, checks and GPU state).

:func:`check_part` is the one reading of a part file against the contract (the verdict engine
loads through it; a resumed producer re-produces a cell whose file fails it).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

INT64, FLOAT64, STRING, BOOL = pa.int64(), pa.float64(), pa.string(), pa.bool_()
LIST_FLOAT64 = pa.list_(pa.float64())
LIST_INT64 = pa.list_(pa.int64())

# The column types by the names the docs and ``dcr.transcribed.summary_columns`` use.
TYPE_NAMES: dict[str, pa.DataType] = {"int64": INT64, "float64": FLOAT64, "string": STRING, "bool": BOOL,
                                      "list<float64>": LIST_FLOAT64, "list<int64>": LIST_INT64}


def type_name(t: pa.DataType) -> str:
    """The name of an Arrow type in :data:`TYPE_NAMES` (KeyError for a type the contract does not use)."""
    return {typ: name for name, typ in TYPE_NAMES.items()}[t]


@dataclass(frozen=True)
class Column:
    """One column of a producer's table: name, Arrow type, meaning, required or optional.
    Every column is nullable."""

    name: str
    type: pa.DataType
    meaning: str
    required: bool = True


def _opt(name: str, typ: pa.DataType, meaning: str) -> Column:
    return Column(name, typ, meaning, required=False)


@dataclass(frozen=True)
class Producer:
    """A producer's contract: its cell keys, the registered grid they span, what one row is and
    the columns that identify it (``row_key``: the cell keys and the within-cell ones), its columns.

    A cell key that is an optional column (quality's ``arm``) is a key only of the plans that
    register it; the cells of other plans leave it out."""

    name: str
    cell_keys: tuple[str, ...]
    grid: str  # the registered grid of cells, in the plan's terms
    rows: str  # what one row is
    row_key: tuple[str, ...]  # no two rows of a cell share these values
    columns: tuple[Column, ...]

    @property
    def required(self) -> dict[str, pa.DataType]:
        """{name: type} of the columns every measurement carries."""
        return {c.name: c.type for c in self.columns if c.required}

    @property
    def optional(self) -> dict[str, pa.DataType]:
        """{name: type} of the columns a measurement may leave out."""
        return {c.name: c.type for c in self.columns if not c.required}

    @property
    def types(self) -> dict[str, pa.DataType]:
        """Every column's type, in the contract's order."""
        return {c.name: c.type for c in self.columns}

    def cols(self, *names: str) -> tuple[str, ...]:
        """``names``, each checked to be a column of this producer (KeyError naming the first that is not)."""
        for n in names:
            if n not in self.types:
                raise KeyError(f"'{n}' is not a column of producer '{self.name}' (columns: {', '.join(self.types)})")
        return names

    def schema(self) -> pa.Schema:
        """The Arrow schema of a part file: every column, required and optional, in order."""
        return pa.schema([(c.name, c.type) for c in self.columns])

    def table(self, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
        """A part file's table from row dicts. A row must carry every required column and no column
        the contract lacks; an optional column a row leaves out is null. ValueError otherwise."""
        types, required = self.types, self.required
        for i, row in enumerate(rows):
            unknown = [k for k in row if k not in types]
            missing = [k for k in required if k not in row]
            if unknown or missing:
                raise ValueError(f"{self.name} row {i}: " + "; ".join(
                    ([f"column(s) {unknown} are not in the contract"] if unknown else [])
                    + ([f"missing required column(s) {missing}"] if missing else [])))
        return pa.Table.from_pylist(list(rows), schema=self.schema())

    def schema_problems(self, schema: pa.Schema, *, extra: Mapping[str, pa.DataType] | None = None,
                        must: Iterable[str] | None = None) -> list[str]:
        """How ``schema`` breaks this contract ([] if it does not): a column the contract does not
        list, a column of another type (an all-null column passes), a missing column.

        extra: further allowed columns and their types (a transcribed summary's own columns).
        must: the columns that must be present (default: the required ones)."""
        extra = extra or {}
        types = self.types
        problems = []
        for f in schema:
            want = types.get(f.name, extra.get(f.name))
            if want is None:
                problems.append(f"unexpected column '{f.name}' ({f.type})")
            elif f.type != want and f.type != pa.null():
                problems.append(f"column '{f.name}' is {f.type}, the schema says {want}")
        missing = [c for c in (self.required if must is None else must) if c not in schema.names]
        if missing:
            problems.append(f"missing required column(s) {missing}")
        return problems

    def markdown(self) -> str:
        """The column table of docs/measurements.md."""
        lines = ["| column | type | meaning |", "| --- | --- | --- |"]
        lines += [f"| {'' if c.required else '*optional* '}{c.name} | {type_name(c.type)} | {c.meaning} |"
                  for c in self.columns]
        return "\n".join(lines)


QUALITY = Producer(
    "quality", ("window_index", "N", "coverage", "arm"), "windows.count × contexts × coverages (× arms)",
    "one row per (cell, kernel run)", ("window_index", "N", "coverage", "arm", "kernel"), (
        Column("window_index", INT64, "cell key: index of the window in the plan"),
        Column("window_start", INT64, "first token of the window"),
        Column("N", INT64, "cell key: context = scored positions"),
        Column("coverage", FLOAT64, "cell key: c"),
        Column("kernel", STRING, 'the kernel that ran: "reference" or "triton"'),
        Column("k_min", INT64, "k_min of the attention rule used"),
        Column("dispatch_threshold", INT64, "dispatch threshold of the attention rule used"),
        Column("n_tokens", INT64, "scored positions"),
        Column("nll_sum_dense", FLOAT64, "Σ NLL (nats) over the scored positions, dense"),
        Column("nll_sum_sparse", FLOAT64, "Σ NLL (nats) over the scored positions, sparse"),
        Column("ppl_dense", FLOAT64, "exp(mean NLL), dense"),
        Column("ppl_sparse", FLOAT64, "exp(mean NLL), sparse"),
        Column("delta_ppl_pct", FLOAT64, "(ppl_sparse / ppl_dense − 1)·100"),
        Column("sparse_rows", INT64, "positions where the sparse rule was active"),
        Column("dense_rows", INT64, "positions that stayed dense"),
        _opt("nll_dense", LIST_FLOAT64, "per-position NLL (nats), dense; as long as nll_sparse"),
        _opt("nll_sparse", LIST_FLOAT64, "per-position NLL (nats), sparse"),
        _opt("delta_ppl_pct_sparse_active", FLOAT64, "ΔPPL% over sparse-active positions only"),
        _opt("arm", STRING, "cell key of plans that register quality arms: the arm's id"),
        _opt("selection", STRING, 'the rule\'s selection: "query_head" or "kv_group"'),
        _opt("dense_layers", LIST_INT64, "layers kept dense in the sparse forward"),
    ))

RANDOM_SPECTRUM = Producer(
    "random_spectrum", ("variant", "seed", "N"),
    "variants × seeds × contexts (the trained variant: one cell per context, seed null)",
    "one row per (cell, layer, head, prompt)", ("variant", "seed", "N", "layer", "head", "prompt"), (
        Column("variant", STRING, 'cell key: "trained", "default_init" or "scale_matched"'),
        Column("seed", INT64, "cell key: re-initialisation seed (null for trained)"),
        Column("layer", INT64, "layer of the head"),
        Column("head", INT64, "query head"),
        Column("prompt", INT64, "window index of the prompt"),
        Column("N", INT64, "cell key: context"),
        Column("entropy", FLOAT64, "attention entropy (nats) of the registered query row"),
        _opt("logit_scale", FLOAT64, "std of the row's logits (scale-matching check)"),
    ))

CAUSAL = Producer(
    "causal", ("layer", "head", "prompt", "N"), "heads × range(prompts) × contexts",
    "one row per cell", ("layer", "head", "prompt", "N"), (
        Column("layer", INT64, "cell key: layer of the perturbed head"),
        Column("head", INT64, "cell key: perturbed query head"),
        Column("prompt", INT64, "cell key: window index of the prompt"),
        Column("N", INT64, "cell key: context"),
        Column("nll_base", FLOAT64, "next-token NLL, unperturbed"),
        Column("nll_treat", FLOAT64, "next-token NLL, treatment"),
        Column("nll_ctrl", FLOAT64, "next-token NLL, control"),
        Column("d_nll", FLOAT64, "nll_treat − nll_ctrl (primary metric)"),
        Column("delta_h_t", FLOAT64, "realised entropy change of the treatment (nats)"),
        Column("delta_h_c", FLOAT64, "realised entropy change of the control (nats)"),
        Column("norm_ratio", FLOAT64, "‖δ_T‖ / ‖δ_C‖ (gate: 1 ± 1e-3)"),
        Column("fd_error", FLOAT64, "relative error of the finite-difference gradient check"),
        Column("ls_converged", BOOL, "line search reached the target"),
        Column("ls_iterations", INT64, "line-search iterations"),
        Column("d_gap", FLOAT64, "secondary: top-K truncation gap, treatment − control"),
        Column("dense_fallback", BOOL, "a silent dense fallback happened"),
    ))

LATENCY = Producer(
    "latency", ("level", "N", "B", "coverage", "session"),
    "levels × contexts × batch_sizes × coverages × range(sessions)", "one row per timed repetition",
    ("level", "N", "B", "coverage", "session", "arm", "rep"), (
        Column("level", STRING, '"op" or "model"'),
        Column("N", INT64, "cell key: context"),
        Column("B", INT64, "cell key: batch size"),
        Column("coverage", FLOAT64, "cell key: c"),
        Column("arm", STRING, '"dense", or the sparse arm: "sparse", or the id of a registered sparse arm'),
        Column("session", INT64, "cell key: session index"),
        Column("rep", INT64, "repetition within the session"),
        Column("order_index", INT64, "position in the interleaved run order"),
        Column("ms", FLOAT64, "wall time of one step (ms)"),
        _opt("backend", STRING, 'dense baseline backend (e.g. "sdpa-cudnn")'),
    ))

# The causal producer's pilot mode: the causal grid once per registered pilot target. The verdict
# engine does not read it; a plan amendment cites it when it locks Δ_target.
CAUSAL_PILOT = Producer(
    "causal_pilot", CAUSAL.cell_keys + ("delta_target",), "pilot_targets × the causal grid",
    "one row per cell", CAUSAL.row_key + ("delta_target",), CAUSAL.columns + (Column("delta_target", FLOAT64, "cell key: the pilot's Δ_target (nats)"),))

# The producers whose cells a plan registers and whose folders the verdict engine reads.
PRODUCERS: dict[str, Producer] = {p.name: p for p in (QUALITY, RANDOM_SPECTRUM, CAUSAL, LATENCY)}
CELL_KEYS: dict[str, tuple[str, ...]] = {name: p.cell_keys for name, p in PRODUCERS.items()}
# Every folder a producer writes, with the contract of its part files (latency dry runs: LATENCY's rows).
LATENCY_DRY_RUN = "latency_dry_run"
CONTRACTS: dict[str, Producer] = {**PRODUCERS, CAUSAL_PILOT.name: CAUSAL_PILOT, LATENCY_DRY_RUN: LATENCY}

# The keys of ``dcr.environment`` every producer records (a value may be null: no GPU, say).
ENVIRONMENT_KEYS = ("python", "platform", "torch", "triton", "transformers", "cuda", "gpu", "git_commit", "git_dirty")


def markdown_cells() -> str:
    """The cells table of docs/measurements.md."""
    lines = ["| producer | cell keys | row key | registered grid |", "| --- | --- | --- | --- |"]
    lines += [f"| {p.name} | `{', '.join(p.cell_keys)}` | `{', '.join(p.row_key)}` | {p.grid} |"
              for p in (*PRODUCERS.values(), CAUSAL_PILOT)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- cells


def expected_cells(plan: Any, producer: str) -> list[dict[str, Any]]:
    """The cells of ``producer`` registered in ``plan`` (a ``prereg.schema.Plan``), in a fixed
    order; [] when the plan registers no cells for it. Raises KeyError for an unknown producer.

    A cell is a flat dict of scalars keyed by the producer's :attr:`Producer.cell_keys`; every row
    of the cell's part file carries the same values in those columns."""
    keys = CELL_KEYS[producer]
    p = getattr(plan.producers, producer)
    if p is None:
        return []
    if producer == "quality":
        axes = [range(plan.windows.count), p.contexts, p.coverages]
        if p.arms is not None:
            axes.append([a.id for a in p.arms])
        return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]
    elif producer == "random_spectrum":
        return [dict(zip(keys, (v, None if v == "trained" else s, n)))
                for v in p.variants for s in ([None] if v == "trained" else p.seeds) for n in p.contexts]
    elif producer == "causal":
        heads = [tuple(h) for h in p.heads]
        return [dict(zip(keys, (l, h, pr, n))) for (l, h), pr, n
                in itertools.product(heads, range(p.prompts), p.contexts)]
    else:  # latency
        axes = [p.levels, p.contexts, p.batch_sizes, p.coverages, range(p.sessions)]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


# A hypothesis metric ``position.<column>`` reads the quality table one row per scored position
# (columns position, nll_dense, nll_sparse, d_nll; built from the per-position NLL lists).
POSITION_PREFIX = "position."


def rows_per_cell(plan: Any, producer: str, cell: Mapping[str, Any], metric: str) -> int:
    """The rows one registered cell of ``producer`` yields for a hypothesis reading ``metric``:
    quality 1 (N for a ``position.`` metric: one per scored position); random_spectrum one per
    (head, prompt), where ``heads: all`` counts one head (the model's head count is not in the plan);
    causal 1; latency (1 + sparse arms) × repetitions (every arm once per round)."""
    p = getattr(plan.producers, producer)
    if producer == "quality":
        return int(cell["N"]) if metric.startswith(POSITION_PREFIX) else 1
    if producer == "random_spectrum":
        return (1 if p.heads == "all" else len(p.heads)) * p.prompts
    if producer == "latency":
        return (1 + len(p.sparse_selections(plan.attention.selection))) * p.repetitions
    return 1


def cell_selected(cell: Mapping[str, Any], select: Mapping[str, Any]) -> bool:
    """Whether a hypothesis' ``select`` ({column: value or [values]}) keeps ``cell``; columns that
    are not keys of the cell do not decide."""
    return all((cell[k] in want) if isinstance(want, list) else (cell[k] == want)
               for k, want in select.items() if k in cell)


def cell_id(cell: Mapping[str, Any]) -> tuple:
    """Hashable identity of a cell for comparing cells (key order does not matter; 1 == 1.0 as in JSON)."""
    return tuple(sorted((k, float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                        for k, v in cell.items()))


def cell_json(cell: Mapping[str, Any]) -> str:
    """The canonical JSON of a cell: keys sorted, no spaces."""
    return json.dumps(cell, sort_keys=True, separators=(",", ":"))


def cell_key(cell: Mapping[str, Any]) -> str:
    """The part file's name for a cell: sha256 of :func:`cell_json`, first 16 hex digits."""
    return hashlib.sha256(cell_json(cell).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- part files

META_PREFIX = "dcr."
REQUIRED_META = ("prereg_sha256", "producer", "producer_version", "cell", "environment", "model", "corpus")


def part_path(out_dir: str | Path, producer: str, cell: Mapping[str, Any]) -> Path:
    """``out_dir/<producer>/part-<cellkey>.parquet``."""
    return Path(out_dir) / producer / f"part-{cell_key(cell)}.parquet"


def with_metadata(table: pa.Table, **entries: Any) -> pa.Table:
    """``table`` with ``dcr.<key>`` file metadata added (values JSON-encoded, keys sorted)."""
    encoded = {f"{META_PREFIX}{k}".encode(): json.dumps(v, sort_keys=True).encode() for k, v in entries.items()}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **encoded})


def write_part(
    out_dir: str | Path,
    *,
    producer: str,
    producer_version: str,
    prereg_sha256: str,
    cell: dict[str, Any],
    table: pa.Table,
    environment: dict[str, Any],
    model: dict[str, Any],
    corpus: dict[str, Any],
    lock: dict[str, Any] | None = None,
) -> Path:
    """Write one cell's rows to ``out_dir/producer/part-<cellkey>.parquet`` atomically, with the
    required ``dcr.*`` metadata and, when given, ``dcr.lock`` (metadata already on ``table`` is
    kept); returns the path."""
    table = with_metadata(table, prereg_sha256=prereg_sha256, producer=producer, producer_version=producer_version,
                          cell=cell, environment=environment, model=model, corpus=corpus,
                          **({} if lock is None else {"lock": lock}))
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


def _decode(raw: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    return {k.decode()[len(META_PREFIX):]: json.loads(v.decode())
            for k, v in (raw or {}).items() if k.decode().startswith(META_PREFIX)}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``dcr.*`` metadata of a part file, JSON-decoded, keys without the prefix (raises on a
    corrupt file)."""
    return _decode(pq.read_schema(path).metadata)


def read_part(path: str | Path) -> tuple[dict[str, Any], pa.Table]:
    """(``dcr.*`` metadata as :func:`read_metadata` gives it, the rows) of a part file (raises on a
    corrupt file)."""
    table = pq.read_table(path)
    return _decode(table.schema.metadata), table


class PartFileError(ValueError):
    """A part file is unusable; the message names the file and the problem."""


class OtherPlanError(PartFileError):
    """A part file was made under another plan; ``found`` is its ``dcr.prereg_sha256``."""

    def __init__(self, name: str, found: str):
        super().__init__(f"{name}: made under plan sha256 {found}, not this plan's")
        self.found = found


def _transcribed_columns(name: str, transcribed: Mapping[str, Any]) -> dict[str, pa.DataType]:
    try:
        return {k: TYPE_NAMES[v] for k, v in (transcribed.get("summary_columns") or {}).items()}
    except (KeyError, TypeError) as exc:
        raise PartFileError(f"{name}: dcr.transcribed.summary_columns has unknown type {exc}") from None


def check_part(path: str | Path, producer: str, *, prereg_sha256: str | None = None,
               name: str | None = None) -> tuple[dict[str, Any], pa.Table]:
    """Read a part file of folder ``producer`` and check it against the contract; returns
    (``dcr.*`` metadata, the rows).

    Raises :class:`PartFileError` (message starts with ``name``, default the path) when the file
    is not readable Parquet, lacks required ``dcr.*`` metadata, names another producer, has
    ``dcr.cell`` (or ``dcr.transcribed``) that is not a JSON object, breaks the producer's schema
    (transcribed figures: each column a schema column or a declared summary column, at least the
    cell's key columns), holds no rows, or has rows whose cell columns differ from ``dcr.cell``;
    :class:`OtherPlanError` when ``prereg_sha256`` is given and the file was made under another.
    """
    name = str(path) if name is None else name
    contract = CONTRACTS[producer]
    try:
        meta, table = read_part(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise PartFileError(f"{name}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise PartFileError(f"{name}: missing dcr metadata {missing}")
    if meta["producer"] != producer:
        raise PartFileError(f"{name}: dcr.producer is '{meta['producer']}' but the file lies under '{producer}/'")
    if prereg_sha256 is not None and meta["prereg_sha256"] != prereg_sha256:
        raise OtherPlanError(name, str(meta["prereg_sha256"]))
    cell, transcribed = meta["cell"], meta.get("transcribed")
    if not isinstance(cell, dict):
        raise PartFileError(f"{name}: dcr.cell is not a JSON object")
    if transcribed is not None and not isinstance(transcribed, dict):
        raise PartFileError(f"{name}: dcr.transcribed is not a JSON object")
    extra = {} if transcribed is None else _transcribed_columns(name, transcribed)
    problems = contract.schema_problems(table.schema, extra=extra,
                                        must=tuple(cell) if transcribed is not None else None)
    if problems:
        raise PartFileError(f"{name}: schema of producer '{contract.name}' violated: " + "; ".join(problems))
    if table.num_rows == 0:
        raise PartFileError(f"{name}: holds no rows (a part file holds at least one row of its cell)")
    for k, v in cell.items():
        if k not in table.column_names or isinstance(v, (list, dict)):
            continue
        bad = sum(x != v for x in table.column(k).to_pylist())
        if bad:
            raise PartFileError(f"{name}: {bad} row(s) have {k} != {v!r}, the file's dcr.cell")
    return meta, table


def doubled_rows(table: pa.Table, producer: str) -> list[dict[str, Any]]:
    """The row keys (:attr:`Producer.row_key`, over the columns ``table`` has) that more than one
    row of ``table`` carries: ``[{"key": {column: value}, "rows": count}]`` in first-seen order;
    [] when the table has none of the row-key columns (its rows carry no identity)."""
    cols = [c for c in CONTRACTS[producer].row_key if c in table.column_names]
    if not cols:
        return []
    counts = Counter(zip(*(table.column(c).to_pylist() for c in cols)))  # first-seen order kept
    return [{"key": dict(zip(cols, k)), "rows": n} for k, n in counts.items() if n > 1]
