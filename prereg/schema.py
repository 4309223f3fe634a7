"""The schema of a pre-registration (a "plan"): pydantic models, strict, no silent defaults.

Every decision-relevant field is required. Unknown keys, mistyped values, NaN/inf, and
inconsistent values (inverted thresholds, duplicate ids, a decision table without a fallback)
are rejected with the field path. The parameters of each statistic are validated against its
kind's declaration in :mod:`prereg.statistics`, so that a statistic missing a parameter fails at
lock time, not at verdict time.

Cross-field checks: a rule or gate must read an output field of its statistic's kind
(``KINDS[kind].outputs``); ordering operators need numbers; a decision rule whose conditions
contradict each other, or that an earlier rule always pre-empts (thresholds in the wrong order),
is rejected; ``params.low < params.high``; multiplicity families and ``Hypothesis.family`` agree
both ways and every member has the family's ``p_value`` output; ``prompts <= windows.count``.
Loading (safe YAML, one error message per file) is :mod:`prereg.loading`; the hash is
:mod:`prereg.canonical`; lock / verify / amend are :mod:`prereg.lock`.

Shape of a plan (YAML)::

    schema_version: 1
    study: {id, version, title, authors, description}
    amends: null | {parent_sha256, reason}
    model: {source, id, revision, dtype, preset_seed}
    corpus: {name, source, split, path, sha256}
    windows: {placement, count, start, offsets}
    attention: {k_min, dispatch_threshold, selection, tie_rule, score_dtype}
    producers: {quality?, random_spectrum?, causal?, latency?}   # the cells of each producer
    hypotheses: [{id, statement, producer, select, metric, nonfinite, statistics, gates, decision, family,
                  partial_data?}]
    multiplicity: [{id, hypotheses, p_value, method, alpha}]
    compute_budget?: {operations, reason}                   # optional: a budget above the default
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from dcr.prereg.rule import Selection, parse_coverage

SCHEMA_VERSION = 1

_ID = r"^[A-Za-z][A-Za-z0-9_.-]{0,79}$"
Identifier = Annotated[str, Field(pattern=_ID)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(gt=0, lt=1)]


def _coverage(c: float) -> float:
    parse_coverage(c)  # the rule's check: c in (0, 1]
    return c


Coverage = Annotated[float, AfterValidator(_coverage)]


class Strict(BaseModel):
    """Base: unknown keys rejected, no coercion between types, no NaN/inf, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------- study and inputs


class Study(Strict):
    id: Identifier
    version: PositiveInt
    title: str = Field(min_length=1)
    authors: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    description: str


class Amendment(Strict):
    """A plan that changes a locked one names its parent's hash and says why."""

    parent_sha256: Sha256
    reason: str = Field(min_length=10)


class Model(Strict):
    """source: "hf" (hub id), "local" (directory), "shipped" (the repo's reference model),
    "package" (a model shipped in a package on the registry, converted by ``dcr model fetch ID``;
    ``revision`` is the SHA-256 of its GGUF file), "preset" (an architecture with random weights
    from ``preset_seed``: outputs say so)."""

    source: Literal["hf", "local", "shipped", "package", "preset"]
    id: str = Field(min_length=1)
    revision: str | None  # hub commit or tag, package file sha256; null for local/shipped/preset
    dtype: Literal["float32", "bfloat16", "float16"]
    preset_seed: int | None

    @model_validator(mode="after")
    def _consistent(self) -> Model:
        if self.source == "hf" and not self.revision:
            raise ValueError("a hub model needs a pinned revision (commit hash or tag)")
        if self.source == "package" and not re.fullmatch(r"[0-9a-f]{64}", self.revision or ""):
            raise ValueError("a packaged model needs revision: the SHA-256 (64 lower-case hex digits) of its "
                             "model file (`dcr model list` shows it)")
        if (self.source == "preset") != (self.preset_seed is not None):
            raise ValueError("preset_seed is required for source 'preset' and only for it")
        return self

    @property
    def weights_random(self) -> bool:
        return self.source == "preset"


