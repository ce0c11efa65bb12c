"""The real-time resolve plan: snapshot types, plan_parts (plan_resolution whole), lookups and the known-subject
hot path (pure)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from services.identity import matching
from services.identity.batch_matching import STORED, BatchMatcher
from services.identity.matching import Record, Ruleset
from services.identity.model import (
    DEFAULT_MAX_CLUSTER,
    Key,
    MergeRecord,
    new_individual_id,
)
from services.identity.subjects import SubjectIn

UNIQUE_RULE = "unique_identity"


class Owner(NamedTuple):
    """A survivor individual with its creation time (the merge tie-breaker) and its count of source records.

    (Named tuples: a batch reads thousands of these, and a frozen dataclass takes several times as long to make.)"""

    individual_id: str
    created_at: datetime
    record_count: int = 0


class StoredRecord(NamedTuple):
    """A source record found through a block key, with its current survivor."""

    record_id: str
    owner: Owner
    record: Record
    blocks: Collection[str]


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
    suppressed: bool = False  # carries a forgotten individual's identity: not resolved


class NewIndividual(NamedTuple):
    """An individual this call creates; merged_into is set when the same call already merged it away."""

    individual_id: str
    created_at: datetime
    merged_into: str | None = None
    record_count: int = 0


class NewRecord(NamedTuple):
    """A source record this call stores."""

    record_id: str
    individual_id: str
    record: Record
    shared: tuple[Key, ...]
    blocks: tuple[str, ...]
    origin: str = ""  # the survivor the subject resolved to when it was met (later merges of the call aside)


@dataclass
class Plan:
    """Everything a ResolveIdentities call changes, computed from a snapshot."""

    resolutions: list[Resolution]
    new_individuals: list[NewIndividual] = field(default_factory=list)
    # (identity, its survivor, the survivor it was first seen with) of identities nobody held.
    new_identities: list[tuple[Key, str, str]] = field(default_factory=list)
    # Individuals stored before (by the call's earlier parts too) and merged now: id -> survivor (their count
    # becomes 0).
    redirects: dict[str, str] = field(default_factory=dict)
    merges: list[MergeRecord] = field(default_factory=list)
    new_records: list[NewRecord] = field(default_factory=list)
    # Source-record counts of survivors stored before (by the call's earlier parts too) that changed.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def writes(self) -> bool:
        """True when applying the plan changes anything."""
        return bool(self.new_individuals or self.new_identities or self.redirects or self.merges
                    or self.new_records or self.counts)


# Subjects planned per part of a write: each part is sent to PostgreSQL while the next one is planned.
PART = 300


def plan_resolution(subjects: list[SubjectIn], snap: Snapshot, now: datetime, ruleset: Ruleset, **options: Any
                    ) -> Plan:
    """The whole plan in one part (plan_parts with the same options)."""
    return next(plan_parts(subjects, snap, now, ruleset, **options, part=max(1, len(subjects))))


def _separate(separated: dict[str, set[str]], pairs: Collection[frozenset[str]]) -> None:
    """Each pair's two individuals as split apart by an unmerge, both ways."""
    for pair in pairs:
        a, b = tuple(pair)
        separated.setdefault(a, set()).add(b)
        separated.setdefault(b, set()).add(a)


