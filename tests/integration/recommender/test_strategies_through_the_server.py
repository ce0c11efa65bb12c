"""Every rules-based strategy, the context and profile filters, the attribute conditions and the affinity boosters,
through the gRPC server on a real PostgreSQL: the items returned and their order, with event and create times set
relative to now so the time-dependent strategies (trending, new arrivals, recently viewed) are deterministic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2

from personalization.common.v1 import common_pb2
from personalization.recommender.v1 import recommender_service_pb2 as pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from services.recommender.server import Settings, build
from shared.runtime import start_built, stop_built
from tests.conftest import tenant_md

PURCHASE = common_pb2.EVENT_TYPE_PURCHASE
VIEW = common_pb2.EVENT_TYPE_PRODUCT_VIEW
CART = common_pb2.EVENT_TYPE_ADD_TO_CART
RETURN = common_pb2.EVENT_TYPE_RETURN
CATALOG = {
    "shoe1": {"category": "shoes", "brand": "acme", "price": 50, "tags": ["running", "sale"]},
    "shoe2": {"category": "shoes", "brand": "zeta", "price": 80, "tags": ["leather"]},
    "shoe3": {"category": "shoes", "brand": "acme", "price": 120},
    "hat1": {"category": "hats", "brand": "acme", "price": 20, "tags": ["sale"]},
    "hat2": {"category": "hats", "brand": "zeta", "price": 25},
    "sock1": {"category": "socks", "brand": "zeta", "price": 5},
}
# Orders of one unit at 10.0 each, an hour ago: shoe1 6, hat1 5, shoe2 4, sock1 3, shoe3 2, hat2 1.
ORDERS = {"shoe1": 6, "hat1": 5, "shoe2": 4, "sock1": 3, "shoe3": 2, "hat2": 1}


@pytest.fixture(scope="module")
async def stub(database_url):
    """One replica with caches off, so each call sees what the test recorded just before."""
    settings = Settings(cache_seconds=0.0, cache_items=30, catalog_seconds=0.0, model_check_seconds=0.0,
                        schedule_seconds=0.0)
    built = await build(database_url, settings)
    running, tasks = await start_built(built, port=0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield pb_grpc.RecommenderServiceStub(channel)
    await channel.close()
    await stop_built(built, running, tasks, grace=0)


def ago(**delta) -> datetime:
    """A time before now (read at each call: a module imported minutes before it runs must not age its events)."""
    return datetime.now(UTC) - timedelta(**delta)


def act(message: str, who: str, item_id: str, kind: int = PURCHASE, quantity: float = 0.0, revenue: float = 0.0,
        at: datetime | None = None) -> pb.Interaction:
    line = pb.Interaction(message_id=message, unified_individual_id=who, item_id=item_id, type=kind,
                          quantity=quantity, revenue=revenue)
    if kind == PURCHASE and not quantity:
        line.quantity, line.revenue = 1.0, 10.0
    line.event_time.FromDatetime(at or ago(hours=1))
    return line


def view(message: str, who: str, item_id: str, at: datetime) -> pb.Interaction:
    return act(message, who, item_id, VIEW, at=at)


def value(v) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, str):
        out.string_value = v
    else:
        out.number_value = v
    return out


def ids(reply) -> list[str]:
    return [i.item_id for i in reply.items]


class Shop:
    """One tenant's catalog and calls, so each test reads as what a user asks and sees."""

    def __init__(self, stub, tenant: str) -> None:
        self.stub, self.md = stub, tenant_md(tenant)

    async def items(self, created: dict[str, datetime] | None = None, catalog: dict | None = None) -> None:
        items = []
        for item_id, attributes in (catalog or CATALOG).items():
            message = pb.Item(item_id=item_id)
            message.attributes.update(attributes)
            if created and item_id in created:
                message.create_time.FromDatetime(created[item_id])
            items.append(message)
        await self.stub.UpsertItems(pb.UpsertItemsRequest(items=items), metadata=self.md)

    async def record(self, *interactions: pb.Interaction) -> int:
        reply = await self.stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=interactions),
                                                   metadata=self.md)
        return reply.recorded_count

    async def orders(self) -> None:
        await self.record(*(act(f"o-{i}-{k}", f"buyer-{i}-{k}", i) for i, n in ORDERS.items() for k in range(n)))

    async def configure(self, name: str, strategy: str, **fields) -> None:
        parameters = fields.pop("parameters", {})
        config = pb.RecommenderConfig(name=name, strategy=strategy, parameters=pb.StrategyParameters(**parameters),
                                      **fields)
        await self.stub.PutRecommender(pb.PutRecommenderRequest(config=config), metadata=self.md)

    async def recommend(self, strategy: str, count: int = 12, **fields) -> pb.RecommendResponse:
        return await self.stub.Recommend(pb.RecommendRequest(strategy=strategy, count=count, **fields),
                                         metadata=self.md)

    async def similar(self, item_id: str, strategy: str = "", count: int = 12) -> list[str]:
        reply = await self.stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id, strategy=strategy, count=count),
                                             metadata=self.md)
        return ids(reply)


