"""Experiments, the live event stream and quotas through the gateway with all five services."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.quotas import set_quota
from tests.suite import Suite

POINT = "hero"


def _event(message_id: str, email: str) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=ts,
                            identities=[common_pb2.Identity(type="email", value=email)])


async def _point(suite: Suite, md) -> dict[str, str]:
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name=POINT, type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))), metadata=md)
    ids = {}
    for name, priority, rule, fallback in (("a", 2, "false", False), ("b", 1, "false", False),
                                           ("normal", 0, "", True)):
        content = struct_pb2.Struct()
        content.update({"headline": name})
        reply = await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(
            decision=decision_pb.Decision(point_name=POINT, name=name, priority=priority, rule=rule,
                                          fallback=fallback, content=content)), metadata=md)
        ids[name] = reply.decision.decision_id
    return ids


async def _known(suite: Suite, md, email: str) -> None:
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[_event(f"m-{email}", email)]), metadata=md)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            await suite.gateway.GetProfile(pb.GetProfileRequest(
                individual_id=common_pb2.Identity(type="email", value=email)), metadata=md)
            return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{email} was never processed")


async def test_every_channel_sees_the_same_sticky_cohort_and_the_log_records_it(suite):
    tenant, md = await suite.new_tenant()
    ids = await _point(suite, md)
    await suite.decision_admin.UpsertExperiment(decision_pb.UpsertExperimentRequest(
        experiment=decision_pb.Experiment(
            name="hero_test", point_name=POINT, primary_metric=decision_pb.METRIC_CONVERSION,
            cohorts=[decision_pb.Cohort(cohort_id="a", weight_bps=5000, decision_id=ids["a"]),
                     decision_pb.Cohort(cohort_id="b", weight_bps=5000, decision_id=ids["b"])],
            min_participants=300, chance_to_win_threshold=95.0,
            winner_selection=decision_pb.WINNER_SELECTION_MANUAL)), metadata=md)
    await suite.decision_admin.StartExperiment(decision_pb.StartExperimentRequest(name="hero_test"), metadata=md)
    await _known(suite, md, "exp@example.com")
    who = common_pb2.Identity(type="email", value="exp@example.com")
    assigned = await suite.gateway.AssignExperiments(pb.AssignExperimentsRequest(
        individual_id=who, point_names=[POINT]), metadata=md)
    [assignment] = assigned.assignments
    assert assignment.in_experiment and assignment.cohort_id in ("a", "b")
    for channel in ("web", "email", "app"):
        decided = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
            individual_id=who, personalization_points=[pb.PointRequest(name=POINT)],
            context=pb.DecisionContext(channel=channel)), metadata=md)
        served = decided.personalizations[0]
        assert (served.cohort_id, served.decision_name) == (assignment.cohort_id, assignment.cohort_id)
        assert served.experiment_id == assignment.experiment_id

    conn = await asyncpg.connect(suite.dsn)
    try:
        for _ in range(100):
            rows = await conn.fetch("SELECT cohort_id FROM decision.decision_log WHERE tenant_id = $1", tenant)
            if len(rows) == 3:
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert [r["cohort_id"] for r in rows] == [assignment.cohort_id] * 3


async def test_tailor_experiment_report_writes_the_results_page(suite, tmp_path):
    _, md = await suite.new_tenant()
    ids = await _point(suite, md)
    await suite.decision_admin.UpsertExperiment(decision_pb.UpsertExperimentRequest(
        experiment=decision_pb.Experiment(
            name="report_test", point_name=POINT, primary_metric=decision_pb.METRIC_CONVERSION,
            cohorts=[decision_pb.Cohort(cohort_id="a", weight_bps=5000, decision_id=ids["a"]),
                     decision_pb.Cohort(cohort_id="b", weight_bps=5000, decision_id=ids["b"])],
            min_participants=300, chance_to_win_threshold=95.0,
            winner_selection=decision_pb.WINNER_SELECTION_MANUAL)), metadata=md)
    out = tmp_path / "report.html"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tailor"), "experiment", "report", "report_test", "-o", str(out),
        "--gateway", f"127.0.0.1:{suite.ports['gateway']}", "--api-key", md[0][1].split(" ", 1)[1],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    page = out.read_text()
    assert "report_test" in page and "<svg" in page


async def test_watch_events_replays_the_last_event_then_streams_new_ones(suite):
    _, md = await suite.new_tenant()
    await _known(suite, md, "watch@example.com")
    stream = suite.gateway.WatchEvents(pb.WatchEventsRequest(
        individual_id=common_pb2.Identity(type="email", value="watch@example.com"), replay_count=1),
        metadata=md, timeout=20)
    first = await stream.read()
    assert first.event.message_id == "m-watch@example.com"
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[_event("second", "watch@example.com")]),
                                     metadata=md)
    second = await stream.read()
    assert second.event.message_id == "second"
    stream.cancel()


async def test_over_the_credit_quota_decisions_degrade_to_the_fallback_with_a_diagnostic(suite):
    tenant, md = await suite.new_tenant()
    ids = await _point(suite, md)
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        decision_id=ids["a"], point_name=POINT, name="a", priority=2, rule="true",
        content=struct_pb2.Struct(fields={"headline": struct_pb2.Value(string_value="a")}))), metadata=md)
    pool = await asyncpg.create_pool(suite.dsn, min_size=1, max_size=1, server_settings={"search_path": "gateway"})
    await set_quota(pool, tenant, credit_limit=1, rate_limit=0)
    await pool.close()
    request = pb.GetDecisionsRequest(individual_id=common_pb2.Identity(type="device_id", value="q1"),
                                     personalization_points=[pb.PointRequest(name=POINT)])
    first = (await suite.gateway.GetDecisions(request, metadata=md)).personalizations[0]
    second = (await suite.gateway.GetDecisions(request, metadata=md)).personalizations[0]
    assert first.decision_name == "a"
    assert second.decision_name == "normal"
    assert pb.DIAGNOSTIC_CODE_QUOTA_EXCEEDED in [d.code for d in second.diagnostics]
    usage = await suite.gateway.GetUsage(pb.GetUsageRequest(), metadata=md)
    assert (usage.decision_credits_used, usage.decision_credit_limit) == (1, 1)


async def test_over_the_request_rate_ingest_is_resource_exhausted_with_retry_info(suite):
    tenant, md = await suite.new_tenant()
    pool = await asyncpg.create_pool(suite.dsn, min_size=1, max_size=1, server_settings={"search_path": "gateway"})
    await set_quota(pool, tenant, credit_limit=0, rate_limit=0.01)
    await pool.close()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[_event("r1", "rate@example.com")]), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[_event("r2", "rate@example.com")]),
                                         metadata=md)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(info.value)
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry, "no RetryInfo in the status"
    info_msg = error_details_pb2.RetryInfo()
    retry[0].Unpack(info_msg)
    assert info_msg.retry_delay.seconds > 0