def plan_parts(
    subjects: list[SubjectIn],
    snap: Snapshot,
    now: datetime,
    ruleset: Ruleset,
    *,
    lookup_only: bool,
    new_id: Callable[[], str] = new_individual_id,
    max_cluster: int = DEFAULT_MAX_CLUSTER,
    part: int = 0,
) -> Iterator[Plan]:
    """Resolves subjects in order against the snapshot (rules only; nothing is stored here), yielding the writes of
    each run of `part` subjects (PART by default) as a Plan as soon as that run is planned; the last part also
    carries every subject's resolution. Applied in order, the parts leave what one plan of the whole call would (ids,
    rows, merge events).

    Candidates are the owners of the subject's unique identities and the individuals of stored (or earlier
    in-batch) records that share a block key and satisfy a rule. The oldest (created_at, then id) survives;
    the others merge into it unless the merge would exceed max_cluster source records or undo an unmerge
    (then it is refused and recorded). Every resolution names the final survivor of the whole call.
    """
    part = part or PART
    owner_of = {key: o.individual_id for key, o in snap.owners.items()}
    model_of = {r.name: r.model.version for r in ruleset.rules if r.model is not None}
    info = snap.individuals()
    age = {i: (o.created_at, i) for i, o in info.items()}
    count = {i: o.record_count for i, o in info.items()}
    stored_count = dict(count)  # the record_count each stored individual has now (written parts included)
    parent: dict[str, str] = {}
    separated: dict[str, set[str]] = {i: set() for i in info}
    _separate(separated, snap.separated)

    def find(individual_id: str) -> str:
        while individual_id in parent:
            individual_id = parent[individual_id]
        return individual_id

    record_owner: dict[str, str] = {c.record_id: c.owner.individual_id for c in snap.candidates}
    known_records = {rid: o.individual_id for rid, o in snap.known_records.items()}
    record_owner.update(known_records)

    # Every rule match of the batch, a part at a time; the loop below keeps those with records stored by then.
    matcher = None if lookup_only else BatchMatcher(
        ruleset, [s.record for s in subjects], [s.blocks for s in subjects],
        [c.record for c in snap.candidates], [c.blocks for c in snap.candidates])
    absorbed, pairs = len(snap.candidates), len(snap.separated)
    created_ids: set[str] = set()  # every individual the call created, over all parts
    added: set[int] = set()  # positions of the subjects that stored a record
    interim: list[tuple[str, tuple[str, ...]]] = []
    plan = Plan([])
    for start in range(0, len(subjects), part):
        end = min(start + part, len(subjects))
        if matcher is not None and len(snap.candidates) > absorbed:
            # Candidates the repository read while the earlier parts were planned (the later parts' block keys):
            # their individuals (locked since) join those of the snapshot.
            more = snap.candidates[absorbed:]
            absorbed = len(snap.candidates)
            for c in more:
                i = c.owner.individual_id
                if i not in age:
                    age[i], count[i], stored_count[i] = (c.owner.created_at, i), c.owner.record_count, \
                        c.owner.record_count
                    separated.setdefault(i, set())
                record_owner.setdefault(c.record_id, i)
            if len(snap.separated) > pairs:
                _separate(separated, snap.separated)
                pairs = len(snap.separated)
            matcher.add_stored([c.record for c in more], [c.blocks for c in more])
        matches = [] if matcher is None else matcher.matches(start, end)
        created: list[str] = []
        merges: list[MergeRecord] = []
        new_records: list[NewRecord] = []
        new_keys: list[tuple[Key, str]] = []
        merged_now: list[str] = []
        touched: set[str] = set()
        for position in range(start, end):
            subject = subjects[position]
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
            for source, ref, matched_rule in matches[position - start]:
                if source == STORED:
                    record_id, matched = snap.candidates[ref].record_id, snap.candidates[ref].record
                elif ref in added:
                    record_id, matched = subjects[ref].record_id, subjects[ref].record
                else:
                    continue
                survivor = find(record_owner[record_id])
                if survivor not in found:
                    evidence = matching.evidence(matched_rule, subject.record, matched)
                    found[survivor] = (matched_rule.name, tuple(evidence))
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
                    version = model_of.get(rule, 0)
                    if other in separated.get(survivor, set()):
                        merges.append(MergeRecord(survivor, other, rule, ev, "REFUSED",
                                                  "the two were split apart by an unmerge", version))
                    elif total + count[other] > max_cluster:
                        merges.append(MergeRecord(
                            survivor, other, rule, ev, "REFUSED",
                            f"the cluster would have {total + count[other]} source records, above the limit of "
                            f"{max_cluster}", version))
                    else:
                        total += count[other]
                        merged.append(other)
                        merged_now.append(other)
                        merges.append(MergeRecord(survivor, other, rule, ev, model_version=version))
                        parent[other] = survivor
                        count[survivor] += count[other]
                        separated[survivor] |= separated.get(other, set())
                        for s in separated.get(other, set()):
                            separated.setdefault(s, set()).add(survivor)
            count[survivor] += 1
            touched.add(survivor)
            for key in subject.unique:
                if key not in owner_of:
                    owner_of[key] = survivor
                    new_keys.append((key, survivor))
            record_owner[subject.record_id] = survivor
            added.add(position)
            new_records.append(_new_record(subject, survivor))
            interim.append((survivor, tuple(merged)))
        if lookup_only:
            continue
        plan = Plan(
            resolutions=[],
            new_individuals=[NewIndividual(i, now, find(i) if i in parent else None, 0 if i in parent else count[i])
                             for i in created],
            new_identities=[(key, find(origin), origin) for key, origin in new_keys],
            # Stored individuals merged in this part (earlier parts wrote the merges before it).
            redirects={i: find(i) for i in merged_now if i in stored_count},
            merges=merges,
            new_records=[r._replace(individual_id=find(r.origin)) for r in new_records],
        )
        for i in touched:  # (a redirected individual's count becomes 0 with its redirect)
            if i in stored_count and i not in parent and count[i] != stored_count[i]:
                plan.counts[i] = stored_count[i] = count[i]
        stored_count.update((n.individual_id, n.record_count) for n in plan.new_individuals)
        created_ids.update(n.individual_id for n in plan.new_individuals)
        if end < len(subjects):
            yield plan
    for i, merged_ids in interim:
        final_id = find(i) if i else ""
        plan.resolutions.append(Resolution(final_id, final_id in created_ids, merged_ids))
    yield plan