@pytest.fixture
async def shop(stub, tenant):
    shop = Shop(stub, tenant)
    await shop.items()
    return shop


# ---- global rankings ----

async def test_top_sellers_rank_by_orders_units_or_revenue_and_a_window_keeps_recent_orders(shop):
    await shop.orders()
    # One bulk order of 50 units of sock1 three weeks ago, worth 250.
    await shop.record(act("bulk", "wholesaler", "sock1", quantity=50, revenue=250.0, at=ago(days=21)))
    reply = await shop.recommend("top_sellers", 4)
    assert [(i.item_id, i.score) for i in reply.items] == [("shoe1", 6), ("hat1", 5), ("shoe2", 4), ("sock1", 4)]
    await shop.configure("by_units", "top_sellers", parameters={"by_units": True})
    assert ids(await shop.recommend("by_units", 3)) == ["sock1", "shoe1", "hat1"]
    await shop.configure("by_revenue", "top_sellers", parameters={"by_revenue": True})
    reply = await shop.recommend("by_revenue", 2)
    assert [(i.item_id, i.score) for i in reply.items] == [("sock1", 280.0), ("shoe1", 60.0)]
    await shop.configure("this_week", "top_sellers", parameters={"window_days": 7})
    assert ids(await shop.recommend("this_week", 4)) == ["shoe1", "hat1", "shoe2", "sock1"]
    await shop.configure("this_week_units", "top_sellers", parameters={"window_days": 7, "by_units": True})
    reply = await shop.recommend("this_week_units", 12)
    assert [(i.item_id, i.score) for i in reply.items][:4] == [("shoe1", 6), ("hat1", 5), ("shoe2", 4), ("sock1", 3)]


async def test_most_viewed_counts_view_sessions_or_every_view_and_a_window_keeps_recent_ones(shop):
    # ann views hat1 three times within ten minutes (one session); bob and cat view sock1 once each;
    # dan viewed shoe3 in four sessions a month ago, two hours apart (one call each: a call starts at most one
    # session per individual and item).
    await shop.record(*(view(f"a{n}", "ann", "hat1", ago(minutes=30 - 5 * n)) for n in range(3)))
    await shop.record(view("b1", "bob", "sock1", ago(hours=2)), view("c1", "cat", "sock1", ago(hours=3)))
    for n in (3, 2, 1, 0):
        await shop.record(view(f"d{n}", "dan", "shoe3", ago(days=30, hours=2 * n)))
    reply = await shop.recommend("most_viewed")
    assert [(i.item_id, i.score) for i in reply.items] == [("shoe3", 4), ("sock1", 2), ("hat1", 1)]
    await shop.configure("every_view", "most_viewed", parameters={"by_units": True})
    assert ids(await shop.recommend("every_view")) == ["shoe3", "hat1", "sock1"]
    await shop.configure("viewed_this_week", "most_viewed", parameters={"window_days": 7})
    reply = await shop.recommend("viewed_this_week")
    assert [(i.item_id, i.score) for i in reply.items] == [("sock1", 2), ("hat1", 1)]
    await shop.configure("views_this_week", "most_viewed", parameters={"window_days": 7, "by_units": True})
    reply = await shop.recommend("views_this_week")
    assert [(i.item_id, i.score) for i in reply.items] == [("hat1", 3), ("sock1", 2)]


