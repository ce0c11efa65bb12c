"""An in-memory store with the same methods as services/profile_graph/postgres.py, for fast use-case tests."""

from __future__ import annotations

import copy
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from services.profile_graph import domain
from services.profile_graph.affinities import decay
from services.profile_graph.domain import (
    Affinity,
    Config,
    ConsentState,
    Item,
    Member,
    MembershipChange,
    NewEvent,
    Profile,
    ProfileObjectRow,
    SegmentDef,
    StoredEvent,
    ValueStat,
)
from services.profile_graph.insights import Partial, condition_holds


@dataclass
class TenantData:
    events: dict[str, NewEvent] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    individuals: dict[str, datetime] = field(default_factory=dict)
    stats: dict[tuple, tuple[int, datetime]] = field(default_factory=dict)  # (ind, key, source, value) -> (n, last)
    attributes: dict[str, dict[str, tuple[object, datetime]]] = field(default_factory=dict)
    config: Config = field(default_factory=Config)
    values: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)
    partials: dict[tuple[str, str, str, int], tuple] = field(default_factory=dict)  # -> Partial.row()
    members: dict[str, dict[str, datetime]] = field(default_factory=dict)  # segment -> individual -> enter time
    history: list[tuple[str, str, str]] = field(default_factory=list)  # (segment, individual, change)
    history_times: list[datetime] = field(default_factory=list)
    objects: dict[tuple[str, str], tuple] = field(default_factory=dict)  # (type, id) -> (ind, attrs, time, source)
    consents: dict[tuple[str, str], tuple] = field(default_factory=dict)  # (ind, purpose) -> (status, t, src, api)
    affinities: dict[tuple[str, str, str], tuple[float, datetime]] = field(default_factory=dict)
    items: dict[str, Item] = field(default_factory=dict)
    item_types: dict[str, str] = field(default_factory=dict)
    item_values: dict[str, dict[str, float]] = field(default_factory=dict)


def _stored(e: NewEvent) -> StoredEvent:
    return StoredEvent(e.individual_id, e.type, e.event_time, e.revenue, e.quantity, e.properties, e.message_id,
                       e.name, e.source, e.item_id, e.lines)


