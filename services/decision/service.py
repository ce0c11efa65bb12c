"""Use cases of the decision service: points, decisions, qualification and the decision log. No grpc, no SQL."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from services.decision import experiments as exp
from services.decision import rules
from services.decision.cache import CompiledPoint, PointCache
from services.decision.domain import (
    AlreadyRunning,
    Decision,
    Evaluation,
    LogEntry,
    LogStats,
    NameTaken,
    Point,
    Qualification,
    Repository,
)
from services.decision.experiments import Assignment, Experiment, Outcome
from services.decision.schema import ProfileSchema, check_rule, validate_schema
from services.decision.validation import (
    validate_outcomes,
    MAX_TEXT,
    decision_not_found,
    decode_token,
    encode_token,
    experiment_not_found,
    page_size,
    point_not_found,
    raise_violation,
    validate_content,
    validate_decision,
    validate_point,
)
from shared.errors import AlreadyExists, FailedPrecondition, NotFound, Violations, quote
from shared.privacy import MAX_ID_LENGTH

MAX_STATS_WINDOW = timedelta(days=366)  # GetDecisionLogStats: at most a year at a time

DEFAULT_COUNT = 12
MAX_POINTS_PER_QUALIFY = 50
MAX_INDIVIDUALS_PER_BATCH = 1000
BATCH_YIELD_EVERY = 250  # individuals qualified between yields to the event loop (a few ms of work)
MAX_LOG_ENTRIES = 1000


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _check_selections(selections: Sequence[tuple[str, str]], v: Violations, name_path) -> None:
    if not selections:
        v.add("points", "must name at least one point")
    elif len(selections) > MAX_POINTS_PER_QUALIFY:
        v.add("points", f"must name at most {MAX_POINTS_PER_QUALIFY} points")
    for i, (name, _) in enumerate(selections):
        if not name:
            v.add(name_path(i), "must name a point")


def _has_experiment(entries: Sequence[CompiledPoint], forced: Sequence[str]) -> bool:
    return any(entry.experiment is not None and not f for entry, f in zip(entries, forced))


def _needs(entries: Sequence[CompiledPoint], forced: Sequence[str], *, with_experiments: bool):
    """What the rules to evaluate read: the decisions of unforced points, plus experiment targeting if any."""
    needs = rules.merge_needs(rule for entry, f in zip(entries, forced) if not f for _, rule in entry.ordered)
    if with_experiments:
        targeting = [e.experiment.targeting for e, f in zip(entries, forced) if not f and e.experiment is not None]
        if targeting:
            needs = rules.merge_needs([rules.CompiledRule("", None, needs)] + targeting)
    return needs


def _needs_consent(entries: Sequence[CompiledPoint]) -> bool:
    return any(entry.point.consent_purpose or any(d.consent_purpose for d in entry.by_id.values())
               for entry in entries)


def granted_purposes(profile: Mapping[str, Any]) -> frozenset[str]:
    """The consent purposes a profile has granted (`consents` maps purpose -> true when granted)."""
    consents = profile.get("consents") if profile else None
    if not isinstance(consents, Mapping):
        return frozenset()
    return frozenset(purpose for purpose, granted in consents.items() if granted is True)


def _fallback(entry: CompiledPoint, granted: frozenset[str] | None) -> tuple[Decision | None, tuple[str, ...]]:
    """The highest-priority fallback whose consent purpose is granted, and the purposes that skipped others."""
    if granted is None:
        return entry.fallback, ()
    missing = []
    for decision in entry.fallbacks:
        if not decision.consent_purpose or decision.consent_purpose in granted:
            return decision, tuple(missing)
        missing.append(decision.consent_purpose)
    return None, tuple(missing)


def _fallbacks_only(entries: Sequence[CompiledPoint], granted: frozenset[str] | None) -> list[Qualification]:
    """Every point's fallback (over quota), consent permitting; no experiment, no rule."""
    results = []
    for entry in entries:
        purpose = entry.point.consent_purpose
        if purpose and granted is not None and purpose not in granted:
            results.append(Qualification(entry.point, None, [], missing_consents=(purpose,)))
        else:
            fallback, missing = _fallback(entry, granted)
            results.append(Qualification(entry.point, fallback, [], missing_consents=missing))
    return results


