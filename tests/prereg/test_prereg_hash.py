"""The hash contract: SHA-256 of RFC 8785 JSON of the parsed plan.

Property tests: re-formatting a plan (key order, indentation, flow/block style, quoting, number
spelling, comments) never changes the hash; changing any value does. The reference for the
canonical form is an independent serialisation (json.dumps with sorted keys) checked on plans
whose numbers print the same in both.
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dcr.prereg.canonical import diff_data, plan_data, plan_sha256
from dcr.prereg.loading import Dumper, PlanError, dump_yaml, load_plan, parse_yaml, plan_from_data, read_yaml

REG = Path(__file__).resolve().parents[2] / "prereg" / "registrations"
PLANS = sorted(p for p in REG.glob("*.yaml") if not p.name.endswith(".lock.yaml"))
BASE = {p.name: read_yaml(p)[0] for p in PLANS}


def sha_of_text(text: str) -> str:
    data, marks = parse_yaml(text, "generated.yaml")
    return plan_sha256(plan_from_data(data, "generated.yaml", marks))


def _norm(x):
    """Independent canonical form for our plans: integral floats print as integers (ES6 rule)."""
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.name)
def test_hash_matches_an_independent_serialisation(path):
    plan = load_plan(path)
    data = plan_data(plan)
    floats = []

    def walk(x):
        if isinstance(x, dict):
            [walk(v) for v in x.values()]
        elif isinstance(x, list):
            [walk(v) for v in x]
        elif isinstance(x, float):
            floats.append(x)
    walk(data)
    # ES6 number printing == Python repr for these magnitudes (no exponent between 1e-6 and 1e21)
    assert all(f == 0 or 1e-6 <= abs(f) < 1e21 for f in floats)
    assert all("e" not in repr(f) for f in floats if not f.is_integer())
    ref = json.dumps(_norm(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert plan_sha256(plan) == hashlib.sha256(ref).hexdigest()
    assert len(plan_sha256(plan)) == 64


# ---------------------------------------------------------------------------- formatting


def shuffled(x, rng: random.Random):
    if isinstance(x, dict):
        keys = list(x)
        rng.shuffle(keys)
        return {k: shuffled(x[k], rng) for k in keys}
    if isinstance(x, list):
        return [shuffled(v, rng) for v in x]
    return x


def respell_numbers(x, rng: random.Random):
    """Same values, other spellings: floats as 1e-3 style or with trailing zeros; marked for text."""
    if isinstance(x, dict):
        return {k: respell_numbers(v, rng) for k, v in x.items()}
    if isinstance(x, list):
        return [respell_numbers(v, rng) for v in x]
    if isinstance(x, float) and rng.random() < 0.5:
        return _Spelled(f"{x:e}" if rng.random() < 0.5 else repr(x) + "000")
    return x


class _Spelled(str):
    """A number written in another (valid YAML float) spelling."""


def render(data, rng: random.Random) -> str:
    quote = rng.choice([None, "'", '"'])

    class D(Dumper):  # core-schema resolvers: a plain string is never misread as a number
        pass

    def rep_str(d, v):
        if isinstance(v, _Spelled):
            return d.represent_scalar("tag:yaml.org,2002:float", str(v))
        return d.represent_scalar("tag:yaml.org,2002:str", v, style=quote)

    D.add_representer(str, rep_str)
    D.add_representer(_Spelled, rep_str)
    text = yaml.dump(data, Dumper=D, sort_keys=False, allow_unicode=rng.random() < 0.5, width=100000,
                     indent=rng.choice([2, 3, 4, 6]), default_flow_style=rng.choice([False, None, True]))
    lines = text.splitlines()
    out = ["# generated plan, re-formatted"]
    for line in lines:
        if rng.random() < 0.2:
            out.append(" " * rng.randint(0, 6) + "# a comment: with 'quotes' and: colons")
        out.append(line)
    out.append("# end")
    return "\n".join(out) + "\n"


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(BASE)), st.integers(0, 2**32 - 1))
def test_hash_ignores_formatting_comments_key_order_and_quoting(name, seed):
    rng = random.Random(seed)
    data = BASE[name]
    original = sha_of_text(dump_yaml(data))
    text = render(respell_numbers(shuffled(data, rng), rng), rng)
    assert sha_of_text(text) == original
    # JSON is YAML too
    assert sha_of_text(json.dumps(shuffled(data, rng), indent=rng.choice([None, 1, 4]))) == original


def test_hash_of_the_shipped_file_equals_hash_of_its_canonical_dump():
    for p in PLANS:
        assert plan_sha256(load_plan(p)) == sha_of_text(dump_yaml(plan_data(load_plan(p))))


# ---------------------------------------------------------------------------- any change


def leaves(x, path=()):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, path + (i,))
    else:
        yield path, x


def mutate(value, rng: random.Random):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice([-1, 1, 7])
    if isinstance(value, float):
        return rng.choice([value * 1.5 + 0.01, value / 2, value + 1e-9, value - 0.01])
    if isinstance(value, str):
        return rng.choice([value + "x", value.upper() if value.upper() != value else value.lower() + "y",
                           value[:-1] if len(value) > 1 else value + "z"])
    return None


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(BASE)), st.integers(0, 2**32 - 1))
def test_hash_changes_with_any_changed_value(name, seed):
    """Mutate one random leaf of a shipped plan; if it is still a valid plan, the hash differs
    and the diff names exactly that path."""
    rng = random.Random(seed)
    data = copy.deepcopy(plan_data(load_plan(REG / name)))
    paths = [(p, v) for p, v in leaves(data) if v is not None]
    path, old = rng.choice(paths)
    new = mutate(old, rng)
    assume(new is not None and new != old)
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = new
    try:
        changed = plan_from_data(data, "mutated.yaml")
    except PlanError:
        assume(False)
    assert plan_sha256(changed) != plan_sha256(load_plan(REG / name))
    diffs = diff_data(plan_data(load_plan(REG / name)), plan_data(changed))
    assert diffs
    if path[-1] != "id":  # an id change in an id-keyed list reads as removed + added
        assert len(diffs) == 1 and diffs[0]["change"] == "changed"
        assert diffs[0]["old"] == old and diffs[0]["new"] == new


def test_type_changes_change_the_hash():
    """true vs 1 and "1" vs 1 are different values; 1 vs 1.0 is the same JSON number."""
    base = copy.deepcopy(BASE["demo.yaml"])
    base["hypotheses"][0]["gates"][0]["value"] = 8
    h_int = plan_sha256(plan_from_data(base, "x"))
    base["hypotheses"][0]["gates"][0]["value"] = 8.0
    assert plan_sha256(plan_from_data(base, "x")) == h_int
    base["hypotheses"][0]["gates"][0]["value"] = "8"
    assert plan_sha256(plan_from_data(base, "x")) != h_int
    base["hypotheses"][0]["gates"][0].update(value=True)
    assert plan_sha256(plan_from_data(base, "x")) != h_int