def _new_record(subject: SubjectIn, owner: str) -> NewRecord:
    return NewRecord(subject.record_id, owner, subject.record, tuple(subject.shared), subject.distinct_blocks, owner)


def stored_whatever_matches(subjects: list[SubjectIn], snap: Snapshot) -> list[NewRecord]:
    """The records plan_resolution(subjects, snap) stores whatever the rules decide, in order, their owners left
    blank: so their block and searchable-identity rows can be written while the plan is made.

    A subject stores its record unless _already_known says otherwise, and that needs its record stored already (a
    candidate, a known record or an earlier subject's) or every unique identity owned (by the snapshot or an earlier
    subject). So a subject whose record is none of those and which has no unique identity, or one that neither the
    snapshot nor an earlier subject holds, stores its record in any plan."""
    seen = {c.record_id for c in snap.candidates}
    seen.update(snap.known_records)
    claimed = set(snap.owners)
    out = []
    for subject in subjects:
        record_id = subject.record_id
        if record_id not in seen and (not subject.unique or not claimed.issuperset(subject.unique)):
            out.append(_new_record(subject, ""))
        seen.add(record_id)
        claimed.update(subject.unique)
    return out


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


def contested(subjects: list[SubjectIn], survivors: dict[Key, str]) -> list[str]:
    """The survivors whose creation times a lookup needs: those of subjects whose unique identities belong to more
    than one individual (the oldest wins). Most subjects have one owner, and their lookup reads no individual."""
    out: set[str] = set()
    for subject in subjects:
        if len(subject.unique) > 1:
            found = {owner for key in subject.unique if (owner := survivors.get(key)) is not None}
            if len(found) > 1:
                out |= found
    return sorted(out)


def lookup_resolutions(subjects: list[SubjectIn], survivors: dict[Key, str], created: dict[str, datetime]
                       ) -> list[Resolution]:
    """Lookups (nothing created or merged): each subject's oldest owner of its unique identities, "" when none (what
    plan_resolution with lookup_only finds, without the bookkeeping a write needs); created holds the creation times
    of the contested survivors (one erased between the two reads has none, and owns nothing)."""
    out = []
    for subject in subjects:
        best = None
        for key in subject.unique:
            owner = survivors.get(key)
            if owner is None or owner == best:
                continue
            if best is not None:
                at, best_at = created.get(owner), created.get(best)
                if at is None or (best_at is not None and (best_at, best) < (at, owner)):
                    continue
            best = owner
        out.append(_NOBODY if best is None else Resolution(best))
    return out


_NOBODY = Resolution("")


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
