"""Use cases of offline replay: qualify a draft configuration without storing anything, and read the decision log
of a window with what followed each row and how it was chosen. No grpc, no SQL.

The draft is the live configuration with the draft's points and decisions laid over it; it is qualified with the
very code Qualify runs (`_qualify_one` on points compiled by `compile_point`), minus experiments: replay asks what
the draft's rules would serve, and the experiments' randomized rows are what lets the gateway estimate its effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from services.decision import experiments as exp
from services.decision import rules
from services.decision.cache import compile_point
from services.decision.domain import Decision, LogEntry, Point
from services.decision.experiments import Experiment, Outcome
from services.decision.schema import ProfileSchema
from services.decision.usecases.decisions import DEFAULT_COUNT
from services.decision.usecases.qualify import _qualify_one, granted_purposes
from services.decision.validation import (
    point_not_found,
    validate_decision,
    validate_point,
    validate_window,
)
from shared import paging
from shared.errors import Violations, quote

MAX_DRAFT_POINTS = 50
MAX_DRAFT_DECISIONS = 1000
MAX_DRAFT_CASES = 1000
MAX_REPLAY_WINDOW = timedelta(days=31)
REPLAY_PAGE = 1000
YIELD_EVERY = 250  # cases qualified between yields to the event loop
DRAFT_ID_PREFIX = "draft:"


class ReplayRepository(Protocol):
    """What replay reads: the live configuration, the schema, log rows of a window, outcomes and experiments."""

    async def load_points(self, tenant: str, names: Sequence[str]) -> dict[str, tuple[Point, list[Decision]]]: ...
    async def get_schema(self, tenant: str) -> ProfileSchema | None: ...
    async def outcomes_of(self, tenant: str, ids: Sequence[str], since: datetime) -> list[Outcome]: ...
    async def experiments_by_id(self, tenant: str, ids: Sequence[str]) -> list[Experiment]: ...


class ReplayLogStore(Protocol):
    """Decision-log rows of a window, oldest first (postgres_replay.py)."""

    async def log_between(self, tenant: str, start: datetime, end: datetime, after: tuple[datetime, str] | None,
                          limit: int) -> list[LogEntry]: ...


@dataclass(frozen=True)
class DraftCase:
    """One point to qualify for one individual, with the profile and context the rules see."""

    unified_individual_id: str
    point_name: str
    profile: Mapping[str, Any]
    context: Mapping[str, Any]


@dataclass(frozen=True)
class DraftAnswer:
    """Per case the winning decision id ('' for none), the draft's decisions of those points, and the ids of the
    decisions whose payload the draft changes (or adds)."""

    decision_ids: list[str]
    decisions: list[Decision]
    changed_decision_ids: list[str]


@dataclass(frozen=True)
class ReplayRow:
    """A logged row, its outcomes within the window after it, and how its decision was chosen."""

    entry: LogEntry
    clicked: bool
    converted: bool
    revenue: float
    randomized: bool
    propensity: float
    randomized_decision_ids: tuple[str, ...]
    primary_metric: str


def _moved(found: Violations, v: Violations, old: str, new: str) -> None:
    """Adds found's violations to v with the path prefix old replaced by new (decision.rule -> decisions[2].rule)."""
    for path, message in found.items:
        v.add(new + path[len(old):] if path.startswith(old) else path, message)


def _payload(d: Decision) -> tuple:
    return (d.content, d.recommender, d.count)


