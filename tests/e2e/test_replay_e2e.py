"""Offline replay end to end: decisions and purchases go through the gateway, then a draft is replayed against the
decision log and the report is checked against an answer the test computes itself from the log it reads back."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as dec
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pg
from shared.errors import status_details
from tests.conftest import wait_for

PEOPLE = 24
PRICE = 10.0


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _ts(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def _who(n: int) -> common_pb2.Identity:
    return common_pb2.Identity(type="email", value=f"shopper{n}@example.com")


def _content(headline: str) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"headline": headline})
    return s


async def _configure(suite, md) -> dict[str, str]:
    await suite.profile_admin.UpsertInsight(pg.UpsertInsightRequest(insight=pg.Insight(
        name="spend", aggregate=pg.AGGREGATE_SUM, field="revenue", event_type=common_pb2.EVENT_TYPE_PURCHASE)),
        metadata=md)
    await suite.profile_admin.UpsertSegment(pg.UpsertSegmentRequest(segment=pg.Segment(
        name="buyers", rule="insights.spend > 0.0")), metadata=md)
    template = dec.ResponseTemplate(fields=[dec.TemplateField(name="headline", type=dec.FIELD_TYPE_STRING)])
    ids = {}
    for point, decisions in (
            ("hero", [("a", 2, "false", False), ("b", 1, "false", False), ("normal", 0, "", True)]),
            ("side", [("vip", 1, '"buyers" in profile.segments', False), ("std", 0, "", True)])):
        await suite.decision_admin.UpsertPoint(dec.UpsertPointRequest(point=dec.Point(
            name=point, type=dec.POINT_TYPE_MANUAL_CONTENT, template=template)), metadata=md)
        for name, priority, rule, fallback in decisions:
            reply = await suite.decision_admin.UpsertDecision(dec.UpsertDecisionRequest(decision=dec.Decision(
                point_name=point, name=name, priority=priority, rule=rule, fallback=fallback,
                content=_content(name))), metadata=md)
            ids[name] = reply.decision.decision_id
    await suite.decision_admin.UpsertExperiment(dec.UpsertExperimentRequest(experiment=dec.Experiment(
        name="hero_test", point_name="hero", primary_metric=dec.METRIC_CONVERSION,
        cohorts=[dec.Cohort(cohort_id="a", weight_bps=4000, decision_id=ids["a"]),
                 dec.Cohort(cohort_id="b", weight_bps=4000, decision_id=ids["b"]),
                 dec.Cohort(cohort_id="control", weight_bps=2000, control=True, fall_through=True)],
        min_participants=300, chance_to_win_threshold=95.0)), metadata=md)
    await suite.decision_admin.StartExperiment(dec.StartExperimentRequest(name="hero_test"), metadata=md)
    return ids


async def _processed(suite, md, n: int, segment: str = "") -> None:
    async def check():
        try:
            reply = await suite.gateway.GetProfile(pb.GetProfileRequest(individual_id=_who(n)), metadata=md)
        except grpc.aio.AioRpcError:
            return False
        return not segment or segment in reply.segments
    assert await wait_for(check), f"shopper{n} was not processed"


async def _decide(suite, md, n: int, points: list[str]) -> None:
    await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=_who(n), personalization_points=[pb.PointRequest(name=p) for p in points],
        context=pb.DecisionContext(channel="web")), metadata=md)


async def _log(suite, md) -> list[dec.DecisionLogEntry]:
    rows, token = [], ""
    while True:
        page = await suite.decision_admin.ListDecisionLog(dec.ListDecisionLogRequest(page_token=token, page_size=1000),
                                                          metadata=md)
        rows += page.entries
        token = page.next_page_token
        if not token:
            return rows


def _expected(rows, ids, buyers: set[str], draft_for) -> dict:
    """The report of one point, computed here from the logged rows: the draft's decision of each row (draft_for),
    gains and losses, and the inverse propensity estimate of conversion (a buyer's first request converted)."""
    gained, lost = Counter(), Counter()
    changed = estimated = 0
    logged = draft = 0.0
    unestimated = Counter()
    weights = {"a": 0.4, "b": 0.4, "control": 0.2}
    for row in rows:
        new = draft_for(row)
        r = 1.0 if row.unified_individual_id in buyers and row.decision_id != ids["vip"] else 0.0
        if new != row.decision_id:
            gained[new] += 1
            lost[row.decision_id] += 1
            changed += 1
            if new.startswith("draft:"):
                unestimated["CONTENT_CHANGED"] += 1
                continue
            estimated += 1
            logged += r  # randomized: the draft's decision was one the split could serve, weight 0
        else:
            estimated += 1
            logged += r
            draft += r / weights[row.cohort_id] if row.cohort_id else r
    return {"replayed_requests": len(rows), "changed_requests": changed, "gained": dict(gained), "lost": dict(lost),
            "estimated_requests": estimated, "unestimated": dict(unestimated),
            "logged_value": logged / estimated, "draft_value": draft / estimated}


def _report(p: pb.PointReplay) -> dict:
    return {"replayed_requests": p.replayed_requests, "changed_requests": p.changed_requests,
            "gained": {c.decision_id: c.count for c in p.gained}, "lost": {c.decision_id: c.count for c in p.lost},
            "estimated_requests": p.estimated_requests, "unestimated": {u.reason: u.count for u in p.unestimated},
            "logged_value": pytest.approx(p.logged_value), "draft_value": pytest.approx(p.draft_value)}


async def test_a_replayed_draft_reports_changes_and_the_ips_estimate_computed_from_the_log(suite, tmp_path):
    _, md = await suite.new_tenant()
    start = datetime.now(UTC) - timedelta(seconds=5)
    ids = await _configure(suite, md)
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[common_pb2.Event(
        message_id=f"view-{n}", type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=_now(), identities=[_who(n)])
        for n in range(PEOPLE)]), metadata=md)
    for n in range(PEOPLE):
        await _processed(suite, md, n)
    for n in range(PEOPLE):
        await _decide(suite, md, n, ["hero", "side"])
    buyers = list(range(0, PEOPLE, 2))
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[common_pb2.Event(
        message_id=f"buy-{n}", type=common_pb2.EVENT_TYPE_PURCHASE, event_time=_now(), identities=[_who(n)],
        line_items=[common_pb2.LineItem(item_id="sku", quantity=1, unit_price=PRICE)]) for n in buyers]), metadata=md)
    for n in buyers:
        await _processed(suite, md, n, segment="buyers")
    for n in buyers:  # buyers come back: the live rules now serve them vip
        await _decide(suite, md, n, ["side"])

    async def logged_and_attributed():
        rows = await _log(suite, md)
        credit = await suite.decision_admin.GetAttribution(dec.GetAttributionRequest(
            start_time=_ts(start), end_time=_ts(datetime.now(UTC) + timedelta(minutes=1))), metadata=md)
        conversions = sum(r.conversions for r in credit.rows
                          if r.model == dec.ATTRIBUTION_MODEL_LAST_TOUCH_VIEW and not r.item_id)
        return rows if len(rows) == 2 * PEOPLE + len(buyers) and conversions == len(buyers) else None
    rows = await wait_for(logged_and_attributed)
    assert rows, "the decision log or the outcomes never arrived"
    hero = [r for r in rows if r.point_name == "hero"]
    side = [r for r in rows if r.point_name == "side"]
    assert {r.cohort_id for r in hero} <= {"a", "b", "control"} and all(r.cohort_id for r in hero)
    assert Counter(r.decision_id for r in side) == {ids["std"]: PEOPLE, ids["vip"]: len(buyers)}
    buyer_ids = {r.unified_individual_id for r in side if r.decision_id == ids["vip"]}

    # The draft: b for everyone on hero (its rule only changes), and a new decision on side for big spenders.
    draft = [dec.Decision(point_name="hero", name="b", priority=5, rule="", content=_content("b")),
             dec.Decision(point_name="side", name="big", priority=2, rule="profile.insights.spend > 0.0",
                          content=_content("big"))]
    window = {"start_time": _ts(start), "end_time": _ts(datetime.now(UTC) + timedelta(minutes=1))}
    reply = await suite.gateway.ReplayDecisions(pb.ReplayDecisionsRequest(decisions=draft, **window), metadata=md)
    assert reply.replayed_requests == len(rows) and not reply.truncated
    by_point = {p.point_name: p for p in reply.points}
    assert sorted(by_point) == ["hero", "side"]
    assert by_point["hero"].metric == dec.METRIC_CONVERSION and by_point["hero"].randomized_requests == PEOPLE
    assert _report(by_point["hero"]) == _expected(hero, ids, buyer_ids, lambda row: ids["b"])
    # On side, a buyer's first request was before the purchase: as of then, no spend and no segment, so the draft
    # serves std as the log did; their second request gets the new decision, whose outcomes were never observed.
    expected_side = _expected(side, ids, buyer_ids,
                              lambda row: "draft:big" if row.decision_id == ids["vip"] else ids["std"])
    assert _report(by_point["side"]) == expected_side
    assert expected_side["changed_requests"] == len(buyers) and by_point["side"].estimated_effect == 0.0
    assert by_point["hero"].estimated_effect == pytest.approx(
        by_point["hero"].draft_value - by_point["hero"].logged_value)

    limited = await suite.gateway.ReplayDecisions(pb.ReplayDecisionsRequest(
        decisions=draft, max_requests=5, **window), metadata=md)
    assert (limited.replayed_requests, limited.truncated) == (5, True)

    # The same replay through `tailor replay`, the draft written as `tailor apply` takes it.
    draft_file = tmp_path / "draft.yaml"
    draft_file.write_text(yaml.safe_dump({"points": [
        {"name": "hero", "type": "MANUAL_CONTENT", "template": {"fields": [{"name": "headline", "type": "STRING"}]},
         "decisions": [{"name": "b", "priority": 5, "rule": "", "content": {"headline": "b"}}]},
        {"name": "side", "type": "MANUAL_CONTENT", "template": {"fields": [{"name": "headline", "type": "STRING"}]},
         "decisions": [{"name": "big", "priority": 2, "rule": "profile.insights.spend > 0.0",
                        "content": {"headline": "big"}}]}]}))
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tailor"), "replay", "-f", str(draft_file), "--json",
        "--start", window["start_time"].ToJsonString(), "--end", window["end_time"].ToJsonString(),
        "--gateway", f"127.0.0.1:{suite.ports['gateway']}", "--api-key", md[0][1].split(" ", 1)[1],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    assert json_format.ParseDict(json.loads(out), pb.ReplayDecisionsResponse()) == reply


