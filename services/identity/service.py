"""Identity resolution use cases and rules: validation, the real-time resolve plan, full re-runs and unmerge.

No grpc, no SQL. Matching primitives (types, normalization, rules, blocking) live in matching.py.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

from services.identity import matching
from services.identity.matching import (
    BUILT_IN_TYPES,
    IdentityType,
    Record,
    Rule,
    Ruleset,
)
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Violations

MAX_SUBJECTS = 1000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY = 64
UNIQUE_RULE = "unique_identity"
RERUN_RULE = "ruleset_run"
DEFAULT_MAX_CLUSTER = 50_000
# Records sharing one block key beyond this are not all compared (a block that large is not selective).
DEFAULT_MAX_BLOCK = 200

# An identity as stored: (type, normalized value).
Key = tuple[str, str]


def new_individual_id() -> str:
    """A fresh unified individual id: 'ind_' and 32 hex characters."""
    return "ind_" + uuid.uuid4().hex


@dataclass(frozen=True)
class Config:
    """A tenant's identity types (built-ins merged with its overrides) and active ruleset."""

    types: dict[str, IdentityType]
    ruleset: Ruleset


@dataclass(frozen=True)
class SubjectIn:
    """A validated subject: its unique and searchable identities and its record (id and block keys on demand)."""

    unique: list[Key]
    shared: list[Key]
    record: Record
    ruleset: Ruleset = field(repr=False, compare=False)

    @cached_property
    def record_id(self) -> str:
        """The record's id (a hash of its content); a known subject with unique identities only needs none."""
        return matching.fingerprint(self.record)

    @cached_property
    def blocks(self) -> list[tuple[int, str]]:
        """(rule index, block key) pairs of the record, computed only for subjects that reach the rules."""
        return matching.block_keys(self.ruleset, self.record)

    @property
    def plain(self) -> bool:
        """Unique identities only: known when they all belong to one individual, whatever its records."""
        return not self.record.attributes and not self.shared


def _attribute_value(value: Any) -> str | None:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (int, str)):
        return str(value).strip()
    return None


def validate_subjects(
    subjects: list[list[tuple[str, str]]],
    config: Config,
    default_region: str,
    attributes: list[dict[str, Any]] | None = None,
) -> list[SubjectIn]:
    """Normalizes every identity and attribute; raises InvalidArgument with one violation per bad field."""
    v = Violations()
    if not subjects:
        v.add("subjects", "at least one subject is required")
    elif len(subjects) > MAX_SUBJECTS:
        v.add("subjects", f"at most {MAX_SUBJECTS} subjects per call, got {len(subjects)}")
    out: list[SubjectIn] = []
    for s, identities in enumerate(subjects):
        if not identities:
            v.add(f"subjects[{s}].identities", "at least one identity is required")
        unique: list[Key] = []
        shared: list[Key] = []
        by_type: dict[str, list[str]] = defaultdict(list)
        for i, (id_type, value) in enumerate(identities):
            path = f"subjects[{s}].identities[{i}]"
            kind = config.types.get(id_type)
            if kind is None:
                if not matching.TYPE_PATTERN.fullmatch(id_type):
                    v.add(f"{path}.type", "must match ^[a-z][a-z0-9_]{0,63}$ (for example email or device_id)")
                else:
                    v.add(f"{path}.type", f"unknown identity type {id_type!r}: create it with UpsertIdentityType")
                continue
            try:
                norm = matching.normalize_value(kind, value, default_region)
            except ValueError as problem:
                v.add(f"{path}.value", str(problem))
                continue
            target = unique if kind.unique else shared
            if (id_type, norm) not in target:
                target.append((id_type, norm))
                by_type[id_type].append(norm)
        attrs: dict[str, str] = {}
        raw = (attributes[s] if attributes and s < len(attributes) else None) or {}
        if len(raw) > MAX_ATTRIBUTES:
            v.add(f"subjects[{s}].attributes", f"at most {MAX_ATTRIBUTES} attributes, got {len(raw)}")
        for name, value in raw.items():
            path = f"subjects[{s}].attributes.{name}"
            text = _attribute_value(value)
            if not name or len(name) > MAX_ATTRIBUTE_KEY:
                v.add(f"subjects[{s}].attributes", f"attribute names must be 1-{MAX_ATTRIBUTE_KEY} characters")
            elif text is None:
                v.add(path, "must be a string, number, boolean or null")
            elif len(text) > matching.MAX_VALUE_LENGTH:
                v.add(path, f"must be at most {matching.MAX_VALUE_LENGTH} characters, got {len(text)}")
            elif "\x00" in text:
                v.add(path, "must not contain NUL characters")
            elif text:
                attrs[name] = text
        record = Record({t: sorted(vs) for t, vs in sorted(by_type.items())}, dict(sorted(attrs.items())))
        out.append(SubjectIn(unique, shared, record, config.ruleset))
    v.raise_if_any()
    return out


