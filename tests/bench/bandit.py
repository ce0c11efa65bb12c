"""Bench: next best promotion. Thompson sampling against uniform allocation over offers with true rates 2 %, 3 %, 5 %.

Runs the decision service's model (services/decision/bandit.py, the code Qualify calls) in-process: 20,000 decisions
per run, several seeds, the outcomes drawn from the same stream of luck for every policy. Rows: uniform allocation
(the baseline, measured in the same run), Thompson sampling with posteriors updated after every decision, with
posteriors 500 decisions late (replicas reading shared counters through a cache), with a 5 % exploration floor per
offer, and with the revenue reward (conversion rate times order value). Columns: the best offer's share of traffic,
cumulative expected regret (sum of best rate - rate served), regret against uniform, rewards per 1,000 decisions and
the cost of one choice. The last line is the summary (Thompson, updated after every decision, click reward).

    PYTHONPATH=.:protos .venv/bin/python tests/bench/bandit.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from services.decision import bandit
from tests.unit.decision.bandit_sim import simulate

RATES = {"two": 0.02, "three": 0.03, "five": 0.05}
DECISIONS = 20_000
SEEDS = (1, 2, 3, 4, 5)
POLICIES = (
    ("uniform", "uniform", bandit.BanditConfig(), 1),
    ("thompson", "thompson", bandit.BanditConfig(), 1),
    ("thompson, 500 late", "thompson", bandit.BanditConfig(), 500),
    ("thompson, floor 5%", "thompson", bandit.BanditConfig(min_offer_share=0.05), 1),
    ("thompson, revenue", "thompson", bandit.BanditConfig(reward="REVENUE"), 1),
)


def choice_cost_us(config: bandit.BanditConfig) -> float:
    """Microseconds per choose() over three offers with a few thousand trials each."""
    stats = {o: bandit.ArmStats(trials=5000, clicks=int(5000 * r), conversions=int(5000 * r),
                                revenue=250_000 * r, revenue_sq=15_000_000 * r) for o, r in RATES.items()}
    rng = random.Random(0)
    offers = list(RATES)
    started = time.perf_counter()
    for _ in range(20_000):
        bandit.choose(offers, stats, config, rng)
    return (time.perf_counter() - started) / 20_000 * 1e6


def main() -> None:
    rows = {}
    for label, policy, config, lag in POLICIES:
        runs = [simulate(RATES, DECISIONS, config, seed, policy=policy, update_every=lag) for seed in SEEDS]
        rows[label] = (
            statistics.fmean(r.served["five"] / DECISIONS for r in runs),
            statistics.fmean(r.regret for r in runs),
            statistics.fmean(r.rewards for r in runs) * 1000 / DECISIONS,
            choice_cost_us(config) if policy == "thompson" else float("nan"),
        )
    baseline = rows["uniform"][1]
    print(f"true rates {RATES}, {DECISIONS:,} decisions per run, mean of seeds {SEEDS}")
    print(f"{'policy':<20} {'best share':>10} {'regret':>8} {'x uniform':>10} {'rewards/1k':>11} {'us/choice':>10}")
    for label, (share, regret, rewards, cost) in rows.items():
        print(f"{label:<20} {share:10.3f} {regret:8.1f} {regret / baseline:10.3f} {rewards:11.2f} {cost:10.1f}")
    share, regret, _, _ = rows["thompson"]
    print(f"best_share={share:.3f} regret_ratio_vs_uniform={regret / baseline:.3f}")


if __name__ == "__main__":
    main()
