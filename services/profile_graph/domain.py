"""The profile graph's values and pure rules: validation, reconciliation, insight math, affinities, segments."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import cel

from shared.errors import InvalidArgument, Violations

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
KNOWN_EVENT_TYPES = frozenset(range(1, 8))  # common.v1.EventType values other than UNSPECIFIED
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
RULE_VARIABLES = frozenset({"attributes", "insights", "segments", "affinities", "consents"})
# Segment rules may test membership of other segments; evaluation repeats until memberships settle.
MAX_SEGMENT_PASSES = 5
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


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


def validate_insight(d: InsightDef | None) -> None:
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


def validate_segment_fields(d: SegmentDef | None) -> None:
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


def validate_affinity_config(c: AffinityConfig | None) -> None:
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


def validate_recon_rule(r: ReconRule | None) -> None:
    """The object is known, the default has a policy, names and sources are identifiers."""
    if r is None:
        raise InvalidArgument([("rule", "is required")])
    v = Violations()
    if r.object not in RECONCILED_OBJECTS:
        v.add("rule.object", f"unknown object {r.object!r}; expected one of {', '.join(RECONCILED_OBJECTS)}")

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
            v.add(f"rule.attribute_overrides[{key}]", "must be an attribute name")
        check(f"rule.attribute_overrides[{key}]", a, False)
    v.raise_if_any()


def profile_parts(paths: list[str]) -> set[str]:
    """The profile parts a read mask asks for (all when empty); an unknown path is refused."""
    if not paths:
        return set(PROFILE_PARTS)
    v = Violations()
    for i, p in enumerate(paths):
        if p not in PROFILE_PARTS:
            v.add(f"read_mask.paths[{i}]", f"unknown path {p!r}; expected one of {', '.join(PROFILE_PARTS)}")
    v.raise_if_any()
    return set(paths)


def event_limit(requested: int, field_name: str = "event_limit", default: int = DEFAULT_EVENT_LIMIT) -> int:
    """0 means the default; more than 1,000 is capped; negative is refused."""
    if requested < 0:
        raise InvalidArgument([(field_name, "must not be negative")])
    if requested == 0:
        return default
    return min(requested, MAX_EVENT_LIMIT)


def page_size(requested: int, default: int, maximum: int) -> int:
    """0 means default; more than maximum is capped; negative is refused."""
    if requested < 0:
        raise InvalidArgument([("page_size", "must not be negative")])
    return default if requested == 0 else min(requested, maximum)


def encode_page_token(scope: str, after: str) -> str:
    """An opaque token naming where the next page starts, bound to what is being listed."""
    raw = json.dumps({"s": scope, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, scope: str) -> str:
    """The position a token names; a malformed token or one from another listing is refused."""
    if not token:
        return ""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["s"] == scope and isinstance(data["a"], str):
            return data["a"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        pass
    raise InvalidArgument([("page_token", "is not a token returned by this listing")])


# ---- items --------------------------------------------------------------------------------------------------


def value_type(value: object) -> str | None:
    """The item attribute type of a JSON value, or None when it is not one of the five supported types."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "timestamp" if TIMESTAMP_RE.match(value) else "string"
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return "string_list"
    return None


def check_item_attributes(items: list[Item], known: dict[str, str]) -> dict[str, str]:
    """Refuses values of no supported type or of another type than the attribute has; returns new attribute types."""
    v = Violations()
    new: dict[str, str] = {}
    for i, item in enumerate(items):
        for key, value in item.attributes.items():
            kind = value_type(value)
            path = f"items[{i}].attributes.{key}"
            if not KEY_RE.match(key):
                v.add(path, "attribute names must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$")
            elif kind is None:
                v.add(path, "must be a string, number, bool, RFC 3339 timestamp string or list of strings")
            else:
                expected = known.get(key) or new.get(key)
                if expected is None:
                    new[key] = kind
                elif expected != kind:
                    v.add(path, f"must be a {expected} (the type of {key} in this catalog), got a {kind}")
    v.raise_if_any()
    return new