@dataclass(frozen=True)
class Owner:
    """A survivor individual with its creation time (the merge tie-breaker) and its count of source records."""

    individual_id: str
    created_at: datetime
    record_count: int = 0


@dataclass(frozen=True)
class StoredRecord:
    """A source record found through a block key, with its current survivor."""

    record_id: str
    owner: Owner
    record: Record
    blocks: frozenset[str]


@dataclass
class Snapshot:
    """What resolving a batch needs to know of the stored data."""

    owners: dict[Key, Owner] = field(default_factory=dict)
    shared: dict[Key, set[str]] = field(default_factory=dict)
    known_records: dict[str, Owner] = field(default_factory=dict)
    # Subjects with attributes that a stored record of the owner of their first unique identity contains (every
    # identity value and every attribute): position of the subject in the call -> that owner's id (also in owners).
    covered: dict[int, str] = field(default_factory=dict)
    candidates: list[StoredRecord] = field(default_factory=list)
    separated: set[frozenset[str]] = field(default_factory=set)

    def individuals(self) -> dict[str, Owner]:
        """Every individual the snapshot mentions, by id."""
        found = {o.individual_id: o for o in self.owners.values()}
        found.update({o.individual_id: o for o in self.known_records.values()})
        found.update({c.owner.individual_id: c.owner for c in self.candidates})
        return found


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
    record_count: int = 0


@dataclass(frozen=True)
class MergeRecord:
    """One entry of the merge history: kind MERGE, UNMERGE or REFUSED."""

    survivor_id: str
    merged_id: str
    rule: str
    evidence: tuple[Key, ...]
    kind: str = "MERGE"
    reason: str = ""


@dataclass(frozen=True)
class NewRecord:
    """A source record this call stores."""

    record_id: str
    individual_id: str
    record: Record
    shared: tuple[Key, ...]
    blocks: tuple[str, ...]


@dataclass
class Plan:
    """Everything a ResolveIdentities call changes, computed from a snapshot."""

    resolutions: list[Resolution]
    new_individuals: list[NewIndividual] = field(default_factory=list)
    new_identities: list[tuple[Key, str]] = field(default_factory=list)
    # Individuals that existed before this call and are merged: id -> final survivor.
    redirects: dict[str, str] = field(default_factory=dict)
    merges: list[MergeRecord] = field(default_factory=list)
    new_records: list[NewRecord] = field(default_factory=list)
    # Final source-record counts of pre-existing survivors that changed.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def writes(self) -> bool:
        """True when applying the plan changes anything."""
        return bool(self.new_individuals or self.new_identities or self.redirects or self.merges
                    or self.new_records or self.counts)


