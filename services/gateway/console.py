"""The console at /console/: server-rendered pages over the gateway's own public and admin RPCs, for one tenant.

It is a client: every figure comes from an RPC called in process through the HTTP port's dispatcher with the
signed-in admin key (the same authentication, scopes and tenant isolation as any caller), never from a table.
Sign-in exchanges an admin key for a cookie holding it (HttpOnly, SameSite=Strict, path /console), so any replica
serves the session; the pages only read. The operator key sees every tenant's pipeline instead (ListTenants, then
GetPipelineStatus naming each tenant). Long lists go page by page with the RPCs' own page tokens (shared/paging.py),
carried in the page's address.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from services.gateway.auth import DECISION, GATEWAY, IDENTITY, PROFILE, RECOMMENDER
from services.gateway.http import CONNECT_CODES, Dispatcher, RpcFailed

WEB = Path(__file__).resolve().parent / "web"
COOKIE = "tailor_console"
CALL_SECONDS = 10.0  # the deadline of each RPC a page makes
CHANGE_PAGES = 20  # membership changes read per segment (1,000 a page); a longer history is charted up to there
LOG_PAGE = 50  # decision-log rows a page
SEGMENT_PAGE = 25  # segments a page (each is charted)
MEMBER_PAGE = 100  # segment members a page
MERGE_PAGE = 20  # merge events a page
TENANT_PAGE = 20  # tenants a page (each one's pipeline status is read)
PAGES = [("pipeline", "Pipeline", "/console/"), ("profiles", "Profiles", "/console/profiles"),
         ("segments", "Segments & insights", "/console/segments"),
         ("experiments", "Experiments", "/console/experiments"), ("decisions", "Decisions", "/console/decisions"),
         ("configuration", "Configuration", "/console/configuration")]
OPERATOR_PAGES = [("pipeline", "Pipeline: all tenants", "/console/")]

templates = Environment(loader=FileSystemLoader(WEB / "templates"), autoescape=select_autoescape(["html"]))


def _charts():
    from services.gateway import charts  # matplotlib takes a second or two to import: only when a page is drawn

    return charts


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _time(ts) -> datetime:
    return ts.ToDatetime(tzinfo=timezone.utc)


class Client:
    """The gateway's RPCs as the signed-in key calls them."""

    def __init__(self, dispatcher: Dispatcher, key: str, operator: bool = False):
        self.dispatcher = dispatcher
        self.metadata = (("authorization", f"Bearer {key}"),)
        self.operator = operator

    async def call(self, path: str, request: Message) -> Message:
        method = await self.dispatcher.method(path)
        assert method is not None and not method.streaming, path
        reply = await self.dispatcher.call(method, request, self.metadata, time.monotonic() + CALL_SECONDS)
        return reply if isinstance(reply, Message) else method.output.FromString(reply)


def _page(name: str, operator: bool = False, current: str = "", **context: Any) -> HTMLResponse:
    return HTMLResponse(templates.get_template(f"{name}.html").render(
        pages=OPERATOR_PAGES if operator else PAGES, current=current or name, **context))


def _pager(request: Request, param: str, next_token: str) -> dict[str, str]:
    """Links to a list's next page (the RPC's next_page_token in `param`) and back to its first."""
    def link(token: str) -> str:
        query = {k: v for k, v in request.query_params.items() if k != param}
        if token:
            query[param] = token
        return f"{request.url.path}?{urlencode(query)}" if query else request.url.path

    return {"next": link(next_token) if next_token else "",
            "first": link("") if request.query_params.get(param) else ""}


