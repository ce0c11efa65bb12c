"""The identity use cases (IdentityService) and its settings: no grpc, no SQL."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import phonenumbers

from services.identity import matching, resolution
from services.identity.matching import BUILT_IN_TYPES, IdentityType, Ruleset
from services.identity.model import (
    DEFAULT_MAX_BLOCK,
    DEFAULT_MAX_CLUSTER,
    Config,
    Key,
    new_individual_id,
)
from services.identity.ports import (
    IndividualView,
    MergeEventView,
    QueryRest,
    Repository,
    SnapshotQuery,
)
from services.identity.rerun import Progress, RerunPlan, TenantData, plan_rerun
from services.identity.resolution import (
    Plan,
    Resolution,
    Snapshot,
    contested,
    known_resolutions,
    lookup_resolutions,
    plan_parts,
    stored_whatever_matches,
)
from services.identity.subjects import validate_subjects
from services.identity.unmerge import UnmergePlan, plan_unmerge
from shared import paging
from shared.errors import InvalidArgument, NotFound, Violations, quote


def _all_keys(keys: list[list[Key]]) -> list[Key]:
    return list(dict.fromkeys(key for ks in keys for key in ks))


@dataclass(frozen=True)
class Settings:
    """The service's tunables."""

    default_region: str = "US"
    max_cluster: int = DEFAULT_MAX_CLUSTER
    max_block: int = DEFAULT_MAX_BLOCK
    config_ttl_seconds: float = 5.0