def plan_resolution(
    subjects: list[SubjectIn],
    snap: Snapshot,
    now: datetime,
    ruleset: Ruleset,
    *,
    lookup_only: bool,
    new_id: Callable[[], str] = new_individual_id,
    max_cluster: int = DEFAULT_MAX_CLUSTER,
) -> Plan:
    """Resolves subjects in order against the snapshot (rules only; nothing is stored here).

    Candidates are the owners of the subject's unique identities and the individuals of stored (or earlier
    in-batch) records that share a block key and satisfy a rule. The oldest (created_at, then id) survives;
    the others merge into it unless the merge would exceed max_cluster source records or undo an unmerge
    (then it is refused and recorded). Every resolution names the final survivor of the whole call.
    """
    owner_of = {key: o.individual_id for key, o in snap.owners.items()}
    info = snap.individuals()
    age = {i: (o.created_at, i) for i, o in info.items()}
    count = {i: o.record_count for i, o in info.items()}
    parent: dict[str, str] = {}
    separated = {i: set() for i in info}
    for pair in snap.separated:
        a, b = tuple(pair)
        separated.setdefault(a, set()).add(b)
        separated.setdefault(b, set()).add(a)

    def find(individual_id: str) -> str:
        while individual_id in parent:
            individual_id = parent[individual_id]
        return individual_id

    # Block key -> records (stored, then this batch's new ones) that carry it.
    blocks: dict[str, list[tuple[str, Record]]] = defaultdict(list)
    record_owner: dict[str, str] = {}
    for c in snap.candidates:
        record_owner[c.record_id] = c.owner.individual_id
        for key in c.blocks:
            blocks[key].append((c.record_id, c.record))
    known_records = {rid: o.individual_id for rid, o in snap.known_records.items()}
    record_owner.update(known_records)

    created: list[str] = []
    interim: list[tuple[str, tuple[str, ...]]] = []
    merges: list[MergeRecord] = []
    new_records: list[NewRecord] = []
    for position, subject in enumerate(subjects):
        found: dict[str, tuple[str, tuple[Key, ...]]] = {}
        for key in subject.unique:
            if key in owner_of:
                survivor = find(owner_of[key])
                rule, ev = found.get(survivor, (UNIQUE_RULE, ()))
                found[survivor] = (rule, ev + (key,))
        if lookup_only:
            interim.append((min(found, key=lambda i: age[i]), ()) if found else ("", ()))
            continue
        known = _already_known(position, subject, record_owner, owner_of, snap, find)
        if known is not None:
            interim.append((known, ()))
            continue
        matched_rules = _rule_matches(ruleset.rules, subject, blocks)
        for record_id, rule, ev in matched_rules:
            survivor = find(record_owner[record_id])
            found.setdefault(survivor, (rule.name, tuple(ev)))
        if not found:
            survivor = new_id()
            age[survivor] = (now, survivor)
            count[survivor] = 0
            separated[survivor] = set()
            created.append(survivor)
            merged: list[str] = []
        else:
            ordered = sorted(found, key=lambda i: age[i])
            survivor, merged = ordered[0], []
            total = count[survivor] + 1
            for other in ordered[1:]:
                rule, ev = found[other]
                if rule == UNIQUE_RULE and found[survivor][0] == UNIQUE_RULE:
                    both = set(ev) | set(found[survivor][1])
                    ev = tuple(k for k in subject.unique if k in both)
                elif rule == UNIQUE_RULE:
                    # The survivor was matched by a rule: that rule is what links the two.
                    rule, ev = found[survivor][0], found[survivor][1] + ev
                if other in separated.get(survivor, set()):
                    merges.append(MergeRecord(survivor, other, rule, ev, "REFUSED",
                                              "the two were split apart by an unmerge"))
                elif total + count[other] > max_cluster:
                    merges.append(MergeRecord(
                        survivor, other, rule, ev, "REFUSED",
                        f"the cluster would have {total + count[other]} source records, above the limit of "
                        f"{max_cluster}"))
                else:
                    total += count[other]
                    merged.append(other)
                    merges.append(MergeRecord(survivor, other, rule, ev))
                    parent[other] = survivor
                    count[survivor] += count[other]
                    separated[survivor] |= separated.get(other, set())
                    for s in separated.get(other, set()):
                        separated.setdefault(s, set()).add(survivor)
        count[survivor] += 1
        for key in subject.unique:
            owner_of.setdefault(key, survivor)
        record_owner[subject.record_id] = survivor
        for _, key in subject.blocks:
            blocks[key].append((subject.record_id, subject.record))
        new_records.append(NewRecord(subject.record_id, survivor, subject.record, tuple(subject.shared),
                                     tuple(k for _, k in subject.blocks)))
        interim.append((survivor, tuple(merged)))

    created_set = set(created)
    resolutions = [
        Resolution(find(i), find(i) in created_set, merged) if i else Resolution("") for i, merged in interim
    ]
    if lookup_only:
        return Plan(resolutions)
    final = {r.record_id: find(r.individual_id) for r in new_records}
    survivors = {find(i) for i in count}
    return Plan(
        resolutions=resolutions,
        new_individuals=[
            NewIndividual(i, now, find(i) if i in parent else None, 0 if i in parent else count[i]) for i in created
        ],
        new_identities=[(key, find(owner_of[key])) for key in owner_of if key not in snap.owners],
        redirects={i: find(i) for i in parent if i in info},
        merges=merges,
        new_records=[NewRecord(r.record_id, final[r.record_id], r.record, r.shared, r.blocks) for r in new_records],
        counts={i: count[i] for i in survivors if i in info and count[i] != info[i].record_count},
    )


