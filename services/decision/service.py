"""The decision service's use cases wired together over one repository and one compiled-point cache.

Each use case is a class of its own in `services/decision/usecases/`; this object only holds them.
"""

from __future__ import annotations

import time

from services.decision.cache import ArmCache, HoldoutCache, PointCache
from services.decision.ports import Repository
from services.decision.usecases.assignment import Assignments
from services.decision.usecases.common import utcnow
from services.decision.usecases.decision_log import DecisionLog
from services.decision.usecases.decisions import Decisions
from services.decision.usecases.experiment_lifecycle import Experiments
from services.decision.usecases.holdouts import Holdouts
from services.decision.usecases.outcomes import Attribution, ExperimentResults, Outcomes
from services.decision.usecases.points import Points
from services.decision.usecases.profile_schema import ProfileSchemas
from services.decision.usecases.qualify import Qualifier


class DecisionService:
    """Points, decisions, profile schema, experiments, holdout, qualification, the decision log and attribution."""

    def __init__(self, repo: Repository, *, cache_seconds: float = 2.0, clock=time.monotonic, now=utcnow):
        self.repo = repo
        self.cache = PointCache(repo, cache_seconds, clock)
        self.arms = ArmCache(repo, cache_seconds, clock)  # bandit points' offer counters
        self.holdout_cache = HoldoutCache(repo, cache_seconds, clock)
        self.now = now
        self.points = Points(repo, self.cache)
        self.decisions = Decisions(repo, self.cache)
        self.schemas = ProfileSchemas(repo)
        self.experiments = Experiments(repo, self.cache, now)
        self.assignments = Assignments(repo, self.cache, self.holdout_cache, now)
        self.holdouts = Holdouts(repo, self.holdout_cache, now)
        self.outcomes = Outcomes(repo)
        self.results = ExperimentResults(repo, self.cache, now)
        self.attribution = Attribution(repo, now)
        self.qualifier = Qualifier(self.cache, self.holdout_cache, now, self.arms)
        self.log = DecisionLog(repo)
