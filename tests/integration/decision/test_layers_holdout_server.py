"""Experiment layers, several experiments per point and the tenant's holdout through the gRPC server on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from personalization.decision.v1 import decision_service_pb2 as pb
from shared.errors import status_details
from tests.conftest import struct, tenant_md


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(value)
    return t


async def setup(stub, md, points=("home_banner", "footer")):
    ids = {}
    for point in points:
        await stub.UpsertPoint(pb.UpsertPointRequest(point=pb.Point(
            name=point, type=pb.POINT_TYPE_MANUAL_CONTENT,
            template=pb.ResponseTemplate(fields=[pb.TemplateField(name="headline", type=pb.FIELD_TYPE_STRING)]))),
            metadata=md)
        for name, fallback in (("default", True), ("a", False), ("b", False)):
            d = await stub.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
                point_name=point, name=name, fallback=fallback, rule="" if fallback else "false",
                content=struct({"headline": name}))), metadata=md)
            ids[(point, name)] = d.decision.decision_id
    return ids


def experiment(ids, name, point, layer=None) -> pb.Experiment:
    return pb.Experiment(
        name=name, point_name=point, layer=layer,
        cohorts=[pb.Cohort(cohort_id="a", weight_bps=5000, decision_id=ids[(point, "a")]),
                 pb.Cohort(cohort_id="b", weight_bps=5000, decision_id=ids[(point, "b")])],
        primary_metric=pb.METRIC_CONVERSION, min_participants=300, chance_to_win_threshold=95)


async def start(stub, md, e):
    await stub.UpsertExperiment(pb.UpsertExperimentRequest(experiment=e), metadata=md)
    return (await stub.StartExperiment(pb.StartExperimentRequest(name=e.name), metadata=md)).experiment


async def test_layers_are_stored_and_one_layer_refuses_overlapping_slices_while_a_point_runs_two_layers(
        server, tenant, db):
    md = tenant_md(tenant)
    ids = await setup(server, md)
    first = await start(server, md, experiment(ids, "first", "home_banner", pb.ExperimentLayer(
        name="hero", start_bps=0, end_bps=5000)))
    assert (first.layer.name, first.layer.start_bps, first.layer.end_bps) == ("hero", 0, 5000)
    assert first.hash_version == 2
    await server.UpsertExperiment(pb.UpsertExperimentRequest(experiment=experiment(
        ids, "overlapping", "footer", pb.ExperimentLayer(name="hero", start_bps=4000, end_bps=10_000))), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.StartExperiment(pb.StartExperimentRequest(name="overlapping"), metadata=md)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(info.value)[1] == "LAYER_RANGE_TAKEN"
    # Another layer on the same point runs beside the first; each individual is in at most one of them (layers in
    # name order claim individuals: "hero" takes its half, "other" everyone else).
    await start(server, md, experiment(ids, "second", "home_banner", pb.ExperimentLayer(
        name="other", start_bps=0, end_bps=10_000)))
    seen: dict[str, set[str]] = {"first": set(), "second": set()}
    for i in range(400):
        reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="home_banner")],
                                                       unified_individual_id=f"u{i}"), metadata=md)
        q = reply.qualifications[0]
        assert q.experiment.in_experiment and q.decision.name in ("a", "b")
        seen[q.experiment.experiment_name].add(f"u{i}")
        assert q.experiment.layer == {"first": "hero", "second": "other"}[q.experiment.experiment_name]
    assert 120 < len(seen["first"]) < 280 and len(seen["first"]) + len(seen["second"]) == 400
    rows = await db.fetch("SELECT name, layer, layer_start, layer_end FROM experiments WHERE tenant_id = $1 "
                          "AND state = 'RUNNING' ORDER BY name", tenant)
    assert [tuple(r) for r in rows] == [("first", "hero", 0, 5000), ("second", "other", 0, 10_000)]


async def test_a_bad_layer_is_invalid_argument_naming_the_field(server, tenant, db):
    md = tenant_md(tenant)
    ids = await setup(server, md)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.UpsertExperiment(pb.UpsertExperimentRequest(experiment=experiment(
            ids, "bad", "home_banner", pb.ExperimentLayer(name="hero", start_bps=10_000, end_bps=10_000))),
            metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in status_details(info.value)[0]} == {"experiment.layer.start_bps", "experiment.layer.end_bps"}
    assert await db.fetchval("SELECT count(*) FROM experiments WHERE tenant_id = $1", tenant) == 0


async def test_holdout_is_served_defaults_logged_and_measured_against_everyone_else(server, tenant, db):
    md = tenant_md(tenant)
    ids = await setup(server, md)
    await start(server, md, experiment(ids, "first", "home_banner"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.SetHoldout(pb.SetHoldoutRequest(holdout=pb.Holdout(fraction_bps=9000)), metadata=md)
    assert status_details(info.value)[0][0][0] == "holdout.fraction_bps"
    assert (await server.GetHoldout(pb.GetHoldoutRequest(), metadata=md)).holdout.fraction_bps == 0
    stored = await server.SetHoldout(pb.SetHoldoutRequest(holdout=pb.Holdout(fraction_bps=2500, seed="h1")),
                                     metadata=md)
    assert stored.holdout.update_time.seconds > 0
    start_time = datetime.now(UTC) - timedelta(minutes=1)
    held, entries, outcomes = set(), [], []
    for i in range(600):
        uid = f"u{i}"
        reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="home_banner")],
                                                       unified_individual_id=uid), metadata=md)
        q = reply.qualifications[0]
        if q.holdout:
            held.add(uid)
            assert q.decision.name == "default" and not q.HasField("experiment") and not q.evaluations
        else:
            assert q.experiment.in_experiment
        entries.append(pb.DecisionLogEntry(personalization_id=f"pz_{i}", point_name="home_banner", holdout=q.holdout,
                                           decision_id=q.decision.decision_id, unified_individual_id=uid))
        if i % 3 == 0:
            outcomes.append(pb.Outcome(outcome_id=f"o_{i}", unified_individual_id=uid, type=pb.OUTCOME_TYPE_PURCHASE,
                                       time=ts(datetime.now(UTC) + timedelta(minutes=1)), revenue=5.0))
    assert 100 < len(held) < 200
    await server.LogDecisions(pb.LogDecisionsRequest(entries=entries), metadata=md)
    await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=outcomes), metadata=md)
    assert await db.fetchval("SELECT count(*) FROM decision_log WHERE tenant_id = $1 AND holdout", tenant) == len(held)
    results = await server.GetHoldoutResults(pb.GetHoldoutResultsRequest(
        start_time=ts(start_time), end_time=ts(datetime.now(UTC) + timedelta(minutes=5))), metadata=md)
    by = {g.cohort_id: g for g in results.groups}
    assert results.holdout.fraction_bps == 2500 and results.holdout.seed == "h1"
    assert (by["holdout"].participants, by["personalized"].participants) == (len(held), 600 - len(held))
    assert by["holdout"].converters == sum(1 for i in range(600) if f"u{i}" in held and i % 3 == 0)
    assert by["holdout"].control and not results.sample_ratio_mismatch
