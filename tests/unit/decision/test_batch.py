"""QualifyBatch on the in-memory repository: the same answers as Qualify, no query when warm, validation."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from services.decision import rules
from services.decision.domain import Decision, Holdout, Point, Template, TemplateField
from services.decision.experiments import Cohort, Experiment
from services.decision.service import DecisionService
from shared.errors import InvalidArgument, NotFound
from tests.unit.decision.fakes import FakeRepository

T = "tenant_a"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TEMPLATE = Template(fields=(TemplateField("headline", "STRING", required=True),))
RULES = (
    ("big_vip", 30, '"vip" in profile.segments && profile.insights.spend_30d > 200.0'),
    ("gold_email", 20, 'profile.attributes.tier == "gold" && context.channel == "email"'),
    # Fails for everyone without the attribute: the error must be reported identically by both paths.
    ("adults", 10, "profile.attributes.age >= 18.0"),
    ("buyers", 5, 'profile.events.exists(e, e.type == "PURCHASE")'),
)


def generated_profile(rng: random.Random) -> dict:
    profile = {
        "segments": rng.sample(["vip", "new", "lapsed", "mobile"], rng.randint(0, 2)),
        "insights": {"spend_30d": round(rng.random() * 400, 2)},
        "attributes": {"tier": rng.choice(["gold", "silver"])},
        "events": [{"type": rng.choice(["VIEW", "PURCHASE"]), "item_id": f"i{k}"} for k in range(rng.randint(0, 3))],
    }
    if rng.random() < 0.7:
        profile["attributes"]["age"] = float(rng.randint(12, 70))
    if rng.random() < 0.2:
        del profile["insights"]  # a missing documented key defaults to empty
    return profile


@pytest.fixture
async def world():
    repo = FakeRepository()
    service = DecisionService(repo, cache_seconds=60.0, now=lambda: T0)
    ids = {}
    for point in ("home_banner", "footer"):
        await service.points.upsert(T, Point("", point, "", "MANUAL_CONTENT", TEMPLATE))
        for name, priority, rule in RULES + (("normal", 0, ""),):
            d = await service.decisions.upsert(T, Decision("", point, name, priority, rule, fallback=name == "normal",
                                                          content={"headline": name}))
            ids[(point, name)] = d.decision_id
    for name in ("variant_a", "variant_b"):
        d = await service.decisions.upsert(T, Decision("", "home_banner", name, -5, "false", content={"headline": name}))
        ids[("home_banner", name)] = d.decision_id
    await service.experiments.upsert(T, Experiment(
        experiment_id="", name="banner_test", point_name="home_banner", targeting_rule='!("new" in profile.segments)',
        cohorts=(Cohort("control", 4000, control=True, fall_through=True),
                 Cohort("a", 3000, decision_id=ids[("home_banner", "variant_a")]),
                 Cohort("b", 2000, decision_id=ids[("home_banner", "variant_b")])),
        min_participants=300, chance_to_win_threshold=95.0,
    ))
    await service.experiments.start(T, "banner_test")
    return service, repo


async def test_batch_gives_every_individual_exactly_what_qualify_gives_them(world):
    service, _ = world
    rng = random.Random(7)
    individuals = [(f"ind_{i}", generated_profile(rng)) for i in range(300)]
    context = {"channel": "email"}
    points, rows = await service.qualifier.batch(T, ["home_banner", "footer"], context, individuals)
    assert [p.name for p in points] == ["home_banner", "footer"]
    assert len(rows) == len(individuals)
    for (uid, profile), row in zip(individuals, rows):
        assert row == await service.qualifier.one(T, [("home_banner", ""), ("footer", "")], profile, context, uid)
    # The comparison covers every path: cohorts, untargeted, fall-through, matches, failing rules, fallback.
    served = {q.decision.name for row in rows for q in row}
    assert {"variant_a", "variant_b", "big_vip", "gold_email", "normal"} <= served
    assert any(not q.assignment.targeted for row in rows for q in row[:1])
    assert any(e.error for row in rows for q in row for e in q.evaluations)


async def test_a_batch_whose_points_read_nothing_of_anyone_shares_answers_and_still_equals_qualify(world):
    service, _ = world
    await service.points.upsert(T, Point("", "email_recs", "", "MANUAL_CONTENT", TEMPLATE))
    await service.decisions.upsert(T, Decision("", "email_recs", "always", 5, "1 + 1 == 2", content={"headline": "a"}))
    await service.decisions.upsert(T, Decision("", "email_recs", "default", 0, "", fallback=True,
                                               content={"headline": "d"}))
    await service.holdouts.set(T, Holdout(fraction_bps=3000, seed="s"))
    individuals = [(f"ind_{i}", {"segments": ["vip"]} if i % 2 else {}) for i in range(200)]
    _, rows = await service.qualifier.batch(T, ["email_recs"], {"channel": "email"}, individuals)
    for (uid, profile), row in zip(individuals, rows):
        assert row == await service.qualifier.one(T, [("email_recs", "")], profile, {"channel": "email"}, uid)
    assert {(q.decision.name, q.holdout, len(q.evaluations)) for row in rows for q in row} == {
        ("always", False, 1), ("default", True, 0)}
    assert len({id(row) for row in rows}) == 2  # one answer outside the holdout, one in it


async def test_a_warm_batch_costs_no_query(world):
    service, repo = world
    await service.qualifier.batch(T, ["home_banner", "footer"], {}, [("ind_0", {})])
    before = repo.queries
    await service.qualifier.batch(T, ["home_banner", "footer"], {}, [(f"ind_{i}", {}) for i in range(1000)])
    assert repo.queries == before


async def test_fallback_only_serves_everyone_the_fallback_without_evaluating_anything(world):
    service, _ = world
    _, rows = await service.qualifier.batch(T, ["home_banner"], {"channel": "email"},
                                          [("ind_1", {"segments": ["vip"]}), ("ind_2", {})], fallback_only=True)
    assert [[(q.decision.name, q.evaluations, q.assignment) for q in row] for row in rows] == \
        [[("normal", [], None)], [("normal", [], None)]]


async def test_bad_batch_input_gets_one_violation_per_field_and_nothing_is_qualified(world):
    service, _ = world
    with pytest.raises(InvalidArgument) as info:
        await service.qualifier.batch(T, ["home_banner", ""], {}, [("ind_1", {}), ("", {})])
    assert [path for path, _ in info.value.violations] == ["points[1]", "individuals[1].unified_individual_id"]
    with pytest.raises(InvalidArgument) as info:
        await service.qualifier.batch(T, [], {}, [])
    assert [path for path, _ in info.value.violations] == ["points", "individuals"]
    with pytest.raises(InvalidArgument) as info:
        await service.qualifier.batch(T, ["home_banner"], {}, [(f"ind_{i}", {}) for i in range(1001)])
    assert [path for path, _ in info.value.violations] == ["individuals"]


async def test_an_unknown_point_in_a_batch_is_not_found_with_its_position(world):
    service, _ = world
    with pytest.raises(NotFound) as info:
        await service.qualifier.batch(T, ["home_banner", "nowhere"], {}, [("ind_1", {})])
    assert info.value.reason == "POINT_NOT_FOUND" and "points[1]" in str(info.value)


def test_a_batch_activation_converts_the_context_once_and_swaps_only_the_profile():
    rule = rules.compile_rule('context.channel == "web" && "vip" in profile.segments')
    batch = rules.BatchActivation(rule.needs, {"channel": "web", "request_url": "/unused"})
    assert rules.evaluate(rule, batch.with_profile({"segments": ["vip"]})) == (True, "")
    assert rules.evaluate(rule, batch.with_profile({})) == (False, "")
    assert rules.evaluate(rule, batch.with_profile({"segments": ["vip"], "events": [{}] * 5})) == (True, "")
