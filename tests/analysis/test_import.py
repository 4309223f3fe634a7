"""`dcr import`: per-cell figures from a CSV or Parquet table → transcribed part files under a
locked plan, checked like measurements (registered cells, one row per row key, contract types,
the columns the plan reads), with missing cells named; a round trip gives the same verdict as the
same rows written by a producer, and the shipped example re-derives the seed's hero figures."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dcr.analysis.engine import compute_verdict
from dcr.analysis.seed_v3 import PUBLISHED_JSON, ingest
from dcr.cli import app
from dcr.prereg.lock import load_locked
from dcr.prereg.measurements import PRODUCERS, expected_cells, read_part, write_part
from plan_factory import ROOT, lock_copy, synthetic_rows

HERO = ROOT / "analysis" / "assets" / "seed_v3" / "plans" / "hero-as-run.yaml"
DEMO = ROOT / "prereg" / "registrations" / "demo.yaml"
EXAMPLE = ROOT / "examples" / "import" / "seed-v3-hero.csv"


def dcr_import(lock, table, producer, out, *extra):
    return CliRunner().invoke(app, ["import", "--plan", str(lock), "--table", str(table), "--producer", producer,
                                    "--source", "test figures", "--out", str(out), *extra])


def test_the_shipped_example_gives_the_seeds_published_hero_verdict(tmp_path):
    """The example CSV (examples/import/) against the seed-v3 ingestion of the same published figures."""
    lock = lock_copy(tmp_path, HERO)
    raw = PUBLISHED_JSON.read_bytes()
    ingest(json.loads(raw), "hero-as-run", lock, tmp_path / "ingested", hashlib.sha256(raw).hexdigest())
    r = dcr_import(lock, EXAMPLE, "quality", tmp_path / "imported")
    assert r.exit_code == 0, r.output
    assert "wrote 5 transcribed part file(s)" in r.output and "5 of 5 registered cells present" in r.output
    want, got = compute_verdict(lock, tmp_path / "ingested"), compute_verdict(lock, tmp_path / "imported")
    published = json.loads(raw)["hero_quality"]["published"]
    for w, g in zip(want["hypotheses"], got["hypotheses"]):
        assert g["label"] == w["label"] and g["statistics"][0]["values"] == w["statistics"][0]["values"]
        assert g["data_kind"] == "transcribed" and g["completeness"]["present"] == 5
    assert round(got["hypotheses"][0]["statistics"][0]["values"]["mean"], 6) == published["mean_delta_pct"]
    assert got["summary"] == {"hero_tier": published["tier"], "hero_verdict": published["hero_verdict"]}
    for f in got["data"]["files"]:
        assert f["transcribed"]["source"] == "test figures" and f["transcribed"]["summary_columns"] == {"note": "string"}
        assert f["transcribed"]["table_sha256"] == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
        assert f["provenance"]["lock"] == "this_lock" and f["producer_version"] == "transcribed"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip_equals_the_same_rows_written_by_a_producer(tmp_path, fmt):
    """Fresh per-(layer, head, prompt) entropies of the demo plan's random-spectrum cells: imported
    from a table, every part file holds exactly its cell's rows, and the verdict's statistics equal
    those over the same rows written as measurements."""
    lock = lock_copy(tmp_path, DEMO)
    locked = load_locked(lock)
    rng = np.random.default_rng(31)
    cells = expected_cells(locked.plan, "random_spectrum")
    rows = [r for c in cells for r in synthetic_rows(locked.plan, "random_spectrum", c, rng)]
    for c in cells:
        write_part(tmp_path / "measured", producer="random_spectrum", producer_version="t", prereg_sha256=locked.sha256,
                   cell=c, table=PRODUCERS["random_spectrum"].table([r for r in rows if
                                                                      (r["variant"], r["seed"], r["N"]) ==
                                                                      (c["variant"], c["seed"], c["N"])]),
                   environment={}, model={}, corpus={})
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=3)  # any row order
    frame["seed"] = frame["seed"].astype("Int64")
    table = tmp_path / f"entropies.{fmt}"
    frame.to_csv(table, index=False) if fmt == "csv" else frame.to_parquet(table, index=False)
    env = tmp_path / "env.json"
    env.write_text(json.dumps({"gpu": "NVIDIA H200", "torch": "2.13.0"}))
    r = dcr_import(lock, table, "random_spectrum", tmp_path / "imported", "--environment", str(env))
    assert r.exit_code == 0, r.output
    assert f"{len(cells)} of {len(cells)} registered cells present" in r.output
    key = ["variant", "seed", "N", "layer", "head", "prompt"]
    for c in cells:
        meta, t = read_part(next(p for p in (tmp_path / "imported" / "random_spectrum").iterdir()
                                 if read_part(p)[0]["cell"] == c))
        want = sorted((tuple(r[k] for k in key), r["entropy"]) for r in rows
                      if (r["variant"], r["seed"], r["N"]) == (c["variant"], c["seed"], c["N"]))
        got = sorted((tuple(r[k] for k in key), r["entropy"]) for r in t.to_pylist())
        assert got == want and meta["environment"] == {"gpu": "NVIDIA H200", "torch": "2.13.0"}
    measured, imported = compute_verdict(lock, tmp_path / "measured"), compute_verdict(lock, tmp_path / "imported")
    rs = [h for h in locked.plan.hypotheses if h.producer == "random_spectrum"]
    assert rs
    for h in rs:
        m = next(x for x in measured["hypotheses"] if x["id"] == h.id)
        i = next(x for x in imported["hypotheses"] if x["id"] == h.id)
        assert i["status"] == "decided" and i["label"] == m["label"] and i["data_kind"] == "transcribed"
        assert m["data_kind"] == "measurement"
        for sm, si in zip(m["statistics"], i["statistics"]):
            assert si["values"] == pytest.approx(sm["values"], rel=1e-12)


def _hero_csv(tmp_path, rows=None, header="window_index,N,coverage,kernel,delta_ppl_pct"):
    rng = np.random.default_rng(32)
    rows = rows if rows is not None else [f"{i},32000,0.15,reference,{x}" for i, x in enumerate(rng.normal(0.4, 0.1, 5))]
    path = tmp_path / "figures.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("case,message", [
    ("no_cell_key", "missing cell-key column(s) ['coverage']"),
    ("unregistered", "1 cell(s) the plan does not register"),
    ("doubled", "rows share a row key"),
    ("bad_type", "column 'window_index' does not cast to int64"),
    ("lacks_metric", "hypothesis hero_tier reads column 'delta_ppl_pct'"),
    ("not_a_table", "a table to import is a .csv or .parquet file"),
    ("unknown_producer", "unknown producer 'speed'"),
    ("no_cells", "the plan registers no causal cells"),
    ("reserved", "column '_file': names starting with '_' are reserved"),
    ("bad_environment", "the environment is a JSON object"),
])
def test_bad_tables_are_refused_and_nothing_is_written(tmp_path, case, message):
    lock = lock_copy(tmp_path, HERO)
    csv, producer, extra = _hero_csv(tmp_path), "quality", []
    lines = csv.read_text().splitlines()
    if case == "no_cell_key":
        csv.write_text("\n".join(",".join(x for j, x in enumerate(line.split(",")) if j != 2) for line in lines))
    elif case == "unregistered":
        csv.write_text("\n".join(lines + ["7,32000,0.15,reference,0.3"]))
    elif case == "doubled":
        csv.write_text("\n".join(lines + [lines[3]]))
    elif case == "bad_type":
        csv.write_text("\n".join(lines[:2] + ["x" + lines[2]] + lines[3:]))
    elif case == "lacks_metric":
        csv.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines))
    elif case == "not_a_table":
        csv = csv.rename(csv.with_suffix(".txt"))
    elif case == "unknown_producer":
        producer = "speed"
    elif case == "no_cells":
        producer = "causal"
    elif case == "reserved":
        csv.write_text("\n".join([lines[0] + ",_file"] + [line + ",x" for line in lines[1:]]))
    elif case == "bad_environment":
        (tmp_path / "env.json").write_text("[1, 2]")
        extra = ["--environment", str(tmp_path / "env.json")]
    r = dcr_import(lock, csv, producer, tmp_path / "data", *extra)
    assert r.exit_code == 2 and message in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "data").exists()


def test_part_files_in_place_need_replace(tmp_path):
    lock = lock_copy(tmp_path, HERO)
    csv = _hero_csv(tmp_path)
    assert dcr_import(lock, csv, "quality", tmp_path / "data").exit_code == 0
    r = dcr_import(lock, csv, "quality", tmp_path / "data")
    assert r.exit_code == 2 and "5 part file(s) already in place" in r.output and "--replace" in r.output
    assert dcr_import(lock, csv, "quality", tmp_path / "data", "--replace").exit_code == 0


def test_missing_cells_are_named_and_the_verdict_does_not_decide(tmp_path):
    lock = lock_copy(tmp_path, HERO)
    rng = np.random.default_rng(33)
    csv = _hero_csv(tmp_path, [f"{i},32000,0.15,reference,{rng.normal(0.4, 0.1)}" for i in (0, 1, 3, 4)])
    r = dcr_import(lock, csv, "quality", tmp_path / "data")
    assert r.exit_code == 0, r.output
    assert "4 of 5 registered cells present" in r.output and 'missing: 1 registered cell(s): {"N":32000,' in r.output
    v = compute_verdict(lock, tmp_path / "data")
    for h in v["hypotheses"]:
        assert h["label"] == "INSUFFICIENT_DATA" and h["missing_cells"] == [
            {"window_index": 2, "N": 32000, "coverage": 0.15}]


def test_help_documents_the_command():
    r = CliRunner().invoke(app, ["import", "--help"])
    assert r.exit_code == 0
    for option in ("--plan", "--table", "--producer", "--source", "--out", "--environment", "--replace"):
        assert option in r.output
