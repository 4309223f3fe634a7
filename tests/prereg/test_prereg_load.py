"""Bad input: every problem gives ONE message naming the file, the field path and the problem;
the CLI exits non-zero and writes nothing. Plus the decision-table reachability checks."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dcr.cli import app
from dcr.prereg.loading import PlanError, dump_yaml, load_plan, parse_yaml, read_yaml
from dcr.prereg.schema import Condition, Decision, _implies, _rule_box

REG = Path(__file__).resolve().parents[2] / "prereg" / "registrations"
runner = CliRunner()


def demo_data() -> dict:
    data, _ = read_yaml(REG / "demo.yaml")
    return data


def write(tmp_path: Path, data_or_text, name: str = "plan.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data_or_text if isinstance(data_or_text, str) else dump_yaml(data_or_text), encoding="utf-8")
    return p


def expect_error(tmp_path: Path, data_or_text, *fragments: str) -> str:
    """load_plan raises PlanError naming the file and each fragment; `dcr prereg lock` exits 2, writes nothing."""
    p = write(tmp_path, data_or_text)
    before = sorted(x.name for x in tmp_path.iterdir())
    with pytest.raises(PlanError) as info:
        load_plan(p)
    msg = str(info.value)
    assert str(p) in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    for cmd in (["prereg", "lock", str(p)], ["prereg", "hash", str(p)]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, res.output
        assert str(p) in res.stderr and "error:" in res.stderr
        assert res.stdout == ""
    assert sorted(x.name for x in tmp_path.iterdir()) == before  # nothing written
    return msg


def test_demo_plan_is_valid():
    plan = load_plan(REG / "demo.yaml")
    assert plan.study.id == "demo"


# ---------------------------------------------------------------------------- YAML level


def test_malformed_yaml(tmp_path):
    msg = expect_error(tmp_path, "study: {id: x\nmodel: [\n", "malformed YAML")
    assert ":2:" in msg or ":3:" in msg  # a line number


def test_empty_file(tmp_path):
    expect_error(tmp_path, "", "empty")


def test_top_level_not_a_mapping(tmp_path):
    expect_error(tmp_path, "- a\n- b\n", "mapping")


def test_alias_bomb_rejected(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi"))
    expect_error(tmp_path, bomb, "anchors and aliases")


def test_single_anchor_rejected(tmp_path):
    text = dump_yaml(demo_data()).replace("attention:\n", "attention: &att\n", 1)
    expect_error(tmp_path, text, "anchors and aliases", ":")


def test_merge_key_is_just_an_unknown_key(tmp_path):
    text = dump_yaml(demo_data()).replace("attention:\n", "attention:\n  <<: {k_min: 3}\n", 1)
    expect_error(tmp_path, text, "attention.<<", "unknown key")


def test_python_object_tag_not_constructed(tmp_path):
    text = dump_yaml(demo_data()).replace("title: ", "title: !!python/object/apply:os.system ['echo pwned'] #", 1)
    expect_error(tmp_path, text, "malformed YAML")


def test_duplicate_key_rejected(tmp_path):
    text = dump_yaml(demo_data()).replace("  k_min: 64\n", "  k_min: 64\n  k_min: 32\n", 1)
    expect_error(tmp_path, text, "duplicate key 'k_min'")


def test_non_string_key_rejected(tmp_path):
    text = dump_yaml(demo_data()).replace("  k_min: 64\n", "  k_min: 64\n  12: 3\n", 1)
    expect_error(tmp_path, text, "not a string")


@pytest.mark.parametrize("spelling", [".nan", ".NaN", ".inf", "-.inf"])
def test_nan_and_inf_rejected(tmp_path, spelling):
    d = demo_data()
    d["hypotheses"][0]["decision"]["rules"][0]["when"][0]["value"] = "SENTINEL"
    text = dump_yaml(d).replace("SENTINEL", spelling)
    expect_error(tmp_path, text, "hypotheses[0].decision.rules[0].when[0].value", "NaN and infinities")


def test_integer_outside_ijson_range(tmp_path):
    d = demo_data()
    d["producers"]["causal"]["seed"] = 2**60
    expect_error(tmp_path, d, "producers.causal.seed", "interoperable range")


def test_deep_nesting_is_an_error_not_a_crash(tmp_path):
    expect_error(tmp_path, "a: " + "[" * 200000 + "]" * 200000 + "\n", "nested too deeply")


def test_missing_file_and_non_utf8(tmp_path):
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "nope.yaml")
    p = tmp_path / "latin1.yaml"
    p.write_bytes("title: caf\xe9\n".encode("latin-1"))
    with pytest.raises(PlanError, match="not UTF-8"):
        load_plan(p)
    res = runner.invoke(app, ["prereg", "lock", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "nope.yaml" in res.stderr


def test_byte_order_mark_does_not_change_the_hash(tmp_path):
    from dcr.prereg.canonical import plan_sha256
    p = tmp_path / "bom.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + (REG / "demo.yaml").read_bytes())
    assert plan_sha256(load_plan(p)) == plan_sha256(load_plan(REG / "demo.yaml"))


def test_core_schema_scalars():
    data, _ = parse_yaml("a: 1e-3\nb: yes\nc: on\nd: 2026-01-01\ne: 0o7\nf: true\ng: ~\nh: 010\n", "x")
    assert data == {"a": 0.001, "b": "yes", "c": "on", "d": "2026-01-01", "e": "0o7", "f": True,
                    "g": None, "h": 10}


@settings(max_examples=150, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20))
def test_dump_then_parse_round_trips(value):
    """What dump_yaml writes, parse_yaml reads back equal, type for type (strings like '1e5' quoted)."""
    back, _ = parse_yaml(dump_yaml({"v": value}), "x")
    assert back == {"v": value}
    assert repr(back) == repr({"v": value})  # catches 1 vs 1.0 vs True


# ---------------------------------------------------------------------------- schema level


def test_unknown_key(tmp_path):
    d = demo_data()
    d["attention"]["k_mni"] = 3
    expect_error(tmp_path, d, "attention.k_mni", "unknown key")


def test_missing_field(tmp_path):
    d = demo_data()
    del d["hypotheses"][2]["statistics"][0]["params"]["random_seed"]
    expect_error(tmp_path, d, "hypotheses[2]", "demo_causal", "random_seed", "Field required")


def test_missing_top_level_field(tmp_path):
    d = demo_data()
    del d["amends"]
    expect_error(tmp_path, d, "amends: Field required")


def test_mistyped_field(tmp_path):
    d = demo_data()
    d["attention"]["k_min"] = "64"
    expect_error(tmp_path, d, "attention.k_min", "valid integer")


def test_mistyped_union_field_one_line(tmp_path):
    d = demo_data()
    d["hypotheses"][0]["decision"]["rules"][0]["when"][0]["value"] = [1]
    msg = expect_error(tmp_path, d, "hypotheses[0].decision.rules[0].when[0].value", "allowed types")
    assert "problems" not in msg  # the union alternatives are merged into one line


def test_several_problems_listed(tmp_path):
    d = demo_data()
    d["attention"]["k_min"] = 0
    d["windows"]["count"] = "8"
    expect_error(tmp_path, d, "2 problems", "attention.k_min", "windows.count")


def test_duplicate_hypothesis_ids(tmp_path):
    d = demo_data()
    d["hypotheses"][1]["id"] = d["hypotheses"][0]["id"]
    expect_error(tmp_path, d, "duplicate hypothesis ids", "demo_quality_tier")


def test_decision_without_fallback(tmp_path):
    d = demo_data()
    del d["hypotheses"][0]["decision"]["fallback"]
    expect_error(tmp_path, d, "hypotheses[0].decision.fallback", "Field required")


def test_statistic_missing_parameter(tmp_path):
    d = demo_data()
    del d["hypotheses"][2]["statistics"][1]["params"]["zero_method"]
    expect_error(tmp_path, d, "hypotheses[2].statistics[1]", "wilcoxon", "zero_method")


def test_statistic_unknown_kind(tmp_path):
    d = demo_data()
    d["hypotheses"][0]["statistics"][0]["kind"] = "t_test_magic"
    expect_error(tmp_path, d, "hypotheses[0].statistics[0]", "unknown statistic kind")


def test_rule_reads_unknown_output(tmp_path):
    d = demo_data()
    d["hypotheses"][0]["decision"]["rules"][0]["when"][0]["stat"] = "upper.hgih"
    expect_error(tmp_path, d, "hypotheses[0]", "no output 'hgih'")


def test_rule_reads_unknown_statistic(tmp_path):
    d = demo_data()
    d["hypotheses"][0]["gates"][0]["stat"] = "nosuch.n"
    expect_error(tmp_path, d, "hypotheses[0]", "names no statistic")


def test_inverted_tier_thresholds(tmp_path):
    d = demo_data()
    rules = d["hypotheses"][0]["decision"]["rules"]
    rules[0], rules[1] = rules[1], rules[0]  # <= 1.0 STANDARD before <= 0.5 STRICT
    expect_error(tmp_path, d, "hypotheses[0].decision", "rules[1] (STRICT) is unreachable")


def test_contradictory_rule(tmp_path):
    d = demo_data()
    d["hypotheses"][2]["decision"]["rules"][3]["when"][0] = {"stat": "ci.low", "op": ">", "value": 0.5}
    d["hypotheses"][2]["decision"]["rules"][3]["when"].append({"stat": "ci.low", "op": "<", "value": 0.1})
    expect_error(tmp_path, d, "hypotheses[2].decision", "can never match")


def test_tost_inverted_margins(tmp_path):
    d = demo_data()
    d["hypotheses"][1]["statistics"][0]["params"].update(low=0.5, high=-0.5)
    expect_error(tmp_path, d, "hypotheses[1].statistics[0]", "low")


def test_ordering_op_on_bool(tmp_path):
    d = demo_data()
    d["hypotheses"][0]["gates"][0].update(op="<", value=True)
    expect_error(tmp_path, d, "hypotheses[0].gates[0]", "needs a number")


def test_prompts_exceed_windows(tmp_path):
    d = demo_data()
    d["producers"]["causal"]["prompts"] = 9
    expect_error(tmp_path, d, "prompts (9) exceeds windows.count (8)")


def test_family_consistency(tmp_path):
    d = demo_data()
    d["hypotheses"][2]["family"] = "fam"
    d["multiplicity"] = [{"id": "fam", "hypotheses": ["demo_causal", "demo_quality_tier"],
                          "p_value": "wilcoxon.p", "method": "holm", "alpha": 0.05}]
    expect_error(tmp_path, d, "fam")
    d["multiplicity"][0]["hypotheses"] = ["demo_causal"]
    p = write(tmp_path, d, "ok.yaml")
    assert load_plan(p).multiplicity[0].id == "fam"


def test_lock_file_passed_as_plan(tmp_path):
    p = write(tmp_path, {"lock_format": 1, "plan": {}})
    with pytest.raises(PlanError, match="lock file"):
        load_plan(p)


# ---------------------------------------------------------------------------- rule reachability


def cond(stat, op, value):
    return Condition(stat=stat, op=op, value=value)


def test_hero_verdict_rules_are_reachable():
    Decision.model_validate({"rules": [
        {"label": "A", "when": [{"stat": "s.mean", "op": "<=", "value": 0.7}, {"stat": "s.sd", "op": "<=", "value": 0.15}]},
        {"label": "B", "when": [{"stat": "s.mean", "op": "<=", "value": 1.0}, {"stat": "s.sd", "op": "<=", "value": 0.2}]},
        {"label": "C", "when": [{"stat": "s.mean", "op": "<=", "value": 1.0}]}], "fallback": "D"})


OPS = ["<", "<=", ">", ">=", "==", "!="]
GRID = [x / 2 for x in range(-2, 9)]  # -1.0 .. 4.0 in half steps


def holds(c, x):
    return {"<": x < c.value, "<=": x <= c.value, ">": x > c.value, ">=": x >= c.value,
            "==": x == c.value, "!=": x != c.value}[c.op]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(OPS), st.integers(0, 3)), min_size=1, max_size=4),
       st.tuples(st.sampled_from("ab"), st.sampled_from(OPS), st.integers(0, 3)))
def test_box_and_implication_are_sound(rule, other):
    """Against brute force on a grid: a rule called contradictory matches no point; an
    implication claimed holds at every point the rule matches."""
    conds = [cond(f"{s}.x", op, v) for s, op, v in rule]
    c2 = cond(f"{other[0]}.x", other[1], other[2])
    points = [dict(zip(("a.x", "b.x"), p)) for p in itertools.product(GRID, GRID)]
    inside = [p for p in points if all(holds(c, p[c.stat]) for c in conds)]
    box = _rule_box(conds)
    if box is None:
        assert inside == []
    elif _implies(box, c2):
        assert all(holds(c2, p[c2.stat]) for p in inside)
    # and the simple complete cases: a single <=/< threshold pair is decided exactly
    if len(conds) == 1 and conds[0].stat == c2.stat and conds[0].op in ("<=", "<") and c2.op in ("<=", "<"):
        truth = all(holds(c2, p[c2.stat]) for p in points if holds(conds[0], p[conds[0].stat]))
        assert _implies(box, c2) == truth


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 10, allow_nan=False), min_size=2, max_size=5, unique=True))
def test_ascending_tiers_valid_descending_rejected(thresholds):
    def decision(ts):
        return {"rules": [{"label": f"T{i}", "when": [{"stat": "u.high", "op": "<=", "value": t}]}
                          for i, t in enumerate(ts)], "fallback": "OTHER"}
    Decision.model_validate(decision(sorted(thresholds)))
    with pytest.raises(ValueError, match="unreachable"):
        Decision.model_validate(decision(sorted(thresholds, reverse=True)))



def test_packaged_model_needs_its_file_hash(tmp_path):
    d = demo_data()
    d["model"] = {"source": "package", "id": "smollm2-135m", "revision": None, "dtype": "float32", "preset_seed": None}
    expect_error(tmp_path, d, "model", "SHA-256")
    d["model"]["revision"] = "B179" * 16  # upper case is not the hex form the registry records
    expect_error(tmp_path, d, "model", "SHA-256")
    d["model"]["revision"] = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    load_plan(write(tmp_path, d))


def _latency_v3() -> dict:
    return yaml.safe_load((Path(__file__).resolve().parents[2] / "prereg" / "registrations" / "latency-hero-v3.yaml").read_text())


@pytest.mark.parametrize("where, value, fragment", [
    ("denominator", "sparse", "denominator 'sparse' is not an arm of producer latency"),
    ("numerator", "dense_sdpa", "numerator 'dense_sdpa' is not an arm of producer latency"),
    ("select", "kvg", "select arm 'kvg' is not an arm of producer latency"),
])
def test_latency_hypothesis_names_an_unregistered_arm(tmp_path, where, value, fragment):
    """With sparse arms registered, a ratio that names another arm (or the single arm's default
    name 'sparse') could only ever find no rows: refused at load, the arms listed."""
    d = _latency_v3()
    d["amends"] = None
    h = d["hypotheses"][1]
    if where == "select":
        h["select"] = {**h["select"], "arm": value}
    else:
        h["statistics"][0]["params"][where] = value
    msg = expect_error(tmp_path, d, fragment)
    assert "dense, kv_group, query_head" in msg


def test_quality_hypothesis_names_an_unregistered_arm(tmp_path):
    d = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "smollm2" / "smollm2.yaml").read_text())
    h = next(h for h in d["hypotheses"] if h["producer"] == "quality" and "arm" in h["select"])
    h["select"]["arm"] = "qh_dense02"
    expect_error(tmp_path, d, "select arm 'qh_dense02' is not an arm of producer quality", "kvg, qh, qh_dense01")
