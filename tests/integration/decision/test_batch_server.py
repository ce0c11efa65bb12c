"""QualifyBatch through the gRPC server on real PostgreSQL: same answers as Qualify, compact response, errors."""

from __future__ import annotations

import random

import grpc
import pytest

from personalization.decision.v1 import decision_service_pb2 as pb
from shared.errors import status_details
from tests.conftest import struct, tenant_md

RULES = (
    ("big_vip", 30, '"vip" in profile.segments && profile.insights.spend_30d > 200.0'),
    ("gold_email", 20, 'profile.attributes.tier == "gold" && context.channel == "email"'),
    ("adults", 10, "profile.attributes.age >= 18.0"),  # fails without the attribute, with an error reported
    ("buyers", 5, 'profile.events.exists(e, e.type == "PURCHASE")'),
)


def generated_profile(rng: random.Random) -> dict:
    profile = {
        "segments": rng.sample(["vip", "new", "lapsed", "mobile"], rng.randint(0, 2)),
        "insights": {"spend_30d": round(rng.random() * 400, 2)},
        "attributes": {"tier": rng.choice(["gold", "silver"])},
        "events": [{"type": rng.choice(["VIEW", "PURCHASE"]), "item_id": f"i{k}"} for k in range(rng.randint(0, 3))],
    }
    if rng.random() < 0.7:
        profile["attributes"]["age"] = float(rng.randint(12, 70))
    return profile


async def setup(stub, tenant, *, experiment=True):
    md = tenant_md(tenant)
    ids = {}
    for point in ("home_banner", "footer"):
        await stub.UpsertPoint(pb.UpsertPointRequest(point=pb.Point(
            name=point, type=pb.POINT_TYPE_MANUAL_CONTENT,
            template=pb.ResponseTemplate(fields=[pb.TemplateField(name="headline", type=pb.FIELD_TYPE_STRING)]))),
            metadata=md)
        for name, priority, rule in RULES + (("normal", 0, ""),):
            d = await stub.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
                point_name=point, name=name, priority=priority, rule=rule, fallback=name == "normal",
                content=struct({"headline": f"{point} {name}"}))), metadata=md)
            ids[(point, name)] = d.decision.decision_id
    for name in ("variant_a", "variant_b"):
        d = await stub.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
            point_name="home_banner", name=name, priority=-5, rule="false", content=struct({"headline": name}))),
            metadata=md)
        ids[("home_banner", name)] = d.decision.decision_id
    if experiment:
        await stub.UpsertExperiment(pb.UpsertExperimentRequest(experiment=pb.Experiment(
            name="banner_test", point_name="home_banner", targeting_rule='!("new" in profile.segments)',
            cohorts=[pb.Cohort(cohort_id="control", weight_bps=4000, control=True, fall_through=True),
                     pb.Cohort(cohort_id="a", weight_bps=3000, decision_id=ids[("home_banner", "variant_a")]),
                     pb.Cohort(cohort_id="b", weight_bps=2000, decision_id=ids[("home_banner", "variant_b")])],
            primary_metric=pb.METRIC_CONVERSION, min_participants=300, chance_to_win_threshold=95)), metadata=md)
        await stub.StartExperiment(pb.StartExperimentRequest(name="banner_test"), metadata=md)
    return ids


def expanded(response: pb.QualifyBatchResponse) -> list[list[pb.Qualification]]:
    """The compact response rebuilt as the Qualification lists Qualify returns (what a client does)."""
    decisions = {d.decision_id: d for d in response.decisions}
    rows = []
    for result in response.results:
        row = []
        for point, q in zip(response.points, result.qualifications, strict=True):
            full = pb.Qualification(point=point, evaluations=q.evaluations)
            if q.decision_id:
                full.decision.CopyFrom(decisions[q.decision_id])
            if q.HasField("experiment"):
                full.experiment.CopyFrom(q.experiment)
            row.append(full)
        rows.append(row)
    return rows


async def test_batch_answers_equal_qualify_for_each_of_300_generated_profiles_with_an_experiment_running(
        server, tenant):
    await setup(server, tenant)
    md = tenant_md(tenant)
    rng = random.Random(11)
    individuals = [pb.BatchIndividual(unified_individual_id=f"ind_{i}", profile=struct(generated_profile(rng)))
                   for i in range(300)]
    context = struct({"channel": "email"})
    response = await server.QualifyBatch(pb.QualifyBatchRequest(
        points=["home_banner", "footer"], context=context, individuals=individuals), metadata=md)
    assert [r.unified_individual_id for r in response.results] == [i.unified_individual_id for i in individuals]
    rows = expanded(response)
    for individual, row in zip(individuals, rows):
        single = await server.Qualify(pb.QualifyRequest(
            points=[pb.PointSelection(name="home_banner"), pb.PointSelection(name="footer")],
            profile=individual.profile, context=context,
            unified_individual_id=individual.unified_individual_id), metadata=md)
        assert list(single.qualifications) == row
    # Every path was compared: cohorts, fall-through and untargeted individuals, matches, failing rules, fallback.
    assert {q.experiment.cohort_id for row in rows for q in row[:1]} >= {"control", "a", "b", ""}
    names = {q.decision.name for row in rows for q in row}
    assert {"variant_a", "variant_b", "big_vip", "gold_email", "adults", "normal"} <= names
    assert any(e.error for row in rows for q in row for e in q.evaluations)


