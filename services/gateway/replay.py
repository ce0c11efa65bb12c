"""Offline replay (ReplayDecisions): what a draft configuration would have served to the requests of the decision
log, and its estimated effect on each point's primary metric.

It composes three reads and writes nothing: the decision service's log of the window (ListReplayLog: rows oldest
first with their outcomes and, for rows an experiment randomized, the propensity of the decision served), the
profile graph's profiles as of each request's time (GetProfilesAsOf), and the decision service's qualification of
the draft (QualifyDraft, the code Qualify runs). The estimate is inverse propensity weighting over the requests
where it is defined; the others are counted by reason.

A logged request's context is rebuilt from what the log keeps (channel, anchor id, correlation id): cart items,
request URL and free attributes are not logged, so rules reading them see them empty.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, timedelta

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from services.gateway.personalize import (
    EMPTY_PROFILE,
    PROFILE_EVENTS,
    profile_view,
    struct,
)
from services.gateway.ports import DecisionPort, ProfilePort
from shared import contract
from shared.context import check_deadline
from shared.errors import Violations

MAX_WINDOW = timedelta(days=31)
MAX_ATTRIBUTION_WINDOW = timedelta(days=90)
DEFAULT_MAX_REQUESTS = 10_000
LOG_PAGE = 1000  # ListReplayLog's page
PROFILE_CHUNK = 200  # GetProfilesAsOf's limit
CASE_CHUNK = 1000  # QualifyDraft's limit
NOT_RANDOMIZED = "NOT_RANDOMIZED"
NEVER_RANDOMIZED = "DECISION_NEVER_RANDOMIZED"
CONTENT_CHANGED = "CONTENT_CHANGED"


def _duration(d) -> timedelta:
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def validate(request: pb.ReplayDecisionsRequest) -> None:
    """The declared limits (contract) and the window rules, one violation per bad field."""
    contract.check(request)
    v = Violations()
    start, end = request.start_time.ToDatetime(tzinfo=UTC), request.end_time.ToDatetime(tzinfo=UTC)
    if end <= start:
        v.add("end_time", "must be after start_time")
    elif end - start > MAX_WINDOW:
        v.add("end_time", f"must be at most {MAX_WINDOW.days} days after start_time")
    if not timedelta(0) <= _duration(request.attribution_window) <= MAX_ATTRIBUTION_WINDOW:
        v.add("attribution_window", f"must be between 0 and {MAX_ATTRIBUTION_WINDOW.days} days")
    v.raise_if_any()


def reward(row: decision_pb.ReplayLogRow, metric: int) -> float:
    """The row's value of the metric: a click, a conversion (1 or 0) or the revenue that followed it."""
    if metric == decision_pb.METRIC_CLICK_THROUGH:
        return 1.0 if row.clicked else 0.0
    if metric == decision_pb.METRIC_REVENUE_PER_INDIVIDUAL:
        return row.revenue
    return 1.0 if row.converted else 0.0


def point_report(name: str, rows: list[tuple[decision_pb.ReplayLogRow, str]], changed_ids: set[str],
                 metric: int) -> pb.PointReplay:
    """One point's report: changes, decisions gained and lost, and the inverse propensity estimate.

    A request is estimated when the draft serves what was logged (weight 1/propensity, 1 outside experiments) or,
    on a randomized request, another decision the experiment could have served (weight 0). The logged value is the
    plain mean over the same requests, so the effect compares like with like.
    """
    if not metric:
        metrics = Counter(r.primary_metric for r, _ in rows if r.primary_metric)
        metric = metrics.most_common(1)[0][0] if metrics else decision_pb.METRIC_CONVERSION
    gained: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    unestimated: Counter[str] = Counter()
    changed = randomized = estimated = 0
    logged_sum = draft_sum = 0.0
    for row, draft in rows:
        logged = row.entry.decision_id
        new_content = bool(draft) and draft in changed_ids
        randomized += row.randomized
        if draft != logged:
            gained[draft] += 1
            lost[logged] += 1
        if draft == logged and not new_content:
            weight = 1.0 / row.propensity if row.randomized and row.propensity > 0 else 1.0
        else:
            changed += 1
            if new_content:
                unestimated[CONTENT_CHANGED] += 1
                continue
            if not row.randomized:
                unestimated[NOT_RANDOMIZED] += 1
                continue
            if draft not in row.randomized_decision_ids:
                unestimated[NEVER_RANDOMIZED] += 1
                continue
            weight = 0.0
        value = reward(row, metric)
        estimated += 1
        logged_sum += value
        draft_sum += weight * value
    logged_value = logged_sum / estimated if estimated else 0.0
    draft_value = draft_sum / estimated if estimated else 0.0
    return pb.PointReplay(
        point_name=name, replayed_requests=len(rows), changed_requests=changed,
        changed_share=changed / len(rows) if rows else 0.0,
        gained=[pb.DecisionCount(decision_id=k, count=n) for k, n in sorted(gained.items())],
        lost=[pb.DecisionCount(decision_id=k, count=n) for k, n in sorted(lost.items())],
        metric=metric, randomized_requests=randomized, estimated_requests=estimated,
        unestimated=[pb.UnestimatedCount(reason=k, count=n) for k, n in sorted(unestimated.items())],
        logged_value=logged_value, draft_value=draft_value, estimated_effect=draft_value - logged_value)


