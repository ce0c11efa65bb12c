"""An in-memory identity repository with the resolve, config and history methods of services/identity/postgres.py.

Re-runs and unmerges are tested on their pure planners (plan_rerun, plan_unmerge) and on the real database.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from services.identity.matching import BUILT_IN_TYPES, IdentityType, Record, Ruleset
from services.identity.model import Key, MergeRecord
from services.identity.ports import (
    EarlyRecords,
    IndividualView,
    MergeEventView,
    Planner,
    SnapshotQuery,
)
from services.identity.probabilistic import MatchModel
from services.identity.resolution import Owner, Plan, Snapshot, StoredRecord
from shared.errors import FailedPrecondition


@dataclass
class Row:
    created_at: datetime
    merged_into: str | None = None
    record_count: int = 0


@dataclass
class StoredRow:
    individual_id: str
    record: Record
    shared: tuple[Key, ...]
    blocks: tuple[str, ...]


class FakeClock:
    """A clock that moves one second per reading, so creation order is unambiguous."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def _contains(stored: Record, record: Record) -> bool:
    """True when the stored record has every identity value and every attribute of record (jsonb @> on both)."""
    return all(set(values) <= set(stored.identities.get(t, ())) for t, values in record.identities.items()) and all(
        stored.attributes.get(name) == value for name, value in record.attributes.items())


