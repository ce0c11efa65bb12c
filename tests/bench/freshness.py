"""Bench: freshness, from the ingest acknowledgement until the change is visible to readers.

Starts the whole suite as processes (`tailor up --no-demo --ready-file`, its own embedded PostgreSQL), configures an
insight (spend), a segment over it and a decision targeting the segment, then sends purchases through the gateway's
public IngestEvents at a steady rate, each for a new customer whose purchase puts them in the segment. Meanwhile one
probe at a time sends such a purchase too and polls, right after the acknowledgement, the gateway's GetProfile until
the insight value and the segment entry show, then GetDecisions until the targeted decision is served; the latency
is acknowledgement -> both visible (one prober, so the polling itself does not load the machine).
The baseline, measured in the same run, is one GetProfile round trip through the gateway. The last line is the
summary for the higher rate.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from tailor_cli.demo import apply_config, parse_config
from tests.bench._common import percentile, running_suite

RATES = (100, 1000)
SECONDS = 4.0
TICK_S = 0.01  # events are sent in one call per tick (1 event per tick at 100/s, 10 at 1,000/s)
POLL_S = 0.002
TIMEOUT_S = 10.0
CONFIG = {
    "insights": [{"name": "fresh_spend", "aggregate": "SUM", "field": "revenue", "event_type": "PURCHASE"}],
    "segments": [{"name": "fresh_buyers", "rule": "insights.fresh_spend >= 100.0"}],
    "points": [{"name": "fresh_banner", "type": "MANUAL_CONTENT",
                "template": {"fields": [{"name": "headline", "type": "STRING", "required": True}]},
                "decisions": [
                    {"name": "fresh_offer", "priority": 10, "rule": "'fresh_buyers' in profile.segments",
                     "content": {"headline": "Thanks!"}},
                    {"name": "welcome", "fallback": True, "content": {"headline": "Welcome"}}]}],
}




def _purchase(customer: str) -> common_pb2.Event:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return common_pb2.Event(
        message_id=uuid.uuid4().hex, type=common_pb2.EVENT_TYPE_PURCHASE, event_time=now, source="bench",
        identities=[common_pb2.Identity(type="customer_id", value=customer)],
        line_items=[common_pb2.LineItem(item_id="sku-1", quantity=1, unit_price=150.0)])


async def _visible(stub, md, customer: str) -> float:
    """Seconds until the profile shows the insight and the segment and a decision targets the segment."""
    start = time.perf_counter()
    identity = common_pb2.Identity(type="customer_id", value=customer)
    profile_request = gw.GetProfileRequest(individual_id=identity, event_limit=1)
    while True:
        try:
            p = await stub.GetProfile(profile_request, metadata=md, timeout=5)
            if "fresh_buyers" in p.segments and p.insights.get("fresh_spend", 0) >= 100:
                break
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if time.perf_counter() - start > TIMEOUT_S:
            return float("nan")
        await asyncio.sleep(POLL_S)
    decide = gw.GetDecisionsRequest(individual_id=identity, personalization_points=[gw.PointRequest(name="fresh_banner")],
                                    execution_flags=[gw.EXECUTION_FLAG_TEST_MODE])
    while True:
        reply = await stub.GetDecisions(decide, metadata=md, timeout=5)
        if reply.personalizations[0].decision_name == "fresh_offer":
            return time.perf_counter() - start
        if time.perf_counter() - start > TIMEOUT_S:
            return float("nan")
        await asyncio.sleep(POLL_S)


async def _run_rate(stub, md, rate: int) -> tuple[list[float], float]:
    """Steady load at `rate` (one IngestEvents call per tick) while one probe at a time sends its own purchase and
    polls until it is visible: polling never piles up on the machine, and each probe sees the load's queue."""
    per_tick = max(1, round(rate * TICK_S))
    ticks = int(SECONDS / TICK_S)
    run = uuid.uuid4().hex[:6]
    done = asyncio.Event()
    latencies: list[float] = []

    async def probe() -> None:
        n = 0
        while not done.is_set():
            customer = f"probe-{run}-{n}"
            n += 1
            await stub.IngestEvents(gw.IngestEventsRequest(events=[_purchase(customer)]), metadata=md, timeout=10)
            seconds = await _visible(stub, md, customer)
            if seconds == seconds:
                latencies.append(seconds * 1000)

    prober = asyncio.create_task(probe())
    sent = 0
    started = time.perf_counter()
    for tick in range(ticks):
        customers = [f"fresh-{run}-{sent + i}" for i in range(per_tick)]
        await stub.IngestEvents(gw.IngestEventsRequest(events=[_purchase(c) for c in customers]), metadata=md,
                                timeout=10)
        sent += per_tick
        delay = started + (tick + 1) * TICK_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    achieved = sent / (time.perf_counter() - started)
    done.set()
    await prober
    return latencies, achieved


async def measure(ready: dict) -> tuple[dict, float]:
    gateway = ready["addresses"]["gateway"]
    md = (("authorization", f"Bearer {ready['api_key']}"),)
    await apply_config(gateway, ready["api_key"], parse_config(CONFIG), out=lambda _: None)
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = gw_grpc.GatewayServiceStub(channel)
        warm = f"fresh-warm-{uuid.uuid4().hex[:6]}"
        await stub.IngestEvents(gw.IngestEventsRequest(events=[_purchase(warm)]), metadata=md)
        await _visible(stub, md, warm)
        request = gw.GetProfileRequest(individual_id=common_pb2.Identity(type="customer_id", value=warm))
        base = []
        for _ in range(200):
            t = time.perf_counter()
            await stub.GetProfile(request, metadata=md)
            base.append((time.perf_counter() - t) * 1000)
        results = {}
        for rate in RATES:
            results[rate] = await _run_rate(stub, md, rate)
            await asyncio.sleep(1.0)
    return results, percentile(base, 50)


def main() -> None:
    with running_suite() as (ready, _):
        results, base = asyncio.run(measure(ready))
    print(f"\n{'ack -> visible (profile + decision)':<38}{'sent/s':>8}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'p50 x baseline':>16}")
    print(f"{'GetProfile via gateway (baseline)':<38}{'':>8}{200:>6}{base:>9.2f}{'':>9}{'':>9}{1.0:>16.1f}")
    for rate, (lat, achieved) in results.items():
        if not lat:
            print(f"rate {rate}: nothing became visible")
            continue
        p50, p95, p99 = (percentile(lat, q) for q in (50, 95, 99))
        print(f"{f'rate {rate}/s':<38}{achieved:>8.0f}{len(lat):>6}{p50:>9.2f}{p95:>9.2f}{p99:>9.2f}{p50 / base:>16.1f}")
    lat = results[RATES[-1]][0] or [float("nan")]
    print(f"\nrate={RATES[-1]} p50_ms={percentile(lat, 50):.2f} p95_ms={percentile(lat, 95):.2f} "
          f"p99_ms={percentile(lat, 99):.2f}")


if __name__ == "__main__":
    main()
