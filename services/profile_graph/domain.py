"""The profile graph's values and the rules on them: limits, dataclasses and validation (paging: shared.paging)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.errors import QUOTE_CHARS, InvalidArgument, Violations, quote, shorten

MAX_EVENTS = 1_000
MAX_ITEMS = 1_000
MAX_PROFILES = 1_000
MAX_RULE_CHARS = 4_096
MAX_DESCRIPTION_CHARS = 1_024
MAX_WINDOW = timedelta(days=36_525)
DEFAULT_EVENT_LIMIT = 20
MAX_EVENT_LIMIT = 1_000
DEFAULT_AFFINITY_LIMIT = 10
MAX_CONDITIONS = 20
PROFILE_PARTS = ("attributes", "events", "insights", "segments", "profile_objects", "affinities", "consents")

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PROPERTY_FIELD_RE = re.compile(r"^properties\.([A-Za-z_][A-Za-z0-9_]{0,63})$")
ITEM_FIELD_RE = re.compile(r"^item\.([A-Za-z_][A-Za-z0-9_]{0,63})$")
PLAIN_FIELDS = ("revenue", "quantity", "item_id", "name", "source")
NUMERIC_FIELDS = ("revenue", "quantity")
KNOWN_EVENT_TYPES = frozenset(range(1, 9))  # common.v1.EventType values other than UNSPECIFIED
EVENT_PURCHASE = 4  # common.v1.EVENT_TYPE_PURCHASE
EVENT_RETURN = 8  # common.v1.EVENT_TYPE_RETURN: stored with negative line units, so revenue and quantity are refunds
AGGREGATE_COUNT = 1
AGGREGATE_SUM = 2
AGGREGATE_COUNT_DISTINCT = 3
AGGREGATE_MAX = 4
AGGREGATE_LAST = 5
SUBJECT_INDIVIDUAL = 1
SUBJECT_ITEM = 2
OP_EQ, OP_NE, OP_GT, OP_GE, OP_LT, OP_LE, OP_CONTAINS = range(1, 8)
ORDER_OPS = (OP_GT, OP_GE, OP_LT, OP_LE)
CONSENT_GRANTED = 1
CONSENT_DENIED = 2
CONSENT_NAMES = {CONSENT_GRANTED: "GRANTED", CONSENT_DENIED: "DENIED"}
POLICY_LAST_UPDATED = 1
POLICY_MOST_FREQUENT = 2
POLICY_SOURCE_PRIORITY = 3
RECONCILED_OBJECTS = ("individual",)


class Contention(Exception):
    """A concurrent transaction got in the way (a deadlock was broken); the work can simply run again."""


@dataclass(frozen=True)
class NewEvent:
    """One event to append, already resolved to its unified individual (also: a stored event being replayed)."""

    individual_id: str
    message_id: str
    type: int
    event_time: datetime | None
    payload: bytes = b""
    attributes: dict = field(default_factory=dict)
    properties: dict | None = None
    revenue: float = 0.0
    quantity: float = 0.0
    item_id: str = ""
    name: str = ""
    source: str = ""
    lines: tuple = ()  # ((item_id, quantity, unit_price), ...)
    consents: tuple = ()  # ((purpose, status), ...)
    objects: tuple = ()  # ((type, object_id, attributes), ...)
    identity_keys: tuple = ()  # ("type:value", ...)

    @property
    def item_ids(self) -> list[str]:
        """Every item the event is about: its item_id and its line items' ids, each once."""
        ids = ([self.item_id] if self.item_id else []) + [line[0] for line in self.lines if line[0]]
        return list(dict.fromkeys(ids))


@dataclass(frozen=True)
class AttributeUpdate:
    """The winning value of one attribute key of one individual within a batch."""

    individual_id: str
    key: str
    value: object
    updated_at: datetime


@dataclass(frozen=True)
class Condition:
    """field operator value, on an event row (insights) or an item's attributes (ListItems)."""

    field: str
    op: int
    value: object


@dataclass(frozen=True)
class InsightDef:
    """A calculated insight definition; window None (or zero, internally) means all time."""

    name: str
    description: str
    aggregate: int
    field: str
    event_type: int
    window: timedelta | None
    conditions: tuple[Condition, ...] = ()
    dimension: str = ""
    subject: int = SUBJECT_INDIVIDUAL

    @property
    def reads_item_attributes(self) -> bool:
        """Whether the insight reads catalog attributes (item.<attribute>), which may change after the events."""
        return any(n.startswith("item.") for n in [self.field, self.dimension] + [c.field for c in self.conditions])

    @property
    def uses_items(self) -> bool:
        """Whether the insight works on item rows (one per line item, or the event's item)."""
        names = [self.field, self.dimension] + [c.field for c in self.conditions]
        return self.subject == SUBJECT_ITEM or any(n == "item_id" or n.startswith("item.") for n in names)


