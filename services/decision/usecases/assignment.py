"""Use case: an individual's experiment cohorts, and keeping them sticky across merges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.decision import experiments as exp
from services.decision import rules
from services.decision.cache import HoldoutCache, PointCache
from services.decision.domain import LogEntry
from services.decision.experiments import Assignment
from services.decision.ports import Repository
from services.decision.usecases.common import MAX_LOG_ENTRIES, MAX_POINTS_PER_QUALIFY, new_id, utcnow
from services.decision.validation import point_not_found
from shared.errors import Violations
from shared.privacy import MAX_ID_LENGTH


class Assignments:
    """Assigns individuals to the cohorts of running experiments and records merges of assigned individuals."""

    def __init__(self, repo: Repository, cache: PointCache, holdouts: HoldoutCache, now=utcnow):
        self.repo = repo
        self.cache = cache
        self.holdouts = holdouts
        self.now = now

    async def assign(
        self, tenant: str, unified_id: str, point_names: Sequence[str], profile: Mapping[str, Any],
        context: Mapping[str, Any], record: bool = False, channel: str = "", request_id: str = "",
    ) -> tuple[list[Assignment], bool]:
        """The individual's assignment in each running experiment of the points (all points when none named), and
        whether they are in the tenant's holdout (then in no experiment). As in Qualify, an individual takes part in
        at most one experiment per point: the first, by layer and name, that places them in a cohort."""
        v = Violations()
        if not unified_id:
            v.add("unified_individual_id", "must name the unified individual to assign")
        if len(point_names) > MAX_POINTS_PER_QUALIFY:
            v.add("point_names", f"must name at most {MAX_POINTS_PER_QUALIFY} points")
        v.raise_if_any()
        names = list(dict.fromkeys(point_names)) or sorted(await self.repo.running_experiments(tenant, None))
        compiled = await self.cache.get_many(tenant, names)
        for i, name in enumerate(names):
            if compiled.get(name) is None:
                raise point_not_found(name, f"point_names[{i}]")
        if (await self.holdouts.get(tenant)).holds(unified_id):
            return [], True
        running = [c for n in names for c in compiled[n].experiments]  # type: ignore[union-attr]
        now = self.now()
        ctx = rules.activation(rules.merge_needs(c.targeting for c in running),
                               {"profile": profile, "context": context})
        assignments = [a for n in names
                       for a in exp.assign_on_point(compiled[n].experiments, unified_id, ctx, now)]  # type: ignore
        if record:
            entries = [LogEntry(personalization_id=new_id("exposure"), point_name=a.experiment.point_name,
                                request_id=request_id, decision_id=a.cohort.decision_id if a.cohort else "",
                                unified_individual_id=unified_id, channel=channel, log_time=now,
                                experiment_id=a.experiment.experiment_id,
                                cohort_id=a.cohort.cohort_id if a.cohort else "")
                       for a in assignments if a.in_experiment]
            if entries:
                await self.repo.insert_log(tenant, entries)
        return assignments, False

    async def reassign(self, tenant: str, from_ids: Sequence[str], to_id: str, unmerge: bool = False) -> list[str]:
        """Records a merge: the survivor keeps its cohorts; experiments where they saw different ones are flagged.
        A merge onto an individual merged away since goes on to its survivor. With unmerge, to_id was split back off
        the survivor from_ids[0] and is no longer its alias."""
        v = Violations()
        too_long = f"must be at most {MAX_ID_LENGTH} characters without NUL"
        if not to_id:
            v.add("to_unified_individual_id", "must name the surviving individual")
        elif len(to_id) > MAX_ID_LENGTH or "\x00" in to_id:
            v.add("to_unified_individual_id", too_long)
        if not from_ids:
            v.add("from_unified_individual_ids", "must name at least one merged individual")
        for i, f in enumerate(from_ids[:MAX_LOG_ENTRIES]):
            if not f:
                v.add(f"from_unified_individual_ids[{i}]", "must not be empty")
            elif len(f) > MAX_ID_LENGTH or "\x00" in f:
                v.add(f"from_unified_individual_ids[{i}]", too_long)
            elif f == to_id:
                v.add(f"from_unified_individual_ids[{i}]", "must differ from the survivor")
        if len(from_ids) > MAX_LOG_ENTRIES:
            v.add("from_unified_individual_ids", f"must name at most {MAX_LOG_ENTRIES} individuals")
        if unmerge and len(from_ids) > 1:
            v.add("from_unified_individual_ids", "an unmerge names the one survivor split from")
        v.raise_if_any()
        if unmerge:
            await self.repo.unmerge(tenant, to_id)
            return []
        # (experiment, uid, cohort), and the survivor the merge went to
        seen, to_id = await self.repo.merge(tenant, list(dict.fromkeys(from_ids)), to_id)
        cohorts: dict[str, set[str]] = {}
        for experiment_id, _, cohort in seen:
            cohorts.setdefault(experiment_id, set()).add(cohort)
        experiments = {e.experiment_id: e for e in await self.repo.experiments_by_id(tenant, sorted(cohorts))}
        conflicting = []
        for experiment_id, seen_cohorts in sorted(cohorts.items()):
            e = experiments.get(experiment_id)
            survivor = {exp.hashed_cohort(e, to_id)} - {""} if e is not None and e.state == "RUNNING" else set()
            if len(seen_cohorts | survivor) > 1:
                conflicting.append(experiment_id)
        if conflicting:
            await self.repo.add_conflicts(tenant, [(x, to_id) for x in conflicting])
        return conflicting
