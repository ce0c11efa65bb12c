"""The decision service through its gRPC server on a real PostgreSQL."""

from __future__ import annotations

import grpc
import pytest

from personalization.decision.v1 import decision_service_pb2 as pb
from shared.errors import status_details
from tests.conftest import struct, tenant_md

BANNER = pb.Point(
    name="home_banner",
    description="The hero banner of the home page.",
    type=pb.POINT_TYPE_MANUAL_CONTENT,
    template=pb.ResponseTemplate(fields=[
        pb.TemplateField(name="headline", type=pb.FIELD_TYPE_STRING, required=True),
        pb.TemplateField(name="discount", type=pb.FIELD_TYPE_NUMBER),
    ]),
)


async def setup_banner(stub, tenant):
    point = (await stub.UpsertPoint(pb.UpsertPointRequest(point=BANNER), metadata=tenant_md(tenant))).point
    vip = await stub.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
        point_name="home_banner", name="big_spender_offer", priority=10,
        rule='"big_spenders" in profile.segments', content=struct({"headline": "20% off for you", "discount": 20}),
    )), metadata=tenant_md(tenant))
    default = await stub.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
        point_name="home_banner", name="default", fallback=True, content=struct({"headline": "Welcome"}),
    )), metadata=tenant_md(tenant))
    return point, vip.decision, default.decision


async def test_upserted_point_and_decisions_are_listed(server, tenant):
    point, vip, default = await setup_banner(server, tenant)
    assert point.point_id.startswith("pt_")
    again = await server.UpsertPoint(pb.UpsertPointRequest(point=BANNER), metadata=tenant_md(tenant))
    assert again.point.point_id == point.point_id
    listed = await server.ListPoints(pb.ListPointsRequest(), metadata=tenant_md(tenant))
    assert [p.name for p in listed.points] == ["home_banner"]
    assert [f.name for f in listed.points[0].template.fields] == ["headline", "discount"]
    decisions = await server.ListDecisions(pb.ListDecisionsRequest(point_name="home_banner"),
                                           metadata=tenant_md(tenant))
    assert [d.decision_id for d in decisions.decisions] == [vip.decision_id, default.decision_id]
    assert decisions.decisions[0].content["headline"] == "20% off for you"


async def test_qualify_picks_the_segment_targeted_decision_for_big_spenders(server, tenant):
    _, vip, _ = await setup_banner(server, tenant)
    reply = await server.Qualify(pb.QualifyRequest(
        points=[pb.PointSelection(name="home_banner")],
        profile=struct({"segments": ["big_spenders"], "attributes": {"first_name": "Ada"}}),
        context=struct({"channel": "web"}),
    ), metadata=tenant_md(tenant))
    [q] = reply.qualifications
    assert q.decision.decision_id == vip.decision_id
    assert q.decision.content["headline"] == "20% off for you"
    assert q.point.template.fields[0].name == "headline"
    assert [(e.decision_name, e.matched) for e in q.evaluations] == [("big_spender_offer", True)]


async def test_qualify_serves_the_fallback_to_everyone_else(server, tenant):
    _, _, default = await setup_banner(server, tenant)
    reply = await server.Qualify(pb.QualifyRequest(
        points=[pb.PointSelection(name="home_banner")], profile=struct({"segments": ["browsers"]}),
    ), metadata=tenant_md(tenant))
    [q] = reply.qualifications
    assert q.decision.decision_id == default.decision_id
    assert q.decision.content["headline"] == "Welcome"
    assert [(e.decision_name, e.matched) for e in q.evaluations] == [("big_spender_offer", False)]


async def test_qualify_can_force_a_decision(server, tenant):
    _, _, default = await setup_banner(server, tenant)
    reply = await server.Qualify(pb.QualifyRequest(
        points=[pb.PointSelection(name="home_banner", decision_id=default.decision_id)],
        profile=struct({"segments": ["big_spenders"]}),
    ), metadata=tenant_md(tenant))
    assert reply.qualifications[0].decision.name == "default"


async def test_unknown_point_returns_not_found(server, tenant):
    await setup_banner(server, tenant)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="home_banner"),
                                                       pb.PointSelection(name="footer")]),
                             metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(info.value)[1] == "POINT_NOT_FOUND"
    assert "points[1].name" in info.value.details()
    assert ("point", "footer") in _error_metadata(info.value)


def _error_metadata(error: grpc.aio.AioRpcError) -> set[tuple[str, str]]:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return set(info.metadata.items())
    return set()


