"""A seeded simulation of a bandit point on the model alone (no I/O): offers with true rates, Bernoulli rewards.

Shared by the simulation test (tests/unit/decision/test_bandit.py) and the bench (tests/bench/bandit.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from services.decision import bandit


@dataclass(frozen=True)
class Run:
    """Where a simulated run sent its traffic and what it cost."""

    served: dict[str, int]  # decisions per offer
    regret: float  # cumulative expected regret: sum over decisions of (best rate - rate of the offer served)
    rewards: int


def simulate(rates: dict[str, float], decisions: int, config: bandit.BanditConfig, seed: int, *,
             policy: str = "thompson", update_every: int = 1) -> Run:
    """Serves `decisions` times with Thompson sampling (or "uniform"), rewarding an offer with its true rate (and,
    for REVENUE, an order value drawn from the same law for every offer).

    update_every > 1 makes the posteriors lag, as replicas reading shared counters through a cache do."""
    rng = random.Random(seed)
    world = random.Random(seed + 1)  # the outcomes: the same stream of luck for every policy
    offers = list(rates)
    best = max(rates.values())
    stats = {o: bandit.ArmStats() for o in offers}
    seen = dict(stats)
    served = dict.fromkeys(offers, 0)
    regret = 0.0
    rewards = 0
    for n in range(decisions):
        if n % update_every == 0:
            seen = dict(stats)
        if policy == "uniform":
            chosen = offers[rng.randrange(len(offers))]
        else:
            chosen = bandit.choose(offers, seen, config, rng).decision_id
        served[chosen] += 1
        regret += best - rates[chosen]
        hit = world.random() < rates[chosen]
        value = 50.0 * world.lognormvariate(0.0, 0.5) if hit else 0.0  # order values vary; same law for every offer
        rewards += hit
        s = stats[chosen]
        if config.reward == "CLICK":
            stats[chosen] = replace(s, trials=s.trials + 1, clicks=s.clicks + hit)
        else:
            stats[chosen] = replace(s, trials=s.trials + 1, conversions=s.conversions + hit,
                                    revenue=s.revenue + value, revenue_sq=s.revenue_sq + value * value)
    return Run(served, regret, rewards)