def check_item_filters(filters: list[Condition], types: dict[str, str]) -> None:
    """Filters name known attributes with operators and operands fit for their type."""
    v = Violations()
    validate_conditions(v, "filters", filters, item_attributes=True)
    v.raise_if_any()
    for j, c in enumerate(filters):
        kind = types.get(c.field)
        if kind is None:
            v.add(f"filters[{j}].field", f"no item has the attribute {c.field!r}")
        elif c.op == OP_CONTAINS and kind != "string_list":
            v.add(f"filters[{j}].operator", f"CONTAINS needs a string list, {c.field} is a {kind}")
        elif c.op != OP_CONTAINS and kind == "string_list":
            v.add(f"filters[{j}].operator", f"{c.field} is a string list: only CONTAINS applies")
        elif kind == "number" and (isinstance(c.value, bool) or not isinstance(c.value, (int, float))):
            v.add(f"filters[{j}].value", f"{c.field} is a number")
        elif kind == "bool" and (not isinstance(c.value, bool) or c.op in ORDER_OPS):
            v.add(f"filters[{j}].value", f"{c.field} is a bool: compare with EQUALS or NOT_EQUALS and a bool")
        elif kind in ("string", "timestamp", "string_list") and not isinstance(c.value, str):
            v.add(f"filters[{j}].value", f"{c.field} is a {kind}: the operand must be a string")
        elif kind == "timestamp" and not TIMESTAMP_RE.match(c.value):
            v.add(f"filters[{j}].value", "must be an RFC 3339 timestamp")
    v.raise_if_any()


# ---- attributes & reconciliation ----------------------------------------------------------------------------


def identity_key(kind: str, value: str) -> str:
    """How an identity is matched on stored events (unmerge): its type and its trimmed, lowercased value."""
    return f"{kind}:{value.strip().lower()}"


def is_empty_value(value: object) -> bool:
    """Null and blank-string attribute values are empty: ignored unless a rule includes them."""
    return value is None or (isinstance(value, str) and not value.strip())


def merge_attributes(events: list[NewEvent]) -> list[AttributeUpdate]:
    """Per individual and key, the value of the latest event (by event_time; a later event in the batch wins ties)."""
    winners: dict[tuple[str, str], AttributeUpdate] = {}
    for e in events:
        for key, value in e.attributes.items():
            if is_empty_value(value):
                continue
            k = (e.individual_id, key)
            known = winners.get(k)
            if known is None or e.event_time >= known.updated_at:
                winners[k] = AttributeUpdate(e.individual_id, key, value, e.event_time)
    return list(winners.values())


def attribute_stats(events: list[NewEvent]) -> dict[tuple[str, str, str, str], tuple[int, datetime]]:
    """(individual, key, source, JSON value) -> (times sent, last event time), over the events of a batch."""
    out: dict[tuple[str, str, str, str], tuple[int, datetime]] = {}
    for e in events:
        for key, value in e.attributes.items():
            k = (e.individual_id, key, e.source, json.dumps(value, sort_keys=True))
            count, last = out.get(k, (0, e.event_time))
            out[k] = (count + 1, max(last, e.event_time))
    return out


def _empty_json(value: str) -> bool:
    return value == "null" or (value.startswith('"') and not json.loads(value).strip())


def reconcile(recon: AttributeRecon, stats: list[ValueStat]) -> str | None:
    """The unified value (JSON text) chosen among what sources sent, or None when nothing qualifies.

    Ties are broken by recency, then by the value text, so the choice never depends on row order.
    """
    stats = [s for s in stats if recon.include_empty or not _empty_json(s.value)]
    if not stats:
        return None
    if recon.policy == POLICY_MOST_FREQUENT:
        totals: dict[str, list] = {}
        for s in stats:
            t = totals.setdefault(s.value, [0, s.last_at])
            t[0] += s.count
            t[1] = max(t[1], s.last_at)
        return max(totals.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0]))[0]
    if recon.policy == POLICY_SOURCE_PRIORITY:
        rank = {src: i for i, src in enumerate(recon.sources)}
        return min(stats, key=lambda s: (rank.get(s.source, len(rank)), -s.last_at.timestamp(), s.value)).value
    return max(stats, key=lambda s: (s.last_at, s.value)).value


