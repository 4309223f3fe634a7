"""Safe YAML in and out, and :func:`load_plan` with one clear error message per bad input.

The YAML dialect is the YAML 1.2 *core schema* on top of PyYAML's safe loader:

* scalars resolve to null (``~``, ``null``, empty), bool (``true``/``false`` only; ``yes``,
  ``on``, ``no`` stay strings), int (``[-+]?[0-9]+``), float (``1.5``, ``1e-3``, ``.inf``,
  ``.nan``) or string; dates stay strings (no timestamp resolution);
* no object construction (only the safe constructors), no anchors or aliases (so no alias
  bombs), no merge keys, no duplicate keys, string keys only, at most ``MAX_BYTES`` bytes;
* NaN, infinities and integers outside the I-JSON range (|n| > 2**53 - 1) are rejected.

A plan's text (its string values and keys) may not hold a character of :data:`UNSAFE_TEXT`:
control characters other than tab and newline, and the bidirectional-formatting characters that
make text display in another order than it reads (:func:`plan_from_data` refuses them).

:class:`Dumper` writes with the same resolvers, so a string that would read back as another
type (``"1e5"``, ``"true"``) is quoted: what is dumped loads back equal.
"""
from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dcr.prereg.schema import Plan

MAX_BYTES = 1 << 20  # 1 MiB: a plan is a few kB
MAX_SAFE_INT = 2**53 - 1  # RFC 8785 / I-JSON integer range


class PlanError(ValueError):
    """A plan or lock file that cannot be used; the message names the file, field path and problem."""


# ---------------------------------------------------------------------------- YAML dialect

_RESOLVERS: list[tuple[str, re.Pattern, list[str]]] = [
    ("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    ("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+.0123456789"),
    ),
]


def _core_resolvers() -> dict:
    table: dict = {}
    for tag, regexp, first in _RESOLVERS:
        for ch in first:
            table.setdefault(ch or None, []).append((tag, regexp))
    return table


