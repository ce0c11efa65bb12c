"""Applying one chunk of events: Identify (one call), then Update and Compute in the domain services; merges first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.decision.v1 import decision_service_pb2_grpc as decision_grpc
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as profile_grpc
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from services.gateway.ports import Stubs
from shared import contract
from shared.log import get_logger

log = get_logger("gateway.pipeline")

INTERACTION_TYPES = (common_pb2.EVENT_TYPE_PRODUCT_VIEW, common_pb2.EVENT_TYPE_ADD_TO_CART)
MERGE_CONCURRENCY = 8
SWEEP_PAGE = 100  # outbox entries read at once by a sweep
# Requests stay within the contract's counts (a chunk of 500 purchases may carry far more lines than that).
MAX_INTERACTIONS = contract.field_limits(rec_pb.RecordInteractionsRequest.DESCRIPTOR, "interactions").max_items
MAX_OUTCOMES = contract.field_limits(decision_pb.RecordOutcomesRequest.DESCRIPTOR, "outcomes").max_items  # survivors reassigned at once while applying one chunk's merges


CLICK_TYPES = (common_pb2.EVENT_TYPE_EMAIL_CLICK,)


def outcome_of(unified_id: str, event: common_pb2.Event) -> decision_pb.Outcome | None:
    """The attribution outcome an event is: a purchase with positive revenue, or a click; None otherwise."""
    if event.type == common_pb2.EVENT_TYPE_PURCHASE:
        revenue = sum(line.quantity * line.unit_price for line in event.line_items)
        if revenue <= 0:
            return None
        return decision_pb.Outcome(outcome_id=event.message_id, unified_individual_id=unified_id,
                                   type=decision_pb.OUTCOME_TYPE_PURCHASE, time=event.event_time,
                                   item_ids=[line.item_id for line in event.line_items], revenue=revenue)
    if event.type in CLICK_TYPES or (event.type == common_pb2.EVENT_TYPE_CUSTOM and event.name == "click"):
        personalization = event.properties.fields.get("personalization_id")
        return decision_pb.Outcome(outcome_id=event.message_id, unified_individual_id=unified_id,
                                   type=decision_pb.OUTCOME_TYPE_CLICK, time=event.event_time,
                                   item_ids=[event.item_id] if event.item_id else [],
                                   personalization_id=personalization.string_value if personalization else "")
    return None


def interactions_of(unified_id: str, event: common_pb2.Event) -> list[rec_pb.Interaction]:
    """The item interactions an event carries, for the recommender's statistics."""
    if event.type in INTERACTION_TYPES:
        return [rec_pb.Interaction(message_id=event.message_id, unified_individual_id=unified_id,
                                   item_id=event.item_id, type=event.type, quantity=1.0,
                                   event_time=event.event_time)]
    if event.type in (common_pb2.EVENT_TYPE_PURCHASE, common_pb2.EVENT_TYPE_RETURN):
        # A return's lines carry the units returned and the amount refunded, and the order they cancel.
        return [rec_pb.Interaction(message_id=event.message_id, unified_individual_id=unified_id,
                                   item_id=line.item_id, type=event.type, quantity=line.quantity,
                                   revenue=line.quantity * line.unit_price, event_time=event.event_time,
                                   order_id=event.order_id)
                for line in event.line_items]
    return []


def _survivor(aliases: dict[str, str], individual: str) -> str:
    while individual in aliases:
        individual = aliases[individual]
    return individual


def merge_runs(pairs: list[tuple[str, str]]) -> list[dict[str, list[str]]]:
    """Consecutive (merged, survivor) pairs as runs of {final survivor: merged ids}: the merges of one run are
    independent once chains are followed (A -> B then B -> C moves A and B onto C at once), so they may be applied
    concurrently. A pair that would undo the run's earlier pairs (a cycle, or an id merged twice: an unmerge came
    between them) starts the next run, so the runs keep the pairs' order."""
    runs: list[dict[str, str]] = [{}]
    for merged, survivor in pairs:
        aliases = runs[-1]
        if merged == survivor:
            continue
        if merged in aliases or _survivor(aliases, survivor) == merged:
            aliases = {}
            runs.append(aliases)
        aliases[merged] = survivor
    grouped = []
    for aliases in runs:
        into: dict[str, list[str]] = {}
        for merged in aliases:
            into.setdefault(_survivor(aliases, merged), []).append(merged)
        if into:
            grouped.append(into)
    return grouped


