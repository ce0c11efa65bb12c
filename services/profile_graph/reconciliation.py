"""Attributes, profile objects and consents drawn from events, and the reconciliation of values sent by sources."""

from __future__ import annotations

import json
from datetime import datetime

from services.profile_graph.domain import (
    POLICY_MOST_FREQUENT,
    POLICY_SOURCE_PRIORITY,
    AttributeRecon,
    AttributeUpdate,
    NewEvent,
    ReconRule,
    ValueStat,
)


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
        at = e.event_time
        assert at is not None, "appended events were validated"
        for key, value in e.attributes.items():
            if is_empty_value(value):
                continue
            k = (e.individual_id, key)
            known = winners.get(k)
            if known is None or at >= known.updated_at:
                winners[k] = AttributeUpdate(e.individual_id, key, value, at)
    return list(winners.values())


def attribute_stats(events: list[NewEvent]) -> dict[tuple[str, str, str, str], tuple[int, datetime]]:
    """(individual, key, source, JSON value) -> (times sent, last event time), over the events of a batch."""
    out: dict[tuple[str, str, str, str], tuple[int, datetime]] = {}
    for e in events:
        at = e.event_time
        assert at is not None, "appended events were validated"
        for key, value in e.attributes.items():
            k = (e.individual_id, key, e.source, json.dumps(value, sort_keys=True))
            count, last = out.get(k, (0, at))
            out[k] = (count + 1, max(last, at))
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
