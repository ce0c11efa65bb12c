"""Offline replay in the decision service through its gRPC server: QualifyDraft and ListReplayLog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from personalization.decision.v1 import decision_service_pb2 as pb
from shared.errors import status_details
from tests.conftest import struct, tenant_md
from tests.integration.decision.test_decision_server import setup_banner

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _ts(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def _case(profile: dict, uid: str = "u1") -> pb.DraftCase:
    return pb.DraftCase(unified_individual_id=uid, point_name="home_banner", profile=struct(profile),
                        context=struct({"channel": "web"}))


async def test_a_draft_is_qualified_over_the_live_configuration_and_nothing_is_stored(server, tenant):
    _, vip, default = await setup_banner(server, tenant)
    md = tenant_md(tenant)
    reply = await server.QualifyDraft(pb.QualifyDraftRequest(
        decisions=[
            # Same name as the live fallback: it replaces it, with new content.
            pb.Decision(point_name="home_banner", name="default", fallback=True, content=struct({"headline": "Hi"})),
            pb.Decision(point_name="home_banner", name="welcome_back", priority=20,
                        rule="profile.insights.visits > 2.0", content=struct({"headline": "Welcome back"})),
        ],
        cases=[_case({"segments": ["big_spenders"]}), _case({"insights": {"visits": 5.0}}), _case({})],
    ), metadata=md)
    assert [r.decision_id for r in reply.results] == [vip.decision_id, "draft:welcome_back", default.decision_id]
    assert list(reply.changed_decision_ids) == [default.decision_id, "draft:welcome_back"]
    assert {d.name for d in reply.decisions} == {"big_spender_offer", "default", "welcome_back"}
    listed = await server.ListDecisions(pb.ListDecisionsRequest(point_name="home_banner"), metadata=md)
    assert [(d.name, d.content["headline"]) for d in listed.decisions] == [
        ("big_spender_offer", "20% off for you"), ("default", "Welcome")]


async def test_an_archived_draft_decision_leaves_the_draft(server, tenant):
    _, vip, default = await setup_banner(server, tenant)
    removed = pb.Decision(decision_id=vip.decision_id, point_name="home_banner", name=vip.name, archived=True)
    reply = await server.QualifyDraft(pb.QualifyDraftRequest(
        decisions=[removed], cases=[_case({"segments": ["big_spenders"]})]), metadata=tenant_md(tenant))
    assert [r.decision_id for r in reply.results] == [default.decision_id]
    assert list(reply.changed_decision_ids) == []


async def test_a_bad_draft_names_each_bad_field_by_its_path(server, tenant):
    await setup_banner(server, tenant)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.QualifyDraft(pb.QualifyDraftRequest(
            points=[pb.Point(name="Bad Name", type=pb.POINT_TYPE_MANUAL_CONTENT)],
            decisions=[
                pb.Decision(point_name="home_banner", name="ok", rule="true", content=struct({"headline": "x"})),
                pb.Decision(point_name="home_banner", name="broken", rule="profile.segments ==",
                            content=struct({"headline": "x"})),
                pb.Decision(point_name="home_banner", name="nocontent", rule="true"),
            ]), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [f for f, _ in status_details(info.value)[0]]
    assert fields == ["points[0].name", "decisions[1].rule", "decisions[2].content"]


async def test_a_draft_decision_or_case_on_an_unknown_point_is_not_found(server, tenant):
    await setup_banner(server, tenant)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.QualifyDraft(pb.QualifyDraftRequest(decisions=[pb.Decision(
            point_name="nowhere", name="x", content=struct({}))]), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.QualifyDraft(pb.QualifyDraftRequest(cases=[pb.DraftCase(point_name="nowhere")]),
                                  metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_drafted_point_is_qualified_though_not_live(server, tenant):
    reply = await server.QualifyDraft(pb.QualifyDraftRequest(
        points=[pb.Point(name="new_point", type=pb.POINT_TYPE_MANUAL_CONTENT,
                         template=pb.ResponseTemplate(fields=[pb.TemplateField(name="t", type=pb.FIELD_TYPE_STRING)]))],
        decisions=[pb.Decision(point_name="new_point", name="only", fallback=True, content=struct({"t": "x"}))],
        cases=[pb.DraftCase(point_name="new_point")]), metadata=tenant_md(tenant))
    assert [r.decision_id for r in reply.results] == ["draft:only"]


async def test_the_replay_log_reads_a_window_oldest_first_with_outcomes_and_propensities(server, tenant):
    _, vip, default = await setup_banner(server, tenant)
    md = tenant_md(tenant)
    experiment = (await server.UpsertExperiment(pb.UpsertExperimentRequest(experiment=pb.Experiment(
        name="banner_test", point_name="home_banner", primary_metric=pb.METRIC_CLICK_THROUGH,
        cohorts=[pb.Cohort(cohort_id="control", weight_bps=2000, control=True, fall_through=True),
                 pb.Cohort(cohort_id="vip", weight_bps=6000, decision_id=vip.decision_id)],
        min_participants=300, chance_to_win_threshold=95.0)), metadata=md)).experiment
    rows = [
        pb.DecisionLogEntry(personalization_id="p0", point_name="home_banner", decision_id=default.decision_id,
                            unified_individual_id="u1", log_time=_ts(T0 - timedelta(minutes=1))),  # before
        pb.DecisionLogEntry(personalization_id="p1", point_name="home_banner", decision_id=vip.decision_id,
                            unified_individual_id="u1", log_time=_ts(T0), experiment_id=experiment.experiment_id,
                            cohort_id="vip"),
        pb.DecisionLogEntry(personalization_id="p2", point_name="home_banner", decision_id=default.decision_id,
                            unified_individual_id="u2", log_time=_ts(T0 + timedelta(minutes=1)),
                            experiment_id=experiment.experiment_id, cohort_id="control"),
        pb.DecisionLogEntry(personalization_id="p3", point_name="home_banner", decision_id=default.decision_id,
                            unified_individual_id="u3", log_time=_ts(T0 + timedelta(minutes=2))),
    ]
    await server.LogDecisions(pb.LogDecisionsRequest(entries=rows), metadata=md)
    await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[
        pb.Outcome(outcome_id="o1", unified_individual_id="u1", type=pb.OUTCOME_TYPE_PURCHASE,
                   time=_ts(T0 + timedelta(hours=1)), revenue=30.0),
        pb.Outcome(outcome_id="o2", unified_individual_id="u1", type=pb.OUTCOME_TYPE_PURCHASE,
                   time=_ts(T0 + timedelta(days=3)), revenue=99.0),  # after a 1-day window
        pb.Outcome(outcome_id="o3", unified_individual_id="u2", type=pb.OUTCOME_TYPE_CLICK,
                   time=_ts(T0 + timedelta(minutes=5)), personalization_id="p2"),
    ]), metadata=md)
    window = {"start_time": _ts(T0), "end_time": _ts(T0 + timedelta(hours=1))}
    first = await server.ListReplayLog(pb.ListReplayLogRequest(
        **window, attribution_window={"seconds": 86400}, page_size=2), metadata=md)
    assert [r.entry.personalization_id for r in first.rows] == ["p1", "p2"]
    p1, p2 = first.rows
    assert (p1.converted, p1.revenue, p1.clicked) == (True, 30.0, False)
    assert (p1.randomized, p1.propensity) == (True, pytest.approx(0.6))
    assert p1.primary_metric == pb.METRIC_CLICK_THROUGH
    assert set(p1.randomized_decision_ids) == {vip.decision_id}
    assert (p2.clicked, p2.converted, p2.randomized) == (True, False, True)
    # The fall-through control was served the normal decision, which everyone outside the vip cohort gets too.
    assert p2.propensity == pytest.approx(0.4)
    assert set(p2.randomized_decision_ids) == {vip.decision_id, default.decision_id}
    rest = await server.ListReplayLog(pb.ListReplayLogRequest(
        **window, page_size=2, page_token=first.next_page_token), metadata=md)
    assert [(r.entry.personalization_id, r.randomized, r.propensity) for r in rest.rows] == [("p3", False, 1.0)]
    assert rest.next_page_token == ""


async def test_the_replay_log_refuses_a_window_over_its_limit(server, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.ListReplayLog(pb.ListReplayLogRequest(
            start_time=_ts(T0), end_time=_ts(T0 + timedelta(days=32))), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["end_time"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.ListReplayLog(pb.ListReplayLogRequest(end_time=_ts(T0)), metadata=tenant_md(tenant))
    assert [f for f, _ in status_details(info.value)[0]] == ["start_time"]