async def test_a_compact_answer_names_each_distinct_qualification_once_and_expands_to_the_full_answer(
        server, tenant):
    await setup(server, tenant)
    md = tenant_md(tenant)
    rng = random.Random(5)
    individuals = [pb.BatchIndividual(unified_individual_id=f"ind_{i}", profile=struct(generated_profile(rng)))
                   for i in range(300)]
    request = pb.QualifyBatchRequest(points=["home_banner", "footer"], context=struct({"channel": "email"}),
                                     individuals=individuals)
    full = await server.QualifyBatch(request, metadata=md)
    request.compact = True
    compact = await server.QualifyBatch(request, metadata=md)
    assert all(not r.qualifications for r in compact.results) and not full.qualifications
    for result in compact.results:
        del result.qualifications[:]
        result.qualifications.extend([compact.qualifications[i] for i in result.qualification_indexes])
    assert expanded(compact) == expanded(full)
    # Alike members share one qualification; only experiment assignments (bucket per member) are one each.
    shared = [q for q in compact.qualifications if not q.HasField("experiment")]
    assert len(shared) == len({q.SerializeToString(deterministic=True) for q in shared}) < 20
    assert list(compact.points) == list(full.points) and list(compact.decisions) == list(full.decisions)


async def test_points_and_decisions_are_returned_once_however_many_individuals_win_them(server, tenant):
    ids = await setup(server, tenant, experiment=False)
    response = await server.QualifyBatch(pb.QualifyBatchRequest(
        points=["footer"], context=struct({"channel": "web"}),
        individuals=[pb.BatchIndividual(unified_individual_id=f"ind_{i}",
                                        profile=struct({"segments": ["vip"], "insights": {"spend_30d": 500}}
                                                       if i % 2 else {}))
                     for i in range(200)]), metadata=tenant_md(tenant))
    assert [p.name for p in response.points] == ["footer"]
    assert sorted(d.decision_id for d in response.decisions) == sorted(
        [ids[("footer", "big_vip")], ids[("footer", "normal")]])
    winners = [r.qualifications[0].decision_id for r in response.results]
    assert winners == [ids[("footer", "big_vip")] if i % 2 else ids[("footer", "normal")] for i in range(200)]
    assert all(not r.qualifications[0].HasField("experiment") for r in response.results)
    # The profile keys footer's rules read, as Qualify names them: a batch caller sends only those.
    assert list(response.profile_keys) == ["attributes", "events", "insights", "segments"]
    assert list(response.qualify_profile_keys) == ["attributes", "events", "insights", "segments"]


async def test_fallback_only_serves_everyone_the_fallback_without_evaluating_rules(server, tenant):
    ids = await setup(server, tenant)
    response = await server.QualifyBatch(pb.QualifyBatchRequest(
        points=["home_banner"], fallback_only=True,
        individuals=[pb.BatchIndividual(unified_individual_id="ind_1", profile=struct({"segments": ["vip"]})),
                     pb.BatchIndividual(unified_individual_id="ind_2")]), metadata=tenant_md(tenant))
    assert [(r.qualifications[0].decision_id, len(r.qualifications[0].evaluations),
             r.qualifications[0].HasField("experiment")) for r in response.results] == \
        [(ids[("home_banner", "normal")], 0, False)] * 2


async def test_bad_batch_input_is_refused_with_a_violation_per_field(server, tenant):
    await setup(server, tenant, experiment=False)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.QualifyBatch(pb.QualifyBatchRequest(
            points=["footer", ""], individuals=[pb.BatchIndividual(unified_individual_id="ind_1"),
                                                pb.BatchIndividual()]), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(info.value)
    assert [path for path, _ in violations] == ["points[1]", "individuals[1].unified_individual_id"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.QualifyBatch(pb.QualifyBatchRequest(
            points=["footer"], individuals=[pb.BatchIndividual(unified_individual_id=f"i{i}") for i in range(1001)]),
            metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [path for path, _ in status_details(info.value)[0]] == ["individuals"]


async def test_unknown_and_archived_points_are_not_found(server, tenant):
    await setup(server, tenant, experiment=False)
    md = tenant_md(tenant)
    one = [pb.BatchIndividual(unified_individual_id="ind_1")]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.QualifyBatch(pb.QualifyBatchRequest(points=["footer", "nowhere"], individuals=one), metadata=md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(info.value)[1] == "POINT_NOT_FOUND"
    await server.ArchivePoint(pb.ArchivePointRequest(name="footer"), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.QualifyBatch(pb.QualifyBatchRequest(points=["footer"], individuals=one), metadata=md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(info.value)[1] == "POINT_ARCHIVED"
