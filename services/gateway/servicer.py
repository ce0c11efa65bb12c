"""GatewayService: proto <-> use-case translation for the public API."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from services.gateway.activation import Activations
from services.gateway.auth import KeyService
from services.gateway.batch import BatchJobs
from services.gateway.dead_letters import DeadLetters
from services.gateway.decide import Decider
from services.gateway.ingest import Ingest, Rejections
from services.gateway.postgres import KeyRow
from services.gateway.postgres_batch import Job, Schedule, StoredRow
from services.gateway.privacy import Privacy
from services.gateway.quotas import Quotas
from services.gateway.recommend import Recommendations
from services.gateway.records import RecordSync, validate_data_model
from services.gateway.replay import Replayer
from services.gateway.tenants import Tenants, named_tenant
from services.gateway.usage import UsageStats
from shared import contract
from shared.client import open_stream
from shared.context import current_tenant
from shared.errors import InvalidArgument, ResourceExhausted
from shared.paging import decode_token, next_page, page_size

STREAM_WRITES = 2  # stream messages being written (or waiting to be) while the next one is validated
SCOPE_NAMES = {pb.SCOPE_INGEST: "ingest", pb.SCOPE_DECIDE: "decide", pb.SCOPE_ADMIN: "admin"}
SCOPE_VALUES = {v: k for k, v in SCOPE_NAMES.items()}


def _ts(value) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def api_key_message(row: KeyRow) -> pb.ApiKey:
    return pb.ApiKey(key_id=row.key_id, display_name=row.display_name,
                     scopes=[SCOPE_VALUES[s] for s in row.scopes if s in SCOPE_VALUES],
                     create_time=_ts(row.created_at), revoke_time=_ts(row.revoked_at), browser=row.browser)


def _sources(names) -> list[int]:
    return [pb.BatchContextSource.Value(f"BATCH_CONTEXT_SOURCE_{name}") for name in names]


def job_message(job: Job) -> pb.BatchJob:
    return pb.BatchJob(job_id=job.job_id, segment=job.segment, point_names=job.point_names,
                       state=pb.BatchJobState.Value(f"BATCH_JOB_STATE_{job.state}"),
                       processed_count=job.processed_count, row_count=job.row_count, total_count=job.total_count,
                       schedule_name=job.schedule_name, error=job.error, create_time=_ts(job.created_at),
                       end_time=_ts(job.ended_at), context_sources=_sources(job.context_sources))


def result_message(stored: StoredRow) -> pb.BatchResultRow:
    row = stored.row
    message = pb.BatchResultRow(
        individual_id=row.individual_id, unified_individual_id=row.unified_individual_id,
        segment_id=row.segment_id, point_id=row.point_id, point_name=row.point_name, decision_id=row.decision_id,
        batch_job_id=stored.job_id, personalization_id=row.personalization_id, update_time=_ts(stored.updated_at))
    message.payload.update(row.payload)
    return message


def schedule_message(schedule: Schedule) -> pb.BatchSchedule:
    return pb.BatchSchedule(name=schedule.name, segment=schedule.segment, point_names=schedule.point_names,
                            cron=schedule.cron, enabled=schedule.enabled, next_run_time=_ts(schedule.next_run_at),
                            context_sources=_sources(schedule.context_sources))


def _add_acks(into, acks: list[tuple[str, bool]], *, stored_too: bool = True, message_index: int = 0) -> None:
    """Appends an EventAck per (message_id, stored_now) to a repeated acks field (built in place: a batch's
    thousands of acks are not built apart and copied in); events stored now only when stored_too (a stream's answer
    lists duplicates and rejections only)."""
    add = into.add
    for message_id, fresh in acks:
        if stored_too or not fresh:
            add(message_id=message_id, status=pb.ACK_STATUS_STORED if fresh else pb.ACK_STATUS_DUPLICATE,
                message_index=message_index)


def _add_mixed_acks(into, events, acks: list[tuple[str, bool]], rejected: Rejections, *, stored_too: bool = True,
                    message_index: int = 0) -> None:
    """Appends, in the events' order, an EventAck per event of a batch ingested with skip_invalid: a rejected event
    with its violations, a valid one from acks (the valid events' (message_id, stored_now) in order); events stored
    now only when stored_too (a stream's answer lists duplicates and rejections only)."""
    stored = iter(acks)
    add = into.add
    for i, event in enumerate(events):
        problems = rejected.get(i)
        if problems is not None:
            add(message_id=event.message_id, status=pb.ACK_STATUS_REJECTED, message_index=message_index,
                violations=[pb.EventViolation(field=f, description=d) for f, d in problems])
            continue
        message_id, fresh = next(stored)
        if stored_too or not fresh:
            add(message_id=message_id, status=pb.ACK_STATUS_STORED if fresh else pb.ACK_STATUS_DUPLICATE,
                message_index=message_index)


class GatewayServicer(pb_grpc.GatewayServiceServicer):
    def __init__(self, keys: KeyService, ingest: Ingest, decider: Decider, records: RecordSync, batch: BatchJobs,
                 quotas: Quotas, activations: Activations, dead_letters: DeadLetters, privacy: Privacy,
                 recommendations: Recommendations, tenants: Tenants, usage: UsageStats | None = None) -> None:
        self.keys = keys
        self.ingest = ingest
        self.decider = decider
        self.records = records
        self.batch = batch
        self.quotas = quotas
        self.dead_letters = dead_letters
        self.activations = activations
        self.privacy = privacy
        self.recommendations = recommendations
        self.tenants = tenants
        self.usage = usage or UsageStats(decider.decision, tenants.exists)
        self.replayer = Replayer(decider.decision, decider.profile)

    async def _admit(self) -> None:
        """The tenant's request-rate quota for ingest: over it, RESOURCE_EXHAUSTED with RetryInfo."""
        wait = await self.quotas.retry_after(current_tenant())
        if wait is not None:
            raise ResourceExhausted("request rate quota exceeded", reason="RATE_QUOTA_EXCEEDED",
                                    retry_after_seconds=wait)

    async def IngestEvents(self, request: pb.IngestEventsRequest,
                           context: grpc.aio.ServicerContext) -> pb.IngestEventsResponse:
        await self._admit()
        reply = pb.IngestEventsResponse()
        if not request.skip_invalid:
            _add_acks(reply.acks, await self.ingest.ingest(current_tenant(), request.events, request.bulk))
            return reply
        acks, rejected = await self.ingest.ingest_valid(current_tenant(), request.events, request.bulk)
        if rejected:
            _add_mixed_acks(reply.acks, request.events, acks, rejected)
        else:
            _add_acks(reply.acks, acks)
        return reply

    async def StreamIngestEvents(self, request_iterator: AsyncIterator[pb.StreamIngestEventsRequest],
                                 context: grpc.aio.ServicerContext) -> pb.StreamIngestEventsResponse:
        reply = pb.StreamIngestEventsResponse()
        tenant = current_tenant()
        # Writes in flight, oldest first: (message index, its events when some were rejected, the rejections, the
        # write of its valid events or None when it had none, the routes of those events).
        storing: deque[tuple[int, Any, Rejections, asyncio.Task | None, set[int]]] = deque()

        async def collect_oldest() -> None:
            index, events, rejected, task, _ = storing.popleft()
            acks = await task if task is not None else []
            duplicates = sum(not fresh for _, fresh in acks)
            if rejected:
                _add_mixed_acks(reply.acks, events, acks, rejected, stored_too=False, message_index=index)
            elif duplicates:
                _add_acks(reply.acks, acks, stored_too=False, message_index=index)
            reply.stored_count += len(acks) - duplicates
            reply.duplicate_count += duplicates
            reply.rejected_count += len(rejected)

        index = 0
        try:
            async for message in request_iterator:
                await self._admit()
                rejected: Rejections = {}
                try:
                    if message.skip_invalid:
                        prepared, rejected = await self.ingest.validate_some(tenant, message.events)
                    else:
                        prepared = await self.ingest.validate(tenant, message.events)
                except InvalidArgument as error:
                    error.metadata["message_index"] = str(index)
                    error.message = f"stream message {index}: {error.message}"
                    raise
                # A message is validated while earlier ones are written. The inbox's order is the order the pipeline
                # applies each routing identity's events in, and two inserts at once interleave their rows: a
                # message waits for the writes in flight that hold any of its routes (duplicates are found exactly
                # either way, as concurrent inserts of one message id conflict).
                if len(storing) >= STREAM_WRITES:
                    await collect_oldest()
                routes = set(prepared[2])
                before = [t for *_, t, r in storing if t is not None and not routes.isdisjoint(r)]
                task = asyncio.create_task(self._store_after(before, tenant, prepared, message.bulk)) \
                    if prepared[0] else None
                storing.append((index, message.events if rejected else None, rejected, task, routes))
                index += 1
            while storing:
                await collect_oldest()
        finally:
            writes = [task for *_, task, _ in storing if task is not None]
            if writes:  # earlier messages still being written are stored (or not) as a whole
                await asyncio.gather(*writes, return_exceptions=True)
        return reply

    async def _store_after(self, before: list[asyncio.Task], tenant: str,
                           prepared: tuple[list[str], list[bytes], list[int]], bulk: bool) -> list[tuple[str, bool]]:
        """Stores a stream message's prepared events once the writes `before` it are done (not at all when one of
        them failed: the stream ends with its error)."""
        if before:
            await asyncio.wait(before)
            if any(t.cancelled() or t.exception() is not None for t in before):
                return []
        ids, payloads, routes = prepared
        return await self.ingest.store_prepared(tenant, ids, payloads, routes, bulk=bulk)

    async def GetDecisions(self, request: pb.GetDecisionsRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetDecisionsResponse:
        return await self.decider.decide(request)

    async def AssignExperiments(self, request: pb.AssignExperimentsRequest,
                                context: grpc.aio.ServicerContext) -> pb.AssignExperimentsResponse:
        return await self.decider.assign(request)

    async def GetProfile(self, request: pb.GetProfileRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetProfileResponse:
        unified_id = await self.decider.resolve_known(request, cached=False)
        individual, reply = await asyncio.gather(
            self.decider.identity.GetIndividual(identity_pb.GetIndividualRequest(unified_individual_id=unified_id)),
            self.decider.profile.GetProfile(profile_pb.GetProfileRequest(
                unified_individual_id=unified_id, event_limit=request.event_limit)))
        profile = reply.profile
        answer = pb.GetProfileResponse(
            unified_individual_id=unified_id, identities=individual.individual.identities,
            attributes=profile.attributes, events=profile.events, insights=profile.insights,
            segments=profile.segments, profile_objects=[o.object for o in profile.profile_objects],
            affinities=[pb.Affinity(dimension=a.dimension, value=a.value, score=a.score) for a in profile.affinities],
            consents=[common_pb2.Consent(purpose=c.purpose, status=c.status) for c in profile.consents],
            truncated=profile.truncated, omitted_event_count=profile.omitted_event_count,
            omitted_profile_object_count=profile.omitted_profile_object_count,
            omitted_attribute_count=profile.omitted_attribute_count)
        contract.fit_profile(answer)  # the identities come on top of a profile already cut to fit
        return answer

    async def WatchEvents(self, request: pb.WatchEventsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchEventsResponse]:
        unified_id = await self.decider.resolve_known(request, cached=False)
        stream = open_stream(self.decider.profile.WatchEvents, profile_pb.WatchEventsRequest(
            unified_individual_id=unified_id, replay_count=request.replay_count))
        async for update in stream:
            yield pb.WatchEventsResponse(event=update.event, append_time=update.append_time)

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> pb.CreateApiKeyResponse:
        scopes = [SCOPE_NAMES.get(s, f"unknown({s})") for s in request.scopes]
        row, secret = await self.keys.create_key(current_tenant(), scopes, request.display_name, request.browser)
        return pb.CreateApiKeyResponse(api_key=api_key_message(row), secret=secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListApiKeysResponse:
        size = page_size(request.page_size, 100, 1000)
        after = decode_token(request.page_token, "api_keys", (datetime, str))
        rows = await self.keys.store.list_keys(current_tenant(), None if after is None else (after[0], after[1]),
                                               size + 1)
        rows, token = next_page(rows, size, "api_keys", lambda r: [r.created_at, r.key_id])
        return pb.ListApiKeysResponse(api_keys=[api_key_message(r) for r in rows], next_page_token=token)

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> pb.RevokeApiKeyResponse:
        if not request.key_id:
            raise InvalidArgument([("key_id", "must not be empty")])
        return pb.RevokeApiKeyResponse(api_key=api_key_message(await self.keys.revoke_key(current_tenant(),
                                                                                          request.key_id)))

    async def SendRecordData(self, request: pb.SendRecordDataRequest,
                             context: grpc.aio.ServicerContext) -> pb.SendRecordDataResponse:
        await self._admit()
        return await self.records.send(current_tenant(), request)

    async def UpsertDataModel(self, request: pb.UpsertDataModelRequest,
                              context: grpc.aio.ServicerContext) -> pb.UpsertDataModelResponse:
        validate_data_model(request.data_model)
        await self.records.store.put_data_model(current_tenant(), request.data_model.SerializeToString())
        return pb.UpsertDataModelResponse(data_model=request.data_model)

    async def GetDataModel(self, request: pb.GetDataModelRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetDataModelResponse:
        model = await self.records.store.data_model(current_tenant())
        return pb.GetDataModelResponse(data_model=model)

    async def StartBatchJob(self, request: pb.StartBatchJobRequest,
                            context: grpc.aio.ServicerContext) -> pb.StartBatchJobResponse:
        job = await self.batch.start(current_tenant(), request.segment, list(request.point_names),
                                     list(request.context_sources))
        return pb.StartBatchJobResponse(job=job_message(job))

    async def GetBatchJob(self, request: pb.GetBatchJobRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetBatchJobResponse:
        return pb.GetBatchJobResponse(job=job_message(await self.batch.get(current_tenant(), request.job_id)))

    async def ListBatchJobs(self, request: pb.ListBatchJobsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListBatchJobsResponse:
        size = page_size(request.page_size, 100, 1000)
        rows = await self.batch.list_jobs(current_tenant(), size + 1,
                                          decode_token(request.page_token, "batch_jobs", (datetime, str)))
        rows, token = next_page(rows, size, "batch_jobs", lambda r: [r.created_at, r.job_id])
        return pb.ListBatchJobsResponse(jobs=[job_message(r) for r in rows], next_page_token=token)

    async def WatchBatchJob(self, request: pb.WatchBatchJobRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchBatchJobResponse]:
        async for update in self.batch.watch(current_tenant(), request.job_id, request.include_rows):
            if isinstance(update, StoredRow):
                yield pb.WatchBatchJobResponse(row=result_message(update))
            else:
                yield pb.WatchBatchJobResponse(job=job_message(update))

    async def ListBatchResults(self, request: pb.ListBatchResultsRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListBatchResultsResponse:
        size = page_size(request.page_size, 1000, 10_000)
        listing = f"batch_results/{request.job_id}"
        rows = await self.batch.results(current_tenant(), request.job_id, size + 1,
                                        decode_token(request.page_token, listing, (str, str)))
        rows, token = next_page(rows, size, listing, lambda r: [r.row.unified_individual_id, r.row.point_name])
        return pb.ListBatchResultsResponse(rows=[result_message(r) for r in rows], next_page_token=token)

    async def UpsertBatchSchedule(self, request: pb.UpsertBatchScheduleRequest,
                                  context: grpc.aio.ServicerContext) -> pb.UpsertBatchScheduleResponse:
        s = request.schedule
        schedule = await self.batch.upsert_schedule(current_tenant(), s.name, s.segment, list(s.point_names), s.cron,
                                                    s.enabled, list(s.context_sources))
        return pb.UpsertBatchScheduleResponse(schedule=schedule_message(schedule))

    async def ListBatchSchedules(self, request: pb.ListBatchSchedulesRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ListBatchSchedulesResponse:
        size = page_size(request.page_size, 100, 1000)
        rows = await self.batch.list_schedules(current_tenant(), size + 1,
                                               decode_token(request.page_token, "batch_schedules", (str,)))
        rows, token = next_page(rows, size, "batch_schedules", lambda r: [r.name])
        return pb.ListBatchSchedulesResponse(schedules=[schedule_message(r) for r in rows], next_page_token=token)

    async def GetUsage(self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext) -> pb.GetUsageResponse:
        used, limit, start, rate = await self.quotas.usage(current_tenant())
        reply = pb.GetUsageResponse(decision_credits_used=used, decision_credit_limit=limit, request_rate_limit=rate)
        reply.period_start.FromDatetime(datetime(start.year, start.month, start.day))
        return reply

    async def UpsertDestination(self, request: pb.UpsertDestinationRequest,
                                context: grpc.aio.ServicerContext) -> pb.UpsertDestinationResponse:
        destination = await self.activations.upsert_destination(current_tenant(), request.destination)
        return pb.UpsertDestinationResponse(destination=destination)

    async def ListDestinations(self, request: pb.ListDestinationsRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListDestinationsResponse:
        items, token = await self.activations.list_destinations(current_tenant(), request.page_size,
                                                                request.page_token)
        return pb.ListDestinationsResponse(destinations=items, next_page_token=token)

    async def UpsertActivation(self, request: pb.UpsertActivationRequest,
                               context: grpc.aio.ServicerContext) -> pb.UpsertActivationResponse:
        activation = await self.activations.upsert_activation(current_tenant(), request.activation)
        return pb.UpsertActivationResponse(activation=activation)

    async def ListActivations(self, request: pb.ListActivationsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListActivationsResponse:
        items, token = await self.activations.list_activations(current_tenant(), request.page_size,
                                                               request.page_token)
        return pb.ListActivationsResponse(activations=items, next_page_token=token)

    async def DeleteDestination(self, request: pb.DeleteDestinationRequest,
                                context: grpc.aio.ServicerContext) -> pb.DeleteDestinationResponse:
        await self.activations.delete_destination(current_tenant(), request.name)
        return pb.DeleteDestinationResponse()

    async def SetDestinationPaused(self, request: pb.SetDestinationPausedRequest,
                                   context: grpc.aio.ServicerContext) -> pb.SetDestinationPausedResponse:
        destination = await self.activations.set_destination_paused(current_tenant(), request.name, request.paused)
        return pb.SetDestinationPausedResponse(destination=destination)

    async def DeleteActivation(self, request: pb.DeleteActivationRequest,
                               context: grpc.aio.ServicerContext) -> pb.DeleteActivationResponse:
        dropped = await self.activations.delete_activation(current_tenant(), request.name)
        return pb.DeleteActivationResponse(dropped_deliveries=dropped)

    async def SetActivationPaused(self, request: pb.SetActivationPausedRequest,
                                  context: grpc.aio.ServicerContext) -> pb.SetActivationPausedResponse:
        activation = await self.activations.set_activation_paused(current_tenant(), request.name, request.paused)
        return pb.SetActivationPausedResponse(activation=activation)

    async def ListDeliveries(self, request: pb.ListDeliveriesRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListDeliveriesResponse:
        items, token = await self.activations.list_deliveries(current_tenant(), request.activation, request.state,
                                                              request.page_size, request.page_token)
        return pb.ListDeliveriesResponse(deliveries=items, next_page_token=token)

    async def ListDeadLetters(self, request: pb.ListDeadLettersRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListDeadLettersResponse:
        return await self.dead_letters.list(current_tenant(), request)

    async def RetryDeadLetters(self, request: pb.RetryDeadLettersRequest,
                               context: grpc.aio.ServicerContext) -> pb.RetryDeadLettersResponse:
        return await self.dead_letters.retry(current_tenant(), request)

    async def DiscardDeadLetters(self, request: pb.DiscardDeadLettersRequest,
                                 context: grpc.aio.ServicerContext) -> pb.DiscardDeadLettersResponse:
        return await self.dead_letters.discard(current_tenant(), request)

    async def GetPipelineStatus(self, request: pb.GetPipelineStatusRequest,
                                context: grpc.aio.ServicerContext) -> pb.GetPipelineStatusResponse:
        async with named_tenant(request.tenant_id, self.tenants.exists, "pipeline status") as tenant:
            return await self.dead_letters.status(tenant)

    async def GetUsageStats(self, request: pb.GetUsageStatsRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetUsageStatsResponse:
        return await self.usage.get(request)

    async def ForgetIndividual(self, request: pb.ForgetIndividualRequest,
                               context: grpc.aio.ServicerContext) -> pb.ForgetIndividualResponse:
        return await self.privacy.forget(request)

    async def ExportIndividual(self, request: pb.ExportIndividualRequest,
                               context: grpc.aio.ServicerContext) -> pb.ExportIndividualResponse:
        return await self.privacy.export(request)

    async def LiftSuppression(self, request: pb.LiftSuppressionRequest,
                              context: grpc.aio.ServicerContext) -> pb.LiftSuppressionResponse:
        return await self.privacy.lift(request)

    async def GetRecommendations(self, request: pb.GetRecommendationsRequest,
                                 context: grpc.aio.ServicerContext) -> pb.GetRecommendationsResponse:
        return await self.recommendations.recommend(request)

    async def CreateTenant(self, request: pb.CreateTenantRequest,
                           context: grpc.aio.ServicerContext) -> pb.CreateTenantResponse:
        tenant, created, key, secret = await self.tenants.create(request)
        return pb.CreateTenantResponse(tenant=tenant, created=created, api_key=api_key_message(key), secret=secret)

    async def ListTenants(self, request: pb.ListTenantsRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListTenantsResponse:
        return await self.tenants.list(request)

    async def SetTenantQuota(self, request: pb.SetTenantQuotaRequest,
                             context: grpc.aio.ServicerContext) -> pb.SetTenantQuotaResponse:
        return await self.tenants.set_quota(request)

    async def UpdateBrowserSettings(self, request: pb.UpdateBrowserSettingsRequest,
                                    context: grpc.aio.ServicerContext) -> pb.UpdateBrowserSettingsResponse:
        return pb.UpdateBrowserSettingsResponse(
            settings=await self.keys.origins.update(current_tenant(), request.settings))

    async def GetBrowserSettings(self, request: pb.GetBrowserSettingsRequest,
                                 context: grpc.aio.ServicerContext) -> pb.GetBrowserSettingsResponse:
        return pb.GetBrowserSettingsResponse(settings=await self.keys.origins.get(current_tenant()))

    async def ReplayDecisions(self, request: pb.ReplayDecisionsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ReplayDecisionsResponse:
        return await self.replayer.replay(request)