class Pipeline:
    """Processes one tenant's events in order; every downstream step is idempotent, so a retry is harmless."""

    def __init__(self, stubs: Stubs):
        self.stubs = stubs
        self.merges = MergePropagation(stubs.profile, stubs.decision, stubs.identity, stubs.recommender)

    async def process(self, events: list[common_pb2.Event]) -> None:
        """Identify, then update, one batch."""
        await self.update(await self.identify(events))

    async def identify(self, events: list[common_pb2.Event]) -> "Plan":
        """Resolves a batch in one call; subjects are resolved in order, so later events see earlier merges."""
        started = time.perf_counter()
        resolved = await self.stubs.identity.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(
            subjects=[identity_pb.Subject(identities=e.identities, attributes=e.attributes) for e in events]))
        resolutions = list(resolved.resolutions)
        if any(r.suppressed for r in resolutions):
            # Events carrying an identity of a forgotten individual are acknowledged but dropped here, unattached.
            kept = [n for n, r in enumerate(resolutions) if not r.suppressed]
            log.info("pipeline_suppressed_events", count=len(events) - len(kept))
            events, resolutions = [events[n] for n in kept], [resolutions[n] for n in kept]
        aliases: dict[str, str] = {}
        merges: list[tuple[list[str], str]] = []
        pairs: list[tuple[str, str]] = []
        for resolution in resolutions:
            if resolution.merged_individual_ids:
                for merged in resolution.merged_individual_ids:
                    aliases[merged] = resolution.unified_individual_id
                    pairs.append((resolution.unified_individual_id, merged))
                merges.append((list(resolution.merged_individual_ids), resolution.unified_individual_id))
        owners = [_survivor(aliases, r.unified_individual_id) for r in resolutions]
        merges = [(merged, _survivor(aliases, survivor)) for merged, survivor in merges]
        return Plan(events, owners, merges, pairs, round((time.perf_counter() - started) * 1000, 1))

    async def apply_merges(self, plan: "Plan") -> None:
        """Moves what merged individuals had onto their survivors, then marks those merges propagated, so the
        sweeper's queue holds only what a crash left behind. Idempotent."""
        if not plan.merges:
            return
        # One reassignment per survivor (a chain A -> B -> C in one chunk moves A and B onto C at once).
        merged_into: dict[str, list[str]] = {}
        for merged, survivor in plan.merges:
            merged_into.setdefault(survivor, []).extend(m for m in merged if m != survivor)
        await self.merges.merge_all(merged_into)
        for start in range(0, len(plan.merge_pairs), 1000):
            await self.stubs.identity.MarkMergeEventsPropagated(identity_pb.MarkMergeEventsPropagatedRequest(
                merges=[identity_pb.MergedPair(survivor_individual_id=s, merged_individual_id=m)
                        for s, m in plan.merge_pairs[start:start + 1000]]))
        plan.merges, plan.merge_pairs = [], []

    async def update(self, plan: "Plan", appended: Callable[[], None] | None = None) -> None:
        """Update + Compute for an identified batch. Must run after the previous batch's update (event order).
        appended is called once the profile graph has the events (they are visible), before the other steps."""
        started = time.perf_counter()
        events, owners = plan.events, plan.owners
        # Move what merged individuals had onto their survivors before appending new events.
        await self.apply_merges(plan)
        # The profile graph first: it is where an event is most likely refused, and nothing else of a chunk it
        # refused is applied. Item statistics and attribution outcomes then run at once (each step is idempotent,
        # so a retry repeats them safely).
        await self.stubs.profile.AppendEvents(profile_pb.AppendEventsRequest(events=[
            profile_pb.IndividualEvent(unified_individual_id=owner, event=event)
            for owner, event in zip(owners, events)]))
        if appended is not None:
            appended()
        calls = []
        interactions = [i for owner, event in zip(owners, events) for i in interactions_of(owner, event)]
        for start in range(0, len(interactions), MAX_INTERACTIONS):
            calls.append(self.stubs.recommender.RecordInteractions(rec_pb.RecordInteractionsRequest(
                interactions=interactions[start:start + MAX_INTERACTIONS])))
        outcomes = [o for o in (outcome_of(owner, event) for owner, event in zip(owners, events)) if o is not None]
        for start in range(0, len(outcomes), MAX_OUTCOMES):
            calls.append(self.stubs.decision.RecordOutcomes(decision_pb.RecordOutcomesRequest(
                outcomes=outcomes[start:start + MAX_OUTCOMES])))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        log.debug("pipeline_batch", events=len(events), identify_ms=plan.identify_ms,
                  update_ms=round((time.perf_counter() - started) * 1000, 1))


