"""The pipeline worker: drains the inbox in order through Identify -> Update -> Compute, with retries and dead letters."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from itertools import groupby

import grpc

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from services.gateway.postgres import INBOX_CHANNEL, GatewayStore, InboxRow
from shared import context as ctx
from shared.leader import lead
from shared.log import get_logger

log = get_logger("gateway.pipeline")

# Failures that say nothing about the event itself: retried without counting an attempt.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED}
INTERACTION_TYPES = (common_pb2.EVENT_TYPE_PRODUCT_VIEW, common_pb2.EVENT_TYPE_ADD_TO_CART)
LEADER_LOCK = "tailor-pipeline-leader"
SWEEPER_LOCK = "tailor-merge-sweeper"


@dataclass
class Stubs:
    identity: object
    profile: object
    recommender: object
    decision: object


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
    if event.type == common_pb2.EVENT_TYPE_PURCHASE:
        return [rec_pb.Interaction(message_id=event.message_id, unified_individual_id=unified_id,
                                   item_id=line.item_id, type=event.type, quantity=line.quantity,
                                   revenue=line.quantity * line.unit_price, event_time=event.event_time)
                for line in event.line_items]
    return []


def _survivor(aliases: dict[str, str], individual: str) -> str:
    while individual in aliases:
        individual = aliases[individual]
    return individual


class Pipeline:
    """Processes one tenant's events in order; every downstream step is idempotent, so a retry is harmless."""

    def __init__(self, stubs: Stubs):
        self.stubs = stubs
        self.merges = MergePropagation(stubs.profile, stubs.decision, stubs.identity)

    async def process(self, events: list[common_pb2.Event]) -> None:
        """Identify, then update, one batch."""
        await self.update(await self.identify(events))

    async def identify(self, events: list[common_pb2.Event]) -> "Plan":
        """Resolves a batch in one call; subjects are resolved in order, so later events see earlier merges."""
        started = time.perf_counter()
        resolved = await self.stubs.identity.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(
            subjects=[identity_pb.Subject(identities=e.identities, attributes=e.attributes) for e in events]))
        aliases: dict[str, str] = {}
        merges: list[tuple[list[str], str]] = []
        for resolution in resolved.resolutions:
            if resolution.merged_individual_ids:
                for merged in resolution.merged_individual_ids:
                    aliases[merged] = resolution.unified_individual_id
                merges.append((list(resolution.merged_individual_ids), resolution.unified_individual_id))
        owners = [_survivor(aliases, r.unified_individual_id) for r in resolved.resolutions]
        merges = [(merged, _survivor(aliases, survivor)) for merged, survivor in merges]
        return Plan(events, owners, merges, round((time.perf_counter() - started) * 1000, 1))

    async def update(self, plan: "Plan") -> None:
        """Update + Compute for an identified batch. Must run after the previous batch's update (event order)."""
        started = time.perf_counter()
        events, owners = plan.events, plan.owners
        # Move what merged individuals had onto their survivors before appending new events.
        for merged, survivor in plan.merges:
            await self.merges.merge(merged, survivor)
        # The profile graph, item statistics and attribution outcomes do not depend on each other, so they run at
        # once (each is idempotent: a retry repeats all three safely).
        calls = [self.stubs.profile.AppendEvents(profile_pb.AppendEventsRequest(events=[
            profile_pb.IndividualEvent(unified_individual_id=owner, event=event)
            for owner, event in zip(owners, events)]))]
        interactions = [i for owner, event in zip(owners, events) for i in interactions_of(owner, event)]
        if interactions:
            calls.append(self.stubs.recommender.RecordInteractions(
                rec_pb.RecordInteractionsRequest(interactions=interactions)))
        outcomes = [o for o in (outcome_of(owner, event) for owner, event in zip(owners, events)) if o is not None]
        for start in range(0, len(outcomes), 1000):
            calls.append(self.stubs.decision.RecordOutcomes(decision_pb.RecordOutcomesRequest(
                outcomes=outcomes[start:start + 1000])))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        log.debug("pipeline_batch", events=len(events), identify_ms=plan.identify_ms,
                  update_ms=round((time.perf_counter() - started) * 1000, 1))


@dataclass
class Plan:
    """An identified batch: its events, the survivor owning each, and the merges to apply first."""

    events: list[common_pb2.Event]
    owners: list[str]
    merges: list[tuple[list[str], str]]
    identify_ms: float


class MergePropagation:
    """Tells the profile graph and the decision service what identity changes outside the event flow did."""

    def __init__(self, profile, decision, identity):
        self.profile = profile
        self.decision = decision
        self.identity = identity

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

    async def merge(self, merged: list[str], survivor: str) -> None:
        await self.profile.ReassignIndividual(profile_pb.ReassignIndividualRequest(
            from_individual_ids=merged, to_individual_id=survivor))
        # The survivor keeps its experiment cohorts; the merged ids are recorded as its aliases.
        await self.decision.ReassignIndividual(decision_pb.ReassignIndividualRequest(
            from_unified_individual_ids=merged, to_unified_individual_id=survivor))

    async def sweep(self, min_age_seconds: float = 5.0) -> int:
        """Applies, for the current tenant, every merge or unmerge the identity service has not seen marked
        propagated (a crash between resolving and reassigning leaves some), then marks them. Returns how many."""
        page = await self.identity.ListUnpropagatedMergeEvents(identity_pb.ListUnpropagatedMergeEventsRequest(
            page_size=100, min_age_seconds=min_age_seconds))
        for event in page.merge_events:
            if event.kind == identity_pb.MERGE_EVENT_KIND_MERGE:
                await self.merge([event.other_individual_id], event.survivor_individual_id)
            else:
                await self.split(event.survivor_individual_id, event.other_individual_id, event.evidence)
        if page.merge_events:
            await self.identity.MarkMergeEventsPropagated(identity_pb.MarkMergeEventsPropagatedRequest(
                event_ids=[e.event_id for e in page.merge_events]))
        return len(page.merge_events)


