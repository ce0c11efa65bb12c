"""An in-memory repository with the same methods as services/decision/postgres.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from services.decision import bandit
from services.decision.bandit import ArmStats
from services.decision.domain import (
    AlreadyRunning,
    Decision,
    Holdout,
    LayerTaken,
    LogEntry,
    LogGroup,
    NameTaken,
    Point,
)
from services.decision.experiments import Experiment, Exposure, Outcome
from services.decision.schema import ProfileSchema


class FakeRepository:
    def __init__(self) -> None:
        self.points: dict[tuple[str, str], Point] = {}
        self.decisions: dict[tuple[str, str], tuple[str, Decision]] = {}  # (tenant, id) -> (point_id, decision)
        self.log: dict[tuple[str, str], LogEntry] = {}
        self.schemas: dict[str, ProfileSchema] = {}
        self.experiments: dict[tuple[str, str], Experiment] = {}  # (tenant, name)
        self.aliases: dict[tuple[str, str], str] = {}  # (tenant, alias) -> survivor
        self.conflict_rows: set[tuple[str, str, str]] = set()  # (tenant, experiment, individual)
        self.outcomes: dict[tuple[str, str], Outcome] = {}
        self.arms: dict[tuple[str, str, str, str], ArmStats] = {}  # (tenant, point, segment, decision)
        self.credited: dict[tuple[str, str], bandit.Credit] = {}  # (tenant, personalization) -> what outcomes added
        self.holdouts: dict[str, Holdout] = {}
        self.queries = 0

    async def upsert_point(self, tenant: str, point: Point) -> Point:
        self.queries += 1
        existing = self.points.get((tenant, point.name))
        stored = replace(point, point_id=existing.point_id if existing else point.point_id, archived=False)
        self.points[(tenant, point.name)] = stored
        return stored

    async def list_points(self, tenant: str, after_name: str, limit: int, archived: bool = False) -> list[Point]:
        self.queries += 1
        names = sorted(n for (t, n), p in self.points.items()
                       if t == tenant and n > after_name and (archived or not p.archived))
        return [self.points[(tenant, n)] for n in names[:limit]]

    async def load_points(self, tenant: str, names: Sequence[str]) -> dict[str, tuple[Point, list[Decision]]]:
        self.queries += 1
        loaded = {}
        for name in names:
            point = self.points.get((tenant, name))
            if point is not None:
                loaded[name] = (point, [d for (t, _), (pid, d) in self.decisions.items()
                                        if t == tenant and pid == point.point_id])
        return loaded

    async def load_points_with_experiments(self, tenant: str, names: Sequence[str]):
        loaded = await self.load_points(tenant, names)
        running = self._running(tenant, list(loaded))
        return {name: (point, decisions, running.get(name, [])) for name, (point, decisions) in loaded.items()}

    async def get_decision(self, tenant: str, decision_id: str) -> Decision | None:
        self.queries += 1
        hit = self.decisions.get((tenant, decision_id))
        return hit[1] if hit else None

    async def save_decision(self, tenant: str, point_id: str, decision: Decision) -> Decision:
        self.queries += 1
        for (t, did), (pid, d) in self.decisions.items():
            if t == tenant and pid == point_id and d.name == decision.name and did != decision.decision_id:
                raise NameTaken(decision.name)
        self.decisions[(tenant, decision.decision_id)] = (point_id, decision)
        return decision

    async def list_decisions(self, tenant, point_id, after, limit) -> list[Decision]:
        self.queries += 1
        rows = sorted((d for (t, _), (pid, d) in self.decisions.items() if t == tenant and pid == point_id),
                      key=lambda d: (-d.priority, d.name))
        if after:
            rows = [d for d in rows if (-d.priority, d.name) > (-after[0], after[1])]
        return rows[:limit]

    async def insert_log(self, tenant: str, entries: Sequence[LogEntry], groups: Sequence[LogGroup] = ()) -> int:
        self.queries += 1
        written = 0
        grouped = [replace(g.shared, personalization_id=p, unified_individual_id=u, served_item_ids=tuple(i))
                   for g in groups
                   for p, u, i in zip(g.personalization_ids, g.unified_individual_ids, g.item_ids)]
        for e in [*entries, *grouped]:
            if (tenant, e.personalization_id) not in self.log:
                conflict = bool(e.experiment_id) and (tenant, e.experiment_id, e.unified_individual_id) in \
                    self.conflict_rows
                self.log[(tenant, e.personalization_id)] = replace(e, exposure_conflict=conflict)
                written += 1
                if e.bandit_trial and e.decision_id:
                    key = (tenant, e.point_name, e.bandit_segment, e.decision_id)
                    arm = self.arms.get(key, ArmStats())
                    self.arms[key] = replace(arm, trials=arm.trials + 1)
        return written

    async def arm_stats(self, tenant: str, point_names) -> dict[str, dict[tuple[str, str], ArmStats]]:
        self.queries += 1
        return {name: {(seg, did): arm for (t, p, seg, did), arm in self.arms.items() if t == tenant and p == name}
                for name in point_names}

    async def list_log(self, tenant: str, individual: str, after: tuple[datetime, str] | None, limit: int):
        self.queries += 1
        rows = sorted((e for (t, _), e in self.log.items()
                       if t == tenant and (not individual or e.unified_individual_id == individual)),
                      key=lambda e: (e.log_time, e.personalization_id), reverse=True)
        if after:
            rows = [e for e in rows if (e.log_time, e.personalization_id) < after]
        return rows[:limit]

    async def archive_point(self, tenant: str, name: str) -> Point | None:
        self.queries += 1
        point = self.points.get((tenant, name))
        if point is None:
            return None
        self.points[(tenant, name)] = replace(point, archived=True)
        return self.points[(tenant, name)]

    async def archive_decision(self, tenant: str, decision_id: str) -> Decision | None:
        self.queries += 1
        hit = self.decisions.get((tenant, decision_id))
        if hit is None:
            return None
        self.decisions[(tenant, decision_id)] = (hit[0], replace(hit[1], archived=True))
        return self.decisions[(tenant, decision_id)][1]

    async def get_schema(self, tenant: str) -> ProfileSchema | None:
        self.queries += 1
        return self.schemas.get(tenant)

    async def save_schema(self, tenant: str, schema: ProfileSchema) -> None:
        self.queries += 1
        self.schemas[tenant] = schema

    async def all_rules(self, tenant: str) -> list[tuple[str, str]]:
        self.queries += 1
        out = [(f"decision {d.decision_id}", d.rule) for (t, _), (_, d) in self.decisions.items()
               if t == tenant and not d.archived and not d.fallback and d.rule]
        return out + [(f"experiment {e.name}", e.targeting_rule) for (t, _), e in self.experiments.items()
                      if t == tenant and e.state != "ARCHIVED" and e.targeting_rule]

    async def get_experiment(self, tenant: str, name: str) -> Experiment | None:
        self.queries += 1
        return self.experiments.get((tenant, name))

    async def save_experiment(self, tenant: str, experiment: Experiment) -> Experiment:
        self.queries += 1
        self.experiments[(tenant, experiment.name)] = experiment
        return experiment

    async def list_experiments(self, tenant, point_name, after_name, limit, archived) -> list[Experiment]:
        self.queries += 1
        rows = sorted((e for (t, n), e in self.experiments.items() if t == tenant and n > after_name
                       and (not point_name or e.point_name == point_name) and (archived or e.state != "ARCHIVED")),
                      key=lambda e: e.name)
        return rows[:limit]

    async def set_experiment_state(self, tenant: str, experiment: Experiment) -> Experiment:
        self.queries += 1
        others = [e for (t, _), e in self.experiments.items()
                  if t == tenant and e.state == "RUNNING" and e.name != experiment.name]
        if experiment.state == "RUNNING" and not experiment.layer and any(
                not e.layer and e.point_name == experiment.point_name for e in others):
            raise AlreadyRunning(experiment.point_name)
        if experiment.state == "RUNNING" and experiment.layer:
            for e in others:
                if experiment.overlaps(e):
                    raise LayerTaken(e.name)
        self.experiments[(tenant, experiment.name)] = experiment
        return experiment

    async def running_experiments(self, tenant, point_names) -> dict[str, list[Experiment]]:
        self.queries += 1
        return self._running(tenant, point_names)

    def _running(self, tenant, point_names) -> dict[str, list[Experiment]]:
        running: dict[str, list[Experiment]] = {}
        for (t, _), e in sorted(self.experiments.items()):
            if t == tenant and e.state == "RUNNING" and (point_names is None or e.point_name in point_names):
                running.setdefault(e.point_name, []).append(e)
        return running

    async def merge(self, tenant: str, from_ids: Sequence[str], to_id: str
                    ) -> tuple[list[tuple[str, str, str]], str]:
        self.queries += 1
        to_id = self.aliases.get((tenant, to_id), to_id)
        from_ids = [f for f in from_ids if f != to_id]
        for key, survivor in list(self.aliases.items()):
            if key[0] == tenant and survivor in from_ids:
                self.aliases[key] = to_id
        for f in from_ids:
            self.aliases[(tenant, f)] = to_id
        for t, x, u in list(self.conflict_rows):
            if t == tenant and u in from_ids:
                self.conflict_rows.add((t, x, to_id))
        members = {to_id} | {a for (t, a), s in self.aliases.items() if t == tenant and s == to_id}
        return sorted({(e.experiment_id, e.unified_individual_id, e.cohort_id) for (t, _), e in self.log.items()
                       if t == tenant and e.experiment_id and e.cohort_id and e.unified_individual_id in members}), to_id

    async def unmerge(self, tenant: str, restored_id: str) -> None:
        self.queries += 1
        self.aliases.pop((tenant, restored_id), None)

    async def add_conflicts(self, tenant: str, pairs) -> None:
        self.queries += 1
        self.conflict_rows |= {(tenant, x, u) for x, u in pairs}

    async def experiments_by_id(self, tenant: str, ids) -> list[Experiment]:
        self.queries += 1
        return [e for (t, _), e in self.experiments.items() if t == tenant and e.experiment_id in ids]

    def _exposure(self, e: LogEntry) -> Exposure:
        return Exposure(e.personalization_id, e.unified_individual_id, e.log_time, e.point_name, e.decision_id,
                        e.experiment_id, e.cohort_id, tuple(e.item_ids), e.exposure_conflict)

    async def experiment_exposures(self, tenant: str, experiment_id: str) -> list[Exposure]:
        self.queries += 1
        return [self._exposure(e) for (t, _), e in self.log.items()
                if t == tenant and e.experiment_id == experiment_id and e.cohort_id]

    async def conflicts(self, tenant: str, experiment_id: str) -> set[str]:
        self.queries += 1
        return {u for t, x, u in self.conflict_rows if t == tenant and x == experiment_id}

    async def survivors(self, tenant: str, ids) -> dict[str, str]:
        self.queries += 1
        return {a: s for (t, a), s in self.aliases.items() if t == tenant and (a in ids or s in ids)}

    async def insert_outcomes(self, tenant: str, outcomes) -> int:
        self.queries += 1
        new = list({o.outcome_id: o for o in reversed(outcomes)
                    if (tenant, o.outcome_id) not in self.outcomes}.values())[::-1]  # the first of each id
        for o in new:
            self.outcomes[(tenant, o.outcome_id)] = o
        trials = [e for (t, _), e in self.log.items() if t == tenant and e.bandit_trial and e.decision_id]
        windows = {p.name: p.bandit.window for (t, _), p in self.points.items() if t == tenant and p.bandit}
        credits = bandit.plan_credits(
            [bandit.NewOutcome(o.unified_individual_id, o.type, o.time, o.revenue, o.personalization_id) for o in new],
            [bandit.Served(e.personalization_id, e.unified_individual_id, e.point_name, e.log_time,
                           windows.get(e.point_name, bandit.DEFAULT_WINDOW)) for e in trials],
            {a: s for (t, a), s in self.aliases.items() if t == tenant})
        for pid, c in credits.items():
            e = self.log[(tenant, pid)]
            before = self.credited.get((tenant, pid), bandit.Credit())
            after = bandit.Credit(before.clicks + c.clicks, before.conversions + c.conversions,
                                  before.revenue + c.revenue)
            self.credited[(tenant, pid)] = after
            key = (tenant, e.point_name, e.bandit_segment, e.decision_id)
            arm = self.arms.get(key, ArmStats())
            self.arms[key] = replace(arm, clicks=arm.clicks + (before.clicks == 0 < c.clicks),
                                     conversions=arm.conversions + (before.conversions == 0 < c.conversions),
                                     revenue=arm.revenue + c.revenue,
                                     revenue_sq=arm.revenue_sq + after.revenue ** 2 - before.revenue ** 2)
        return len({o.outcome_id for o in new})

    async def outcomes_of(self, tenant: str, ids, since: datetime) -> list[Outcome]:
        self.queries += 1
        return [o for (t, _), o in self.outcomes.items()
                if t == tenant and o.unified_individual_id in ids and o.time >= since]

    async def outcomes_between(self, tenant: str, start: datetime, end: datetime) -> list[Outcome]:
        self.queries += 1
        return [o for (t, _), o in self.outcomes.items() if t == tenant and start <= o.time < end]

    async def exposures_of(self, tenant: str, ids, start: datetime, end: datetime, point_name: str):
        self.queries += 1
        return [self._exposure(e) for (t, _), e in self.log.items() if t == tenant
                and e.unified_individual_id in ids and start <= e.log_time < end
                and (not point_name or e.point_name == point_name)]

    async def get_holdout(self, tenant: str) -> Holdout:
        self.queries += 1
        return self.holdouts.get(tenant, Holdout())

    async def save_holdout(self, tenant: str, holdout: Holdout) -> Holdout:
        self.queries += 1
        self.holdouts[tenant] = holdout
        return holdout

    async def holdout_exposures(self, tenant: str, start: datetime, end: datetime) -> list[Exposure]:
        self.queries += 1
        return [replace(self._exposure(e), cohort_id="holdout" if e.holdout else "personalized",
                        experiment_id="", exposure_conflict=False)
                for (t, _), e in self.log.items()
                if t == tenant and e.unified_individual_id and start <= e.log_time < end]