class DraftQualifier:
    """Qualifies cases against a draft overlaid on the live configuration; stores and logs nothing."""

    def __init__(self, repo: ReplayRepository):
        self.repo = repo

    async def qualify(self, tenant: str, points: Sequence[Point], drafted: Sequence[tuple[Decision, bool]],
                      cases: Sequence[DraftCase]) -> DraftAnswer:
        """drafted holds (decision, archived): an archived draft decision is removed from the draft."""
        v = Violations()
        if len(points) > MAX_DRAFT_POINTS:
            v.add("points", f"must hold at most {MAX_DRAFT_POINTS} points")
        if len(drafted) > MAX_DRAFT_DECISIONS:
            v.add("decisions", f"must hold at most {MAX_DRAFT_DECISIONS} decisions")
        if len(cases) > MAX_DRAFT_CASES:
            v.add("cases", f"must hold at most {MAX_DRAFT_CASES} cases")
        v.raise_if_any()
        seen: set[str] = set()
        for i, point in enumerate(points):
            found = Violations()
            validate_point(point, found)
            _moved(found, v, "point.", f"points[{i}].")
            if point.name in seen:
                v.add(f"points[{i}].name", f"point {quote(point.name)} is drafted twice")
            seen.add(point.name)
        names = sorted({c.point_name for c in cases} | {d.point_name for d, _ in drafted if d.point_name}
                       | {p.name for p in points})
        live = await self.repo.load_points(tenant, names)
        schema = await self.repo.get_schema(tenant)
        config: dict[str, tuple[Point, dict[str, Decision]]] = {
            name: (point, {d.decision_id: d for d in decisions}) for name, (point, decisions) in live.items()}
        live_by_id = {d.decision_id: d for _, decisions in live.values() for d in decisions if not d.archived}
        for point in points:
            old = config.get(point.name)
            config[point.name] = (replace(point, point_id=old[0].point_id if old else "", archived=False),
                                  old[1] if old else {})
        changed: list[str] = []
        unknown_point: tuple[str, str] | None = None
        for i, (decision, archived) in enumerate(drafted):
            path = f"decisions[{i}]"
            if not decision.point_name:
                v.add(f"{path}.point_name", "must name a point")
                continue
            entry = config.get(decision.point_name)
            if entry is None:
                unknown_point = unknown_point or (decision.point_name, f"{path}.point_name")
                continue
            point, by_id = entry
            if not archived:
                found = Violations()
                validate_decision(decision, point, found, schema)
                _moved(found, v, "decision.", f"{path}.")
            if decision.decision_id:
                if decision.decision_id not in by_id:
                    v.add(f"{path}.decision_id", f"names no decision of point {quote(point.name)}")
                    continue
                decision_id = decision.decision_id
            else:
                same = [d.decision_id for d in by_id.values() if d.name == decision.name]
                decision_id = same[0] if same else DRAFT_ID_PREFIX + decision.name
            if archived:
                by_id.pop(decision_id, None)
                continue
            count = decision.count or (DEFAULT_COUNT if point.type == "RECOMMENDATIONS" else 0)
            draft = replace(decision, decision_id=decision_id, count=count, archived=False)
            by_id[decision_id] = draft
            before = live_by_id.get(decision_id)
            if (before is None or _payload(before) != _payload(draft)) and decision_id not in changed:
                changed.append(decision_id)
        v.raise_if_any()
        if unknown_point is not None:
            raise point_not_found(*unknown_point)
        for i, case in enumerate(cases):
            if case.point_name not in config:
                raise point_not_found(case.point_name, f"cases[{i}].point_name")
        compiled = {}
        for name in dict.fromkeys(c.point_name for c in cases):
            point, by_id = config[name]
            compiled[name] = compile_point(point, list(by_id.values()))
        winners = []
        for i, case in enumerate(cases):
            if i and i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            target = compiled[case.point_name]
            if target.point.archived:  # an archived live point serves nothing
                winners.append("")
                continue
            ctx = rules.activation(target.needs, {"profile": case.profile, "context": case.context})
            consent = bool(target.point.consent_purpose or any(d.consent_purpose for d in target.by_id.values()))
            q = _qualify_one([target], [""], ctx, case.unified_individual_id, None,
                             granted_purposes(case.profile) if consent else None)[0]
            winners.append(q.decision.decision_id if q.decision is not None else "")
        decisions = [d for entry in compiled.values() for d in entry.by_id.values()]
        return DraftAnswer(winners, decisions, changed)


