"""Use cases of the profile graph: append, read, reassign, items, insights and segments. No gRPC, no SQL."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from services.profile_graph import domain
from services.profile_graph.domain import (
    AppendOutcome, AttributeUpdate, InsightDef, Item, Member, NewEvent, Profile, RuleCache, SegmentDef,
)
from shared.errors import InvalidArgument, NotFound, Violations

# Individuals are recomputed in chunks of this size when a definition changes for everyone.
RECOMPUTE_CHUNK = 2_000


class Unit(Protocol):
    """One transaction on one tenant's profile data (postgres.py, or the in-memory fake of the unit tests)."""

    async def lock_definitions(self, exclusive: bool) -> None: ...
    async def insert_events(self, events: Sequence[NewEvent]) -> set[str]: ...
    async def touch_individuals(self, ids: Sequence[str]) -> None: ...
    async def individual_exists(self, individual_id: str) -> bool: ...
    async def individual_ids(self, after: str, limit: int) -> list[str]: ...
    async def merge_attributes(self, updates: Sequence[AttributeUpdate]) -> None: ...
    async def definitions(self) -> tuple[list[InsightDef], list[SegmentDef]]: ...
    async def compute_insights(self, ids: Sequence[str]) -> dict[str, dict[str, float]]: ...
    async def profile_states(self, ids: Sequence[str]) -> dict[str, tuple[dict, set[str]]]: ...
    async def change_memberships(self, entered: Sequence[tuple[str, str]], exited: Sequence[tuple[str, str]]) -> None: ...
    async def move_individuals(self, from_ids: Sequence[str], to_id: str) -> tuple[int, list[tuple[str, str]]]: ...
    async def save_insight(self, insight: InsightDef) -> None: ...
    async def save_segment(self, segment: SegmentDef) -> None: ...
    async def member_count(self, segment: str) -> int: ...


class Store(Protocol):
    """The profile graph's storage: transactions for writes, single reads for the hot path."""

    def unit(self, tenant: str) -> AbstractAsyncContextManager[Unit]: ...
    async def get_profile(self, tenant: str, individual_id: str, parts: set[str], event_limit: int) -> Profile: ...
    async def list_insights(self, tenant: str, after: str, limit: int) -> list[InsightDef]: ...
    async def list_segments(self, tenant: str, after: str, limit: int) -> list[SegmentDef]: ...
    async def segment_exists(self, tenant: str, name: str) -> bool: ...
    async def list_members(self, tenant: str, segment: str, after: str, limit: int) -> list[Member]: ...
    async def tenants_with_windowed_insights(self) -> list[str]: ...
    async def upsert_items(self, tenant: str, items: Sequence[Item]) -> None: ...
    async def get_items(self, tenant: str, ids: Sequence[str]) -> list[Item]: ...


