"""Experiments, schema, archiving, merges, outcomes and attribution through the gRPC server on real PostgreSQL."""

from __future__ import annotations

import random
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


async def setup(stub, tenant):
    md = tenant_md(tenant)
    await stub.UpsertPoint(pb.UpsertPointRequest(point=pb.Point(
        name="home_banner", type=pb.POINT_TYPE_MANUAL_CONTENT,
        template=pb.ResponseTemplate(fields=[pb.TemplateField(name="headline", type=pb.FIELD_TYPE_STRING)]))),
        metadata=md)
    ids = {}
    for name, fallback in (("normal", True), ("variant_a", False), ("variant_b", False)):
        d = await stub.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
            point_name="home_banner", name=name, fallback=fallback, rule="" if fallback else "false",
            content=struct({"headline": name}))), metadata=md)
        ids[name] = d.decision.decision_id
    return ids


def experiment(ids, **kw) -> pb.Experiment:
    e = pb.Experiment(
        name="banner_test", point_name="home_banner",
        cohorts=[pb.Cohort(cohort_id="control", weight_bps=3400, control=True, fall_through=True),
                 pb.Cohort(cohort_id="a", weight_bps=3300, decision_id=ids["variant_a"]),
                 pb.Cohort(cohort_id="b", weight_bps=3300, decision_id=ids["variant_b"])],
        primary_metric=pb.METRIC_CONVERSION, secondary_metrics=[pb.METRIC_REVENUE_PER_INDIVIDUAL],
        min_participants=300, chance_to_win_threshold=95, winner_selection=pb.WINNER_SELECTION_AUTOMATIC, **kw)
    return e


async def test_weights_over_ten_thousand_are_refused_and_nothing_is_stored(server, tenant, db):
    ids = await setup(server, tenant)
    bad = experiment(ids)
    bad.cohorts[0].weight_bps = 5000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.UpsertExperiment(pb.UpsertExperimentRequest(experiment=bad), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_details(info.value)[0][0][0] == "experiment.cohorts"
    assert await db.fetchval("SELECT count(*) FROM experiments WHERE tenant_id = $1", tenant) == 0


async def test_two_running_experiments_on_one_point_are_refused(server, tenant):
    ids = await setup(server, tenant)
    md = tenant_md(tenant)
    await server.UpsertExperiment(pb.UpsertExperimentRequest(experiment=experiment(ids)), metadata=md)
    other = experiment(ids)
    other.name = "other_test"
    await server.UpsertExperiment(pb.UpsertExperimentRequest(experiment=other), metadata=md)
    await server.StartExperiment(pb.StartExperimentRequest(name="banner_test"), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.StartExperiment(pb.StartExperimentRequest(name="other_test"), metadata=md)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(info.value)[1] == "EXPERIMENT_ALREADY_RUNNING"
    listed = await server.ListExperiments(pb.ListExperimentsRequest(point_name="home_banner"), metadata=md)
    assert {e.name: e.state for e in listed.experiments} == {
        "banner_test": pb.EXPERIMENT_STATE_RUNNING, "other_test": pb.EXPERIMENT_STATE_DRAFT}


async def test_seeded_simulated_experiment_picks_the_better_cohort_and_control_falls_through(server, tenant, db):
    ids = await setup(server, tenant)
    md = tenant_md(tenant)
    await server.UpsertExperiment(pb.UpsertExperimentRequest(experiment=experiment(ids)), metadata=md)
    started = await server.StartExperiment(pb.StartExperimentRequest(name="banner_test"), metadata=md)
    rng = random.Random(7)
    truth = {"control": 0.07, "a": 0.07, "b": 0.12}
    entries, outcomes = [], []
    start = datetime.now(UTC)
    for i in range(2400):
        uid = f"sim_{i}"
        reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="home_banner")],
                                                       unified_individual_id=uid), metadata=md)
        q = reply.qualifications[0]
        cohort = q.experiment.cohort_id
        assert q.experiment.in_experiment
        assert (q.decision.name == "normal") == (cohort == "control")
        entries.append(pb.DecisionLogEntry(
            personalization_id=f"pz_{i}", point_name="home_banner", decision_id=q.decision.decision_id,
            unified_individual_id=uid, experiment_id=q.experiment.experiment_id, cohort_id=cohort,
            log_time=ts(start)))
        if rng.random() < truth[cohort]:
            outcomes.append(pb.Outcome(outcome_id=f"o_{i}", unified_individual_id=uid, type=pb.OUTCOME_TYPE_PURCHASE,
                                       time=ts(start + timedelta(minutes=5)), item_ids=["sku"], revenue=30.0))
    for k in range(0, len(entries), 1000):
        await server.LogDecisions(pb.LogDecisionsRequest(entries=entries[k:k + 1000]), metadata=md)
    recorded = await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=outcomes), metadata=md)
    again = await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=outcomes), metadata=md)
    assert (recorded.recorded_count, again.recorded_count) == (len(outcomes), 0)
    results = await server.GetExperimentResults(pb.GetExperimentResultsRequest(name="banner_test"), metadata=md)
    by = {c.cohort_id: c for c in results.cohorts}
    assert sum(c.participants for c in results.cohorts) == 2400 and not results.sample_ratio_mismatch
    assert by["b"].chance_to_beat_control >= 0.95 and results.leading_cohort_id == "b"
    assert by["b"].secondary["REVENUE_PER_INDIVIDUAL"] == pytest.approx(30.0 * by["b"].converters / by["b"].participants)
    assert results.experiment.state == pb.EXPERIMENT_STATE_STOPPED and results.experiment.winner_cohort_id == "b"
    assert started.experiment.start_time.seconds > 0
    reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="home_banner")],
                                                   unified_individual_id="sim_1"), metadata=md)
    assert not reply.qualifications[0].HasField("experiment")


