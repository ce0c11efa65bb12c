"""The tenant's holdout and experiment layers through the gateway with all five services: a holdout individual gets
only defaults (and DIAGNOSTICS says so), two experiments in one layer never share an individual, and experiments in
two layers do."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from tests.suite import Suite

POINTS = ("hero", "footer", "sidebar")
PEOPLE = [f"layer{i}@example.com" for i in range(160)]


async def _points(suite: Suite, md) -> dict[tuple[str, str], str]:
    ids = {}
    for point in POINTS:
        await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
            name=point, type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
                fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))),
            metadata=md)
        for name, priority, rule, fallback in (("a", 2, "false", False), ("b", 1, "false", False),
                                               ("everyone", 1, "true", False), ("default", 0, "", True)):
            content = struct_pb2.Struct()
            content.update({"headline": name})
            reply = await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(
                decision=decision_pb.Decision(point_name=point, name=name, priority=priority, rule=rule,
                                              fallback=fallback, content=content)), metadata=md)
            ids[(point, name)] = reply.decision.decision_id
    return ids


async def _start(suite: Suite, md, ids, name: str, point: str, layer: str, start: int, end: int) -> None:
    await suite.decision_admin.UpsertExperiment(decision_pb.UpsertExperimentRequest(
        experiment=decision_pb.Experiment(
            name=name, point_name=point, primary_metric=decision_pb.METRIC_CONVERSION,
            cohorts=[decision_pb.Cohort(cohort_id="a", weight_bps=5000, decision_id=ids[(point, "a")]),
                     decision_pb.Cohort(cohort_id="b", weight_bps=5000, decision_id=ids[(point, "b")])],
            min_participants=300, chance_to_win_threshold=95.0,
            layer=decision_pb.ExperimentLayer(name=layer, start_bps=start, end_bps=end))), metadata=md)
    await suite.decision_admin.StartExperiment(decision_pb.StartExperimentRequest(name=name), metadata=md)


async def _ingest_people(suite: Suite, md) -> None:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        common_pb2.Event(message_id=f"m-{email}", type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=now,
                         identities=[common_pb2.Identity(type="email", value=email)]) for email in PEOPLE]),
        metadata=md)
    deadline = time.monotonic() + 60
    for email in PEOPLE:
        while True:
            try:
                await suite.gateway.GetProfile(pb.GetProfileRequest(
                    individual_id=common_pb2.Identity(type="email", value=email)), metadata=md)
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, f"{email} was never processed"
                await asyncio.sleep(0.05)


async def _decide(suite: Suite, md, email: str) -> list[pb.Personalization]:
    reply = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=common_pb2.Identity(type="email", value=email),
        personalization_points=[pb.PointRequest(name=p) for p in POINTS],
        execution_flags=[pb.EXECUTION_FLAG_DIAGNOSTICS]), metadata=md)
    return list(reply.personalizations)


async def test_layers_keep_one_layer_exclusive_and_let_layers_overlap_and_holdouts_get_only_defaults(suite):
    tenant, md = await suite.new_tenant()
    ids = await _points(suite, md)
    await _start(suite, md, ids, "hero_copy", "hero", "promo", 0, 5000)
    await _start(suite, md, ids, "footer_cta", "footer", "promo", 5000, 10_000)
    await _start(suite, md, ids, "sidebar_order", "sidebar", "layout", 0, 10_000)
    await _ingest_people(suite, md)

    members: dict[str, set[str]] = {"hero_copy": set(), "footer_cta": set(), "sidebar_order": set()}
    for email in PEOPLE:
        for p in await _decide(suite, md, email):
            assignment = p.explanation.experiment
            if assignment.in_experiment:
                members[assignment.experiment_name].add(email)
                assert assignment.layer == ("layout" if assignment.experiment_name == "sidebar_order" else "promo")
                assert p.experiment_id == assignment.experiment_id and p.decision_name == p.cohort_id
            assert not p.explanation.holdout
    assert not members["hero_copy"] & members["footer_cta"]  # one layer: never the same individual
    assert 50 < len(members["hero_copy"]) < 110 and 50 < len(members["footer_cta"]) < 110
    assert members["sidebar_order"] == set(PEOPLE)  # another layer: overlaps both
    assert members["hero_copy"] & members["sidebar_order"] and members["footer_cta"] & members["sidebar_order"]

    await suite.decision_admin.SetHoldout(decision_pb.SetHoldoutRequest(
        holdout=decision_pb.Holdout(fraction_bps=3000)), metadata=md)
    held = set()
    for email in PEOPLE:
        served = await _decide(suite, md, email)
        if served[0].explanation.holdout:
            held.add(email)
            for p in served:
                assert p.decision_name == "default" and not p.experiment_id and not p.cohort_id
                assert p.explanation.holdout and not p.explanation.rules
                assert [d.code for d in p.diagnostics] == [pb.DIAGNOSTIC_CODE_HOLDOUT]
        else:
            assert all(not p.explanation.holdout and p.decision_name != "default" for p in served)
    assert 25 < len(held) < 75

    conn = await asyncpg.connect(suite.dsn)
    try:
        for _ in range(200):
            count = await conn.fetchval(
                "SELECT count(*) FROM decision.decision_log WHERE tenant_id = $1 AND holdout", tenant)
            if count == 3 * len(held):
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert count == 3 * len(held)