def _events(rows: list[InboxRow]) -> list[common_pb2.Event]:
    return [common_pb2.Event.FromString(r.payload) for r in rows]


async def _settle(task: asyncio.Task | None) -> None:
    """Waits for a task whose result is no longer wanted, ignoring how it ended."""
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


class MergeSweeper:
    """One leader per database re-applies, tenant by tenant, merges and unmerges left unpropagated."""

    def __init__(self, dsn: str, store: GatewayStore, merges: MergePropagation, *, interval_seconds: float = 5.0):
        self.dsn = dsn
        self.store = store
        self.merges = merges
        self.interval_seconds = interval_seconds

    async def sweep_all(self) -> int:
        swept = 0
        for tenant_id in await self.store.tenant_ids():
            ctx.tenant_var.set(tenant_id)
            ctx.request_id_var.set(ctx.new_request_id())
            ctx.deadline_var.set(None)
            try:
                swept += await self.merges.sweep(self.interval_seconds)
            except grpc.aio.AioRpcError as error:
                log.warning("merge_sweep_failed", tenant=tenant_id, code=error.code().name)
        return swept

    async def run(self) -> None:
        async def step() -> bool:
            await self.sweep_all()
            return False

        await lead(self.dsn, SWEEPER_LOCK, step, idle_seconds=self.interval_seconds)


class PipelineWorker:
    """One leader per database drains the inbox, woken by NOTIFY; the others stand by."""

    def __init__(self, dsn: str, store: GatewayStore, pipeline: Pipeline, *, batch_size: int = 1000,
                 chunk_size: int = 500, max_attempts: int = 5, idle_seconds: float = 1.0):
        self.dsn = dsn
        self.store = store
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.max_attempts = max_attempts
        self.idle_seconds = idle_seconds

    async def run(self) -> None:
        """Runs until cancelled, as the database's single pipeline leader."""
        async def step() -> bool:
            return await self.drain_once() > 0

        await lead(self.dsn, LEADER_LOCK, step, idle_seconds=self.idle_seconds, channel=INBOX_CHANNEL)

    async def drain_once(self) -> int:
        """Processes up to batch_size pending events, oldest first; returns how many were taken."""
        started = time.perf_counter()
        rows = await self.store.pending(self.batch_size)
        if rows:
            log.debug("pipeline_pending", events=len(rows), read_ms=round((time.perf_counter() - started) * 1000, 1))
        for tenant_id, group in groupby(rows, key=lambda r: r.tenant_id):
            await self._process_tenant(tenant_id, list(group))
        return len(rows)

    async def _process_tenant(self, tenant_id: str, rows: list[InboxRow]) -> bool:
        """True when every row was processed (or dead-lettered); on False the rest stays pending, in order.

        Rows go in chunks: chunk k+1 is identified while chunk k is being updated (identification stays in order,
        and so do updates, so events of one individual are never reordered).
        """
        ctx.tenant_var.set(tenant_id)
        ctx.request_id_var.set(ctx.new_request_id())
        ctx.deadline_var.set(None)
        chunks = [rows[i:i + self.chunk_size] for i in range(0, len(rows), self.chunk_size)]
        done = 0  # chunks updated and marked processed
        identifying: asyncio.Task | None = None
        try:
            plan = await self.pipeline.identify(_events(chunks[0]))
            for k, chunk in enumerate(chunks):
                updating = asyncio.create_task(self.pipeline.update(plan))
                if k + 1 < len(chunks):
                    identifying = asyncio.create_task(self.pipeline.identify(_events(chunks[k + 1])))
                await updating
                await self.store.mark_processed(tenant_id, [r.message_id for r in chunk])
                done += 1
                if identifying is not None:
                    plan = await identifying
                    identifying = None
            return True
        except grpc.aio.AioRpcError as error:
            await _settle(identifying)
            if error.code() in TRANSIENT:
                log.warning("pipeline_transient_failure", code=error.code().name, events=len(rows))
                await asyncio.sleep(0.5)
                return False
            if len(rows) == 1:
                return await self._failed(rows[0], f"{error.code().name}: {error.details()}")
        except Exception as error:  # noqa: BLE001 - an event must never stop the pipeline
            await _settle(identifying)
            if len(rows) == 1:
                log.exception("pipeline_event_error", message_id=rows[0].message_id)
                return await self._failed(rows[0], repr(error))
        # A chunk failed because of some event: find it by going one event at a time (identification side effects
        # of the chunks not updated are idempotent, and their merges stay in the identity outbox), stopping at the
        # first that is still pending so that events of one individual are never processed out of order.
        for row in rows[done * self.chunk_size:]:
            if not await self._process_tenant(tenant_id, [row]):
                return False
        return True

    async def _failed(self, row: InboxRow, error: str) -> bool:
        dead = await self.store.record_failure(row, error, self.max_attempts)
        log.warning("pipeline_event_failed", message_id=row.message_id, error=error, dead_lettered=dead)
        if not dead:
            await asyncio.sleep(min(0.1 * 2 ** row.attempts, 5.0))
        return dead