class ProfileGraph:
    """The Update and Compute stages, and the reads of what they produce."""

    def __init__(self, store: Store, rules: RuleCache | None = None):
        self.store = store
        self.rules = rules or RuleCache()

    # ---- update & compute ---------------------------------------------------------------------------------

    async def append_events(self, tenant: str, events: list[NewEvent]) -> list[AppendOutcome]:
        """Stores new events once per message id, merges attributes, recomputes insights and memberships."""
        domain.validate_events(events)
        first_index: dict[str, int] = {}
        for i, e in enumerate(events):
            first_index.setdefault(e.message_id, i)
        unique = [events[i] for i in sorted(first_index.values())]
        outcomes = [AppendOutcome(e.message_id, duplicate=True) for e in events]
        if not unique:
            return outcomes
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=False)
            new_ids = await unit.insert_events(unique)
            fresh = [e for e in unique if e.message_id in new_ids]
            changes: dict[str, tuple[list[str], list[str]]] = {}
            if fresh:
                touched = sorted({e.individual_id for e in fresh})
                await unit.touch_individuals(touched)
                await unit.merge_attributes(domain.merge_attributes(fresh))
                changes = await self._recompute(unit, tenant, touched)
        last_of: dict[str, int] = {}
        for i, e in enumerate(events):
            if first_index[e.message_id] == i and e.message_id in new_ids:
                outcomes[i].duplicate = False
                last_of[e.individual_id] = i
        for individual_id, i in last_of.items():
            entered, exited = changes.get(individual_id, ([], []))
            outcomes[i].entered, outcomes[i].exited = entered, exited
        return outcomes

    async def reassign(self, tenant: str, from_ids: list[str], to_id: str) -> int:
        """Moves merged individuals' events and attributes to the survivor and recomputes it; idempotent."""
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
        v.raise_if_any()
        from_ids = sorted(set(from_ids))
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=False)
            survivor_known = await unit.individual_exists(to_id)
            moved, left = await unit.move_individuals(from_ids, to_id)
            if left:
                await unit.change_memberships([], left)
            if not survivor_known and not moved:
                return 0
            await unit.touch_individuals([to_id])
            await self._recompute(unit, tenant, [to_id])
        return moved

    async def _recompute(self, unit: Unit, tenant: str, ids: list[str]) -> dict[str, tuple[list[str], list[str]]]:
        """Recomputes insight values and segment memberships of ids; returns (entered, exited) per individual."""
        insights, segments = await unit.definitions()
        values = await unit.compute_insights(ids) if insights else {}
        if not segments:
            return {}
        programs = self.rules.programs(tenant, segments)
        states = await unit.profile_states(ids)
        names = [d.name for d in insights]
        entered: list[tuple[str, str]] = []
        exited: list[tuple[str, str]] = []
        changes: dict[str, tuple[list[str], list[str]]] = {}
        for individual_id in ids:
            attributes, current = states.get(individual_id, ({}, set()))
            own = values.get(individual_id, {})
            insight_map = {n: float(own.get(n, 0.0)) for n in names}
            now_in = domain.evaluate_memberships(programs, attributes, insight_map, current)
            came = sorted(now_in - current)
            went = sorted(current - now_in)
            if came or went:
                changes[individual_id] = (came, went)
                entered += [(individual_id, s) for s in came]
                exited += [(individual_id, s) for s in went]
        if entered or exited:
            await unit.change_memberships(entered, exited)
        return changes

    async def _recompute_everyone(self, unit: Unit, tenant: str) -> None:
        after = ""
        while ids := await unit.individual_ids(after, RECOMPUTE_CHUNK):
            await self._recompute(unit, tenant, ids)
            after = ids[-1]

    async def refresh_windowed_insights(self) -> int:
        """Recomputes every individual of tenants with a windowed insight, so old events age out of values and
        segments without new events; one short transaction per chunk. Returns how many individuals were refreshed."""
        refreshed = 0
        for tenant in await self.store.tenants_with_windowed_insights():
            after = ""
            while True:
                async with self.store.unit(tenant) as unit:
                    await unit.lock_definitions(exclusive=False)
                    ids = await unit.individual_ids(after, RECOMPUTE_CHUNK)
                    if ids:
                        await self._recompute(unit, tenant, ids)
                if not ids:
                    break
                refreshed += len(ids)
                after = ids[-1]
        return refreshed

    # ---- reads --------------------------------------------------------------------------------------------

    async def get_profile(self, tenant: str, individual_id: str, mask_paths: list[str], limit: int) -> Profile:
        """The profile of one individual, restricted to the mask; an unknown individual gives an empty profile."""
        v = Violations()
        if not individual_id:
            v.add("unified_individual_id", "must not be empty")
        v.raise_if_any()
        parts = domain.profile_parts(mask_paths)
        return await self.store.get_profile(tenant, individual_id, parts, domain.event_limit(limit))

    # ---- items --------------------------------------------------------------------------------------------

    async def upsert_items(self, tenant: str, items: list[Item]) -> int:
        """Inserts or replaces items by id (a later duplicate in the request wins)."""
        v = Violations()
        if len(items) > domain.MAX_ITEMS:
            v.add("items", f"at most {domain.MAX_ITEMS} items per call, got {len(items)}")
            v.raise_if_any()
        for i, item in enumerate(items):
            if not item.item_id:
                v.add(f"items[{i}].item_id", "must not be empty")
        v.raise_if_any()
        unique = list({item.item_id: item for item in items}.values())
        if unique:
            await self.store.upsert_items(tenant, unique)
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

    # ---- insights -----------------------------------------------------------------------------------------

    async def upsert_insight(self, tenant: str, insight: InsightDef | None) -> InsightDef:
        """Saves an insight definition and recomputes insights and memberships of every individual."""
        domain.validate_insight(insight)
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=True)
            await unit.save_insight(insight)
            await self._recompute_everyone(unit, tenant)
        return insight

    async def list_insights(self, tenant: str, size: int, token: str) -> tuple[list[InsightDef], str]:
        """A page of insight definitions by name, and the token of the next page."""
        limit = domain.page_size(size, 100, 1_000)
        after = domain.decode_page_token(token, "insights")
        rows = await self.store.list_insights(tenant, after, limit + 1)
        return rows[:limit], domain.encode_page_token("insights", rows[limit - 1].name) if len(rows) > limit else ""

    # ---- segments -----------------------------------------------------------------------------------------

    async def upsert_segment(self, tenant: str, segment: SegmentDef | None) -> SegmentDef:
        """Compiles and saves a segment, then recomputes memberships of every individual."""
        domain.validate_segment_fields(segment)
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=True)
            insights, _ = await unit.definitions()
            program = domain.compile_rule(segment.rule, [d.name for d in insights])
            self.rules.put(tenant, segment.name, segment.rule, program)
            await unit.save_segment(segment)
            await self._recompute_everyone(unit, tenant)
            count = await unit.member_count(segment.name)
        return SegmentDef(segment.name, segment.description, segment.rule, count)

    async def list_segments(self, tenant: str, size: int, token: str) -> tuple[list[SegmentDef], str]:
        """A page of segments by name with their member counts, and the token of the next page."""
        limit = domain.page_size(size, 100, 1_000)
        after = domain.decode_page_token(token, "segments")
        rows = await self.store.list_segments(tenant, after, limit + 1)
        return rows[:limit], domain.encode_page_token("segments", rows[limit - 1].name) if len(rows) > limit else ""

    async def list_members(self, tenant: str, segment: str, size: int, token: str) -> tuple[list[Member], str]:
        """A page of a segment's members ordered by unified id, and the token of the next page."""
        if not segment:
            raise InvalidArgument([("segment", "must not be empty")])
        limit = domain.page_size(size, 1_000, 10_000)
        after = domain.decode_page_token(token, f"members/{segment}")
        if not await self.store.segment_exists(tenant, segment):
            raise NotFound(f"segment {segment!r} does not exist", reason="SEGMENT_NOT_FOUND",
                           metadata={"segment": segment})
        rows = await self.store.list_members(tenant, segment, after, limit + 1)
        token = domain.encode_page_token(f"members/{segment}", rows[limit - 1].individual_id) if len(rows) > limit else ""
        return rows[:limit], token