class IdentityService:
    """The identity use cases."""

    def __init__(self, repository: Repository, *, new_id: Callable[[], str] = new_individual_id,
                 settings: Settings = Settings()):
        self.repository = repository
        self.new_id = new_id
        self.settings = settings
        self._config: dict[str, tuple[float, Config]] = {}
        # The suppression check (privacy.py): which normalized unique identities are tombstoned; None: none are.
        self.blocked: Callable[[str, list[Key]], Awaitable[set[Key]]] | None = None

    def forget_config(self, tenant: str) -> None:
        """Drops the tenant's cached config (its next use reads it again)."""
        self._config.pop(tenant, None)

    async def config(self, tenant: str) -> Config:
        """The tenant's types and active ruleset, cached for config_ttl_seconds (writes here refresh it)."""
        cached = self._config.get(tenant)
        if cached and time.monotonic() - cached[0] < self.settings.config_ttl_seconds:
            return cached[1]
        overrides, ruleset = await self.repository.load_config(tenant)
        types = dict(BUILT_IN_TYPES)
        types.update({t.name: t for t in overrides})
        ruleset = ruleset or matching.DEFAULT_RULESET
        if (rule := ruleset.probabilistic_rule) is not None:
            ruleset = ruleset.with_model(await self.repository.load_match_model(tenant, ruleset.version, rule.name))
        config = Config(types, ruleset)
        self._config[tenant] = (time.monotonic(), config)
        return config

    async def resolve(
        self, tenant: str, subjects: list[list[tuple[str, str]]], *, lookup_only: bool,
        attributes: list[dict[str, Any]] | None = None,
    ) -> list[Resolution]:
        """Resolves each subject to a unified individual, creating, attaching and merging unless lookup_only."""
        config = await self.config(tenant)
        subs = validate_subjects(subjects, config, self.settings.default_region, attributes)
        return await self._resolve(tenant, subs, config, lookup_only, check=self.blocked is not None)

    async def _suppressed(self, tenant: str, subs: list, config: Config, lookup_only: bool, unknown: list[Key]
                          ) -> list[Resolution] | None:
        """None when no subject carries a suppressed identity; else every resolution, the suppressed ones marked.

        Only identities nobody owns are checked: forgetting deletes the identities it tombstones (and nothing
        re-creates them), so a known identity is never suppressed and the hot path (all known) costs nothing."""
        assert self.blocked is not None
        blocked = await self.blocked(tenant, unknown) if unknown else set()
        if not blocked:
            return None
        # Subjects carrying an identity of a forgotten individual are not resolved at all (their events are dropped).
        kept = [n for n, s in enumerate(subs) if blocked.isdisjoint(s.unique)]
        out = [Resolution("", suppressed=True)] * len(subs)
        if kept:
            resolved = await self._resolve(tenant, [subs[n] for n in kept], config, lookup_only, check=False)
            for n, resolution in zip(kept, resolved):
                out[n] = resolution
        return out

    async def _resolve(self, tenant: str, subs: list, config: Config, lookup_only: bool, *, check: bool
                       ) -> list[Resolution]:
        unique = _all_keys([s.unique for s in subs])
        if lookup_only:
            survivors = await self.repository.lookup_survivors(tenant, unique)
            if check and (out := await self._suppressed(
                    tenant, subs, config, lookup_only, [k for k in unique if k not in survivors])) is not None:
                return out
            ties = contested(subs, survivors)
            return lookup_resolutions(subs, survivors, await self.repository.created_at(tenant, ties) if ties else {})
        shared = _all_keys([s.shared for s in subs])
        covering = [(n, s.unique[0], s.record) for n, s in enumerate(subs) if s.record.attributes and s.unique]
        # Fast path: one read, no rules, no writes; most calls only repeat what is known. Plain subjects (unique
        # identities only) are known by their identities' owners alone, subjects with attributes and a unique
        # identity by a stored record that contains them (their own one included): only the others are looked up
        # by record id (the write path looks up all, so a record seen before is never stored twice). A larger call of
        # other subjects first looks up the owners of a few of their identities: one without an owner means the call
        # is not all known, and a batch of new subjects skips the read (and sending every subject's contents for it).
        plain = all(s.plain for s in subs)
        probe = _probe(subs) if not plain and len(subs) >= PROBE_FROM else []
        if probe and len(await self.repository.lookup_survivors(tenant, probe)) < len(probe):
            seen = None  # a probed identity has no owner: the call is not all known, and nothing else is read fast
        else:
            fast = SnapshotQuery(unique=unique, shared=shared, covering=covering, record_ids=list(dict.fromkeys(
                s.record_id for s in subs if not s.plain and not (s.record.attributes and s.unique))))
            read = self.repository.lookup(tenant, fast)
            seen = await (read if plain else _meanwhile(read, subs))
            known = known_resolutions(subs, seen)
            if known is not None:
                return known
        owned = seen.owners if seen is not None else {}
        if check and (out := await self._suppressed(
                tenant, subs, config, lookup_only, [k for k in unique if k not in owned])) is not None:
            return out
        # The first part's record ids and block keys now; the later parts' (most of a large call's) are made by the
        # repository while it reads what the first part needs.
        first, later = subs[:resolution.PART], subs[resolution.PART:]
        block_keys = list(dict.fromkeys(k for s in first for _, k in s.blocks))
        record_ids = list(dict.fromkeys(s.record_id for s in first))

        @functools.cache
        def rest() -> QueryRest:
            first_keys = set(block_keys)
            blocks = [k for k in dict.fromkeys(k for s in later for _, k in s.blocks) if k not in first_keys]
            known = set(record_ids)
            return QueryRest([r for r in dict.fromkeys(s.record_id for s in later) if r not in known], blocks,
                             _block_locks(blocks))

        # Under the locks the covering check is sent again only for subjects whose identity had an owner in the fast
        # read: the others are new (their contents are not sent twice). One that gained an owner meanwhile (a
        # concurrent call) is then resolved by the rules and stores its record, as if no stored record held it.
        query = SnapshotQuery(
            unique=unique, shared=shared, record_ids=record_ids, blocks=block_keys,
            covering=covering if seen is None else [c for c in covering if c[1] in owned],
            lock_keys=[f"{t}\x1f{v}" for t, v in unique] + _block_locks(block_keys),
            rest=rest if later else None,
        )

        def planner(snap: Snapshot, now: datetime) -> Iterator[Plan]:
            return plan_parts(subs, snap, now, config.ruleset, lookup_only=False, new_id=self.new_id,
                              max_cluster=self.settings.max_cluster)

        plan = await self.repository.resolve(tenant, query, planner, lambda snap: stored_whatever_matches(subs, snap))
        return plan.resolutions

    async def get_individual(self, tenant: str, individual_id: str) -> IndividualView:
        """The survivor behind an individual id or alias; NOT_FOUND when the tenant has no such id."""
        if not individual_id:
            raise InvalidArgument([("unified_individual_id", "must not be empty")])
        found = None if "\x00" in individual_id else await self.repository.get_individual(tenant, individual_id)
        if found is None:
            raise _not_found(individual_id)
        return found

    async def upsert_identity_type(self, tenant: str, kind: IdentityType) -> IdentityType:
        """Creates or replaces a type; built-in names override the built-in."""
        v = Violations()
        if not matching.TYPE_PATTERN.fullmatch(kind.name):
            v.add("identity_type.name", "must match ^[a-z][a-z0-9_]{0,63}$")
        if kind.normalization not in matching.NORMALIZATIONS:
            v.add("identity_type.normalization", "must be TRIM, TRIM_LOWERCASE, EMAIL or PHONE")
        if kind.default_region:
            if kind.normalization != matching.PHONE:
                v.add("identity_type.default_region", "only a PHONE type takes a default region")
            elif not re.fullmatch(r"[A-Z]{2}", kind.default_region) or \
                    not phonenumbers.country_code_for_region(kind.default_region):
                v.add("identity_type.default_region", "must be a known ISO 3166 region code such as US or GB")
        v.raise_if_any()
        stored = IdentityType(kind.name, kind.unique, kind.normalization, kind.default_region,
                              kind.name in BUILT_IN_TYPES)
        await self.repository.upsert_type(tenant, stored)
        self._config.pop(tenant, None)
        return stored

    async def list_identity_types(self, tenant: str) -> list[IdentityType]:
        """Every type of the tenant, by name."""
        self._config.pop(tenant, None)
        return sorted((await self.config(tenant)).types.values(), key=lambda t: t.name)

    async def create_ruleset(
        self, tenant: str, rules: list[tuple[str, list[tuple[str, str, str, str]], Any]], custom_attributes: list[str]
    ) -> Ruleset:
        """Validates and stores the next ruleset version; it is active at once."""
        self._config.pop(tenant, None)
        config = await self.config(tenant)
        ruleset = matching.validate_ruleset(rules, custom_attributes, config.types)
        stored = await self.repository.create_ruleset(tenant, ruleset)
        self._config.pop(tenant, None)
        return stored

    async def get_ruleset(self, tenant: str, version: int) -> Ruleset:
        """The active ruleset (version 0) or a given version."""
        if version < 0:
            raise InvalidArgument([("version", "must be 0 (the active ruleset) or a version number")])
        if version == 0:
            self._config.pop(tenant, None)
            return (await self.config(tenant)).ruleset
        found = await self.repository.get_ruleset(tenant, version)
        if found is None:
            raise NotFound(f"no ruleset version {version} in this tenant", reason="RULESET_NOT_FOUND",
                           metadata={"version": str(version)})
        return found

    async def run_ruleset(self, tenant: str) -> AsyncIterator[Progress | RerunPlan]:
        """Re-runs the active ruleset over all source records; yields Progress while running, then the plan."""
        self._config.pop(tenant, None)
        config = await self.config(tenant)
        progress = Progress()

        async def compute(data: TenantData) -> RerunPlan:
            progress.records_total = len(data.records)
            return await asyncio.to_thread(
                plan_rerun, data, config, new_id=self.new_id, max_cluster=self.settings.max_cluster,
                max_block=self.settings.max_block, progress=progress)

        task = asyncio.create_task(self.repository.rerun(tenant, compute))
        try:
            yield progress
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done():
                    yield progress
            plan = task.result()
        finally:
            if not task.done():
                task.cancel()
        yield plan

    async def unmerge(self, tenant: str, individual_id: str) -> UnmergePlan:
        """Splits an alias back off its survivor; the two are kept apart afterwards."""
        if not individual_id:
            raise InvalidArgument([("unified_individual_id", "must not be empty")])
        config = await self.config(tenant)
        found = None if "\x00" in individual_id else await self.repository.unmerge(
            tenant, individual_id, lambda data: plan_unmerge(data, config))
        if found is None:
            raise _not_found(individual_id)
        return found

    async def list_merge_events(
        self, tenant: str, individual_id: str, page_size: int, page_token: str
    ) -> tuple[list[MergeEventView], str]:
        """One page of the merge history, newest first."""
        v = Violations()
        listing = f"merge_events/{individual_id}"
        limit = paging.page_size(page_size, 100, 1000, v)
        key = paging.decode_token(page_token, listing, (int,), v)
        if "\x00" in individual_id:
            v.add("unified_individual_id", "must not contain NUL characters")
        v.raise_if_any()
        events = await self.repository.list_merge_events(tenant, individual_id, key[0] if key else None, limit + 1)
        return paging.next_page(events, limit, listing, lambda e: [e.event_id])

    async def unpropagated_merge_events(self, tenant: str, page_size: int, min_age_seconds: float
                                        ) -> list[MergeEventView]:
        """The merge outbox: merges and unmerges the rest of the suite may not have applied yet, oldest first."""
        v = Violations()
        size = paging.page_size(page_size, 100, 1000, v)
        if min_age_seconds < 0:
            v.add("min_age_seconds", "must not be negative")
        v.raise_if_any()
        return await self.repository.unpropagated_merge_events(tenant, min_age_seconds, size)

    async def mark_merge_events_propagated(self, tenant: str, event_ids: list[str],
                                           merges: Sequence[tuple[str, str]] = ()) -> int:
        """Marks outbox entries done (idempotent), by event id or by (survivor, merged) pair of a MERGE."""
        v = Violations()
        if len(event_ids) > 1000:
            v.add("event_ids", "at most 1000 ids")
        if len(merges) > 1000:
            v.add("merges", "at most 1000 pairs")
        for i, (survivor, merged) in enumerate(merges):
            if not survivor:
                v.add(f"merges[{i}].survivor_individual_id", "must not be empty")
            if not merged:
                v.add(f"merges[{i}].merged_individual_id", "must not be empty")
        numbers = []
        for i, event_id in enumerate(event_ids):
            if not event_id.isdigit():
                v.add(f"event_ids[{i}]", "must be an event id (a number)")
            else:
                numbers.append(int(event_id))
        v.raise_if_any()
        marked = await self.repository.mark_merge_events_propagated(tenant, numbers) if numbers else 0
        if merges:
            marked += await self.repository.mark_merges_propagated(tenant, list(merges))
        return marked


