"""Next best promotion: a point that chooses among its offers by Thompson sampling. Pure functions, no I/O.

A bandit point's offers are its live, non-fallback decisions whose rule matches the individual (and whose consent is
granted). Each offer has, per segment ("" when no configured segment applies), counters kept by the repository:
trials (personalizations served by the bandit), clicks and conversions (trials that received at least one), and the
sum and sum of squares of the revenue attributed to trials. From them:

- CLICK and CONVERSION rewards: a Beta-Binomial model, Beta(1 + successes, 1 + trials - successes);
- REVENUE: revenue per trial = conversion rate x order value: the conversion rate's Beta posterior times a
  normal-gamma posterior of the order value (the revenue of converted trials), sampled as precision ~ Gamma(shape,
  rate), mean ~ Normal(mu, 1 / (kappa * precision)). Its prior is empirical, from all the point's offers in the
  segment pooled: mean the pooled order value, kappa 1, shape 1, rate the pooled mean square (1 and 1 before any
  conversion). A normal model of the revenue of every trial, most of them 0, would be overconfident after a few
  zeros (their spread is 0) and can lock onto a worse offer; splitting off the conversion rate avoids that.

choose() draws one sample per offer and serves the highest, except that with probability offers x min_offer_share it
serves an offer drawn uniformly (the exploration floor: every offer gets at least that share). A sticky share of
individuals (holdout_share, by hash of the unified id) gets the point's default (its fallback) and is no trial.

plan_credits() turns new outcomes into credit per personalization: a click naming a personalization credits it; any
other click and every purchase credit, per bandit point, the last bandit personalization served to the individual
(or an identity merged into it) within the point's attribution window before the outcome (last touch, as
GetAttribution's LAST_TOUCH_VIEW).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.decision.growthbook import gb_hash
from shared.errors import Violations

REWARDS = ("CLICK", "CONVERSION", "REVENUE")
DEFAULT_WINDOW = timedelta(days=7)
MAX_WINDOW = timedelta(days=90)
MAX_HOLDOUT_SHARE = 0.5
MAX_SEGMENTS = 50
SEGMENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # as the profile graph names segments
PRIOR_KAPPA, PRIOR_SHAPE = 1.0, 1.0  # the order value's prior: one pseudo-observation, shape 1


@dataclass(frozen=True)
class BanditConfig:
    """How a point chooses among its offers: the reward, the exploration floor, the holdout, the segments."""

    reward: str = "CLICK"  # CLICK | CONVERSION | REVENUE
    min_offer_share: float = 0.0
    holdout_share: float = 0.0
    segments: tuple[str, ...] = ()
    attribution_window: timedelta = timedelta(0)  # 0 means DEFAULT_WINDOW

    @property
    def window(self) -> timedelta:
        """The attribution window in force."""
        return self.attribution_window or DEFAULT_WINDOW


@dataclass(frozen=True)
class ArmStats:
    """What one offer of a point has collected in one segment."""

    trials: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0


NO_STATS = ArmStats()


@dataclass(frozen=True)
class ValuePrior:
    """The normal-gamma prior of the order value (REVENUE), pooled over a point's offers in one segment."""

    mean: float = 1.0
    rate: float = 1.0


@dataclass(frozen=True)
class Posterior:
    """A Beta(alpha, beta) posterior of a rate; for REVENUE also a normal-gamma (mean, kappa, shape, rate) one of
    the order value."""

    kind: str  # "beta" | "beta_normal_gamma"
    alpha: float = 0.0
    beta: float = 0.0
    mean: float = 0.0
    kappa: float = 0.0
    shape: float = 0.0
    rate: float = 0.0


@dataclass(frozen=True)
class ArmDraw:
    """One offer's posterior and the value sampled from it for a decision."""

    decision_id: str
    stats: ArmStats
    posterior: Posterior
    sampled: float


@dataclass(frozen=True)
class Choice:
    """What the bandit served: the offer ("" in the holdout or with no offer), whether it was an exploration-floor
    draw, every offer's draw, the posteriors' segment and whether the individual is in the holdout."""

    decision_id: str
    explored: bool
    draws: tuple[ArmDraw, ...]
    segment: str = ""
    holdout: bool = False


def value_prior(stats: Iterable[ArmStats]) -> ValuePrior:
    """The order value's prior from the offers' pooled conversions (mean value, mean square as the rate)."""
    arms = list(stats)
    conversions = sum(a.conversions for a in arms)
    revenue = sum(a.revenue for a in arms)
    if conversions <= 0 or revenue <= 0:
        return ValuePrior()
    return ValuePrior(mean=revenue / conversions, rate=PRIOR_SHAPE * sum(a.revenue_sq for a in arms) / conversions)


def posterior(stats: ArmStats, reward: str, prior: ValuePrior = ValuePrior()) -> Posterior:
    """The posterior of an offer's reward given its counters."""
    successes = stats.clicks if reward == "CLICK" else stats.conversions
    successes = max(0, min(successes, stats.trials))
    alpha, beta = 1.0 + successes, 1.0 + stats.trials - successes
    if reward != "REVENUE":
        return Posterior("beta", alpha=alpha, beta=beta)
    n = successes
    xbar = stats.revenue / n if n else 0.0
    spread = max(0.0, stats.revenue_sq - n * xbar * xbar)  # sum of squared deviations (clamped: rounding)
    kappa = PRIOR_KAPPA + n
    return Posterior(
        "beta_normal_gamma", alpha=alpha, beta=beta,
        mean=(PRIOR_KAPPA * prior.mean + n * xbar) / kappa,
        kappa=kappa,
        shape=PRIOR_SHAPE + n / 2,
        rate=prior.rate + spread / 2 + PRIOR_KAPPA * n * (xbar - prior.mean) ** 2 / (2 * kappa),
    )