class Corpus(Strict):
    """source "datasets" (Hugging Face datasets, offline cache), "file" (a local text file),
    "shipped" (the held-out text of the shipped reference model)."""

    name: str = Field(min_length=1)
    source: Literal["datasets", "file", "shipped"]
    split: str | None
    path: str | None
    sha256: Sha256 | None  # expected text hash; null = recorded at run time, not checked

    @model_validator(mode="after")
    def _consistent(self) -> Corpus:
        if self.source == "file" and not self.path:
            raise ValueError("a 'file' corpus needs a path")
        if self.source == "datasets" and not self.split:
            raise ValueError("a 'datasets' corpus needs a split")
        return self


class Windows(Strict):
    """Where the evaluation windows lie in the tokenised corpus.

    disjoint: window i starts at ``start + i * (max_context + 1)``; a cell with context N uses
    the first N + 1 tokens of its window (N scored positions).
    offsets: explicit window starts (the seed used seed * 1000): overlapping windows are allowed
    but flagged (see :func:`overlapping_windows`).
    """

    placement: Literal["disjoint", "offsets"]
    count: PositiveInt
    start: NonNegativeInt | None
    offsets: list[NonNegativeInt] | None

    @model_validator(mode="after")
    def _consistent(self) -> Windows:
        if self.placement == "disjoint":
            if self.start is None or self.offsets is not None:
                raise ValueError("placement 'disjoint' takes 'start' and no 'offsets'")
        else:
            if self.offsets is None or self.start is not None:
                raise ValueError("placement 'offsets' takes 'offsets' and no 'start'")
            if len(self.offsets) != self.count:
                raise ValueError(f"count is {self.count} but {len(self.offsets)} offsets are given")
            if len(set(self.offsets)) != len(self.offsets):
                raise ValueError("offsets repeat")
        return self


class Attention(Strict):
    """The fixed part of the attention rule (coverage c varies by cell, see producers)."""

    k_min: PositiveInt
    dispatch_threshold: NonNegativeInt
    selection: Selection
    tie_rule: Literal["lower_index"]
    score_dtype: Literal["float32"]


# ---------------------------------------------------------------------------- producers' cells

HeadRef = Annotated[list[NonNegativeInt], Field(min_length=2, max_length=2)]  # [layer, head]
Layers = Literal["all"] | list[NonNegativeInt]


def _sorted_unique(values: list, what: str) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} repeat")
    return values


class QualityArm(Strict):
    """One sparse rule of the quality producer: its selection and the layers it keeps dense
    (e.g. [0, 1], as Quest keeps its first two; [] = every layer sparse)."""

    id: Identifier
    selection: Selection
    dense_layers: list[NonNegativeInt]

    _u = field_validator("dense_layers")(lambda v: _sorted_unique(v, "dense_layers"))


class QualityCells(Strict):
    """Cells: window x context x coverage (x arm); each cell runs a dense and a sparse forward.

    layers: the layers that take the Top-K rule ("all", or a list; the rest stay dense).
    kernel: "reference" (the PyTorch rule), "triton" (the Triton kernel; a CUDA GPU, or the
    interpreter), or "auto" (Triton on a CUDA GPU, the reference on the CPU: the same rule, and every
    row records which ran).
    arms: optional, several sparse rules in one plan: each cell is then measured per arm (cell key
    ``arm``), with the arm's selection (instead of ``attention.selection``) and its dense layers
    (``layers`` must then be "all").
    per_position: optional; false leaves the per-position NLL lists (``nll_dense``, ``nll_sparse``:
    8 bytes per position each) out of the part files (a plan whose hypotheses read no
    ``position.*`` metric need not store them); unset or true writes them.
    """

    contexts: list[PositiveInt] = Field(min_length=1)
    coverages: list[Coverage] = Field(min_length=1)
    layers: Layers
    kernel: Literal["reference", "triton", "auto"]
    arms: list[QualityArm] | None = Field(default=None, min_length=1)
    per_position: bool | None = None

    _u1 = field_validator("contexts")(lambda v: _sorted_unique(v, "contexts"))
    _u2 = field_validator("coverages")(lambda v: _sorted_unique(v, "coverages"))

    @model_validator(mode="after")
    def _arms(self) -> QualityCells:
        if self.arms is not None:
            _no_duplicates([a.id for a in self.arms], "arm")
            if self.layers != "all":
                raise ValueError("with arms, each arm names its dense_layers: set layers: all")
        return self