async def test_invalid_cel_is_refused_on_decision_rule_and_nothing_is_stored(server, tenant, db):
    await setup_banner(server, tenant)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
            point_name="home_banner", name="broken", rule="profile.segments.exists(s, s ==",
            content=struct({"headline": "x"}),
        )), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(info.value)
    assert [f for f, _ in violations] == ["decision.rule"]
    assert "parse" in violations[0][1].lower()
    count = await db.fetchval("SELECT count(*) FROM decisions WHERE tenant_id = $1 AND name = 'broken'", tenant)
    assert count == 0


async def test_rule_referencing_an_unknown_variable_is_refused(server, tenant):
    await setup_banner(server, tenant)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
            point_name="home_banner", name="stranger", rule="user.age > 18",
            content=struct({"headline": "x"}),
        )), metadata=tenant_md(tenant))
    violations, _ = status_details(info.value)
    assert violations[0][0] == "decision.rule" and "user" in violations[0][1]


async def test_content_not_matching_the_template_is_refused_per_field(server, tenant, db):
    await setup_banner(server, tenant)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
            point_name="home_banner", name="bad_content", content=struct({"discount": "lots", "colour": "red"}),
        )), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(info.value)
    assert sorted(f for f, _ in violations) == [
        "decision.content.colour", "decision.content.discount", "decision.content.headline"]
    assert await db.fetchval("SELECT count(*) FROM decisions WHERE tenant_id = $1", tenant) == 2


async def test_decision_on_unknown_point_is_not_found(server, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
            point_name="nowhere", name="d", content=struct({}))), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(info.value)[1] == "POINT_NOT_FOUND"


async def test_recommendation_point_round_trips(server, tenant):
    await server.UpsertPoint(pb.UpsertPointRequest(point=pb.Point(
        name="pdp_recs", type=pb.POINT_TYPE_RECOMMENDATIONS,
        template=pb.ResponseTemplate(item_attributes=["title", "price"]))), metadata=tenant_md(tenant))
    stored = await server.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
        point_name="pdp_recs", name="top", recommendations=pb.RecommendationSpec(recommender="top_sellers"))),
        metadata=tenant_md(tenant))
    assert stored.decision.recommendations.count == 12
    reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="pdp_recs")]),
                                 metadata=tenant_md(tenant))
    [q] = reply.qualifications
    assert q.decision.recommendations.recommender == "top_sellers"
    assert list(q.point.template.item_attributes) == ["title", "price"]


async def test_log_rows_are_written_once_and_listed_newest_first(server, tenant, db):
    def entry(pid: str, individual: str, second: int) -> pb.DecisionLogEntry:
        e = pb.DecisionLogEntry(personalization_id=pid, request_id="r1", point_id="pt_1", point_name="home_banner",
                                decision_id="dec_1", unified_individual_id=individual, channel="web",
                                stage_ms={"qualify": 0.4})
        e.served.update({"data": [{"headline": "Welcome"}]})
        e.log_time.FromSeconds(1_700_000_000 + second)
        return e

    entries = [entry("p1", "u1", 1), entry("p2", "u2", 2), entry("p3", "u1", 3)]
    reply = await server.LogDecisions(pb.LogDecisionsRequest(entries=entries), metadata=tenant_md(tenant))
    assert reply.logged_count == 3
    reply = await server.LogDecisions(pb.LogDecisionsRequest(entries=entries[:2]), metadata=tenant_md(tenant))
    assert reply.logged_count == 0
    assert await db.fetchval("SELECT count(*) FROM decision_log WHERE tenant_id = $1", tenant) == 3
    page = await server.ListDecisionLog(pb.ListDecisionLogRequest(page_size=2), metadata=tenant_md(tenant))
    assert [e.personalization_id for e in page.entries] == ["p3", "p2"]
    assert page.entries[0].served["data"][0]["headline"] == "Welcome"
    assert page.entries[0].stage_ms["qualify"] == 0.4
    page = await server.ListDecisionLog(pb.ListDecisionLogRequest(page_size=2, page_token=page.next_page_token),
                                        metadata=tenant_md(tenant))
    assert [e.personalization_id for e in page.entries] == ["p1"] and page.next_page_token == ""
    mine = await server.ListDecisionLog(pb.ListDecisionLogRequest(unified_individual_id="u1"),
                                        metadata=tenant_md(tenant))
    assert [e.personalization_id for e in mine.entries] == ["p3", "p1"]