def _already_known(
    position: int, subject: SubjectIn, record_owner: dict[str, str], owner_of: dict[Key, str], snap: Snapshot,
    find: Callable[[str], str],
) -> str | None:
    """The individual a subject already belongs to when it adds nothing new (nothing to store, no rule to run).

    That is: its record was seen before; or all its unique identities belong to one individual, that individual
    holds its searchable ones, and it has no attributes or a stored record of that individual contains the
    whole subject (every identity value and every attribute), so it can match nothing that record cannot.
    """
    owner = record_owner.get(subject.record_id) if record_owner else None  # (no record id computed for nothing)
    if owner is not None:
        return find(owner)
    only = _sole_owner(subject, owner_of, find)
    if only is None:
        return None
    if subject.record.attributes:
        covering = snap.covered.get(position)
        if covering is None or find(covering) != only:
            return None
    if all(only in {find(i) for i in snap.shared.get(key, ())} for key in subject.shared):
        return only
    return None


def _sole_owner(subject: SubjectIn, owner_of: dict[Key, str], find: Callable[[str], str]) -> str | None:
    """The one individual owning every unique identity of the subject, or None (none, several, or one unknown)."""
    if not subject.unique:
        return None
    first = owner_of.get(subject.unique[0])
    if first is None:
        return None
    only = find(first)
    for key in subject.unique[1:]:
        owner = owner_of.get(key)
        if owner is None or find(owner) != only:
            return None
    return only


def known_resolutions(subjects: list[SubjectIn], snap: Snapshot) -> list[Resolution] | None:
    """The resolutions when no subject adds anything new (the hot path: no rules, no writes), else None.

    Plain subjects are decided by their identities' owners alone; the others as _already_known says, from the
    records the snapshot looked up (by id, or as stored records containing them).
    """
    owner_of = {key: o.individual_id for key, o in snap.owners.items()}
    record_owner = {rid: o.individual_id for rid, o in snap.known_records.items()}
    out = []
    for position, subject in enumerate(subjects):
        if subject.plain:
            known = _sole_owner(subject, owner_of, _same)
        else:
            known = _already_known(position, subject, record_owner, owner_of, snap, _same)
        if known is None:
            return None
        out.append(Resolution(known))
    return out


def _same(individual_id: str) -> str:
    return individual_id


def _rule_matches(
    rules: tuple[Rule, ...], subject: SubjectIn, blocks: dict[str, list[tuple[str, Record]]]
) -> list[tuple[str, Rule, list[tuple[str, str]]]]:
    """Records sharing a block key with the subject that satisfy the rule of that key."""
    matched: dict[str, tuple[Rule, list[tuple[str, str]]]] = {}
    for index, key in subject.blocks:
        rule = rules[index]
        for record_id, record in blocks.get(key, ()):
            if record_id not in matched and matching.rule_holds(rule, subject.record, record):
                matched[record_id] = (rule, matching.evidence(rule, subject.record, record))
    return [(rid, rule, ev) for rid, (rule, ev) in matched.items()]


# Full re-run ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSource:
    """A source record as a re-run reads it."""

    record_id: str
    individual_id: str
    record: Record
    created_at: datetime


