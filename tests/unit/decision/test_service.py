"""The decision use cases on an in-memory repository: qualification order, fallback, forcing, validation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.decision.domain import Decision, LogEntry, Point, Template, TemplateField
from services.decision.service import DecisionService
from shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tests.unit.decision.fakes import FakeRepository

T = "tenant_a"
BANNER = Point(
    point_id="",
    name="home_banner",
    description="hero banner",
    type="MANUAL_CONTENT",
    template=Template(fields=(
        TemplateField("headline", "STRING", required=True),
        TemplateField("discount", "NUMBER"),
        TemplateField("urgent", "BOOL"),
        TemplateField("tags", "STRING_LIST"),
    )),
)
RECS = Point(point_id="", name="recs_block", description="", type="RECOMMENDATIONS",
             template=Template(item_attributes=("title", "price")))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def content(headline: str) -> dict:
    return {"headline": headline}


@pytest.fixture
async def world():
    repo = FakeRepository()
    clock = Clock()
    service = DecisionService(repo, cache_seconds=2.0, clock=clock)
    await service.points.upsert(T, BANNER)
    return service, repo, clock


async def add(service, name, priority=0, rule="", fallback=False, point="home_banner"):
    return await service.decisions.upsert(
        T, Decision(decision_id="", point_name=point, name=name, priority=priority, rule=rule, fallback=fallback,
                    content=content(name)))


async def qualify(service, profile=None, context=None, points=(("home_banner", ""),)):
    return await service.qualifier.one(T, list(points), profile or {}, context or {})


async def test_decisions_are_evaluated_by_descending_priority_and_the_first_match_wins(world):
    service, _, _ = world
    await add(service, "low", priority=1, rule="true")
    await add(service, "high", priority=9, rule='"vip" in profile.segments')
    await add(service, "mid", priority=5, rule='profile.insights.spend > 100.0')
    [q] = await qualify(service, {"segments": ["regular"], "insights": {"spend": 150.0}})
    assert q.decision.name == "mid"
    assert [(e.decision_name, e.matched) for e in q.evaluations] == [("high", False), ("mid", True)]


async def test_priority_ties_are_broken_by_name(world):
    service, _, _ = world
    await add(service, "zebra", priority=3, rule="true")
    await add(service, "alpha", priority=3, rule="true")
    [q] = await qualify(service)
    assert q.decision.name == "alpha"


async def test_fallback_serves_those_who_match_nothing_else(world):
    service, _, _ = world
    await add(service, "vip", priority=5, rule='"vip" in profile.segments')
    await add(service, "default_low", priority=0, fallback=True)
    await add(service, "default_high", priority=1, fallback=True, rule="false")
    [q] = await qualify(service, {"segments": []})
    assert q.decision.name == "default_high"
    assert [e.decision_name for e in q.evaluations] == ["vip"]
    [q] = await qualify(service, {"segments": ["vip"]})
    assert q.decision.name == "vip"


async def test_no_decision_when_nothing_matches_and_there_is_no_fallback(world):
    service, _, _ = world
    await add(service, "vip", rule='"vip" in profile.segments')
    [q] = await qualify(service)
    assert q.decision is None
    assert q.point.name == "home_banner"


async def test_a_rule_error_does_not_match_and_is_reported(world):
    service, _, _ = world
    await add(service, "tier", priority=2, rule='profile.attributes.tier == "gold"')
    await add(service, "everyone", priority=1)
    [q] = await qualify(service, {"attributes": {}})
    assert q.decision.name == "everyone"
    assert q.evaluations[0].matched is False
    assert "tier" in q.evaluations[0].error
    assert q.evaluations[1].error == ""


async def test_a_rule_yielding_a_non_bool_at_run_time_does_not_match(world):
    service, _, _ = world
    await add(service, "flag", rule="profile.attributes.flag")
    [q] = await qualify(service, {"attributes": {"flag": "yes"}})
    assert q.decision is None
    assert "not a bool" in q.evaluations[0].error


async def test_rules_see_context_fields(world):
    service, _, _ = world
    await add(service, "web", rule='context.channel == "web" && size(context.cart_item_ids) > 0')
    [q] = await qualify(service, context={"channel": "web", "cart_item_ids": ["i1"]})
    assert q.decision.name == "web"
    [q] = await qualify(service, context={"channel": "email"})
    assert q.decision is None


async def test_a_forced_decision_is_served_without_evaluating_rules(world):
    service, _, _ = world
    await add(service, "first", priority=9)
    second = await add(service, "second", priority=1, rule="false")
    [q] = await qualify(service, points=[("home_banner", second.decision_id)])
    assert q.decision.name == "second"
    assert q.evaluations == []


async def test_a_forced_decision_of_another_point_is_not_found(world):
    service, _, _ = world
    await service.points.upsert(T, RECS)
    other = await service.decisions.upsert(
        T, Decision(decision_id="", point_name="recs_block", name="top", recommender="top_sellers"))
    with pytest.raises(NotFound) as info:
        await qualify(service, points=[("home_banner", other.decision_id)])
    assert info.value.reason == "DECISION_NOT_FOUND"


async def test_an_unknown_point_is_not_found_with_its_name(world):
    service, _, _ = world
    with pytest.raises(NotFound) as info:
        await qualify(service, points=[("home_banner", ""), ("nowhere", "")])
    assert info.value.reason == "POINT_NOT_FOUND"
    assert info.value.metadata == {"point": "nowhere"}
    assert "points[1].name" in info.value.message


async def test_qualify_without_points_is_invalid(world):
    service, _, _ = world
    with pytest.raises(InvalidArgument) as info:
        await qualify(service, points=[])
    assert info.value.violations[0][0] == "points"


async def test_qualify_costs_no_query_while_the_cache_is_fresh_and_one_after(world):
    service, repo, clock = world
    await add(service, "everyone")
    await qualify(service)
    before = repo.queries
    for _ in range(5):
        await qualify(service)
    assert repo.queries == before
    clock.now += 2.5
    await qualify(service)
    assert repo.queries == before + 1


async def test_an_upsert_invalidates_the_cache_at_once(world):
    service, _, _ = world
    await add(service, "old", priority=1)
    [q] = await qualify(service)
    assert q.decision.name == "old"
    await add(service, "new", priority=2)
    [q] = await qualify(service)
    assert q.decision.name == "new"


async def test_changes_from_another_replica_show_after_the_cache_period(world):
    service, repo, clock = world
    other_replica = DecisionService(repo, cache_seconds=2.0, clock=clock)
    await add(service, "old", priority=1)
    assert (await qualify(service))[0].decision.name == "old"
    await add(other_replica, "new", priority=2)
    assert (await qualify(service))[0].decision.name == "old"
    clock.now += 2.1
    assert (await qualify(service))[0].decision.name == "new"


async def test_rule_reading_all_of_profile_sees_every_key(world):
    service, _, _ = world
    await add(service, "big", rule="size(profile) == 7")
    [q] = await qualify(service, {"affinities": {"shoes": 0.5}, "custom": 1})
    assert q.decision.name == "big"  # the six documented keys (affinities given, the rest defaults), plus custom


async def test_point_ids_are_stable_across_upserts(world):
    service, _, _ = world
    first = await service.points.upsert(T, replace(BANNER, description="v2"))
    second = await service.points.upsert(T, replace(BANNER, description="v3"))
    assert first.point_id == second.point_id
    assert first.point_id.startswith("pt_")


async def test_point_validation_reports_each_bad_field(world):
    service, _, _ = world
    bad = Point("", "Bad Name", "", "UNSPECIFIED", Template(fields=(
        TemplateField("ok", "STRING"), TemplateField("ok", "NUMBER"), TemplateField("9x", "BOOL"),
        TemplateField("typeless", "UNSPECIFIED"))))
    with pytest.raises(InvalidArgument) as info:
        await service.points.upsert(T, bad)
    assert [f for f, _ in info.value.violations] == [
        "point.name", "point.type", "point.template.fields[1].name", "point.template.fields[2].name",
        "point.template.fields[3].type",
    ]


async def test_item_attributes_belong_to_recommendation_points_only(world):
    service, _, _ = world
    with pytest.raises(InvalidArgument) as info:
        await service.points.upsert(T, replace(BANNER, template=Template(item_attributes=("title",))))
    assert [f for f, _ in info.value.violations] == ["point.template.item_attributes[0]"]


async def test_content_is_checked_against_the_template_field_by_field(world):
    service, repo, _ = world
    bad = Decision(decision_id="", point_name="home_banner", name="bad",
                   content={"discount": "ten", "urgent": 1.0, "tags": ["a", 2.0], "colour": "red"})
    with pytest.raises(InvalidArgument) as info:
        await service.decisions.upsert(T, bad)
    assert sorted(f for f, _ in info.value.violations) == [
        "decision.content.colour", "decision.content.discount", "decision.content.headline",
        "decision.content.tags", "decision.content.urgent",
    ]
    assert not repo.decisions


async def test_matching_content_is_stored(world):
    service, _, _ = world
    good = await service.decisions.upsert(T, Decision(
        decision_id="", point_name="home_banner", name="good",
        content={"headline": "Hi", "discount": 10.0, "urgent": True, "tags": ["a", "b"]}))
    assert good.decision_id.startswith("dec_")


async def test_recommendation_decisions_need_a_recommender_and_a_count_up_to_24(world):
    service, _, _ = world
    await service.points.upsert(T, RECS)
    with pytest.raises(InvalidArgument) as info:
        await service.decisions.upsert(T, Decision(decision_id="", point_name="recs_block", name="r", count=25))
    assert [f for f, _ in info.value.violations] == [
        "decision.recommendations.recommender", "decision.recommendations.count"]
    stored = await service.decisions.upsert(
        T, Decision(decision_id="", point_name="recs_block", name="r", recommender="top_sellers"))
    assert stored.count == 12


async def test_a_manual_point_refuses_a_decision_without_content(world):
    service, _, _ = world
    with pytest.raises(InvalidArgument) as info:
        await service.decisions.upsert(T, Decision(decision_id="", point_name="home_banner", name="x"))
    assert [f for f, _ in info.value.violations] == ["decision.content"]


async def test_a_decision_on_an_unknown_point_is_not_found(world):
    service, _, _ = world
    with pytest.raises(NotFound) as info:
        await add(service, "x", point="nowhere")
    assert info.value.reason == "POINT_NOT_FOUND"


@pytest.mark.parametrize("rule, needle", [
    ("profile.segments.exists(s, s ==", "parse"),
    ("customer.vip == true", "customer"),
    ('profile.attributes.x == "a" && unknown_thing', "unknown_thing"),
    ("profile.segments + 1", ""),
    ("size(profile.segments)", "bool"),
    ("nosuchfunction(profile)", "nosuchfunction"),
    ("a" * 4097, "4096"),
    ("(" * 33 + "true" + ")" * 33, "32"),
])
async def test_bad_rules_are_refused_at_save_time_on_decision_rule(world, rule, needle):
    service, repo, _ = world
    with pytest.raises(InvalidArgument) as info:
        await add(service, "x", rule=rule)
    [(path, message)] = info.value.violations
    assert path == "decision.rule"
    assert needle.lower() in message.lower()
    assert not repo.decisions


@pytest.mark.parametrize("rule", [
    'profile.attributes.tier == "gold"',
    "profile.insights.spend > 100.0 || has(profile.attributes.vip)",
    'profile.events.exists(e, e.type == "PURCHASE")',
    "(" * 32 + "true" + ")" * 32,
    'context.request_url.contains("(((((((((((((((((((((((((((((((((((")',
    "",
])
async def test_rules_that_only_miss_data_on_an_empty_profile_are_accepted(world, rule):
    service, _, _ = world
    stored = await add(service, "ok", rule=rule)
    assert stored.rule == rule


async def test_a_decision_id_given_must_exist_on_the_point(world):
    service, _, _ = world
    with pytest.raises(NotFound) as info:
        await service.decisions.upsert(T, Decision(decision_id="dec_nope", point_name="home_banner", name="x",
                                                  content=content("x")))
    assert info.value.reason == "DECISION_NOT_FOUND"


async def test_upserting_by_name_keeps_the_id_and_renaming_onto_a_taken_name_is_refused(world):
    service, _, _ = world
    first = await add(service, "one", priority=1)
    again = await add(service, "one", priority=7)
    assert again.decision_id == first.decision_id
    second = await add(service, "two")
    with pytest.raises(AlreadyExists):
        await service.decisions.upsert(T, replace(second, name="one"))


async def test_a_template_change_that_breaks_existing_content_is_refused(world):
    service, _, _ = world
    await add(service, "one")
    narrower = replace(BANNER, template=Template(fields=(TemplateField("title", "STRING", required=True),)))
    with pytest.raises(FailedPrecondition) as info:
        await service.points.upsert(T, narrower)
    assert info.value.reason == "TEMPLATE_BREAKS_DECISIONS"


async def test_decisions_page_by_priority(world):
    service, _, _ = world
    for i in range(5):
        await add(service, f"d{i}", priority=i)
    page, token = await service.decisions.page(T, "home_banner", 2, "")
    names = [d.name for d in page]
    while token:
        page, token = await service.decisions.page(T, "home_banner", 2, token)
        names += [d.name for d in page]
    assert names == ["d4", "d3", "d2", "d1", "d0"]
    first, token = await service.decisions.page(T, "home_banner", 2, "")
    with pytest.raises(InvalidArgument) as info:  # a token of another point's decisions
        await service.decisions.page(T, "other_point", 2, token)
    assert [field for field, _ in info.value.violations] == ["page_token"]


async def test_a_forged_page_token_is_invalid(world):
    service, _, _ = world
    with pytest.raises(InvalidArgument) as info:
        await service.points.page(T, 10, "garbage!")
    assert info.value.violations[0][0] == "page_token"


async def test_log_rows_are_idempotent_and_listed_newest_first(world):
    service, _, _ = world
    base = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [LogEntry(personalization_id=f"p{i}", point_name="home_banner", unified_individual_id="u1",
                     log_time=base + timedelta(minutes=i)) for i in range(3)]
    assert await service.log.append(T, rows) == 3
    assert await service.log.append(T, rows[:1]) == 0
    page, token = await service.log.page(T, "u1", 2, "")
    assert [r.personalization_id for r in page] == ["p2", "p1"]
    page, token = await service.log.page(T, "u1", 2, token)
    assert [r.personalization_id for r in page] == ["p0"] and token == ""


async def test_log_rows_without_id_or_point_are_refused(world):
    service, _, _ = world
    with pytest.raises(InvalidArgument) as info:
        await service.log.append(T, [LogEntry(personalization_id="", point_name="")])
    assert [f for f, _ in info.value.violations] == ["entries[0].personalization_id", "entries[0].point_name"]


async def test_a_stored_rule_that_no_longer_compiles_never_matches_and_says_why(world):
    service, repo, _ = world
    await add(service, "fine", priority=1)
    point_id = repo.points[(T, "home_banner")].point_id
    repo.decisions[(T, "dec_legacy")] = (point_id, Decision(
        decision_id="dec_legacy", point_name="home_banner", name="legacy", priority=5, rule="1 +",
        content=content("legacy")))
    [q] = await qualify(service)
    assert q.decision.name == "fine"
    assert "no longer compiles" in q.evaluations[0].error
