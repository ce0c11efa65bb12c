"""GetRecommendations through the gateway with all five services: for an individual, around an item, for a cart;
scopes, bad input, quotas, the decision log, tenant isolation, and reflection listing only what is served."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor_pb2, timestamp_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from services.gateway.auth import METHOD_SCOPES
from shared.errors import status_details
from tests.conftest import struct, wait_for


def _purchase(message_id: str, customer: str, *items: str) -> common_pb2.Event:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PURCHASE, event_time=now,
                            identities=[common_pb2.Identity(type="customer_id", value=customer)],
                            line_items=[common_pb2.LineItem(item_id=i, quantity=1, unit_price=10) for i in items])


@pytest.fixture(scope="module")
async def shop(suite):
    """A tenant whose catalog has shoes and hats; `boots` sells most, `sandals` and `boots` are bought together."""
    _, admin = await suite.new_tenant(("ingest", "decide", "admin"))
    items = [("boots", "shoes"), ("sandals", "shoes"), ("sneakers", "shoes"), ("cap", "hats"), ("beanie", "hats")]
    await suite.profile_admin.UpsertItems(profile_pb.UpsertItemsRequest(items=[
        profile_pb.Item(item_id=i, name=i.title(), attributes=struct({"category": c})) for i, c in items]),
        metadata=admin)
    events = [_purchase("p1", "c1", "boots", "sandals"), _purchase("p2", "c2", "boots", "sandals"),
              _purchase("p3", "c3", "boots"), _purchase("p4", "c4", "cap"), _purchase("p5", "c1", "beanie")]
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events), metadata=admin)
    key = await suite.gateway.CreateApiKey(pb.CreateApiKeyRequest(display_name="shop", scopes=[pb.SCOPE_DECIDE]),
                                           metadata=admin)
    decide = (("authorization", f"Bearer {key.secret}"),)

    async def ranked():
        reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
            execution_flags=[pb.EXECUTION_FLAG_TEST_MODE]), metadata=decide)
        return [i.item_id for i in reply.items][:1] == ["boots"] and len(reply.items) == 4

    assert await wait_for(ranked), "the purchases never reached the recommender"
    return admin, decide


async def test_a_decide_key_gets_top_sellers_for_an_individual_with_attributes_and_a_logged_answer(suite, shop):
    admin, decide = shop
    reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
        individual_id=common_pb2.Identity(type="customer_id", value="c3"), count=3, item_attributes=["category"],
        channel="web", correlation_id="corr-1"), metadata=decide)
    assert reply.recommender == "top_sellers" and reply.unified_individual_id
    ids = [i.item_id for i in reply.items]
    assert ids[:2] == ["boots", "sandals"] and len(ids) == 3 and ids[2] in ("cap", "beanie")
    assert reply.items[0].attributes["category"] == "shoes" and reply.items[0].source == "top_sellers"
    assert list(reply.diagnostics) == []

    async def logged():
        page = await suite.decision_admin.ListDecisionLog(decision_pb.ListDecisionLogRequest(
            unified_individual_id=reply.unified_individual_id), metadata=admin)
        return [e for e in page.entries if e.personalization_id == reply.personalization_id]

    entries = await wait_for(logged)
    assert entries, "the answer was not written to the decision log"
    entry = entries[0]
    assert (entry.point_name, entry.channel, entry.correlation_id) == ("recommendations/top_sellers", "web", "corr-1")
    assert [d["item_id"] for d in entry.served["data"]] == [i.item_id for i in reply.items]


async def test_items_like_an_item_are_of_its_category_and_never_the_item_itself(suite, shop):
    _, decide = shop
    reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
        anchor_item_id="boots", item_attributes=["category", "name"]), metadata=decide)
    assert reply.recommender == "similar_attributes"
    ids = [i.item_id for i in reply.items]
    assert "boots" not in ids and set(ids[:2]) == {"sandals", "sneakers"}
    assert reply.items[0].attributes["name"] in ("Sandals", "Sneakers")


async def test_items_for_a_cart_are_those_bought_with_it(suite, shop):
    _, decide = shop
    reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(cart_item_ids=["sandals"]),
                                                   metadata=decide)
    assert reply.recommender == "co_bought"
    assert [i.item_id for i in reply.items][:1] == ["boots"]


async def test_filters_and_diagnostics_are_those_of_the_recommender(suite, shop):
    _, decide = shop
    reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
        individual_id=common_pb2.Identity(type="customer_id", value="c1"), recommender="top_sellers", count=5,
        exclude_purchased=True, exclude_item_ids=["cap"],
        execution_flags=[pb.EXECUTION_FLAG_DIAGNOSTICS, pb.EXECUTION_FLAG_TEST_MODE]), metadata=decide)
    ids = [i.item_id for i in reply.items]
    assert not {"boots", "sandals", "beanie", "cap"} & set(ids)  # c1 bought three of them, cap is excluded
    assert {f.filter: f.removed for f in reply.trace.filters}.get("exclude_purchased", 0) >= 1
    assert pb.DIAGNOSTIC_CODE_FEWER_ITEMS_THAN_REQUESTED in [d.code for d in reply.diagnostics]


async def test_an_unknown_individual_gets_a_non_personal_ranking_with_a_diagnostic(suite, shop):
    _, decide = shop
    reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
        individual_id=common_pb2.Identity(type="customer_id", value="nobody"), count=1), metadata=decide)
    assert [i.item_id for i in reply.items] == ["boots"] and reply.unified_individual_id == ""
    assert [d.code for d in reply.diagnostics] == [pb.DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL]


async def test_scopes_decide_who_may_ask(suite, shop):
    admin, _ = shop
    request = pb.GetRecommendationsRequest()
    for scopes in ([pb.SCOPE_INGEST], [pb.SCOPE_ADMIN]):
        key = await suite.gateway.CreateApiKey(pb.CreateApiKeyRequest(scopes=scopes), metadata=admin)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await suite.gateway.GetRecommendations(request, metadata=(("authorization", f"Bearer {key.secret}"),))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert status_details(refused.value)[1] == "SCOPE_MISSING"
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await suite.gateway.GetRecommendations(request)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_input_names_each_bad_field(suite, shop):
    _, decide = shop
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
            count=25, cart_item_ids=["boots", " "], recommender="Top Sellers",
            individual_id=common_pb2.Identity(type="Bad Type", value="x")), metadata=decide)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {f for f, _ in status_details(bad.value)[0]}
    assert fields == {"count", "cart_item_ids[1]", "recommender", "individual_id.type"}


async def test_an_unknown_recommender_is_not_found(suite, shop):
    _, decide = shop
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(recommender="no_such_thing"),
                                               metadata=decide)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_another_tenant_sees_none_of_the_shop_items(suite, shop):
    _, other = await suite.new_tenant(("decide",))
    reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(count=4), metadata=other)
    assert list(reply.items) == []
    assert [d.code for d in reply.diagnostics] == [pb.DIAGNOSTIC_CODE_FEWER_ITEMS_THAN_REQUESTED]


async def test_a_tenant_over_its_credits_gets_a_non_personal_ranking_marked_quota_exceeded(suite):
    tenant, md = await suite.new_tenant(("ingest", "decide", "admin"))
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[_purchase("q1", "buyer", "hat")]), metadata=md)

    async def known():
        reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
            individual_id=common_pb2.Identity(type="customer_id", value="buyer"),
            execution_flags=[pb.EXECUTION_FLAG_TEST_MODE]), metadata=md)
        return reply.unified_individual_id and len(reply.items) == 1

    assert await wait_for(known)
    conn = await asyncpg.connect(suite.dsn)
    try:
        await conn.execute("INSERT INTO gateway.quotas (tenant_id, decision_credit_limit, request_rate_limit) "
                           "VALUES ($1, 1, 0)", tenant)
        await conn.execute("INSERT INTO gateway.credit_usage (tenant_id, period_start, used) "
                           "VALUES ($1, date_trunc('month', now())::date, 1) ON CONFLICT (tenant_id, period_start) "
                           "DO UPDATE SET used = 1", tenant)
    finally:
        await conn.close()

    async def over():
        reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
            individual_id=common_pb2.Identity(type="customer_id", value="buyer")), metadata=md)
        return reply if pb.DIAGNOSTIC_CODE_QUOTA_EXCEEDED in [d.code for d in reply.diagnostics] else None

    reply = await wait_for(over, timeout=5)
    assert reply is not None, "the quota was never applied"
    assert reply.unified_individual_id == "" and [i.item_id for i in reply.items] == ["hat"]


async def _reflect(channel, request: reflection_pb2.ServerReflectionRequest):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    async for response in stub.ServerReflectionInfo(iter([request])):
        return response


async def test_reflection_on_the_gateway_port_lists_exactly_the_methods_it_serves(suite):
    listed = await _reflect(suite.channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    services = [s.name for s in listed.list_services_response.service]
    assert "personalization.recommender.v1.RecommenderService" in services
    reflected = set()
    for service in services:
        if service.startswith("grpc."):
            continue
        found = await _reflect(suite.channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service))
        for raw in found.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for s in file.service:
                if f"{file.package}.{s.name}" == service:
                    reflected |= {f"/{service}/{m.name}" for m in s.method}
    assert "/personalization.recommender.v1.RecommenderService/Recommend" not in reflected
    assert "/personalization.gateway.v1.GatewayService/GetRecommendations" in reflected
    assert reflected == set(METHOD_SCOPES)