async def test_a_merge_flags_later_exposures_of_the_survivor(server, tenant):
    ids = await setup(server, tenant)
    md = tenant_md(tenant)
    await server.UpsertExperiment(pb.UpsertExperimentRequest(experiment=experiment(ids)), metadata=md)
    await server.StartExperiment(pb.StartExperimentRequest(name="banner_test"), metadata=md)
    assigned = {}
    for i in range(30):
        reply = await server.AssignExperiments(pb.AssignExperimentsRequest(unified_individual_id=f"m{i}"), metadata=md)
        assigned[f"m{i}"] = reply.assignments[0]
    alias = next(u for u, a in assigned.items() if a.cohort_id == "a")
    survivor = next(u for u, a in assigned.items() if a.cohort_id == "b")
    await server.AssignExperiments(pb.AssignExperimentsRequest(unified_individual_id=alias, record_exposure=True),
                                   metadata=md)
    merged = await server.ReassignIndividual(pb.ReassignIndividualRequest(
        from_unified_individual_ids=[alias], to_unified_individual_id=survivor), metadata=md)
    assert list(merged.conflicting_experiment_ids) == [assigned[alias].experiment_id]
    reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="home_banner")],
                                                   unified_individual_id=survivor), metadata=md)
    q = reply.qualifications[0]
    assert q.experiment.cohort_id == "b"
    await server.LogDecisions(pb.LogDecisionsRequest(entries=[pb.DecisionLogEntry(
        personalization_id="after_merge", point_name="home_banner", unified_individual_id=survivor,
        decision_id=q.decision.decision_id, experiment_id=q.experiment.experiment_id, cohort_id="b")]), metadata=md)
    log = await server.ListDecisionLog(pb.ListDecisionLogRequest(unified_individual_id=survivor), metadata=md)
    assert [(e.personalization_id, e.exposure_conflict, e.cohort_id) for e in log.entries] == [
        ("after_merge", True, "b")]


async def test_declared_schema_refuses_unknown_references_with_position(server, tenant, db):
    await setup(server, tenant)
    md = tenant_md(tenant)
    declared = await server.DeclareProfileSchema(pb.DeclareProfileSchemaRequest(schema=pb.ProfileSchema(
        attributes=[pb.SchemaField(name="age", type=pb.FIELD_TYPE_NUMBER)], segments=["vip"])), metadata=md)
    assert [a.name for a in declared.schema.attributes] == ["age"]
    got = await server.GetProfileSchema(pb.GetProfileSchemaRequest(), metadata=md)
    assert got.declared and list(got.schema.segments) == ["vip"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
            point_name="home_banner", name="typo", rule='profile.attributes.agge > 30.0',
            content=struct({"headline": "h"}))), metadata=md)
    [(path, message)] = status_details(info.value)[0]
    assert path == "decision.rule" and "line 1, column 20" in message
    assert await db.fetchval("SELECT count(*) FROM decisions WHERE tenant_id = $1 AND name = 'typo'", tenant) == 0


async def test_archived_decisions_and_points(server, tenant):
    ids = await setup(server, tenant)
    md = tenant_md(tenant)
    archived = await server.ArchiveDecision(pb.ArchiveDecisionRequest(decision_id=ids["normal"]), metadata=md)
    assert archived.decision.archived
    listed = await server.ListDecisions(pb.ListDecisionsRequest(point_name="home_banner"), metadata=md)
    assert ids["normal"] not in {d.decision_id for d in listed.decisions}
    listed = await server.ListDecisions(pb.ListDecisionsRequest(point_name="home_banner", include_archived=True),
                                        metadata=md)
    assert ids["normal"] in {d.decision_id for d in listed.decisions}
    reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="home_banner")]), metadata=md)
    assert not reply.qualifications[0].HasField("decision")
    await server.ArchivePoint(pb.ArchivePointRequest(name="home_banner"), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="home_banner")]), metadata=md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and status_details(info.value)[1] == "POINT_ARCHIVED"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.ArchiveDecision(pb.ArchiveDecisionRequest(decision_id="dec_nope"), metadata=md)
    assert status_details(info.value)[1] == "DECISION_NOT_FOUND"


