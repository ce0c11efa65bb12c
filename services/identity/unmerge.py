"""Unmerge planning: which individuals, records and identities split back off a survivor (plan_unmerge, pure)."""

from __future__ import annotations

from dataclasses import dataclass

from services.identity.matching import BUILT_IN_TYPES
from services.identity.model import Config, Key, MergeRecord, StoredSource
from shared.errors import FailedPrecondition, quote


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
            f"{quote(data.individual_id)} is not merged into another individual", reason="NOT_MERGED",
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
        keys = [(t, v) for t, vs in r.record.identities.items()
                if (kind := config.types.get(t, BUILT_IN_TYPES.get(t))) is not None and kind.unique for v in vs]
        if data.origins.get(r.record_id) in members or (keys and all(k in moved_keys for k in keys)):
            moving.append(r)
    reported = sorted(moved_keys | {(t, v) for r in moving for t, vs in r.record.identities.items() for v in vs})
    event = MergeRecord(survivor, data.individual_id, "unmerge", tuple(reported), "UNMERGE")
    return UnmergePlan(data.individual_id, survivor, sorted(members), [r.record_id for r in moving],
                       sorted(identities), reported, event)