def reconcile_all(rule: ReconRule, stats: dict[tuple[str, str], list[ValueStat]]) -> dict[tuple[str, str], tuple]:
    """(individual, key) -> (JSON value or None, last time) under the rule."""
    out = {}
    for (individual, key), rows in stats.items():
        value = reconcile(rule.of(key), rows)
        chosen_at = max((s.last_at for s in rows if s.value == value), default=None)
        out[(individual, key)] = (value, chosen_at)
    return out


def latest_objects(events: list[NewEvent]) -> list[tuple[str, str, str, dict, datetime, str]]:
    """Per (type, object id), the latest version among the events: (individual, type, id, attributes, time, source)."""
    latest: dict[tuple[str, str], tuple] = {}
    for e in events:
        for kind, object_id, attributes in e.objects:
            known = latest.get((kind, object_id))
            if known is None or e.event_time >= known[4]:
                latest[(kind, object_id)] = (e.individual_id, kind, object_id, attributes, e.event_time, e.source)
    return list(latest.values())


def latest_consents(events: list[NewEvent]) -> list[tuple[str, str, int, datetime, str]]:
    """Per (individual, purpose), the latest decision among the events: (individual, purpose, status, time, source)."""
    latest: dict[tuple[str, str], tuple] = {}
    for e in events:
        for purpose, status in e.consents:
            known = latest.get((e.individual_id, purpose))
            if known is None or e.event_time >= known[3]:
                latest[(e.individual_id, purpose)] = (e.individual_id, purpose, status, e.event_time, e.source)
    return list(latest.values())


# ---- affinities ---------------------------------------------------------------------------------------------


def decay(score: float, elapsed_seconds: float, half_life: timedelta) -> float:
    """A score after elapsed_seconds with the given half-life (a negative time counts as none; the exponent is
    capped at 1,000 half-lives, like the SQL reads)."""
    return score * 0.5 ** min(max(elapsed_seconds, 0.0) / half_life.total_seconds(), 1000.0)


def affinity_increments(events: list[NewEvent], items: dict[str, dict], config: AffinityConfig
                        ) -> dict[tuple[str, str, str], tuple[float, datetime]]:
    """(individual, dimension, value) -> (score at as_of, as_of) added by the events; each event adds its type's
    weight once per distinct value of each dimension over its items."""
    out: dict[tuple[str, str, str], tuple[float, datetime]] = {}
    for e in events:
        weight = config.weight(e.type)
        if not weight:
            continue
        for dim in config.dimensions:
            values: set[str] = set()
            for item_id in e.item_ids:
                raw = items.get(item_id, {}).get(dim)
                for value in (raw if isinstance(raw, list) else [raw]):
                    if value is not None and not isinstance(value, (dict, list)) and str(value).strip():
                        values.add(value if isinstance(value, str) else json.dumps(value))
            for value in values:
                key = (e.individual_id, dim, value)
                score, as_of = out.get(key, (0.0, e.event_time))
                if e.event_time >= as_of:
                    score = decay(score, (e.event_time - as_of).total_seconds(), config.half_life) + weight
                    as_of = e.event_time
                else:
                    score += decay(weight, (as_of - e.event_time).total_seconds(), config.half_life)
                out[key] = (score, as_of)
    return out


# ---- insights -----------------------------------------------------------------------------------------------


class Row(NamedTuple):
    """What an insight sees of an event: the whole event, or one of its items (line item or item_id). A named tuple:
    one is made per event and insight on every append."""

    event: StoredEvent
    item_id: str
    revenue: float
    quantity: float


def rows_of(d: InsightDef, e: StoredEvent) -> list[Row]:
    """Event rows: one per event; item rows: one per line item, or one for the event's item_id."""
    if not d.uses_items:
        return [Row(e, e.item_id, e.revenue, e.quantity)]
    if e.lines:
        return [Row(e, item_id, q * p, q) for item_id, q, p in e.lines if item_id]
    return [Row(e, e.item_id, e.revenue, e.quantity)] if e.item_id else []