async def test_attribution_credits_the_purchase_to_the_personalizations_before_it(server, tenant):
    ids = await setup(server, tenant)
    md = tenant_md(tenant)
    t0 = datetime.now(UTC) - timedelta(hours=3)
    await server.LogDecisions(pb.LogDecisionsRequest(entries=[
        pb.DecisionLogEntry(personalization_id="v1", point_name="home_banner", decision_id=ids["variant_a"],
                            unified_individual_id="u1", log_time=ts(t0), served=struct({"data": [{"item_id": "s1"}]})),
        pb.DecisionLogEntry(personalization_id="v2", point_name="home_banner", decision_id=ids["variant_b"],
                            unified_individual_id="u1", log_time=ts(t0 + timedelta(hours=1)),
                            served=struct({"data": [{"item_id": "s2"}]})),
    ]), metadata=md)
    await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[
        pb.Outcome(outcome_id="c1", unified_individual_id="u1", type=pb.OUTCOME_TYPE_CLICK,
                   time=ts(t0 + timedelta(minutes=10)), personalization_id="v1", item_ids=["s1"]),
        pb.Outcome(outcome_id="b1", unified_individual_id="u1", type=pb.OUTCOME_TYPE_PURCHASE,
                   time=ts(t0 + timedelta(hours=2)), item_ids=["s1"], revenue=40.0)]), metadata=md)
    reply = await server.GetAttribution(pb.GetAttributionRequest(point_name="home_banner"), metadata=md)
    rows = {(r.model, r.decision_id, r.item_id): r for r in reply.rows}
    assert rows[(pb.ATTRIBUTION_MODEL_FIRST_TOUCH_VIEW, ids["variant_a"], "s1")].revenue == 40.0
    assert rows[(pb.ATTRIBUTION_MODEL_LAST_TOUCH_VIEW, ids["variant_b"], "")].conversions == 1
    assert rows[(pb.ATTRIBUTION_MODEL_LAST_TOUCH_CLICK, ids["variant_a"], "")].conversions == 1
    assert rows[(pb.ATTRIBUTION_MODEL_LAST_TOUCH_CLICK, ids["variant_a"], "")].clicks == 1


async def test_bad_outcomes_are_refused_per_field(server, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[pb.Outcome(
            outcome_id="", type=pb.OUTCOME_TYPE_CLICK, revenue=5)]), metadata=tenant_md(tenant))
    assert {p for p, _ in status_details(info.value)[0]} == {
        "outcomes[0].outcome_id", "outcomes[0].unified_individual_id", "outcomes[0].time", "outcomes[0].revenue"}


async def test_an_attribution_window_past_what_a_duration_holds_is_refused_naming_it(server, tenant):
    request = pb.GetAttributionRequest(point_name="home_banner")
    request.window.seconds = 2**62
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.GetAttribution(request, metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [p for p, _ in status_details(info.value)[0]] == ["window"]


async def test_a_merge_with_overlong_ids_is_refused_per_field_and_stores_nothing(server, tenant, db):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.ReassignIndividual(pb.ReassignIndividualRequest(
            from_unified_individual_ids=["u1", "x" * 5000], to_unified_individual_id="y" * 201),
            metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [p for p, _ in status_details(info.value)[0]] == [
        "to_unified_individual_id", "from_unified_individual_ids[1]"]
    assert await db.fetchval("SELECT count(*) FROM individual_aliases WHERE tenant_id = $1", tenant) == 0


async def test_merges_applied_late_go_to_the_final_survivor_and_an_unmerge_frees_the_alias(server, tenant, db):
    md = tenant_md(tenant)

    async def aliases() -> dict[str, str]:
        rows = await db.fetch("SELECT alias_id, survivor_id FROM individual_aliases WHERE tenant_id = $1", tenant)
        return {r["alias_id"]: r["survivor_id"] for r in rows}

    # The pipeline applies merges in any order: "middle" into "top" first, then the older "early" into "middle".
    await server.ReassignIndividual(pb.ReassignIndividualRequest(
        from_unified_individual_ids=["middle"], to_unified_individual_id="top"), metadata=md)
    await server.ReassignIndividual(pb.ReassignIndividualRequest(
        from_unified_individual_ids=["early"], to_unified_individual_id="middle"), metadata=md)
    assert await aliases() == {"middle": "top", "early": "top"}
    # A merge of a survivor onto one of its own aliases (a stale order of the same facts) changes nothing.
    await server.ReassignIndividual(pb.ReassignIndividualRequest(
        from_unified_individual_ids=["top"], to_unified_individual_id="early"), metadata=md)
    assert await aliases() == {"middle": "top", "early": "top"}
    # "early" is split back off "top": it is its own individual again; "middle" stays merged.
    undone = await server.ReassignIndividual(pb.ReassignIndividualRequest(
        from_unified_individual_ids=["top"], to_unified_individual_id="early", unmerge=True), metadata=md)
    assert list(undone.conflicting_experiment_ids) == []
    assert await aliases() == {"middle": "top"}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.ReassignIndividual(pb.ReassignIndividualRequest(
            from_unified_individual_ids=["top", "other"], to_unified_individual_id="middle", unmerge=True),
            metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [p for p, _ in status_details(info.value)[0]] == ["from_unified_individual_ids"]
    assert await aliases() == {"middle": "top"}
