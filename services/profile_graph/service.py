"""Use cases of the profile graph: append, read, reassign, items, insights, segments, affinities, consents,
reconciliation and live streams. No gRPC, no SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Protocol

from services.profile_graph import domain, insights, reconciliation, segments
from services.profile_graph.affinities import affinity_increments
from services.profile_graph.domain import (
    Affinity, AffinityConfig, AppendOutcome, Condition, Contention, Config, ConsentState, InsightDef, Item, Member,
    MembershipChange, NewEvent, Profile, ReconRule, SegmentDef, StoredEvent, ValueStat,
)
from services.profile_graph.items import check_item_attributes, check_item_filters
from services.profile_graph.segments import RuleCache
from shared import paging
from shared.context import Slices, check_deadline
from shared.errors import InvalidArgument, NotFound, Violations, quote
from shared.log import get_logger

log = get_logger("profile_graph.service")

# Individuals are recomputed in chunks of this size when a definition changes for everyone.
RECOMPUTE_CHUNK = 1_000
ITEM_CHUNK = 500
MAX_REPLAY = 1_000
# Appends of at most this many events keep PostgreSQL's generic plans (see PostgresUnit.lock_definitions).
SMALL_BATCH = 50
# An append that lost a deadlock to a concurrent writer (another pipeline worker) is run again this many times.
CONTENTION_ATTEMPTS = 3


class Unit(Protocol):
    """One transaction on one tenant's profile data (postgres_unit.py, or the in-memory fake of the unit tests)."""

    async def lock_definitions(self, exclusive: bool, large: bool = True) -> None: ...
    async def lock_individuals(self, ids: Sequence[str]) -> dict[str, str]: ...
    async def record_merge(self, from_ids: Sequence[str], to_id: str) -> None: ...
    async def record_split(self, restored_id: str) -> None: ...
    async def insert_events(self, events: Sequence[NewEvent]) -> set[str]: ...
    async def touch_individuals(self, ids: Sequence[str], now: datetime) -> None: ...
    async def individual_exists(self, individual_id: str) -> bool: ...
    async def individual_ids(self, after: str, limit: int) -> list[str]: ...
    async def config(self) -> Config: ...
    async def add_attribute_stats(self, stats: dict) -> None: ...
    async def attribute_stats(self, ids: Sequence[str]) -> dict[tuple[str, str], list[ValueStat]]: ...
    async def write_attributes(self, ids: Sequence[str], values: dict[tuple[str, str], tuple]) -> None: ...
    async def upsert_objects(self, rows: Sequence[tuple], keep: int) -> None: ...
    async def upsert_consents(self, rows: Sequence[tuple], from_api: bool) -> None: ...
    async def item_attributes(self, ids: Sequence[str], keys: Sequence[str] | None = None) -> dict[str, dict]: ...
    async def add_affinities(self, increments: dict, half_life: timedelta) -> None: ...
    async def event_rows(self, ids: Sequence[str], since: datetime | None, lines: bool, properties: bool
                         ) -> list[StoredEvent]: ...
    async def edge_events(self, ids: Sequence[str], ranges: Sequence[tuple[datetime, datetime]], lines: bool,
                          properties: bool) -> list[StoredEvent]: ...
    async def read_partials(self, ids: Sequence[str]) -> tuple[dict[tuple[str, str, str, int], insights.Partial],
                                                               dict[tuple[str, str, str], float]]: ...
    async def change_insight_values(self, put: Sequence[tuple[str, str, str, float]],
                                    gone: Sequence[tuple[str, str, str]]) -> None: ...
    async def write_partials(self, ids: Sequence[str], partials: dict[tuple[str, str, str, int], insights.Partial],
                             keep_from: dict[str, int] | None) -> None: ...
    async def store_insight_values(self, ids: Sequence[str], rows: dict[str, list[tuple[str, str, float]]]) -> None: ...
    async def profile_states(self, ids: Sequence[str], now: datetime, parts: frozenset[str]) -> dict[str, tuple]: ...
    async def change_memberships(self, entered: Sequence[tuple[str, str]], exited: Sequence[tuple[str, str]],
                                 now: datetime) -> None: ...
    async def move_events(self, from_ids: Sequence[str], to_id: str, identity_keys: Sequence[str] | None) -> int: ...
    async def move_api_consents(self, from_ids: Sequence[str], to_id: str) -> None: ...
    async def drop_individuals(self, ids: Sequence[str]) -> list[tuple[str, str]]: ...
    async def clear_derived(self, ids: Sequence[str]) -> None: ...
    async def replay_events(self, ids: Sequence[str]) -> list[NewEvent]: ...
    async def save_insight(self, insight: InsightDef) -> None: ...
    async def save_segment(self, segment: SegmentDef) -> None: ...
    async def save_affinity_config(self, config: AffinityConfig) -> None: ...
    async def save_recon_rule(self, rule: ReconRule) -> None: ...
    async def member_count(self, segment: str) -> int: ...
    async def item_event_rows(self, item_ids: Sequence[str], since: datetime | None) -> list[StoredEvent]: ...
    async def store_item_insights(self, item_ids: Sequence[str], values: dict[str, dict[str, float]]) -> None: ...
    async def item_ids(self, after: str, limit: int) -> list[str]: ...


