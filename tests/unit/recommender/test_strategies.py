"""Strategies, filters, boosters, diversity, fallbacks, configs, training, batch and similar items on small
hand-made catalogs and on the Spark ALS sample, over the in-memory repository."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.recommender.config import (
    EQUALS,
    GREATER,
    IN,
    LEARNED,
    LESS,
    PURCHASES,
    Booster,
    Condition,
    Config,
)
from services.recommender.domain import (
    ADD_TO_CART,
    PRODUCT_VIEW,
    PURCHASE,
    CatalogItem,
    Interaction,
)
from services.recommender.service import Recommender
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.conftest import SHARED_DATA
from tests.unit.recommender.fake_repository import FakeRepository

T = "shop"
NOW = datetime.now(UTC)
CATALOG = [
    CatalogItem("shoe1", {"category": "shoes", "brand": "acme", "price": 50}),
    CatalogItem("shoe2", {"category": "shoes", "brand": "zeta", "price": 80}),
    CatalogItem("shoe3", {"category": "shoes", "brand": "acme", "price": 120}),
    CatalogItem("hat1", {"category": "hats", "brand": "acme", "price": 20}),
    CatalogItem("hat2", {"category": "hats", "brand": "zeta", "price": 25}),
    CatalogItem("sock1", {"category": "socks", "brand": "zeta", "price": 5}),
]


def ids(items) -> list[str]:
    return [i.item_id for i in items]


def at(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


@pytest.fixture
def repo():
    return FakeRepository()


@pytest.fixture
async def rec(repo):
    r = Recommender(repo, cache_seconds=0.0, catalog_seconds=0.0, model_check_seconds=0.0)
    await r.upsert_items(T, CATALOG)
    # Orders of one unit each: shoe1 6, hat1 5, shoe2 4, sock1 3, shoe3 2, hat2 1.
    units = {"shoe1": 6, "hat1": 5, "shoe2": 4, "sock1": 3, "shoe3": 2, "hat2": 1}
    await r.record_interactions(T, [Interaction(f"o-{i}-{k}", "someone", i, PURCHASE, 1, 10.0, at(60))
                                    for i, u in units.items() for k in range(u)])
    return r


async def put(rec, **fields) -> Config:
    return await rec.put_config(T, Config(**fields))


async def test_filters_on_attributes_apply_before_the_cut(rec):
    await put(rec, name="cheap_shoes", strategy="top_sellers",
              include=(Condition("category", EQUALS, ("shoes",)), Condition("price", LESS, (100,))))
    assert ids(await rec.recommend(T, "", "cheap_shoes", 2)) == ["shoe1", "shoe2"]
    await put(rec, name="no_acme", strategy="top_sellers", exclude=(Condition("brand", IN, ("acme",)),))
    assert ids(await rec.recommend(T, "", "no_acme", 3)) == ["shoe2", "sock1", "hat2"]


async def test_diagnostics_count_the_candidates_each_filter_removed(rec):
    await put(rec, name="pricey", strategy="top_sellers", include=(Condition("price", GREATER, (30,)),))
    items, diagnostics = await rec.explain(T, "", "pricey", 12, exclude_item_ids=["shoe1"], diagnostics=True)
    assert ids(items) == ["shoe2", "shoe3"]
    assert diagnostics.filters == {"exclude_item_ids": 1, "include[0]": 3}
    assert diagnostics.recommenders == ["pricey"]


async def test_boosters_multiply_scores_by_the_affinity_for_the_items_category(rec):
    await put(rec, name="boosted", strategy="top_sellers", boosters=(Booster("category", 1.0),))
    items = await rec.recommend(T, "", "boosted", 3, affinities=[("category", "socks", 2.0)])
    assert ids(items) == ["sock1", "shoe1", "hat1"]
    assert items[0].score == pytest.approx(9.0)


async def test_diversity_keeps_at_most_n_items_per_category(rec):
    await put(rec, name="varied", strategy="top_sellers", diversity_attribute="category", diversity_max=1)
    items, diagnostics = await rec.explain(T, "", "varied", 3, diagnostics=True)
    assert ids(items) == ["shoe1", "hat1", "sock1"]
    assert diagnostics.diversity_removed == 1


async def test_fallback_fills_up_with_items_not_already_chosen(rec):
    await put(rec, name="hats_only", strategy="top_sellers", include=(Condition("category", EQUALS, ("hats",)),),
              fallback="most_viewed")
    await rec.record_interactions(T, [Interaction("v1", "x", "sock1", PRODUCT_VIEW), Interaction("v2", "x", "hat1",
                                                                                                 PRODUCT_VIEW)])
    items = await rec.recommend(T, "", "hats_only", 3)
    assert [(i.item_id, i.source) for i in items] == [("hat1", "hats_only"), ("hat2", "hats_only"),
                                                      ("sock1", "most_viewed")]


async def test_a_fallback_cycle_and_unknown_attributes_are_refused_with_field_paths(rec):
    await put(rec, name="a", strategy="top_sellers")
    await put(rec, name="b", strategy="most_viewed", fallback="a")
    with pytest.raises(InvalidArgument) as info:
        await put(rec, name="a", strategy="top_sellers", fallback="b",
                  include=(Condition("colour", EQUALS, ("red",)), Condition("price", LESS, ("cheap",))),
                  count=30)
    assert [f for f, _ in info.value.violations] == [
        "config.include[0].attribute", "config.include[1].values[0]", "config.count", "config.fallback"]


async def test_a_config_cannot_take_a_built_in_name_or_an_unknown_strategy(rec):
    with pytest.raises(InvalidArgument) as info:
        await put(rec, name="top_sellers", strategy="magic")
    assert [f for f, _ in info.value.violations] == ["config.name", "config.strategy"]


async def test_co_bought_ranks_items_bought_in_the_same_orders_with_minimum_support(rec):
    await rec.record_interactions(T, [
        Interaction("order1", "a", "shoe1", PURCHASE, 1), Interaction("order1", "a", "sock1", PURCHASE, 1),
        Interaction("order2", "b", "shoe1", PURCHASE, 1), Interaction("order2", "b", "sock1", PURCHASE, 1),
        Interaction("order2", "b", "hat2", PURCHASE, 1),
    ])
    assert ids(await rec.recommend(T, "", "co_bought", 5, anchor_item_id="shoe1")) == ["hat2", "sock1"][::-1]
    await put(rec, name="strong", strategy="co_bought", min_support=2)
    assert ids(await rec.recommend(T, "", "strong", 5, anchor_item_id="shoe1")) == ["sock1"]


async def test_co_viewed_counts_views_in_the_same_session_only(rec):
    await rec.record_interactions(T, [
        Interaction("v1", "ann", "shoe1", PRODUCT_VIEW, event_time=at(100)),
        Interaction("v2", "ann", "shoe2", PRODUCT_VIEW, event_time=at(95)),
        Interaction("v3", "ann", "hat1", PRODUCT_VIEW, event_time=at(10)),
    ])
    assert ids(await rec.recommend(T, "", "co_viewed", 5, cart_item_ids=["shoe1"])) == ["shoe2"]


async def test_similar_attributes_ranks_items_sharing_the_anchors_values(rec):
    await put(rec, name="same_brand", strategy="similar_attributes", similar_attributes=("brand",))
    assert ids(await rec.similar_items(T, "shoe1", 5, "same_brand")) == ["hat1", "shoe3"]
    assert ids(await rec.similar_items(T, "shoe1", 1, ""))[0] == "shoe3"  # shares category and brand


async def test_same_category_as_anchor_and_exclude_cart_filter_the_context(rec):
    await put(rec, name="more_like_this", strategy="top_sellers", same_category_as_anchor=True, exclude_anchor=True,
              exclude_cart=True)
    assert ids(await rec.recommend(T, "", "more_like_this", 5, anchor_item_id="shoe2",
                                   cart_item_ids=["shoe3"])) == ["shoe1"]


async def test_recently_viewed_and_the_profile_filters_read_the_individuals_history(rec):
    await rec.record_interactions(T, [
        Interaction("v1", "ann", "hat2", PRODUCT_VIEW, event_time=at(30)),
        Interaction("v2", "ann", "sock1", PRODUCT_VIEW, event_time=at(5)),
        Interaction("p1", "ann", "shoe1", PURCHASE, 1, event_time=at(3)),
    ])
    assert ids(await rec.recommend(T, "ann", "recently_viewed", 5)) == ["sock1", "hat2"]
    await put(rec, name="fresh", strategy="top_sellers", exclude_purchased=True, exclude_recently_viewed=True,
              recent_days=1)
    assert ids(await rec.recommend(T, "ann", "fresh", 3)) == ["hat1", "shoe2", "shoe3"]


async def test_new_arrivals_rank_by_create_time_within_the_age_limit(rec):
    await rec.upsert_items(T, [CatalogItem("new1", {"category": "hats"}, NOW - timedelta(days=1)),
                               CatalogItem("old1", {"category": "hats"}, NOW - timedelta(days=90))])
    await put(rec, name="this_month", strategy="new_arrivals", max_age_days=30,
              include=(Condition("category", EQUALS, ("hats",)),))
    # hat1 and hat2 entered the catalog just now, new1 a day ago, old1 too long ago.
    assert sorted(ids(await rec.recommend(T, "", "this_month", 24))[:2]) == ["hat1", "hat2"]
    assert ids(await rec.recommend(T, "", "this_month", 24))[2:] == ["new1"]


async def test_trending_favours_recent_interactions(rec):
    await rec.record_interactions(T, [Interaction(f"t{n}", "x", "hat2", ADD_TO_CART, event_time=at(1))
                                      for n in range(8)])
    await rec.record_interactions(T, [Interaction(f"old{n}", "x", "shoe3", ADD_TO_CART,
                                                  event_time=NOW - timedelta(days=30)) for n in range(8)])
    assert ids(await rec.recommend(T, "", "trending", 1)) == ["hat2"]


async def test_a_learned_recommender_trains_serves_and_falls_back_for_unknown_individuals(rec, repo):
    await rec.record_interactions(T, [Interaction(f"x{n}", f"u{n % 7}", CATALOG[n % 6].item_id, PURCHASE, 1)
                                      for n in range(40)])
    await put(rec, name="for_you", strategy=LEARNED, objective=PURCHASES, factors=4, iterations=5,
              fallback="top_sellers")
    steps = [p async for p in rec.train(T, "for_you")]
    assert steps[-1].stage == "done" and steps[-1].model_version == 1
    assert [p.fraction for p in steps] == sorted(p.fraction for p in steps)
    items, diagnostics = await rec.explain(T, "u1", "for_you", 3, diagnostics=True)
    assert len(items) == 3 and {i.source for i in items} == {"for_you"}
    assert diagnostics.model_version == 1
    stranger = await rec.recommend(T, "nobody", "for_you", 3)
    assert [(i.item_id, i.source) for i in stranger] == [("shoe1", "top_sellers"), ("hat1", "top_sellers"),
                                                         ("shoe2", "top_sellers")]


async def test_another_replica_loads_the_newest_model_version_without_failing(rec, repo):
    await rec.record_interactions(T, [Interaction(f"x{n}", f"u{n % 5}", CATALOG[n % 6].item_id, PURCHASE, 1)
                                      for n in range(30)])
    await put(rec, name="for_you", strategy=LEARNED, objective=PURCHASES, factors=4, iterations=3)
    [_ async for _ in rec.train(T, "for_you")]
    replica = Recommender(repo, cache_seconds=0.0, model_check_seconds=0.0)
    assert len(await replica.recommend(T, "u1", "for_you", 3)) == 3
    assert (await replica.model(T, "for_you")).version == 1
    [_ async for _ in rec.train(T, "for_you")]
    assert len(await replica.recommend(T, "u1", "for_you", 3)) == 3  # still served by version 1 while swapping
    for _ in range(20):
        await __import__("asyncio").sleep(0.01)
        if (await replica.model(T, "for_you")).version == 2:
            break
    assert (await replica.model(T, "for_you")).version == 2


async def test_training_a_rules_based_recommender_is_refused(rec):
    with pytest.raises(NotFound):
        [_ async for _ in rec.train(T, "missing")]
    await put(rec, name="plain", strategy="top_sellers")
    with pytest.raises(FailedPrecondition):
        [_ async for _ in rec.train(T, "plain")]


async def test_batch_recommends_for_every_individual_in_request_order(rec):
    await rec.record_interactions(T, [Interaction("b1", "ann", "shoe1", PURCHASE, 1)])
    chunks = [c async for c in rec.recommend_batch(T, "top_sellers", 2, [("ann", []), ("bob", [])],
                                                   exclude_purchased=True)]
    results = [(who, ids(items)) for chunk in chunks for who, items in chunk]
    assert results == [("ann", ["hat1", "shoe2"]), ("bob", ["shoe1", "hat1"])]


async def test_batch_without_individuals_is_invalid(rec):
    with pytest.raises(InvalidArgument) as info:
        [c async for c in rec.recommend_batch(T, "top_sellers", 2, [])]
    assert [f for f, _ in info.value.violations] == ["individuals"]


async def test_the_scheduler_retrains_due_learned_recommenders_once(rec, repo):
    await rec.record_interactions(T, [Interaction(f"x{n}", f"u{n % 5}", CATALOG[n % 6].item_id, PURCHASE, 1)
                                      for n in range(30)])
    await put(rec, name="nightly", strategy=LEARNED, objective=PURCHASES, factors=4, iterations=3,
              retrain_seconds=86400)
    assert await rec.run_schedule() == 1
    assert await rec.run_schedule() == 0
    assert await repo.latest_model_version(T, "nightly") == 1


async def _trained_on_spark_sample(rec) -> list[list[str]]:
    """Trains learned recommender `als` of tenant `s` on Spark's ALS sample ratings (as purchases); returns its rows."""
    rows = [line.split("::") for line in (SHARED_DATA / "spark-als-sample" / "sample_movielens_ratings.txt")
            .read_text().splitlines() if line.strip()]
    await rec.record_interactions("s", [Interaction(f"r{n}", u, i, PURCHASE, 1) for n, (u, i, _, _) in
                                        enumerate(rows)])
    await rec.put_config("s", Config(name="als", strategy=LEARNED, objective=PURCHASES))
    [_ async for _ in rec.train("s", "als")]
    return rows


