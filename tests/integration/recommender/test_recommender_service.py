"""The recommender through its gRPC server on a real PostgreSQL: recording, idempotency, ranking, filters,
bad input and tenant isolation."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from personalization.common.v1 import common_pb2
from personalization.recommender.v1 import recommender_service_pb2 as pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from services.recommender.server import Settings, build
from shared.errors import status_details
from shared.runtime import start_built, stop_built
from tests.conftest import tenant_md

VIEW = common_pb2.EVENT_TYPE_PRODUCT_VIEW
CART = common_pb2.EVENT_TYPE_ADD_TO_CART
PURCHASE = common_pb2.EVENT_TYPE_PURCHASE


@pytest.fixture(scope="module")
async def service(database_url):
    # No cache, so every Recommend sees what was recorded just before it.
    built = await build(database_url, Settings(cache_seconds=0.0, cache_items=30))
    running, tasks = await start_built(built, port=0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    db = await asyncpg.connect(database_url)
    yield pb_grpc.RecommenderServiceStub(channel), db
    await db.close()
    await channel.close()
    await stop_built(built, running, tasks, grace=0)


@pytest.fixture
def stub(service):
    return service[0]


@pytest.fixture
def db(service):
    return service[1]


def interaction(message, who, item, kind=PURCHASE, quantity=0.0, revenue=0.0, seconds=1_700_000_000):
    message_pb = pb.Interaction(
        message_id=message, unified_individual_id=who, item_id=item, type=kind, quantity=quantity, revenue=revenue
    )
    message_pb.event_time.FromSeconds(seconds)
    return message_pb


async def record(stub, tenant, interactions) -> int:
    reply = await stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=interactions),
                                          metadata=tenant_md(tenant))
    return reply.recorded_count


async def recommend(stub, tenant, strategy, count=0, who="", exclude=(), exclude_purchased=False):
    reply = await stub.Recommend(
        pb.RecommendRequest(unified_individual_id=who, strategy=strategy, count=count,
                            exclude_item_ids=list(exclude), exclude_purchased=exclude_purchased),
        metadata=tenant_md(tenant),
    )
    return [(i.item_id, i.score, i.source) for i in reply.items]


async def item_stats(db, tenant):
    rows = await db.fetch(
        "SELECT item_id, units_bought, revenue, views, carts, last_interaction_at FROM recommender.item_stats "
        "WHERE tenant_id = $1 ORDER BY item_id", tenant)
    return [tuple(r) for r in rows]


async def test_recorded_interactions_become_item_statistics(stub, db, tenant):
    recorded = await record(stub, tenant, [
        interaction("order-1", "ann", "shoe", quantity=2, revenue=80.0, seconds=1_700_000_100),
        interaction("order-1", "ann", "sock", quantity=3, revenue=9.0, seconds=1_700_000_100),
        interaction("view-1", "bob", "shoe", VIEW, seconds=1_700_000_200),
        interaction("cart-1", "bob", "sock", CART, seconds=1_700_000_050),
        interaction("return-1", "ann", "sock", quantity=-1, revenue=-3.0, seconds=1_700_000_300),
    ])
    assert recorded == 5
    stats = {row[0]: row[1:5] for row in await item_stats(db, tenant)}
    assert stats == {"shoe": (2.0, 80.0, 1, 0), "sock": (2.0, 6.0, 0, 1)}
    last = {row[0]: row[5].timestamp() for row in await item_stats(db, tenant)}
    assert last == {"shoe": 1_700_000_200, "sock": 1_700_000_300}
    bought = await db.fetch(
        "SELECT item_id, units FROM recommender.individual_items WHERE tenant_id = $1 AND unified_individual_id = 'ann' "
        "ORDER BY item_id", tenant)
    assert [tuple(r) for r in bought] == [("shoe", 2.0), ("sock", 2.0)]


async def test_re_recording_the_same_interactions_changes_no_count(stub, db, tenant):
    batch = [
        interaction("order-1", "ann", "shoe", quantity=2, revenue=80.0),
        interaction("view-1", "bob", "shoe", VIEW),
        interaction("cart-1", "bob", "sock", CART),
    ]
    assert await record(stub, tenant, batch) == 3
    before = await item_stats(db, tenant)
    ranked = await recommend(stub, tenant, "top_sellers")

    assert await record(stub, tenant, batch) == 0
    assert await record(stub, tenant, batch[:1] + [interaction("order-2", "cy", "sock", quantity=1)]) == 1

    after = dict((row[0], row) for row in await item_stats(db, tenant))
    assert after["shoe"] == dict((row[0], row) for row in before)["shoe"]
    assert await db.fetchval("SELECT count(*) FROM recommender.interactions WHERE tenant_id = $1", tenant) == 4
    assert ranked == [("shoe", 1.0, "top_sellers")]
    assert await recommend(stub, tenant, "top_sellers") == [("shoe", 1.0, "top_sellers"), ("sock", 1.0, "top_sellers")]


async def test_concurrent_retries_of_one_batch_record_it_once(stub, db, tenant):
    batch = [interaction(f"order-{n}", "ann", f"item-{n % 7}", quantity=1) for n in range(200)]
    counts = await asyncio.gather(*(record(stub, tenant, batch) for _ in range(4)))
    assert sum(counts) == 200
    total = await db.fetchval("SELECT sum(units_bought) FROM recommender.item_stats WHERE tenant_id = $1", tenant)
    assert total == 200


async def test_top_sellers_ranks_by_orders_or_net_units_and_most_viewed_by_sessions_or_views(stub, tenant):
    await record(stub, tenant, [
        interaction("o1", "ann", "a", quantity=5), interaction("o1", "ann", "b", quantity=7),
        interaction("o2", "bob", "c", quantity=6), interaction("r1", "bob", "b", quantity=-4),
        interaction("o3", "cy", "d", quantity=1), interaction("r2", "cy", "d", quantity=-1),
        interaction("o4", "dan", "a", quantity=1),
        interaction("v1", "ann", "d", VIEW), interaction("v2", "bob", "d", VIEW), interaction("v3", "bob", "a", VIEW),
    ])
    # By orders: a return cancels one (b and d are left with none).
    assert await recommend(stub, tenant, "top_sellers") == [("a", 2.0, "top_sellers"), ("c", 1.0, "top_sellers")]
    # bob views a again ten minutes later (the same session), then two hours later (a new one).
    await record(stub, tenant, [interaction("v4", "bob", "a", VIEW, seconds=1_700_000_600)])
    await record(stub, tenant, [interaction("v5", "bob", "a", VIEW, seconds=1_700_007_200)])
    assert await recommend(stub, tenant, "most_viewed") == [("a", 2.0, "most_viewed"), ("d", 2.0, "most_viewed")]
    md = tenant_md(tenant)
    for name, strategy in (("units", "top_sellers"), ("views", "most_viewed")):
        await stub.PutRecommender(pb.PutRecommenderRequest(config=pb.RecommenderConfig(
            name=name, strategy=strategy, parameters=pb.StrategyParameters(by_units=True))), metadata=md)
    assert await recommend(stub, tenant, "units") == [("a", 6.0, "units"), ("c", 6.0, "units"), ("b", 3.0, "units")]
    assert await recommend(stub, tenant, "views") == [("a", 3.0, "views"), ("d", 2.0, "views")]
    # Windowed rankings read the interactions and count the same way.
    for name, strategy in (("recent_orders", "top_sellers"), ("recent_sessions", "most_viewed")):
        await stub.PutRecommender(pb.PutRecommenderRequest(config=pb.RecommenderConfig(
            name=name, strategy=strategy, parameters=pb.StrategyParameters(window_days=36_500))), metadata=md)
    assert await recommend(stub, tenant, "recent_orders") == [("a", 2.0, "recent_orders"), ("c", 1.0, "recent_orders")]
    assert await recommend(stub, tenant, "recent_sessions") == [("a", 2.0, "recent_sessions"),
                                                                 ("d", 2.0, "recent_sessions")]


async def test_bought_by_you_again_returns_the_individuals_own_items_by_units(stub, tenant):
    await record(stub, tenant, [
        interaction("o1", "ann", "a", quantity=1), interaction("o2", "ann", "b", quantity=4),
        interaction("o3", "bob", "c", quantity=9),
    ])
    assert await recommend(stub, tenant, "bought_by_you_again", who="ann") == [
        ("b", 4.0, "bought_by_you_again"), ("a", 1.0, "bought_by_you_again"),
    ]


async def test_exclude_filters_still_return_the_full_count(stub, tenant):
    # 60 items with distinct sales; the cache keeps 30, so filtering 15 of its head still fills 12 from it,
    # and filtering 25 must reach past it.
    await record(stub, tenant, [interaction(f"o{n}", "crowd", f"item{n:02}", quantity=100 - n) for n in range(60)])
    await record(stub, tenant, [interaction("mine", "me", f"item{n:02}", quantity=1) for n in range(10)])

    excluded = [f"item{n:02}" for n in range(10, 15)]
    items = await recommend(stub, tenant, "top_sellers", count=12, who="me", exclude=excluded,
                            exclude_purchased=True)
    assert [i for i, _, _ in items] == [f"item{n:02}" for n in range(15, 27)]

    excluded = [f"item{n:02}" for n in range(10, 25)]
    items = await recommend(stub, tenant, "top_sellers", count=24, who="me", exclude=excluded,
                            exclude_purchased=True)
    assert [i for i, _, _ in items] == [f"item{n:02}" for n in range(25, 49)]


async def test_no_statistics_yet_gives_an_empty_list(stub, tenant):
    assert await recommend(stub, tenant, "top_sellers") == []
    assert await recommend(stub, tenant, "bought_by_you_again", who="ann", exclude_purchased=True) == []


async def test_bad_interactions_are_refused_with_their_paths_and_change_nothing(stub, db, tenant):
    batch = [
        interaction("ok", "ann", "a", quantity=1),
        interaction("", "ann", "a", quantity=1),
        interaction("m2", "", "a", VIEW),
        interaction("m3", "ann", "", CART),
        interaction("m4", "ann", "a", common_pb2.EVENT_TYPE_PAGE_VIEW),
        interaction("m5", "ann", "a", common_pb2.EVENT_TYPE_UNSPECIFIED),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await record(stub, tenant, batch)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(info.value)
    assert [f for f, _ in violations] == [
        "interactions[1].message_id",
        "interactions[2].unified_individual_id",
        "interactions[3].item_id",
        "interactions[4].type",
        "interactions[5].type",
    ]
    assert await db.fetchval("SELECT count(*) FROM recommender.interactions WHERE tenant_id = $1", tenant) == 0
    assert await item_stats(db, tenant) == []


async def test_more_than_ten_thousand_interactions_are_refused(stub, tenant):
    batch = [interaction(f"m{n}", "ann", "a", VIEW) for n in range(10_001)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await record(stub, tenant, batch)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["interactions"]


async def test_ten_thousand_interactions_are_recorded_in_one_call(stub, db, tenant):
    batch = [interaction(f"m{n}", f"u{n % 100}", f"i{n % 500}", VIEW) for n in range(10_000)]
    assert await record(stub, tenant, batch) == 10_000
    assert await db.fetchval("SELECT sum(views) FROM recommender.item_stats WHERE tenant_id = $1", tenant) == 10_000


@pytest.mark.parametrize(("strategy", "count", "field"), [
    ("top_sellers", 25, "count"),
    ("top_sellers", -1, "count"),
    ("", 12, "strategy"),
])
async def test_bad_recommend_requests_name_the_bad_field(stub, tenant, strategy, count, field):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await recommend(stub, tenant, strategy, count=count)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == [field]


async def test_an_unknown_recommender_name_is_not_found(stub, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await recommend(stub, tenant, "best_ever")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(info.value)[1] == "RECOMMENDER_NOT_FOUND"


async def test_a_call_without_tenant_is_unauthenticated(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Recommend(pb.RecommendRequest(strategy="top_sellers"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_tenants_never_see_each_others_interactions(stub, db, tenant):
    other = tenant + "_other"
    await record(stub, tenant, [interaction("o1", "ann", "mine", quantity=3), interaction("v1", "ann", "mine", VIEW)])
    assert await recommend(stub, other, "top_sellers") == []
    assert await recommend(stub, other, "most_viewed") == []
    assert await recommend(stub, other, "bought_by_you_again", who="ann") == []
    # The same message id is a different interaction in another tenant.
    assert await record(stub, other, [interaction("o1", "ann", "theirs", quantity=1)]) == 1
    assert await recommend(stub, other, "top_sellers") == [("theirs", 1.0, "top_sellers")]
    assert await recommend(stub, tenant, "top_sellers") == [("mine", 1.0, "top_sellers")]


async def test_a_non_finite_number_in_a_filter_value_is_refused_naming_it(stub, tenant):
    from google.protobuf import struct_pb2

    bad = struct_pb2.Value()
    bad.list_value.values.add().number_value = float("nan")
    config = pb.RecommenderConfig(name="nan_filter", strategy="top_sellers",
                                  exclude=[pb.Condition(attribute="brand", values=[struct_pb2.Value(string_value="x"), bad])])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PutRecommender(pb.PutRecommenderRequest(config=config), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["config.exclude[0].values[1]"]
    listed = await stub.ListRecommenders(pb.ListRecommendersRequest(), metadata=tenant_md(tenant))
    assert "nan_filter" not in [c.name for c in listed.recommenders]