async def test_grouped_log_rows_are_written_with_the_shared_fields_and_their_own_items(server, tenant, db):
    shared = pb.DecisionLogEntry(request_id="job_1", point_id="pt_1", point_name="email_recs", decision_id="dec_1",
                                 channel="batch", batch_job_id="job_1")
    shared.log_time.FromSeconds(1_700_000_000)
    odd = ['sku "quoted"', "back\\slash", "comma,brace}", ""]
    request = pb.LogDecisionsRequest(entries=[pb.DecisionLogEntry(personalization_id="p0", point_name="home_banner")],
                                     groups=[pb.DecisionLogGroup(shared=shared, rows=[
                                         pb.DecisionLogRow(personalization_id="p1", unified_individual_id="u1",
                                                           item_ids=["sku-1", "sku-2"]),
                                         pb.DecisionLogRow(personalization_id="p2", unified_individual_id="u2",
                                                           item_ids=odd),
                                         pb.DecisionLogRow(personalization_id="p3", unified_individual_id="u3")])])
    assert (await server.LogDecisions(request, metadata=tenant_md(tenant))).logged_count == 4
    assert (await server.LogDecisions(request, metadata=tenant_md(tenant))).logged_count == 0
    rows = await db.fetch("SELECT personalization_id, unified_individual_id, point_name, decision_id, channel, "
                          "batch_job_id, item_ids, log_time FROM decision_log WHERE tenant_id = $1 "
                          "ORDER BY personalization_id", tenant)
    assert [(r["personalization_id"], r["unified_individual_id"], list(r["item_ids"])) for r in rows] == [
        ("p0", "", []), ("p1", "u1", ["sku-1", "sku-2"]), ("p2", "u2", odd), ("p3", "u3", [])]
    assert {(r["point_name"], r["decision_id"], r["channel"], r["batch_job_id"], r["log_time"].timestamp())
            for r in rows[1:]} == {("email_recs", "dec_1", "batch", "job_1", 1_700_000_000)}


async def test_grouped_log_rows_are_refused_naming_the_field_as_sent_and_nothing_is_written(server, tenant, db):
    request = pb.LogDecisionsRequest(groups=[
        pb.DecisionLogGroup(shared=pb.DecisionLogEntry(point_name="email_recs"),
                            rows=[pb.DecisionLogRow(personalization_id="p1"), pb.DecisionLogRow()]),
        pb.DecisionLogGroup(shared=pb.DecisionLogEntry(), rows=[pb.DecisionLogRow(personalization_id="p2")])])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.LogDecisions(request, metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["groups[0].rows[1].personalization_id",
                                                             "groups[1].shared.point_name"]
    too_many = pb.LogDecisionsRequest(
        entries=[pb.DecisionLogEntry(personalization_id="p0", point_name="email_recs")],
        groups=[pb.DecisionLogGroup(shared=pb.DecisionLogEntry(point_name="email_recs"), rows=[
            pb.DecisionLogRow(personalization_id=f"p{n}") for n in range(1, 1001)])])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.LogDecisions(too_many, metadata=tenant_md(tenant))
    assert [f for f, _ in status_details(info.value)[0]] == ["entries"]
    assert await db.fetchval("SELECT count(*) FROM decision_log WHERE tenant_id = $1", tenant) == 0


async def test_log_row_without_point_is_refused(server, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.LogDecisions(pb.LogDecisionsRequest(entries=[pb.DecisionLogEntry(personalization_id="p")]),
                                  metadata=tenant_md(tenant))
    assert status_details(info.value)[0][0][0] == "entries[0].point_name"


async def test_a_log_row_with_a_non_finite_number_is_refused_naming_it_and_nothing_is_written(server, tenant, db):
    good = pb.DecisionLogEntry(personalization_id="p_ok", point_name="home_banner")
    bad_served = pb.DecisionLogEntry(personalization_id="p_inf", point_name="home_banner")
    bad_served.served.update({"data": [{"price": float("inf")}]})
    bad_stage = pb.DecisionLogEntry(personalization_id="p_nan", point_name="home_banner",
                                    stage_ms={"qualify": float("nan")})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.LogDecisions(pb.LogDecisionsRequest(entries=[good, bad_served, bad_stage]),
                                  metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [f for f, _ in status_details(info.value)[0]]
    assert fields == ["entries[1].served", "entries[2].stage_ms['qualify']"]
    assert await db.fetchval("SELECT count(*) FROM decision_log WHERE tenant_id = $1", tenant) == 0


async def test_tenants_are_isolated(server, tenant):
    await setup_banner(server, tenant)
    await server.LogDecisions(pb.LogDecisionsRequest(entries=[pb.DecisionLogEntry(
        personalization_id="p1", point_name="home_banner")]), metadata=tenant_md(tenant))
    other = tenant + "_other"
    assert len((await server.ListPoints(pb.ListPointsRequest(), metadata=tenant_md(other))).points) == 0
    assert len((await server.ListDecisionLog(pb.ListDecisionLogRequest(), metadata=tenant_md(other))).entries) == 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="home_banner")]),
                             metadata=tenant_md(other))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.ListDecisions(pb.ListDecisionsRequest(point_name="home_banner"), metadata=tenant_md(other))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_calls_without_tenant_are_unauthenticated(server):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.ListPoints(pb.ListPointsRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
