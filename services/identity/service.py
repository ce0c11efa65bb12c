"""Identity resolution use cases and rules: normalization, validation, and the resolve/merge plan. No grpc, no SQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from shared.errors import InvalidArgument, NotFound, Violations

MAX_SUBJECTS = 1000
MAX_VALUE_LENGTH = 512
MERGE_RULE = "exact_identity"
TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
_DIGITS = frozenset("0123456789")

# An identity as stored: (type, normalized value).
Key = tuple[str, str]


def normalize(id_type: str, value: str) -> str:
    """The value as stored and matched: email trimmed and lowercased, phone '+' and digits only, others trimmed."""
    if id_type == "email":
        return value.strip().lower()
    if id_type == "phone":
        stripped = value.strip()
        plus = "+" if stripped.startswith("+") else ""
        return plus + "".join(c for c in stripped if c in _DIGITS)
    return value.strip()


def validate_subjects(subjects: list[list[tuple[str, str]]]) -> list[list[Key]]:
    """Normalizes every identity; raises InvalidArgument with one violation per bad field.

    Returns each subject's distinct normalized identities in first-seen order.
    """
    violations = Violations()
    if not subjects:
        violations.add("subjects", "at least one subject is required")
    elif len(subjects) > MAX_SUBJECTS:
        violations.add("subjects", f"at most {MAX_SUBJECTS} subjects per call, got {len(subjects)}")
    normalized: list[list[Key]] = []
    for s, identities in enumerate(subjects):
        if not identities:
            violations.add(f"subjects[{s}].identities", "at least one identity is required")
        keys: list[Key] = []
        for i, (id_type, value) in enumerate(identities):
            path = f"subjects[{s}].identities[{i}]"
            if not TYPE_PATTERN.fullmatch(id_type):
                violations.add(f"{path}.type", "must match ^[a-z][a-z0-9_]{0,63}$ (for example email or device_id)")
                continue
            norm = normalize(id_type, value)
            problem = _value_problem(id_type, norm)
            if problem:
                violations.add(f"{path}.value", problem)
                continue
            if (id_type, norm) not in keys:
                keys.append((id_type, norm))
        normalized.append(keys)
    violations.raise_if_any()
    return normalized


def _value_problem(id_type: str, norm: str) -> str:
    if not norm:
        return "must not be empty (after normalization)"
    if len(norm) > MAX_VALUE_LENGTH:
        return f"must be at most {MAX_VALUE_LENGTH} characters, got {len(norm)}"
    if "\x00" in norm:
        return "must not contain NUL characters"
    if id_type == "phone" and norm == "+":
        return "a phone number needs at least one digit"
    return ""


def new_individual_id() -> str:
    """A fresh unified individual id: 'ind_' and 32 hex characters."""
    return "ind_" + uuid.uuid4().hex


@dataclass(frozen=True)
class Owner:
    """The survivor individual that owns an identity, with its creation time (the merge tie-breaker)."""

    individual_id: str
    created_at: datetime


@dataclass(frozen=True)
class Resolution:
    """How one subject resolved."""

    individual_id: str
    created: bool = False
    merged_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class NewIndividual:
    """An individual this call creates; merged_into is set when the same call already merged it away."""

    individual_id: str
    created_at: datetime
    merged_into: str | None = None


@dataclass(frozen=True)
class MergeRecord:
    """One merge, as recorded in the merge history."""

    survivor_id: str
    merged_id: str
    rule: str
    evidence: tuple[Key, ...]


@dataclass
class Plan:
    """Everything a ResolveIdentities call changes, computed from a snapshot of the owners of its identities."""

    resolutions: list[Resolution]
    new_individuals: list[NewIndividual] = field(default_factory=list)
    # New identities with their final owner.
    new_identities: list[tuple[Key, str]] = field(default_factory=list)
    # Individuals that existed before this call and are merged: id -> final survivor.
    redirects: dict[str, str] = field(default_factory=dict)
    merges: list[MergeRecord] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        """True when applying the plan changes anything."""
        return bool(self.new_individuals or self.new_identities or self.redirects or self.merges)


def plan_resolution(
    subjects: list[list[Key]],
    owners: dict[Key, Owner],
    now: datetime,
    *,
    lookup_only: bool,
    new_id: Callable[[], str] = new_individual_id,
) -> Plan:
    """Resolves subjects in order against the owners snapshot (rules only; nothing is stored here).

    None known -> a new individual (unless lookup_only). One -> attach the unknown identities. Several -> the
    oldest (created_at, then id) survives and the others merge into it. Every resolution names the final
    survivor of the whole call, and created says whether this call created that survivor.
    """
    owner_of = {key: o.individual_id for key, o in owners.items()}
    age = {o.individual_id: (o.created_at, o.individual_id) for o in owners.values()}
    parent: dict[str, str] = {}  # merged in this call -> the survivor at the time

    def find(individual_id: str) -> str:
        while individual_id in parent:
            individual_id = parent[individual_id]
        return individual_id

    created: list[str] = []
    interim: list[tuple[str, tuple[str, ...]]] = []
    merges: list[MergeRecord] = []
    for keys in subjects:
        found: list[str] = []
        for key in keys:
            if key in owner_of:
                survivor = find(owner_of[key])
                if survivor not in found:
                    found.append(survivor)
        if not found:
            if lookup_only:
                interim.append(("", ()))
                continue
            survivor = new_id()
            age[survivor] = (now, survivor)
            created.append(survivor)
        else:
            survivor = min(found, key=lambda i: age[i])
        merged = tuple(i for i in found if i != survivor)
        if lookup_only:
            interim.append((survivor, ()))
            continue
        for merged_id in merged:
            evidence = tuple(k for k in keys if k in owner_of and find(owner_of[k]) in (survivor, merged_id))
            merges.append(MergeRecord(survivor, merged_id, MERGE_RULE, evidence))
        for merged_id in merged:
            parent[merged_id] = survivor
        for key in keys:
            owner_of.setdefault(key, survivor)
        interim.append((survivor, merged))

    known_before = {o.individual_id for o in owners.values()}
    created_set = set(created)
    resolutions = [
        Resolution(find(i), find(i) in created_set, merged) if i else Resolution("") for i, merged in interim
    ]
    if lookup_only:
        return Plan(resolutions)
    return Plan(
        resolutions=resolutions,
        new_individuals=[NewIndividual(i, now, find(i) if i in parent else None) for i in created],
        new_identities=[(key, find(owner_of[key])) for key in owner_of if key not in owners],
        redirects={i: find(i) for i in parent if i in known_before},
        merges=merges,
    )


@dataclass(frozen=True)
class IndividualView:
    """A survivor individual with its identities and aliases, as GetIndividual returns it."""

    individual_id: str
    identities: list[Key]
    alias_ids: list[str]
    created_at: datetime


# Builds the plan from a fresh snapshot of owners and the database's current time.
Planner = Callable[[dict[Key, Owner], datetime], Plan]


class Repository(Protocol):
    """The storage port (postgres.py is the adapter; tests use an in-memory fake)."""

    async def lookup(self, tenant: str, keys: list[Key]) -> dict[Key, Owner]:
        """The current survivor owning each known key (one read, no locks)."""
        ...

    async def resolve(self, tenant: str, keys: list[Key], planner: Planner) -> Plan:
        """Locks the keys, reads their owners, plans with planner and applies the plan atomically."""
        ...

    async def get_individual(self, tenant: str, individual_id: str) -> IndividualView | None:
        """The survivor that individual_id is or was merged into, or None."""
        ...


def _all_keys(subjects: list[list[Key]]) -> list[Key]:
    return list(dict.fromkeys(key for keys in subjects for key in keys))


class IdentityService:
    """The identity use cases."""

    def __init__(self, repository: Repository, *, new_id: Callable[[], str] = new_individual_id):
        self.repository = repository
        self.new_id = new_id

    async def resolve(
        self, tenant: str, subjects: list[list[tuple[str, str]]], *, lookup_only: bool
    ) -> list[Resolution]:
        """Resolves each subject to a unified individual, creating, attaching and merging unless lookup_only."""
        normalized = validate_subjects(subjects)
        keys = _all_keys(normalized)
        # Fast path (and the whole of lookup_only): one read; most calls see only known identities of one person.
        owners = await self.repository.lookup(tenant, keys)
        snapshot = plan_resolution(normalized, owners, datetime.now(UTC), lookup_only=lookup_only, new_id=self.new_id)
        if lookup_only or not snapshot.writes:
            return snapshot.resolutions

        def planner(owners: dict[Key, Owner], locked_now: datetime) -> Plan:
            return plan_resolution(normalized, owners, locked_now, lookup_only=False, new_id=self.new_id)

        plan = await self.repository.resolve(tenant, keys, planner)
        return plan.resolutions

    async def get_individual(self, tenant: str, individual_id: str) -> IndividualView:
        """The survivor behind an individual id or alias; NOT_FOUND when the tenant has no such id."""
        if not individual_id:
            raise InvalidArgument([("unified_individual_id", "must not be empty")])
        # A NUL cannot be stored, so such an id cannot exist (and PostgreSQL would refuse the parameter).
        found = None if "\x00" in individual_id else await self.repository.get_individual(tenant, individual_id)
        if found is None:
            raise NotFound(
                f"no individual {individual_id!r} in this tenant",
                reason="INDIVIDUAL_NOT_FOUND",
                metadata={"unified_individual_id": individual_id},
            )
        return found
