"""Use case: the tenant's holdout (a share of individuals who get only defaults) and its measurement."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from services.decision import experiments as exp
from services.decision.cache import HoldoutCache
from services.decision.domain import Holdout
from services.decision.experiments import Cohort, Experiment
from services.decision.ports import Repository
from services.decision.usecases.common import utcnow
from shared.errors import Violations

MAX_HOLDOUT_BPS = 5_000  # holding out more than half the population would measure the holdout, not personalization
MAX_RESULTS_WINDOW = timedelta(days=366)


class Holdouts:
    """Sets, reads and measures the tenant's holdout."""

    def __init__(self, repo: Repository, holdouts: HoldoutCache, now=utcnow):
        self.repo = repo
        self.holdouts = holdouts
        self.now = now

    async def set(self, tenant: str, holdout: Holdout) -> Holdout:
        """Stores the holdout; raising the fraction keeps everyone already held out (the hash is the same)."""
        v = Violations()
        if not 0 <= holdout.fraction_bps <= MAX_HOLDOUT_BPS:
            v.add("holdout.fraction_bps", f"must be between 0 and {MAX_HOLDOUT_BPS:,} basis points")
        if len(holdout.seed) > 256:
            v.add("holdout.seed", "must be at most 256 characters")
        v.raise_if_any()
        stored = await self.repo.save_holdout(tenant, replace(holdout, update_time=self.now()))
        self.holdouts.invalidate(tenant)
        return stored

    async def get(self, tenant: str) -> Holdout:
        """The tenant's holdout (fraction 0 when none was set)."""
        return await self.repo.get_holdout(tenant)

    async def results(
        self, tenant: str, start: datetime | None, end: datetime | None, metric: str, window: timedelta
    ) -> tuple[Holdout, exp.Results]:
        """The holdout (baseline) against everyone else served in [start, end), as experiment results are computed:
        participants, conversions within the window after their last row, revenue, chance to beat the holdout."""
        end = end or self.now()
        start = start or end - timedelta(days=30)
        metric = metric or "CONVERSION"
        v = Violations()
        if start >= end:
            v.add("start_time", "must be before end_time")
        elif end - start > MAX_RESULTS_WINDOW:
            v.add("end_time", f"must be at most {MAX_RESULTS_WINDOW.days} days after start_time")
        if metric not in exp.METRICS:
            v.add("metric", "must be METRIC_CLICK_THROUGH, _CONVERSION or _REVENUE_PER_INDIVIDUAL")
        if not timedelta(0) <= window <= exp.MAX_WINDOW:
            v.add("attribution_window", "must be between 0 (7 days) and 90 days")
        v.raise_if_any()
        holdout = await self.repo.get_holdout(tenant)
        exposures = await self.repo.holdout_exposures(tenant, start, end)
        ids = sorted({x.unified_individual_id for x in exposures})
        survivors = await self.repo.survivors(tenant, ids)
        everyone = sorted(set(ids) | set(survivors) | set(survivors.values()))
        since = min((x.log_time for x in exposures), default=start)
        outcomes = await self.repo.outcomes_of(tenant, everyone, since) if exposures else []
        share = holdout.fraction_bps
        # The two groups as the cohorts of an experiment: the same attribution, statistics and sample-ratio check.
        groups = Experiment("", "holdout", "", (Cohort("holdout", max(share, 1), control=True, fall_through=True),
                                                 Cohort("personalized", max(10_000 - share, 1))),
                            primary_metric=metric, secondary_metrics=exp.METRICS, attribution_window=window)
        results = exp.compute_results(groups, exposures, outcomes, survivors, set(), self.now())
        return holdout, results