class FakeUnit:
    def __init__(self, store: FakeStore, data: TenantData):
        self.store = store
        self.data = data

    async def lock_definitions(self, exclusive: bool, large: bool = True) -> None:
        self.store.locks.append(exclusive)

    async def lock_individuals(self, ids):
        merged = self.data.__dict__.setdefault("merged_into", {})
        return {i: merged[i] for i in ids if i in merged}

    async def record_merge(self, from_ids, to_id):
        merged = self.data.__dict__.setdefault("merged_into", {})
        for old, survivor in list(merged.items()):
            if survivor in from_ids:
                merged[old] = to_id
        merged.update({i: to_id for i in from_ids})
        merged.pop(to_id, None)

    async def record_split(self, restored_id):
        self.data.__dict__.setdefault("merged_into", {}).pop(restored_id, None)

    async def insert_events(self, events):
        new = set()
        for e in events:
            if e.message_id not in self.data.events:
                self.data.events[e.message_id] = e
                self.data.seq[e.message_id] = len(self.data.seq) + 1
                new.add(e.message_id)
        return new

    async def touch_individuals(self, ids, now):
        for i in ids:
            self.data.individuals[i] = now

    async def individual_exists(self, individual_id):
        return individual_id in self.data.individuals

    async def individual_ids(self, after, limit):
        return sorted(i for i in self.data.individuals if i > after)[:limit]

    async def config(self):
        c = self.data.config
        return Config(sorted(c.insights, key=lambda d: d.name), sorted(c.segments, key=lambda s: s.name),
                      c.affinity, c.recon)

    async def add_attribute_stats(self, stats):
        for k, (n, last) in stats.items():
            old = self.data.stats.get(k)
            self.data.stats[k] = (n + old[0], max(last, old[1])) if old else (n, last)

    async def attribute_stats(self, ids):
        out = {}
        for (i, key, source, value), (n, last) in self.data.stats.items():
            if i in ids:
                out.setdefault((i, key), []).append(ValueStat(source, value, n, last))
        return out

    async def write_attributes(self, ids, values):
        for (i, key), (value, at) in values.items():
            own = self.data.attributes.setdefault(i, {})
            if value is None:
                own.pop(key, None)
            else:
                own[key] = (json.loads(value), at)

    async def upsert_objects(self, rows, keep):
        for ind, kind, object_id, attrs, at, source in rows:
            known = self.data.objects.get((kind, object_id))
            if known is None or known[2] <= at:
                self.data.objects[(kind, object_id)] = (ind, attrs, at, source)
        for ind in {r[0] for r in rows}:
            for kind in {k for (k, _), v in self.data.objects.items() if v[0] == ind}:
                own = sorted(((k, v) for k, v in self.data.objects.items() if k[0] == kind and v[0] == ind),
                             key=lambda kv: (kv[1][2], kv[0][1]), reverse=True)
                for k, _ in own[keep:]:
                    del self.data.objects[k]

    async def upsert_consents(self, rows, from_api):
        for ind, purpose, status, at, source in rows:
            known = self.data.consents.get((ind, purpose))
            if known is None or known[1] <= at:
                self.data.consents[(ind, purpose)] = (status, at, source, from_api)

    async def item_attributes(self, ids, keys=None):
        found = {i: self.data.items[i].attributes for i in ids if i in self.data.items}
        if keys is None:
            return found
        found = {i: {k: v for k, v in a.items() if k in keys} for i, a in found.items()}
        return {i: a for i, a in found.items() if a}

    async def add_affinities(self, increments, half_life):
        for k, (score, at) in increments.items():
            old = self.data.affinities.get(k)
            if old is None:
                self.data.affinities[k] = (score, at)
            elif at >= old[1]:
                self.data.affinities[k] = (decay(old[0], (at - old[1]).total_seconds(), half_life) + score, at)
            else:
                self.data.affinities[k] = (old[0] + decay(score, (old[1] - at).total_seconds(), half_life),
                                           old[1])

    async def event_rows(self, ids, since, lines, properties):
        return [_stored(e) for e in self.data.events.values()
                if e.individual_id in ids and (since is None or e.event_time > since)]

    async def edge_events(self, ids, ranges, lines, properties):
        return [_stored(e) for e in self.data.events.values()
                if e.individual_id in ids and any(a < e.event_time < b for a, b in ranges)]

    async def read_partials(self, ids):
        return ({k: Partial.from_row(*v) for k, v in self.data.partials.items() if k[0] in ids},
                {(i, n, d): v for i in ids for n, d, v in self.data.values.get(i, [])})

    async def change_insight_values(self, put, gone):
        for i, n, d in gone:
            self.data.values[i] = [r for r in self.data.values.get(i, []) if r[:2] != (n, d)]
        for i, n, d, v in put:
            self.data.values[i] = [r for r in self.data.values.get(i, []) if r[:2] != (n, d)] + [(n, d, v)]

    async def write_partials(self, ids, partials, keep_from):
        for k in list(self.data.partials):
            if k[0] in ids and (keep_from is None or (k[1] in keep_from and k[3] < keep_from[k[1]])):
                del self.data.partials[k]
        for k, partial in partials.items():
            self.data.partials[k] = partial.row()

    async def store_insight_values(self, ids, rows):
        for i in ids:
            self.data.values[i] = list(rows.get(i, []))

    async def profile_states(self, ids, now, parts):
        states = {}
        half_life = self.data.config.affinity.half_life
        for i in ids:
            attributes = {k: v for k, (v, _) in self.data.attributes.get(i, {}).items()}
            segments = {s for s, members in self.data.members.items() if i in members}
            affinities: dict = {}
            for (ind, dim, value), (score, at) in self.data.affinities.items():
                if ind == i:
                    affinities.setdefault(dim, {})[value] = decay(score, (now - at).total_seconds(), half_life)
            consents = {p: domain.CONSENT_NAMES[s] for (ind, p), (s, *_) in self.data.consents.items() if ind == i}
            states[i] = (attributes, segments, affinities, consents)
        return states

    async def change_memberships(self, entered, exited, now):
        for i, s in entered:
            if i not in self.data.members.setdefault(s, {}):
                self.data.members[s][i] = now
                self.data.history.append((s, i, "entered"))
                self.data.history_times.append(now)
        for i, s in exited:
            if self.data.members.get(s, {}).pop(i, None) is not None:
                self.data.history.append((s, i, "exited"))
                self.data.history_times.append(now)

    async def move_events(self, from_ids, to_id, identity_keys):
        moved = 0
        for message_id, e in list(self.data.events.items()):
            if e.individual_id in from_ids and (identity_keys is None or set(identity_keys) & set(e.identity_keys)):
                self.data.events[message_id] = replace(e, individual_id=to_id)
                moved += 1
        return moved

    async def move_api_consents(self, from_ids, to_id):
        for (ind, purpose), (status, at, source, api) in list(self.data.consents.items()):
            if ind in from_ids and api:
                known = self.data.consents.get((to_id, purpose))
                if known is None or known[1] <= at:
                    self.data.consents[(to_id, purpose)] = (status, at, source, True)

    def _forget(self, ids, keep_api: bool):
        self.data.stats = {k: v for k, v in self.data.stats.items() if k[0] not in ids}
        self.data.objects = {k: v for k, v in self.data.objects.items() if v[0] not in ids}
        self.data.affinities = {k: v for k, v in self.data.affinities.items() if k[0] not in ids}
        self.data.consents = {k: v for k, v in self.data.consents.items() if k[0] not in ids or (keep_api and v[3])}
        for i in ids:
            self.data.attributes.pop(i, None)
            self.data.values.pop(i, None)
        self.data.partials = {k: v for k, v in self.data.partials.items() if k[0] not in ids}

    async def drop_individuals(self, ids):
        self._forget(ids, keep_api=False)
        for i in ids:
            self.data.individuals.pop(i, None)
        return [(i, s) for s, members in self.data.members.items() for i in members if i in ids]

    async def clear_derived(self, ids):
        self._forget(ids, keep_api=True)

    async def replay_events(self, ids):
        return sorted((e for e in self.data.events.values() if e.individual_id in ids),
                      key=lambda e: (e.event_time, e.message_id))

    async def save_insight(self, insight):
        self.data.config.insights = [d for d in self.data.config.insights if d.name != insight.name] + [insight]
        self.data.partials = {k: v for k, v in self.data.partials.items() if k[1] != insight.name}

    async def save_segment(self, segment):
        self.data.config.segments = [s for s in self.data.config.segments if s.name != segment.name] + [
            SegmentDef(segment.name, segment.description, segment.rule)]

    async def save_affinity_config(self, config):
        self.data.config.affinity = config

    async def save_recon_rule(self, rule):
        self.data.config.recon = rule

    async def member_count(self, segment):
        return len(self.data.members.get(segment, {}))

    async def item_event_rows(self, item_ids, since):
        return [_stored(e) for e in self.data.events.values()
                if set(e.item_ids) & set(item_ids) and (since is None or e.event_time > since)]

    async def store_item_insights(self, item_ids, values):
        for i, named in values.items():
            self.data.item_values.setdefault(i, {}).update(named)

    async def item_ids(self, after, limit):
        return sorted(i for i in self.data.items if i > after)[:limit]