@dataclass
class Plan:
    """An identified chunk: its events, the survivor owning each, and the merges to apply first."""

    events: list[common_pb2.Event]
    owners: list[str]
    merges: list[tuple[list[str], str]]
    merge_pairs: list[tuple[str, str]]  # (survivor, merged) as the identity service reported them, for marking
    identify_ms: float


class MergePropagation:
    """Tells the profile graph, the decision service and the recommender what identity changes outside the event
    flow did."""

    def __init__(self, profile: profile_grpc.ProfileGraphServiceStub, decision: decision_grpc.DecisionServiceStub,
                 identity: identity_grpc.IdentityServiceStub, recommender: rec_grpc.RecommenderServiceStub):
        self.profile = profile
        self.decision = decision
        self.identity = identity
        self.recommender = recommender

    async def drain(self, *_call) -> None:
        """Propagates everything in the identity service's merge outbox now (after an Unmerge or a RunRuleset
        through the gateway, so their effects show at once instead of at the sweeper's next pass)."""
        while await self.sweep(min_age_seconds=0):
            pass

    async def split(self, survivor: str, restored: str, identities) -> None:
        # Only unique identities say whose an event is: a shared non-unique value (a family phone) must not
        # pull the survivor's own events along.
        types = await self.identity.ListIdentityTypes(identity_pb.ListIdentityTypesRequest())
        unique = {t.name for t in types.identity_types if t.unique}
        owned = [i for i in identities if i.type in unique]
        if owned:
            await self.profile.ReassignIndividual(profile_pb.ReassignIndividualRequest(
                from_individual_ids=[survivor], to_individual_id=restored, only_events_with_identities=owned))
        # The decision service's aliases: the restored individual's own decisions and outcomes count for it again.
        await self.decision.ReassignIndividual(decision_pb.ReassignIndividualRequest(
            from_unified_individual_ids=[survivor], to_unified_individual_id=restored, unmerge=True))
        # Interactions carry no identities: those first recorded for the restored individual go back to it.
        await self.recommender.ReassignInteractions(rec_pb.ReassignInteractionsRequest(
            from_individual_ids=[survivor], to_individual_id=restored, only_first_recorded_for=[restored]))

    async def merge(self, merged: list[str], survivor: str) -> None:
        await self.profile.ReassignIndividual(profile_pb.ReassignIndividualRequest(
            from_individual_ids=merged, to_individual_id=survivor))
        # The survivor keeps its experiment cohorts; the merged ids are recorded as its aliases.
        await self.decision.ReassignIndividual(decision_pb.ReassignIndividualRequest(
            from_unified_individual_ids=merged, to_unified_individual_id=survivor))
        await self.recommender.ReassignInteractions(rec_pb.ReassignInteractionsRequest(
            from_individual_ids=merged, to_individual_id=survivor))

    async def merge_all(self, merged_into: dict[str, list[str]]) -> None:
        """Applies merges onto distinct survivors concurrently (the services lock each individual they touch), at
        most MERGE_CONCURRENCY at once."""
        limit = asyncio.Semaphore(MERGE_CONCURRENCY)

        async def merge(survivor: str, merged: list[str]) -> None:
            async with limit:
                await self.merge(sorted(set(merged)), survivor)

        # Every merge ends before this returns or raises (none left running behind a failure), and the first
        # failure is raised: what failed stays unmarked, so a retry or the next sweep applies it again.
        results = await asyncio.gather(*(merge(s, m) for s, m in merged_into.items() if m), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    async def sweep(self, min_age_seconds: float = 5.0) -> int:
        """Applies, for the current tenant, every merge or unmerge the identity service has not seen marked
        propagated (a crash between resolving and reassigning leaves some), then marks them. Returns how many.

        Events apply in their order: an unmerge alone, and each run of merges between them at once (a crash can
        leave a chunk's worth of merges, each a person split across two profiles until it is applied)."""
        page = await self.identity.ListUnpropagatedMergeEvents(identity_pb.ListUnpropagatedMergeEventsRequest(
            page_size=SWEEP_PAGE, min_age_seconds=min_age_seconds))
        merges: list[tuple[str, str]] = []
        for event in page.merge_events:
            if event.kind == identity_pb.MERGE_EVENT_KIND_MERGE:
                merges.append((event.other_individual_id, event.survivor_individual_id))
                continue
            for run in merge_runs(merges):
                await self.merge_all(run)
            merges = []
            await self.split(event.survivor_individual_id, event.other_individual_id, event.evidence)
        for run in merge_runs(merges):
            await self.merge_all(run)
        if page.merge_events:
            await self.identity.MarkMergeEventsPropagated(identity_pb.MarkMergeEventsPropagatedRequest(
                event_ids=[e.event_id for e in page.merge_events]))
        return len(page.merge_events)