class _YAMLProblem(Exception):
    def __init__(self, message: str, mark: Any | None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


class Loader(yaml.SafeLoader):
    """SafeLoader with the core-schema resolvers; refuses anchors, aliases and duplicate keys."""

    yaml_implicit_resolvers = _core_resolvers()

    def compose_node(self, parent, index):  # noqa: ANN001
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _YAMLProblem("anchors and aliases (& and *) are not allowed in a plan", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _YAMLProblem(f"mapping key {key!r} is not a string", key_node.start_mark)
            if key in seen:
                raise _YAMLProblem(f"duplicate key '{key}'", key_node.start_mark)
            seen[key] = True
        return super().construct_mapping(node, deep=deep)

    def flatten_mapping(self, node):  # noqa: ANN001 - no merge keys ('<<' is a plain string here)
        return None


def _float_core(loader: Loader, node) -> float:  # noqa: ANN001
    text = loader.construct_scalar(node).replace("_", "")
    low = text.lower()
    if low in (".inf", "+.inf"):
        return math.inf
    if low == "-.inf":
        return -math.inf
    if low == ".nan":
        return math.nan
    return float(text)


def _int_core(loader: Loader, node) -> int:  # noqa: ANN001
    return int(loader.construct_scalar(node))


Loader.add_constructor("tag:yaml.org,2002:float", _float_core)
Loader.add_constructor("tag:yaml.org,2002:int", _int_core)
# never build timestamps, binary, sets, ordered maps or pairs: their tags are refused
for _tag in ("timestamp", "binary", "set", "omap", "pairs"):
    Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", None)
Loader.yaml_constructors = {k: v for k, v in Loader.yaml_constructors.items() if v is not None}


class Dumper(yaml.SafeDumper):
    """SafeDumper with the same resolvers as :class:`Loader` (strings that look typed get quoted)."""

    yaml_implicit_resolvers = _core_resolvers()

    def ignore_aliases(self, data):  # noqa: ANN001 - never write anchors
        return True


def _repr_float(dumper: Dumper, value: float):  # noqa: ANN001
    if not math.isfinite(value):
        raise ValueError("cannot write a non-finite float")
    text = repr(value)  # shortest round-trip form, e.g. 0.001, 1e-05, 1.0
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


_SPECIAL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]")


def _repr_str(dumper: Dumper, value: str):  # noqa: ANN001
    # Strings with control characters or Unicode line separators (NEL, LS, PS) are written
    # double-quoted with escapes: other styles would let a reader fold them into spaces.
    style = '"' if _SPECIAL.search(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(float, _repr_float)
Dumper.add_representer(str, _repr_str)


def dump_yaml(data: Any) -> str:
    """YAML text of plain data (dicts keep their order); loads back equal with :func:`parse_yaml`."""
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=100)


# ---------------------------------------------------------------------------- text

# Characters plan text may not hold: C0 and C1 control characters other than tab and newline (NUL,
# ESC, carriage return, ...) and DEL; the Unicode line and paragraph separators; the bidirectional
# formatting characters (embeddings, overrides, isolates, marks), which make text display in
# another order than it reads; lone surrogates.
UNSAFE_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                         "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def visible_text(text: str) -> str:
    """``text`` with each :data:`UNSAFE_TEXT` character written as its escape (``\\u202e``)."""
    return UNSAFE_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _unsafe_problem(text: str) -> str | None:
    """Why ``text`` is refused as plan text (None when it is not)."""
    m = UNSAFE_TEXT.search(text)
    if m is None:
        return None
    ch = m.group()
    what = unicodedata.name(ch, "surrogate" if unicodedata.category(ch) == "Cs" else "control character")
    return (f"contains U+{ord(ch):04X} ({what}) at character {m.start() + 1}: control characters other than "
            "tab and newline, and bidirectional-formatting characters, are not allowed in plan text")


def _unsafe_text(data: Any, path: tuple = ()) -> tuple[tuple, str] | None:
    """The first key or string value of plain data that holds a character of :data:`UNSAFE_TEXT`."""
    if isinstance(data, str):
        problem = _unsafe_problem(data)
        return (path, problem) if problem else None
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        problem = _unsafe_problem(k) if isinstance(k, str) else None
        found = (path + (k,), f"the key {problem}") if problem else _unsafe_text(v, path + (k,))
        if found:
            return found
    return None


# ---------------------------------------------------------------------------- paths and marks


def format_path(loc: tuple | list) -> str:
    """('hypotheses', 0, 'decision', 'fallback') -> 'hypotheses[0].decision.fallback' (unsafe
    characters of keys shown as escapes)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + visible_text(str(part))
    return out or "(top level)"


def _marks(node, path: tuple = (), table: dict | None = None) -> dict:  # noqa: ANN001
    """Map each data path (tuple of keys/indices) to the 1-based line it starts on."""
    table = {} if table is None else table
    table[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                _marks(v, path + (k.value,), table)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _marks(v, path + (i,), table)
    return table


def _check_values(data: Any, path: tuple = ()) -> tuple[tuple, str] | None:
    """First plain-data problem: a non-finite float, an integer out of range, an odd type."""
    if isinstance(data, dict):
        for k, v in data.items():
            found = _check_values(v, path + (k,))
            if found:
                return found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found = _check_values(v, path + (i,))
            if found:
                return found
    elif isinstance(data, bool) or data is None or isinstance(data, str):
        return None
    elif isinstance(data, float):
        if not math.isfinite(data):
            return path, f"{data} is not allowed (NaN and infinities are rejected)"
    elif isinstance(data, int):
        if abs(data) > MAX_SAFE_INT:
            return path, f"integer {data} is outside the interoperable range ±(2**53 - 1)"
    else:
        return path, f"unsupported YAML value of type {type(data).__name__}"
    return None


def parse_yaml(text: str, source: str) -> tuple[Any, dict]:
    """Parse YAML text safely; return (data, {path: line}). Raise PlanError naming ``source``."""
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise PlanError(f"{source}: file is larger than {MAX_BYTES} bytes; a plan is a few kB")
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PlanError(f"{source}: the file is empty")
        data = loader.construct_document(node)
    except _YAMLProblem as exc:
        where = f":{exc.mark.line + 1}" if exc.mark is not None else ""
        raise PlanError(f"{source}{where}: {exc.message}") from None
    except RecursionError:
        raise PlanError(f"{source}: the YAML is nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise PlanError(f"{source}{where}: malformed YAML: {problem}" + (f" ({context})" if context else "")) from None
    finally:
        loader.dispose()
    marks = _marks(node)
    _refuse(_check_values(data), data, source, marks)
    return data, marks


def _refuse(found: tuple[tuple, str] | None, data: Any, source: str, marks: dict) -> None:
    """Raise PlanError naming ``source``, the line and the field path of a ``(path, problem)`` finding."""
    if found:
        path, problem = found
        line = marks.get(path)
        raise PlanError(f"{source}{f':{line}' if line else ''}: {_label(data, path)}: {problem}")


def read_yaml(path: str | Path) -> tuple[Any, dict]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is allowed
    except UnicodeDecodeError as exc:
        raise PlanError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_yaml(text, str(path))


# ---------------------------------------------------------------------------- plan validation


def _data_path(data: Any, loc: tuple) -> tuple:
    """Drop pydantic's union/type tags from ``loc``: keep the parts that index the data."""
    out: list = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and isinstance(part, str) and not part.startswith(("function-", "union[", "list[", "dict[", "literal[")) and part not in ("bool", "int", "float", "str", "none", "list", "dict"):
            out.append(part)  # a missing field: name it
            cur = None
        else:
            continue  # a union member tag such as 'bool' or 'function-after[...]'
    return tuple(out)


_SINGULAR = {"hypotheses": "hypothesis", "statistics": "statistic", "gates": "gate", "multiplicity": "family"}


def _label(data: Any, path: tuple) -> str:
    """Path text, with the ids of the hypotheses/statistics/gates it passes through."""
    text = format_path(path)
    cur, ids, prev = data, [], None
    for part in path:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(part, int) and isinstance(cur, dict) and isinstance(cur.get("id"), str):
            ids.append(f"{_SINGULAR.get(prev, 'item')} {cur['id']}")
        prev = part
    return text + (f" ({', '.join(ids)})" if ids else "")


def validation_problems(exc: ValidationError, data: Any, marks: dict) -> list[str]:
    """One line per problem: ``line N: field.path: message`` (union alternatives merged)."""
    grouped: dict[tuple, list[str]] = {}
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the schema)"
        path = _data_path(data, tuple(err["loc"]))
        grouped.setdefault(path, [])
        if msg not in grouped[path]:
            grouped[path].append(msg)
    lines = []
    for path, msgs in grouped.items():
        line = marks.get(path)
        if line is None:  # a missing key: point at its parent
            parent = path
            while parent and parent not in marks:
                parent = parent[:-1]
            line = marks.get(parent)
        msg = msgs[0] if len(msgs) == 1 else "matches none of the allowed types: " + "; ".join(msgs)
        lines.append(f"{'line ' + str(line) + ': ' if line else ''}{_label(data, path)}: {msg}")
    return lines


def plan_from_data(data: Any, source: str, marks: dict | None = None) -> Plan:
    """Validate parsed data as a :class:`Plan`; raise PlanError naming ``source``, paths, problems."""
    marks = marks or {}
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a plan is a YAML mapping at the top level, not {type(data).__name__}")
    _refuse(_unsafe_text(data), data, source, marks)
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        lines = validation_problems(exc, data, marks)
        if len(lines) == 1:
            raise PlanError(f"{source}: {lines[0]}") from None
        raise PlanError(f"{source}: {len(lines)} problems:\n" + "\n".join(f"  - {x}" for x in lines)) from None
    except ValueError as exc:  # a validator outside pydantic's wrapping
        raise PlanError(f"{source}: {exc}") from None


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan YAML file. Raises :class:`PlanError` (file, field path, problem).

    A lock file (``*.lock.yaml``) is not a plan: use :func:`prereg.lock.load_locked`.
    """
    data, marks = read_yaml(path)
    if isinstance(data, dict) and "lock_format" in data:
        raise PlanError(f"{path}: this is a lock file, not a plan (use load_locked / pass the plan)")
    return plan_from_data(data, str(path), marks)
