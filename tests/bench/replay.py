"""Bench: what offline replay costs per logged request, against deciding that request online.

The five services run in this process on a scratch embedded PostgreSQL (tests/suite.py). A tenant with an insight,
a segment reading it and a point with three decisions gets N individuals with a few page views and purchases each;
each individual is then decided twice through GetDecisions (2N logged requests). The baseline, measured in the same
run, is GetDecisions of every individual once more with TEST_MODE (nothing logged), one after another; the bench
times ReplayDecisions of the whole log (profiles as of each request: events read and insights recomputed, the
membership history replayed, the draft qualified) and reports the cost per request of each. The last line is the
summary.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from google.protobuf import struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as dec
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pg
from shared import log
from tests.bench._common import scratch_database
from tests.suite import Suite

SIZES = (250, 1_000)
EVENTS_EACH = 6  # page views and purchases per individual


def _ts(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def _who(run: str, n: int) -> common_pb2.Identity:
    return common_pb2.Identity(type="email", value=f"{run}-{n}@example.com")


def _content(text: str) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"headline": text})
    return s


async def _tenant(suite: Suite, run: str, size: int):
    _, md = await suite.new_tenant()
    await suite.profile_admin.UpsertInsight(pg.UpsertInsightRequest(insight=pg.Insight(
        name="spend", aggregate=pg.AGGREGATE_SUM, field="revenue", event_type=common_pb2.EVENT_TYPE_PURCHASE)),
        metadata=md)
    await suite.profile_admin.UpsertSegment(pg.UpsertSegmentRequest(segment=pg.Segment(
        name="buyers", rule="insights.spend > 20.0")), metadata=md)
    await suite.decision_admin.UpsertPoint(dec.UpsertPointRequest(point=dec.Point(
        name="hero", type=dec.POINT_TYPE_MANUAL_CONTENT,
        template=dec.ResponseTemplate(fields=[dec.TemplateField(name="headline", type=dec.FIELD_TYPE_STRING)]))),
        metadata=md)
    for name, priority, rule, fallback in (("vip", 2, '"buyers" in profile.segments', False),
                                           ("big", 1, "profile.insights.spend > 50.0", False),
                                           ("std", 0, "", True)):
        await suite.decision_admin.UpsertDecision(dec.UpsertDecisionRequest(decision=dec.Decision(
            point_name="hero", name=name, priority=priority, rule=rule, fallback=fallback, content=_content(name))),
            metadata=md)
    now = datetime.now(UTC)
    events = []
    for n in range(size):
        for k in range(EVENTS_EACH):
            at = _ts(now - timedelta(hours=EVENTS_EACH - k))
            if k % 3 == 2:
                events.append(common_pb2.Event(
                    message_id=f"{run}-{n}-{k}", type=common_pb2.EVENT_TYPE_PURCHASE, event_time=at,
                    identities=[_who(run, n)],
                    line_items=[common_pb2.LineItem(item_id=f"sku{k}", quantity=1, unit_price=float(5 + n % 40))]))
            else:
                events.append(common_pb2.Event(message_id=f"{run}-{n}-{k}", type=common_pb2.EVENT_TYPE_PAGE_VIEW,
                                               event_time=at, identities=[_who(run, n)]))
    for start in range(0, len(events), 5_000):
        await suite.gateway.IngestEvents(gw.IngestEventsRequest(events=events[start:start + 5_000]), metadata=md)
    while True:
        try:
            await suite.gateway.GetProfile(gw.GetProfileRequest(individual_id=_who(run, size - 1)), metadata=md)
            break
        except Exception:  # noqa: BLE001 - not processed yet
            await asyncio.sleep(0.2)
    return md


async def _decide_all(suite: Suite, md, run: str, size: int, flags=()) -> float:
    started = time.perf_counter()
    for n in range(size):
        await suite.gateway.GetDecisions(gw.GetDecisionsRequest(
            individual_id=_who(run, n), personalization_points=[gw.PointRequest(name="hero")],
            context=gw.DecisionContext(channel="web"), execution_flags=list(flags)), metadata=md)
    return time.perf_counter() - started


async def _row(suite: Suite, size: int) -> tuple[int, float, float]:
    """(requests replayed, ms per request decided online, ms per request replayed)."""
    run = f"r{size}"
    md = await _tenant(suite, run, size)
    start = datetime.now(UTC) - timedelta(seconds=1)
    for _ in range(2):
        await _decide_all(suite, md, run, size)
    baseline = await _decide_all(suite, md, run, size, flags=[gw.EXECUTION_FLAG_TEST_MODE])
    await asyncio.sleep(1.0)  # the decision-log writer flushes off the request path
    draft = [dec.Decision(point_name="hero", name="big", priority=3, rule="profile.insights.spend > 30.0",
                          content=_content("big"))]
    request = gw.ReplayDecisionsRequest(decisions=draft, start_time=_ts(start),
                                        end_time=_ts(datetime.now(UTC) + timedelta(seconds=1)))
    started = time.perf_counter()
    reply = await suite.gateway.ReplayDecisions(request, metadata=md, timeout=600)
    replay = time.perf_counter() - started
    return reply.replayed_requests, baseline / size * 1000, replay / max(reply.replayed_requests, 1) * 1000


async def main() -> None:
    log.configure("bench", "WARNING")
    async with scratch_database("tailor-bench-replay-") as dsn:
        suite = await Suite(dsn).start()
        try:
            print(f"{'requests':>9} {'decide ms/req':>14} {'replay ms/req':>14} {'ratio':>7}")
            rows = []
            for size in SIZES:
                replayed, decide_ms, replay_ms = await _row(suite, size)
                rows.append((replayed, decide_ms, replay_ms))
                print(f"{replayed:>9,} {decide_ms:>14.2f} {replay_ms:>14.2f} {replay_ms / decide_ms:>6.2f}x",
                      flush=True)
        finally:
            await suite.stop()
    replayed, decide_ms, replay_ms = rows[-1]
    print(f"replay_ms_per_request={replay_ms:.2f} decide_ms_per_request={decide_ms:.2f} "
          f"replay_vs_decide={replay_ms / decide_ms:.2f} requests={replayed}")


if __name__ == "__main__":
    asyncio.run(main())