@dataclass(frozen=True)
class SegmentDef:
    """A segment definition, with its member count when read back."""

    name: str
    description: str
    rule: str
    member_count: int = 0


@dataclass
class AppendOutcome:
    """What appending one event did."""

    message_id: str
    duplicate: bool
    entered: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProfileObjectRow:
    """A profile object as stored."""

    type: str
    object_id: str
    attributes: dict
    updated_at: datetime
    source: str = ""


@dataclass(frozen=True)
class ConsentState:
    """The current decision for one purpose."""

    purpose: str
    status: int
    updated_at: datetime
    source: str = ""


@dataclass(frozen=True)
class Affinity:
    """A decayed score for one dimension value."""

    dimension: str
    value: str
    score: float


@dataclass
class Profile:
    """The profile data graph of one individual; parts not asked for stay empty."""

    individual_id: str
    attributes: dict = field(default_factory=dict)
    event_payloads: list[bytes] = field(default_factory=list)
    insights: dict[str, float] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)
    update_time: datetime | None = None
    grouped_insights: dict[str, dict[str, float]] = field(default_factory=dict)
    objects: list[ProfileObjectRow] = field(default_factory=list)
    affinities: list[Affinity] = field(default_factory=list)
    consents: list[ConsentState] = field(default_factory=list)


@dataclass(frozen=True)
class Item:
    """A catalog item (insights: current item insight values, output only)."""

    item_id: str
    name: str
    attributes: dict
    insights: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Member:
    """A segment member and when it entered."""

    individual_id: str
    enter_time: datetime


@dataclass(frozen=True)
class MembershipChange:
    """One entry into or exit from a segment."""

    seq: int
    segment: str
    individual_id: str
    entered: bool
    change_time: datetime
    txid: int = 0  # the writing transaction's id: the feed is ordered by (txid, seq)


@dataclass(frozen=True)
class StoredEvent:
    """The columns of a stored event that insights aggregate."""

    individual_id: str
    type: int
    event_time: datetime
    revenue: float
    quantity: float
    properties: dict | None
    message_id: str = ""
    name: str = ""
    source: str = ""
    item_id: str = ""
    lines: tuple = ()


@dataclass(frozen=True)
class AffinityConfig:
    """Which item attributes get scores, what each event type weighs, and the half-life of a score."""

    dimensions: tuple[str, ...] = ("category",)
    weights: tuple[tuple[int, float], ...] = ((2, 1.0), (3, 3.0), (4, 5.0))
    half_life: timedelta = timedelta(days=30)

    def weight(self, event_type: int) -> float:
        return dict(self.weights).get(event_type, 0.0)


@dataclass(frozen=True)
class AttributeRecon:
    """How one attribute's unified value is chosen."""

    policy: int = POLICY_LAST_UPDATED
    sources: tuple[str, ...] = ()
    include_empty: bool = False


@dataclass(frozen=True)
class ReconRule:
    """The reconciliation rule of an object: a default and overrides per attribute."""

    object: str = "individual"
    default: AttributeRecon = AttributeRecon()
    overrides: tuple[tuple[str, AttributeRecon], ...] = ()

    def of(self, key: str) -> AttributeRecon:
        return dict(self.overrides).get(key, self.default)


@dataclass(frozen=True)
class ValueStat:
    """How often and when last one source sent one value (JSON text) for one attribute."""

    source: str
    value: str
    count: int
    last_at: datetime


@dataclass
class Config:
    """Everything a batch needs to know about the tenant's definitions."""

    insights: list[InsightDef] = field(default_factory=list)
    segments: list[SegmentDef] = field(default_factory=list)
    affinity: AffinityConfig = AffinityConfig()
    recon: ReconRule = ReconRule()


# ---- validation -------------------------------------------------------------------------------------------