class FakeStore:
    """Tenants' data in dicts; a failed unit rolls its tenant back, like a transaction."""

    def __init__(self, now: datetime | None = None):
        self.tenants: dict[str, TenantData] = {}
        self.now = now or datetime.now(timezone.utc)
        self.locks: list[bool] = []

    def data(self, tenant: str) -> TenantData:
        return self.tenants.setdefault(tenant, TenantData())

    def insights(self, tenant: str, individual: str) -> dict[str, float]:
        """The ungrouped insight values stored for an individual."""
        return {n: v for n, dim, v in self.data(tenant).values.get(individual, []) if not dim}

    @asynccontextmanager
    async def unit(self, tenant: str):
        saved = copy.deepcopy(self.data(tenant))
        try:
            yield FakeUnit(self, self.data(tenant))
        except BaseException:
            self.tenants[tenant] = saved
            raise

    async def get_profile(self, tenant, individual_id, parts, event_limit, affinity_limit, now):
        d = self.data(tenant)
        events = sorted((e for e in d.events.values() if e.individual_id == individual_id),
                        key=lambda e: (e.event_time, e.message_id), reverse=True)
        p = Profile(individual_id=individual_id, update_time=d.individuals.get(individual_id))
        if "attributes" in parts:
            p.attributes = {k: v for k, (v, _) in d.attributes.get(individual_id, {}).items()}
        if "events" in parts:
            p.event_payloads = [e.payload for e in events[:event_limit]]
        if "insights" in parts:
            for name, dim, value in d.values.get(individual_id, []):
                if dim:
                    p.grouped_insights.setdefault(name, {})[dim] = value
                else:
                    p.insights[name] = value
        if "segments" in parts:
            p.segments = sorted(s for s, m in d.members.items() if individual_id in m)
        if "profile_objects" in parts:
            rows = [ProfileObjectRow(k, o, a, t, s) for (k, o), (i, a, t, s) in d.objects.items() if i == individual_id]
            p.objects = sorted(rows, key=lambda r: (r.type, -r.updated_at.timestamp(), r.object_id))
        if "consents" in parts:
            p.consents = await self.get_consents(tenant, individual_id)
        if "affinities" in parts:
            p.affinities = (await self.get_affinities(tenant, individual_id, "", affinity_limit, now))
        return p

    async def get_profiles(self, tenant, individual_ids, parts, event_limit, affinity_limit, now):
        self.profile_reads = getattr(self, "profile_reads", 0) + 1
        return [await self.get_profile(tenant, i, parts, event_limit, affinity_limit, now) for i in individual_ids]

    async def get_affinities(self, tenant, individual_id, dimension, limit, now):
        d = self.data(tenant)
        half_life = d.config.affinity.half_life
        rows = [Affinity(dim, v, decay(s, (now - at).total_seconds(), half_life))
                for (i, dim, v), (s, at) in d.affinities.items()
                if i == individual_id and (not dimension or dim == dimension)]
        return sorted(rows, key=lambda a: (-a.score, a.dimension, a.value))[:limit]

    async def get_consents(self, tenant, individual_id):
        d = self.data(tenant)
        return sorted((ConsentState(p, s, t, src) for (i, p), (s, t, src, _) in d.consents.items()
                       if i == individual_id), key=lambda c: c.purpose)

    async def read_config(self, tenant):
        return self.data(tenant).config

    async def list_insights(self, tenant, after, limit):
        return sorted((d for d in self.data(tenant).config.insights if d.name > after), key=lambda d: d.name)[:limit]

    async def list_segments(self, tenant, after, limit):
        d = self.data(tenant)
        return [SegmentDef(s.name, s.description, s.rule, len(d.members.get(s.name, {})))
                for s in sorted(d.config.segments, key=lambda s: s.name) if s.name > after][:limit]

    async def segment_exists(self, tenant, name):
        return any(s.name == name for s in self.data(tenant).config.segments)

    async def list_members(self, tenant, segment, after, limit):
        members = self.data(tenant).members.get(segment, {})
        return [Member(i, t) for i, t in sorted(members.items()) if i > after][:limit]

    async def list_changes(self, tenant, segment, after, limit):
        d = self.data(tenant)
        rows = [MembershipChange(n + 1, s, i, c == "entered", d.history_times[n])
                for n, (s, i, c) in enumerate(d.history) if (0, n + 1) > after and (not segment or s == segment)]
        return rows[:limit]

    async def tenants_pending_partials(self):
        return sorted(getattr(self, "pending_partials", set()))

    async def clear_pending_partials(self, tenant):
        self.pending_partials.discard(tenant)

    async def tenants_with_definitions(self):
        return sorted(t for t, d in self.tenants.items() if d.config.insights or d.config.segments)

    async def item_types(self, tenant):
        return dict(self.data(tenant).item_types)

    async def upsert_items(self, tenant, items, new_types):
        d = self.data(tenant)
        for k, v in new_types.items():
            d.item_types.setdefault(k, v)
        for item in items:
            d.items[item.item_id] = item

    async def get_items(self, tenant, ids):
        d = self.data(tenant)
        return [replace(d.items[i], insights=dict(d.item_values.get(i, {}))) for i in ids if i in d.items]

    async def list_items(self, tenant, filters, types, after, limit):
        d = self.data(tenant)
        out = []
        for item_id in sorted(d.items):
            item = d.items[item_id]
            if item_id > after and all(condition_holds(c, item.attributes.get(c.field)) for c in filters):
                out.append(replace(item, insights=dict(d.item_values.get(item_id, {}))))
        return out[:limit]