def field_value(name: str, row: Row, items: dict[str, dict]) -> object:
    """The value of a field on a row; None when missing."""
    if name == "revenue":
        return row.revenue
    if name == "quantity":
        return row.quantity
    if name == "item_id":
        return row.item_id or None
    if name == "name":
        return row.event.name or None
    if name == "source":
        return row.event.source or None
    if name.startswith("properties."):
        return (row.event.properties or {}).get(name[11:])
    if name.startswith("item."):
        return items.get(row.item_id, {}).get(name[5:])
    return None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def condition_holds(c: Condition, value: object) -> bool:
    """field operator operand, with numbers compared as numbers and strings as strings; a type mismatch is false
    (NOT_EQUALS: true)."""
    if c.op == OP_CONTAINS:
        return isinstance(value, list) and c.value in value
    if c.op in (OP_EQ, OP_NE):
        a, b = _number(value), _number(c.value)
        same = (a == b) if a is not None and b is not None else (value == c.value and type(value) is type(c.value))
        return same if c.op == OP_EQ else not same
    a, b = _number(value), _number(c.value)
    if a is None or b is None:
        if isinstance(value, str) and isinstance(c.value, str):
            a, b = value, c.value
        else:
            return False
    return {OP_GT: a > b, OP_GE: a >= b, OP_LT: a < b, OP_LE: a <= b}[c.op]


def insight_counts(d: InsightDef, event: StoredEvent, now: datetime) -> bool:
    """Whether an event is counted: its type matches and it is newer than now minus the window (none: all time)."""
    if d.event_type and event.type != d.event_type:
        return False
    return not d.window or event.event_time > now - d.window