class Console:
    """The console's routes, over a dispatcher of the gateway's handlers."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher
        self._operator: dict[bytes, bool] = {}  # by the key's digest: whether it is the operator's

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/", self._guard(self.pipeline, operator_page=True)),
            Route("/profiles", self._guard(self.profiles)),
            Route("/segments", self._guard(self.segments)),
            Route("/segments/{name}", self._guard(self.members)),
            Route("/experiments", self._guard(self.experiments)),
            Route("/decisions", self._guard(self.decisions)),
            Route("/configuration", self._guard(self.configuration)),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=WEB / "static")),
        ])

    async def _client(self, key: str) -> Client:
        """A client for the key, knowing whether it is the operator's (asked once per key and process: the operator
        key may list tenants, no tenant's key may)."""
        digest = hashlib.sha256(key.encode()).digest()
        operator = self._operator.get(digest)
        if operator is None:
            try:
                await Client(self.dispatcher, key).call(GATEWAY + "ListTenants", pb.ListTenantsRequest(page_size=1))
                operator = True
            except RpcFailed as error:
                if error.code != grpc.StatusCode.PERMISSION_DENIED:
                    raise
                operator = False
            if len(self._operator) >= 10_000:
                self._operator.clear()
            self._operator[digest] = operator
        return Client(self.dispatcher, key, operator)

    def _guard(self, page, operator_page: bool = False):
        """Runs a page with a client for the session's key; no key, or one refused: the sign-in page. The operator
        key has only the pipeline page (every tenant's)."""
        async def endpoint(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            key = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
            if not key:
                return RedirectResponse("/console/login", status_code=303)
            try:
                client = await self._client(key)
                if client.operator and not operator_page:
                    return RedirectResponse("/console/", status_code=303)
                return await page(request, client)
            except RpcFailed as error:
                if error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    response = _page("login", error=f"{error.message} (an admin key is needed)")
                    response.delete_cookie(COOKIE, path="/console")
                    response.status_code = 401 if error.code == grpc.StatusCode.UNAUTHENTICATED else 403
                    return response
                response = _page("error", error=error, operator=self._operator.get(
                    hashlib.sha256(key.encode()).digest(), False))
                response.status_code = CONNECT_CODES.get(error.code, ("", 500))[1]
                return response

        return endpoint

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return _page("login", error="")
        key = str((await request.form()).get("key", "")).strip()
        try:
            client = await self._client(key)
            if not client.operator:  # an admin key reads its pipeline; other tenant keys cannot
                await client.call(GATEWAY + "GetPipelineStatus", pb.GetPipelineStatusRequest())
        except RpcFailed as error:
            response = _page("login", error=f"{error.message} (an admin key is needed)")
            response.status_code = 401
            return response
        redirect = RedirectResponse("/console/", status_code=303)
        redirect.set_cookie(COOKIE, key, path="/console", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", max_age=12 * 3600)
        return redirect

    async def logout(self, _request: Request) -> Response:
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path="/console")
        return response

    async def pipeline(self, request: Request, client: Client) -> Response:
        tenant = request.query_params.get("tenant", "") if client.operator else ""
        if client.operator and not tenant:
            return await self.tenants(request, client)
        status = await client.call(GATEWAY + "GetPipelineStatus", pb.GetPipelineStatusRequest(tenant_id=tenant))
        dead_letters = []
        if not client.operator:  # dead letters are listed with the tenant's own admin key
            dead = await client.call(GATEWAY + "ListDeadLetters", pb.ListDeadLettersRequest(page_size=20))
            dead_letters = [as_dict(d) for d in dead.dead_letters]
        times = [_time(m.start_time) for m in status.minutes]
        rate = await _charts().lines("Events per minute, last hour", {
            "received": (times, [m.received_count for m in status.minutes]),
            "processed": (times, [m.processed_count for m in status.minutes])}, "events")
        backlog = await _charts().lines("Backlog at each minute's end", {
            "backlog": (times, [m.backlog_count for m in status.minutes])}, "events")
        lag = await _charts().lines("Mean lag of processed events", {
            "lag": (times, [m.mean_lag_seconds for m in status.minutes])}, "seconds")
        return _page("pipeline", client.operator, status=status, charts=[rate, backlog, lag], tenant=tenant,
                     received_last_hour=sum(m.received_count for m in status.minutes), dead_letters=dead_letters)

    async def tenants(self, request: Request, client: Client) -> Response:
        """The operator's view: every tenant's pipeline, a page of tenants at a time, and a picker."""
        listed = await client.call(GATEWAY + "ListTenants", pb.ListTenantsRequest(
            page_size=TENANT_PAGE, page_token=request.query_params.get("page", "")))
        rows = []
        for tenant in listed.tenants:
            status = await client.call(GATEWAY + "GetPipelineStatus",
                                       pb.GetPipelineStatusRequest(tenant_id=tenant.tenant_id))
            rows.append({"tenant": as_dict(tenant), "status": status,
                         "received_last_hour": sum(m.received_count for m in status.minutes)})
        return _page("tenants", True, rows=rows, pager=_pager(request, "page", listed.next_page_token))

    async def profiles(self, request: Request, client: Client) -> Response:
        """A person found by any identity or unified id; the merge history and the decisions served to them are
        paged."""
        query = request.query_params.get("identity", "").strip()
        if not query:
            return _page("profiles", query="", profile=None, error="")
        request_message = pb.GetProfileRequest(event_limit=50)
        kind, _, value = query.partition(":")
        if value:
            request_message.individual_id.CopyFrom(common_pb2.Identity(type=kind.strip(), value=value.strip()))
        else:
            request_message.unified_individual_id = query
        try:
            profile = await client.call(GATEWAY + "GetProfile", request_message)
        except RpcFailed as error:
            if error.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return _page("profiles", query=query, profile=None, error=error.message)
            raise
        merges = await client.call(IDENTITY + "ListMergeEvents", identity_pb.ListMergeEventsRequest(
            unified_individual_id=profile.unified_individual_id, page_size=MERGE_PAGE,
            page_token=request.query_params.get("merges", "")))
        log = await client.call(DECISION + "ListDecisionLog", decision_pb.ListDecisionLogRequest(
            unified_individual_id=profile.unified_individual_id, page_size=LOG_PAGE,
            page_token=request.query_params.get("log", "")))
        return _page("profiles", query=query, error="", profile=as_dict(profile),
                     events=[as_dict(e) for e in profile.events], merges=[as_dict(m) for m in merges.merge_events],
                     merges_pager=_pager(request, "merges", merges.next_page_token),
                     entries=await _log_rows(client, log.entries), log_pager=_pager(request, "log", log.next_page_token))

    async def segments(self, request: Request, client: Client) -> Response:
        listed = await client.call(PROFILE + "ListSegments", profile_pb.ListSegmentsRequest(
            page_size=SEGMENT_PAGE, page_token=request.query_params.get("page", "")))
        insights = await client.call(PROFILE + "ListInsights", profile_pb.ListInsightsRequest(page_size=100))
        now = datetime.now(timezone.utc)
        series = {}
        for segment in listed.segments:
            changes: list = []
            token = ""
            for _ in range(CHANGE_PAGES):  # oldest first, from the segment's start
                reply = await client.call(PROFILE + "ListMembershipChanges", profile_pb.ListMembershipChangesRequest(
                    segment=segment.name, page_size=1000, page_token=token))
                changes.extend(reply.changes)
                token = reply.next_page_token
                if not token:
                    break
            series[segment.name] = _sizes(segment.member_count if not token else None, changes, now)
        chart = await _charts().lines("Members over time", series, "members") if series else ""
        return _page("segments", segments=[as_dict(s) for s in listed.segments], chart=chart,
                     insights=[as_dict(i) for i in insights.insights],
                     pager=_pager(request, "page", listed.next_page_token))

    async def members(self, request: Request, client: Client) -> Response:
        """One segment's members, a page at a time, each linked to their profile."""
        name = request.path_params["name"]
        listed = await client.call(PROFILE + "ListSegmentMembers", profile_pb.ListSegmentMembersRequest(
            segment=name, page_size=MEMBER_PAGE, page_token=request.query_params.get("page", "")))
        return _page("members", current="segments", segment=name,
                     members=[as_dict(m) for m in listed.members],
                     pager=_pager(request, "page", listed.next_page_token))

    async def experiments(self, request: Request, client: Client) -> Response:
        listed = await client.call(DECISION + "ListExperiments", decision_pb.ListExperimentsRequest(page_size=100))
        chosen = request.query_params.get("name") or (listed.experiments[0].name if listed.experiments else "")
        results, chart = None, ""
        if chosen:
            reply = await client.call(DECISION + "GetExperimentResults",
                                      decision_pb.GetExperimentResultsRequest(name=chosen))
            results = as_dict(reply)
            results.setdefault("cohorts", [])
            threshold = reply.experiment.chance_to_win_threshold or None
            chart = await _charts().bars(
                f"Chance to beat control: {chosen}", [c.cohort_id for c in reply.cohorts],
                [c.chance_to_beat_control for c in reply.cohorts], "chance", limit=1, threshold=threshold)
        return _page("experiments", experiments=[as_dict(e) for e in listed.experiments], chosen=chosen,
                     results=results, chart=chart)

    async def decisions(self, request: Request, client: Client) -> Response:
        usage = await client.call(GATEWAY + "GetUsageStats", pb.GetUsageStatsRequest())
        log = await client.call(DECISION + "ListDecisionLog", decision_pb.ListDecisionLogRequest(
            page_size=LOG_PAGE, page_token=request.query_params.get("page", "")))
        entries = await _log_rows(client, log.entries)
        served = Counter((e["point_name"], e["decision_name"] or "(none)") for e in entries)
        chart = await _charts().bars("Points served, last 24 hours", [p.point_name for p in usage.points],
                                  [p.served_count for p in usage.points], "served") if usage.points else ""
        return _page("decisions", usage=as_dict(usage), chart=chart, entries=entries,
                     served=sorted(served.items(), key=lambda kv: (-kv[1], kv[0])),
                     pager=_pager(request, "page", log.next_page_token))

    async def configuration(self, _request: Request, client: Client) -> Response:
        points = await client.call(DECISION + "ListPoints", decision_pb.ListPointsRequest(page_size=1000))
        decisions = await _decisions(client, [p.name for p in points.points])
        recommenders = await client.call(RECOMMENDER + "ListRecommenders",
                                         rec_pb.ListRecommendersRequest(page_size=1000))
        browser = await client.call(GATEWAY + "GetBrowserSettings", pb.GetBrowserSettingsRequest())
        return _page("configuration", points=[as_dict(p) for p in points.points],
                     decisions=[as_dict(d) for d in decisions],
                     recommenders=[as_dict(r) for r in recommenders.recommenders],
                     origins=list(browser.settings.allowed_origins))


async def _log_rows(client: Client, entries) -> list[dict[str, Any]]:
    """Decision-log rows as the templates show them, each with its decision's name."""
    names = {d.decision_id: d.name for d in await _decisions(client)} if entries else {}
    rows = []
    for entry in entries:
        row = as_dict(entry)
        row.setdefault("point_name", "")
        row["decision_name"] = names.get(entry.decision_id, entry.decision_id)
        rows.append(row)
    return rows


async def _decisions(client: Client, points: list[str] | None = None) -> list:
    """Every decision of every point (ListDecisions lists one point's)."""
    if points is None:
        listed = await client.call(DECISION + "ListPoints", decision_pb.ListPointsRequest(page_size=1000))
        points = [p.name for p in listed.points]
    found = []
    for point in points:
        reply = await client.call(DECISION + "ListDecisions",
                                  decision_pb.ListDecisionsRequest(point_name=point, page_size=1000))
        found.extend(reply.decisions)
    return found


def _sizes(current: int | None, changes: list, now: datetime) -> tuple[list[datetime], list[float]]:
    """A segment's size after each change, counted from its start (changes oldest first); with current (every
    change read), the line ends at today's size now."""
    times, sizes, size = [], [], 0
    for change in changes:
        size += 1 if change.entered else -1
        times.append(_time(change.change_time))
        sizes.append(float(size))
    if current is not None:
        times.append(now)
        sizes.append(float(current))
    if times:
        times.insert(0, times[0] - timedelta(seconds=1))
        sizes.insert(0, 0.0)
    return times, sizes