def validate_events(events: list[NewEvent]) -> None:
    """Refuses a batch with more than 1,000 events or an event lacking an id, message id, time or type, or with a
    consent or profile object that is malformed."""
    v = Violations()
    if len(events) > MAX_EVENTS:
        v.add("events", f"at most {MAX_EVENTS} events per call, got {len(events)}")
        v.raise_if_any()
    for i, e in enumerate(events):
        if not e.individual_id:
            v.add(f"events[{i}].unified_individual_id", "must not be empty")
        if not e.message_id:
            v.add(f"events[{i}].event.message_id", "must not be empty")
        if e.event_time is None:
            v.add(f"events[{i}].event.event_time", "is required")
        if e.type == 0:
            v.add(f"events[{i}].event.type", "must not be EVENT_TYPE_UNSPECIFIED")
        elif e.type not in KNOWN_EVENT_TYPES:
            v.add(f"events[{i}].event.type", f"unknown event type {e.type}")
        for j, (purpose, status) in enumerate(e.consents):
            if not NAME_RE.match(purpose):
                v.add(f"events[{i}].event.consents[{j}].purpose", "must match ^[a-z][a-z0-9_]{0,63}$")
            if status not in CONSENT_NAMES:
                v.add(f"events[{i}].event.consents[{j}].status", "must be CONSENT_STATUS_GRANTED or _DENIED")
        for j, (kind, object_id, _) in enumerate(e.objects):
            if not NAME_RE.match(kind):
                v.add(f"events[{i}].event.profile_objects[{j}].type", "must match ^[a-z][a-z0-9_]{0,63}$")
            if not object_id:
                v.add(f"events[{i}].event.profile_objects[{j}].object_id", "must not be empty")
    v.raise_if_any()


def _field_ok(name: str) -> bool:
    return name in PLAIN_FIELDS or bool(PROPERTY_FIELD_RE.match(name) or ITEM_FIELD_RE.match(name))


def validate_conditions(v: Violations, path: str, conditions, item_attributes: bool = False) -> None:
    """Each condition names a known field (an attribute name for items) and a known operator with a scalar operand."""
    if len(conditions) > MAX_CONDITIONS:
        v.add(path, f"at most {MAX_CONDITIONS} conditions")
        return
    for j, c in enumerate(conditions):
        ok = KEY_RE.match(c.field) if item_attributes else _field_ok(c.field)
        if not ok:
            v.add(f"{path}[{j}].field", "unknown field; expected " + (
                "an item attribute name" if item_attributes else
                "revenue, quantity, item_id, name, source, properties.<name> or item.<attribute>"))
        if c.op not in range(1, 8):
            v.add(f"{path}[{j}].operator", "must be set")
        elif c.op in ORDER_OPS and (isinstance(c.value, bool) or not isinstance(c.value, (int, float, str))):
            v.add(f"{path}[{j}].value", "ordering operators need a number or a string")
        if c.value is None or isinstance(c.value, (dict, list)):
            v.add(f"{path}[{j}].value", "must be a string, number or bool")
        elif isinstance(c.value, float) and not math.isfinite(c.value):
            v.add(f"{path}[{j}].value", "must be a finite number")


def validate_insight(d: InsightDef | None) -> InsightDef:
    """Refuses an insight definition with a bad name, aggregate, field, filter, window, dimension or description."""
    if d is None:
        raise InvalidArgument([("insight", "is required")])
    v = Violations()
    if not NAME_RE.match(d.name):
        v.add("insight.name", "must match ^[a-z][a-z0-9_]{0,63}$")
    if len(d.description) > MAX_DESCRIPTION_CHARS:
        v.add("insight.description", f"at most {MAX_DESCRIPTION_CHARS} characters")
    if d.aggregate == AGGREGATE_COUNT:
        if d.field:
            v.add("insight.field", "must be empty for AGGREGATE_COUNT")
    elif d.aggregate in (AGGREGATE_SUM, AGGREGATE_MAX, AGGREGATE_LAST):
        if d.field not in NUMERIC_FIELDS and not PROPERTY_FIELD_RE.match(d.field) and not ITEM_FIELD_RE.match(d.field):
            v.add("insight.field", "must be revenue, quantity, properties.<name> or item.<attribute> (numeric)")
    elif d.aggregate == AGGREGATE_COUNT_DISTINCT:
        if not _field_ok(d.field):
            v.add("insight.field", "must be revenue, quantity, item_id, name, source, properties.<name> or "
                                   "item.<attribute>")
    else:
        v.add("insight.aggregate", "must be COUNT, SUM, COUNT_DISTINCT, MAX or LAST")
    if d.event_type != 0 and d.event_type not in KNOWN_EVENT_TYPES:
        v.add("insight.event_type", f"unknown event type {d.event_type}")
    if d.window is not None:
        if d.window <= timedelta(0):
            v.add("insight.window", "must be positive; leave it unset for all time")
        elif d.window > MAX_WINDOW:
            v.add("insight.window", "at most 100 years")
    validate_conditions(v, "insight.conditions", d.conditions)
    if d.dimension and not _field_ok(d.dimension):
        v.add("insight.dimension", "unknown field; expected item_id, name, source, properties.<name> or item.<attribute>")
    if d.subject not in (SUBJECT_INDIVIDUAL, SUBJECT_ITEM):
        v.add("insight.subject", "unknown subject")
    elif d.subject == SUBJECT_ITEM and d.dimension:
        v.add("insight.dimension", "item insights are not grouped")
    v.raise_if_any()
    return d


