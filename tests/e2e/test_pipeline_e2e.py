"""End to end through the gateway with all five services: ingest -> identify -> update -> compute -> decide."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from shared.errors import status_details
from tests.conftest import struct, tenant_md, wait_for
from tests.suite import Suite

POINT = "home_banner"


def _content(headline: str):
    return struct({"headline": headline})


async def _configure(suite: Suite, md) -> None:
    await suite.profile_admin.UpsertInsight(profile_pb.UpsertInsightRequest(insight=profile_pb.Insight(
        name="spend_30d", aggregate=profile_pb.AGGREGATE_SUM, field="revenue",
        event_type=common_pb2.EVENT_TYPE_PURCHASE, window=duration_pb2.Duration(seconds=30 * 86400))), metadata=md)
    await suite.profile_admin.UpsertSegment(profile_pb.UpsertSegmentRequest(segment=profile_pb.Segment(
        name="big_spenders", rule="insights.spend_30d >= 100.0")), metadata=md)
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name=POINT, type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING, required=True)]))),
        metadata=md)
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name=POINT, name="vip_offer", priority=100, rule="'big_spenders' in profile.segments",
        content=_content("20% off for our best customers"))), metadata=md)
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name=POINT, name="welcome", priority=1, fallback=True, content=_content("Welcome!"))), metadata=md)


def _event(message_id, type_, *identities, **fields) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=type_, event_time=ts,
                            identities=[common_pb2.Identity(type=t, value=v) for t, v in identities], **fields)


async def _profile(suite, md, identity_type, value):
    """The public profile of an identity, or None while the pipeline has not processed it yet."""
    try:
        return await suite.gateway.GetProfile(pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type=identity_type, value=value)), metadata=md)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return None


async def _log_rows(dsn, tenant):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM decision.decision_log WHERE tenant_id = $1", tenant)
    finally:
        await conn.close()


async def test_an_anonymous_visitor_who_logs_in_and_buys_gets_the_segment_decision(suite):
    tenant, md = await suite.new_tenant()
    await _configure(suite, md)
    device = ("device_id", "dev-e2e-1")
    email = ("email", "Ann.Lee@Example.com ")
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("e1", common_pb2.EVENT_TYPE_PAGE_VIEW, device),
        _event("e2", common_pb2.EVENT_TYPE_PRODUCT_VIEW, device, item_id="sku-1"),
    ]), metadata=md)
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("e3", common_pb2.EVENT_TYPE_LOGIN, device, email),
    ]), metadata=md)

    before = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=common_pb2.Identity(type=device[0], value=device[1]),
        personalization_points=[pb.PointRequest(name=POINT)]), metadata=md)
    assert before.personalizations[0].decision_name in ("welcome", "")

    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("e4", common_pb2.EVENT_TYPE_PURCHASE, ("email", "ann.lee@example.com"),
               line_items=[common_pb2.LineItem(item_id="sku-1", quantity=3, unit_price=50.0)]),
    ]), metadata=md)

    async def in_segment():
        reply = await _profile(suite, md, *device)
        return reply if reply is not None and "big_spenders" in reply.segments else None

    profile = await wait_for(in_segment)
    assert profile is not None, "the purchase never put the individual in big_spenders"
    assert profile.insights["spend_30d"] == pytest.approx(150.0)
    assert sorted(e.message_id for e in profile.events) == ["e1", "e2", "e3", "e4"]
    assert {(i.type, i.value) for i in profile.identities} >= {device, ("email", "ann.lee@example.com")}

    decided = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=common_pb2.Identity(type=device[0], value=device[1]),
        personalization_points=[pb.PointRequest(name=POINT)],
        context=pb.DecisionContext(channel="web", correlation_id="corr-1")), metadata=md)
    served = decided.personalizations[0]
    assert served.decision_name == "vip_offer"
    assert served.data[0]["headline"] == "20% off for our best customers"

    async def logged():
        rows = await _log_rows(suite.dsn, tenant)
        return [r for r in rows if r["personalization_id"] == served.personalization_id]

    rows = await wait_for(logged)
    assert len(rows) == 1 and rows[0]["unified_individual_id"] == profile.unified_individual_id
    assert rows[0]["correlation_id"] == "corr-1"

    count = len(await _log_rows(suite.dsn, tenant))
    await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=common_pb2.Identity(type=device[0], value=device[1]),
        personalization_points=[pb.PointRequest(name=POINT)],
        execution_flags=[pb.EXECUTION_FLAG_TEST_MODE, pb.EXECUTION_FLAG_DIAGNOSTICS]), metadata=md)
    # A normal request after it: once its row is there, the TEST_MODE row would have been written too.
    marker = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=common_pb2.Identity(type=device[0], value=device[1]),
        personalization_points=[pb.PointRequest(name=POINT)]), metadata=md)
    marker_id = marker.personalizations[0].personalization_id

    async def marker_logged():
        rows = await _log_rows(suite.dsn, tenant)
        return rows if any(r["personalization_id"] == marker_id for r in rows) else None

    assert len(await wait_for(marker_logged)) == count + 1


async def test_a_new_visitor_gets_the_fallback_with_a_diagnostic_and_an_explanation(suite):
    _, md = await suite.new_tenant()
    await _configure(suite, md)
    reply = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=common_pb2.Identity(type="device_id", value="never-seen"),
        personalization_points=[pb.PointRequest(name=POINT)],
        execution_flags=[pb.EXECUTION_FLAG_DIAGNOSTICS]), metadata=md)
    served = reply.personalizations[0]
    assert served.decision_name == "welcome" and served.data[0]["headline"] == "Welcome!"
    assert pb.DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL in [d.code for d in served.diagnostics]
    assert [(r.decision_name, r.matched) for r in served.explanation.rules][0] == ("vip_offer", False)


async def test_merging_two_known_individuals_moves_the_anonymous_history_to_the_survivor(suite):
    _, md = await suite.new_tenant()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("m1", common_pb2.EVENT_TYPE_PAGE_VIEW, ("email", "old@example.com")),
        _event("m2", common_pb2.EVENT_TYPE_PAGE_VIEW, ("device_id", "dev-m")),
        _event("m3", common_pb2.EVENT_TYPE_LOGIN, ("device_id", "dev-m"), ("email", "old@example.com")),
    ]), metadata=md)

    async def merged():
        reply = await _profile(suite, md, "device_id", "dev-m")
        return reply if reply is not None and len(reply.events) == 3 else None

    profile = await wait_for(merged)
    assert profile is not None
    by_email = await suite.gateway.GetProfile(pb.GetProfileRequest(
        individual_id=common_pb2.Identity(type="email", value="old@example.com")), metadata=md)
    assert by_email.unified_individual_id == profile.unified_individual_id


async def test_an_unknown_point_is_not_found(suite):
    _, md = await suite.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
            individual_id=common_pb2.Identity(type="device_id", value="x"),
            personalization_points=[pb.PointRequest(name="nowhere")]), metadata=md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_invalid_rule_is_refused_when_saved_and_changes_nothing(suite):
    _, md = await suite.new_tenant()
    await _configure(suite, md)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
            point_name=POINT, name="broken", priority=5, rule="profile.segments.exists(s, ",
            content=_content("x"))), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["decision.rule"]
    listed = await suite.decision_admin.ListDecisions(decision_pb.ListDecisionsRequest(point_name=POINT),
                                                      metadata=md)
    assert sorted(d.name for d in listed.decisions) == ["vip_offer", "welcome"]


async def test_a_request_without_points_or_identity_gets_a_violation_per_field(suite):
    _, md = await suite.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.GetDecisions(pb.GetDecisionsRequest(), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["personalization_points", "individual_id"]


async def test_items_upserted_through_the_gateway_reach_the_recommender_and_come_back_shaped(suite):
    _, md = await suite.new_tenant()
    items = []
    for i in range(3):
        attributes = struct_pb2.Struct()
        attributes.update({"category": "shoes", "price": 10.0 + i})
        items.append(profile_pb.Item(item_id=f"sku-{i}", name=f"Shoe {i}", attributes=attributes))
    await suite.profile_admin.UpsertItems(profile_pb.UpsertItemsRequest(items=items), metadata=md)
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="new_in", type=decision_pb.POINT_TYPE_RECOMMENDATIONS,
        template=decision_pb.ResponseTemplate(item_attributes=["name", "price"]))), metadata=md)
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name="new_in", name="arrivals", fallback=True,
        recommendations=decision_pb.RecommendationSpec(recommender="new_arrivals", count=3))), metadata=md)
    reply = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=common_pb2.Identity(type="device_id", value="shopper"),
        personalization_points=[pb.PointRequest(name="new_in")],
        execution_flags=[pb.EXECUTION_FLAG_DIAGNOSTICS]), metadata=md)
    served = reply.personalizations[0]
    assert sorted(d["item_id"] for d in served.data) == ["sku-0", "sku-1", "sku-2"]
    assert {d["name"] for d in served.data} == {"Shoe 0", "Shoe 1", "Shoe 2"}
    assert all(d["source"] for d in served.data)
    assert "new_arrivals" in served.explanation.recommendations.recommenders


async def test_unmerge_through_the_gateway_moves_the_split_off_history_back(suite):
    from personalization.identity.v1 import identity_service_pb2 as identity_pb
    from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc

    identity = identity_grpc.IdentityServiceStub(suite.channel)
    tenant, md = await suite.new_tenant()
    # A shared phone alone no longer links; the default rule phone + fuzzy first name + last name does.
    await identity.UpsertIdentityType(identity_pb.UpsertIdentityTypeRequest(identity_type=identity_pb.IdentityType(
        name="phone", unique=False, normalization=identity_pb.NORMALIZATION_PHONE, default_region="US")),
        metadata=md)
    first = _event("n1", common_pb2.EVENT_TYPE_PAGE_VIEW, ("email", "jon@example.com"), ("phone", "+1 415 555 0100"))
    first.attributes.update({"first_name": "Jonathan", "last_name": "Smith"})
    second = _event("n2", common_pb2.EVENT_TYPE_PAGE_VIEW, ("customer_id", "c-9"))
    # The third record links the customer to the first one only through the rule (phone + names).
    third = _event("n3", common_pb2.EVENT_TYPE_PAGE_VIEW, ("customer_id", "c-9"), ("phone", "+14155550100"))
    third.attributes.update({"first_name": "Jonathon", "last_name": "Smith"})
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[first]), metadata=md)
    assert await wait_for(lambda: _profile(suite, md, "email", "jon@example.com"))  # the older individual
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[second]), metadata=md)
    assert await wait_for(lambda: _profile(suite, md, "customer_id", "c-9"))
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[third]), metadata=md)

    async def merged():
        reply = await _profile(suite, md, "customer_id", "c-9")
        return reply if reply is not None and len(reply.events) == 3 else None

    survivor = await wait_for(merged)
    assert survivor is not None, "the rule never merged the two records"
    individual = await identity.GetIndividual(
        identity_pb.GetIndividualRequest(unified_individual_id=survivor.unified_individual_id), metadata=md)
    [merged_id] = list(individual.individual.alias_ids)

    async def decision_alias() -> str | None:
        conn = await asyncpg.connect(suite.dsn)
        try:
            return await conn.fetchval("SELECT survivor_id FROM decision.individual_aliases WHERE tenant_id = $1 "
                                       "AND alias_id = $2", tenant, merged_id)
        finally:
            await conn.close()

    assert await decision_alias() == survivor.unified_individual_id
    undone = await identity.Unmerge(identity_pb.UnmergeRequest(unified_individual_id=merged_id), metadata=md)
    assert ("customer_id", "c-9") in {(i.type, i.value) for i in undone.identities}

    split = await _profile(suite, md, "customer_id", "c-9")
    kept = await _profile(suite, md, "email", "jon@example.com")
    assert split.unified_individual_id == merged_id != kept.unified_individual_id
    assert sorted(e.message_id for e in split.events) == ["n2", "n3"]
    assert [e.message_id for e in kept.events] == ["n1"]
    assert await decision_alias() is None  # its own decisions and outcomes count for it again


async def test_a_merge_whose_propagation_was_lost_is_applied_by_the_sweeper(suite):
    from personalization.identity.v1 import identity_service_pb2 as identity_pb
    from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
    from services.gateway.pipeline import MergeSweeper
    from shared import context as ctx

    tenant, md = await suite.new_tenant()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("s1", common_pb2.EVENT_TYPE_PAGE_VIEW, ("email", "sweep@example.com"))]), metadata=md)
    assert await wait_for(lambda: _profile(suite, md, "email", "sweep@example.com"))
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("s2", common_pb2.EVENT_TYPE_PAGE_VIEW, ("device_id", "dev-sweep"))]), metadata=md)
    assert await wait_for(lambda: _profile(suite, md, "device_id", "dev-sweep"))
    # The pipeline "crashes" right after identifying: the identity service merged, nobody else heard of it.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{suite.ports['identity']}") as channel:
        identity = identity_grpc.IdentityServiceStub(channel)
        internal = tenant_md(tenant)
        await identity.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(subjects=[identity_pb.Subject(
            identities=[common_pb2.Identity(type="device_id", value="dev-sweep"),
                        common_pb2.Identity(type="email", value="sweep@example.com")])]), metadata=internal)
        lost = await _profile(suite, md, "device_id", "dev-sweep")
        assert [e.message_id for e in lost.events] == ["s1"]  # the device's own event is stranded

        sweeper = next(job.__self__ for job in suite._running[-1][0].background
                       if isinstance(getattr(job, "__self__", None), MergeSweeper))
        ctx.tenant_var.set(tenant)
        assert await sweeper.merges.sweep(min_age_seconds=0) == 1
        healed = await _profile(suite, md, "device_id", "dev-sweep")
        assert sorted(e.message_id for e in healed.events) == ["s1", "s2"]
        left = await identity.ListUnpropagatedMergeEvents(identity_pb.ListUnpropagatedMergeEventsRequest(),
                                                          metadata=internal)
        assert list(left.merge_events) == []


async def test_a_crash_that_left_many_merges_unpropagated_is_repaired_in_one_pass_of_the_sweeper(suite):
    from personalization.identity.v1 import identity_service_pb2 as identity_pb
    from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
    from services.gateway.pipeline import MergeSweeper

    people = 30
    tenant, md = await suite.new_tenant()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event(f"{kind}{k}", common_pb2.EVENT_TYPE_PAGE_VIEW, identity)
        for k in range(people)
        for kind, identity in (("e", ("email", f"p{k}@example.com")), ("d", ("device_id", f"dev-{k}")))]),
        metadata=md)

    async def seen() -> bool:
        return await _profile(suite, md, "device_id", f"dev-{people - 1}") is not None

    assert await wait_for(seen)
    # A worker identified a chunk of logins (each links a person's device to their email), then crashed: the
    # identity service merged thirty pairs, nobody else heard of them; a chain (person 0's into person 1's) too.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{suite.ports['identity']}") as channel:
        identity = identity_grpc.IdentityServiceStub(channel)
        internal = tenant_md(tenant)
        await identity.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(subjects=[
            identity_pb.Subject(identities=[common_pb2.Identity(type="device_id", value=f"dev-{k}"),
                                            common_pb2.Identity(type="email", value=f"p{k}@example.com")])
            for k in range(people)] + [identity_pb.Subject(identities=[
                common_pb2.Identity(type="device_id", value="dev-0"),
                common_pb2.Identity(type="customer_id", value="c-1"),
                common_pb2.Identity(type="email", value="p1@example.com")])]), metadata=internal)
        stranded = await _profile(suite, md, "device_id", "dev-5")
        assert len(stranded.events) == 1  # the survivor's own; the other's is on the merged-away individual

        sweeper = next(job.__self__ for job in suite._running[-1][0].background
                       if isinstance(getattr(job, "__self__", None), MergeSweeper))
        swept, more = await sweeper.sweep_all(min_age_seconds=0)
        assert swept >= people + 1 and more is False
        for k in range(2, people):
            whole = await _profile(suite, md, "device_id", f"dev-{k}")
            assert sorted(e.message_id for e in whole.events) == [f"d{k}", f"e{k}"], k
        chained = await _profile(suite, md, "email", "p0@example.com")
        assert sorted(e.message_id for e in chained.events) == ["d0", "d1", "e0", "e1"]
        left = await identity.ListUnpropagatedMergeEvents(identity_pb.ListUnpropagatedMergeEventsRequest(),
                                                          metadata=internal)
        assert list(left.merge_events) == []