async def test_trending_decays_every_interaction_by_its_age_and_ignores_what_is_older_than_twenty_half_lives(shop):
    # hat2: 3 carts an hour ago; shoe3: 8 views two weeks ago; sock1: 1 purchase a week ago; shoe2: 5 views
    # 200 days ago (more than 20 half-lives of 7 days).
    await shop.record(*(act(f"h{n}", "x", "hat2", CART, at=ago(hours=1)) for n in range(3)))
    await shop.record(*(view(f"s{n}", f"v{n}", "shoe3", ago(days=14)) for n in range(8)))
    await shop.record(act("p1", "y", "sock1", at=ago(days=7)))
    await shop.record(*(view(f"old{n}", "z", "shoe2", ago(days=200)) for n in range(5)))
    reply = await shop.recommend("trending")
    assert ids(reply) == ["hat2", "shoe3", "sock1"]
    expected = [3 * 2 ** (-1 / 24 / 7), 8 * 0.25, 0.5]
    assert [i.score for i in reply.items] == pytest.approx(expected, rel=1e-3)
    # With a one-day half-life the two-week-old views weigh 8 x 2^-14 and fall below last week's purchase.
    await shop.configure("hot_today", "trending", parameters={"half_life_days": 1})
    reply = await shop.recommend("hot_today")
    assert ids(reply) == ["hat2", "sock1", "shoe3"]
    assert [i.score for i in reply.items] == pytest.approx([3 * 2 ** (-1 / 24), 2 ** -7, 8 * 2 ** -14], rel=1e-3)


async def test_new_arrivals_rank_newest_first_within_the_age_limit(shop):
    created = {"shoe1": ago(days=90), "shoe2": ago(days=2), "shoe3": ago(days=10), "hat1": ago(days=40),
               "hat2": ago(hours=5), "sock1": ago(days=400)}
    await shop.items(created)
    reply = await shop.recommend("new_arrivals")
    assert ids(reply) == ["hat2", "shoe2", "shoe3", "hat1", "shoe1", "sock1"]
    assert reply.items[0].score == pytest.approx(created["hat2"].timestamp())
    await shop.configure("this_month", "new_arrivals", parameters={"max_age_days": 30})
    assert ids(await shop.recommend("this_month")) == ["hat2", "shoe2", "shoe3"]
    # An upsert without a create time keeps the stored one; an item new to the catalog enters it now.
    await shop.items(catalog={"shoe1": CATALOG["shoe1"], "belt1": {"category": "belts"}})
    assert ids(await shop.recommend("this_month")) == ["belt1", "hat2", "shoe2", "shoe3"]


# ---- the individual's history ----

async def test_recently_viewed_lists_the_individuals_views_latest_first_within_recent_days(shop):
    latest = ago(minutes=5)
    await shop.record(view("v1", "ann", "hat2", ago(minutes=30)), view("v2", "ann", "sock1", latest),
                      view("v3", "ann", "shoe2", ago(days=3)), view("v4", "bob", "hat1", ago(minutes=1)),
                      act("p1", "ann", "shoe1", at=ago(minutes=2)))
    reply = await shop.recommend("recently_viewed", unified_individual_id="ann")
    assert ids(reply) == ["sock1", "hat2", "shoe2"]
    assert reply.items[0].score == pytest.approx(latest.timestamp())
    await shop.configure("today", "recently_viewed", parameters={"recent_days": 1})
    assert ids(await shop.recommend("today", unified_individual_id="ann")) == ["sock1", "hat2"]
    # Viewing shoe2 again brings it to the front; a view recorded late with an older time moves nothing.
    await shop.record(view("v5", "ann", "shoe2", ago(minutes=1)), view("v6", "ann", "hat2", ago(days=5)))
    assert ids(await shop.recommend("today", unified_individual_id="ann")) == ["shoe2", "sock1", "hat2"]
    assert ids(await shop.recommend("recently_viewed", unified_individual_id="nobody")) == []
    assert ids(await shop.recommend("recently_viewed")) == []


async def test_bought_by_you_again_ranks_the_individuals_net_units(shop):
    await shop.record(act("p1", "ann", "sock1", quantity=6, revenue=30.0), act("p2", "ann", "hat1", quantity=2),
                      act("p3", "ann", "shoe1", quantity=1), act("r3", "ann", "shoe1", quantity=-1),
                      act("p4", "bob", "hat2", quantity=9))
    reply = await shop.recommend("bought_by_you_again", unified_individual_id="ann")
    assert [(i.item_id, i.score) for i in reply.items] == [("sock1", 6), ("hat1", 2)]


