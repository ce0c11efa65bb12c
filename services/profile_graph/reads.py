"""Use cases that read: profiles, affinities and the live stream of an individual's events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime

from services.profile_graph import domain
from services.profile_graph.domain import (
    Affinity,
    Profile,
)
from services.profile_graph.ports import Store
from shared.errors import InvalidArgument, Violations

MAX_REPLAY = 1_000


class Reads:
    """GetProfile, GetProfiles and GetAffinities."""

    def __init__(self, store: Store, clock: Callable[[], datetime]):
        self.store = store
        self.clock = clock

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


class EventStream:
    """WatchEvents (an individual's events as they are appended, by any replica) and WatchProfileChanges (which of a
    tenant's profiles change, as each change commits)."""

    def __init__(self, store: Store):
        self.store = store

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

    async def watch_changes(self, tenant: str) -> AsyncIterator[tuple[bool, list[str], bool]]:
        """(live, changed individuals, whether any profile may have changed): first (True, [], False) once every
        later commit is heard, then one item per batch of committed changes, until the server drains."""
        async with self.store.watch_changes(tenant) as changes:
            yield True, [], False
            while (taken := await changes.take()) is not None:
                yield False, *taken
