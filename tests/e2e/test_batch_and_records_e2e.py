"""Batch personalization, record sync and usage through the gateway with all five services."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.batch import BatchJobs
from shared.errors import status_details
from tests.conftest import struct, wait_for
from tests.suite import Suite


async def _shoppers(suite: Suite, md, count: int) -> None:
    """A segment `buyers` of `count` individuals and manual-content points `banner` and `email_block`."""
    await suite.buyers_and_banner(md)
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="email_block", type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))), metadata=md)
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name="email_block", name="news", fallback=True, content=struct({"headline": "News"}))), metadata=md)
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    events = [common_pb2.Event(
        message_id=f"buy-{i}", type=common_pb2.EVENT_TYPE_PURCHASE, event_time=now,
        identities=[common_pb2.Identity(type="customer_id", value=f"c{i}")],
        line_items=[common_pb2.LineItem(item_id="sku", quantity=1, unit_price=5)]) for i in range(count)]
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events), metadata=md)
    assert await suite.segment_reaches(md, "buyers", count), "the purchases never put everyone in the segment"


async def test_a_batch_job_writes_one_row_per_member_and_point_and_counts_credits(suite):
    _, md = await suite.new_tenant()
    await _shoppers(suite, md, 30)
    started = await suite.gateway.StartBatchJob(pb.StartBatchJobRequest(
        segment="buyers", point_names=["banner", "email_block"]), metadata=md)
    rows, last = [], None
    async for update in suite.gateway.WatchBatchJob(pb.WatchBatchJobRequest(
            job_id=started.job.job_id, include_rows=True), metadata=md, timeout=60):
        if update.HasField("row"):
            rows.append(update.row)
        else:
            last = update.job
    assert last.state == pb.BATCH_JOB_STATE_SUCCEEDED
    assert (last.processed_count, last.row_count, last.total_count) == (30, 60, 30)
    assert len({(r.unified_individual_id, r.point_name) for r in rows}) == 60
    assert {r.payload["data"][0]["headline"] for r in rows} == {"Thanks", "News"}
    listed = await suite.gateway.ListBatchResults(pb.ListBatchResultsRequest(
        job_id=started.job.job_id, page_size=50), metadata=md)
    rest = await suite.gateway.ListBatchResults(pb.ListBatchResultsRequest(
        job_id=started.job.job_id, page_token=listed.next_page_token), metadata=md)
    assert len(listed.rows) + len(rest.rows) == 60 and not rest.next_page_token
    usage = await suite.gateway.GetUsage(pb.GetUsageRequest(), metadata=md)
    assert usage.decision_credits_used == 60


async def test_a_batch_job_killed_mid_run_resumes_to_exactly_one_row_per_member_and_point(suite):
    tenant, md = await suite.new_tenant()
    await _shoppers(suite, md, 25)
    gateway_built, _, gateway_tasks = suite._running[-1]
    index = next(i for i, job in enumerate(gateway_built.background) if getattr(job, "__name__", "") == "run"
                 and isinstance(getattr(job, "__self__", None), BatchJobs))
    worker: BatchJobs = gateway_built.background[index].__self__
    worker.page_size = 10
    original = worker.decide_page
    pages = 0

    async def dies_in_third_page(*args):
        nonlocal pages
        pages += 1
        if pages == 3:
            raise asyncio.CancelledError()  # the worker is killed in the middle of its third page
        return await original(*args)

    worker.decide_page = dies_in_third_page
    started = await suite.gateway.StartBatchJob(pb.StartBatchJobRequest(
        segment="buyers", point_names=["banner", "email_block"]), metadata=md)
    await wait_for(lambda: asyncio.sleep(0, gateway_tasks[index].done()))
    assert gateway_tasks[index].done()
    half = await suite.gateway.GetBatchJob(pb.GetBatchJobRequest(job_id=started.job.job_id), metadata=md)
    assert (half.job.state, half.job.processed_count, half.job.row_count) == (pb.BATCH_JOB_STATE_RUNNING, 20, 40)

    worker.decide_page = original
    gateway_tasks[index] = asyncio.create_task(worker.run())  # a new worker process takes over

    async def finished():
        reply = await suite.gateway.GetBatchJob(pb.GetBatchJobRequest(job_id=started.job.job_id), metadata=md)
        return reply.job if reply.job.state == pb.BATCH_JOB_STATE_SUCCEEDED else None

    done = await wait_for(finished)
    assert done is not None and (done.processed_count, done.row_count) == (25, 50)
    conn = await asyncpg.connect(suite.dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM gateway.batch_results WHERE tenant_id = $1 AND job_id = $2",
                                    tenant, started.job.job_id)
    finally:
        await conn.close()
    assert count == 50


async def test_a_batch_job_for_an_unknown_segment_or_point_is_not_found(suite):
    _, md = await suite.new_tenant()
    await _shoppers(suite, md, 1)
    for request, reason in ((pb.StartBatchJobRequest(segment="nobody", point_names=["banner"]), "SEGMENT_NOT_FOUND"),
                            (pb.StartBatchJobRequest(segment="buyers", point_names=["nowhere"]), "POINT_NOT_FOUND")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await suite.gateway.StartBatchJob(request, metadata=md)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert status_details(info.value)[1] == reason


async def test_a_schedule_with_a_bad_cron_is_refused(suite):
    _, md = await suite.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.UpsertBatchSchedule(pb.UpsertBatchScheduleRequest(schedule=pb.BatchSchedule(
            name="nightly", segment="buyers", point_names=["banner"], cron="every night")), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["schedule.cron"]


def _record(i: int, **fields) -> pb.SyncRecord:
    return pb.SyncRecord(identities=[common_pb2.Identity(type="crm_contact_key", value=f"003-{i}")],
                         record_id=f"r{i}", **fields)


async def test_record_sync_takes_25_records_refuses_26_and_allows_100_with_increased_batch_size(suite):
    _, md = await suite.new_tenant()
    reply = await suite.gateway.SendRecordData(pb.SendRecordDataRequest(
        records=[_record(i) for i in range(25)]), metadata=md)
    assert [r.index for r in reply.results] == list(range(25))
    assert all(r.created and r.status == pb.ACK_STATUS_STORED for r in reply.results)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.SendRecordData(pb.SendRecordDataRequest(records=[_record(i) for i in range(26)]),
                                           metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["records"]
    big = await suite.gateway.SendRecordData(pb.SendRecordDataRequest(
        records=[_record(i) for i in range(100)], increased_batch_size=True), metadata=md)
    assert len(big.results) == 100
    assert [r.unified_individual_id for r in big.results[:25]] == [r.unified_individual_id for r in reply.results]
    assert all(not r.created and r.status == pb.ACK_STATUS_DUPLICATE for r in big.results[:25])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.SendRecordData(pb.SendRecordDataRequest(
            records=[_record(i) for i in range(101)], increased_batch_size=True), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_record_sync_validates_against_the_data_model_unless_increased_batch_size(suite):
    _, md = await suite.new_tenant()
    await suite.gateway.UpsertDataModel(pb.UpsertDataModelRequest(data_model=pb.DataModel(
        datasets=["crm"], attributes=[pb.AttributeDeclaration(name="first_name", type=pb.ATTRIBUTE_TYPE_STRING)],
        object_types=[pb.ObjectTypeDeclaration(type="case", attributes=[
            pb.AttributeDeclaration(name="status", type=pb.ATTRIBUTE_TYPE_STRING)])])), metadata=md)
    bad = [
        _record(1, dataset="erp", attributes=struct({"first_name": 3})),
        pb.SyncRecord(record_id="no-identities"),
        _record(3, dataset="crm", profile_objects=[common_pb2.ProfileObject(type="order", object_id="o1")]),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.SendRecordData(pb.SendRecordDataRequest(records=bad), metadata=md)
    assert [f for f, _ in status_details(info.value)[0]] == [
        "records[0].dataset", "records[0].attributes.first_name", "records[1].identities", "records[1].dataset",
        "records[2].profile_objects[0].type"]
    relaxed = await suite.gateway.SendRecordData(pb.SendRecordDataRequest(
        records=[bad[0], bad[2]], increased_batch_size=True), metadata=md)
    assert len(relaxed.results) == 2

    good = _record(9, dataset="crm", attributes=struct({"first_name": "Ada"}), interaction_name="contact_updated",
                   profile_objects=[common_pb2.ProfileObject(type="case", object_id="c-1",
                                                             attributes=struct({"status": "open"}))])
    reply = await suite.gateway.SendRecordData(pb.SendRecordDataRequest(records=[good]), metadata=md)

    async def processed():
        try:
            profile = await suite.gateway.GetProfile(pb.GetProfileRequest(
                unified_individual_id=reply.results[0].unified_individual_id), metadata=md)
        except grpc.aio.AioRpcError:
            return None
        return profile if profile.attributes.fields.get("first_name") == struct_pb2.Value(string_value="Ada") else None

    profile = await wait_for(processed)
    assert profile is not None and profile.events[0].name == "contact_updated"
