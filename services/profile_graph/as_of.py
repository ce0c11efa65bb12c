"""Use case: profiles as they were at given times, for offline replay of the decision log. No grpc, no SQL.

What is exact and what is approximated (no history is kept of the rest):
- events: those with an event time at or before the time;
- insights: recomputed from those events at that time, with the insight definitions of now (`insights.py`, the
  same code as the full recompute), item attributes as they are now;
- segments: the membership history (entries and exits recorded when they happened) replayed up to that time;
- attributes, consents, affinities and profile objects: as they are now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from services.profile_graph import domain, insights
from services.profile_graph.domain import SUBJECT_ITEM, Config, Profile, StoredEvent
from shared.errors import Violations

MAX_AS_OF_ENTRIES = 200
AS_OF_PARTS = {"attributes", "profile_objects", "consents", "affinities"}  # read as they are now


class AsOfStore(Protocol):
    """The reads of an as-of profile (postgres_as_of.py, and PostgresStore for the parts read as now)."""

    async def read_config(self, tenant: str) -> Config: ...
    async def get_profiles(self, tenant: str, individual_ids: Sequence[str], parts: set[str], event_limit: int,
                           affinity_limit: int, now: datetime) -> list[Profile]: ...


class HistoryStore(Protocol):
    """Events and membership history up to a time."""

    async def events_until(self, tenant: str, ids: Sequence[str], until: datetime, lines: bool,
                           properties: bool) -> list[StoredEvent]: ...
    async def history_at(self, tenant: str, entries: Sequence[tuple[str, datetime]], event_limit: int
                         ) -> list[tuple[list[bytes], list[str]]]: ...
    async def item_attributes(self, tenant: str, ids: Sequence[str]) -> dict[str, dict]: ...


class ProfilesAsOf:
    """Profiles of (individual, time) pairs as they were at those times."""

    def __init__(self, store: AsOfStore, history: HistoryStore):
        self.store = store
        self.history = history

    async def read(self, tenant: str, entries: Sequence[tuple[str, datetime | None]], limit: int) -> list[Profile]:
        v = Violations()
        if not entries:
            v.add("entries", "must name at least one individual and time")
        elif len(entries) > MAX_AS_OF_ENTRIES:
            v.add("entries", f"at most {MAX_AS_OF_ENTRIES} entries per call, got {len(entries)}")
        for i, (individual_id, at) in enumerate(entries[:MAX_AS_OF_ENTRIES]):
            if not individual_id:
                v.add(f"entries[{i}].unified_individual_id", "must not be empty")
            if at is None:
                v.add(f"entries[{i}].as_of", "is required")
        v.raise_if_any()
        event_limit = domain.event_limit(limit)
        pairs: list[tuple[str, datetime]] = [(i, t) for i, t in entries if t is not None]
        ids = list(dict.fromkeys(i for i, _ in pairs))
        config = await self.store.read_config(tenant)
        defs = [d for d in config.insights if d.subject != SUBJECT_ITEM]
        now_parts = await self.store.get_profiles(tenant, ids, AS_OF_PARTS, event_limit,
                                                  domain.DEFAULT_AFFINITY_LIMIT, max(t for _, t in pairs))
        current = {p.individual_id: p for p in now_parts}
        rows: dict[str, list[StoredEvent]] = {}
        if defs:
            for e in await self.history.events_until(tenant, ids, max(t for _, t in pairs),
                                                     any(d.uses_items for d in defs),
                                                     any(_reads_properties(d) for d in defs)):
                rows.setdefault(e.individual_id, []).append(e)
        items: dict[str, dict] = {}
        if any(d.reads_item_attributes for d in defs):
            items = await self.history.item_attributes(tenant, sorted(
                {i for events in rows.values() for e in events for i in [e.item_id] + [li[0] for li in e.lines] if i}))
        history = await self.history.history_at(tenant, pairs, event_limit)
        out = []
        for n, ((individual_id, at), (payloads, segments)) in enumerate(zip(pairs, history)):
            if n and n % 50 == 0:
                await asyncio.sleep(0)  # recomputing insights is CPU work: let other calls in between
            events = [e for e in rows.get(individual_id, ()) if e.event_time <= at]
            values = {d.name: insights.compute_insight(d, events, items, at) for d in defs}
            profile = replace(current[individual_id], event_payloads=payloads, segments=segments, insights={},
                              grouped_insights={}, update_time=at)
            for name, dim, value in insights.insight_rows(defs, values):
                if dim:
                    profile.grouped_insights.setdefault(name, {})[dim] = value
                else:
                    profile.insights[name] = value
            out.append(profile)
        return out


def _reads_properties(d) -> bool:
    return any(n.startswith("properties.") for n in [d.field, d.dimension] + [c.field for c in d.conditions])
