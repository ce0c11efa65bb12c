"""An in-memory identity repository with the same methods and semantics as services/identity/postgres.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.identity.service import IndividualView, Key, MergeRecord, Owner, Plan, Planner


@dataclass
class Row:
    created_at: datetime
    merged_into: str | None = None


class FakeClock:
    """A clock that moves one second per reading, so creation order is unambiguous."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class FakeRepository:
    """Per-tenant dicts; resolve applies a plan atomically like the SQL adapter does."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.individuals: dict[tuple[str, str], Row] = {}
        self.identities: dict[tuple[str, str, str], str] = {}
        self.merges: list[tuple[str, MergeRecord]] = []
        self.resolve_calls = 0
        self.lookup_calls = 0

    async def lookup(self, tenant: str, keys: list[Key]) -> dict[Key, Owner]:
        self.lookup_calls += 1
        return self._owners(tenant, keys)

    def _owners(self, tenant: str, keys: list[Key]) -> dict[Key, Owner]:
        found = {}
        for key in keys:
            owner = self.identities.get((tenant, *key))
            if owner is not None:
                found[key] = Owner(owner, self.individuals[(tenant, owner)].created_at)
        return found

    async def resolve(self, tenant: str, keys: list[Key], planner: Planner) -> Plan:
        self.resolve_calls += 1
        now = self.clock()
        plan = planner(self._owners(tenant, keys), now)
        for new in plan.new_individuals:
            self.individuals[(tenant, new.individual_id)] = Row(now, new.merged_into)
        for merged, survivor in plan.redirects.items():
            for (t, individual_id), row in self.individuals.items():
                if t == tenant and (individual_id == merged or row.merged_into == merged):
                    row.merged_into = survivor
            for (t, id_type, value), owner in list(self.identities.items()):
                if t == tenant and owner == merged:
                    self.identities[(t, id_type, value)] = survivor
        for key, owner in plan.new_identities:
            assert (tenant, *key) not in self.identities
            self.identities[(tenant, *key)] = owner
        self.merges += [(tenant, m) for m in plan.merges]
        return plan

    async def get_individual(self, tenant: str, individual_id: str) -> IndividualView | None:
        row = self.individuals.get((tenant, individual_id))
        if row is None:
            return None
        survivor = row.merged_into or individual_id
        return IndividualView(
            individual_id=survivor,
            identities=sorted((t, v) for (tn, t, v), o in self.identities.items() if tn == tenant and o == survivor),
            alias_ids=sorted(
                i for (tn, i), r in self.individuals.items() if tn == tenant and r.merged_into == survivor
            ),
            created_at=self.individuals[(tenant, survivor)].created_at,
        )

    def count(self, tenant: str) -> tuple[int, int]:
        """(individuals, identities) stored for a tenant."""
        return (
            sum(1 for t, _ in self.individuals if t == tenant),
            sum(1 for t, _, _ in self.identities if t == tenant),
        )