class Store(Protocol):
    """The profile graph's storage: transactions for writes, single reads for the hot path."""

    def unit(self, tenant: str) -> AbstractAsyncContextManager[Unit]: ...
    async def get_profile(self, tenant: str, individual_id: str, parts: set[str], event_limit: int,
                          affinity_limit: int, now: datetime) -> Profile: ...
    async def get_profiles(self, tenant: str, individual_ids: Sequence[str], parts: set[str], event_limit: int,
                           affinity_limit: int, now: datetime) -> list[Profile]: ...
    async def get_affinities(self, tenant: str, individual_id: str, dimension: str, limit: int,
                             now: datetime) -> list[Affinity]: ...
    async def get_consents(self, tenant: str, individual_id: str) -> list[ConsentState]: ...
    async def list_insights(self, tenant: str, after: str, limit: int) -> list[InsightDef]: ...
    async def list_segments(self, tenant: str, after: str, limit: int) -> list[SegmentDef]: ...
    async def segment_exists(self, tenant: str, name: str) -> bool: ...
    async def list_members(self, tenant: str, segment: str, after: str, limit: int) -> list[Member]: ...
    async def list_changes(self, tenant: str, segment: str, after: int, limit: int) -> list[MembershipChange]: ...
    async def tenants_with_definitions(self) -> list[str]: ...
    async def tenants_pending_partials(self) -> list[str]: ...
    async def clear_pending_partials(self, tenant: str) -> None: ...
    async def item_types(self, tenant: str) -> dict[str, str]: ...
    async def upsert_items(self, tenant: str, items: Sequence[Item], new_types: dict[str, str]) -> None: ...
    async def get_items(self, tenant: str, ids: Sequence[str]) -> list[Item]: ...
    async def list_items(self, tenant: str, filters: Sequence[Condition], types: dict[str, str], after: str,
                         limit: int) -> list[Item]: ...
    async def read_config(self, tenant: str) -> Config: ...
    async def recent_events(self, tenant: str, individual_id: str, count: int) -> list[tuple[int, bytes, datetime]]: ...
    async def events_after(self, tenant: str, individual_id: str, after: int) -> list[tuple[int, bytes, datetime]]: ...
    def watch(self, tenant: str, individual_id: str) -> AbstractAsyncContextManager: ...


