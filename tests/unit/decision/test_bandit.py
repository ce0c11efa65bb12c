"""The bandit model (services/decision/bandit.py): posteriors, sampling, floors, holdout, segments, credits, and a
seeded simulation of 20,000 decisions."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.decision import bandit
from services.decision.bandit import ArmStats, BanditConfig, NewOutcome, Served
from services.decision.domain import (
    Decision,
    LogEntry,
    Point,
    Qualification,
    Template,
    TemplateField,
)
from services.decision.experiments import Outcome
from services.decision.service import DecisionService
from shared.errors import InvalidArgument, Violations
from tests.unit.decision.bandit_sim import simulate
from tests.unit.decision.fakes import FakeRepository

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_beta_posterior_counts_successes_and_failures_of_the_chosen_reward():
    stats = ArmStats(trials=100, clicks=7, conversions=2)
    assert bandit.posterior(stats, "CLICK") == bandit.Posterior("beta", alpha=8.0, beta=94.0)
    assert bandit.posterior(stats, "CONVERSION") == bandit.Posterior("beta", alpha=3.0, beta=99.0)
    assert bandit.posterior(ArmStats(), "CLICK") == bandit.Posterior("beta", alpha=1.0, beta=1.0)


def test_revenue_posterior_is_the_conversion_beta_and_a_normal_gamma_of_the_order_value():
    values = [10.0, 30.0, 20.0]  # three converted trials out of 50
    stats = ArmStats(trials=50, conversions=3, revenue=sum(values), revenue_sq=sum(x * x for x in values))
    prior = bandit.ValuePrior(mean=25.0, rate=700.0)
    post = bandit.posterior(stats, "REVENUE", prior)
    n, xbar = 3, 20.0
    spread = sum((x - xbar) ** 2 for x in values)
    assert (post.kind, post.alpha, post.beta) == ("beta_normal_gamma", 4.0, 48.0)
    assert post.kappa == 4.0 and post.shape == 1.0 + n / 2
    assert post.mean == pytest.approx((25.0 + n * xbar) / 4)
    assert post.rate == pytest.approx(700.0 + spread / 2 + n * (xbar - 25.0) ** 2 / (2 * 4))


def test_value_prior_pools_the_offers_conversions():
    arms = [ArmStats(trials=10, conversions=1, revenue=10.0, revenue_sq=100.0),
            ArmStats(trials=10, conversions=1, revenue=30.0, revenue_sq=900.0)]
    assert bandit.value_prior(arms) == bandit.ValuePrior(mean=20.0, rate=500.0)
    assert bandit.value_prior([ArmStats(trials=10)]) == bandit.ValuePrior(mean=1.0, rate=1.0)


def test_samples_center_on_the_posterior_mean():
    rng = random.Random(7)
    beta = bandit.posterior(ArmStats(trials=1000, clicks=50), "CLICK")
    draws = [bandit.sample(beta, rng) for _ in range(4000)]
    assert statistics.fmean(draws) == pytest.approx(51 / 1002, rel=0.02)
    values = [40.0] * 50 + [60.0] * 50  # 100 conversions of 1,000 trials
    revenue = bandit.posterior(ArmStats(trials=1000, conversions=100, revenue=5000.0, revenue_sq=260000.0),
                               "REVENUE", bandit.ValuePrior(mean=50.0, rate=2600.0))
    draws = [bandit.sample(revenue, rng) for _ in range(4000)]
    assert statistics.fmean(draws) == pytest.approx(101 / 1002 * statistics.fmean(values), rel=0.03)


def test_choose_serves_the_highest_sample_and_reports_every_draw():
    stats = {"a": ArmStats(trials=10_000, clicks=100), "b": ArmStats(trials=10_000, clicks=900)}
    choice = bandit.choose(["a", "b"], stats, BanditConfig(), random.Random(1))
    assert choice.decision_id == "b" and not choice.explored
    assert [d.decision_id for d in choice.draws] == ["a", "b"]
    assert choice.draws[1].sampled == max(d.sampled for d in choice.draws)
    assert choice.draws[0].posterior.alpha == 101.0


def test_exploration_floor_gives_every_offer_at_least_its_share():
    stats = {"a": ArmStats(trials=10_000, clicks=100), "b": ArmStats(trials=10_000, clicks=900),
             "c": ArmStats(trials=10_000, clicks=100)}
    rng = random.Random(3)
    config = BanditConfig(min_offer_share=0.1)
    served = Counter(bandit.choose(["a", "b", "c"], stats, config, rng).decision_id for _ in range(6000))
    assert served["a"] / 6000 >= 0.09 and served["c"] / 6000 >= 0.09
    assert served["b"] / 6000 == pytest.approx(0.7 + 0.1, abs=0.03)
    no_floor = Counter(bandit.choose(["a", "b", "c"], stats, BanditConfig(), rng).decision_id for _ in range(2000))
    assert no_floor["a"] == 0 and no_floor["c"] == 0


def test_holdout_is_sticky_per_individual_and_close_to_its_share():
    config = BanditConfig(holdout_share=0.2)
    rng = random.Random(0)
    first = [bandit.in_holdout(config, "home_banner", f"u{i}", rng) for i in range(5000)]
    again = [bandit.in_holdout(config, "home_banner", f"u{i}", rng) for i in range(5000)]
    assert first == again
    assert sum(first) / 5000 == pytest.approx(0.2, abs=0.02)
    assert not any(bandit.in_holdout(BanditConfig(), "home_banner", f"u{i}", rng) for i in range(100))


def test_segment_is_the_first_configured_one_the_individual_is_in():
    config = BanditConfig(segments=("vip", "new_visitors"))
    assert bandit.segment_of(config, ["new_visitors", "vip"]) == "vip"
    assert bandit.segment_of(config, ["new_visitors"]) == "new_visitors"
    assert bandit.segment_of(config, ["other"]) == ""
    assert bandit.segment_of(BanditConfig(), ["vip"]) == ""


def test_bad_configuration_names_each_bad_field():
    v = Violations()
    bandit.validate_config(BanditConfig(reward="VIEWS", min_offer_share=0.7, holdout_share=float("nan"),
                                        segments=("vip", "", "vip"), attribution_window=timedelta(days=91)), v)
    assert [path for path, _ in v.items] == [
        "point.bandit.reward", "point.bandit.min_offer_share", "point.bandit.holdout_share",
        "point.bandit.segments[1]", "point.bandit.segments[2]", "point.bandit.attribution_window"]
    ok = Violations()
    bandit.validate_config(BanditConfig(reward="REVENUE", min_offer_share=0.05, holdout_share=0.1,
                                        segments=("vip",), attribution_window=timedelta(days=3)), ok)
    assert not ok


def _served(pid: str, who: str, point: str, minutes: int, window=timedelta(days=7)) -> Served:
    return Served(pid, who, point, T0 + timedelta(minutes=minutes), window)


def test_a_named_click_credits_that_personalization_only():
    served = [_served("p1", "u1", "banner", 0), _served("p2", "u1", "banner", 5)]
    credits = bandit.plan_credits([NewOutcome("u1", "CLICK", T0 + timedelta(minutes=10), personalization_id="p1"),
                                   NewOutcome("u1", "CLICK", T0 + timedelta(minutes=11), personalization_id="other")],
                                  served, {})
    assert credits == {"p1": bandit.Credit(clicks=1)}


def test_a_purchase_credits_the_last_bandit_personalization_of_each_point_within_the_window():
    served = [_served("p1", "u1", "banner", 0), _served("p2", "u1", "banner", 5), _served("p3", "u1", "hero", 1),
              _served("p4", "u1", "banner", 60), _served("p5", "u2", "banner", 0),
              _served("p6", "u1", "short", 0, window=timedelta(minutes=2))]
    credits = bandit.plan_credits([NewOutcome("u1", "PURCHASE", T0 + timedelta(minutes=30), revenue=25.0),
                                   NewOutcome("u1", "CLICK", T0 + timedelta(minutes=31))], served, {})
    assert credits == {"p2": bandit.Credit(clicks=1, conversions=1, revenue=25.0),
                       "p3": bandit.Credit(clicks=1, conversions=1, revenue=25.0)}


def test_outcomes_of_a_survivor_credit_what_its_merged_identities_were_served():
    served = [_served("p1", "anon", "banner", 0)]
    credits = bandit.plan_credits([NewOutcome("known", "PURCHASE", T0 + timedelta(hours=1), revenue=9.5)],
                                  served, {"anon": "known"})
    assert credits == {"p1": bandit.Credit(conversions=1, revenue=9.5)}
    assert bandit.plan_credits([NewOutcome("known", "PURCHASE", T0 + timedelta(days=8), revenue=1.0)],
                               served, {"anon": "known"}) == {}


@pytest.mark.parametrize("reward", ["CLICK", "REVENUE"])  # CONVERSION is CLICK's model on another counter
def test_simulation_sends_most_traffic_to_the_best_offer_with_far_less_regret_than_uniform(reward):
    rates = {"two": 0.02, "three": 0.03, "five": 0.05}
    config = BanditConfig(reward=reward)
    thompson = simulate(rates, 20_000, config, seed=42)
    uniform = simulate(rates, 20_000, config, seed=42, policy="uniform")
    assert thompson.served["five"] / 20_000 >= 0.80
    assert thompson.regret < 0.3 * uniform.regret
    assert thompson.rewards > uniform.rewards


# ------------------------------------------------------------------------------------------ the use cases, on fakes

BANNER = Point(point_id="", name="banner", description="", type="MANUAL_CONTENT",
               template=Template(fields=(TemplateField("headline", "STRING", required=True),)),
               bandit=BanditConfig(reward="CLICK"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def world():
    repo = FakeRepository()
    clock = Clock()
    service = DecisionService(repo, cache_seconds=2.0, clock=clock, now=lambda: T0)
    service.qualifier.rng = random.Random(5)
    await service.points.upsert("t", BANNER)
    ids = {}
    for name, rule, fallback in (("ten_off", "", False), ("free_ship", "", False),
                                 ("vip_only", '"vip" in profile.segments', False), ("default", "", True)):
        d = await service.decisions.upsert("t", Decision(decision_id="", point_name="banner", name=name, rule=rule,
                                                         fallback=fallback, content={"headline": name}))
        ids[name] = d.decision_id
    return service, repo, clock, ids


async def _serve(service, who: str, profile=None, n: int = 0) -> Qualification:
    [q] = await service.qualifier.one("t", [("banner", "")], profile or {}, {}, who)
    if q.bandit is not None and not q.bandit.holdout:
        await service.log.append("t", [LogEntry(personalization_id=f"p-{who}-{n}", point_name="banner",
                                                decision_id=q.decision.decision_id, unified_individual_id=who,
                                                log_time=T0 + timedelta(seconds=n), bandit_trial=True,
                                                bandit_segment=q.bandit.segment)])
    return q


async def test_a_bandit_point_samples_only_the_offers_whose_rule_matches(world):
    service, _, _, ids = world
    q = await _serve(service, "u1")
    assert [e.decision_name for e in q.evaluations] == ["free_ship", "ten_off", "vip_only"]
    assert [d.decision_id for d in q.bandit.draws] == [ids["free_ship"], ids["ten_off"]]
    assert q.decision.decision_id in (ids["free_ship"], ids["ten_off"])
    assert q.decision.decision_id == max(q.bandit.draws, key=lambda d: d.sampled).decision_id
    vip = await _serve(service, "u2", {"segments": ["vip"]})
    assert len(vip.bandit.draws) == 3


async def test_trials_and_clicks_move_the_posteriors_and_then_the_traffic(world):
    service, repo, clock, ids = world
    for n in range(300):
        q = await _serve(service, f"u{n}", n=n)
        if q.decision.decision_id == ids["free_ship"] and n % 2 == 0:  # free shipping is clicked half the time
            await service.outcomes.record("t", [Outcome(f"o{n}", f"u{n}", "CLICK", T0 + timedelta(seconds=n + 1),
                                                        personalization_id=f"p-u{n}-{n}")])
        clock.now += 0.1  # posteriors are re-read every 2 s (20 decisions)
    arms = (await repo.arm_stats("t", ["banner"]))["banner"]
    ship, ten = arms[("", ids["free_ship"])], arms[("", ids["ten_off"])]
    assert ship.trials + ten.trials == 300 and ten.clicks == 0 and ship.clicks > 0
    assert ship.trials > 200
    clock.now += 10
    q = await _serve(service, "later")
    draws = {d.decision_id: d for d in q.bandit.draws}
    assert draws[ids["free_ship"]].posterior.alpha == 1 + ship.clicks
    assert draws[ids["ten_off"]].posterior.beta == 1 + ten.trials


async def test_a_click_is_counted_once_per_trial_and_a_resent_outcome_not_at_all(world):
    service, repo, _, _ = world
    q = await _serve(service, "u1")
    click = Outcome("o1", "u1", "CLICK", T0 + timedelta(minutes=1), personalization_id="p-u1-0")
    await service.outcomes.record("t", [click])
    await service.outcomes.record("t", [click, replace(click, outcome_id="o2")])
    arm = (await repo.arm_stats("t", ["banner"]))["banner"][("", q.decision.decision_id)]
    assert (arm.trials, arm.clicks) == (1, 1)


async def test_the_holdout_gets_the_default_and_is_no_trial(world):
    service, repo, _, ids = world
    await service.points.upsert("t", replace(BANNER, bandit=BanditConfig(holdout_share=0.3)))
    served = [await _serve(service, f"u{n}", n=n) for n in range(200)]
    held = [q for q in served if q.bandit.holdout]
    assert 30 <= len(held) <= 90
    assert all(q.decision.decision_id == ids["default"] and not q.evaluations for q in held)
    again = await _serve(service, f"u{served.index(held[0])}", n=999)
    assert again.bandit.holdout
    trials = sum(a.trials for a in (await repo.arm_stats("t", ["banner"]))["banner"].values())
    assert trials == 200 - len(held)


async def test_segments_have_posteriors_of_their_own(world):
    service, repo, _, _ = world
    await service.points.upsert("t", replace(BANNER, bandit=BanditConfig(segments=("vip", "new"))))
    q = await _serve(service, "u1", {"segments": ["new", "vip"]})
    assert q.bandit.segment == "vip"
    plain = await _serve(service, "u2", {"segments": ["other"]}, n=1)
    assert plain.bandit.segment == ""
    arms = (await repo.arm_stats("t", ["banner"]))["banner"]
    assert sorted(seg for seg, _ in arms) == ["", "vip"]


async def test_a_forced_decision_is_served_without_the_bandit(world):
    service, _, _, ids = world
    [q] = await service.qualifier.one("t", [("banner", ids["ten_off"])], {}, {}, "u1")
    assert q.decision.decision_id == ids["ten_off"] and q.bandit is None


async def test_bad_bandit_configuration_is_refused_naming_each_field(world):
    service, _, _, _ = world
    with pytest.raises(InvalidArgument) as error:
        await service.points.upsert("t", replace(BANNER, bandit=BanditConfig(reward="UNSPECIFIED",
                                                                             holdout_share=0.9)))
    assert [f for f, _ in error.value.violations] == ["point.bandit.reward", "point.bandit.holdout_share"]


def test_the_limits_declared_in_the_contract_are_the_ones_enforced():
    from personalization.decision.v1 import decision_service_pb2 as pb
    from shared import contract

    config = pb.BanditConfig.DESCRIPTOR
    assert contract.field_limits(config, "segments").max_items == bandit.MAX_SEGMENTS
    assert contract.field_limits(config, "holdout_share").max == bandit.MAX_HOLDOUT_SHARE
    assert contract.field_limits(config, "min_offer_share").max == 0.5


def test_tailor_apply_reads_a_bandit_point_from_yaml():
    import yaml

    from personalization.decision.v1 import decision_service_pb2 as pb
    from tailor_cli.demo import parse_config

    config = parse_config(yaml.safe_load("""
points:
  - name: offers
    type: MANUAL_CONTENT
    template: {fields: [{name: headline, type: STRING}]}
    bandit: {reward: REVENUE, min_offer_share: 0.05, holdout_share: 0.1, segments: [big_spenders],
             attribution_window: 3d}
    decisions:
      - {name: ten_off, content: {headline: Ten off}}
      - {name: plain, fallback: true, content: {headline: Hello}}
"""))
    b = config.points[0].point.bandit
    assert (b.reward, b.min_offer_share, b.holdout_share, list(b.segments), b.attribution_window.seconds) == (
        pb.BANDIT_REWARD_REVENUE, 0.05, 0.1, ["big_spenders"], 3 * 86400)


async def test_a_log_row_with_a_bad_bandit_segment_is_refused(world):
    service, repo, _, ids = world
    with pytest.raises(InvalidArgument) as error:
        await service.log.append("t", [LogEntry(personalization_id="p", point_name="banner",
                                                decision_id=ids["ten_off"], bandit_trial=True,
                                                bandit_segment="x" * 70)])
    assert [f for f, _ in error.value.violations] == ["entries[0].bandit_segment"]
    assert repo.arms == {}