def _key(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# Sums are kept exact: every float is an integer multiple of 2**-1074, so a sum is an integer count of those units,
# and the value read is that exact sum correctly rounded. Any grouping or order of additions (per batch, per time
# bucket, or over all events at once) then gives the very same float.
_UNIT_BITS = 1074
_UNIT = 1 << _UNIT_BITS
BUCKETS_PER_WINDOW = 64
MIN_BUCKET_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _exact(x: float) -> int:
    num, den = x.as_integer_ratio()
    return num << (_UNIT_BITS + 1 - den.bit_length())


def micros(t: datetime) -> int:
    """Microseconds since the epoch (exact: timestamps have microsecond resolution)."""
    return (t - _EPOCH) // timedelta(microseconds=1)


@dataclass
class Partial:
    """The mergeable state of one insight over some rows: merging partials in any order gives the same value as
    aggregating all their rows at once."""

    n: int = 0  # rows counted (COUNT)
    s: int = 0  # exact sum in units of 2**-1074 (SUM)
    odd: float | None = None  # sum of non-finite values (inf, nan), which have no exact form
    m: float | None = None  # MAX
    last: tuple | None = None  # (event time us, message id, value) of the latest row (LAST)
    d: set = field(default_factory=set)  # distinct value keys (COUNT_DISTINCT)

    def add(self, aggregate: int, value: object, order: tuple[int, str]) -> None:
        if aggregate == AGGREGATE_COUNT:
            self.n += 1
        elif aggregate == AGGREGATE_COUNT_DISTINCT:
            if value is not None:
                self.d.add(_key(value))
        else:
            n = _number(value)
            if n is None:
                return
            if aggregate == AGGREGATE_SUM:
                if math.isfinite(n):
                    self.s += _exact(n)
                else:
                    self.odd = n if self.odd is None else self.odd + n
            elif aggregate == AGGREGATE_MAX:
                self.m = n if self.m is None else max(self.m, n)
            elif self.last is None or order >= self.last[:2]:  # LAST: then the larger message id, then the later line
                self.last = (order[0], order[1], n)

    def merge(self, other: Partial) -> None:
        self.n += other.n
        self.s += other.s
        if other.odd is not None:
            self.odd = other.odd if self.odd is None else self.odd + other.odd
        if other.m is not None:
            self.m = other.m if self.m is None else max(self.m, other.m)
        if other.last is not None and (self.last is None or other.last[:2] >= self.last[:2]):
            self.last = other.last
        self.d |= other.d

    def value(self, aggregate: int) -> float | None:
        """The insight value of the rows merged so far; None when MAX or LAST saw no number."""
        if aggregate == AGGREGATE_COUNT:
            return float(self.n)
        if aggregate == AGGREGATE_COUNT_DISTINCT:
            return float(len(self.d))
        if aggregate == AGGREGATE_SUM:
            exact = self.s / _UNIT  # int / int is correctly rounded
            return exact + self.odd if self.odd is not None else exact
        if aggregate == AGGREGATE_MAX:
            return self.m
        return self.last[2] if self.last is not None else None

    def row(self) -> tuple:
        """The stored form: n, s (hexadecimal, None for 0), odd, m, last time, last id, last value, distinct keys."""
        last = self.last or (None, None, None)
        return (self.n, format(self.s, "x") if self.s else None, self.odd, self.m, last[0], last[1], last[2],
                sorted(self.d) if self.d else None)

    @staticmethod
    def from_row(n: int, s: str | None, odd: float | None, m: float | None, last_us: int | None, last_id: str | None,
                 last_value: float | None, d: list[str] | None) -> Partial:
        return Partial(n, int(s, 16) if s else 0, odd, m,
                       (last_us, last_id, last_value) if last_us is not None else None, set(d) if d else set())


def merged(partials: list[Partial]) -> Partial:
    """A new partial merging the given ones (which are left as they are)."""
    out = Partial()
    for partial in partials:
        out.merge(partial)
    return out


def bucket_width_us(d: InsightDef) -> int:
    """Windowed insights keep partials per time bucket of 1/64 of the window; all-time ones keep one (width 0)."""
    if not d.window:
        return 0
    return max(MIN_BUCKET_US, micros(_EPOCH + d.window) // BUCKETS_PER_WINDOW)


def bucket_of(d: InsightDef, event_time: datetime) -> int:
    """The bucket (start, in us since the epoch) an event falls in; 0 for all-time insights."""
    width = bucket_width_us(d)
    return micros(event_time) // width * width if width else 0


def edge(d: InsightDef, now: datetime) -> tuple[datetime, datetime, int] | None:
    """For a windowed insight at time now: (cutoff, end of the bucket holding the cutoff, that bucket). Buckets after
    it count whole; events of the edge bucket count only after the cutoff, so they are read one by one."""
    if not d.window:
        return None
    cutoff = now - d.window
    bucket = bucket_of(d, cutoff)
    return cutoff, _EPOCH + timedelta(microseconds=bucket + bucket_width_us(d)), bucket


def insight_partials(d: InsightDef, events, items: dict[str, dict], now: datetime, group_by: str = "",
                     buckets: bool = False) -> dict[tuple, Partial]:
    """Partials of one insight over the events that count at time now, keyed by (owner, group) - owner being the
    individual, group the dimension value ('' when not grouped) or group_by's value - plus the bucket when asked."""
    out: dict[tuple, Partial] = {}
    by = group_by or d.dimension
    width = bucket_width_us(d) if buckets else 0
    for e in events:
        if not insight_counts(d, e, now):
            continue
        us = micros(e.event_time)
        order = (us, e.message_id)
        head = (e.individual_id, us // width * width if width else 0) if buckets else (e.individual_id,)
        for row in rows_of(d, e):
            if not all(condition_holds(c, field_value(c.field, row, items)) for c in d.conditions):
                continue
            if by:
                group = field_value(by, row, items)
                if group is None:
                    continue
                keys = [_key(g) for g in group] if isinstance(group, list) else [_key(group)]
            else:
                keys = [""]
            value = field_value(d.field, row, items) if d.field else None
            for k in keys:
                partial = out.get(head + (k,))
                if partial is None:
                    partial = out[head + (k,)] = Partial()
                partial.add(d.aggregate, value, order)
    return out


def values_of(d: InsightDef, partials: dict) -> dict:
    """key -> value of each partial; MAX and LAST without a number give no key (read as 0)."""
    out = {}
    for key, partial in partials.items():
        value = partial.value(d.aggregate)
        if value is not None:
            out[key] = value
    return out


def compute_insight(d: InsightDef, events: list[StoredEvent], items: dict[str, dict], now: datetime,
                    group_by: str = "") -> dict[str, float]:
    """Values of one insight over the events at time now, keyed by the dimension value ('' when not grouped), or by
    group_by ('item_id' for item insights). Nothing matching gives no key (read as 0)."""
    merged: dict[str, Partial] = {}
    for (_, group), partial in insight_partials(d, events, items, now, group_by).items():
        if group in merged:
            merged[group].merge(partial)
        else:
            merged[group] = partial
    return values_of(d, merged)


def insight_rows(defs: list[InsightDef], values: dict[str, dict[str, float]]) -> list[tuple[str, str, float]]:
    """(insight, dimension value, value) rows of one individual from its values per insight (every ungrouped
    insight has a row, 0 when nothing matched)."""
    rows = []
    for d in defs:
        own = values.get(d.name, {})
        if not d.dimension:
            rows.append((d.name, "", own.get("", 0.0)))
        else:
            rows += [(d.name, k, v) for k, v in sorted(own.items())]
    return rows


def insight_value(d: InsightDef, events: list[StoredEvent], now: datetime) -> float:
    """The (ungrouped) insight's value over one individual's events at time now."""
    return compute_insight(d, events, {}, now).get("", 0.0)


def insight_changes(values: dict[str, list[tuple[str, str, float]]], previous: dict[tuple[str, str, str], float]
                    ) -> tuple[list[tuple[str, str, str, float]], list[tuple[str, str, str]]]:
    """What to write so that the stored values (previous, of the same individuals) become values: the rows that are
    new or changed, and the keys that are gone."""
    put, wanted = [], set()
    for individual, rows in values.items():
        for name, dim, value in rows:
            key = (individual, name, dim)
            wanted.add(key)
            old = previous.get(key)
            if old is None or not (old == value or (old != old and value != value)):
                put.append((individual, name, dim, value))
    return put, [key for key in previous if key not in wanted]


def insight_view(defs: list[InsightDef], rows: list[tuple[str, str, float]]) -> dict[str, object]:
    """What rules see: every insight, 0.0 (or {} when grouped) without a value."""
    view: dict[str, object] = {d.name: ({} if d.dimension else 0.0) for d in defs}
    for name, dim, value in rows:
        if dim or isinstance(view.get(name), dict):
            view.setdefault(name, {})[dim] = value
        else:
            view[name] = value
    return view


# ---- segments -----------------------------------------------------------------------------------------------

_INSIGHT_REF = re.compile(r"\binsights\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*[\"']([^\"']*)[\"']\s*\])")
_SEGMENT_REF = re.compile(r"[\"']([^\"']*)[\"']\s+in\s+segments\b")


def rule_references(rule: str) -> tuple[list[str], list[str]]:
    """The insight names and segment names a rule reads (insights.x, insights['x'], 'x' in segments)."""
    insights = [a or b for a, b in _INSIGHT_REF.findall(rule)]
    return insights, _SEGMENT_REF.findall(rule)


def compile_rule(rule: str, insight_names: list[str], segment_names: list[str] | None = None,
                 grouped: frozenset[str] = frozenset()) -> cel.Program:
    """Compiles a segment rule and tries it on a sample profile; refuses it with field segment.rule.

    References to unknown insights or segments are refused. A rule that fails on the sample only because a map key
    is missing is accepted: real profiles have the key.
    """
    insights, segments = rule_references(rule)
    unknown = [n for n in insights if n not in insight_names]
    if unknown:
        raise InvalidArgument([("segment.rule", f"unknown insight {unknown[0]!r}")])
    if segment_names is not None:
        unknown = [n for n in segments if n not in segment_names]
        if unknown:
            raise InvalidArgument([("segment.rule", f"unknown segment {unknown[0]!r}")])
    try:
        program = cel.compile(rule)
    except Exception as error:  # noqa: BLE001 - the library raises ValueError and others with a useful message
        raise InvalidArgument([("segment.rule", str(error))]) from None
    unknown = sorted(set(program.variables()) - RULE_VARIABLES)
    if unknown:
        raise InvalidArgument([(
            "segment.rule",
            f"Undefined variable or function: {unknown[0]!r}; rules see attributes, insights, affinities, "
            "consents and segments",
        )])
    sample = {"attributes": {}, "insights": {n: ({} if n in grouped else 0.0) for n in insight_names},
              "segments": [], "affinities": {}, "consents": {}}
    try:
        result = program.execute(sample)
    except KeyError:
        result = None
    except Exception as error:  # noqa: BLE001
        raise InvalidArgument([("segment.rule", str(error))]) from None
    if result is not None and not isinstance(result, bool):
        raise InvalidArgument([("segment.rule", f"must yield a bool, got {type(result).__name__} {result!r}")])
    return program


def rule_variables(programs: list[tuple[str, cel.Program, bool]]) -> frozenset[str]:
    """The variables (attributes, insights, segments, affinities, consents) that at least one program reads."""
    return frozenset(v for _, program, _ in programs for v in program.variables())


def _is_member(program: cel.Program, context: cel.Context) -> bool:
    try:
        return program.execute(context) is True
    except Exception:  # noqa: BLE001 - a rule that errors on a profile (missing key, bad type) does not match
        return False


def evaluate_memberships(
    programs: list[tuple[str, cel.Program, bool]],
    attributes: dict,
    insights: dict[str, object],
    current: set[str],
    affinities: dict | None = None,
    consents: dict | None = None,
    variables: frozenset[str] | None = None,
    memo: dict | None = None,
) -> set[str]:
    """The segments an individual belongs to; rules that read `segments` see the memberships being computed.
    variables: rule_variables(programs), when the caller evaluates many individuals with the same programs; memo:
    a dict kept while evaluating them, so that individuals with the same insights and segments are evaluated once
    (only when rules read nothing else: rules are pure functions of what they read)."""
    reads_segments = any(uses for _, _, uses in programs)
    members = set(current) & {name for name, _, _ in programs}
    # Only the variables some rule reads are converted: building a Context costs about 2 us per variable.
    used = rule_variables(programs) if variables is None else variables
    key = None
    if memo is not None and used <= {"insights", "segments"}:
        key = (tuple((k, tuple(sorted(v.items())) if isinstance(v, dict) else v) for k, v in insights.items())
               if "insights" in used else (), frozenset(members) if reads_segments else None)
        known = memo.get(key)
        if known is not None:
            return set(known)
    context = cel.Context({name: value for name, value in (
        ("attributes", attributes), ("insights", insights), ("affinities", affinities or {}),
        ("consents", consents or {})) if name in used})
    for _ in range(MAX_SEGMENT_PASSES if reads_segments else 1):
        # One Context for all programs and passes: the library converts the variables once; only segments change.
        if reads_segments:
            context.add_variable("segments", sorted(members))
        result = {name for name, program, _ in programs if _is_member(program, context)}
        if result == members:
            break
        members = result
    if key is not None:
        memo[key] = frozenset(members)
    return members


class RuleCache:
    """Compiled segment programs per tenant, recompiled only when a rule's source changes."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, dict[str, tuple[str, cel.Program, bool]]] = {}

    def programs(self, tenant: str, segments: list[SegmentDef]) -> list[tuple[str, cel.Program, bool]]:
        """(name, program, reads segments) for each segment, in name order."""
        cache = self._by_tenant.setdefault(tenant, {})
        out = []
        for s in sorted(segments, key=lambda s: s.name):
            hit = cache.get(s.name)
            if hit is None or hit[0] != s.rule:
                program = cel.compile(s.rule)
                hit = (s.rule, program, "segments" in program.variables())
                cache[s.name] = hit
            out.append((s.name, hit[1], hit[2]))
        return out

    def put(self, tenant: str, name: str, rule: str, program: cel.Program) -> None:
        """Keeps a program compiled while saving its segment."""
        self._by_tenant.setdefault(tenant, {})[name] = (rule, program, "segments" in program.variables())
