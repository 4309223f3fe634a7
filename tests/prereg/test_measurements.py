"""The measurement contract (prereg.measurements) and the provenance helpers (prereg.provenance):
the docs render the contract, tables are built and checked by it, part files keep their layout."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcr.prereg import measurements as M
from dcr.prereg import provenance

DOC = Path(__file__).resolve().parents[2] / "docs" / "measurements.md"
ALL = (*M.PRODUCERS.values(), M.CAUSAL_PILOT)


# ---------------------------------------------------------------------------- docs


def test_docs_render_the_contract():
    """docs/measurements.md holds each producer's column table and the cells table exactly as the
    contract renders them, so the two cannot drift."""
    doc = DOC.read_text(encoding="utf-8")
    for p in ALL:
        section = f"### {p.name} — {p.rows}\n\n{p.markdown()}\n"
        assert section in doc, f"docs/measurements.md is out of date; the {p.name} section should read:\n{section}"
    assert M.markdown_cells() in doc, f"docs/measurements.md: the cells table should read:\n{M.markdown_cells()}"
    documented = {line.split(" — ")[0][4:] for line in doc.splitlines() if line.startswith("### ")}
    assert documented == {p.name for p in ALL}


def test_docs_column_tables_parse_back_to_the_contract():
    """An independent reading of the doc's tables (name, type, required) equals the contract."""
    doc = DOC.read_text(encoding="utf-8")
    for p in ALL:
        body = doc.split(f"### {p.name} — ", 1)[1].split("\n\n", 2)[1]
        rows = [line.strip("|").split("|") for line in body.splitlines()[2:]]
        got = [(n.strip().removeprefix("*optional* "), t.strip(), not n.strip().startswith("*optional*"))
               for n, t, _ in rows]
        want = [(c.name, {pa.int64(): "int64", pa.float64(): "float64", pa.string(): "string", pa.bool_(): "bool",
                          pa.list_(pa.float64()): "list<float64>", pa.list_(pa.int64()): "list<int64>"}[c.type],
                 c.required) for c in p.columns]
        assert got == want, p.name


# ---------------------------------------------------------------------------- the contract


def test_contract_is_consistent():
    for p in ALL:
        names = [c.name for c in p.columns]
        assert len(names) == len(set(names)), p.name
        # every row carries its cell's keys (an optional key only in the plans that register it)
        assert set(p.cell_keys) <= set(p.types), p.name
        assert [k for k in p.cell_keys if k not in p.required] == (["arm"] if p.name == "quality" else []), p.name
        assert p.schema().names == names and list(p.schema().types) == [c.type for c in p.columns]
    assert M.CELL_KEYS == {"quality": ("window_index", "N", "coverage", "arm"), "random_spectrum": ("variant", "seed", "N"),
                           "causal": ("layer", "head", "prompt", "N"),
                           "latency": ("level", "N", "B", "coverage", "session")}


def test_plan_schema_registers_cells_of_the_contract_producers():
    from typing import get_args

    from dcr.prereg.schema import ProducerName, Producers

    assert set(get_args(ProducerName)) == set(Producers.model_fields) == set(M.PRODUCERS)


def test_table_builds_the_schema_and_refuses_bad_rows():
    row = {"level": "op", "N": 8, "B": 2, "coverage": 0.5, "arm": "dense", "session": 0, "rep": 1,
           "order_index": 3, "ms": 0.25}
    t = M.LATENCY.table([row, {**row, "backend": "sdpa-flash"}])
    assert t.schema == M.LATENCY.schema()
    assert t.column("backend").to_pylist() == [None, "sdpa-flash"]  # an optional column left out is null
    assert t.column("ms").to_pylist() == [0.25, 0.25] and t.column("N").type == pa.int64()
    with pytest.raises(ValueError, match=r"latency row 0: missing required column\(s\) \['ms'\]"):
        M.LATENCY.table([{k: v for k, v in row.items() if k != "ms"}])
    with pytest.raises(ValueError, match=r"latency row 1: column\(s\) \['speed'\] are not in the contract"):
        M.LATENCY.table([row, {**row, "speed": 1.0}])
    with pytest.raises(KeyError, match="'ratio' is not a column of producer 'latency'"):
        M.LATENCY.cols("ms", "ratio")
    assert M.LATENCY.cols("ms", "arm") == ("ms", "arm")