def _context(entry: decision_pb.DecisionLogEntry) -> dict:
    return {"anchor_id": entry.anchor_id, "anchor_type": "", "cart_item_ids": [], "channel": entry.channel,
            "correlation_id": entry.correlation_id, "request_url": "", "attributes": {}}


class Replayer:
    """ReplayDecisions over the decision service and the profile graph."""

    def __init__(self, decision: DecisionPort, profile: ProfilePort):
        self.decision = decision
        self.profile = profile

    async def replay(self, request: pb.ReplayDecisionsRequest) -> pb.ReplayDecisionsResponse:
        validate(request)
        points, decisions = list(request.points), list(request.decisions)
        # The draft is checked before anything is read, so a bad one fails even on an empty window.
        checked = await self.decision.QualifyDraft(
            decision_pb.QualifyDraftRequest(points=points, decisions=decisions))
        changed_ids = set(checked.changed_decision_ids)
        limit = request.max_requests or DEFAULT_MAX_REQUESTS
        rows: list[decision_pb.ReplayLogRow] = []
        token = ""
        while True:
            page = await self.decision.ListReplayLog(decision_pb.ListReplayLogRequest(
                start_time=request.start_time, end_time=request.end_time,
                attribution_window=request.attribution_window, page_size=LOG_PAGE, page_token=token))
            rows += page.rows
            token = page.next_page_token
            if not token or len(rows) > limit:
                break
        truncated = len(rows) > limit or bool(token)
        rows = rows[:limit]
        profiles = await self._profiles(rows)
        drafts: list[str] = []
        for start in range(0, len(rows), CASE_CHUNK):
            check_deadline("replay")
            chunk = rows[start:start + CASE_CHUNK]
            reply = await self.decision.QualifyDraft(decision_pb.QualifyDraftRequest(
                points=points, decisions=decisions, cases=[decision_pb.DraftCase(
                    unified_individual_id=r.entry.unified_individual_id, point_name=r.entry.point_name,
                    profile=profiles.get((r.entry.unified_individual_id, r.entry.log_time.ToNanoseconds()),
                                         struct(EMPTY_PROFILE)),
                    context=struct(_context(r.entry))) for r in chunk]))
            drafts += [d.decision_id for d in reply.results]
        by_point: dict[str, list[tuple[decision_pb.ReplayLogRow, str]]] = {}
        for row, draft in zip(rows, drafts):
            by_point.setdefault(row.entry.point_name, []).append((row, draft))
        return pb.ReplayDecisionsResponse(
            replayed_requests=len(rows), truncated=truncated,
            points=[point_report(name, by_point[name], changed_ids, request.metric) for name in sorted(by_point)])

    async def _profiles(self, rows: list[decision_pb.ReplayLogRow]) -> dict:
        """The profile view of each (individual, request time), read as of that time, 200 at a time."""
        keys = list(dict.fromkeys((r.entry.unified_individual_id, r.entry.log_time.ToNanoseconds())
                                  for r in rows if r.entry.unified_individual_id))
        times = {(r.entry.unified_individual_id, r.entry.log_time.ToNanoseconds()): r.entry.log_time for r in rows}
        out = {}
        for start in range(0, len(keys), PROFILE_CHUNK):
            check_deadline("replay")
            chunk = keys[start:start + PROFILE_CHUNK]
            reply = await self.profile.GetProfilesAsOf(profile_pb.GetProfilesAsOfRequest(
                entries=[profile_pb.ProfileAsOf(unified_individual_id=uid, as_of=times[(uid, ns)]) for uid, ns in chunk],
                event_limit=PROFILE_EVENTS))
            for key, profile in zip(chunk, reply.profiles):
                out[key] = struct(profile_view(profile))
        return out
