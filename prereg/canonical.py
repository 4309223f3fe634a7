"""The hash contract and the field-level semantic diff.

``plan_sha256(plan)`` = SHA-256 (lower-case hex) of the RFC 8785 (JSON Canonicalization Scheme)
serialisation of ``plan.model_dump(mode="json")`` — the *parsed, validated* plan. Comments, key
order, quoting, indentation and number spelling (``1e-3`` vs ``0.001``, ``1`` vs ``1.0``) do
not change it; any changed value does (``true`` and ``1`` differ; so do ``"1"`` and ``1``).
"""
from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from dcr.prereg.schema import Plan


def canonical_json(data: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of plain data (a Plan is dumped first)."""
    if isinstance(data, Plan):
        data = plan_data(data)
    return rfc8785.dumps(data)


# Optional fields that are left out of the hashed data while unset (None): a plan that does not set
# one hashes exactly as if the field did not exist in the schema, so the hashes of plans and locks
# that never name it do not depend on it. "*" stands for every item of a list.
_OMITTED_WHEN_UNSET = (("producers", "latency", "op_layer"), ("producers", "latency", "sparse_arms"),
                       ("producers", "quality", "arms"),
                       ("producers", "quality", "per_position"), ("compute_budget",),
                       ("hypotheses", "*", "partial_data"))


def _drop_unset(node: Any, path: tuple[str, ...]) -> None:
    """Delete the key at ``path`` under ``node`` where its value is None."""
    if len(path) == 1:
        if isinstance(node, dict) and path[0] in node and node[path[0]] is None:
            del node[path[0]]
    elif path[0] == "*":
        for item in node if isinstance(node, list) else ():
            _drop_unset(item, path[1:])
    elif isinstance(node, dict):
        _drop_unset(node.get(path[0]), path[1:])


def plan_data(plan: Plan) -> dict[str, Any]:
    """The plan as plain JSON data: the exact object that is hashed and frozen."""
    data = plan.model_dump(mode="json")
    for path in _OMITTED_WHEN_UNSET:
        _drop_unset(data, path)
    return data


def plan_sha256(plan: Plan) -> str:
    """64 lower-case hex digits: SHA-256 of the canonical JSON of the parsed plan."""
    return hashlib.sha256(canonical_json(plan)).hexdigest()


# ---------------------------------------------------------------------------- diff

_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    """Equal as canonical JSON (so 1 == 1.0, but True != 1 and "1" != 1)."""
    return rfc8785.dumps(a) == rfc8785.dumps(b)


def _keyed_by_id(items: list) -> bool:
    ids = [x.get("id") if isinstance(x, dict) else None for x in items]
    return all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids)


def diff_data(a: Any, b: Any, path: str = "") -> list[dict[str, Any]]:
    """Changes from ``a`` to ``b`` as ``{path, change, old, new}``; change is changed/added/removed.

    Paths are dotted (``attention.k_min``); list items are ``[i]``, or ``[id=…]`` when every item
    of both lists is a mapping with a unique ``id`` (hypotheses, statistics, gates, families) —
    then a pure reordering is reported once as ``<path>(order)``.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[dict[str, Any]] = []
        for key in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{key}" if path else str(key)
            va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
            if va is _MISSING:
                out.append({"path": sub, "change": "added", "old": None, "new": vb})
            elif vb is _MISSING:
                out.append({"path": sub, "change": "removed", "old": va, "new": None})
            else:
                out.extend(diff_data(va, vb, sub))
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        if a and b and _keyed_by_id(a) and _keyed_by_id(b):
            ia, ib = {x["id"]: x for x in a}, {x["id"]: x for x in b}
            for key in list(ia) + [k for k in ib if k not in ia]:
                sub = f"{path}[id={key}]"
                if key not in ib:
                    out.append({"path": sub, "change": "removed", "old": ia[key], "new": None})
                elif key not in ia:
                    out.append({"path": sub, "change": "added", "old": None, "new": ib[key]})
                else:
                    out.extend(diff_data(ia[key], ib[key], sub))
            common_a = [k for k in ia if k in ib]
            common_b = [k for k in ib if k in ia]
            if common_a != common_b:
                out.append({"path": f"{path}(order)", "change": "changed", "old": common_a, "new": common_b})
            return out
        for i in range(max(len(a), len(b))):
            sub = f"{path}[{i}]"
            if i >= len(a):
                out.append({"path": sub, "change": "added", "old": None, "new": b[i]})
            elif i >= len(b):
                out.append({"path": sub, "change": "removed", "old": a[i], "new": None})
            else:
                out.extend(diff_data(a[i], b[i], sub))
        return out
    if _same(a, b):
        return []
    return [{"path": path or "(top level)", "change": "changed", "old": a, "new": b}]


def diff_plans(a: Plan, b: Plan) -> list[dict[str, Any]]:
    """Field-level semantic diff of two parsed plans (see :func:`diff_data`)."""
    return diff_data(plan_data(a), plan_data(b))


def _short(value: Any) -> str:
    text = rfc8785.dumps(value).decode("utf-8")
    return text if len(text) <= 120 else text[:117] + "..."


def format_changes(changes: list[dict[str, Any]]) -> list[str]:
    """Human lines: ``~ path: old → new``, ``+ path: new``, ``- path: old``."""
    lines = []
    for c in changes:
        if c["change"] == "changed":
            lines.append(f"~ {c['path']}: {_short(c['old'])} → {_short(c['new'])}")
        elif c["change"] == "added":
            lines.append(f"+ {c['path']}: {_short(c['new'])}")
        else:
            lines.append(f"- {c['path']}: {_short(c['old'])}")
    return lines