async def test_the_profile_filters_leave_out_what_the_individual_bought_or_viewed_recently(shop):
    await shop.orders()
    await shop.record(act("p1", "ann", "shoe1", at=ago(days=3)), act("p2", "ann", "sock1", at=ago(days=2)),
                      act("r2", "ann", "sock1", quantity=-1, revenue=-10.0, at=ago(days=1)),
                      view("v1", "ann", "hat1", ago(minutes=10)), view("v2", "ann", "shoe2", ago(days=20)))
    # Request's exclude_purchased: shoe1 and the returned sock1 (a returned item still counts as bought).
    reply = await shop.recommend("top_sellers", 3, unified_individual_id="ann", exclude_purchased=True,
                                 diagnostics=True)
    assert ids(reply) == ["hat1", "shoe2", "shoe3"]
    assert {f.filter: f.removed for f in reply.diagnostics.filters} == {"exclude_purchased": 2}
    await shop.configure("fresh", "top_sellers", count=3, parameters={"recent_days": 7},
                         profile_filter=pb.ProfileFilter(exclude_purchased=True, exclude_recently_viewed=True))
    reply = await shop.recommend("fresh", 0, unified_individual_id="ann", diagnostics=True)
    assert ids(reply) == ["shoe2", "shoe3", "hat2"]  # hat1 viewed ten minutes ago; shoe2 twenty days ago is old
    assert {f.filter: f.removed for f in reply.diagnostics.filters} == {"exclude_purchased": 2,
                                                                        "exclude_recently_viewed": 1}
    # Someone without history gets the plain ranking.
    assert ids(await shop.recommend("fresh", 0, unified_individual_id="bob")) == ["shoe1", "hat1", "shoe2"]


# ---- anchored strategies and the context filters ----

async def test_co_viewed_counts_individuals_who_viewed_the_item_within_the_session_of_an_anchor_view(shop):
    t = ago(hours=5)
    await shop.record(
        view("a1", "ann", "shoe1", t), view("a2", "ann", "shoe2", t + timedelta(minutes=5)),
        view("a3", "ann", "hat1", t + timedelta(minutes=90)),
        view("b1", "bob", "shoe1", t), view("b2", "bob", "shoe2", t + timedelta(minutes=10)),
        view("b3", "bob", "sock1", t - timedelta(minutes=20)),
        view("c1", "cat", "shoe2", t), view("c2", "cat", "hat2", t + timedelta(minutes=1)))
    reply = await shop.recommend("co_viewed", anchor_item_id="shoe1")
    assert [(i.item_id, i.score) for i in reply.items] == [("shoe2", 2), ("sock1", 1)]
    assert await shop.similar("shoe1", "co_viewed") == ["shoe2", "sock1"]
    await shop.configure("long_sessions", "co_viewed", parameters={"session_minutes": 120})
    assert ids(await shop.recommend("long_sessions", anchor_item_id="shoe1")) == ["shoe2", "hat1", "sock1"]
    await shop.configure("strong_views", "co_viewed", parameters={"min_support": 2})
    assert ids(await shop.recommend("strong_views", anchor_item_id="shoe1")) == ["shoe2"]
    # Without an anchor the cart items anchor it: views near shoe1 or hat2, but neither of them.
    assert ids(await shop.recommend("co_viewed", cart_item_ids=["shoe1", "hat2"])) == ["shoe2", "sock1"]
    assert ids(await shop.recommend("co_viewed")) == []


async def test_co_bought_counts_orders_shared_with_the_anchor_or_the_cart(shop):
    await shop.record(act("o1", "ann", "shoe1"), act("o1", "ann", "sock1"),
                      act("o2", "bob", "shoe1"), act("o2", "bob", "sock1"), act("o2", "bob", "hat2"),
                      act("o3", "cat", "hat2"), act("o3", "cat", "hat1"))
    reply = await shop.recommend("co_bought", anchor_item_id="shoe1")
    assert [(i.item_id, i.score) for i in reply.items] == [("sock1", 2), ("hat2", 1)]
    await shop.configure("strong_baskets", "co_bought", parameters={"min_support": 2})
    assert ids(await shop.recommend("strong_baskets", anchor_item_id="shoe1")) == ["sock1"]
    assert ids(await shop.recommend("co_bought", cart_item_ids=["shoe1", "hat2"])) == ["sock1", "hat1"]
    assert await shop.similar("hat2", "co_bought") == ["hat1", "shoe1", "sock1"]