def test_schema_problems():
    good = M.QUALITY.schema()
    assert M.QUALITY.schema_problems(good) == []
    required_only = pa.schema([(n, t) for n, t in M.QUALITY.required.items()])
    assert M.QUALITY.schema_problems(required_only) == []
    bad = pa.schema([(f.name, pa.string() if f.name == "ppl_dense" else f.type) for f in good
                     if f.name != "n_tokens"] + [("surprise", pa.int64()), ("kernel2", pa.null())])
    assert M.QUALITY.schema_problems(bad) == [
        "column 'ppl_dense' is string, the schema says double",
        "unexpected column 'surprise' (int64)",
        "unexpected column 'kernel2' (null)",
        "missing required column(s) ['n_tokens']"]
    nulls = pa.schema([(f.name, pa.null()) for f in good])  # an all-null column has no type to check
    assert M.QUALITY.schema_problems(nulls) == []
    summary = pa.schema([("window_index", pa.int64()), ("alpha", pa.float64())])
    assert M.QUALITY.schema_problems(summary, extra={"alpha": pa.float64()}, must=["window_index"]) == []
    assert M.QUALITY.schema_problems(summary, extra={"alpha": pa.int64()}, must=["window_index", "N"]) == [
        "column 'alpha' is double, the schema says int64", "missing required column(s) ['N']"]


class _Plan:
    """A stand-in plan with only the fields expected_cells reads."""

    class producers:  # noqa: N801
        class quality:  # noqa: N801
            contexts, coverages, arms = [64, 128], [0.1, 0.5], None

        class random_spectrum:  # noqa: N801
            variants, seeds, contexts = ["trained", "default_init"], [3, 4], [32, 64]

        class causal:  # noqa: N801
            heads, prompts, contexts = [[0, 1], [2, 3]], 2, [16]

        latency = None

    class windows:  # noqa: N801
        count = 3


def test_expected_cells_span_the_registered_grid():
    q = M.expected_cells(_Plan, "quality")
    assert q == [{"window_index": w, "N": n, "coverage": c} for w in range(3) for n in (64, 128) for c in (0.1, 0.5)]

    class _Arm:
        def __init__(self, i):
            self.id = i

    _Plan.producers.quality.arms = [_Arm("a"), _Arm("b")]
    try:
        qa = M.expected_cells(_Plan, "quality")
    finally:
        _Plan.producers.quality.arms = None
    assert qa == [{"window_index": w, "N": n, "coverage": c, "arm": a} for w in range(3) for n in (64, 128)
                  for c in (0.1, 0.5) for a in ("a", "b")]
    rs = M.expected_cells(_Plan, "random_spectrum")
    assert rs == ([{"variant": "trained", "seed": None, "N": n} for n in (32, 64)]
                  + [{"variant": "default_init", "seed": s, "N": n} for s in (3, 4) for n in (32, 64)])
    assert M.expected_cells(_Plan, "causal") == [{"layer": l, "head": h, "prompt": p, "N": 16}
                                                 for l, h in ((0, 1), (2, 3)) for p in range(2)]
    assert M.expected_cells(_Plan, "latency") == []
    with pytest.raises(KeyError):
        M.expected_cells(_Plan, "nonsense")
    assert M.cell_id({"N": 1, "c": 0.5}) == M.cell_id({"c": 0.5, "N": 1.0})
    assert M.cell_id({"N": 1}) != M.cell_id({"N": 2})


# ---------------------------------------------------------------------------- part files