async def test_learned_model_on_the_spark_als_sample_recommends_unseen_items():
    rec = Recommender(FakeRepository(), cache_seconds=0.0)
    rows = await _trained_on_spark_sample(rec)
    seen = {i for u, i, _, _ in rows if u == "0"}
    items = await rec.recommend("s", "0", "als", 10, exclude_purchased=True)
    assert len(items) == 10 and not seen & set(ids(items))
    metrics, _ = await rec.evaluate("s", "als", 10, 0.2, 42)
    assert 0 < metrics.precision <= 1 and 0 < metrics.coverage <= 1 and metrics.individuals == 30


@pytest.mark.parametrize("columns", [10_000, 10_001, 997, 40])
def test_block_top_k_finds_exactly_the_best_scores_of_every_row(columns):
    import numpy as np

    from services.recommender.learned import top_k_rows

    scores = np.random.default_rng(columns).random((50, columns), dtype=np.float32)
    scores[:, :5] = -np.inf
    k = min(28, columns - 1)
    found = np.sort(np.take_along_axis(scores, top_k_rows(scores, k), axis=1), axis=1)
    expected = np.sort(scores, axis=1)[:, -k:]
    assert np.array_equal(found, expected)


@pytest.mark.parametrize("columns", [10_000, 10_001, 997, 40, 7])
def test_best_per_row_finds_each_rows_best_scores_in_order_ties_by_column(columns):
    import numpy as np

    from services.recommender.learned import best_per_row

    rng = np.random.default_rng(columns)
    scores = rng.integers(0, 50, size=(60, columns)).astype(np.float32)  # many ties
    scores[:, :3] = -np.inf
    scores[1, :] = -np.inf  # nothing left
    scores[2, :] = -np.inf
    scores[2, [5, 1, 6]] = 1.0  # fewer than k left, all tied
    k = min(12, columns)
    found, values = best_per_row(scores, k)
    for r in range(len(scores)):
        ranked = sorted((-v, c) for c, v in enumerate(scores[r].tolist()) if v > -np.inf)[:k]
        width = len(ranked)
        assert found[r, :width].tolist() == [c for _, c in ranked]
        assert values[r, :width].tolist() == [-v for v, _ in ranked]
        assert (found[r, width:] == -1).all() and (values[r, width:] == -np.inf).all()


async def test_learned_batch_masks_what_each_member_bought_reading_only_their_purchases():
    repo = FakeRepository()
    rec = Recommender(repo, cache_seconds=0.0)
    rows = await _trained_on_spark_sample(rec)
    members = ["0", "1", "2", "nobody"]
    chunks = [c async for c in rec.recommend_batch("s", "als", 10, [(m, []) for m in members],
                                                   exclude_purchased=True)]
    results = dict(item for chunk in chunks for item in chunk)
    assert list(results) == members
    for member in members[:3]:
        seen = {i for u, i, _, _ in rows if u == member}
        assert len(results[member]) == 10 and not seen & set(ids(results[member]))
        single = await rec.recommend("s", member, "als", 10, exclude_purchased=True)
        assert set(ids(single)) == set(ids(results[member]))
    assert repo.calls["bought_items"] == 1 and repo.calls["histories"] == 1  # the fallback chain's, for "nobody"
