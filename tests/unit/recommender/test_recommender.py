"""Ranking, filters, validation and the rankings cache of the recommender, on an in-memory repository."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.recommender.config import Config
from services.recommender.domain import (
    ADD_TO_CART,
    PRODUCT_VIEW,
    PURCHASE,
    CatalogItem,
    Interaction,
)
from services.recommender.service import Recommender
from shared.errors import InvalidArgument, NotFound
from tests.unit.recommender.fake_repository import FakeRepository

T = "tenant-a"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def buy(message: str, who: str, item: str, quantity: float = 1.0, revenue: float = 0.0) -> Interaction:
    return Interaction(message, who, item, PURCHASE, quantity, revenue)


def view(message: str, who: str, item: str) -> Interaction:
    return Interaction(message, who, item, PRODUCT_VIEW)


def ids(items) -> list[str]:
    return [i.item_id for i in items]


@pytest.fixture
def repo() -> FakeRepository:
    return FakeRepository()


@pytest.fixture
def rec(repo) -> Recommender:
    return Recommender(repo, cache_seconds=0.0)


async def test_top_sellers_ranks_items_by_distinct_orders_net_of_returns_so_one_bulk_order_does_not_win(rec):
    await rec.record_interactions(T, [
        buy("m1", "u1", "a", 500), buy("m2", "u2", "b", 1), buy("m3", "u3", "b", 2), buy("m4", "u4", "b", 1),
        buy("m5", "u1", "c", 1), buy("m6", "u2", "c", 1), buy("m7", "u3", "c", 1),
        buy("m8", "u3", "c", -1),  # a return cancels one order of c
    ])
    items = await rec.recommend(T, "", "top_sellers", 0)
    assert [(i.item_id, i.score, i.source) for i in items] == [
        ("b", 3.0, "top_sellers"), ("c", 2.0, "top_sellers"), ("a", 1.0, "top_sellers"),
    ]


async def test_top_sellers_by_units_ranks_items_by_units_bought_net_of_returns(rec):
    await rec.record_interactions(T, [
        buy("m1", "u1", "a", 5), buy("m2", "u2", "b", 3), buy("m3", "u3", "c", 4),
        buy("m4", "u1", "a", -3),  # a return: a is left with 2 units
    ])
    await rec.put_config(T, Config(name="by_units", strategy="top_sellers", by_units=True))
    items = await rec.recommend(T, "", "by_units", 0)
    assert [(i.item_id, i.score, i.source) for i in items] == [
        ("c", 4.0, "by_units"), ("b", 3.0, "by_units"), ("a", 2.0, "by_units"),
    ]


async def test_most_viewed_ranks_items_by_product_views_only(rec):
    await rec.record_interactions(T, [
        view("v1", "u1", "a"), view("v2", "u2", "b"), view("v3", "u3", "b"),
        Interaction("c1", "u1", "a", ADD_TO_CART), Interaction("c2", "u1", "a", ADD_TO_CART),
        buy("p1", "u1", "c", 10),
    ])
    items = await rec.recommend(T, "", "most_viewed", 0)
    assert [(i.item_id, i.score) for i in items] == [("b", 2.0), ("a", 1.0)]


async def test_most_viewed_counts_view_sessions_unless_every_view_is_asked_for(rec):
    start = datetime(2025, 1, 1, tzinfo=UTC)
    # u1 reloads a five times within minutes (one session), then comes back an hour later (a second one);
    # b is viewed once each by three individuals.
    await rec.record_interactions(T, [
        Interaction(f"a{n}", "u1", "a", PRODUCT_VIEW, event_time=start + timedelta(minutes=n)) for n in range(5)])
    await rec.record_interactions(T, [
        Interaction("a9", "u1", "a", PRODUCT_VIEW, event_time=start + timedelta(minutes=65)),
        *(Interaction(f"b{n}", f"u{n}", "b", PRODUCT_VIEW, event_time=start) for n in range(3))])
    assert [(i.item_id, i.score) for i in await rec.recommend(T, "", "most_viewed", 0)] == [("b", 3.0), ("a", 2.0)]
    await rec.put_config(T, Config(name="views", strategy="most_viewed", by_units=True))
    assert [(i.item_id, i.score) for i in await rec.recommend(T, "", "views", 0)] == [("a", 6.0), ("b", 3.0)]


async def test_ties_are_broken_by_item_id(rec):
    await rec.record_interactions(T, [buy("m1", "u", "z", 2), buy("m2", "u", "b", 2), buy("m3", "u", "m", 2)])
    assert ids(await rec.recommend(T, "", "top_sellers", 0)) == ["b", "m", "z"]


async def test_bought_by_you_again_ranks_only_the_individuals_own_purchases_by_units(rec):
    await rec.record_interactions(T, [
        buy("m1", "me", "a", 1), buy("m2", "me", "b", 3), buy("m3", "me", "a", 1),
        buy("m4", "other", "c", 50),
    ])
    items = await rec.recommend(T, "me", "bought_by_you_again", 0)
    assert [(i.item_id, i.score, i.source) for i in items] == [
        ("b", 3.0, "bought_by_you_again"), ("a", 2.0, "bought_by_you_again"),
    ]


async def test_bought_by_you_again_for_an_anonymous_request_is_empty(rec):
    await rec.record_interactions(T, [buy("m1", "me", "a", 1)])
    assert await rec.recommend(T, "", "bought_by_you_again", 0) == []


async def test_re_recorded_interactions_change_no_statistic(rec, repo):
    batch = [buy("m1", "u1", "a", 2, 20.0), view("v1", "u1", "a"), Interaction("c1", "u1", "b", ADD_TO_CART)]
    assert await rec.record_interactions(T, batch) == 3
    before = repo.item_stats(T)
    assert await rec.record_interactions(T, batch) == 0
    assert await rec.record_interactions(T, [buy("m1", "u1", "a", 2, 20.0), buy("m2", "u1", "a", 1)]) == 1
    assert repo.item_stats(T)["a"]["units"] == before["a"]["units"] + 1
    assert repo.item_stats(T)["b"] == before["b"]


async def test_two_lines_of_the_same_item_in_one_purchase_are_summed(rec, repo):
    recorded = await rec.record_interactions(T, [buy("m1", "u1", "a", 2, 4.0), buy("m1", "u1", "a", 3, 6.0)])
    assert recorded == 1
    assert repo.item_stats(T)["a"]["units"] == 5
    assert repo.item_stats(T)["a"]["revenue"] == 10.0


async def test_excluded_items_are_left_out_before_the_count_is_cut(rec):
    await rec.record_interactions(T, [buy(f"m{n}", "u", f"item{n:02}", 100 - n) for n in range(30)])
    items = await rec.recommend(T, "", "top_sellers", 12, exclude_item_ids=["item00", "item03", "item05"])
    assert len(items) == 12
    assert ids(items) == [f"item{n:02}" for n in range(30) if n not in (0, 3, 5)][:12]


async def test_exclude_purchased_leaves_out_what_the_individual_bought_and_still_fills_the_count(rec):
    await rec.record_interactions(T, [buy(f"m{n}", "crowd", f"item{n:02}", 100 - n) for n in range(30)])
    await rec.record_interactions(T, [buy("mine1", "me", "item01"), buy("mine2", "me", "item02")])
    items = await rec.recommend(T, "me", "top_sellers", 12, exclude_purchased=True)
    assert len(items) == 12
    assert "item01" not in ids(items) and "item02" not in ids(items)
    assert ids(items)[:2] == ["item00", "item03"]


async def test_items_whose_score_is_not_positive_are_never_returned(rec):
    await rec.record_interactions(T, [
        buy("m1", "me", "returned", 2), buy("m2", "me", "returned", -2),
        buy("m3", "me", "kept", 1), buy("m4", "me", "free", 0),
    ])
    assert ids(await rec.recommend(T, "", "top_sellers", 0)) == ["kept"]
    assert ids(await rec.recommend(T, "me", "bought_by_you_again", 0)) == ["kept"]


async def test_no_statistics_yet_gives_an_empty_list(rec):
    assert await rec.recommend(T, "someone", "top_sellers", 0) == []
    assert await rec.recommend(T, "someone", "most_viewed", 5, exclude_purchased=True) == []


async def test_count_zero_means_twelve_and_at_most_twenty_four_are_returned(rec):
    await rec.record_interactions(T, [buy(f"m{n}", "u", f"i{n}", 1) for n in range(40)])
    assert len(await rec.recommend(T, "", "top_sellers", 0)) == 12
    assert len(await rec.recommend(T, "", "top_sellers", 24)) == 24


@pytest.mark.parametrize("count", [-1, 25])
async def test_count_outside_zero_to_twenty_four_is_invalid(rec, count):
    with pytest.raises(InvalidArgument) as info:
        await rec.recommend(T, "", "top_sellers", count)
    assert [f for f, _ in info.value.violations] == ["count"]


async def test_an_empty_strategy_is_invalid(rec):
    with pytest.raises(InvalidArgument) as info:
        await rec.recommend(T, "", "", 0)
    assert [f for f, _ in info.value.violations] == ["strategy"]


@pytest.mark.parametrize("strategy", ["best_ever", "TOP_SELLERS"])
async def test_an_unknown_recommender_is_not_found(rec, strategy):
    with pytest.raises(NotFound) as info:
        await rec.recommend(T, "", strategy, 0)
    assert info.value.reason == "RECOMMENDER_NOT_FOUND"


async def test_each_bad_interaction_field_is_reported_by_its_path_and_nothing_is_recorded(rec, repo):
    batch = [
        buy("m0", "u", "a"),
        Interaction("", "u", "a", PURCHASE),
        Interaction("m2", "", "a", PRODUCT_VIEW),
        Interaction("m3", "u", "", ADD_TO_CART),
        Interaction("m4", "u", "a", ""),
        Interaction("m5", "u", "a", PURCHASE, float("nan"), float("inf")),
        Interaction("m6", "u", "x" * 513, PURCHASE),
    ]
    with pytest.raises(InvalidArgument) as info:
        await rec.record_interactions(T, batch)
    assert [f for f, _ in info.value.violations] == [
        "interactions[1].message_id",
        "interactions[2].unified_individual_id",
        "interactions[3].item_id",
        "interactions[4].type",
        "interactions[5].quantity",
        "interactions[5].revenue",
        "interactions[6].item_id",
    ]
    assert repo.calls["record"] == 0


async def test_more_than_ten_thousand_interactions_are_refused(rec, repo):
    with pytest.raises(InvalidArgument) as info:
        await rec.record_interactions(T, [buy(f"m{n}", "u", "a") for n in range(10_001)])
    assert [f for f, _ in info.value.violations] == ["interactions"]
    assert repo.calls["record"] == 0


async def test_an_empty_batch_records_nothing(rec, repo):
    assert await rec.record_interactions(T, []) == 0
    assert repo.calls["record"] == 0


async def test_global_rankings_come_from_the_cache_until_it_expires(repo):
    clock = Clock()
    rec = Recommender(repo, cache_seconds=1.0, clock=clock)
    await rec.record_interactions(T, [buy("m1", "u", "a", 1)])
    assert ids(await rec.recommend(T, "", "top_sellers", 0)) == ["a"]
    await rec.record_interactions(T, [buy("m2", "u", "b", 5), buy("m3", "v", "b", 5)])
    clock.now += 0.5
    assert ids(await rec.recommend(T, "", "top_sellers", 0)) == ["a"]
    assert ids(await rec.recommend(T, "", "most_viewed", 0)) == []
    assert repo.calls["ranking"] == 2  # top_sellers once, most_viewed once
    clock.now += 0.5
    assert ids(await rec.recommend(T, "", "top_sellers", 0)) == ["b", "a"]
    assert repo.calls["ranking"] == 3


async def test_an_expired_catalog_is_read_again_only_when_another_replica_changed_it(repo):
    clock = Clock()
    rec = Recommender(repo, catalog_seconds=10.0, clock=clock)
    await rec.upsert_items(T, [CatalogItem("a", {"name": "A"})])
    assert await rec.item_attributes(T, ["a"], ["name"]) == {"a": {"name": "A"}}
    clock.now += 10
    assert await rec.item_attributes(T, ["a"], ["name"]) == {"a": {"name": "A"}}
    assert (repo.calls["items"], repo.calls["catalog_version"]) == (1, 2)  # checked, unchanged: not read again
    await repo.upsert_items(T, [CatalogItem("a", {"name": "A2"})])  # written by another replica
    assert await rec.item_attributes(T, ["a"], ["name"]) == {"a": {"name": "A"}}  # until the catalog expires
    clock.now += 10
    assert await rec.item_attributes(T, ["a"], ["name"]) == {"a": {"name": "A2"}}
    assert repo.calls["items"] == 2


async def test_a_cached_recommend_costs_at_most_the_individuals_history_query(repo):
    rec = Recommender(repo, cache_seconds=60.0, clock=Clock())
    await rec.record_interactions(T, [buy("m1", "me", "a", 1), buy("m2", "u", "b", 2), buy("m3", "v", "b", 1)])
    await rec.recommend(T, "", "top_sellers", 0)
    repo.calls.clear()
    assert ids(await rec.recommend(T, "me", "top_sellers", 0)) == ["b", "a"]
    assert sum(repo.calls.values()) == 0
    assert ids(await rec.recommend(T, "me", "top_sellers", 0, exclude_purchased=True)) == ["b"]
    assert ids(await rec.recommend(T, "me", "bought_by_you_again", 0)) == ["a"]
    assert dict(repo.calls) == {"history": 2}


async def test_filters_that_exhaust_the_cached_head_fall_back_to_the_database(repo):
    rec = Recommender(repo, cache_seconds=60.0, cache_items=24, clock=Clock())
    await rec.record_interactions(T, [buy(f"m{n}", "u", f"item{n:02}", 100 - n) for n in range(40)])
    excluded = [f"item{n:02}" for n in range(20)]
    items = await rec.recommend(T, "", "top_sellers", 12, exclude_item_ids=excluded)
    assert ids(items) == [f"item{n:02}" for n in range(20, 32)]
    assert repo.calls["ranking"] == 2  # the cached head, then the whole ranking


async def test_a_short_ranking_that_fits_the_cache_needs_no_fallback(repo):
    rec = Recommender(repo, cache_seconds=60.0, cache_items=24, clock=Clock())
    await rec.record_interactions(T, [buy(f"m{n}", "u", f"item{n:02}", 100 - n) for n in range(10)])
    items = await rec.recommend(T, "", "top_sellers", 12, exclude_item_ids=["item00"])
    assert len(items) == 9
    assert repo.calls["ranking"] == 1


async def test_tenants_never_see_each_others_rankings(repo):
    rec = Recommender(repo, cache_seconds=60.0, clock=Clock())
    await rec.record_interactions("t1", [buy("m1", "u", "a", 3)])
    await rec.record_interactions("t2", [buy("m1", "u", "b", 1)])
    assert ids(await rec.recommend("t1", "", "top_sellers", 0)) == ["a"]
    assert ids(await rec.recommend("t2", "", "top_sellers", 0)) == ["b"]
    assert ids(await rec.recommend("t3", "u", "bought_by_you_again", 0)) == []


async def test_reassigning_moves_interactions_to_the_survivor_and_an_unmerge_moves_back_only_the_split_offs(rec):
    await rec.record_interactions(T, [buy("m1", "ann", "a"), buy("m2", "bob", "b"), view("v1", "bob", "c")])
    assert await rec.reassign_interactions(T, ["bob"], "ann", []) == 2
    assert ids(await rec.recommend(T, "ann", "bought_by_you_again", 0)) == ["a", "b"]
    assert await rec.recommend(T, "bob", "bought_by_you_again", 0) == []
    assert await rec.reassign_interactions(T, ["bob"], "ann", []) == 0  # a retry moves nothing more
    await rec.record_interactions(T, [buy("m3", "ann", "d")])  # after the merge: recorded for ann
    assert await rec.reassign_interactions(T, ["ann"], "bob", ["bob"]) == 2
    assert ids(await rec.recommend(T, "bob", "bought_by_you_again", 0)) == ["b"]
    assert ids(await rec.recommend(T, "ann", "bought_by_you_again", 0)) == ["a", "d"]


async def test_interactions_recorded_for_a_merged_away_individual_follow_it_to_its_survivor(rec):
    await rec.reassign_interactions(T, ["bob"], "cid", [])
    await rec.reassign_interactions(T, ["ann"], "bob", [])  # applied late: bob is cid's now
    await rec.record_interactions(T, [buy("m1", "ann", "a"), buy("m2", "bob", "b")])
    assert ids(await rec.recommend(T, "cid", "bought_by_you_again", 0)) == ["a", "b"]
    assert await rec.reassign_interactions(T, ["cid"], "ann", ["ann"]) == 1  # an unmerge ends ann's redirect
    await rec.record_interactions(T, [buy("m3", "ann", "c")])
    assert ids(await rec.recommend(T, "ann", "bought_by_you_again", 0)) == ["a", "c"]


async def test_reassigning_names_each_bad_field(rec):
    with pytest.raises(InvalidArgument) as info:
        await rec.reassign_interactions(T, ["ann", "", "bob"], "bob", ["x" * 600])
    assert [f for f, _ in info.value.violations] == [
        "from_individual_ids[1]", "from_individual_ids[2]", "only_first_recorded_for[0]"]
    with pytest.raises(InvalidArgument) as info:
        await rec.reassign_interactions(T, [], "", [])
    assert [f for f, _ in info.value.violations] == ["from_individual_ids", "to_individual_id"]
