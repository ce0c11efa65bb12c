"""Use cases that change individuals: append events, reassign events on a merge or an unmerge, recompute."""

from __future__ import annotations

from dataclasses import replace

from services.profile_graph import domain, reconciliation
from services.profile_graph.derivation import ITEM_CHUNK, RECOMPUTE_CHUNK, Derivation
from services.profile_graph.domain import (
    AppendOutcome,
    Contention,
    NewEvent,
)
from services.profile_graph.ports import Store
from shared.context import Slices, check_deadline
from shared.errors import Violations

# Appends of at most this many events keep PostgreSQL's generic plans (see PostgresUnit.lock_definitions).
SMALL_BATCH = 50
# An append that lost a deadlock to a concurrent writer (another pipeline worker) is run again this many times.
CONTENTION_ATTEMPTS = 3


class AppendEvents:
    """AppendEvents: stores new events once per message id and updates what is derived from them."""

    def __init__(self, store: Store, derivation: Derivation):
        self.store = store
        self.derivation = derivation
        self.clock = derivation.clock

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
                await self.derivation.derive(unit, config, fresh, touched)
                changes = await self.derivation.recompute(unit, tenant, config, touched, now, fresh)
        if fresh and any(d.subject == domain.SUBJECT_ITEM for d in config.insights):
            self.derivation.dirty_items.setdefault(tenant, set()).update(i for e in fresh for i in e.item_ids)
        last_of: dict[str, int] = {}
        for i, e in enumerate(events):
            if first_index[e.message_id] == i and e.message_id in new_ids:
                outcomes[i].duplicate = False
                last_of[e.individual_id] = i
        for individual_id, i in last_of.items():
            entered, exited = changes.get(individual_id, ([], []))
            outcomes[i].entered, outcomes[i].exited = entered, exited
        return outcomes


class Reassign:
    """ReassignIndividual: moves events to the survivor of a merge (or back, on an unmerge) and rebuilds both sides."""

    def __init__(self, store: Store, derivation: Derivation):
        self.store = store
        self.derivation = derivation
        self.clock = derivation.clock

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
            redirects = await unit.lock_individuals([*from_ids, to_id])
            config = await unit.config()
            if not only_identities and to_id in redirects:
                # A merge applied late (workers and the merge sweeper apply merges in any order) onto an individual
                # merged away since: what it moves goes on to that individual's survivor, as an append would.
                to_id = redirects[to_id]
                from_ids = [f for f in from_ids if f != to_id]
                if not from_ids:
                    return 0
            if only_identities:
                await unit.record_split(to_id)
                keys = sorted({reconciliation.identity_key(k, val) for k, val in only_identities})
                moved = await unit.move_events(from_ids, to_id, keys)
                if moved:
                    await unit.touch_individuals(sorted({to_id, *from_ids}), now)
                    await self.derivation.rebuild(unit, tenant, config, sorted({to_id, *from_ids}), now)
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
            await self.derivation.rebuild(unit, tenant, config, [to_id], now)
        return moved


class Recompute:
    """RecomputeAll and the scheduled recomputes: windows move on, definitions change, items go stale."""

    def __init__(self, store: Store, derivation: Derivation):
        self.store = store
        self.derivation = derivation
        self.clock = derivation.clock

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
                    await self.derivation.recompute(unit, tenant, config, ids, self.clock(), slices=slices)
            if not ids:
                break
            individuals, after = individuals + len(ids), ids[-1]
        items, after = 0, ""
        while True:
            check_deadline("the recomputation")
            async with self.store.unit(tenant) as unit:
                ids = await unit.item_ids(after, ITEM_CHUNK)
                if ids:
                    await self.derivation.item_insights(unit, ids)
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

    async def flush_item_insights(self) -> int:
        """Recomputes the insights of items that events touched since the last flush. Returns how many."""
        dirty, self.derivation.dirty_items = self.derivation.dirty_items, {}
        total = 0
        for tenant, ids in dirty.items():
            ordered = sorted(ids)
            for start in range(0, len(ordered), ITEM_CHUNK):
                async with self.store.unit(tenant) as unit:
                    await self.derivation.item_insights(unit, ordered[start:start + ITEM_CHUNK])
            total += len(ordered)
        return total
