"""Use cases: recording outcomes (clicks, purchases), experiment results over them, and attribution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from services.decision import experiments as exp
from services.decision.cache import PointCache
from services.decision.experiments import Experiment, Outcome
from services.decision.ports import Repository
from services.decision.usecases.common import MAX_LOG_ENTRIES, load_experiment, utcnow
from services.decision.validation import validate_outcomes
from shared.errors import Violations


class Outcomes:
    """Stores clicks and purchases."""

    def __init__(self, repo: Repository):
        self.repo = repo

    async def record(self, tenant: str, outcomes: Sequence[Outcome]) -> int:
        """Stores clicks and purchases once each (by outcome id) and, with them, the credit they bring to the
        bandit trials they reward (services/decision/bandit.py: plan_credits)."""
        validate_outcomes(outcomes, MAX_LOG_ENTRIES)
        return await self.repo.insert_outcomes(tenant, outcomes) if outcomes else 0


class ExperimentResults:
    """Measures an experiment's cohorts and, under automatic selection, stops it with its winner."""

    def __init__(self, repo: Repository, cache: PointCache, now=utcnow):
        self.repo = repo
        self.cache = cache
        self.now = now

    async def compute(self, tenant: str, name: str) -> tuple[Experiment, exp.Results]:
        """Per-cohort results; an automatic experiment that meets its thresholds (or expires) is stopped."""
        e = await load_experiment(self.repo, tenant, name)
        if e.state == "DRAFT":
            return e, exp.compute_results(e, [], [], {}, set(), self.now())
        exposures = await self.repo.experiment_exposures(tenant, e.experiment_id)
        ids = sorted({x.unified_individual_id for x in exposures})
        survivors = await self.repo.survivors(tenant, ids)
        everyone = sorted(set(ids) | set(survivors) | set(survivors.values()))
        since = min((x.log_time for x in exposures), default=self.now())
        outcomes = await self.repo.outcomes_of(tenant, everyone, since) if exposures else []
        conflicts = await self.repo.conflicts(tenant, e.experiment_id)
        now = self.now()
        results = exp.compute_results(e, exposures, outcomes, survivors, conflicts, now)
        if e.state == "RUNNING" and (
            (e.winner_selection == "AUTOMATIC" and results.leading_cohort_id) or e.expired(now)
        ):
            winner = results.leading_cohort_id if e.winner_selection == "AUTOMATIC" else ""
            e = await self.repo.set_experiment_state(
                tenant, replace(e, state="STOPPED", winner_cohort_id=winner, stop_time=now))
            self.cache.invalidate(tenant, e.point_name)
        return e, results


class Attribution:
    """Credits outcomes to the personalizations served before them."""

    def __init__(self, repo: Repository, now=utcnow):
        self.repo = repo
        self.now = now

    async def credit(
        self, tenant: str, start: datetime | None, end: datetime | None, window: timedelta, point_name: str
    ) -> dict[tuple[str, str, str, str], exp.Credit]:
        """Credit per (model, point, decision, item) for outcomes in [start, end)."""
        now = self.now()
        end = end or now
        start = start or end - timedelta(days=30)
        window = window or exp.DEFAULT_WINDOW
        v = Violations()
        if start >= end:
            v.add("start_time", "must be before end_time")
        if not timedelta(0) <= window <= exp.MAX_WINDOW:
            v.add("window", "must be between 0 (7 days) and 90 days")
        v.raise_if_any()
        outcomes = await self.repo.outcomes_between(tenant, start, end)
        if not outcomes:
            return {}
        ids = sorted({o.unified_individual_id for o in outcomes})
        survivors = await self.repo.survivors(tenant, ids)
        everyone = sorted(set(ids) | set(survivors) | set(survivors.values()))
        exposures = await self.repo.exposures_of(tenant, everyone, start - window, end, point_name)
        return exp.attribute(exposures, outcomes, survivors, window)
