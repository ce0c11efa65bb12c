"""End to end through the gateway: a return (EVENT_TYPE_RETURN naming the order it cancels) reaches the profile graph
and the recommender, nets revenue in insights without counting as a purchase, and takes its order's lines out of
co-bought and top sellers; a malformed return is refused field by field and stores nothing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from shared.errors import status_details
from tests.conftest import wait_for

PURCHASE, RETURN = common_pb2.EVENT_TYPE_PURCHASE, common_pb2.EVENT_TYPE_RETURN
ANN = ("email", "ann@example.com")
BOB = ("email", "bob@example.com")


def _event(message_id, type_, who, lines, **fields) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=type_, event_time=ts,
                            identities=[common_pb2.Identity(type=who[0], value=who[1])],
                            line_items=[common_pb2.LineItem(item_id=i, quantity=q, unit_price=p) for i, q, p in lines],
                            **fields)


async def _insights(suite, md, who) -> dict[str, float] | None:
    try:
        profile = await suite.gateway.GetProfile(pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type=who[0], value=who[1])), metadata=md)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return None
    return dict(profile.insights)


async def _items(suite, md, recommender, **fields) -> list[tuple[str, float]]:
    reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
        recommender=recommender, count=12, execution_flags=[pb.EXECUTION_FLAG_TEST_MODE], **fields), metadata=md)
    return [(i.item_id, i.score) for i in reply.items]


async def test_a_return_nets_revenue_is_no_purchase_and_cancels_its_orders_lines_in_co_bought(suite):
    _, md = await suite.new_tenant()
    insights = {
        "spend": dict(aggregate=profile_pb.AGGREGATE_SUM, field="revenue", event_type=PURCHASE),
        "units": dict(aggregate=profile_pb.AGGREGATE_SUM, field="quantity", event_type=PURCHASE),
        "purchases": dict(aggregate=profile_pb.AGGREGATE_COUNT, event_type=PURCHASE),
        "returns": dict(aggregate=profile_pb.AGGREGATE_COUNT, event_type=RETURN),
        "refunded": dict(aggregate=profile_pb.AGGREGATE_SUM, field="revenue", event_type=RETURN),
        "biggest_order": dict(aggregate=profile_pb.AGGREGATE_MAX, field="revenue", event_type=PURCHASE),
    }
    for name, fields in insights.items():
        await suite.profile_admin.UpsertInsight(profile_pb.UpsertInsightRequest(
            insight=profile_pb.Insight(name=name, **fields)), metadata=md)
    # Ann buys a lamp with shades (o1) and a lamp with a bulb (o2), then returns all of o1; Bob buys a lamp with
    # a bulb (o3). A cancellation sent without its order (c1) lists a shade and a bulb.
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("o1", PURCHASE, ANN, [("lamp", 1, 40.0), ("shade", 2, 10.0)]),
        _event("o2", PURCHASE, ANN, [("lamp", 1, 40.0), ("bulb", 4, 2.5)]),
        _event("o3", PURCHASE, BOB, [("lamp", 1, 40.0), ("bulb", 2, 2.5)]),
    ]), metadata=md)
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("r1", RETURN, ANN, [("lamp", 1, 40.0), ("shade", 2, 10.0)], order_id="o1"),
        _event("c1", RETURN, BOB, [("shade", 1, 10.0), ("bulb", 1, 2.5)]),
    ]), metadata=md)

    async def settled():
        ann = await _insights(suite, md, ANN)
        return ann if ann and ann.get("returns") == 1 else None

    ann = await wait_for(settled)
    # Sums of purchases net out what was refunded; counts and maxima read purchases only (o1 was still placed).
    assert ann == {"spend": 50.0, "units": 5.0, "purchases": 2.0, "returns": 1.0, "refunded": -60.0,
                   "biggest_order": 60.0}
    assert await wait_for(lambda: _insights_equal(suite, md, BOB, {"spend": 32.5, "purchases": 1.0, "returns": 1.0}))

    async def co_bought():
        return await _items(suite, md, "co_bought", anchor_item_id="lamp")

    # o1 is cancelled line by line and c1 is no basket: the lamp was bought with the bulb twice, never with a shade.
    assert await wait_for(lambda: _when(co_bought, [("bulb", 2.0)])) == [("bulb", 2.0)]
    assert await _items(suite, md, "co_bought", anchor_item_id="shade") == []
    # Orders net of returned lines: lamp 3 - 1, bulb 2 - 1, shade 1 - 2 (never shown).
    assert await _items(suite, md, "top_sellers") == [("lamp", 2.0), ("bulb", 1.0)]


async def _insights_equal(suite, md, who, expected: dict[str, float]) -> bool:
    got = await _insights(suite, md, who)
    return got is not None and {k: got.get(k) for k in expected} == expected


async def _when(fetch, expected):
    got = await fetch()
    return got if got == expected else None


async def test_a_malformed_return_is_refused_field_by_field_and_stores_nothing(suite):
    _, md = await suite.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
            _event("ok", RETURN, ANN, [("lamp", 1, 40.0)], order_id="o1"),
            _event("r1", RETURN, ANN, []),
            _event("r2", RETURN, ANN, [("lamp", 1, 40.0), ("shade", -2, 10.0)], order_id="x" * 129),
            _event("p1", PURCHASE, ANN, [("lamp", 1, 40.0)], order_id="o1"),
        ]), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == [
        "events[1].line_items", "events[2].order_id", "events[2].line_items[1].quantity", "events[3].order_id"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.GetProfile(pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type=ANN[0], value=ANN[1])), metadata=md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