def sample(post: Posterior, rng: random.Random) -> float:
    """One draw of the mean reward from a posterior (for REVENUE: a rate times an order value)."""
    rate = rng.betavariate(post.alpha, post.beta)
    if post.kind == "beta":
        return rate
    precision = rng.gammavariate(post.shape, 1.0 / post.rate)
    return rate * rng.gauss(post.mean, 1.0 / math.sqrt(post.kappa * max(precision, 1e-300)))


def choose(offers: Sequence[str], stats: Mapping[str, ArmStats], config: BanditConfig,
           rng: random.Random) -> Choice:
    """Thompson sampling over the offers (decision ids, in evaluation order; at least one) with the floor."""
    draws = []
    prior = value_prior(stats.get(o, NO_STATS) for o in offers) if config.reward == "REVENUE" else ValuePrior()
    for decision_id in offers:
        arm = stats.get(decision_id, NO_STATS)
        post = posterior(arm, config.reward, prior)
        draws.append(ArmDraw(decision_id, arm, post, sample(post, rng)))
    if config.min_offer_share > 0 and rng.random() < min(1.0, len(offers) * config.min_offer_share):
        return Choice(offers[rng.randrange(len(offers))], True, tuple(draws))
    best = max(range(len(draws)), key=lambda i: draws[i].sampled)  # ties: the first in evaluation order
    return Choice(draws[best].decision_id, False, tuple(draws))


def in_holdout(config: BanditConfig, point_name: str, unified_id: str, rng: random.Random) -> bool:
    """Whether the individual gets the point's default: sticky by hash for a known individual, drawn otherwise."""
    if config.holdout_share <= 0:
        return False
    if not unified_id:
        return rng.random() < config.holdout_share
    bucket = gb_hash(f"bandit:{point_name}", unified_id, 2)
    return bucket is not None and bucket < config.holdout_share


def segment_of(config: BanditConfig, segments: Iterable[str]) -> str:
    """The first configured segment the individual is in (its posteriors are used), or "" for the global ones."""
    if not config.segments:
        return ""
    mine = set(segments)
    return next((s for s in config.segments if s in mine), "")


def validate_config(config: BanditConfig, v: Violations, path: str = "point.bandit") -> None:
    """One violation per bad field of a point's bandit configuration, named as the caller sent it."""
    if config.reward not in REWARDS:
        v.add(f"{path}.reward", "must be BANDIT_REWARD_CLICK, BANDIT_REWARD_CONVERSION or BANDIT_REWARD_REVENUE")
    if not (math.isfinite(config.min_offer_share) and 0.0 <= config.min_offer_share <= 0.5):
        v.add(f"{path}.min_offer_share", "must be between 0 and 0.5")
    if not (math.isfinite(config.holdout_share) and 0.0 <= config.holdout_share <= MAX_HOLDOUT_SHARE):
        v.add(f"{path}.holdout_share", f"must be between 0 and {MAX_HOLDOUT_SHARE}")
    if len(config.segments) > MAX_SEGMENTS:
        v.add(f"{path}.segments", f"must name at most {MAX_SEGMENTS} segments")
    seen: set[str] = set()
    for i, name in enumerate(config.segments[:MAX_SEGMENTS]):
        if not SEGMENT_NAME.match(name):
            v.add(f"{path}.segments[{i}]", "must be a segment name (^[a-z][a-z0-9_]{0,63}$)")
        elif name in seen:
            v.add(f"{path}.segments[{i}]", "is named twice")
        seen.add(name)
    if not timedelta(0) <= config.attribution_window <= MAX_WINDOW:
        v.add(f"{path}.attribution_window", "must be between 0 (7 days) and 90 days")


# ------------------------------------------------------------------------------------------ rewards


@dataclass(frozen=True)
class Served:
    """A personalization the bandit chose (a trial), as the credit planner needs it."""

    personalization_id: str
    unified_individual_id: str
    point_name: str
    log_time: datetime
    window: timedelta


@dataclass(frozen=True)
class NewOutcome:
    """A click or purchase seen for the first time."""

    unified_individual_id: str
    type: str  # CLICK | PURCHASE
    time: datetime
    revenue: float = 0.0
    personalization_id: str = ""


@dataclass
class Credit:
    """What new outcomes add to one personalization: click and purchase counts and revenue."""

    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0


def plan_credits(outcomes: Sequence[NewOutcome], served: Sequence[Served],
                 survivors: Mapping[str, str]) -> dict[str, Credit]:
    """Credit per bandit personalization id for the outcomes (survivors maps merged-away ids to their survivor)."""
    by_id = {s.personalization_id: s for s in served}
    by_individual: dict[str, dict[str, list[Served]]] = {}
    for s in sorted(served, key=lambda s: s.log_time):
        owner = survivors.get(s.unified_individual_id, s.unified_individual_id)
        by_individual.setdefault(owner, {}).setdefault(s.point_name, []).append(s)
    credits: dict[str, Credit] = {}
    for o in outcomes:
        if o.type == "CLICK" and o.personalization_id:
            if o.personalization_id in by_id:
                credits.setdefault(o.personalization_id, Credit()).clicks += 1
            continue
        owner = survivors.get(o.unified_individual_id, o.unified_individual_id)
        for rows in by_individual.get(owner, {}).values():
            last = None
            for s in rows:
                if s.log_time > o.time:
                    break
                last = s
            if last is None or o.time - last.log_time > last.window:
                continue
            credit = credits.setdefault(last.personalization_id, Credit())
            if o.type == "CLICK":
                credit.clicks += 1
            else:
                credit.conversions += 1
                credit.revenue += o.revenue
    return credits