class RandomSpectrumCells(Strict):
    """Cells: variant x seed x context; entropy of the registered query rows of every listed head."""

    variants: list[Literal["trained", "default_init", "scale_matched"]] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    contexts: list[PositiveInt] = Field(min_length=1)
    prompts: PositiveInt  # the first `prompts` windows
    heads: Literal["all"] | list[HeadRef]
    query_row: Literal["last"]

    _u1 = field_validator("seeds")(lambda v: _sorted_unique(v, "seeds"))
    _u2 = field_validator("contexts")(lambda v: _sorted_unique(v, "contexts"))


class LineSearch(Strict):
    tolerance: Annotated[float, Field(gt=0)]  # |ΔH_T - Δ_target| in nats
    max_iterations: PositiveInt


class CausalCells(Strict):
    """The matched-magnitude (Gap-1) causal test: cells (layer, head) x prompt x context."""

    heads: list[HeadRef] = Field(min_length=1)
    prompts: PositiveInt
    contexts: list[PositiveInt] = Field(min_length=1)
    delta_target: Annotated[float, Field(gt=0)]  # nats
    pilot_targets: list[Annotated[float, Field(gt=0)]]
    line_search: LineSearch
    finite_difference_eps: Annotated[float, Field(gt=0)]
    gap_coverage: Coverage  # k_eff = floor(gap_coverage * N) for the secondary D_gap
    seed: int  # base of the per-cell generators


class LatencyArm(Strict):
    """One sparse arm of the latency producer: its id (the rows' ``arm``) and its selection."""

    id: Identifier
    selection: Selection

    @field_validator("id")
    @classmethod
    def _not_dense(cls, v: str) -> str:
        if v == "dense":
            raise ValueError("'dense' names the dense baseline arm: choose another id")
        return v


class LatencyCells(Strict):
    """Cells: level x context x batch size x coverage x session; each round of a session times the
    dense arm and every sparse arm once. sparse_arms: optional, several sparse rules timed against the
    same dense baseline (rows' ``arm`` = the arm's id, the rule's selection = the arm's); unset, one
    sparse arm named ``sparse`` with ``attention.selection``."""

    levels: list[Literal["op", "model"]] = Field(min_length=1)
    contexts: list[PositiveInt] = Field(min_length=1)
    batch_sizes: list[PositiveInt] = Field(min_length=1)
    coverages: list[Coverage] = Field(min_length=1)
    warmup: NonNegativeInt
    repetitions: PositiveInt
    sessions: PositiveInt
    order: Literal["interleaved_random", "interleaved_fixed"]
    seed: int
    # the layer (0-based) whose q and cache the op level times; optional: a plan that leaves it
    # unset hashes as if the field did not exist (canonical.py) and cannot run the op level
    op_layer: NonNegativeInt | None = None
    sparse_arms: list[LatencyArm] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _arm_ids(self) -> LatencyCells:
        if self.sparse_arms is not None:
            _no_duplicates([a.id for a in self.sparse_arms], "sparse arm")
        return self

    def sparse_selections(self, default: str) -> dict[str, str]:
        """{arm id: selection} of the sparse arms (``{"sparse": default}`` when none is registered)."""
        if self.sparse_arms is None:
            return {"sparse": default}
        return {a.id: a.selection for a in self.sparse_arms}


class Producers(Strict):
    quality: QualityCells | None = None
    random_spectrum: RandomSpectrumCells | None = None
    causal: CausalCells | None = None
    latency: LatencyCells | None = None


ProducerName = Literal["quality", "random_spectrum", "causal", "latency"]

# ---------------------------------------------------------------------------- hypotheses

Op = Literal["<", "<=", ">", ">=", "==", "!="]
Scalar = bool | int | float | str


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# An interval box per statistic field: {stat: (lo, lo_closed, hi, hi_closed, equal_to, not_equal)}
_INF = float("inf")


def _rule_box(conds: list) -> dict | None:
    """Intersect a rule's conditions per stat; None when some stat's set is empty."""
    box: dict = {}
    for c in conds:
        lo, lo_c, hi, hi_c, eq, ne = box.get(c.stat, (-_INF, False, _INF, False, None, frozenset()))
        v = c.value
        if c.op == "!=":
            ne = ne | {(type(v) is bool, v)}
        elif c.op == "==" and not _is_number(v):
            if eq is not None and eq != (type(v) is bool, v):
                return None
            eq = (type(v) is bool, v)
        else:
            if c.op in (">", ">=", "=="):
                if v > lo or (v == lo and c.op == ">" and lo_c):
                    lo, lo_c = v, c.op != ">"
            if c.op in ("<", "<=", "=="):
                if v < hi or (v == hi and c.op == "<" and hi_c):
                    hi, hi_c = v, c.op != "<"
        if lo > hi or (lo == hi and not (lo_c and hi_c)):
            return None
        if eq is not None and (lo != -_INF or hi != _INF):
            return None  # a number range and a non-number equality on one field
        box[c.stat] = (lo, lo_c, hi, hi_c, eq, ne)
    return box


