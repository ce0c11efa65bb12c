"""Insight math: event and item rows, conditions, mergeable partials with exact sums, time buckets and values."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from services.profile_graph.domain import (
    AGGREGATE_COUNT,
    AGGREGATE_COUNT_DISTINCT,
    AGGREGATE_MAX,
    AGGREGATE_SUM,
    EVENT_PURCHASE,
    EVENT_RETURN,
    NUMERIC_FIELDS,
    OP_CONTAINS,
    OP_EQ,
    OP_GE,
    OP_GT,
    OP_LE,
    OP_LT,
    OP_NE,
    Condition,
    InsightDef,
    StoredEvent,
)


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
    left: Any = _number(value)
    right: Any = _number(c.value)
    if left is None or right is None:
        if isinstance(value, str) and isinstance(c.value, str):
            left, right = value, c.value
        else:
            return False
    return {OP_GT: left > right, OP_GE: left >= right, OP_LT: left < right, OP_LE: left <= right}[c.op]


def insight_counts(d: InsightDef, event: StoredEvent, now: datetime) -> bool:
    """Whether an event is counted: its type matches and it is newer than now minus the window (none: all time).
    A sum of the revenue or quantity of purchases also takes returns, whose (negative) values net them out."""
    if d.event_type and event.type != d.event_type and not (
            event.type == EVENT_RETURN and d.event_type == EVENT_PURCHASE and d.aggregate == AGGREGATE_SUM
            and d.field in NUMERIC_FIELDS):
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
    view: dict[str, Any] = {d.name: ({} if d.dimension else 0.0) for d in defs}
    for name, dim, value in rows:
        if dim or isinstance(view.get(name), dict):
            view.setdefault(name, {})[dim] = value
        else:
            view[name] = value
    return view
