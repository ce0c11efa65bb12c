"""Use case: experiments' configuration and lifecycle (draft -> running -> stopped -> archived)."""

from __future__ import annotations

from dataclasses import replace

from services.decision import experiments as exp
from services.decision import rules
from services.decision.cache import PointCache
from services.decision.domain import AlreadyRunning, LayerTaken
from services.decision.experiments import Experiment
from services.decision.ports import Repository
from services.decision.schema import check_rule
from services.decision.usecases.common import load_experiment, new_id, utcnow, wrong_state
from services.decision.validation import point_not_found
from shared import paging
from shared.errors import FailedPrecondition, NotFound, Violations, quote


class Experiments:
    """Creates, lists, starts, stops and archives a tenant's experiments."""

    def __init__(self, repo: Repository, cache: PointCache, now=utcnow):
        self.repo = repo
        self.cache = cache
        self.now = now

    async def upsert(self, tenant: str, e: Experiment) -> Experiment:
        """Creates or replaces a draft experiment by name."""
        v = Violations()
        live: set[str] = set()
        if e.point_name:
            loaded = (await self.repo.load_points(tenant, [e.point_name])).get(e.point_name)
            if loaded is None or loaded[0].archived:
                raise point_not_found(e.point_name, "experiment.point_name")
            live = {d.decision_id for d in loaded[1] if not d.archived}
        exp.validate_experiment(e, live, v)
        try:
            check_rule(e.targeting_rule, await self.repo.get_schema(tenant))
        except rules.RuleError as error:
            if not any(path == "experiment.targeting_rule" for path, _ in v.items):
                v.add("experiment.targeting_rule", str(error))
        v.raise_if_any()
        current = await self.repo.get_experiment(tenant, e.name)
        if current is not None and current.state != "DRAFT":
            raise FailedPrecondition(f"experiment {quote(e.name)} is {current.state.lower()}; only drafts can change",
                                     reason="EXPERIMENT_NOT_DRAFT", metadata={"experiment": e.name})
        to_store = replace(e, experiment_id=current.experiment_id if current else new_id("exp"), state="DRAFT",
                           winner_cohort_id="", start_time=None, stop_time=None)
        return await self.repo.save_experiment(tenant, to_store)

    async def page(
        self, tenant: str, point_name: str, size: int, token: str, include_archived: bool
    ) -> tuple[list[Experiment], str]:
        """One page of experiments by name, and the next page token."""
        v = Violations()
        listing = f"experiments/{point_name}"
        limit = paging.page_size(size, 100, 1000, v)
        after = paging.decode_token(token, listing, (str,), v)
        v.raise_if_any()
        rows = await self.repo.list_experiments(tenant, point_name, after[0] if after else "", limit + 1,
                                                include_archived)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, paging.encode_token(listing, [rows[-1].name]) if more else ""

    async def start(self, tenant: str, name: str) -> Experiment:
        """draft -> running; cohorts must still serve live decisions. A point has at most one running experiment
        outside any layer, and the running experiments of one layer claim disjoint slices of it."""
        e = await load_experiment(self.repo, tenant, name)
        if e.state != "DRAFT":
            raise wrong_state(e, "start")
        loaded = (await self.repo.load_points(tenant, [e.point_name])).get(e.point_name)
        if loaded is None or loaded[0].archived:
            raise point_not_found(e.point_name, "experiment.point_name")
        v = Violations()
        exp.validate_experiment(e, {d.decision_id for d in loaded[1] if not d.archived}, v)
        v.raise_if_any()
        try:
            started = await self.repo.set_experiment_state(tenant, replace(e, state="RUNNING",
                                                                           start_time=self.now()))
        except AlreadyRunning:
            raise FailedPrecondition(f"another experiment outside any layer already runs on point {quote(e.point_name)}; "
                                     "give them layers to run both",
                                     reason="EXPERIMENT_ALREADY_RUNNING",
                                     metadata={"point": e.point_name, "experiment": e.name}) from None
        except LayerTaken as taken:
            raise FailedPrecondition(
                f"experiment {quote(taken.other)} already runs in layer {quote(e.layer)} on an overlapping slice "
                f"of [{e.layer_start_bps}, {e.layer_end_bps})", reason="LAYER_RANGE_TAKEN",
                metadata={"layer": e.layer, "experiment": e.name, "other": taken.other}) from None
        self.cache.invalidate(tenant, e.point_name)
        return started

    async def stop(self, tenant: str, name: str, winner: str = "") -> Experiment:
        """running -> stopped, optionally recording the winning cohort."""
        e = await load_experiment(self.repo, tenant, name)
        if e.state != "RUNNING":
            raise wrong_state(e, "stop")
        if winner and winner not in {c.cohort_id for c in e.cohorts}:
            raise NotFound(f"winner_cohort_id: experiment {quote(name)} has no cohort {quote(winner)}",
                           reason="COHORT_NOT_FOUND", metadata={"experiment": name, "cohort": winner})
        stopped = await self.repo.set_experiment_state(
            tenant, replace(e, state="STOPPED", winner_cohort_id=winner, stop_time=self.now()))
        self.cache.invalidate(tenant, e.point_name)
        return stopped

    async def archive(self, tenant: str, name: str) -> Experiment:
        """draft or stopped -> archived."""
        e = await load_experiment(self.repo, tenant, name)
        if e.state not in ("DRAFT", "STOPPED"):
            raise wrong_state(e, "archive")
        return await self.repo.set_experiment_state(tenant, replace(e, state="ARCHIVED"))