def test_part_file_layout_and_metadata(tmp_path):
    """Name, location and the exact dcr.* key-value metadata of a part file (JSON, sorted keys),
    checked against an independent encoding; metadata already on the table is kept."""
    cell = {"window_index": 1, "N": 64, "coverage": 0.5}
    row = {k: 0 for k in M.QUALITY.required} | {"kernel": "triton", "coverage": 0.5, "N": 64, "window_index": 1}
    table = M.with_metadata(M.QUALITY.table([row]), transcribed={"what": "x", "b": [1, 2]})
    meta = {"prereg_sha256": "a" * 64, "producer": "quality", "producer_version": "9", "cell": cell,
            "environment": {"gpu": None, "git_dirty": False}, "model": {"id": "m"}, "corpus": {"name": "c"}}
    path = M.write_part(tmp_path, table=table, **meta)
    key = hashlib.sha256(b'{"N":64,"coverage":0.5,"window_index":1}').hexdigest()[:16]
    assert path == tmp_path / "quality" / f"part-{key}.parquet" == M.part_path(tmp_path, "quality", cell)
    assert M.check_part(path, "quality", prereg_sha256="a" * 64)[0]["cell"] == cell
    assert sorted(p.name for p in (tmp_path / "quality").iterdir()) == [path.name]  # no temp file left
    raw = pq.read_schema(path).metadata
    want = {f"dcr.{k}".encode(): json.dumps(v, sort_keys=True).encode()
            for k, v in {**meta, "transcribed": {"b": [1, 2], "what": "x"}}.items()}
    assert {k: v for k, v in raw.items() if k.startswith(b"dcr.")} == want
    assert set(M.REQUIRED_META) == set(meta)
    got_meta, got = M.read_part(path)
    assert got_meta == M.read_metadata(path) == {**meta, "transcribed": {"b": [1, 2], "what": "x"}}
    assert got.to_pylist() == [row | {k: None for k in M.QUALITY.optional}]


def test_part_file_written_by_plain_pyarrow_reads_back(tmp_path):
    """A part file laid out by hand (the format, not this writer) reads back through the contract."""
    path = tmp_path / "causal" / "part-0.parquet"
    path.parent.mkdir()
    meta = {"prereg_sha256": "b" * 64, "producer": "causal", "cell": {"layer": 0}, "environment": {}}
    t = pa.table({"layer": [0]}).replace_schema_metadata(
        {f"dcr.{k}".encode(): json.dumps(v).encode() for k, v in meta.items()} | {b"other": b"kept out"})
    pq.write_table(t, path)
    assert M.read_metadata(path) == meta


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        M.write_part(tmp_path, producer="latency", producer_version="1", prereg_sha256="0", cell={"N": 1},
                     table=pa.table({"N": [1]}), environment={}, model={}, corpus={})
    assert list((tmp_path / "latency").iterdir()) == []


# ---------------------------------------------------------------------------- provenance


def test_sha256_file_matches_hashlib(tmp_path):
    import numpy as np

    data = np.random.default_rng(3).bytes(3 * (1 << 20) + 17)  # more than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert provenance.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_of_a_file_and_a_folder(tmp_path):
    assert provenance.git_state(tmp_path / "x.yaml") is None  # tmp_path is not in a work tree
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    _git(repo, "init", "-q")
    plan = repo / "sub" / "plan.yaml"
    plan.write_text("a: 1\n")
    s = provenance.git_state(plan)
    assert s == {"commit": None, "path": "sub/plan.yaml", "committed": False, "dirty": True}
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = _git(repo, "rev-parse", "HEAD")
    assert provenance.git_state(plan) == {"commit": head, "path": "sub/plan.yaml", "committed": True, "dirty": False}
    assert provenance.git_state(repo / "sub") == {"commit": head, "path": "sub", "committed": True, "dirty": False}
    plan.write_text("a: 2\n")
    assert provenance.git_state(plan) == {"commit": head, "path": "sub/plan.yaml", "committed": False, "dirty": True}


def test_versions_and_environment():
    from importlib.metadata import version

    assert provenance.versions("pyarrow", "no-such-distribution-xyz") == {
        "pyarrow": version("pyarrow"), "no-such-distribution-xyz": None}
    assert provenance.tool_version() == version("dcr-prereg")
    env = provenance.environment()
    assert env["pyarrow"] == pa.__version__ and set(env) == {
        "python", "platform", "transformers", "numpy", "pyarrow", "git_commit", "git_dirty"}