@dataclass
class TenantData:
    """Everything a re-run reads: records, survivors (id -> created_at), aliases, separations, identity owners."""

    records: list[StoredSource]
    survivors: dict[str, datetime]
    aliases: dict[str, str]
    separated: set[frozenset[str]]
    identity_owners: dict[Key, str]


@dataclass
class RerunPlan:
    """What a re-run writes."""

    record_owner: dict[str, str]  # changed records only
    identity_owner: dict[Key, str]  # changed unique identities only
    new_individuals: list[tuple[str, int]]  # (id, record count)
    survivor_counts: dict[str, int]  # existing ids that are survivors after the run
    redirects: dict[str, str]  # existing individual (survivor or alias) -> survivor
    blocks: list[tuple[str, str]]  # (block key, record id), the whole rebuilt index
    merges: list[MergeRecord]
    records: int = 0
    comparisons: int = 0
    clusters: int = 0
    kept_ids: int = 0
    new_ids: int = 0
    refused: int = 0


@dataclass
class Progress:
    """Progress of a run, updated by the matching thread and read by the streaming use case."""

    phase: str = "LOADING"
    records_processed: int = 0
    records_total: int = 0
    comparisons: int = 0
    done: RerunPlan | None = None


class _Clusters:
    """Union-find over record indexes with sizes, survivor anchors and the separations to respect."""

    def __init__(self, anchors: list[str], separated: set[frozenset[str]], max_cluster: int):
        self.parent = list(range(len(anchors)))
        self.size = [1] * len(anchors)
        self.anchors = [{a} for a in anchors]
        self.separated = separated
        self.max_cluster = max_cluster
        self.refusals: dict[tuple[int, int], str] = {}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.size[ra] + self.size[rb] > self.max_cluster:
            self.refusals.setdefault((min(ra, rb), max(ra, rb)), (
                f"the cluster would have {self.size[ra] + self.size[rb]} source records, above the limit of "
                f"{self.max_cluster}"))
            return False
        if self.separated and any(
            frozenset((x, y)) in self.separated for x in self.anchors[ra] for y in self.anchors[rb]
        ):
            self.refusals.setdefault((min(ra, rb), max(ra, rb)), "the two were split apart by an unmerge")
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        self.anchors[ra] |= self.anchors[rb]
        return True