def validate_segment_fields(d: SegmentDef | None) -> SegmentDef:
    """Refuses a segment with a bad name, description, or an empty or too long rule (compilation comes after)."""
    if d is None:
        raise InvalidArgument([("segment", "is required")])
    v = Violations()
    if not NAME_RE.match(d.name):
        v.add("segment.name", "must match ^[a-z][a-z0-9_]{0,63}$")
    if len(d.description) > MAX_DESCRIPTION_CHARS:
        v.add("segment.description", f"at most {MAX_DESCRIPTION_CHARS} characters")
    if not d.rule.strip():
        v.add("segment.rule", "must not be empty")
    elif len(d.rule) > MAX_RULE_CHARS:
        v.add("segment.rule", f"at most {MAX_RULE_CHARS} characters, got {len(d.rule)}")
    v.raise_if_any()
    return d


def validate_affinity_config(c: AffinityConfig | None) -> AffinityConfig:
    """Dimensions are item attribute names (at most 10), weights non-negative per known type, half-life positive."""
    if c is None:
        raise InvalidArgument([("config", "is required")])
    v = Violations()
    if len(c.dimensions) > 10:
        v.add("config.dimensions", "at most 10 dimensions")
    for i, d in enumerate(c.dimensions):
        if not KEY_RE.match(d):
            v.add(f"config.dimensions[{i}]", "must be an item attribute name")
    for i, (event_type, weight) in enumerate(c.weights):
        if event_type not in KNOWN_EVENT_TYPES:
            v.add(f"config.weights[{i}].event_type", "unknown event type")
        if not (weight >= 0 and math.isfinite(weight)):
            v.add(f"config.weights[{i}].weight", "must be a non-negative number")
    if c.half_life <= timedelta(0):
        v.add("config.half_life", "must be positive")
    v.raise_if_any()
    return c


def validate_recon_rule(r: ReconRule | None) -> ReconRule:
    """The object is known, the default has a policy, names and sources are identifiers."""
    if r is None:
        raise InvalidArgument([("rule", "is required")])
    v = Violations()
    if r.object not in RECONCILED_OBJECTS:
        v.add("rule.object",
              f"unknown object {quote(r.object)}; expected one of {', '.join(RECONCILED_OBJECTS)}")

    def check(path: str, a: AttributeRecon, is_default: bool) -> None:
        if a.policy not in (POLICY_LAST_UPDATED, POLICY_MOST_FREQUENT, POLICY_SOURCE_PRIORITY) and \
                (is_default or a.policy != 0):
            v.add(f"{path}.policy", "must be LAST_UPDATED, MOST_FREQUENT or SOURCE_PRIORITY")
        for j, src in enumerate(a.sources):
            if not src or len(src) > 64:
                v.add(f"{path}.source_priority[{j}]", "must be a non-empty source name of at most 64 characters")

    check("rule.default_reconciliation", r.default, True)
    for key, a in r.overrides:
        if not KEY_RE.match(key):
            key = shorten(key, QUOTE_CHARS)  # the path names a bad key only as far as an error quotes a value
            v.add(f"rule.attribute_overrides[{key}]", "must be an attribute name")
        check(f"rule.attribute_overrides[{key}]", a, False)
    v.raise_if_any()
    return r


def profile_parts(paths: list[str]) -> set[str]:
    """The profile parts a read mask asks for (all when empty); an unknown path is refused."""
    if not paths:
        return set(PROFILE_PARTS)
    v = Violations()
    for i, p in enumerate(paths):
        if p not in PROFILE_PARTS:
            v.add(f"read_mask.paths[{i}]",
                  f"unknown path {quote(p)}; expected one of {', '.join(PROFILE_PARTS)}")
    v.raise_if_any()
    return set(paths)


def event_limit(requested: int, field_name: str = "event_limit", default: int = DEFAULT_EVENT_LIMIT) -> int:
    """0 means the default; more than 1,000 is capped; negative is refused."""
    if requested < 0:
        raise InvalidArgument([(field_name, "must not be negative")])
    if requested == 0:
        return default
    return min(requested, MAX_EVENT_LIMIT)