async def test_a_return_naming_its_order_takes_that_orders_line_out_of_co_bought_and_top_sellers(shop):
    await shop.record(act("o1", "ann", "shoe1"), act("o1", "ann", "sock1"),
                      act("o2", "bob", "shoe1"), act("o2", "bob", "sock1"), act("o2", "bob", "hat2"))
    # Bob returns the socks of o2; a cancellation without its order lists shoe1 and hat2 (no basket either).
    refund = act("r1", "bob", "sock1", RETURN, quantity=1, revenue=10.0)
    refund.order_id = "o2"
    await shop.record(refund, act("c1", "cy", "shoe1", RETURN, quantity=1, revenue=10.0),
                      act("c1", "cy", "hat2", RETURN, quantity=1, revenue=10.0))
    assert [(i.item_id, i.score) for i in (await shop.recommend("co_bought", anchor_item_id="shoe1")).items] == [
        ("hat2", 1), ("sock1", 1)]
    assert await shop.similar("sock1", "co_bought") == ["shoe1"]
    # Orders net of returned lines: shoe1 2 - 1, sock1 2 - 1, hat2 1 - 1 (not shown); revenue likewise.
    assert [(i.item_id, i.score) for i in (await shop.recommend("top_sellers")).items] == [
        ("shoe1", 1), ("sock1", 1)]
    await shop.configure("by_revenue", "top_sellers", parameters={"by_revenue": True})
    assert [(i.item_id, i.score) for i in (await shop.recommend("by_revenue")).items] == [
        ("shoe1", 10.0), ("sock1", 10.0)]
    # bob's history keeps the returned socks as bought, with no units left.
    reply = await shop.recommend("bought_by_you_again", unified_individual_id="bob")
    assert [i.item_id for i in reply.items] == ["hat2", "shoe1"]


async def test_similar_attributes_ranks_by_the_share_of_the_anchors_values_the_item_has(shop):
    # shoe1: category shoes, brand acme, price 50, tags [running, sale].
    reply = await shop.recommend("similar_attributes", anchor_item_id="shoe1")
    assert [(i.item_id, round(i.score, 4)) for i in reply.items] == [
        ("shoe3", 0.5), ("hat1", 0.25), ("shoe2", 0.25)]
    assert await shop.similar("shoe1") == ["shoe3", "hat1", "shoe2"]
    await shop.configure("same_brand", "similar_attributes", parameters={"similar_attributes": ["brand"]})
    assert await shop.similar("shoe1", "same_brand") == ["hat1", "shoe3"]
    assert await shop.similar("sock1", "same_brand", count=2) == ["hat2", "shoe2"]


async def test_the_context_filters_leave_out_the_anchor_the_cart_and_other_categories(shop):
    await shop.orders()
    await shop.configure("more_like_this", "top_sellers", context_filter=pb.ContextFilter(
        exclude_anchor=True, same_category_as_anchor=True, exclude_cart=True))
    reply = await shop.recommend("more_like_this", anchor_item_id="shoe2", cart_item_ids=["shoe3", "hat1"],
                                 diagnostics=True)
    assert ids(reply) == ["shoe1"]
    assert {f.filter: f.removed for f in reply.diagnostics.filters} == {
        "exclude_anchor": 1, "exclude_cart": 2, "same_category_as_anchor": 2}
    # A category attribute of the caller's choice; without an anchor the category filter does nothing.
    await shop.configure("same_brand", "top_sellers", context_filter=pb.ContextFilter(
        exclude_anchor=True, same_category_as_anchor=True, category_attribute="brand"))
    assert ids(await shop.recommend("same_brand", anchor_item_id="hat1")) == ["shoe1", "shoe3"]
    assert ids(await shop.recommend("same_brand", 3)) == ["shoe1", "hat1", "shoe2"]
    # The request's own exclusions come first.
    reply = await shop.recommend("top_sellers", 2, exclude_item_ids=["shoe1", "hat2"], diagnostics=True)
    assert ids(reply) == ["hat1", "shoe2"]
    assert {f.filter: f.removed for f in reply.diagnostics.filters} == {"exclude_item_ids": 1}


# ---- attribute conditions and boosters ----

@pytest.mark.parametrize(("operator", "values", "expected"), [
    (pb.OPERATOR_EQUALS, ["acme"], ["shoe1", "hat1", "shoe3"]),
    (pb.OPERATOR_NOT_EQUALS, ["acme"], ["shoe2", "sock1", "hat2"]),
    (pb.OPERATOR_IN, ["zeta", "other"], ["shoe2", "sock1", "hat2"]),
    (pb.OPERATOR_NOT_IN, ["zeta", "other"], ["shoe1", "hat1", "shoe3"]),
])
async def test_include_conditions_on_a_text_attribute_keep_only_matching_items(shop, operator, values, expected):
    await shop.orders()
    await shop.configure("picked", "top_sellers", include=[
        pb.Condition(attribute="brand", operator=operator, values=[value(v) for v in values])])
    assert ids(await shop.recommend("picked")) == expected