def plan_rerun(
    data: TenantData,
    config: Config,
    *,
    new_id: Callable[[], str] = new_individual_id,
    max_cluster: int = DEFAULT_MAX_CLUSTER,
    max_block: int = DEFAULT_MAX_BLOCK,
    progress: Progress | None = None,
) -> RerunPlan:
    """Clusters every record from scratch (unique identities, then each rule within its blocks) and names the clusters.

    Naming keeps ids stable: each cluster takes the oldest existing survivor among its records' individuals that
    no other cluster took first (an individual split in two goes to the cluster holding most of its records);
    clusters without one get a new id; survivors left without a cluster become aliases of where most of their
    records went. Records are taken oldest first, so ties are decided the same way in every run.
    """
    progress = progress or Progress()
    records = sorted(data.records, key=lambda r: (r.created_at, r.record_id))
    n = len(records)
    progress.phase, progress.records_total = "MATCHING", n
    anchors = [data.aliases.get(r.individual_id, r.individual_id) for r in records]
    clusters = _Clusters(anchors, data.separated, max_cluster)

    # 1. Unique identities link every record carrying them.
    first_carrier: dict[Key, int] = {}
    for i, r in enumerate(records):
        for id_type, values in r.record.identities.items():
            kind = config.types.get(id_type)
            if kind is None or not kind.unique:
                continue
            for value in values:
                j = first_carrier.setdefault((id_type, value), i)
                if j != i:
                    clusters.union(j, i)
    # 2. Rules, within blocks.
    blocks: dict[str, list[int]] = defaultdict(list)
    block_rows: list[tuple[str, str]] = []
    rule_of_key: dict[str, Rule] = {}
    for i, r in enumerate(records):
        for index, key in matching.block_keys(config.ruleset, r.record):
            blocks[key].append(i)
            block_rows.append((key, r.record_id))
            rule_of_key[key] = config.ruleset.rules[index]
        progress.records_processed = i + 1
    comparisons = 0
    for key, members in blocks.items():
        rule = rule_of_key[key]
        members = members[:max_block]
        for x in range(1, len(members)):
            b = members[x]
            for a in members[:x]:
                if clusters.find(a) == clusters.find(b):
                    continue
                comparisons += 1
                if matching.rule_holds(rule, records[b].record, records[a].record):
                    clusters.union(a, b)
        progress.comparisons = comparisons

    # 3. Name the clusters.
    by_cluster: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        by_cluster[clusters.find(i)].append(i)
    overlap: dict[tuple[str, int], int] = defaultdict(int)
    for root, members in by_cluster.items():
        for i in members:
            overlap[(anchors[i], root)] += 1
    pairs = sorted(overlap, key=lambda p: (data.survivors.get(p[0], datetime.max.replace(tzinfo=UTC)), p[0],
                                           -overlap[p], by_cluster[p[1]][0]))
    name: dict[int, str] = {}
    taken: set[str] = set()
    for individual, root in pairs:
        if root not in name and individual not in taken and individual in data.survivors:
            name[root] = individual
            taken.add(individual)
    new_individuals = []
    for root in sorted(by_cluster, key=lambda r: by_cluster[r][0]):
        if root not in name:
            name[root] = new_id()
            new_individuals.append((name[root], len(by_cluster[root])))
    # Survivors that lost their name follow most of their records.
    redirects: dict[str, str] = {}
    merges: list[MergeRecord] = []
    best: dict[str, tuple[int, int]] = {}
    for (individual, root), k in overlap.items():
        if individual not in taken and (individual not in best or k > best[individual][0]):
            best[individual] = (k, root)
    for individual, (_, root) in sorted(best.items()):
        redirects[individual] = name[root]
        merges.append(MergeRecord(name[root], individual, RERUN_RULE, (), "MERGE"))
    # Aliases of a redirected survivor follow it (chains stay flat).
    for alias, survivor in data.aliases.items():
        if survivor in redirects:
            redirects[alias] = redirects[survivor]
    refusal_events = []
    for (a, b), reason in sorted(clusters.refusals.items()):
        ra, rb = name[clusters.find(a)], name[clusters.find(b)]
        if ra != rb:
            refusal_events.append(MergeRecord(ra, rb, RERUN_RULE, (), "REFUSED", reason))
    merges += refusal_events[:1000]

    record_owner = {}
    for root, members in by_cluster.items():
        for i in members:
            if records[i].individual_id != name[root]:
                record_owner[records[i].record_id] = name[root]
    identity_owner = {}
    for key, i in first_carrier.items():
        owner = name[clusters.find(i)]
        if data.identity_owners.get(key) != owner:
            identity_owner[key] = owner
    new_set = {i for i, _ in new_individuals}
    plan = RerunPlan(
        record_owner=record_owner,
        identity_owner=identity_owner,
        new_individuals=new_individuals,
        survivor_counts={name[r]: len(m) for r, m in by_cluster.items() if name[r] not in new_set},
        redirects=redirects,
        blocks=block_rows,
        merges=merges,
        records=n,
        comparisons=comparisons,
        clusters=len(by_cluster),
        kept_ids=len(by_cluster) - len(new_individuals),
        new_ids=len(new_individuals),
        refused=len(clusters.refusals),
    )
    progress.phase = "WRITING"
    return plan


# Unmerge --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEvent:
    """A merge-history row as unmerge reads it."""

    event_id: int
    kind: str
    survivor_id: str
    other_id: str


@dataclass
class UnmergeData:
    """What unmerging one alias reads: its row, the history, the survivor's records and unique identities."""

    individual_id: str
    merged_into: str | None
    aliases: dict[str, str]  # alias -> survivor, for the survivor's aliases
    history: list[HistoryEvent]
    records: list[StoredSource]
    origins: dict[str, str]  # record id -> the individual it was first stored under
    identities: dict[Key, str]  # the survivor's unique identities -> the individual they were first seen with


