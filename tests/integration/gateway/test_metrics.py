"""Prometheus metrics after known traffic through the gateway: RPC counts and latencies by method and code, events
acknowledged per tenant, points served per tenant and point, distinct individuals, and the pipeline's backlog."""

from __future__ import annotations

import asyncio
import re
import subprocess

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from prometheus_client.parser import text_string_to_metric_families

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from shared import metrics
from shared.errors import status_details
from shared.ports import free_port
from tests.conftest import struct, wait_for
from tests.integration.launcher.launched import TAILOR

INGEST = "/personalization.gateway.v1.GatewayService/IngestEvents"
DECIDE = "/personalization.gateway.v1.GatewayService/GetDecisions"


@pytest.fixture(scope="module")
async def scrape():
    """Serves this process's metrics (the in-process servers of the suite record into them) on a free port."""
    port = free_port()
    task = asyncio.create_task(metrics.serve(port, "127.0.0.1"))

    async def read() -> dict[tuple[str, tuple], float]:
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert reply.status_code == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(reply.text) for s in family.samples}

    await wait_for(lambda: _reachable(port), timeout=10)
    yield read
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _reachable(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


def _value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _event(message_id: str, customer: str) -> common_pb2.Event:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=now,
                            identities=[common_pb2.Identity(type="customer_id", value=customer)])