class FakeRepository:
    """Per-tenant dicts; resolve applies a plan atomically like the SQL adapter does."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.individuals: dict[tuple[str, str], Row] = {}
        self.identities: dict[tuple[str, str, str], str] = {}
        self.records: dict[tuple[str, str], StoredRow] = {}
        self.merges: list[tuple[str, MergeRecord]] = []
        self.propagated: dict[str, set[int]] = {}
        self.types: dict[tuple[str, str], IdentityType] = {}
        self.rulesets: dict[tuple[str, int], Ruleset] = {}
        self.models: dict[tuple[str, int], tuple[int, MatchModel, dict]] = {}
        self.resolve_calls = 0
        self.lookup_calls = 0
        self.config_loads = 0

    def _owner(self, tenant: str, individual_id: str) -> Owner:
        row = self.individuals[(tenant, individual_id)]
        return Owner(individual_id, row.created_at, row.record_count)

    async def lookup_survivors(self, tenant: str, keys: list[Key]) -> dict[Key, str]:
        self.lookup_calls += 1
        return {key: owner.individual_id for key, owner in self._owners(tenant, keys).items()}

    async def created_at(self, tenant: str, individual_ids: list[str]) -> dict[str, datetime]:
        return {i: row.created_at for i in individual_ids if (row := self.individuals.get((tenant, i))) is not None}

    def _owners(self, tenant: str, keys: list[Key]) -> dict[Key, Owner]:
        found = {}
        for key in keys:
            owner = self.identities.get((tenant, *key))
            if owner is not None:
                found[key] = self._owner(tenant, owner)
        return found

    def _snapshot(self, tenant: str, query: SnapshotQuery, with_candidates: bool) -> Snapshot:
        snap = Snapshot(owners=self._owners(tenant, query.unique))
        for (t, record_id), stored in self.records.items():
            if t != tenant:
                continue
            for key in stored.shared:
                if key in query.shared:
                    snap.shared.setdefault(key, set()).add(stored.individual_id)
            if record_id in query.record_ids:
                snap.known_records[record_id] = self._owner(tenant, stored.individual_id)
            for covered_id, key, record in query.covering:
                owner = self.identities.get((tenant, *key))
                if owner == stored.individual_id and _contains(stored.record, record):
                    snap.covered[covered_id] = owner
            if with_candidates and set(stored.blocks) & set(query.blocks):
                snap.candidates.append(StoredRecord(record_id, self._owner(tenant, stored.individual_id),
                                                    stored.record, frozenset(stored.blocks)))
        return snap

    async def lookup(self, tenant: str, query: SnapshotQuery) -> Snapshot:
        self.lookup_calls += 1
        return self._snapshot(tenant, query, with_candidates=False)

    async def resolve(self, tenant: str, query: SnapshotQuery, planner: Planner, early: EarlyRecords | None = None
                      ) -> Plan:
        self.resolve_calls += 1
        now = self.clock()
        for plan in planner(self._snapshot(tenant, query.whole(), with_candidates=True), now):
            self._apply(tenant, now, plan)
        return plan

    def _apply(self, tenant: str, now, plan: Plan) -> None:
        for new in plan.new_individuals:
            self.individuals[(tenant, new.individual_id)] = Row(now, new.merged_into, new.record_count)
        for merged, survivor in plan.redirects.items():
            for (t, individual_id), row in self.individuals.items():
                if t == tenant and (individual_id == merged or row.merged_into == merged):
                    row.merged_into = survivor
                    if individual_id == merged:
                        row.record_count = 0
            for (t, id_type, value), owner in list(self.identities.items()):
                if t == tenant and owner == merged:
                    self.identities[(t, id_type, value)] = survivor
            for (t, _), stored in self.records.items():
                if t == tenant and stored.individual_id == merged:
                    stored.individual_id = survivor
        for key, owner, _ in plan.new_identities:
            assert (tenant, *key) not in self.identities
            self.identities[(tenant, *key)] = owner
        for r in plan.new_records:
            self.records[(tenant, r.record_id)] = StoredRow(r.individual_id, r.record, r.shared, r.blocks)
        for individual_id, count in plan.counts.items():
            self.individuals[(tenant, individual_id)].record_count = count
        self.merges += [(tenant, m) for m in plan.merges]

    async def get_individual(self, tenant: str, individual_id: str) -> IndividualView | None:
        row = self.individuals.get((tenant, individual_id))
        if row is None:
            return None
        survivor = row.merged_into or individual_id
        shared = {k for (t, _), s in self.records.items() if t == tenant and s.individual_id == survivor
                  for k in s.shared}
        unique = {(ty, v) for (tn, ty, v), o in self.identities.items() if tn == tenant and o == survivor}
        return IndividualView(
            individual_id=survivor,
            identities=sorted(unique | shared),
            alias_ids=sorted(
                i for (tn, i), r in self.individuals.items() if tn == tenant and r.merged_into == survivor
            ),
            created_at=self.individuals[(tenant, survivor)].created_at,
            record_count=self.individuals[(tenant, survivor)].record_count,
        )

    async def load_match_model(self, tenant: str, ruleset_version: int, rule: str) -> MatchModel | None:
        found = [(v, m) for (t, v), (rv, m, _) in self.models.items() if t == tenant and rv == ruleset_version
                 and m.rule == rule]
        return max(found, key=lambda x: x[0])[1] if found else None

    async def get_match_model(self, tenant: str, version: int) -> tuple[MatchModel, int, dict, datetime] | None:
        found = self.models.get((tenant, version))
        return None if found is None else (found[1], found[0], found[2], self.clock())

    async def store_match_model(self, tenant: str, ruleset_version: int, model: MatchModel, summary: dict) -> int:
        version = 1 + max((v for t, v in self.models if t == tenant), default=0)
        self.models[(tenant, version)] = (ruleset_version, replace(model, version=version), summary)
        return version

    async def source_records(self, tenant: str) -> list[Record]:
        return [s.record for (t, _), s in self.records.items() if t == tenant]

    async def load_config(self, tenant: str) -> tuple[list[IdentityType], Ruleset | None]:
        self.config_loads += 1
        versions = sorted(v for t, v in self.rulesets if t == tenant)
        return ([k for (t, _), k in self.types.items() if t == tenant],
                self.rulesets[(tenant, versions[-1])] if versions else None)

    async def upsert_type(self, tenant: str, kind: IdentityType) -> None:
        current = self.types.get((tenant, kind.name)) or BUILT_IN_TYPES.get(kind.name)
        in_use = any(t == tenant and ty == kind.name for t, ty, _ in self.identities) or any(
            t == tenant and any(k[0] == kind.name for k in s.shared) for (t, _), s in self.records.items())
        if current is not None and current.unique != kind.unique and in_use:
            raise FailedPrecondition("in use", reason="IDENTITY_TYPE_IN_USE")
        self.types[(tenant, kind.name)] = kind

    async def create_ruleset(self, tenant: str, ruleset: Ruleset) -> Ruleset:
        version = 1 + max((v for t, v in self.rulesets if t == tenant), default=0)
        stored = Ruleset(version, ruleset.rules, ruleset.custom_attributes, self.clock(), ruleset.shared_blocks)
        self.rulesets[(tenant, version)] = stored
        return stored

    async def get_ruleset(self, tenant: str, version: int) -> Ruleset | None:
        return self.rulesets.get((tenant, version))

    async def list_merge_events(self, tenant: str, individual_id: str, before: int | None, limit: int
                                ) -> list[MergeEventView]:
        events = [
            MergeEventView(i + 1, m.kind, m.survivor_id, m.merged_id, m.rule, list(m.evidence), m.reason,
                           self.clock.now)
            for i, (t, m) in enumerate(self.merges) if t == tenant
        ]
        events = [e for e in events if (not individual_id or individual_id in (e.survivor_id, e.other_id))
                  and (before is None or e.event_id < before)]
        return sorted(events, key=lambda e: -e.event_id)[:limit]

    async def unpropagated_merge_events(self, tenant: str, min_age_seconds: float, limit: int) -> list[MergeEventView]:
        done = self.propagated.setdefault(tenant, set())
        events = [e for e in await self.list_merge_events(tenant, "", None, 10**9)
                  if e.kind in ("MERGE", "UNMERGE") and e.event_id not in done]
        return sorted(events, key=lambda e: e.event_id)[:limit]

    async def mark_merge_events_propagated(self, tenant: str, event_ids: list[int]) -> int:
        done = self.propagated.setdefault(tenant, set())
        fresh = {i for i in event_ids if i not in done and i <= len(self.merges)}
        done |= fresh
        return len(fresh)

    async def mark_merges_propagated(self, tenant: str, merges: list[tuple[str, str]]) -> int:
        pairs = set(merges)
        ids = [e.event_id for e in await self.list_merge_events(tenant, "", None, 10**9)
               if e.kind == "MERGE" and (e.survivor_id, e.other_id) in pairs]
        return await self.mark_merge_events_propagated(tenant, ids)

    def count(self, tenant: str) -> tuple[int, int]:
        """(individuals, identities) stored for a tenant."""
        return (
            sum(1 for t, _ in self.individuals if t == tenant),
            sum(1 for t, _, _ in self.identities if t == tenant),
        )
