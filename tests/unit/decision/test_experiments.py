"""Experiments, profile schema, archiving, merges and attribution on the in-memory repository."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.decision import experiments as exp
from services.decision.domain import Decision, LogEntry, Point, Template, TemplateField
from services.decision.experiments import Cohort, Experiment, Outcome
from services.decision.schema import ProfileSchema
from services.decision.service import DecisionService
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.unit.decision.fakes import FakeRepository

T = "tenant_a"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BANNER = Point(point_id="", name="home_banner", description="", type="MANUAL_CONTENT",
               template=Template(fields=(TemplateField("headline", "STRING", required=True),)))


class Now:
    def __init__(self) -> None:
        self.value = T0

    def __call__(self) -> datetime:
        return self.value


@pytest.fixture
async def world():
    repo = FakeRepository()
    now = Now()
    service = DecisionService(repo, cache_seconds=60.0, now=now)
    await service.points.upsert(T, BANNER)
    ids = {}
    for name, priority, rule, fallback in (("vip", 10, '"vip" in profile.segments', False),
                                           ("normal", 0, "", True), ("variant_a", -1, "false", False),
                                           ("variant_b", -2, "false", False)):
        d = await service.decisions.upsert(T, Decision("", "home_banner", name, priority, rule, fallback,
                                                      content={"headline": name}))
        ids[name] = d.decision_id
    return service, repo, now, ids


def experiment(ids, **overrides) -> Experiment:
    base = Experiment(
        experiment_id="", name="banner_test", point_name="home_banner",
        cohorts=(Cohort("control", 3400, control=True, fall_through=True),
                 Cohort("a", 3300, decision_id=ids["variant_a"]), Cohort("b", 3300, decision_id=ids["variant_b"])),
        min_participants=300, chance_to_win_threshold=95.0, winner_selection="AUTOMATIC",
    )
    return replace(base, **overrides)


async def test_weights_above_ten_thousand_basis_points_are_refused_and_nothing_is_saved(world):
    service, repo, _, ids = world
    bad = experiment(ids, cohorts=(Cohort("a", 6000, decision_id=ids["variant_a"]),
                                   Cohort("b", 5000, decision_id=ids["variant_b"])))
    with pytest.raises(InvalidArgument) as err:
        await service.experiments.upsert(T, bad)
    assert any(path == "experiment.cohorts" and "11000" in msg for path, msg in err.value.violations)
    assert not repo.experiments


async def test_bad_experiment_fields_each_get_a_violation(world):
    service, _, _, ids = world
    bad = experiment(ids, min_participants=10, chance_to_win_threshold=50.0, primary_metric="UNSPECIFIED",
                     cohorts=(Cohort("a", 5000, decision_id="dec_missing"), Cohort("b", 5000, fall_through=True)))
    with pytest.raises(InvalidArgument) as err:
        await service.experiments.upsert(T, bad)
    paths = {p for p, _ in err.value.violations}
    assert {"experiment.min_participants", "experiment.chance_to_win_threshold", "experiment.primary_metric",
            "experiment.cohorts[0].decision_id", "experiment.cohorts[1].fall_through"} <= paths


async def test_lifecycle_goes_draft_running_stopped_archived(world):
    service, _, _, ids = world
    e = await service.experiments.upsert(T, experiment(ids))
    assert e.state == "DRAFT" and e.experiment_id.startswith("exp_")
    assert (await service.experiments.start(T, "banner_test")).state == "RUNNING"
    with pytest.raises(FailedPrecondition) as err:
        await service.experiments.upsert(T, experiment(ids))
    assert err.value.reason == "EXPERIMENT_NOT_DRAFT"
    with pytest.raises(FailedPrecondition):
        await service.experiments.archive(T, "banner_test")
    stopped = await service.experiments.stop(T, "banner_test", "b")
    assert stopped.state == "STOPPED" and stopped.winner_cohort_id == "b"
    assert (await service.experiments.archive(T, "banner_test")).state == "ARCHIVED"
    with pytest.raises(FailedPrecondition) as err:
        await service.experiments.start(T, "banner_test")
    assert err.value.reason == "EXPERIMENT_WRONG_STATE"


async def test_a_second_running_experiment_on_a_point_is_refused(world):
    service, _, _, ids = world
    await service.experiments.upsert(T, experiment(ids))
    await service.experiments.upsert(T, experiment(ids, name="other_test"))
    await service.experiments.start(T, "banner_test")
    with pytest.raises(FailedPrecondition) as err:
        await service.experiments.start(T, "other_test")
    assert err.value.reason == "EXPERIMENT_ALREADY_RUNNING"
    assert (await service.repo.get_experiment(T, "other_test")).state == "DRAFT"


async def test_unknown_experiment_is_not_found(world):
    service, *_ = world
    with pytest.raises(NotFound) as err:
        await service.experiments.start(T, "nope")
    assert err.value.reason == "EXPERIMENT_NOT_FOUND"


async def test_experiment_is_evaluated_before_decisions_and_control_falls_through(world):
    service, _, _, ids = world
    await service.experiments.upsert(T, experiment(ids))
    await service.experiments.start(T, "banner_test")
    served = {}
    for i in range(300):
        uid = f"ind_{i}"
        [q] = await service.qualifier.one(T, [("home_banner", "")], {"segments": ["vip"]}, {}, uid)
        served[uid] = (q.assignment.cohort.cohort_id, q.decision.name)
    # Variants override the vip decision; the control falls through to it.
    assert {d for c, d in served.values() if c == "control"} == {"vip"}
    assert {d for c, d in served.values() if c == "a"} == {"variant_a"}
    assert {d for c, d in served.values() if c == "b"} == {"variant_b"}
    # Assignment is GrowthBook's: hash v2 with the experiment name as seed, into the bps ranges.
    [e] = (await service.repo.running_experiments(T, None))["home_banner"]
    assert all(exp.hashed_cohort(e, uid) == cohort for uid, (cohort, _) in served.items())
    [again] = await service.qualifier.one(T, [("home_banner", "")], {}, {}, "ind_7")
    assert again.assignment.cohort.cohort_id == served["ind_7"][0]  # sticky


async def test_without_an_individual_or_outside_the_traffic_nobody_is_assigned(world):
    service, _, _, ids = world
    await service.experiments.upsert(T, experiment(ids, cohorts=(
        Cohort("a", 100, decision_id=ids["variant_a"]), Cohort("b", 100, decision_id=ids["variant_b"]))))
    await service.experiments.start(T, "banner_test")
    [q] = await service.qualifier.one(T, [("home_banner", "")], {}, {})
    assert q.assignment is None and q.decision.name == "normal"
    outside = [(await service.qualifier.one(T, [("home_banner", "")], {}, {}, f"u{i}"))[0] for i in range(50)]
    assert any(not q.assignment.in_experiment and q.decision.name == "normal" for q in outside)


async def test_targeting_keeps_untargeted_individuals_out(world):
    service, _, _, ids = world
    await service.experiments.upsert(T, experiment(ids, targeting_rule='context.channel == "web"'))
    await service.experiments.start(T, "banner_test")
    [q] = await service.qualifier.one(T, [("home_banner", "")], {}, {"channel": "email"}, "ind_1")
    assert not q.assignment.targeted and not q.assignment.in_experiment and q.decision.name == "normal"
    [q] = await service.qualifier.one(T, [("home_banner", "")], {}, {"channel": "web"}, "ind_1")
    assert q.assignment.targeted


async def test_qualify_with_a_running_experiment_costs_no_query_on_a_warm_cache(world):
    service, repo, _, ids = world
    await service.experiments.upsert(T, experiment(ids))
    await service.experiments.start(T, "banner_test")
    await service.qualifier.one(T, [("home_banner", "")], {}, {}, "ind_1")
    before = repo.queries
    for i in range(20):
        await service.qualifier.one(T, [("home_banner", "")], {}, {}, f"ind_{i}")
    assert repo.queries == before


async def test_assign_experiments_lists_every_running_experiment_and_can_record_exposures(world):
    service, repo, _, ids = world
    await service.experiments.upsert(T, experiment(ids))
    await service.experiments.start(T, "banner_test")
    [a], holdout = await service.assignments.assign(T, "ind_3", [], {}, {}, record=True, channel="app")
    assert a.experiment.name == "banner_test" and a.in_experiment and not holdout
    [row] = repo.log.values()
    assert (row.experiment_id, row.cohort_id, row.channel) == (a.experiment.experiment_id, a.cohort.cohort_id, "app")
    with pytest.raises(InvalidArgument):
        await service.assignments.assign(T, "", [], {}, {})


async def test_a_merge_keeps_the_survivors_cohort_flags_later_exposures_and_results_exclude_them(world):
    service, repo, _, ids = world
    e = await service.experiments.upsert(T, experiment(ids, winner_selection="MANUAL"))
    await service.experiments.start(T, "banner_test")
    [e] = (await service.repo.running_experiments(T, None))["home_banner"]
    people = [f"p{i}" for i in range(40)]
    cohort = {p: exp.hashed_cohort(e, p) for p in people}
    alias = next(p for p in people if cohort[p] == "a")
    survivor = next(p for p in people if cohort[p] == "b")
    same = next(p for p in people if cohort[p] == "b" and p != survivor)
    for p in (alias, survivor, same):
        await service.log.append(T, [LogEntry(f"pz_{p}", "home_banner", unified_individual_id=p,
                                                 experiment_id=e.experiment_id, cohort_id=cohort[p], log_time=T0)])
    assert await service.assignments.reassign(T, [alias], survivor) == [e.experiment_id]
    [q] = await service.qualifier.one(T, [("home_banner", "")], {}, {}, survivor)
    assert q.assignment.cohort.cohort_id == "b"  # the survivor keeps its cohort
    await service.log.append(T, [LogEntry("later", "home_banner", unified_individual_id=survivor,
                                             experiment_id=e.experiment_id, cohort_id="b", log_time=T0)])
    assert repo.log[(T, "later")].exposure_conflict
    _, results = await service.results.compute(T, "banner_test")
    by = {r.cohort_id: r for r in results.cohorts}
    assert (by["a"].participants, by["a"].excluded_conflicts) == (0, 1)
    assert (by["b"].participants, by["b"].excluded_conflicts) == (1, 1)  # only `same` still counts


async def test_reassign_refuses_bad_input(world):
    service, *_ = world
    with pytest.raises(InvalidArgument) as err:
        await service.assignments.reassign(T, ["x", ""], "x")
    assert {p for p, _ in err.value.violations} == {"from_unified_individual_ids[0]", "from_unified_individual_ids[1]"}


async def test_seeded_simulated_experiment_picks_the_truly_better_cohort_automatically(world):
    service, _, now, ids = world
    await service.experiments.upsert(T, experiment(ids, min_duration=timedelta(days=7)))
    await service.experiments.start(T, "banner_test")
    rng = random.Random(42)
    truth = {"control": 0.08, "a": 0.08, "b": 0.13}
    entries, outcomes = [], []
    for i in range(3000):
        uid = f"sim_{i}"
        [q] = await service.qualifier.one(T, [("home_banner", "")], {}, {}, uid)
        cohort = q.assignment.cohort.cohort_id
        if cohort == "control":
            assert q.decision.name == "normal"  # fall-through to the point's decisions
        t = T0 + timedelta(minutes=i)
        entries.append(LogEntry(f"pz_{i}", "home_banner", decision_id=q.decision.decision_id,
                                unified_individual_id=uid, experiment_id=q.assignment.experiment.experiment_id,
                                cohort_id=cohort, log_time=t))
        if rng.random() < truth[cohort]:
            outcomes.append(Outcome(f"o_{i}", uid, "PURCHASE", t + timedelta(hours=1), ("item",), 20.0))
    for start in range(0, len(entries), 1000):
        await service.log.append(T, entries[start:start + 1000])
    await service.outcomes.record(T, outcomes)
    now.value = T0 + timedelta(days=2)
    e, results = await service.results.compute(T, "banner_test")
    assert e.state == "RUNNING" and results.leading_cohort_id == ""  # minimum duration not passed
    assert "minimum duration" in results.verdict
    now.value = T0 + timedelta(days=8)
    e, results = await service.results.compute(T, "banner_test")
    by = {r.cohort_id: r for r in results.cohorts}
    assert not results.srm
    assert all(r.participants >= 300 for r in results.cohorts)
    assert by["b"].chance_to_beat_control >= 0.95 > by["a"].chance_to_beat_control
    assert results.leading_cohort_id == "b"
    assert e.state == "STOPPED" and e.winner_cohort_id == "b"
    [q] = await service.qualifier.one(T, [("home_banner", "")], {}, {}, "sim_1")
    assert q.assignment is None  # stopped: nobody is assigned any more


def test_beta_chance_is_symmetric_and_favours_the_better_rate():
    assert exp.chance_beta_beats(50, 500, 50, 500) == pytest.approx(0.5, abs=1e-6)
    assert exp.chance_beta_beats(80, 500, 50, 500) > 0.99
    assert exp.chance_beta_beats(80, 500, 50, 500) + exp.chance_beta_beats(50, 500, 80, 500) == pytest.approx(1, 1e-6)


def test_revenue_uses_a_normal_approximation_of_the_difference_of_means():
    assert exp.chance_normal_beats([1.0, 2.0, 3.0] * 100, [1.0, 2.0, 3.0] * 100) == pytest.approx(0.5)
    assert exp.chance_normal_beats([2.0, 3.0, 4.0] * 100, [1.0, 2.0, 3.0] * 100) > 0.99


def test_sample_ratio_mismatch_is_detected():
    assert exp.srm_p_value([500, 500], [5000, 5000]) > 0.5
    assert exp.srm_p_value([700, 300], [5000, 5000]) < 0.001


async def test_archived_decisions_are_neither_evaluated_nor_forced_and_archived_points_are_refused(world):
    service, _, _, ids = world
    await service.decisions.archive(T, ids["vip"])
    [q] = await service.qualifier.one(T, [("home_banner", "")], {"segments": ["vip"]}, {})
    assert q.decision.name == "normal"
    with pytest.raises(NotFound) as err:
        await service.qualifier.one(T, [("home_banner", ids["vip"])], {}, {})
    assert err.value.reason == "DECISION_NOT_FOUND"
    await service.points.archive(T, "home_banner")
    with pytest.raises(NotFound) as err:
        await service.qualifier.one(T, [("home_banner", "")], {}, {})
    assert err.value.reason == "POINT_ARCHIVED"
    assert [p.name for p in (await service.points.page(T, 0, "", include_archived=True))[0]] == ["home_banner"]
    assert (await service.points.page(T, 0, ""))[0] == []
    await service.points.upsert(T, BANNER)
    [q] = await service.qualifier.one(T, [("home_banner", "")], {}, {})
    assert q.decision.name == "normal"


async def test_a_decision_served_by_a_running_cohort_cannot_be_archived(world):
    service, _, _, ids = world
    await service.experiments.upsert(T, experiment(ids))
    await service.experiments.start(T, "banner_test")
    with pytest.raises(FailedPrecondition) as err:
        await service.decisions.archive(T, ids["variant_a"])
    assert err.value.reason == "EXPERIMENT_RUNNING"


SCHEMA = ProfileSchema(attributes=(("age", "NUMBER"), ("tier", "STRING")), insights=("spend_30d",),
                       segments=("vip",), affinities=("category",), consents=("email",),
                       context_attributes=(("campaign", "STRING"),))


async def test_rules_naming_undeclared_things_are_refused_with_their_position(world):
    service, _, _, _ = world
    await service.schemas.declare(T, SCHEMA)
    with pytest.raises(InvalidArgument) as err:
        await service.decisions.upsert(T, Decision("", "home_banner", "x", rule='profile.attributes.agee > 3.0 &&\n'
                                                  '"vipp" in profile.segments', content={"headline": "h"}))
    [(path, message)] = err.value.violations
    assert path == "decision.rule"
    assert "line 1, column 20: profile.attributes.agee is not a declared attribute" in message
    assert "line 2, column 1: segment 'vipp' is not declared" in message
    ok = ('profile.attributes.age > 30.0 && "vip" in profile.segments && profile.consents.email && '
          'profile.affinities.category.shoes > 0.5 && context.attributes.campaign == "x" && profile.insights.spend_30d > 1.0')
    assert (await service.decisions.upsert(T, Decision("", "home_banner", "ok", rule=ok,
                                                      content={"headline": "h"}))).decision_id


async def test_type_errors_against_the_declared_schema_are_refused(world):
    service, _, _, _ = world
    await service.schemas.declare(T, SCHEMA)
    for rule in ('profile.attributes.age > "old"', 'profile.attributes.tier == "a" && profile.attributes.age + 1 > 2'):
        with pytest.raises(InvalidArgument) as err:
            await service.decisions.upsert(T, Decision("", "home_banner", "x", rule=rule, content={"headline": "h"}))
        assert "type error" in err.value.violations[0][1]


async def test_a_schema_that_breaks_saved_rules_is_refused_and_the_old_one_stays(world):
    service, repo, _, _ = world
    await service.schemas.declare(T, SCHEMA)
    with pytest.raises(FailedPrecondition) as err:
        await service.schemas.declare(T, replace(SCHEMA, segments=()))
    assert err.value.reason == "SCHEMA_BREAKS_RULES"
    assert repo.schemas[T] == SCHEMA


async def test_bad_schema_entries_each_get_a_violation(world):
    service, *_ = world
    with pytest.raises(InvalidArgument) as err:
        await service.schemas.declare(T, ProfileSchema(attributes=(("age", "NUMBER"), ("age", "STRING"),
                                                                  ("1bad", "BOOL"), ("x", "UNSPECIFIED"))))
    assert {p for p, _ in err.value.violations} == {
        "schema.attributes[1].name", "schema.attributes[2].name", "schema.attributes[3].type"}


async def test_pathological_comprehensions_are_refused(world):
    service, *_ = world
    rule = "profile.events.exists(a, profile.events.exists(b, profile.events.exists(c, true)))"
    with pytest.raises(InvalidArgument) as err:
        await service.decisions.upsert(T, Decision("", "home_banner", "x", rule=rule, content={"headline": "h"}))
    assert err.value.violations == [("decision.rule", "comprehensions nest 3 deep at column 66; at most 2 levels "
                                                      "are allowed")]


async def test_attribution_credits_first_and_last_touch_by_view_and_by_click(world):
    service, _, now, ids = world
    now.value = T0 + timedelta(days=1)
    rows = [LogEntry("p1", "home_banner", decision_id=ids["vip"], unified_individual_id="u", log_time=T0,
                     served={"data": [{"item_id": "sku1"}]}),
            LogEntry("p2", "recs", decision_id="dec_r", unified_individual_id="u", log_time=T0 + timedelta(hours=1),
                     served={"data": [{"item_id": "sku2"}, {"item_id": "sku3"}]}),
            LogEntry("p3", "home_banner", decision_id=ids["normal"], unified_individual_id="u",
                     log_time=T0 + timedelta(hours=2))]
    await service.log.append(T, rows)
    await service.outcomes.record(T, [
        Outcome("c1", "u", "CLICK", T0 + timedelta(hours=1, minutes=5), ("sku2",)),
        Outcome("b1", "u", "PURCHASE", T0 + timedelta(hours=3), ("sku2", "sku9"), 50.0)])
    credit = await service.attribution.credit(T, T0, T0 + timedelta(days=1), timedelta(0), "")
    assert credit[("FIRST_TOUCH_VIEW", "home_banner", ids["vip"], "")].conversions == 1
    assert credit[("LAST_TOUCH_VIEW", "home_banner", ids["normal"], "")].revenue == 50.0
    assert credit[("FIRST_TOUCH_CLICK", "recs", "dec_r", "sku2")].revenue == 25.0
    assert credit[("LAST_TOUCH_CLICK", "recs", "dec_r", "")].clicks == 1
    assert ("FIRST_TOUCH_CLICK", "home_banner", ids["vip"], "") not in credit


async def test_fallback_only_serves_the_fallback_without_evaluating_experiments_or_rules(world):
    service, _, _, ids = world
    await service.experiments.upsert(T, experiment(ids))
    await service.experiments.start(T, "banner_test")
    [q] = await service.qualifier.one(T, [("home_banner", "")], {"segments": ["vip"]}, {}, "ind_1", fallback_only=True)
    assert (q.decision.name, q.evaluations, q.assignment) == ("normal", [], None)


async def test_a_zero_weight_cohort_is_refused_naming_its_weight(world):
    service, repo, _, ids = world
    bad = experiment(ids, cohorts=(Cohort("a", 5000, decision_id=ids["variant_a"]),
                                   Cohort("b", 0, decision_id=ids["variant_b"])))
    with pytest.raises(InvalidArgument) as err:
        await service.experiments.upsert(T, bad)
    assert [path for path, _ in err.value.violations] == ["experiment.cohorts[1].weight_bps"]
    assert not repo.experiments


def _results_of(e: Experiment, converters: dict[str, int], participants: int = 300) -> exp.Results:
    exposures, outcomes = [], []
    for cohort in e.cohorts:
        for i in range(participants):
            uid = f"{cohort.cohort_id}_{i}"
            exposures.append(exp.Exposure(f"pz_{uid}", uid, T0, "home_banner", experiment_id="x",
                                          cohort_id=cohort.cohort_id))
            if i < converters[cohort.cohort_id]:
                outcomes.append(Outcome(f"o_{uid}", uid, "PURCHASE", T0 + timedelta(hours=1), ("sku",), 10.0))
    return exp.compute_results(e, exposures, outcomes, {}, set(), T0 + timedelta(days=30))


def test_four_conversions_against_none_of_300_each_pick_no_winner():
    e = Experiment("x", "t", "home_banner", (Cohort("control", 5000, control=True, fall_through=True),
                                              Cohort("b", 5000, decision_id="d")),
                   winner_selection="AUTOMATIC", start_time=T0)
    results = _results_of(e, {"control": 0, "b": 4})
    by = {r.cohort_id: r for r in results.cohorts}
    assert by["b"].chance_to_beat_control > 0.95  # what used to pick b
    assert results.leading_cohort_id == ""
    assert f"below {exp.MIN_CONVERSIONS} conversions: control, b" in results.verdict


def test_enough_conversions_in_every_cohort_let_the_better_one_lead():
    e = Experiment("x", "t", "home_banner", (Cohort("control", 5000, control=True, fall_through=True),
                                              Cohort("b", 5000, decision_id="d")),
                   winner_selection="AUTOMATIC", start_time=T0)
    results = _results_of(e, {"control": 25, "b": 60})
    assert results.leading_cohort_id == "b"


def _beta_chance_by_loop(conv_b, n_b, conv_a, n_a):
    """The closed form term by term, in exact rational arithmetic (the reference)."""
    from fractions import Fraction
    from math import comb

    alpha_a, beta_a, alpha_b, beta_b = conv_a + 1, n_a - conv_a + 1, conv_b + 1, n_b - conv_b + 1

    def beta(a, b):  # B(a, b) for positive integers
        return Fraction(1, a + b - 1) / comb(a + b - 2, a - 1)

    total = sum(beta(alpha_a + i, beta_b + beta_a) / ((beta_b + i) * beta(1 + i, beta_b) * beta(alpha_a, beta_a))
                for i in range(alpha_b))
    return float(total)


@pytest.mark.parametrize("counts", [(0, 300, 4, 300), (4, 300, 0, 300), (37, 412, 29, 388), (120, 900, 150, 1000)])
def test_vectorised_beta_chance_equals_the_exact_sum(counts):
    assert exp.chance_beta_beats(*counts) == pytest.approx(_beta_chance_by_loop(*counts), abs=1e-9)


def test_beta_chance_with_a_hundred_thousand_conversions_agrees_with_the_normal_limit():
    import math

    p_a, p_b, n = 0.100, 0.101, 1_000_000
    se = math.sqrt(p_a * (1 - p_a) / n + p_b * (1 - p_b) / n)
    normal = 0.5 * (1 + math.erf((p_b - p_a) / se / math.sqrt(2)))
    assert exp.chance_beta_beats(int(p_b * n), n, int(p_a * n), n) == pytest.approx(normal, abs=5e-3)
