"""The profile graph's values and pure rules: validation, attribute merge, insight math, segment evaluation."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import cel

from shared.errors import InvalidArgument, Violations

MAX_EVENTS = 1_000
MAX_ITEMS = 1_000
MAX_RULE_CHARS = 4_096
MAX_DESCRIPTION_CHARS = 1_024
MAX_WINDOW = timedelta(days=36_525)
DEFAULT_EVENT_LIMIT = 20
MAX_EVENT_LIMIT = 1_000
PROFILE_PARTS = ("attributes", "events", "insights", "segments")

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
PROPERTY_FIELD_RE = re.compile(r"^properties\.([A-Za-z_][A-Za-z0-9_]{0,63})$")
KNOWN_EVENT_TYPES = frozenset(range(1, 8))  # common.v1.EventType values other than UNSPECIFIED
AGGREGATE_COUNT = 1
AGGREGATE_SUM = 2
RULE_VARIABLES = frozenset({"attributes", "insights", "segments"})
# Segment rules may test membership of other segments; evaluation repeats until memberships settle.
MAX_SEGMENT_PASSES = 5


@dataclass(frozen=True)
class NewEvent:
    """One event to append, already resolved to its unified individual."""

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


@dataclass(frozen=True)
class AttributeUpdate:
    """The winning value of one attribute key of one individual within a batch."""

    individual_id: str
    key: str
    value: object
    updated_at: datetime


@dataclass(frozen=True)
class InsightDef:
    """A calculated insight definition."""

    name: str
    description: str
    aggregate: int
    field: str
    event_type: int
    window: timedelta


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


@dataclass
class Profile:
    """The profile data graph of one individual; parts not asked for stay empty."""

    individual_id: str
    attributes: dict = field(default_factory=dict)
    event_payloads: list[bytes] = field(default_factory=list)
    insights: dict[str, float] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)
    update_time: datetime | None = None


@dataclass(frozen=True)
class Item:
    """A catalog item."""

    item_id: str
    name: str
    attributes: dict


@dataclass(frozen=True)
class Member:
    """A segment member and when it entered."""

    individual_id: str
    enter_time: datetime


@dataclass(frozen=True)
class StoredEvent:
    """The columns of a stored event that insights aggregate."""

    individual_id: str
    type: int
    event_time: datetime
    revenue: float
    quantity: float
    properties: dict | None


# ---- validation -------------------------------------------------------------------------------------------


def validate_events(events: list[NewEvent]) -> None:
    """Refuses a batch with more than 1,000 events or an event lacking an id, message id, time or type."""
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
    v.raise_if_any()


def validate_insight(d: InsightDef | None) -> None:
    """Refuses an insight definition with a bad name, aggregate, field, event type, window or description."""
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
    elif d.aggregate == AGGREGATE_SUM:
        if d.field not in ("revenue", "quantity") and not PROPERTY_FIELD_RE.match(d.field):
            v.add("insight.field", "must be revenue, quantity or properties.<name> for AGGREGATE_SUM")
    else:
        v.add("insight.aggregate", "must be AGGREGATE_COUNT or AGGREGATE_SUM")
    if d.event_type != 0 and d.event_type not in KNOWN_EVENT_TYPES:
        v.add("insight.event_type", f"unknown event type {d.event_type}")
    if d.window < timedelta(0):
        v.add("insight.window", "must not be negative")
    elif d.window > MAX_WINDOW:
        v.add("insight.window", "at most 100 years")
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


def event_limit(requested: int) -> int:
    """0 means the default of 20; more than 1,000 is capped; negative is refused."""
    if requested < 0:
        raise InvalidArgument([("event_limit", "must not be negative")])
    if requested == 0:
        return DEFAULT_EVENT_LIMIT
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


# ---- attributes -------------------------------------------------------------------------------------------


def is_empty_value(value: object) -> bool:
    """Null and blank-string attribute values are ignored: they never overwrite a known value."""
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


# ---- insights ---------------------------------------------------------------------------------------------


def insight_counts(d: InsightDef, event: StoredEvent, now: datetime) -> bool:
    """Whether an event is counted: its type matches and it is newer than now minus the window (zero: all time)."""
    if d.event_type and event.type != d.event_type:
        return False
    return not d.window or event.event_time > now - d.window


def insight_contribution(d: InsightDef, event: StoredEvent) -> float:
    """What one counted event adds: 1 for COUNT, else the field's value (non-numeric properties add 0)."""
    if d.aggregate == AGGREGATE_COUNT:
        return 1.0
    if d.field == "revenue":
        return event.revenue
    if d.field == "quantity":
        return event.quantity
    value = (event.properties or {}).get(d.field.removeprefix("properties."))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def insight_value(d: InsightDef, events: list[StoredEvent], now: datetime) -> float:
    """The insight's value over one individual's events at time now."""
    return float(sum(insight_contribution(d, e) for e in events if insight_counts(d, e, now)))


# ---- segments ---------------------------------------------------------------------------------------------


def compile_rule(rule: str, insight_names: list[str]) -> cel.Program:
    """Compiles a segment rule and tries it on a sample profile; refuses it with field segment.rule.

    A rule that fails on the sample only because a map key is missing is accepted: real profiles have the key.
    """
    try:
        program = cel.compile(rule)
    except Exception as error:  # noqa: BLE001 - the library raises ValueError and others with a useful message
        raise InvalidArgument([("segment.rule", str(error))]) from None
    sample = {"attributes": {}, "insights": {n: 0.0 for n in insight_names}, "segments": []}
    try:
        result = program.execute(sample)
    except KeyError:
        result = None
    except Exception as error:  # noqa: BLE001
        raise InvalidArgument([("segment.rule", str(error))]) from None
    if result is not None and not isinstance(result, bool):
        raise InvalidArgument([("segment.rule", f"must yield a bool, got {type(result).__name__} {result!r}")])
    unknown = sorted(set(program.variables()) - RULE_VARIABLES)
    if unknown:
        raise InvalidArgument([(
            "segment.rule",
            f"Undefined variable or function: {unknown[0]!r}; rules see attributes, insights and segments",
        )])
    return program


def _is_member(program: cel.Program, context: cel.Context) -> bool:
    try:
        return program.execute(context) is True
    except Exception:  # noqa: BLE001 - a rule that errors on a profile (missing key, bad type) does not match
        return False


def evaluate_memberships(
    programs: list[tuple[str, cel.Program, bool]],
    attributes: dict,
    insights: dict[str, float],
    current: set[str],
) -> set[str]:
    """The segments an individual belongs to; rules that read `segments` see the memberships being computed."""
    reads_segments = any(uses for _, _, uses in programs)
    members = set(current) & {name for name, _, _ in programs}
    for _ in range(MAX_SEGMENT_PASSES if reads_segments else 1):
        # One Context per pass: the library converts the variables once for all programs.
        context = cel.Context({"attributes": attributes, "insights": insights, "segments": sorted(members)})
        result = {name for name, program, _ in programs if _is_member(program, context)}
        if result == members:
            break
        members = result
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