def _implies(box: dict, c) -> bool:
    """Whether every value inside ``box`` satisfies condition ``c`` (conservative: False if unsure)."""
    if c.stat not in box:
        return False
    lo, lo_c, hi, hi_c, eq, ne = box[c.stat]
    v = c.value
    if not _is_number(v):
        key = (type(v) is bool, v)
        return (eq == key) if c.op == "==" else (eq is not None and eq != key) or key in ne
    if eq is not None:
        return False
    if c.op == "<":
        return hi < v or (hi == v and not hi_c)
    if c.op == "<=":
        return hi <= v
    if c.op == ">":
        return lo > v or (lo == v and not lo_c)
    if c.op == ">=":
        return lo >= v
    if c.op == "==":
        return lo == hi == v
    return (v < lo or v > hi or (v == lo and not lo_c) or (v == hi and not hi_c)
            or (False, v) in ne)


class Condition(Strict):
    """``stat`` is ``<statistic id>.<field>`` (e.g. ``mean_ci.high``); compared with ``value``.

    Ordering operators (<, <=, >, >=) need a numeric value (not a bool or a string).
    """

    stat: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$")]
    op: Op
    value: Scalar

    @model_validator(mode="after")
    def _orderable(self) -> Condition:
        if self.op in ("<", "<=", ">", ">=") and not _is_number(self.value):
            raise ValueError(f"operator '{self.op}' needs a number, got {self.value!r}")
        return self


class Gate(Condition):
    """A condition that must hold before any decision; failing it makes the hypothesis INVALID."""

    id: Identifier
    reason: str = Field(min_length=1)


class Rule(Strict):
    """All conditions must hold (AND). Express OR as several rules with the same label."""

    label: Identifier
    when: list[Condition] = Field(min_length=1)


class Decision(Strict):
    """Ordered rules, first match wins; ``fallback`` (explicit) when none matches.

    Rejected: a rule whose conditions contradict each other (e.g. ``x > 1`` and ``x < 0``: inverted
    thresholds) and a rule that an earlier rule always pre-empts (e.g. ``x <= 1.0 → STANDARD``
    listed before ``x <= 0.5 → STRICT``: thresholds in the wrong order).
    """

    rules: list[Rule]
    fallback: Identifier  # explicit: the label when no rule matches

    @model_validator(mode="after")
    def _reachable(self) -> Decision:
        boxes = [_rule_box(r.when) for r in self.rules]
        for j, (rule, box) in enumerate(zip(self.rules, boxes)):
            if box is None:
                raise ValueError(
                    f"rules[{j}] ({rule.label}) can never match: its conditions contradict each other "
                    "(inverted thresholds?)")
            for i in range(j):
                if all(_implies(box, c) for c in self.rules[i].when):
                    raise ValueError(
                        f"rules[{j}] ({rule.label}) is unreachable: every value it matches is already "
                        f"matched by rules[{i}] ({self.rules[i].label}); first match wins, so the "
                        "thresholds are in the wrong order")
        return self