@dataclass
class UnmergePlan:
    """What an unmerge writes, and what it tells the caller."""

    individual_id: str
    survivor_id: str
    members: list[str]  # the split-off individual and the aliases that move with it
    records: list[str]  # record ids that move to individual_id
    identities: list[Key]  # unique identities that move to individual_id
    reported: list[Key]  # every identity (unique and searchable) of the split-off individual's records
    event: MergeRecord


def plan_unmerge(data: UnmergeData, config: Config) -> UnmergePlan:
    """Splits the alias (and what had been merged into it before it was merged away) back off its survivor.

    Records first stored under those individuals go back, unique identities first seen with them go back, and
    records whose unique identities now all belong to the split-off individual follow them.
    """
    survivor = data.merged_into
    if survivor is None:
        raise FailedPrecondition(
            f"{data.individual_id!r} is not merged into another individual", reason="NOT_MERGED",
            metadata={"unified_individual_id": data.individual_id})
    merge_event = max((e.event_id for e in data.history if e.kind == "MERGE" and e.other_id == data.individual_id),
                      default=None)
    members = {data.individual_id}
    for e in sorted(data.history, key=lambda e: e.event_id):
        if merge_event is not None and e.event_id >= merge_event:
            break
        if e.kind == "MERGE" and e.survivor_id in members:
            members.add(e.other_id)
        elif e.kind == "UNMERGE" and e.other_id in members:
            members.discard(e.other_id)
    members = {m for m in members if m == data.individual_id or data.aliases.get(m) == survivor}
    identities = [key for key, origin in data.identities.items() if origin in members]
    moved_keys = set(identities)
    moving = []
    for r in data.records:
        keys = [(t, v) for t, vs in r.record.identities.items() if config.types.get(t, BUILT_IN_TYPES.get(t))
                and config.types.get(t, BUILT_IN_TYPES.get(t)).unique for v in vs]
        if data.origins.get(r.record_id) in members or (keys and all(k in moved_keys for k in keys)):
            moving.append(r)
    reported = sorted(moved_keys | {(t, v) for r in moving for t, vs in r.record.identities.items() for v in vs})
    event = MergeRecord(survivor, data.individual_id, "unmerge", tuple(reported), "UNMERGE")
    return UnmergePlan(data.individual_id, survivor, sorted(members), [r.record_id for r in moving],
                       sorted(identities), reported, event)


# Views ------------------------------------------------------------------------------------------------------------


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


# Builds the plan from a fresh snapshot and the database's current time.
Planner = Callable[[Snapshot, datetime], Plan]


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


