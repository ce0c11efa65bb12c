"""Use cases of the profile graph on the in-memory fake store."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.profile_graph import domain
from services.profile_graph.domain import InsightDef, Item, NewEvent, SegmentDef
from services.profile_graph.service import ProfileGraph
from shared.errors import InvalidArgument, NotFound
from tests.unit.profile_graph.fakes import FakeStore

PURCHASE = 4


@pytest.fixture
def store():
    return FakeStore()


@pytest.fixture
def graph(store):
    return ProfileGraph(store, clock=lambda: store.now)


def buy(store, individual, message_id, amount, days_ago=0.0, **kw):
    return NewEvent(individual, message_id, PURCHASE, store.now - timedelta(days=days_ago), payload=message_id.encode(),
                    revenue=amount, quantity=1, **kw)


async def with_spend(graph, days=30):
    await graph.insights.upsert_insight("t", InsightDef("spend", "", domain.AGGREGATE_SUM, "revenue", PURCHASE,
                                               timedelta(days=days)))


async def test_reappending_a_batch_reports_duplicates_and_counts_once(graph, store):
    await with_spend(graph)
    batch = [buy(store, "a", "m1", 10), buy(store, "a", "m2", 5)]
    first = await graph.appends.append_events("t", batch)
    again = await graph.appends.append_events("t", batch)
    assert [o.duplicate for o in first] == [False, False]
    assert [o.duplicate for o in again] == [True, True]
    assert store.insights("t", "a") == {"spend": 15.0}


async def test_crossing_a_threshold_enters_the_segment_on_the_last_event_of_the_individual(graph, store):
    await with_spend(graph)
    await graph.segments.upsert_segment("t", SegmentDef("big", "", "insights.spend >= 100.0"))
    outcomes = await graph.appends.append_events("t", [buy(store, "a", "m1", 60), buy(store, "b", "m2", 1),
                                               buy(store, "a", "m3", 60)])
    assert [o.entered for o in outcomes] == [[], [], ["big"]]
    assert store.data("t").history == [("big", "a", "entered")]


async def test_old_purchases_outside_the_window_do_not_count(graph, store):
    await with_spend(graph)
    await graph.appends.append_events("t", [buy(store, "a", "m1", 100, days_ago=31), buy(store, "a", "m2", 1, days_ago=29)])
    assert store.insights("t", "a")["spend"] == 1.0


async def test_invalid_batch_changes_nothing(graph, store):
    with pytest.raises(InvalidArgument):
        await graph.appends.append_events("t", [buy(store, "a", "m1", 1), NewEvent("a", "m2", PURCHASE, None)])
    assert not store.data("t").events


async def test_invalid_rule_stores_no_segment(graph, store):
    with pytest.raises(InvalidArgument) as info:
        await graph.segments.upsert_segment("t", SegmentDef("s", "", "foo.bar"))
    assert [f for f, _ in info.value.violations] == ["segment.rule"]
    assert not store.data("t").config.segments


async def test_saving_a_segment_takes_the_definition_lock_exclusively(graph, store):
    await graph.segments.upsert_segment("t", SegmentDef("s", "", "true"))
    await graph.appends.append_events("t", [buy(store, "a", "m1", 1)])
    assert store.locks == [True, False]


async def test_reassign_merges_attributes_newest_wins_and_recomputes(graph, store):
    await with_spend(graph)
    await graph.segments.upsert_segment("t", SegmentDef("big", "", "insights.spend >= 100.0"))
    old, new = store.now - timedelta(hours=2), store.now - timedelta(hours=1)
    await graph.appends.append_events("t", [
        NewEvent("anon", "m1", 1, new, attributes={"tier": "new"}),
        NewEvent("known", "m2", 1, old, attributes={"tier": "old", "city": "Oslo"}),
        buy(store, "anon", "m3", 60), buy(store, "known", "m4", 60)])
    moved = await graph.reassignment.reassign("t", ["anon"], "known")
    data = store.data("t")
    assert moved == 2
    assert {k: v for k, (v, _) in data.attributes["known"].items()} == {"tier": "new", "city": "Oslo"}
    assert store.insights("t", "known")["spend"] == 120.0 and "anon" not in data.values
    assert data.members["big"].keys() == {"known"}
    assert await graph.reassignment.reassign("t", ["anon"], "known") == 0


async def test_reassign_of_unknown_individuals_creates_nothing(graph, store):
    await graph.segments.upsert_segment("t", SegmentDef("everyone", "", "true"))
    assert await graph.reassignment.reassign("t", ["ghost"], "nobody") == 0
    assert not store.data("t").individuals and not store.data("t").members.get("everyone")


async def test_reassign_needs_a_survivor_not_among_the_merged(graph):
    with pytest.raises(InvalidArgument) as info:
        await graph.reassignment.reassign("t", ["", "x"], "x")
    assert [f for f, _ in info.value.violations] == ["from_individual_ids[0]", "from_individual_ids[1]"]


async def test_members_page_in_id_order_with_tokens(graph, store):
    await graph.appends.append_events("t", [buy(store, f"i{n}", f"m{n}", 1) for n in (3, 1, 2)])
    await graph.segments.upsert_segment("t", SegmentDef("all", "", "true"))
    page, token = await graph.segments.list_members("t", "all", 2, "")
    rest, last = await graph.segments.list_members("t", "all", 2, token)
    assert [m.individual_id for m in page + rest] == ["i1", "i2", "i3"] and last == ""


async def test_members_of_unknown_segment_are_not_found(graph):
    with pytest.raises(NotFound):
        await graph.segments.list_members("t", "nope", 0, "")


async def test_profile_of_unknown_individual_is_empty(graph):
    profile = await graph.reads.get_profile("t", "nobody", [], 0)
    assert profile.update_time is None and not profile.event_payloads and not profile.attributes


async def test_event_limit_defaults_to_twenty_most_recent(graph, store):
    await graph.appends.append_events("t", [buy(store, "a", f"m{n:02d}", 1, days_ago=n) for n in range(25)])
    profile = await graph.reads.get_profile("t", "a", ["events"], 0)
    assert profile.event_payloads == [f"m{n:02d}".encode() for n in range(20)]


async def test_get_profiles_returns_one_profile_per_requested_id_in_request_order(graph, store):
    await with_spend(graph)
    await graph.appends.append_events("t", [buy(store, "a", "m1", 10), buy(store, "b", "m2", 7)])
    profiles = await graph.reads.get_profiles("t", ["b", "nobody", "a", "b"], ["insights"], 0)
    assert [p.individual_id for p in profiles] == ["b", "nobody", "a", "b"]
    assert [p.insights.get("spend") for p in profiles] == [7.0, None, 10.0, 7.0]
    assert profiles[1].update_time is None
    assert store.profile_reads == 1


async def test_get_profiles_refuses_empty_ids_too_many_ids_and_unknown_mask_paths(graph):
    for ids, paths, field in [([], [], "unified_individual_ids"), (["a", ""], [], "unified_individual_ids[1]"),
                              ([f"i{n}" for n in range(1_001)], [], "unified_individual_ids"),
                              (["a"], ["insights", "nope"], "read_mask.paths[1]")]:
        with pytest.raises(InvalidArgument) as caught:
            await graph.reads.get_profiles("t", ids, paths, 0)
        assert [v[0] for v in caught.value.violations] == [field]


async def test_get_items_keeps_request_order_and_skips_unknown(graph):
    await graph.catalog.upsert_items("t", [Item("x", "X", {}), Item("y", "Y", {"p": 1})])
    assert [i.item_id for i in await graph.catalog.get_items("t", ["y", "nope", "x", "y"])] == ["y", "x"]
    with pytest.raises(InvalidArgument):
        await graph.catalog.get_items("t", [])


async def test_refresh_lets_old_purchases_age_out_of_insights_and_segments(graph, store):
    await with_spend(graph)
    await graph.segments.upsert_segment("t", SegmentDef("big", "", "insights.spend >= 100.0"))
    await graph.appends.append_events("t", [buy(store, "a", "m1", 150, days_ago=29)])
    assert "a" in store.data("t").members["big"]
    store.now += timedelta(days=2)
    assert await graph.recompute.refresh_windowed_insights() == 1
    assert store.insights("t", "a")["spend"] == 0.0
    assert store.data("t").history == [("big", "a", "entered"), ("big", "a", "exited")]