class StatisticSpec(Strict):
    """One registered statistic; ``params`` are checked against :mod:`prereg.statistics`."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
    kind: str
    params: dict[str, Any]

    @model_validator(mode="after")
    def _known_kind(self) -> StatisticSpec:
        from dcr.prereg.statistics import validate_params

        validate_params(self.kind, self.params)
        low, high = self.params.get("low"), self.params.get("high")
        if _is_number(low) and _is_number(high) and not low < high:
            raise ValueError(f"params.low ({low}) must be below params.high ({high}): inverted thresholds")
        return self


def _no_duplicates(ids: list[str], what: str) -> None:
    """ValueError naming the ids that occur more than once (``what``: e.g. "statistic")."""
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"duplicate {what} ids: {dup}")


def _stat_field_problem(ref: str, kinds: dict[str, str]) -> str | None:
    """Why ``<statistic id>.<field>`` does not name an output of one of ``kinds`` (None if it does)."""
    from dcr.prereg.statistics import KINDS

    sid, _, field = ref.partition(".")
    if sid not in kinds:
        return f"'{ref}' names no statistic of this hypothesis (known: {', '.join(sorted(kinds))})"
    outputs = KINDS[kinds[sid]].outputs
    if field not in outputs:
        return f"'{ref}': kind '{kinds[sid]}' has no output '{field}' (outputs: {', '.join(outputs)})"
    return None


class PartialData(Strict):
    """A registered permission to decide on incomplete data. Without it a hypothesis needs every
    registered cell its selection could read, each exactly once; with it, the hypothesis is decided
    when at least ``min_fraction`` of those cells are present (each still exactly once: a doubled
    cell is never allowed), and the verdict and the report name the missing ones and this policy."""

    min_fraction: Annotated[float, Field(gt=0, le=1)]
    reason: str = Field(min_length=10)


class Hypothesis(Strict):
    id: Identifier
    statement: str = Field(min_length=1)
    producer: ProducerName
    select: dict[str, Scalar | list[Scalar]]  # row filter over the producer's table ({} = all rows)
    metric: str = Field(min_length=1)  # the column the statistics read
    nonfinite: Literal["error", "drop_and_count"]  # what NaN/inf in the metric does
    statistics: list[StatisticSpec] = Field(min_length=1)
    gates: list[Gate]
    decision: Decision
    family: Identifier | None  # multiplicity family, or null
    # optional; unset (null or absent) = strict completeness, and the plan hashes as if the field
    # did not exist (canonical.py)
    partial_data: PartialData | None = None

    @model_validator(mode="after")
    def _references(self) -> Hypothesis:
        _no_duplicates([s.id for s in self.statistics], "statistic")
        _no_duplicates([g.id for g in self.gates], "gate")
        kinds = {s.id: s.kind for s in self.statistics}
        for where, conds in [("gates", self.gates)] + [
            (f"decision.rules[{i}]", r.when) for i, r in enumerate(self.decision.rules)
        ]:
            for c in conds:
                problem = _stat_field_problem(c.stat, kinds)
                if problem:
                    raise ValueError(f"{where}: {problem}")
        return self


class MultiplicityFamily(Strict):
    id: Identifier
    hypotheses: list[Identifier] = Field(min_length=1)
    p_value: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*\.[A-Za-z0-9_]+$")]  # e.g. "wilcoxon.p"
    method: Literal["bonferroni", "holm", "fdr_bh", "fdr_by", "sidak", "holm-sidak", "hommel"]
    alpha: Probability


class ComputeBudget(Strict):
    """The element operations the registered statistics may need (estimated at lock time, see
    :mod:`prereg.budget`) when that is more than the default budget, and why; reports show it."""

    operations: PositiveInt
    reason: str = Field(min_length=10)


class Plan(Strict):
    schema_version: Literal[1]
    study: Study
    amends: Amendment | None
    model: Model
    corpus: Corpus
    windows: Windows
    attention: Attention
    producers: Producers
    hypotheses: list[Hypothesis] = Field(min_length=1)
    multiplicity: list[MultiplicityFamily]
    compute_budget: ComputeBudget | None = None  # optional: unset, it is left out of the hash (canonical.py)

    @model_validator(mode="after")
    def _cross_checks(self) -> Plan:
        ids = [h.id for h in self.hypotheses]
        _no_duplicates(ids, "hypothesis")
        for h in self.hypotheses:
            if getattr(self.producers, h.producer) is None:
                raise ValueError(f"hypothesis {h.id} reads producer '{h.producer}', which has no cells")
        fam_ids = [f.id for f in self.multiplicity]
        _no_duplicates(fam_ids, "multiplicity family")
        for f in self.multiplicity:
            for hid in f.hypotheses:
                if hid not in ids:
                    raise ValueError(f"multiplicity family {f.id} names unknown hypothesis {hid}")
        by_id = {h.id: h for h in self.hypotheses}
        for h in self.hypotheses:
            if h.family is not None and h.family not in fam_ids:
                raise ValueError(f"hypothesis {h.id}: family {h.family} is not declared under multiplicity")
        for f in self.multiplicity:
            if len(set(f.hypotheses)) != len(f.hypotheses):
                raise ValueError(f"multiplicity family {f.id} lists a hypothesis twice")
            for hid in f.hypotheses:
                h = by_id[hid]
                if h.family != f.id:
                    raise ValueError(f"multiplicity family {f.id} lists {hid}, whose family is {h.family}")
                problem = _stat_field_problem(f.p_value, {s.id: s.kind for s in h.statistics})
                if problem:
                    raise ValueError(f"multiplicity family {f.id}, hypothesis {hid}: {problem}")
        for h in self.hypotheses:
            if h.family is not None and h.id not in next(f for f in self.multiplicity if f.id == h.family).hypotheses:
                raise ValueError(f"hypothesis {h.id} names family {h.family}, which does not list it")
        for h in self.hypotheses:
            for st in h.statistics:
                fam = st.params.get("family") if st.kind == "multiplicity_adjusted" else None
                if st.kind == "multiplicity_adjusted" and fam != h.family:
                    raise ValueError(f"hypothesis {h.id}: statistic {st.id} adjusts over family {fam!r}, "
                                     f"but the hypothesis' family is {h.family!r}")
        q = self.producers.quality
        if q is not None and q.per_position is False:
            for h in self.hypotheses:
                if h.producer == "quality" and h.metric.startswith("position."):
                    raise ValueError(f"hypothesis {h.id} reads {h.metric!r}, but producers.quality.per_position is "
                                     "false: the per-position lists would not be written")
        for h in self.hypotheses:
            _check_arm_values(h, self._arm_values(h.producer))
        for name in ("random_spectrum", "causal"):
            cells = getattr(self.producers, name)
            if cells is not None and cells.prompts > self.windows.count:
                raise ValueError(f"producers.{name}.prompts ({cells.prompts}) exceeds windows.count "
                                 f"({self.windows.count}): prompts are the first windows")
        return self

    def _arm_values(self, producer: str) -> set[str] | None:
        """The values the rows of ``producer`` can hold in their ``arm`` column (None: no such column)."""
        if producer == "latency":
            lat = self.producers.latency
            return {"dense", *lat.sparse_selections(self.attention.selection)}
        if producer == "quality" and self.producers.quality.arms is not None:
            return {a.id for a in self.producers.quality.arms}
        return None

    @property
    def max_context(self) -> int:
        """The largest context any producer registers (sets the disjoint window stride)."""
        ns = [n for p in (self.producers.quality, self.producers.random_spectrum, self.producers.causal)
              if p is not None for n in p.contexts]
        return max(ns) if ns else 0


_GROUP_VALUE_PARAMS = ("numerator", "denominator", "group_a", "group_b")


def _check_arm_values(h: Hypothesis, arms: set[str] | None) -> None:
    """A hypothesis that selects or compares rows by ``arm`` must name arms its producer writes."""
    if arms is None:
        return
    known = ", ".join(sorted(arms))
    want = h.select.get("arm")
    for v in (want if isinstance(want, list) else [] if want is None else [want]):
        if v not in arms:
            raise ValueError(f"hypothesis {h.id}: select arm {v!r} is not an arm of producer {h.producer} "
                             f"(its rows' arms: {known})")
    for st in h.statistics:
        if st.params.get("group_column") != "arm":
            continue
        for key in _GROUP_VALUE_PARAMS:
            if key in st.params and st.params[key] not in arms:
                raise ValueError(f"hypothesis {h.id}, statistic {st.id}: {key} {st.params[key]!r} is not an arm "
                                 f"of producer {h.producer} (its rows' arms: {known})")


def overlapping_windows(plan: Plan) -> list[tuple[int, int]]:
    """Pairs (i, j) of windows whose token spans overlap at the plan's largest context.

    A window spans ``max_context + 1`` tokens. The seed's offsets ``seed * 1000`` at N = 32,000
    overlap almost entirely; a registration may use them, but lock and reports flag it.
    """
    w = plan.windows
    if w.placement == "disjoint":
        return []
    span = plan.max_context + 1
    starts = sorted(enumerate(w.offsets or []), key=lambda kv: kv[1])
    return [(i, j) for a, (i, si) in enumerate(starts) for (j, sj) in starts[a + 1:] if sj < si + span]