def _qualify_one(
    entries: Sequence[CompiledPoint], forced: Sequence[str], ctx, unified_id: str, now: datetime | None,
    granted: frozenset[str] | None = None,
) -> list[Qualification]:
    """One individual's qualifications: experiment first, then rules by priority, then the fallback.

    granted (None: no point or decision asks for consent) is the set of consent purposes the individual granted:
    a point whose purpose is missing serves nothing, and a decision whose purpose is missing is skipped (its
    evaluation says why). A point that requires authentication serves an unknown individual (no unified id) only
    its fallback, with no experiment and no rule.
    """
    results = []
    for entry, forced_id in zip(entries, forced):
        if forced_id:
            results.append(Qualification(entry.point, entry.by_id[forced_id], []))
            continue
        purpose = entry.point.consent_purpose
        if purpose and granted is not None and purpose not in granted:
            results.append(Qualification(entry.point, None, [], missing_consents=(purpose,)))
            continue
        if entry.point.requires_authentication and not unified_id:
            fallback, missing = _fallback(entry, granted)
            results.append(Qualification(entry.point, fallback, [], missing_consents=missing,
                                         authentication_required=True))
            continue
        missing_consents: list[str] = []
        assignment = None
        if unified_id and entry.experiment is not None and not entry.experiment.experiment.expired(now):
            assignment = entry.experiment.assign(unified_id, ctx)
            cohort = assignment.cohort
            if cohort is not None and not cohort.fall_through:
                decision = entry.by_id.get(cohort.decision_id)
                if decision is not None and granted is not None and decision.consent_purpose \
                        and decision.consent_purpose not in granted:
                    # Not exposed to a cohort whose decision needs a consent the individual has not given.
                    missing_consents.append(decision.consent_purpose)
                    assignment = None
                elif decision is not None:
                    results.append(Qualification(entry.point, decision, [], assignment))
                    continue
        winner = None
        evaluations = []
        for decision, rule in entry.ordered:
            if granted is not None and decision.consent_purpose and decision.consent_purpose not in granted:
                missing_consents.append(decision.consent_purpose)
                evaluations.append(Evaluation(decision.decision_id, decision.name, False,
                                              f"consent {quote(decision.consent_purpose)} not granted"))
                continue
            matched, error = rules.evaluate(rule, ctx)
            evaluations.append(Evaluation(decision.decision_id, decision.name, matched, error))
            if matched:
                winner = decision
                break
        if winner is None:
            winner, missing = _fallback(entry, granted)
            missing_consents.extend(missing)
        results.append(Qualification(entry.point, winner, evaluations, assignment,
                                     missing_consents=tuple(dict.fromkeys(missing_consents))))
    return results


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DecisionService:
    """Points, decisions, experiments, qualification, the decision log and attribution of every tenant."""

    def __init__(self, repo: Repository, *, cache_seconds: float = 2.0, clock=time.monotonic, now=_utcnow):
        self.repo = repo
        self.cache = PointCache(repo, cache_seconds, clock)
        self.now = now

    # ------------------------------------------------------------------------------------------ points

    async def upsert_point(self, tenant: str, point: Point) -> Point:
        """Creates or replaces a point by name (restoring it if archived); its id stays the same across upserts."""
        v = Violations()
        validate_point(point, v)
        v.raise_if_any()
        existing = (await self.repo.load_points(tenant, [point.name])).get(point.name)
        live = [d for d in existing[1] if not d.archived] if existing is not None else []
        if existing is not None and live:
            old = existing[0]
            if old.type != point.type:
                raise FailedPrecondition(
                    f"point {quote(point.name)} has {len(live)} decisions of type {old.type}; "
                    "archive them before changing the point's type",
                    reason="POINT_HAS_DECISIONS",
                    metadata={"point": point.name},
                )
            broken = []
            for d in live:
                if d.content is not None:
                    check = Violations()
                    validate_content(d.content, point.template, check, "content")
                    broken += [f"decision {quote(d.name)} {f}: {m}" for f, m in check.items]
            if broken:
                raise FailedPrecondition(
                    "the new template does not fit existing decisions: " + "; ".join(broken),
                    reason="TEMPLATE_BREAKS_DECISIONS",
                    metadata={"point": point.name},
                )
        stored = await self.repo.upsert_point(tenant, replace(point, point_id=_new_id("pt"), archived=False))
        self.cache.invalidate(tenant, point.name)
        return stored

    async def list_points(
        self, tenant: str, size: int, token: str, include_archived: bool = False
    ) -> tuple[list[Point], str]:
        """One page of points by name, and the next page token."""
        v = Violations()
        limit = page_size(size, v)
        after = decode_token(token, (str,), v)
        v.raise_if_any()
        points = await self.repo.list_points(tenant, after[0] if after else "", limit + 1, include_archived)
        more = len(points) > limit
        points = points[:limit]
        return points, encode_token([points[-1].name]) if more else ""

    async def archive_point(self, tenant: str, name: str) -> Point:
        """Archives a point: Qualify refuses it afterwards; upserting it restores it."""
        if not name:
            raise_violation("name", "must name a point")
        if (await self.repo.running_experiments(tenant, [name])).get(name):
            raise FailedPrecondition(f"point {quote(name)} has a running experiment; stop it first",
                                     reason="EXPERIMENT_RUNNING", metadata={"point": name})
        point = await self.repo.archive_point(tenant, name)
        if point is None:
            raise point_not_found(name, "name")
        self.cache.invalidate(tenant, name)
        return point

    # ------------------------------------------------------------------------------------------ decisions

    async def upsert_decision(self, tenant: str, decision: Decision) -> Decision:
        """Creates or replaces a decision (by id, or by name on its point) after checking it fully."""
        v = Violations()
        point = None
        if not decision.point_name:
            v.add("decision.point_name", "must name a point")
        else:
            loaded = (await self.repo.load_points(tenant, [decision.point_name])).get(decision.point_name)
            if loaded is None:
                raise point_not_found(decision.point_name, "decision.point_name")
            point, siblings = loaded
        validate_decision(decision, point, v, await self.repo.get_schema(tenant))
        v.raise_if_any()
        assert point is not None
        if decision.decision_id:
            current = await self.repo.get_decision(tenant, decision.decision_id)
            if current is None or current.point_name != point.name:
                raise decision_not_found(point.name, decision.decision_id, "decision.decision_id")
            decision_id = decision.decision_id
        else:
            same_name = [d for d in siblings if d.name == decision.name]
            decision_id = same_name[0].decision_id if same_name else _new_id("dec")
        count = decision.count or (DEFAULT_COUNT if point.type == "RECOMMENDATIONS" else 0)
        to_store = replace(decision, decision_id=decision_id, count=count, archived=False)
        try:
            stored = await self.repo.save_decision(tenant, point.point_id, to_store)
        except NameTaken:
            raise AlreadyExists(
                f"decision.name: point {quote(point.name)} already has a decision named {quote(decision.name)}",
                reason="DECISION_NAME_TAKEN",
                metadata={"point": point.name, "name": decision.name},
            ) from None
        self.cache.invalidate(tenant, point.name)
        return stored

    async def list_decisions(
        self, tenant: str, point_name: str, size: int, token: str, include_archived: bool = False
    ) -> tuple[list[Decision], str]:
        """One page of a point's decisions by descending priority (ties by name), and the next page token."""
        v = Violations()
        if not point_name:
            v.add("point_name", "must name a point")
        limit = page_size(size, v)
        after = decode_token(token, (int, str), v)
        v.raise_if_any()
        loaded = (await self.repo.load_points(tenant, [point_name])).get(point_name)
        if loaded is None:
            raise point_not_found(point_name, "point_name")
        rows = await self.repo.list_decisions(tenant, loaded[0].point_id, tuple(after) if after else None, limit + 1)
        if not include_archived:
            rows = [d for d in rows if not d.archived]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_token([rows[-1].priority, rows[-1].name]) if more else ""

    async def archive_decision(self, tenant: str, decision_id: str) -> Decision:
        """Archives a decision: it is no longer evaluated or forced; upserting it restores it."""
        if not decision_id:
            raise_violation("decision_id", "must name a decision")
        current = await self.repo.get_decision(tenant, decision_id)
        if current is None:
            raise NotFound(f"decision_id: decision {quote(decision_id)} does not exist", reason="DECISION_NOT_FOUND",
                           metadata={"decision_id": decision_id})
        running = (await self.repo.running_experiments(tenant, [current.point_name])).get(current.point_name)
        if running and any(c.decision_id == decision_id for c in running.cohorts):
            raise FailedPrecondition(
                f"decision {quote(decision_id)} is served by a cohort of running experiment {quote(running.name)}",
                reason="EXPERIMENT_RUNNING", metadata={"experiment": running.name, "decision_id": decision_id})
        archived = await self.repo.archive_decision(tenant, decision_id)
        assert archived is not None
        self.cache.invalidate(tenant, current.point_name)
        return archived

    # ------------------------------------------------------------------------------------------ profile schema

    async def declare_schema(self, tenant: str, schema: ProfileSchema) -> ProfileSchema:
        """Replaces the tenant's profile schema after checking that every saved rule still fits it."""
        v = Violations()
        validate_schema({
            "attributes": list(schema.attributes),
            "insights": [(n, None) for n in schema.insights],
            "segments": [(n, None) for n in schema.segments],
            "affinities": [(n, None) for n in schema.affinities],
            "consents": [(n, None) for n in schema.consents],
            "context_attributes": list(schema.context_attributes),
        }, v)
        v.raise_if_any()
        broken = []
        for label, rule in await self.repo.all_rules(tenant):
            try:
                check_rule(rule, schema)
            except rules.RuleError as error:
                broken.append(f"{label}: {error}")
        if broken:
            raise FailedPrecondition("the schema does not fit saved rules: " + " | ".join(broken[:20]),
                                     reason="SCHEMA_BREAKS_RULES", metadata={"rules": str(len(broken))})
        await self.repo.save_schema(tenant, schema)
        return schema

    async def get_schema(self, tenant: str) -> ProfileSchema | None:
        """The declared schema, or None."""
        return await self.repo.get_schema(tenant)

    # ------------------------------------------------------------------------------------------ experiments

    async def upsert_experiment(self, tenant: str, e: Experiment) -> Experiment:
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
        to_store = replace(e, experiment_id=current.experiment_id if current else _new_id("exp"), state="DRAFT",
                           winner_cohort_id="", start_time=None, stop_time=None)
        return await self.repo.save_experiment(tenant, to_store)

    async def list_experiments(
        self, tenant: str, point_name: str, size: int, token: str, include_archived: bool
    ) -> tuple[list[Experiment], str]:
        """One page of experiments by name, and the next page token."""
        v = Violations()
        limit = page_size(size, v)
        after = decode_token(token, (str,), v)
        v.raise_if_any()
        rows = await self.repo.list_experiments(tenant, point_name, after[0] if after else "", limit + 1,
                                                include_archived)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_token([rows[-1].name]) if more else ""

    async def _experiment(self, tenant: str, name: str) -> Experiment:
        if not name:
            raise_violation("name", "must name an experiment")
        e = await self.repo.get_experiment(tenant, name)
        if e is None:
            raise experiment_not_found(name)
        return e

    def _wrong_state(self, e: Experiment, action: str) -> FailedPrecondition:
        return FailedPrecondition(f"experiment {quote(e.name)} is {e.state.lower()}; cannot {action} it",
                                  reason="EXPERIMENT_WRONG_STATE", metadata={"experiment": e.name, "state": e.state})

    async def start_experiment(self, tenant: str, name: str) -> Experiment:
        """draft -> running; at most one running experiment per point; cohorts must still serve live decisions."""
        e = await self._experiment(tenant, name)
        if e.state != "DRAFT":
            raise self._wrong_state(e, "start")
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
            raise FailedPrecondition(f"another experiment already runs on point {quote(e.point_name)}",
                                     reason="EXPERIMENT_ALREADY_RUNNING",
                                     metadata={"point": e.point_name, "experiment": e.name}) from None
        self.cache.invalidate(tenant, e.point_name)
        return started

    async def stop_experiment(self, tenant: str, name: str, winner: str = "") -> Experiment:
        """running -> stopped, optionally recording the winning cohort."""
        e = await self._experiment(tenant, name)
        if e.state != "RUNNING":
            raise self._wrong_state(e, "stop")
        if winner and winner not in {c.cohort_id for c in e.cohorts}:
            raise NotFound(f"winner_cohort_id: experiment {quote(name)} has no cohort {quote(winner)}",
                           reason="COHORT_NOT_FOUND", metadata={"experiment": name, "cohort": winner})
        stopped = await self.repo.set_experiment_state(
            tenant, replace(e, state="STOPPED", winner_cohort_id=winner, stop_time=self.now()))
        self.cache.invalidate(tenant, e.point_name)
        return stopped

    async def archive_experiment(self, tenant: str, name: str) -> Experiment:
        """draft or stopped -> archived."""
        e = await self._experiment(tenant, name)
        if e.state not in ("DRAFT", "STOPPED"):
            raise self._wrong_state(e, "archive")
        return await self.repo.set_experiment_state(tenant, replace(e, state="ARCHIVED"))

    async def assign_experiments(
        self, tenant: str, unified_id: str, point_names: Sequence[str], profile: Mapping[str, Any],
        context: Mapping[str, Any], record: bool = False, channel: str = "", request_id: str = "",
    ) -> list[Assignment]:
        """The individual's assignment in each running experiment of the points (all points when none named)."""
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
        running = [compiled[n].experiment for n in names if compiled[n].experiment is not None]  # type: ignore
        now = self.now()
        running = [c for c in running if not c.experiment.expired(now)]
        ctx = rules.activation(rules.merge_needs(c.targeting for c in running),
                               {"profile": profile, "context": context})
        assignments = [c.assign(unified_id, ctx) for c in running]
        if record:
            entries = [LogEntry(personalization_id=_new_id("exposure"), point_name=a.experiment.point_name,
                                request_id=request_id, decision_id=a.cohort.decision_id if a.cohort else "",
                                unified_individual_id=unified_id, channel=channel, log_time=now,
                                experiment_id=a.experiment.experiment_id,
                                cohort_id=a.cohort.cohort_id if a.cohort else "")
                       for a in assignments if a.in_experiment]
            if entries:
                await self.repo.insert_log(tenant, entries)
        return assignments

    async def reassign_individual(self, tenant: str, from_ids: Sequence[str], to_id: str) -> list[str]:
        """Records a merge: the survivor keeps its cohorts; experiments where they saw different ones are flagged."""
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
        v.raise_if_any()
        seen = await self.repo.merge(tenant, list(dict.fromkeys(from_ids)), to_id)  # (experiment, uid, cohort)
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

    async def record_outcomes(self, tenant: str, outcomes: Sequence[Outcome]) -> int:
        """Stores clicks and purchases once each (by outcome id)."""
        validate_outcomes(outcomes, MAX_LOG_ENTRIES)
        return await self.repo.insert_outcomes(tenant, outcomes) if outcomes else 0

    async def experiment_results(self, tenant: str, name: str) -> tuple[Experiment, exp.Results]:
        """Per-cohort results; an automatic experiment that meets its thresholds (or expires) is stopped."""
        e = await self._experiment(tenant, name)
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

    async def attribution(
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

    # ------------------------------------------------------------------------------------------ qualify and log

    async def qualify(
        self,
        tenant: str,
        selections: Sequence[tuple[str, str]],
        profile: Mapping[str, Any],
        context: Mapping[str, Any],
        unified_id: str = "",
        *,
        fallback_only: bool = False,
    ) -> list[Qualification]:
        """For each (point name, forced decision id or ""), the experiment cohort, the winner and the rules evaluated.

        With fallback_only, every point serves its fallback decision (or nothing) and no rule is evaluated.

        A running experiment on the point is evaluated first: an individual in a cohort gets the cohort's decision,
        and the control cohort with fall-through (or anyone outside the experiment) gets the normal decisions.
        """
        v = Violations()
        _check_selections(selections, v, lambda i: f"points[{i}].name")
        v.raise_if_any()
        entries = await self._compiled_points(tenant, selections, lambda i: f"points[{i}].name")
        if fallback_only:
            return _fallbacks_only(entries, granted_purposes(profile) if _needs_consent(entries) else None)
        forced = [f for _, f in selections]
        needs = _needs(entries, forced, with_experiments=bool(unified_id))
        ctx = rules.activation(needs, {"profile": profile, "context": context})
        now = self.now() if unified_id and _has_experiment(entries, forced) else None
        granted = granted_purposes(profile) if _needs_consent(entries) else None
        return _qualify_one(entries, forced, ctx, unified_id, now, granted)

    async def qualify_batch(
        self,
        tenant: str,
        point_names: Sequence[str],
        context: Mapping[str, Any],
        individuals: Sequence[tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], Mapping[str, Any] | None]],
        *,
        fallback_only: bool = False,
    ) -> tuple[list[Point], list[list[Qualification]]]:
        """Qualify for many (unified id, profile[, own context]) sharing points and a context: the points, then per
        individual (in order) exactly what qualify() returns for them. An individual with its own context is
        evaluated against it instead of the shared one (batch jobs build each member's context from its profile).

        The points, their compiled rules and the context's conversion to CEL are done once; per individual only
        the keys of the profile the rules read are converted. The event loop is yielded to every few hundred
        individuals so a big batch does not stall real-time requests served by the same process.
        """
        selections = [(name, "") for name in point_names]
        v = Violations()
        _check_selections(selections, v, lambda i: f"points[{i}]")
        if not individuals:
            v.add("individuals", "must name at least one individual")
        elif len(individuals) > MAX_INDIVIDUALS_PER_BATCH:
            v.add("individuals", f"must name at most {MAX_INDIVIDUALS_PER_BATCH} individuals")
        else:
            for i, individual in enumerate(individuals):
                if not individual[0]:
                    v.add(f"individuals[{i}].unified_individual_id", "is required")
        v.raise_if_any()
        entries = await self._compiled_points(tenant, selections, lambda i: f"points[{i}]")
        points = [entry.point for entry in entries]
        if fallback_only:
            consent = _needs_consent(entries)
            return points, [_fallbacks_only(entries, granted_purposes(individual[1]) if consent else None)
                            for individual in individuals]
        forced = [""] * len(entries)
        needs = _needs(entries, forced, with_experiments=True)
        activation = rules.BatchActivation(needs, context)
        now = self.now() if _has_experiment(entries, forced) else None
        consent = _needs_consent(entries)
        results = []
        for i, individual in enumerate(individuals):
            if i and i % BATCH_YIELD_EVERY == 0:
                await asyncio.sleep(0)
            unified_id, profile = individual[0], individual[1]
            own_context = individual[2] if len(individual) > 2 else None
            ctx = (activation.with_profile(profile) if own_context is None
                   else rules.activation(needs, {"profile": profile, "context": own_context}))
            results.append(_qualify_one(entries, forced, ctx, unified_id, now,
                                        granted_purposes(profile) if consent else None))
        return points, results

    async def _compiled_points(
        self, tenant: str, selections: Sequence[tuple[str, str]], name_path
    ) -> list[CompiledPoint]:
        """The compiled points of the selections, in order; unknown or archived points and forced decisions that
        do not exist are NOT_FOUND."""
        compiled = await self.cache.get_many(tenant, [name for name, _ in selections])
        entries: list[CompiledPoint] = []
        for i, (name, forced) in enumerate(selections):
            entry = compiled[name]
            if entry is None:
                raise point_not_found(name, name_path(i))
            if entry.point.archived:
                raise NotFound(f"{name_path(i)}: point {quote(name)} is archived", reason="POINT_ARCHIVED",
                               metadata={"point": name})
            if forced and forced not in entry.by_id:
                raise decision_not_found(name, forced, f"points[{i}].decision_id")
            entries.append(entry)
        return entries

    async def log_decisions(self, tenant: str, entries: Sequence[LogEntry]) -> int:
        """Appends log rows in one round trip; a re-sent personalization id is written once.

        The exposure_conflict flag of each row is set by the repository when it writes the row.
        """
        v = Violations()
        if len(entries) > MAX_LOG_ENTRIES:
            v.add("entries", f"must hold at most {MAX_LOG_ENTRIES} rows")
        for i, e in enumerate(entries):
            if not e.personalization_id:
                v.add(f"entries[{i}].personalization_id", "must not be empty")
            elif len(e.personalization_id) > MAX_TEXT:
                v.add(f"entries[{i}].personalization_id", f"must be at most {MAX_TEXT} characters")
            if not e.point_name:
                v.add(f"entries[{i}].point_name", "must name the point served")
            if e.cohort_id and not e.experiment_id:
                v.add(f"entries[{i}].experiment_id", "must name the experiment of the cohort")
            if not _all_finite(e.served):
                v.add(f"entries[{i}].served", "must hold finite numbers only (no NaN nor infinity)")
            for stage, ms in e.stage_ms.items():
                if not math.isfinite(ms):
                    v.add(f"entries[{i}].stage_ms[{quote(stage)}]", "must be a finite number")
        v.raise_if_any()
        if not entries:
            return 0
        now = datetime.now(UTC)
        return await self.repo.insert_log(tenant, [e if e.log_time else replace(e, log_time=now) for e in entries])

    async def log_stats(self, tenant: str, start: datetime | None, end: datetime | None) -> list[LogStats]:
        """Counts of the log in [start, end): the whole window first, then per point by name."""
        v = Violations()
        if start is None:
            v.add("start_time", "is required")
        if end is None:
            v.add("end_time", "is required")
        if start is not None and end is not None:
            if end <= start:
                v.add("end_time", "must be after start_time")
            elif end - start > MAX_STATS_WINDOW:
                v.add("end_time", f"must be at most {MAX_STATS_WINDOW.days} days after start_time")
        v.raise_if_any()
        return await self.repo.log_stats(tenant, start, end)

    async def list_log(self, tenant: str, individual: str, size: int, token: str) -> tuple[list[LogEntry], str]:
        """One page of log rows, newest first, optionally of one individual, and the next page token."""
        v = Violations()
        limit = page_size(size, v)
        after = decode_token(token, (str, str), v)
        position = None
        if after:
            try:
                position = (datetime.fromisoformat(after[0]), after[1])
            except ValueError:
                v.add("page_token", "is not a page token this service issued")
        v.raise_if_any()
        rows = await self.repo.list_log(tenant, individual, position, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows else None
        token_out = encode_token([last.log_time.isoformat(), last.personalization_id]) if more and last else ""
        return rows, token_out


def _all_finite(value: Any) -> bool:
    """True when no number anywhere in a JSON-like value is NaN or infinite (the log stores it as JSON)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True
