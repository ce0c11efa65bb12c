"""The storage port of the identity service: the Repository protocol, its queries and its read views."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from services.identity.matching import IdentityType, Record, Ruleset
from services.identity.model import Key
from services.identity.probabilistic import MatchModel
from services.identity.rerun import RerunPlan, TenantData
from services.identity.resolution import NewRecord, Plan, Snapshot
from services.identity.unmerge import UnmergeData, UnmergePlan


@dataclass(frozen=True)
class IndividualView:
    """A survivor individual with its identities and aliases, as GetIndividual returns it."""

    individual_id: str
    identities: list[Key]
    alias_ids: list[str]
    created_at: datetime
    record_count: int = 0


@dataclass(frozen=True)
class MergeEventView:
    """A merge-history row as ListMergeEvents returns it."""

    event_id: int
    kind: str
    survivor_id: str
    other_id: str
    rule: str
    evidence: list[Key]
    reason: str
    at: datetime
    model_version: int = 0


# Builds the plan from a fresh snapshot and the database's current time, in parts to apply in order as they come
# (resolution.plan_parts); the last part carries the resolutions. Candidates the repository appends to the snapshot
# between two parts (those of the later block keys, read while the first part is planned) join the next part.
Planner = Callable[[Snapshot, datetime], Iterator[Plan]]
# The records any plan from that snapshot stores (resolution.stored_whatever_matches), known before planning.
EarlyRecords = Callable[[Snapshot], list[NewRecord]]


@dataclass(frozen=True)
class QueryRest:
    """The later parts' share of a SnapshotQuery: what their subjects add to the first part's."""

    record_ids: list[str]
    blocks: list[str]
    lock_keys: list[str]


@dataclass(frozen=True)
class SnapshotQuery:
    """What the write path reads under its locks."""

    unique: list[Key]
    shared: list[Key]
    record_ids: list[str]
    blocks: list[str] = field(default_factory=list)
    lock_keys: list[str] = field(default_factory=list)
    # (position in the call, first unique identity, record) of the subjects with attributes: does a stored record
    # of that identity's owner contain the record?
    covering: list[tuple[int, Key, Record]] = field(default_factory=list)
    # The later parts' record ids, block keys and their lock keys, made on demand (None: the fields above hold
    # everything). The repository may make them while the first part's reads run, then take their locks without
    # waiting (a key another call holds starts the call over, every lock then taken in one order).
    rest: Callable[[], QueryRest] | None = None

    def whole(self) -> SnapshotQuery:
        """The same query with the later parts' share made and added."""
        if self.rest is None:
            return self
        rest = self.rest()
        return replace(self, record_ids=self.record_ids + rest.record_ids, blocks=self.blocks + rest.blocks,
                       lock_keys=self.lock_keys + rest.lock_keys, rest=None)


class Repository(Protocol):
    """The storage port (postgres.py is the adapter; tests use an in-memory fake)."""

    async def lookup_survivors(self, tenant: str, keys: list[Key]) -> dict[Key, str]:
        """The id of the current survivor owning each known unique key (one read, no locks)."""
        ...

    async def created_at(self, tenant: str, individual_ids: list[str]) -> dict[str, datetime]:
        """When each known individual was created (the tie-breaker between owners; one read, no locks)."""
        ...

    async def lookup(self, tenant: str, query: SnapshotQuery) -> Snapshot:
        """Owners, holders of searchable keys and known records (one read, no locks, no block candidates)."""
        ...

    async def resolve(self, tenant: str, query: SnapshotQuery, planner: Planner, early: EarlyRecords | None = None
                      ) -> Plan:
        """Locks the keys, reads the full snapshot, plans with planner and applies its parts atomically (the rows of
        early's records, and each part, may be written while the next part is planned); returns the last part (it
        carries every resolution)."""
        ...

    async def get_individual(self, tenant: str, individual_id: str) -> IndividualView | None:
        """The survivor that individual_id is or was merged into, or None."""
        ...

    async def load_config(self, tenant: str) -> tuple[list[IdentityType], Ruleset | None]:
        """The tenant's identity type overrides and its latest ruleset (None: the default)."""
        ...

    async def upsert_type(self, tenant: str, kind: IdentityType) -> None:
        """Stores a type; FailedPrecondition when its uniqueness changes while identities of it exist."""
        ...

    async def create_ruleset(self, tenant: str, ruleset: Ruleset) -> Ruleset:
        """Stores the ruleset as the next version and returns it with its version and time."""
        ...

    async def get_ruleset(self, tenant: str, version: int) -> Ruleset | None:
        """The given version, or None."""
        ...

    async def load_match_model(self, tenant: str, ruleset_version: int, rule: str) -> MatchModel | None:
        """The newest model trained for that rule of that ruleset version, or None."""
        ...

    async def get_match_model(self, tenant: str, version: int) -> tuple[MatchModel, int, dict, datetime] | None:
        """A model by version with its ruleset version, training summary and time, or None."""
        ...

    async def store_match_model(self, tenant: str, ruleset_version: int, model: MatchModel, summary: dict) -> int:
        """Stores a trained model as the tenant's next model version and returns that version."""
        ...

    async def source_records(self, tenant: str) -> list[Record]:
        """Every source record of the tenant, oldest first (what a model is trained on)."""
        ...

    async def rerun(self, tenant: str, compute: Callable[[TenantData], Any]) -> RerunPlan:
        """Under the tenant's exclusive lock: reads everything, awaits compute for the plan, applies it."""
        ...

    async def unmerge(self, tenant: str, individual_id: str, planner: Callable[[UnmergeData], UnmergePlan]
                      ) -> UnmergePlan | None:
        """Under the tenant's exclusive lock: reads, plans and applies an unmerge; None when the id is unknown."""
        ...

    async def list_merge_events(self, tenant: str, individual_id: str, before: int | None, limit: int
                                ) -> list[MergeEventView]:
        """Merge-history rows with event_id < before (all when None), newest first."""
        ...

    async def unpropagated_merge_events(self, tenant: str, min_age_seconds: float, limit: int) -> list[MergeEventView]:
        """Merges and unmerges not marked propagated, at least min_age_seconds old, oldest first."""
        ...

    async def mark_merge_events_propagated(self, tenant: str, event_ids: list[int]) -> int:
        """Marks the events propagated; returns how many were newly marked."""
        ...

    async def mark_merges_propagated(self, tenant: str, merges: list[tuple[str, str]]) -> int:
        """Marks the MERGE events of these (survivor, merged) pairs propagated; returns how many were newly marked."""
        ...