def _split(e: Experiment, row: LogEntry) -> tuple[float, tuple[str, ...]]:
    """The chance the experiment's split served the row's decision, and every decision the split could serve it."""
    cohort = next((c for c in e.cohorts if c.cohort_id == row.cohort_id), None)
    serving = [c for c in e.cohorts if not c.fall_through and c.decision_id]
    share = sum(c.weight_bps for c in serving if c.decision_id == row.decision_id) / 10_000
    if cohort is not None and cohort.fall_through:
        # The normal decisions served it: everyone no cohort decision took would have had the same.
        share += 1 - sum(c.weight_bps for c in serving) / 10_000
    return share, tuple(dict.fromkeys([c.decision_id for c in serving] + [row.decision_id]))


def replay_row(row: LogEntry, outcomes: Sequence[Outcome], window: timedelta,
               experiment: Experiment | None) -> ReplayRow:
    """One row with its outcomes: a click naming it (or naming none, in [log time, log time + window]), and the
    purchases of that span; and, when its experiment is known and gave it a cohort, the split's propensity."""
    assert row.log_time is not None
    end = row.log_time + window
    clicked = converted = False
    revenue = 0.0
    for o in outcomes:
        if o.type == "CLICK":
            if o.personalization_id == row.personalization_id or (
                    not o.personalization_id and row.log_time <= o.time <= end):
                clicked = True
        elif row.log_time <= o.time <= end:
            converted = True
            revenue += o.revenue
    if experiment is None or not row.cohort_id:
        return ReplayRow(row, clicked, converted, revenue, False, 1.0, (), "")
    propensity, possible = _split(experiment, row)
    randomized = propensity > 0
    return ReplayRow(row, clicked, converted, revenue, randomized, propensity if randomized else 1.0,
                     possible if randomized else (), experiment.primary_metric)


class ReplayLog:
    """The decision log of a window for replay, oldest first, each row with its outcomes and propensity."""

    def __init__(self, repo: ReplayRepository, store: ReplayLogStore):
        self.repo = repo
        self.store = store

    async def page(self, tenant: str, start: datetime | None, end: datetime | None, window: timedelta,
                   size: int, token: str) -> tuple[list[ReplayRow], str]:
        v = Violations()
        validate_window(start, end, MAX_REPLAY_WINDOW, v)
        if not timedelta(0) <= window <= exp.MAX_WINDOW:
            v.add("attribution_window", f"must be between 0 and {exp.MAX_WINDOW.days} days")
        listing = f"replay_log/{start.isoformat() if start else ''}/{end.isoformat() if end else ''}"
        limit = paging.page_size(size, REPLAY_PAGE, REPLAY_PAGE, v)
        after = paging.decode_token(token, listing, (datetime, str), v)
        v.raise_if_any()
        assert start is not None and end is not None
        window = window or exp.DEFAULT_WINDOW
        rows, token_out = paging.next_page(
            await self.store.log_between(tenant, start, end, (after[0], after[1]) if after else None, limit + 1),
            limit, listing, lambda e: [e.log_time, e.personalization_id])
        if not rows:
            return [], ""
        ids = sorted({r.unified_individual_id for r in rows if r.unified_individual_id})
        since = min(r.log_time for r in rows if r.log_time is not None)
        outcomes: dict[str, list[Outcome]] = {}
        for o in await self.repo.outcomes_of(tenant, ids, since) if ids else []:
            outcomes.setdefault(o.unified_individual_id, []).append(o)
        experiment_ids = sorted({r.experiment_id for r in rows if r.experiment_id})
        experiments = {e.experiment_id: e for e in await self.repo.experiments_by_id(tenant, experiment_ids)} \
            if experiment_ids else {}
        out = [replay_row(r, outcomes.get(r.unified_individual_id, []) if r.unified_individual_id else [], window,
                          experiments.get(r.experiment_id)) for r in rows]
        return out, token_out
