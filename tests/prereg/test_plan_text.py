"""Plan text: control characters (other than tab and newline) and bidirectional-formatting
characters are refused at load and lock, naming the field; tab, newline and CRLF files stay fine.

Each refused character goes into a field drawn by a seeded generator from every text value (or
key) of the shipped demo plan.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dcr.cli import app
from dcr.prereg.canonical import plan_sha256
from dcr.prereg.loading import PlanError, dump_yaml, format_path, load_plan, plan_from_data, read_yaml

REG = Path(__file__).resolve().parents[2] / "prereg" / "registrations"
REFUSED = ["\x00", "\x08", "\x0b", "\x1b", "\r", "\x7f", "\x85", "\x9f", "\u061c", "\u200e", "\u200f", "\u2028",
           "\u2029", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
runner = CliRunner()


def _text_paths(data, path=()):
    """Paths of every string value of plain data."""
    if isinstance(data, str):
        yield path
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        yield from _text_paths(v, path + (k,))


def _at(data, path):
    for k in path[:-1]:
        data = data[k]
    return data


@pytest.mark.parametrize("ch", REFUSED, ids=[f"U+{ord(c):04X}" for c in REFUSED])
def test_a_refused_character_in_any_text_is_named_with_its_field(ch, tmp_path):
    data, _ = read_yaml(REG / "demo.yaml")
    paths = list(_text_paths(data))
    rng = np.random.default_rng(ord(ch))
    path = paths[rng.integers(len(paths))]
    parent, text = _at(data, path), _at(data, path)[path[-1]]
    cut = int(rng.integers(len(text) + 1))
    parent[path[-1]] = text[:cut] + ch + text[cut:]
    plan = tmp_path / "plan.yaml"
    plan.write_text(dump_yaml(data), encoding="utf-8")
    with pytest.raises(PlanError, match=f"U\\+{ord(ch):04X}"):
        load_plan(plan)
    res = runner.invoke(app, ["prereg", "lock", str(plan)])
    assert res.exit_code == 2 and res.stdout == ""
    assert f"{format_path(path)}" in res.stderr and f"at character {cut + 1}:" in res.stderr, res.stderr
    assert not (tmp_path / "plan.lock.yaml").exists()


def test_a_refused_character_in_a_key_is_named():
    data, _ = read_yaml(REG / "demo.yaml")
    data["hypotheses"][0]["select"]["N\u202e"] = 1024
    with pytest.raises(PlanError, match=r"hypotheses\[0\]\.select\.N\\u202e .*the key contains U\+202E"):
        plan_from_data(data, "plan.yaml")


def test_tab_newline_and_crlf_are_plain_text(tmp_path):
    data, _ = read_yaml(REG / "demo.yaml")
    data["study"]["description"] = "line one\n\tindented line two\n"
    plan = tmp_path / "plan.yaml"
    plan.write_text(dump_yaml(data), encoding="utf-8")
    assert load_plan(plan).study.description == "line one\n\tindented line two\n"
    crlf = tmp_path / "crlf.yaml"
    crlf.write_bytes((REG / "demo.yaml").read_bytes().replace(b"\n", b"\r\n"))
    assert plan_sha256(load_plan(crlf)) == plan_sha256(load_plan(REG / "demo.yaml"))


def test_an_amendment_reason_with_a_bidi_override_is_refused(tmp_path):
    src = (REG / "demo.yaml").read_text(encoding="utf-8")
    (tmp_path / "demo.yaml").write_text(src, encoding="utf-8")
    assert runner.invoke(app, ["prereg", "lock", str(tmp_path / "demo.yaml")]).exit_code == 0
    v2 = tmp_path / "demo-v2.yaml"
    v2.write_text(src.replace("  version: 1\n", "  version: 2\n", 1), encoding="utf-8")
    res = runner.invoke(app, ["prereg", "amend", str(v2), "--parent", str(tmp_path / "demo.lock.yaml"),
                              "--reason", "ten more \u202ewindows"])
    assert res.exit_code == 2 and "amends.reason: contains U+202E" in res.stderr, res.output
    assert not (tmp_path / "demo-v2.lock.yaml").exists() and v2.read_text(encoding="utf-8") == \
        src.replace("  version: 1\n", "  version: 2\n", 1)