# Subjects prepared between two looks at a running read (a few milliseconds of work).
_SLICE = 50

# Subjects whose first unique identity is looked up before the fast read of a call of PROBE_FROM or more subjects
# with attributes or searchable identities (a smaller call is read at once: its contents cost little to send).
PROBES = 8
PROBE_FROM = 32


def _block_locks(blocks: list[str]) -> list[str]:
    """The lock keys of block keys (apart from identities' by their prefix)."""
    return [f"b\x1f{k}" for k in blocks]


def _probe(subs: list) -> list[Key]:
    """The first unique identity of up to PROBES subjects spread over the call, among those only owners can settle
    (unique identities, and attributes or nothing else), each once: if one has no owner, the fast read cannot settle
    the call."""
    owned = [s.unique[0] for s in subs if s.unique and (s.plain or s.record.attributes)]
    step = max(1, len(owned) // PROBES)
    return list(dict.fromkeys(owned[::step][:PROBES]))


async def _meanwhile(read: Awaitable[Snapshot], subs: list) -> Snapshot:
    """Awaits the fast read while preparing, slice by slice, what the write path needs of the subjects the read
    cannot settle by owners alone (record ids and block keys, computed once per subject): the read's PostgreSQL
    work and this process's overlap. Stops preparing when the read is back (most such calls need none of it)."""
    task = asyncio.ensure_future(read)
    try:
        for start in range(0, len(subs), _SLICE):
            await asyncio.sleep(0)  # the read goes on (sent, or its answer taken in)
            if task.done():
                break
            for subject in subs[start:start + _SLICE]:
                if not subject.plain:
                    _ = subject.record_id, subject.blocks
        return await task
    finally:
        if not task.done():
            task.cancel()


def _not_found(individual_id: str) -> NotFound:
    return NotFound(f"no individual {quote(individual_id)} in this tenant", reason="INDIVIDUAL_NOT_FOUND",
                    metadata={"unified_individual_id": individual_id})