async def test_counters_move_by_the_traffic_sent(suite, scrape):
    tenant, md = await suite.new_tenant()
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="banner", type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))), metadata=md)
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name="banner", name="welcome", priority=1, fallback=True, content=struct({"headline": "Hi"}))),
        metadata=md)
    before = await scrape()

    events = [_event(f"m{i}", f"c{i % 3}") for i in range(5)]
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events), metadata=md)
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events[:2]), metadata=md)  # duplicates
    with pytest.raises(grpc.aio.AioRpcError):
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(), metadata=md)  # no events: INVALID_ARGUMENT

    async def processed():
        try:
            for customer in ("c0", "c1", "c2"):
                await suite.gateway.GetProfile(pb.GetProfileRequest(
                    individual_id=common_pb2.Identity(type="customer_id", value=customer)), metadata=md)
            return True
        except grpc.aio.AioRpcError as error:  # NOT_FOUND until the pipeline has resolved the customers
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            return False

    assert await wait_for(processed, timeout=30)
    for customer in ("c0", "c1", "c2", "c0"):
        await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
            individual_id=common_pb2.Identity(type="customer_id", value=customer),
            personalization_points=[pb.PointRequest(name="banner")]), metadata=md)

    async def counted():
        after = await scrape()
        return after if _value(after, "tailor_points_served_total", tenant=tenant, point="banner") >= 4 else None

    after = await wait_for(counted, timeout=10)
    assert after is not None, "no points counted"

    def moved(name: str, **labels) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("tailor_rpc_requests_total", method=INGEST, code="OK") == 2
    assert moved("tailor_rpc_requests_total", method=INGEST, code="INVALID_ARGUMENT") == 1
    assert moved("tailor_rpc_duration_seconds_count", method=INGEST, code="OK") == 2
    assert moved("tailor_rpc_duration_seconds_bucket", method=INGEST, code="OK", le="+Inf") == 2
    assert moved("tailor_rpc_requests_total", method=DECIDE, code="OK") == 4
    assert moved("tailor_ingest_events_total", tenant=tenant, status="stored") == 5
    assert moved("tailor_ingest_events_total", tenant=tenant, status="duplicate") == 2
    assert _value(after, "tailor_points_served_total", tenant=tenant, point="banner") == 4
    assert _value(after, "tailor_unique_individuals", tenant=tenant) == 3

    async def logged():
        # Usage is counted from the decision log, which the gateway writes off the request path (rows gathered for
        # a few milliseconds): the metrics above move at once, the log a moment later.
        reply = await suite.gateway.GetUsageStats(pb.GetUsageStatsRequest(), metadata=md)
        return reply if reply.request_count >= 4 else None

    stats = await wait_for(logged, timeout=10) or await suite.gateway.GetUsageStats(pb.GetUsageStatsRequest(),
                                                                                     metadata=md)
    assert (stats.tenant_id, stats.request_count, stats.served_count, stats.unique_individuals) == (tenant, 4, 4, 3)
    assert [(p.point_name, p.served_count, p.unique_individuals) for p in stats.points] == [("banner", 4, 3)]
    key = md[0][1].removeprefix("Bearer ")
    printed = await asyncio.to_thread(subprocess.run, [str(TAILOR), "stats", "--window", "1h", "--gateway",
                                                       f"127.0.0.1:{suite.ports['gateway']}", "--api-key", key],
                                      capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert "requests 4, points served 4, unique individuals 3" in printed.stdout
    assert re.search(r"banner\s+4\s+3", printed.stdout), printed.stdout


async def test_usage_stats_refuse_a_window_over_a_year_naming_the_field(suite):
    _, md = await suite.new_tenant()
    end = timestamp_pb2.Timestamp(seconds=1_800_000_000)
    start = timestamp_pb2.Timestamp(seconds=end.seconds - 400 * 86400)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.GetUsageStats(pb.GetUsageStatsRequest(start_time=start, end_time=end), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["end_time"]
    _, ingest_only = await suite.new_tenant(scopes=("ingest",))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await suite.gateway.GetUsageStats(pb.GetUsageStatsRequest(), metadata=ingest_only)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_pipeline_gauges_name_a_tenants_backlog(suite, scrape, database_url):
    import asyncpg

    tenant, md = await suite.new_tenant()
    conn = await asyncpg.connect(database_url)
    try:  # a dead letter of this tenant, as the pipeline writes one
        await conn.execute("INSERT INTO gateway.dead_letters (tenant_id, message_id, payload, error, attempts) "
                           "VALUES ($1, 'x1', '\\x00', 'INVALID_ARGUMENT: test', 1)", tenant)
    finally:
        await conn.close()

    async def exported():
        samples = await scrape()
        return samples if _value(samples, "tailor_pipeline_dead_letters", tenant=tenant) == 1 else None

    samples = await wait_for(exported, timeout=15)
    assert samples is not None
    assert _value(samples, "tailor_pipeline_backlog_events", tenant=tenant) == 0


async def test_batch_job_progress_gauges_reach_the_jobs_size(suite, scrape):
    from tests.e2e.test_batch_and_records_e2e import _shoppers

    tenant, md = await suite.new_tenant()
    await _shoppers(suite, md, 12)
    started = await suite.gateway.StartBatchJob(pb.StartBatchJobRequest(segment="buyers", point_names=["banner"]),
                                                metadata=md)
    job = started.job.job_id

    async def finished():
        samples = await scrape()
        return samples if _value(samples, "tailor_batch_job_members_done", tenant=tenant, job=job) == 12 else None

    samples = await wait_for(finished, timeout=60)
    assert samples is not None, "the job's progress never reached its size"
    assert _value(samples, "tailor_batch_job_members_total", tenant=tenant, job=job) == 12
    reply = await suite.gateway.GetBatchJob(pb.GetBatchJobRequest(job_id=job), metadata=md)
    assert (reply.job.processed_count, reply.job.total_count) == (12, 12)


async def test_the_operator_reads_every_tenants_usage_and_a_tenant_key_only_its_own(suite, tmp_path):
    from services.gateway.admin import write_operator_key  # the key the gateway writes at start, in process here

    operator = await write_operator_key(suite.dsn, tmp_path / "operator_key")
    op_md = (("authorization", f"Bearer {operator}"),)
    tenant, md = await suite.new_tenant()
    other, _ = await suite.new_tenant()
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="banner", type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))), metadata=md)
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name="banner", name="welcome", priority=1, fallback=True, content=struct({"headline": "Hi"}))),
        metadata=md)
    for visitor in ("v1", "v2"):
        await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
            individual_id=common_pb2.Identity(type="device_id", value=visitor),
            personalization_points=[pb.PointRequest(name="banner")]), metadata=md)

    async def logged():
        own = await suite.gateway.GetUsageStats(pb.GetUsageStatsRequest(), metadata=md)
        return own if own.served_count == 2 else None

    own = await wait_for(logged, timeout=15)
    assert own is not None
    named = await suite.gateway.GetUsageStats(pb.GetUsageStatsRequest(tenant_id=tenant), metadata=op_md)
    assert (named.tenant_id, named.request_count, named.served_count) == (tenant, own.request_count, 2)
    empty = await suite.gateway.GetUsageStats(pb.GetUsageStatsRequest(tenant_id=other), metadata=op_md)
    assert (empty.tenant_id, empty.served_count) == (other, 0)

    refusals = [(pb.GetUsageStatsRequest(tenant_id=other), md, grpc.StatusCode.PERMISSION_DENIED),
                (pb.GetUsageStatsRequest(), op_md, grpc.StatusCode.INVALID_ARGUMENT),
                (pb.GetUsageStatsRequest(tenant_id="nobody-here"), op_md, grpc.StatusCode.NOT_FOUND)]
    for request, metadata, code in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await suite.gateway.GetUsageStats(request, metadata=metadata)
        assert info.value.code() == code, request
    assert status_details(info.value)[1] == "TENANT_NOT_FOUND"

    printed = await asyncio.to_thread(subprocess.run, [str(TAILOR), "stats", "--all-tenants", "--window", "1h",
                                                       "--gateway", f"127.0.0.1:{suite.ports['gateway']}",
                                                       "--operator-key", operator],
                                      capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert re.search(rf"^\s+{re.escape(tenant)}\s+{own.request_count}\s+2\s+{own.unique_individuals}$", printed.stdout, re.M), printed.stdout
    assert re.search(rf"^\s+{re.escape(other)}\s+0\s+0\s+0$", printed.stdout, re.M), printed.stdout
