"""An in-memory store with the same methods as services/profile_graph/postgres.py, for fast use-case tests."""

from __future__ import annotations

import copy
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from services.profile_graph import domain
from services.profile_graph.domain import InsightDef, Item, Member, Profile, SegmentDef, StoredEvent


@dataclass
class TenantData:
    events: dict[str, tuple[StoredEvent, bytes]] = field(default_factory=dict)  # message id -> (event, payload)
    individuals: dict[str, datetime] = field(default_factory=dict)
    attributes: dict[str, dict[str, tuple[object, datetime]]] = field(default_factory=dict)
    insights: dict[str, InsightDef] = field(default_factory=dict)
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    segments: dict[str, SegmentDef] = field(default_factory=dict)
    members: dict[str, dict[str, datetime]] = field(default_factory=dict)  # segment -> individual -> enter time
    history: list[tuple[str, str, str]] = field(default_factory=list)  # (segment, individual, change)
    items: dict[str, Item] = field(default_factory=dict)


class FakeUnit:
    def __init__(self, store: FakeStore, data: TenantData):
        self.store = store
        self.data = data

    async def lock_definitions(self, exclusive: bool) -> None:
        self.store.locks.append(exclusive)

    async def insert_events(self, events):
        new = set()
        for e in events:
            if e.message_id not in self.data.events:
                stored = StoredEvent(e.individual_id, e.type, e.event_time, e.revenue, e.quantity, e.properties)
                self.data.events[e.message_id] = (stored, e.payload)
                new.add(e.message_id)
        return new

    async def touch_individuals(self, ids):
        for i in ids:
            self.data.individuals[i] = self.store.now

    async def individual_exists(self, individual_id):
        return individual_id in self.data.individuals

    async def individual_ids(self, after, limit):
        return sorted(i for i in self.data.individuals if i > after)[:limit]

    async def merge_attributes(self, updates):
        for u in updates:
            own = self.data.attributes.setdefault(u.individual_id, {})
            known = own.get(u.key)
            if known is None or known[1] <= u.updated_at:
                own[u.key] = (u.value, u.updated_at)

    async def definitions(self):
        return (sorted(self.data.insights.values(), key=lambda d: d.name),
                sorted(self.data.segments.values(), key=lambda s: s.name))

    async def compute_insights(self, ids):
        out = {}
        for i in ids:
            events = [e for e, _ in self.data.events.values() if e.individual_id == i]
            out[i] = {d.name: domain.insight_value(d, events, self.store.now) for d in self.data.insights.values()}
            self.data.values[i] = dict(out[i])
        return out

    async def profile_states(self, ids):
        states = {}
        for i in ids:
            attributes = {k: v for k, (v, _) in self.data.attributes.get(i, {}).items()}
            segments = {s for s, members in self.data.members.items() if i in members}
            states[i] = (attributes, segments)
        return states

    async def change_memberships(self, entered, exited):
        for i, s in entered:
            if i not in self.data.members.setdefault(s, {}):
                self.data.members[s][i] = self.store.now
                self.data.history.append((s, i, "entered"))
        for i, s in exited:
            if self.data.members.get(s, {}).pop(i, None) is not None:
                self.data.history.append((s, i, "exited"))

    async def move_individuals(self, from_ids, to_id):
        moved = 0
        for message_id, (e, payload) in list(self.data.events.items()):
            if e.individual_id in from_ids:
                self.data.events[message_id] = (replace(e, individual_id=to_id), payload)
                moved += 1
        survivor = self.data.attributes.setdefault(to_id, {})
        for f in from_ids:
            for key, (value, at) in self.data.attributes.pop(f, {}).items():
                if key not in survivor or survivor[key][1] < at:
                    survivor[key] = (value, at)
            self.data.values.pop(f, None)
            self.data.individuals.pop(f, None)
        left = [(i, s) for s, members in self.data.members.items() for i in members if i in from_ids]
        return moved, left

    async def save_insight(self, insight):
        self.data.insights[insight.name] = insight

    async def save_segment(self, segment):
        self.data.segments[segment.name] = SegmentDef(segment.name, segment.description, segment.rule)

    async def member_count(self, segment):
        return len(self.data.members.get(segment, {}))


class FakeStore:
    """Tenants' data in dicts; a failed unit rolls its tenant back, like a transaction."""

    def __init__(self, now: datetime | None = None):
        self.tenants: dict[str, TenantData] = {}
        self.now = now or datetime.now(timezone.utc)
        self.locks: list[bool] = []

    def data(self, tenant: str) -> TenantData:
        return self.tenants.setdefault(tenant, TenantData())

    @asynccontextmanager
    async def unit(self, tenant: str):
        saved = copy.deepcopy(self.data(tenant))
        try:
            yield FakeUnit(self, self.data(tenant))
        except BaseException:
            self.tenants[tenant] = saved
            raise

    async def get_profile(self, tenant, individual_id, parts, event_limit):
        d = self.data(tenant)
        events = sorted(((e, p) for e, p in d.events.values() if e.individual_id == individual_id),
                        key=lambda ep: ep[0].event_time, reverse=True)
        return Profile(
            individual_id=individual_id,
            attributes={k: v for k, (v, _) in d.attributes.get(individual_id, {}).items()} if "attributes" in parts else {},
            event_payloads=[p for _, p in events[:event_limit]] if "events" in parts else [],
            insights=dict(d.values.get(individual_id, {})) if "insights" in parts else {},
            segments=sorted(s for s, m in d.members.items() if individual_id in m) if "segments" in parts else [],
            update_time=d.individuals.get(individual_id),
        )

    async def list_insights(self, tenant, after, limit):
        return [d for n, d in sorted(self.data(tenant).insights.items()) if n > after][:limit]

    async def list_segments(self, tenant, after, limit):
        d = self.data(tenant)
        return [SegmentDef(s.name, s.description, s.rule, len(d.members.get(n, {})))
                for n, s in sorted(d.segments.items()) if n > after][:limit]

    async def segment_exists(self, tenant, name):
        return name in self.data(tenant).segments

    async def list_members(self, tenant, segment, after, limit):
        members = self.data(tenant).members.get(segment, {})
        return [Member(i, t) for i, t in sorted(members.items()) if i > after][:limit]

    async def tenants_with_windowed_insights(self):
        return sorted(t for t, d in self.tenants.items() if any(i.window for i in d.insights.values()))

    async def upsert_items(self, tenant, items):
        for item in items:
            self.data(tenant).items[item.item_id] = item

    async def get_items(self, tenant, ids):
        items = self.data(tenant).items
        return [items[i] for i in ids if i in items]
