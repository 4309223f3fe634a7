"""Decision tables as data: gates, then ordered rules (AND of conditions), first match wins,
explicit fallback. No eval: a condition is (observed value, operator, registered value).

Labels outside the plan's own: ``INVALID`` (a gate failed, or the data broke a registered
constraint), ``INSUFFICIENT_DATA`` (a statistic a gate or rule reads could not be computed from
the data), ``ERROR`` (a statistic failed for another reason; the message says why).
"""
from __future__ import annotations

import math
import operator
from typing import Any

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
       "==": operator.eq, "!=": operator.ne}

INVALID, INSUFFICIENT, ERROR = "INVALID", "INSUFFICIENT_DATA", "ERROR"


class Unavailable(Exception):
    """A condition's statistic has no value; ``status`` is insufficient_data or error."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def observe(stat_ref: str, results: dict[str, dict]) -> Any:
    """The value of ``<statistic id>.<field>`` or raise :class:`Unavailable`."""
    sid, _, field = stat_ref.partition(".")
    r = results[sid]
    if r.get("error") is not None:
        raise Unavailable(r["error"]["status"], f"{sid}: {r['error']['message']}")
    v = r["values"].get(field)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise Unavailable("insufficient_data", f"{stat_ref} has no value")
    return v


def holds(observed: Any, op: str, value: Any) -> bool:
    """Compare like with like: numbers with numbers (bool is not a number), bool/str by ==/!=."""
    if _is_number(value) and _is_number(observed):
        return bool(OPS[op](observed, value))
    if type(observed) is type(value) and op in ("==", "!="):
        return bool(OPS[op](observed, value))
    raise TypeError(f"cannot compare {observed!r} {op} {value!r}")


def _cond(c: Any, results: dict[str, dict]) -> dict[str, Any]:
    obs = observe(c.stat, results)
    return {"stat": c.stat, "op": c.op, "value": c.value, "observed": obs, "holds": holds(obs, c.op, c.value)}


def decide(hypothesis: Any, results: dict[str, dict]) -> dict[str, Any]:
    """Apply ``hypothesis.gates`` and ``hypothesis.decision`` to the statistics ``results``.

    Returns {status, label, reason, gates: [...], rule: {...} | None, fallback: bool}; status is
    one of decided / invalid / insufficient_data / error.
    """
    out: dict[str, Any] = {"gates": [], "rule": None, "fallback": False, "rules_checked": []}
    # ---- gates (all evaluated and reported; any failure makes the hypothesis INVALID)
    failed, unavailable = [], None
    for g in hypothesis.gates:
        try:
            rec = _cond(g, results)
        except Unavailable as u:
            rec = {"stat": g.stat, "op": g.op, "value": g.value, "observed": None, "holds": None,
                   "unavailable": u.reason}
            unavailable = unavailable or (g.id, u)
        out["gates"].append({"id": g.id, "reason": g.reason, **rec,
                             "passed": rec["holds"]})
        if rec["holds"] is False:
            failed.append(g)
    if failed:
        reasons = "; ".join(f"gate {g.id} failed ({g.stat} {g.op} {g.value!r} does not hold): {g.reason}"
                            for g in failed)
        return {**out, "status": "invalid", "label": INVALID, "reason": reasons}
    if unavailable is not None:
        gid, u = unavailable
        return {**out, "status": u.status, "label": INSUFFICIENT if u.status == "insufficient_data" else ERROR,
                "reason": f"gate {gid} cannot be evaluated: {u.reason}"}
    # ---- ordered rules: first match wins
    for i, rule in enumerate(hypothesis.decision.rules):
        conds = []
        try:
            for c in rule.when:
                conds.append(_cond(c, results))
        except Unavailable as u:
            return {**out, "status": u.status,
                    "label": INSUFFICIENT if u.status == "insufficient_data" else ERROR,
                    "reason": f"rule {i} ({rule.label}) cannot be evaluated: {u.reason}"}
        matched = all(c["holds"] for c in conds)
        out["rules_checked"].append({"index": i, "label": rule.label, "matched": matched, "conditions": conds})
        if matched:
            why = " and ".join(f"{c['stat']} = {c['observed']!r} {c['op']} {c['value']!r}" for c in conds)
            return {**out, "status": "decided", "label": rule.label,
                    "rule": {"index": i, "label": rule.label, "conditions": conds},
                    "reason": f"rule {i} matched: {why}"}
    return {**out, "status": "decided", "label": hypothesis.decision.fallback, "fallback": True,
            "reason": "no rule matched: registered fallback"}