def _reads_properties(d: InsightDef) -> bool:
    return any(n.startswith("properties.") for n in [d.field, d.dimension] + [c.field for c in d.conditions])


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ProfileGraph:
    """The Update and Compute stages, and the reads of what they produce."""

    def __init__(self, store: Store, rules: RuleCache | None = None, *, clock: Callable[[], datetime] = _utcnow,
                 objects_per_type: int = 100):
        self.store = store
        self.rules = rules or RuleCache()
        self.clock = clock
        self.objects_per_type = objects_per_type
        self.dirty_items: dict[str, set[str]] = {}

    # ---- update & compute ---------------------------------------------------------------------------------

    async def append_events(self, tenant: str, events: list[NewEvent]) -> list[AppendOutcome]:
        """Stores new events once per message id, updates attributes, objects, consents and affinities, recomputes
        insights and memberships of the touched individuals."""
        domain.validate_events(events)
        first_index: dict[str, int] = {}
        for i, e in enumerate(events):
            first_index.setdefault(e.message_id, i)
        unique = [events[i] for i in sorted(first_index.values())]
        outcomes = [AppendOutcome(e.message_id, duplicate=True) for e in events]
        if not unique:
            return outcomes
        for attempt in range(CONTENTION_ATTEMPTS):
            try:
                return await self._append(tenant, events, unique, first_index, outcomes)
            except Contention:
                if attempt + 1 == CONTENTION_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _append(self, tenant: str, events: list[NewEvent], unique: list[NewEvent], first_index: dict[str, int],
                      outcomes: list[AppendOutcome]) -> list[AppendOutcome]:
        now = self.clock()
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=False, large=len(unique) > SMALL_BATCH)
            # Several pipeline workers append at once: each individual is written by one transaction at a time, and
            # an event resolved before its individual was merged away goes to the survivor.
            redirects = await unit.lock_individuals([e.individual_id for e in unique])
            if redirects:
                unique = [replace(e, individual_id=redirects.get(e.individual_id, e.individual_id)) for e in unique]
                events = [replace(e, individual_id=redirects.get(e.individual_id, e.individual_id)) for e in events]
            new_ids = await unit.insert_events(unique)
            fresh = [e for e in unique if e.message_id in new_ids]
            changes: dict[str, tuple[list[str], list[str]]] = {}
            if fresh:
                touched = sorted({e.individual_id for e in fresh})
                await unit.touch_individuals(touched, now)
                config = await unit.config()
                await self._derive(unit, config, fresh, touched)
                changes = await self._recompute(unit, tenant, config, touched, now, fresh)
        if fresh and any(d.subject == domain.SUBJECT_ITEM for d in config.insights):
            self.dirty_items.setdefault(tenant, set()).update(i for e in fresh for i in e.item_ids)
        last_of: dict[str, int] = {}
        for i, e in enumerate(events):
            if first_index[e.message_id] == i and e.message_id in new_ids:
                outcomes[i].duplicate = False
                last_of[e.individual_id] = i
        for individual_id, i in last_of.items():
            entered, exited = changes.get(individual_id, ([], []))
            outcomes[i].entered, outcomes[i].exited = entered, exited
        return outcomes

    async def _derive(self, unit: Unit, config: Config, events: list[NewEvent], ids: list[str],
                      all_keys: bool = False) -> None:
        """Attributes (per-source values, then the reconciled unified value), profile objects, consents and
        affinities from events."""
        stats = reconciliation.attribute_stats(events)
        if stats:
            await unit.add_attribute_stats(stats)
            touched = {(i, k) for i, k, _, _ in stats}
            candidates = await unit.attribute_stats(sorted({i for i, _ in touched}))
            if not all_keys:
                candidates = {k: v for k, v in candidates.items() if k in touched}
            await unit.write_attributes(ids, reconciliation.reconcile_all(config.recon, candidates))
        objects = reconciliation.latest_objects(events)
        if objects:
            await unit.upsert_objects(objects, self.objects_per_type)
        consents = reconciliation.latest_consents(events)
        if consents:
            await unit.upsert_consents(consents, from_api=False)
        if config.affinity.dimensions and any(config.affinity.weight(e.type) for e in events):
            items = await unit.item_attributes(sorted({i for e in events for i in e.item_ids}),
                                               config.affinity.dimensions)
            increments = affinity_increments(events, items, config.affinity)
            if increments:
                await unit.add_affinities(increments, config.affinity.half_life)

    async def _recompute(self, unit: Unit, tenant: str, config: Config, ids: list[str], now: datetime,
                         fresh: list[NewEvent] | None = None, slices: Slices | None = None
                         ) -> dict[str, tuple[list[str], list[str]]]:
        """Recomputes insight values and segment memberships of ids; returns (entered, exited) per individual.

        With fresh (the events just appended, possibly none) insights are updated incrementally from the stored
        partials; without, they are recomputed from the individuals' events and their partials rewritten.
        Memberships are evaluated in slices of a few milliseconds, the event loop yielded between them (slices:
        the caller's, when its deadline must stop the work)."""
        slices = slices or Slices("a recomputation", honour_deadline=False, pause=0.0)
        defs = [d for d in config.insights if d.subject != domain.SUBJECT_ITEM]
        values: dict[str, list[tuple[str, str, float]]] = {}
        if defs:
            if fresh is None:
                values = await self._insights_from_events(unit, defs, ids, now, slices)
                await unit.store_insight_values(ids, values)
            else:
                values = await self._insights_from_partials(unit, defs, fresh, ids, now, slices)
        if not config.segments:
            return {}
        programs = self.rules.programs(tenant, config.segments)
        variables = segments.rule_variables(programs)
        memo: dict = {}
        states = await unit.profile_states(ids, now, variables)
        entered: list[tuple[str, str]] = []
        exited: list[tuple[str, str]] = []
        changes: dict[str, tuple[list[str], list[str]]] = {}
        skipped: dict[str, int] = {}
        for individual_id in ids:
            await slices.tick()
            attributes, current, affinities, consents = states.get(individual_id, ({}, set(), {}, {}))
            insight_map = insights.insight_view(defs, values.get(individual_id, []))
            over: set[str] = set()
            now_in = segments.evaluate_memberships(programs, attributes, insight_map, current, affinities, consents,
                                                   variables, memo, over)
            for name in over:
                skipped[name] = skipped.get(name, 0) + 1
            came = sorted(now_in - current)
            went = sorted(current - now_in)
            if came or went:
                changes[individual_id] = (came, went)
                entered += [(individual_id, s) for s in came]
                exited += [(individual_id, s) for s in went]
        if skipped:
            # Not run on these individuals: their data would take the rule past its evaluation budget.
            log.warning("segment_rule_over_budget", tenant=tenant, individuals=skipped)
        if entered or exited:
            await unit.change_memberships(entered, exited, now)
        return changes

    async def _item_attributes_for(self, unit: Unit, defs: list[InsightDef], rows) -> dict[str, dict]:
        if not any(d.reads_item_attributes for d in defs):
            return {}
        return await unit.item_attributes(sorted({i for r in rows for i in ([r.item_id] + [li[0] for li in r.lines])
                                                  if i}))

    async def _values_from_events(self, unit: Unit, defs: list[InsightDef], ids: list[str], now: datetime,
                                  partials: dict | None, slices: Slices | None = None
                                  ) -> dict[str, dict[str, dict[str, float]]]:
        """individual -> insight -> group -> value from the individuals' events (those inside the longest window when
        all are windowed); fills partials (per time bucket) for the defs kept incrementally when asked."""
        since = None if any(not d.window for d in defs) else now - max(d.window for d in defs)
        rows = await unit.event_rows(ids, since, any(d.uses_items for d in defs),
                                     any(_reads_properties(d) for d in defs))
        items = await self._item_attributes_for(unit, defs, rows)
        totals: dict[str, dict[str, dict[str, float]]] = {}
        for d in defs:
            if slices is not None:
                await slices.tick()
            merged: dict[tuple[str, str], insights.Partial] = {}
            for (individual, bucket, group), partial in insights.insight_partials(d, rows, items, now,
                                                                                  buckets=True).items():
                if partials is not None and not d.reads_item_attributes:
                    partials[(individual, d.name, group, bucket)] = partial
                merged.setdefault((individual, group), insights.Partial()).merge(partial)
            for (individual, group), value in insights.values_of(d, merged).items():
                totals.setdefault(individual, {}).setdefault(d.name, {})[group] = value
        return totals

    async def _insights_from_events(self, unit: Unit, defs: list[InsightDef], ids: list[str], now: datetime,
                                    slices: Slices | None = None) -> dict[str, list[tuple[str, str, float]]]:
        """The full recompute of ids: every insight from their events, and their partials rebuilt from them."""
        partials: dict[tuple[str, str, str, int], insights.Partial] = {}
        totals = await self._values_from_events(unit, defs, ids, now, partials, slices)
        await unit.write_partials(ids, partials, None)
        return {individual: insights.insight_rows(defs, totals.get(individual, {})) for individual in ids}

    async def _insights_from_partials(self, unit: Unit, defs: list[InsightDef], fresh: list[NewEvent],
                                      ids: list[str], now: datetime, slices: Slices | None = None
                                      ) -> dict[str, list[tuple[str, str, float]]]:
        """The incremental update: the fresh events are merged into the stored partials of their time buckets;
        values are the partials of the buckets wholly inside each window plus the events of the bucket holding the
        window's start that fall after it, read one by one. Sums are exact, so this equals the full recompute.
        Insights reading catalog attributes (item.<attribute>) are recomputed from events, so that they follow
        changes of the catalog as before."""
        kept = [d for d in defs if not d.reads_item_attributes]
        totals = await self._values_from_events(unit, [d for d in defs if d.reads_item_attributes], ids, now,
                                                None, slices) if len(kept) < len(defs) else {}
        edges = {d.name: insights.edge(d, now) for d in kept if d.window}
        stored, previous = await unit.read_partials(ids)
        changed: dict[tuple[str, str, str, int], insights.Partial] = {}
        for d in kept:
            for (individual, bucket, group), partial in insights.insight_partials(d, fresh, {}, now,
                                                                                  buckets=True).items():
                key = (individual, d.name, group, bucket)
                if key in stored:
                    stored[key].merge(partial)
                else:
                    stored[key] = partial
                changed[key] = stored[key]
        await unit.write_partials(ids, changed, {name: e[2] for name, e in edges.items()})
        by_name: dict[str, list[tuple[str, str, int, insights.Partial]]] = {}
        for (individual, name, group, bucket), partial in stored.items():
            by_name.setdefault(name, []).append((individual, group, bucket, partial))
        # Every event after a cutoff is in its bucket's partial, so only individuals with a partial in an edge bucket
        # have events to read one by one.
        edge_ids = sorted({i for name, e in edges.items() for i, _, bucket, _ in by_name.get(name, ()) if bucket == e[2]})
        ranges = sorted({(cutoff, end) for cutoff, end, _ in edges.values()})
        edge_rows = await unit.edge_events(edge_ids, ranges, any(d.uses_items for d in kept),
                                           any(_reads_properties(d) for d in kept)) if edge_ids else []
        for d in kept:
            if slices is not None:
                await slices.tick()
            parts: dict[tuple[str, str], list[insights.Partial]] = {}
            edge = edges.get(d.name)
            for individual, group, bucket, partial in by_name.get(d.name, ()):
                if edge is None or bucket > edge[2]:
                    parts.setdefault((individual, group), []).append(partial)
            if edge is not None:
                inside = [r for r in edge_rows if r.event_time < edge[1]]  # after the cutoff: insight_counts
                for key, partial in insights.insight_partials(d, inside, {}, now).items():
                    parts.setdefault(key, []).append(partial)
            merged = {key: found[0] if len(found) == 1 else insights.merged(found) for key, found in parts.items()}
            for (individual, group), value in insights.values_of(d, merged).items():
                totals.setdefault(individual, {}).setdefault(d.name, {})[group] = value
        values = {individual: insights.insight_rows(defs, totals.get(individual, {})) for individual in ids}
        # Only values that changed are written (most of a batch's individuals keep most of their values).
        await unit.change_insight_values(*insights.insight_changes(values, previous))
        return values

    async def _rebuild(self, unit: Unit, tenant: str, config: Config, ids: list[str], now: datetime,
                       slices: Slices | None = None) -> None:
        """Forgets everything derived about ids (except consents set through the API) and derives it again from
        their events, then recomputes insights and memberships."""
        await unit.clear_derived(ids)
        events = await unit.replay_events(ids)
        if events:
            await self._derive(unit, config, events, ids, all_keys=True)
        await self._recompute(unit, tenant, config, ids, now, slices=slices)

    async def reassign(self, tenant: str, from_ids: list[str], to_id: str,
                       only_identities: list[tuple[str, str]] | None = None) -> int:
        """Merge: moves merged individuals' events (and API consents) to the survivor and rebuilds it. Unmerge (with
        only_identities): moves only the events carrying one of those identities and rebuilds both sides.
        Idempotent."""
        v = Violations()
        if not to_id:
            v.add("to_individual_id", "must not be empty")
        if not from_ids:
            v.add("from_individual_ids", "must name at least one individual")
        for i, f in enumerate(from_ids):
            if not f:
                v.add(f"from_individual_ids[{i}]", "must not be empty")
            elif f == to_id:
                v.add(f"from_individual_ids[{i}]", "must not be the surviving individual")
        for i, (kind, value) in enumerate(only_identities or []):
            if not kind:
                v.add(f"only_events_with_identities[{i}].type", "must not be empty")
            if not value:
                v.add(f"only_events_with_identities[{i}].value", "must not be empty")
        v.raise_if_any()
        from_ids = sorted(set(from_ids))
        now = self.clock()
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=False)
            await unit.lock_individuals([*from_ids, to_id])
            config = await unit.config()
            if only_identities:
                await unit.record_split(to_id)
                keys = sorted({reconciliation.identity_key(k, val) for k, val in only_identities})
                moved = await unit.move_events(from_ids, to_id, keys)
                if moved:
                    await unit.touch_individuals(sorted({to_id, *from_ids}), now)
                    await self._rebuild(unit, tenant, config, sorted({to_id, *from_ids}), now)
                return moved
            survivor_known = await unit.individual_exists(to_id)
            await unit.record_merge(from_ids, to_id)
            moved = await unit.move_events(from_ids, to_id, None)
            await unit.move_api_consents(from_ids, to_id)
            left = await unit.drop_individuals(from_ids)
            if left:
                await unit.change_memberships([], left, now)
            if not survivor_known and not moved:
                return 0
            await unit.touch_individuals([to_id], now)
            await self._rebuild(unit, tenant, config, [to_id], now)
        return moved

    async def _recompute_everyone(self, unit: Unit, tenant: str, config: Config, now: datetime, what: str) -> int:
        """Recomputes every individual in chunks; stops (DeadlineExceeded, the transaction rolled back) once the
        caller's deadline has passed."""
        slices = Slices(what)
        after, count = "", 0
        while ids := await unit.individual_ids(after, RECOMPUTE_CHUNK):
            check_deadline(what)
            await self._recompute(unit, tenant, config, ids, now, slices=slices)
            after, count = ids[-1], count + len(ids)
        return count

    async def recompute_all(self, tenant: str) -> tuple[int, int]:
        """Full recompute of one tenant: every individual's insights and memberships (one short transaction per
        chunk) and every item's insights. Returns (individuals, items)."""
        individuals, after = 0, ""
        slices = Slices("the recomputation")
        while True:
            check_deadline("the recomputation")
            async with self.store.unit(tenant) as unit:
                await unit.lock_definitions(exclusive=False)
                config = await unit.config()
                ids = await unit.individual_ids(after, RECOMPUTE_CHUNK)
                if ids:
                    await self._recompute(unit, tenant, config, ids, self.clock(), slices=slices)
            if not ids:
                break
            individuals, after = individuals + len(ids), ids[-1]
        items, after = 0, ""
        while True:
            check_deadline("the recomputation")
            async with self.store.unit(tenant) as unit:
                ids = await unit.item_ids(after, ITEM_CHUNK)
                if ids:
                    await self._item_insights(unit, ids)
            if not ids:
                break
            items, after = items + len(ids), ids[-1]
        return individuals, items

    async def refresh(self) -> int:
        """The scheduled full recompute: windows move on, so values and memberships change without new events."""
        total = 0
        for tenant in await self.store.tenants_with_definitions():
            total += (await self.recompute_all(tenant))[0]
        return total

    async def rebuild_pending_partials(self) -> int:
        """Once after the migration that introduced partials: a full recompute of each tenant that had insights
        (it rebuilds their partials from events). Returns how many tenants."""
        tenants = await self.store.tenants_pending_partials()
        for tenant in tenants:
            await self.recompute_all(tenant)
            await self.store.clear_pending_partials(tenant)
        return len(tenants)

    # Kept for callers of the first version.
    refresh_windowed_insights = refresh

    async def _item_insights(self, unit: Unit, item_ids: list[str]) -> bool:
        config = await unit.config()
        defs = [d for d in config.insights if d.subject == domain.SUBJECT_ITEM]
        if not defs:
            return False
        now = self.clock()
        since = None if any(not d.window for d in defs) else now - max(d.window for d in defs)
        rows = await unit.item_event_rows(item_ids, since)
        needs_items = any(d.field.startswith("item.") or any(c.field.startswith("item.") for c in d.conditions)
                          for d in defs)
        items = await unit.item_attributes(item_ids) if needs_items else {}
        wanted = set(item_ids)
        values: dict[str, dict[str, float]] = {i: {} for i in item_ids}
        for d in defs:
            for item_id, value in insights.compute_insight(d, rows, items, now, group_by="item_id").items():
                if item_id in wanted:
                    values[item_id][d.name] = value
        for item_id in item_ids:
            for d in defs:
                values[item_id].setdefault(d.name, 0.0)
        await unit.store_item_insights(item_ids, values)
        return True

    async def flush_item_insights(self) -> int:
        """Recomputes the insights of items that events touched since the last flush. Returns how many."""
        dirty, self.dirty_items = self.dirty_items, {}
        total = 0
        for tenant, ids in dirty.items():
            ordered = sorted(ids)
            for start in range(0, len(ordered), ITEM_CHUNK):
                async with self.store.unit(tenant) as unit:
                    await self._item_insights(unit, ordered[start:start + ITEM_CHUNK])
            total += len(ordered)
        return total

    # ---- reads --------------------------------------------------------------------------------------------

    async def get_profile(self, tenant: str, individual_id: str, mask_paths: list[str], limit: int,
                          affinity_limit: int = 0) -> Profile:
        """The profile of one individual, restricted to the mask; an unknown individual gives an empty profile."""
        v = Violations()
        if not individual_id:
            v.add("unified_individual_id", "must not be empty")
        v.raise_if_any()
        parts = domain.profile_parts(mask_paths)
        return await self.store.get_profile(
            tenant, individual_id, parts, domain.event_limit(limit),
            domain.event_limit(affinity_limit, "affinity_limit", domain.DEFAULT_AFFINITY_LIMIT), self.clock())

    async def get_profiles(self, tenant: str, individual_ids: list[str], mask_paths: list[str], limit: int,
                           affinity_limit: int = 0) -> list[Profile]:
        """The profiles of up to 1,000 individuals in request order (a repeated id is read once and returned at each
        of its places), each restricted to the mask; unknown individuals give empty profiles."""
        v = Violations()
        if not individual_ids:
            v.add("unified_individual_ids", "must name at least one individual")
        elif len(individual_ids) > domain.MAX_PROFILES:
            v.add("unified_individual_ids", f"at most {domain.MAX_PROFILES} ids per call, got {len(individual_ids)}")
            v.raise_if_any()
        for i, individual_id in enumerate(individual_ids):
            if not individual_id:
                v.add(f"unified_individual_ids[{i}]", "must not be empty")
        v.raise_if_any()
        parts = domain.profile_parts(mask_paths)
        unique = list(dict.fromkeys(individual_ids))
        profiles = await self.store.get_profiles(
            tenant, unique, parts, domain.event_limit(limit),
            domain.event_limit(affinity_limit, "affinity_limit", domain.DEFAULT_AFFINITY_LIMIT), self.clock())
        by_id = {p.individual_id: p for p in profiles}
        return [by_id[i] for i in individual_ids]

    async def get_affinities(self, tenant: str, individual_id: str, limit: int, dimension: str) -> list[Affinity]:
        """The individual's top affinities by decayed score."""
        if not individual_id:
            raise InvalidArgument([("unified_individual_id", "must not be empty")])
        n = domain.event_limit(limit, "limit", domain.DEFAULT_AFFINITY_LIMIT)
        return await self.store.get_affinities(tenant, individual_id, dimension, n, self.clock())

    # ---- configuration ------------------------------------------------------------------------------------

    async def set_affinity_config(self, tenant: str, config: AffinityConfig | None) -> AffinityConfig:
        """Saves the affinity configuration and rebuilds every individual's scores from their events."""
        domain.validate_affinity_config(config)
        await self._save_and_rebuild(tenant, lambda unit: unit.save_affinity_config(config))
        return config

    async def get_affinity_config(self, tenant: str) -> AffinityConfig:
        return (await self.store.read_config(tenant)).affinity

    async def set_recon_rule(self, tenant: str, rule: ReconRule | None) -> ReconRule:
        """Saves the reconciliation rule and recomputes every individual's unified attributes."""
        domain.validate_recon_rule(rule)
        await self._save_and_rebuild(tenant, lambda unit: unit.save_recon_rule(rule))
        return rule

    async def get_recon_rule(self, tenant: str, obj: str) -> ReconRule:
        if obj and obj not in domain.RECONCILED_OBJECTS:
            raise InvalidArgument([("object", f"unknown object {quote(obj)}; expected individual")])
        return (await self.store.read_config(tenant)).recon

    async def _save_and_rebuild(self, tenant: str, save) -> None:
        what = "the rebuild of every individual"
        slices = Slices(what)
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=True)
            await save(unit)
            config = await unit.config()
            now = self.clock()
            after = ""
            while ids := await unit.individual_ids(after, RECOMPUTE_CHUNK):
                check_deadline(what)
                await self._rebuild(unit, tenant, config, ids, now, slices)
                after = ids[-1]

    async def set_consents(self, tenant: str, individual_id: str, consents: list[tuple[str, int]]
                           ) -> list[ConsentState]:
        """Records consent decisions made now (source api) and re-evaluates the individual's segments."""
        v = Violations()
        if not individual_id:
            v.add("unified_individual_id", "must not be empty")
        if not consents:
            v.add("consents", "must name at least one purpose")
        for i, (purpose, status) in enumerate(consents):
            if not domain.NAME_RE.match(purpose):
                v.add(f"consents[{i}].purpose", "must match ^[a-z][a-z0-9_]{0,63}$")
            if status not in domain.CONSENT_NAMES:
                v.add(f"consents[{i}].status", "must be CONSENT_STATUS_GRANTED or CONSENT_STATUS_DENIED")
        v.raise_if_any()
        now = self.clock()
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=False, large=False)
            await unit.touch_individuals([individual_id], now)
            latest = {p: s for p, s in consents}
            await unit.upsert_consents([(individual_id, p, s, now, "api") for p, s in latest.items()], from_api=True)
            await self._recompute(unit, tenant, await unit.config(), [individual_id], now, [])
        return await self.store.get_consents(tenant, individual_id)

    # ---- live stream --------------------------------------------------------------------------------------

    async def watch_events(self, tenant: str, individual_id: str, replay: int
                           ) -> AsyncIterator[tuple[bytes, datetime]]:
        """The individual's events as they are appended (by any replica), preceded by the last `replay` ones."""
        v = Violations()
        if not individual_id:
            v.add("unified_individual_id", "must not be empty")
        if replay < 0 or replay > MAX_REPLAY:
            v.add("replay_count", f"must be between 0 and {MAX_REPLAY}")
        v.raise_if_any()
        async with self.store.watch(tenant, individual_id) as wake:
            last = 0
            for seq, payload, at in await self.store.recent_events(tenant, individual_id, max(replay, 1)):
                last = max(last, seq)
                if replay:
                    yield payload, at
            while True:
                await wake.wait()
                wake.clear()
                for seq, payload, at in await self.store.events_after(tenant, individual_id, last):
                    last = max(last, seq)
                    yield payload, at

    # ---- items --------------------------------------------------------------------------------------------

    async def upsert_items(self, tenant: str, items: list[Item]) -> int:
        """Inserts or replaces items by id (a later duplicate in the request wins); attribute types are checked
        against the catalog's."""
        v = Violations()
        if len(items) > domain.MAX_ITEMS:
            v.add("items", f"at most {domain.MAX_ITEMS} items per call, got {len(items)}")
            v.raise_if_any()
        for i, item in enumerate(items):
            if not item.item_id:
                v.add(f"items[{i}].item_id", "must not be empty")
        v.raise_if_any()
        new_types = check_item_attributes(items, await self.store.item_types(tenant))
        unique = list({item.item_id: item for item in items}.values())
        if unique:
            await self.store.upsert_items(tenant, unique, new_types)
        return len(items)

    async def get_items(self, tenant: str, ids: list[str]) -> list[Item]:
        """The items found, in request order (each id once); unknown ids are left out."""
        v = Violations()
        if not ids:
            v.add("item_ids", "must name at least one item")
        elif len(ids) > domain.MAX_ITEMS:
            v.add("item_ids", f"at most {domain.MAX_ITEMS} ids per call, got {len(ids)}")
        for i, item_id in enumerate(ids[: domain.MAX_ITEMS]):
            if not item_id:
                v.add(f"item_ids[{i}]", "must not be empty")
        v.raise_if_any()
        wanted = list(dict.fromkeys(ids))
        found = {item.item_id: item for item in await self.store.get_items(tenant, wanted)}
        return [found[i] for i in wanted if i in found]

    async def list_items(self, tenant: str, filters: list[Condition], size: int, token: str
                         ) -> tuple[list[Item], str]:
        """A page of items by id meeting every filter, and the token of the next page."""
        limit = paging.page_size(size, 100, 1_000)
        listing = "items/" + repr([(c.field, c.op, c.value) for c in filters])
        after = paging.decode_token(token, listing, (str,))
        types = await self.store.item_types(tenant)
        check_item_filters(filters, types)
        rows = await self.store.list_items(tenant, filters, types, after[0] if after else "", limit + 1)
        return paging.next_page(rows, limit, listing, lambda item: [item.item_id])

    # ---- insights -----------------------------------------------------------------------------------------

    async def upsert_insight(self, tenant: str, insight: InsightDef | None) -> InsightDef:
        """Saves an insight definition and recomputes insights and memberships of every individual (and items)."""
        domain.validate_insight(insight)
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=True)
            await unit.save_insight(insight)
            config = await unit.config()
            if insight.subject == domain.SUBJECT_ITEM:
                after = ""
                while ids := await unit.item_ids(after, ITEM_CHUNK):
                    check_deadline("the recomputation of every item for the insight")
                    await self._item_insights(unit, ids)
                    after = ids[-1]
            else:
                await self._recompute_everyone(unit, tenant, config, self.clock(),
                                               "the recomputation of every individual for the insight")
        return insight

    async def list_insights(self, tenant: str, size: int, token: str) -> tuple[list[InsightDef], str]:
        """A page of insight definitions by name, and the token of the next page."""
        limit = paging.page_size(size, 100, 1_000)
        after = paging.decode_token(token, "insights", (str,))
        rows = await self.store.list_insights(tenant, after[0] if after else "", limit + 1)
        return paging.next_page(rows, limit, "insights", lambda d: [d.name])

    # ---- segments -----------------------------------------------------------------------------------------

    async def upsert_segment(self, tenant: str, segment: SegmentDef | None) -> SegmentDef:
        """Compiles and saves a segment (unknown insight or segment references refused), then recomputes
        memberships of every individual."""
        domain.validate_segment_fields(segment)
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=True)
            config = await unit.config()
            individual = [d for d in config.insights if d.subject != domain.SUBJECT_ITEM]
            program = segments.compile_rule(
                segment.rule, [d.name for d in individual], [s.name for s in config.segments] + [segment.name],
                frozenset(d.name for d in individual if d.dimension))
            self.rules.put(tenant, segment.name, segment.rule, program)
            await unit.save_segment(segment)
            config = await unit.config()
            await self._recompute_everyone(unit, tenant, config, self.clock(),
                                           "the recomputation of every individual for the segment")
            count = await unit.member_count(segment.name)
        return SegmentDef(segment.name, segment.description, segment.rule, count)

    async def list_segments(self, tenant: str, size: int, token: str) -> tuple[list[SegmentDef], str]:
        """A page of segments by name with their member counts, and the token of the next page."""
        limit = paging.page_size(size, 100, 1_000)
        after = paging.decode_token(token, "segments", (str,))
        rows = await self.store.list_segments(tenant, after[0] if after else "", limit + 1)
        return paging.next_page(rows, limit, "segments", lambda s: [s.name])

    async def list_members(self, tenant: str, segment: str, size: int, token: str) -> tuple[list[Member], str]:
        """A page of a segment's members ordered by unified id, and the token of the next page."""
        if not segment:
            raise InvalidArgument([("segment", "must not be empty")])
        limit = paging.page_size(size, 1_000, 10_000)
        after = paging.decode_token(token, f"members/{segment}", (str,))
        await self._segment_must_exist(tenant, segment)
        rows = await self.store.list_members(tenant, segment, after[0] if after else "", limit + 1)
        return paging.next_page(rows, limit, f"members/{segment}", lambda m: [m.individual_id])

    async def list_changes(self, tenant: str, segment: str, size: int, token: str
                           ) -> tuple[list[MembershipChange], str]:
        """Entries and exits in the order they happened; the token always names the last one returned, so a caller
        can poll with it for newer changes."""
        limit = paging.page_size(size, 1_000, 10_000)
        after = paging.decode_token(token, f"changes/{segment}", (int,))
        if segment:
            await self._segment_must_exist(tenant, segment)
        rows = await self.store.list_changes(tenant, segment, after[0] if after else 0, limit)
        return rows, paging.encode_token(f"changes/{segment}", [rows[-1].seq]) if rows else ""

    async def _segment_must_exist(self, tenant: str, segment: str) -> None:
        if not await self.store.segment_exists(tenant, segment):
            raise NotFound(f"segment {quote(segment)} does not exist", reason="SEGMENT_NOT_FOUND",
                           metadata={"segment": segment})
