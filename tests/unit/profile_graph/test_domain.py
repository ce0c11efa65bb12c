"""Pure rules of the profile graph: validation, attribute merge, insight window math, segment evaluation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest

from services.profile_graph import domain, insights, reconciliation, segments
from services.profile_graph.domain import InsightDef, NewEvent, SegmentDef, StoredEvent
from services.profile_graph.segments import RuleCache
from shared.errors import InvalidArgument

NOW = datetime(2025, 6, 1, 12, tzinfo=timezone.utc)
PURCHASE, PAGE_VIEW = 4, 1


def ev(individual="a", message_id="m", when=NOW, type=PAGE_VIEW, **kw):
    return NewEvent(individual_id=individual, message_id=message_id, type=type, event_time=when, **kw)


def stored(when, type=PURCHASE, revenue=0.0, quantity=0.0, properties=None):
    return StoredEvent("a", type, when, revenue, quantity, properties)


def fields(error: InvalidArgument) -> list[str]:
    return [f for f, _ in error.violations]


def test_event_missing_ids_time_and_type_gets_one_violation_per_field():
    with pytest.raises(InvalidArgument) as info:
        domain.validate_events([ev(), NewEvent("", "", 0, None)])
    assert fields(info.value) == ["events[1].unified_individual_id", "events[1].event.message_id",
                                  "events[1].event.event_time", "events[1].event.type"]


def test_unknown_event_type_is_refused():
    with pytest.raises(InvalidArgument) as info:
        domain.validate_events([ev(type=42)])
    assert fields(info.value) == ["events[0].event.type"]


def test_more_than_a_thousand_events_are_refused():
    with pytest.raises(InvalidArgument) as info:
        domain.validate_events([ev(message_id=str(i)) for i in range(1001)])
    assert fields(info.value) == ["events"]


def test_latest_event_time_wins_per_key_whatever_the_batch_order():
    merged = reconciliation.merge_attributes([
        ev(message_id="2", when=NOW, attributes={"tier": "gold", "city": "Oslo"}),
        ev(message_id="1", when=NOW - timedelta(hours=1), attributes={"tier": "silver", "age": 30}),
    ])
    assert {(u.key, u.value, u.updated_at) for u in merged} == {
        ("tier", "gold", NOW), ("city", "Oslo", NOW), ("age", 30, NOW - timedelta(hours=1))}


def test_blank_and_null_attribute_values_are_ignored():
    merged = reconciliation.merge_attributes([ev(attributes={"a": None, "b": "  ", "c": 0})])
    assert [(u.key, u.value) for u in merged] == [("c", 0)]


def test_attributes_are_merged_per_individual():
    merged = reconciliation.merge_attributes([ev("a", attributes={"k": 1}), ev("b", attributes={"k": 2})])
    assert sorted((u.individual_id, u.value) for u in merged) == [("a", 1), ("b", 2)]


def test_windowed_sum_counts_29_days_and_not_31_days():
    spend = InsightDef("spend_30d", "", domain.AGGREGATE_SUM, "revenue", PURCHASE, timedelta(days=30))
    events = [stored(NOW - timedelta(days=29), revenue=10), stored(NOW - timedelta(days=31), revenue=1000)]
    assert insights.insight_value(spend, events, NOW) == 10.0


def test_event_exactly_at_the_window_edge_is_not_counted():
    spend = InsightDef("s", "", domain.AGGREGATE_SUM, "revenue", 0, timedelta(days=30))
    edge = NOW - timedelta(days=30)
    assert insights.insight_value(spend, [stored(edge, revenue=5), stored(edge + timedelta(microseconds=1), revenue=7)],
                                  NOW) == 7.0


def test_zero_window_means_all_time_and_type_filter_applies():
    count = InsightDef("purchases", "", domain.AGGREGATE_COUNT, "", PURCHASE, None)
    events = [stored(NOW - timedelta(days=3000)), stored(NOW), stored(NOW, type=PAGE_VIEW)]
    assert insights.insight_value(count, events, NOW) == 2.0


def test_property_sum_ignores_non_numeric_values():
    points = InsightDef("points", "", domain.AGGREGATE_SUM, "properties.points", 0, None)
    events = [stored(NOW, properties={"points": 2.5}), stored(NOW, properties={"points": "many"}),
              stored(NOW, properties={"points": True}), stored(NOW)]
    assert insights.insight_value(points, events, NOW) == 2.5


def test_sums_are_exact_so_any_grouping_of_partials_gives_the_same_value():
    spend = InsightDef("s", "", domain.AGGREGATE_SUM, "revenue", 0, None)
    amounts = [0.1, 0.2, 0.3, 1e16, -1e16, 1 / 3, 2.5e-300]
    events = [stored(NOW - timedelta(seconds=n), revenue=a) for n, a in enumerate(amounts)]
    whole = insights.insight_value(spend, events, NOW)
    halves = [insights.insight_partials(spend, part, {}, NOW) for part in (events[::2], events[1::2])]
    assert insights.merged([h[("a", "")] for h in halves]).value(domain.AGGREGATE_SUM) == whole
    assert insights.merged([h[("a", "")] for h in halves[::-1]]).value(domain.AGGREGATE_SUM) == whole
    assert whole == float(sum(Fraction(a) for a in amounts))  # the exact sum, rounded once


def test_partials_survive_their_stored_form():
    last = InsightDef("l", "", domain.AGGREGATE_LAST, "revenue", 0, None)
    distinct = InsightDef("d", "", domain.AGGREGATE_COUNT_DISTINCT, "properties.k", 0, None)
    events = [stored(NOW, revenue=-2.5, properties={"k": "x"}), stored(NOW - timedelta(days=1), revenue=4.0,
                                                                       properties={"k": 1})]
    for d in (last, distinct):
        partial = insights.insight_partials(d, events, {}, NOW)[("a", "")]
        again = insights.Partial.from_row(*partial.row())
        assert again == partial and again.value(d.aggregate) == partial.value(d.aggregate)
    assert insights.insight_value(last, events, NOW) == -2.5 and insights.insight_value(distinct, events, NOW) == 2.0


def test_events_fall_in_buckets_of_a_64th_of_the_window_and_the_edge_bucket_holds_the_cutoff():
    week = InsightDef("w", "", domain.AGGREGATE_COUNT, "", 0, timedelta(days=7))
    width = 7 * 86_400 * 1_000_000 // 64
    assert insights.bucket_width_us(week) == width
    assert insights.bucket_of(week, NOW) % width == 0 and insights.bucket_of(week, NOW) <= insights.micros(NOW)
    cutoff, end, bucket = insights.edge(week, NOW)
    assert cutoff == NOW - timedelta(days=7) and bucket == insights.bucket_of(week, cutoff)
    assert insights.micros(end) == bucket + width


@pytest.mark.parametrize("insight, bad", [
    (InsightDef("Spend", "", 2, "revenue", 0, None), ["insight.name"]),
    (InsightDef("spend", "", 0, "", 0, None), ["insight.aggregate"]),
    (InsightDef("spend", "", 2, "price", 0, None), ["insight.field"]),
    (InsightDef("spend", "", 1, "revenue", 0, None), ["insight.field"]),
    (InsightDef("spend", "", 1, "", 99, None), ["insight.event_type"]),
    (InsightDef("spend", "", 1, "", 0, timedelta(seconds=-1)), ["insight.window"]),
    (InsightDef("spend", "", 1, "", 0, timedelta(days=365_000)), ["insight.window"]),
])
def test_invalid_insight_definitions_name_the_bad_field(insight, bad):
    with pytest.raises(InvalidArgument) as info:
        domain.validate_insight(insight)
    assert fields(info.value) == bad


def test_valid_insight_definitions_pass():
    domain.validate_insight(InsightDef("spend_30d", "", 2, "properties.points", PURCHASE, timedelta(days=30)))
    domain.validate_insight(InsightDef("views", "", 1, "", 0, None))


@pytest.mark.parametrize("rule", ["insights.spend >= ", "foo.bar == 1", "1 + 2", 'attributes.x == 1 || bar'])
def test_rules_that_do_not_compile_or_fail_on_a_sample_are_refused(rule):
    with pytest.raises(InvalidArgument) as info:
        segments.compile_rule(rule, ["spend"])
    assert fields(info.value) == ["segment.rule"]


def test_rule_reading_a_missing_attribute_key_is_accepted():
    program = segments.compile_rule('attributes.tier == "gold"', [])
    assert program.execute({"attributes": {"tier": "gold"}, "insights": {}, "segments": []}) is True


def test_rule_of_more_than_4096_characters_is_refused():
    with pytest.raises(InvalidArgument) as info:
        domain.validate_segment_fields(SegmentDef("long", "", "true && " * 600))
    assert fields(info.value) == ["segment.rule"]


def test_membership_follows_insights_and_attributes():
    programs = RuleCache().programs("t", [SegmentDef("big", "", "insights.spend >= 100.0"),
                                          SegmentDef("gold", "", 'attributes.tier == "gold"')])
    assert segments.evaluate_memberships(programs, {}, {"spend": 150.0}, set()) == {"big"}
    assert segments.evaluate_memberships(programs, {"tier": "gold"}, {"spend": 10.0}, {"big"}) == {"gold"}


def test_segment_of_segments_settles_in_one_evaluation():
    programs = RuleCache().programs("t", [SegmentDef("a", "", "insights.spend > 0.0"),
                                          SegmentDef("b", "", '"a" in segments')])
    assert segments.evaluate_memberships(programs, {}, {"spend": 1.0}, set()) == {"a", "b"}
    assert segments.evaluate_memberships(programs, {}, {"spend": 0.0}, {"a", "b"}) == set()


def test_memo_reuses_results_of_identical_insights_and_segments_only():
    programs = RuleCache().programs("t", [SegmentDef("a", "", "insights.spend > 0.0"),
                                          SegmentDef("b", "", '"a" in segments && insights.spend < 5.0')])
    memo: dict = {}
    cases = [({"spend": 1.0}, set()), ({"spend": 1.0}, set()), ({"spend": 7.0}, {"a", "b"}), ({"spend": 0.0}, {"a"}),
             ({"spend": 1.0}, {"a"})]
    for values, current in cases:
        assert segments.evaluate_memberships(programs, {}, values, current, memo=memo) == \
            segments.evaluate_memberships(programs, {}, values, current)
    assert len(memo) == 4  # the repeated case was answered from the memo


def test_memo_is_not_used_when_rules_read_attributes():
    programs = RuleCache().programs("t", [SegmentDef("gold", "", 'attributes.tier == "gold"')])
    memo: dict = {}
    assert segments.evaluate_memberships(programs, {"tier": "gold"}, {}, set(), memo=memo) == {"gold"}
    assert segments.evaluate_memberships(programs, {"tier": "tin"}, {}, set(), memo=memo) == set()
    assert memo == {}


def test_rule_that_errors_on_a_profile_does_not_match():
    programs = RuleCache().programs("t", [SegmentDef("x", "", "attributes.age > 18")])
    assert segments.evaluate_memberships(programs, {"age": "old"}, {}, set()) == set()


def test_rule_cache_recompiles_only_when_the_rule_changes():
    cache = RuleCache()
    first = cache.programs("t", [SegmentDef("s", "", "true")])[0].program
    assert cache.programs("t", [SegmentDef("s", "", "true")])[0].program is first
    assert cache.programs("t", [SegmentDef("s", "", "false")])[0].program is not first


def test_unknown_read_mask_path_is_refused_with_its_index():
    with pytest.raises(InvalidArgument) as info:
        domain.profile_parts(["events", "friends"])
    assert fields(info.value) == ["read_mask.paths[1]"]
    assert domain.profile_parts([]) == set(domain.PROFILE_PARTS)


def test_a_rule_whose_cost_on_this_profile_passes_the_budget_is_not_run_and_is_named():
    programs = RuleCache().programs("t", [SegmentDef("square", "", "attributes.tags.all(x, x in attributes.tags)"),
                                          SegmentDef("gold", "", 'attributes.tier == "gold"')])
    over: set[str] = set()
    small = {"tier": "gold", "tags": ["a", "b"]}
    assert segments.evaluate_memberships(programs, small, {}, set(), over_budget=over) == {"square", "gold"}
    assert over == set()
    huge = {"tier": "gold", "tags": [str(i) for i in range(1000)]}
    assert segments.evaluate_memberships(programs, huge, {}, {"square"}, over_budget=over) == {"gold"}
    assert over == {"square"}


@pytest.mark.parametrize("rule, expected", [
    ("attributes.a.all(x, attributes.b.all(y, attributes.c.all(z, true)))",
     "comprehensions nest 3 deep at column 54; at most 2 levels are allowed"),
    ("(" * 2000 + "true" + ")" * 2000, "brackets nest more than 32 deep at column 33; at most 32 levels are allowed"),
    ("attributes.tags.exists(t, t == 'x')", None),
])
def test_segment_rules_are_held_to_the_shared_limits(rule, expected):
    if expected is None:
        assert segments.compile_rule(rule, []) is not None
        return
    with pytest.raises(InvalidArgument) as info:
        segments.compile_rule(rule, [])
    assert info.value.violations == [("segment.rule", expected)]