class Repository(Protocol):
    """The storage port (postgres.py is the adapter; tests use an in-memory fake)."""

    async def lookup_owners(self, tenant: str, keys: list[Key]) -> dict[Key, Owner]:
        """The current survivor owning each known unique key (one read, no locks)."""
        ...

    async def lookup(self, tenant: str, query: SnapshotQuery) -> Snapshot:
        """Owners, holders of searchable keys and known records (one read, no locks, no block candidates)."""
        ...

    async def resolve(self, tenant: str, query: SnapshotQuery, planner: Planner) -> Plan:
        """Locks the keys, reads the full snapshot, plans with planner and applies the plan atomically."""
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

    async def config(self, tenant: str) -> Config:
        """The tenant's types and active ruleset, cached for config_ttl_seconds (writes here refresh it)."""
        cached = self._config.get(tenant)
        if cached and time.monotonic() - cached[0] < self.settings.config_ttl_seconds:
            return cached[1]
        overrides, ruleset = await self.repository.load_config(tenant)
        types = dict(BUILT_IN_TYPES)
        types.update({t.name: t for t in overrides})
        config = Config(types, ruleset or matching.DEFAULT_RULESET)
        self._config[tenant] = (time.monotonic(), config)
        return config

    async def resolve(
        self, tenant: str, subjects: list[list[tuple[str, str]]], *, lookup_only: bool,
        attributes: list[dict[str, Any]] | None = None,
    ) -> list[Resolution]:
        """Resolves each subject to a unified individual, creating, attaching and merging unless lookup_only."""
        config = await self.config(tenant)
        subs = validate_subjects(subjects, config, self.settings.default_region, attributes)
        unique = _all_keys([s.unique for s in subs])
        if lookup_only:
            snap = Snapshot(owners=await self.repository.lookup_owners(tenant, unique))
            return plan_resolution(subs, snap, datetime.now(UTC), config.ruleset, lookup_only=True).resolutions
        shared = _all_keys([s.shared for s in subs])
        covering = [(n, s.unique[0], s.record) for n, s in enumerate(subs) if s.record.attributes and s.unique]
        # Fast path: one read, no rules, no writes; most calls only repeat what is known. Plain subjects (unique
        # identities only) are known by their identities' owners alone, subjects with attributes and a unique
        # identity by a stored record that contains them (their own one included): only the others are looked up
        # by record id (the write path looks up all, so a record seen before is never stored twice).
        fast = SnapshotQuery(unique=unique, shared=shared, covering=covering, record_ids=list(dict.fromkeys(
            s.record_id for s in subs if not s.plain and not (s.record.attributes and s.unique))))
        known = known_resolutions(subs, await self.repository.lookup(tenant, fast))
        if known is not None:
            return known
        block_keys = list(dict.fromkeys(k for s in subs for _, k in s.blocks))
        query = SnapshotQuery(
            unique=unique, shared=shared, record_ids=list(dict.fromkeys(s.record_id for s in subs)),
            blocks=block_keys, covering=covering,
            lock_keys=sorted({f"{t}\x1f{v}" for t, v in unique} | {f"b\x1f{k}" for k in block_keys}),
        )

        def planner(snap: Snapshot, now: datetime) -> Plan:
            return plan_resolution(subs, snap, now, config.ruleset, lookup_only=False, new_id=self.new_id,
                                   max_cluster=self.settings.max_cluster)

        plan = await self.repository.resolve(tenant, query, planner)
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
            elif not re.fullmatch(r"[A-Z]{2}", kind.default_region) or not matching.phonenumbers.\
                    country_code_for_region(kind.default_region):
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
        self, tenant: str, rules: list[tuple[str, list[tuple[str, str, str, str]]]], custom_attributes: list[str]
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
        if page_size < 0 or page_size > 1000:
            v.add("page_size", "must be between 0 and 1000 (0 means 100)")
        before = None
        if page_token:
            if not page_token.isdigit() or len(page_token) > 18:
                v.add("page_token", "is not a token returned by ListMergeEvents")
            else:
                before = int(page_token)
        if "\x00" in individual_id:
            v.add("unified_individual_id", "must not contain NUL characters")
        v.raise_if_any()
        limit = page_size or 100
        events = await self.repository.list_merge_events(tenant, individual_id, before, limit + 1)
        token = str(events[limit - 1].event_id) if len(events) > limit else ""
        return events[:limit], token

    async def unpropagated_merge_events(self, tenant: str, page_size: int, min_age_seconds: float
                                        ) -> list[MergeEventView]:
        """The merge outbox: merges and unmerges the rest of the suite may not have applied yet, oldest first."""
        v = Violations()
        if page_size < 0 or page_size > 1000:
            v.add("page_size", "must be between 0 and 1000 (0 means 100)")
        if min_age_seconds < 0:
            v.add("min_age_seconds", "must not be negative")
        v.raise_if_any()
        return await self.repository.unpropagated_merge_events(tenant, min_age_seconds, page_size or 100)

    async def mark_merge_events_propagated(self, tenant: str, event_ids: list[str]) -> int:
        """Marks outbox entries done (idempotent)."""
        v = Violations()
        if len(event_ids) > 1000:
            v.add("event_ids", "at most 1000 ids")
        numbers = []
        for i, event_id in enumerate(event_ids):
            if not event_id.isdigit():
                v.add(f"event_ids[{i}]", "must be an event id (a number)")
            else:
                numbers.append(int(event_id))
        v.raise_if_any()
        return await self.repository.mark_merge_events_propagated(tenant, numbers) if numbers else 0


def _not_found(individual_id: str) -> NotFound:
    return NotFound(f"no individual {individual_id!r} in this tenant", reason="INDIVIDUAL_NOT_FOUND",
                    metadata={"unified_individual_id": individual_id})