async def test_replay_refuses_a_bad_draft_by_field_path_and_needs_the_admin_scope(suite):
    _, md = await suite.new_tenant()
    await _configure(suite, md)
    now = datetime.now(UTC)
    window = {"start_time": _ts(now - timedelta(days=1)), "end_time": _ts(now)}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.ReplayDecisions(pb.ReplayDecisionsRequest(decisions=[
            dec.Decision(point_name="hero", name="ok", rule="true", content=_content("x")),
            dec.Decision(point_name="hero", name="bad", rule="profile.segments ==", content=_content("x"))],
            **window), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["decisions[1].rule"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.ReplayDecisions(pb.ReplayDecisionsRequest(
            start_time=_ts(now - timedelta(days=40)), end_time=_ts(now), max_requests=20_000), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["max_requests"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.ReplayDecisions(pb.ReplayDecisionsRequest(
            start_time=_ts(now - timedelta(days=40)), end_time=_ts(now)), metadata=md)
    assert [f for f, _ in status_details(info.value)[0]] == ["end_time"]
    empty = await suite.gateway.ReplayDecisions(pb.ReplayDecisionsRequest(**window), metadata=md)
    assert (empty.replayed_requests, list(empty.points)) == (0, [])
    _, decide_only = await suite.new_tenant(scopes=("decide",))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.ReplayDecisions(pb.ReplayDecisionsRequest(**window), metadata=decide_only)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