@pytest.mark.parametrize(("operator", "bound", "expected"), [
    (pb.OPERATOR_LESS_THAN, 50, ["hat1", "sock1", "hat2"]),
    (pb.OPERATOR_LESS_THAN_OR_EQUAL, 50, ["shoe1", "hat1", "sock1", "hat2"]),
    (pb.OPERATOR_GREATER_THAN, 50, ["shoe2", "shoe3"]),
    (pb.OPERATOR_GREATER_THAN_OR_EQUAL, 80, ["shoe2", "shoe3"]),
])
async def test_include_conditions_on_a_number_compare_the_price(shop, operator, bound, expected):
    await shop.orders()
    await shop.configure("priced", "top_sellers", include=[
        pb.Condition(attribute="price", operator=operator, values=[value(bound)])])
    assert ids(await shop.recommend("priced")) == expected


async def test_exclude_conditions_and_list_attributes_and_exists(shop):
    await shop.orders()
    await shop.configure("no_sale", "top_sellers", exclude=[
        pb.Condition(attribute="tags", operator=pb.OPERATOR_IN, values=[value("sale")])])
    assert ids(await shop.recommend("no_sale")) == ["shoe2", "sock1", "shoe3", "hat2"]
    await shop.configure("tagged_shoes", "top_sellers", include=[
        pb.Condition(attribute="tags", operator=pb.OPERATOR_EXISTS),
        pb.Condition(attribute="category", operator=pb.OPERATOR_EQUALS, values=[value("shoes")])])
    reply = await shop.recommend("tagged_shoes", diagnostics=True)
    assert ids(reply) == ["shoe1", "shoe2"]
    assert {f.filter: f.removed for f in reply.diagnostics.filters} == {"include[0]": 3, "include[1]": 1}


async def test_boosters_multiply_each_score_by_the_affinity_for_the_items_values(shop):
    await shop.orders()
    await shop.configure("boosted", "top_sellers", boosters=[pb.Booster(attribute="category", weight=1.0),
                                                             pb.Booster(attribute="brand", weight=0.5)])
    affinities = [pb.Affinity(attribute="category", value="socks", score=2.0),
                  pb.Affinity(attribute="brand", value="zeta", score=1.0)]
    reply = await shop.recommend("boosted", 4, affinities=affinities)
    # sock1 3 x (1 + 2) x 1.5 = 13.5; shoe2 4 x 1.5 = 6; shoe1 6; hat1 5.
    assert [(i.item_id, i.score) for i in reply.items] == [("sock1", 13.5), ("shoe1", 6.0), ("shoe2", 6.0),
                                                           ("hat1", 5.0)]
    # Without affinities, or with affinities for values no item has, nothing changes.
    assert ids(await shop.recommend("boosted", 4)) == ["shoe1", "hat1", "shoe2", "sock1"]
    other = [pb.Affinity(attribute="category", value="gloves", score=9.0)]
    reply = await shop.recommend("boosted", 4, affinities=other)
    assert [(i.item_id, i.score) for i in reply.items] == [("shoe1", 6), ("hat1", 5), ("shoe2", 4), ("sock1", 3)]


async def test_a_booster_reaches_below_the_cut_and_a_numeric_value_matches_its_text(shop):
    await shop.orders()
    await shop.configure("by_price", "top_sellers", count=1, boosters=[pb.Booster(attribute="price", weight=10.0)])
    reply = await shop.recommend("by_price", 0, affinities=[pb.Affinity(attribute="price", value="25", score=1.0)])
    assert [(i.item_id, i.score) for i in reply.items] == [("hat2", 11.0)]


async def test_a_chain_of_strategies_fills_up_with_items_not_already_chosen(shop):
    await shop.orders()
    t = ago(hours=2)
    await shop.record(view("v1", "ann", "sock1", t), view("v2", "ann", "hat2", t + timedelta(minutes=3)))
    await shop.configure("seen_then_sold", "recently_viewed", fallback="top_sellers")
    reply = await shop.recommend("seen_then_sold", 4, unified_individual_id="ann")
    assert [(i.item_id, i.source) for i in reply.items] == [
        ("hat2", "seen_then_sold"), ("sock1", "seen_then_sold"), ("shoe1", "top_sellers"), ("hat1", "top_sellers")]
