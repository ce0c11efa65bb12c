"""Bench: ingest through the whole suite as `make run` starts it.

Acknowledged throughput: StreamIngestEvents with 1,000-event messages, next to the same stream sent to an echo
server that only counts (the transport floor), measured in the same run. Processed throughput: events per second
from the first send until every event is visible in the profile graph (identify -> update -> compute), seen
through a segment that needs all of an individual's events. BENCH_INGEST_EVENTS and BENCH_INGEST_PER_INDIVIDUAL
change the sizes. The CPU seconds every process of the suite and PostgreSQL spent from the first send until all is
visible are reported per 1,000 events (less sensitive than events per second to what else the machine runs);
BENCH_PROFILE_DIR=folder also records every process with py-spy meanwhile and prints the summary. The last line is
the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import grpc
from google.protobuf import timestamp_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as ppb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pgrpc
from tests.bench import _pyspy
from tests.bench._common import running_suite

EVENTS = int(os.environ.get("BENCH_INGEST_EVENTS", "200000"))
PROFILE = os.environ.get("BENCH_PROFILE_DIR", "")
PER_INDIVIDUAL = int(os.environ.get("BENCH_INGEST_PER_INDIVIDUAL", "10"))
MESSAGE = 1000


def messages(prefix: str) -> list[pb.StreamIngestEventsRequest]:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    individuals = EVENTS // PER_INDIVIDUAL
    out = []
    for start in range(0, EVENTS, MESSAGE):
        out.append(pb.StreamIngestEventsRequest(events=[common_pb2.Event(
            message_id=f"{prefix}-{n}", type=common_pb2.EVENT_TYPE_PRODUCT_VIEW, event_time=now,
            item_id=f"sku-{n % 500}", identities=[common_pb2.Identity(type="device_id", value=f"d{n % individuals}")])
            for n in range(start, min(EVENTS, start + MESSAGE))]))
    return out


class Echo(pb_grpc.GatewayServiceServicer):
    async def StreamIngestEvents(self, request_iterator, context):
        count = 0
        async for message in request_iterator:
            count += len(message.events)
        return pb.StreamIngestEventsResponse(stored_count=count)


async def floor(batches) -> float:
    server = grpc.aio.server()
    pb_grpc.add_GatewayServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            started = time.perf_counter()
            await pb_grpc.GatewayServiceStub(channel).StreamIngestEvents(iter(batches))
            return EVENTS / (time.perf_counter() - started)
    finally:
        await server.stop(0)


async def measure(gateway: str, md, batches, meter) -> tuple[float, float, dict[str, float]]:
    async with grpc.aio.insecure_channel(gateway) as channel:
        profile = pgrpc.ProfileGraphServiceStub(channel)
        await profile.UpsertInsight(ppb.UpsertInsightRequest(insight=ppb.Insight(
            name="views", aggregate=ppb.AGGREGATE_COUNT, event_type=common_pb2.EVENT_TYPE_PRODUCT_VIEW)),
            metadata=md)
        await profile.UpsertSegment(ppb.UpsertSegmentRequest(segment=ppb.Segment(
            name="all_seen", rule=f"insights.views >= {float(PER_INDIVIDUAL)}")), metadata=md)
        cpu = meter()
        started = time.perf_counter()
        reply = await pb_grpc.GatewayServiceStub(channel).StreamIngestEvents(iter(batches), metadata=md, timeout=600)
        acked = time.perf_counter() - started
        assert reply.stored_count == EVENTS, reply.stored_count
        individuals = EVENTS // PER_INDIVIDUAL
        while True:
            listed = await profile.ListSegments(ppb.ListSegmentsRequest(), metadata=md)
            if any(s.name == "all_seen" and s.member_count >= individuals for s in listed.segments):
                break
            await asyncio.sleep(0.2)
        return EVENTS / acked, EVENTS / (time.perf_counter() - started), cpu.used()


def main() -> None:
    batches = messages("ev")
    floor_per_s = asyncio.run(floor(batches))
    with running_suite() as (ready, _):
        md = (("authorization", f"Bearer {ready['api_key']}"),)
        pids = ready["pids"]
        with _pyspy.recording(pids, Path(PROFILE)) if PROFILE else contextlib.nullcontext():
            started = time.perf_counter()
            ack_per_s, processed_per_s, cpu = asyncio.run(measure(
                ready["addresses"]["gateway"], md, batches,
                lambda: _pyspy.CpuMeter(pids, urlparse(ready["dsn"]).port)))
            wall = time.perf_counter() - started
    if PROFILE:
        print("\n".join(_pyspy.summary(Path(PROFILE), list(pids), wall)))
    print(f"\n{EVENTS} product views, {EVENTS // PER_INDIVIDUAL} individuals, messages of {MESSAGE} events")
    print(f"{'path':<52}{'events/s':>12}{'x floor':>9}")
    print(f"{'echo server, same stream (transport floor)':<52}{floor_per_s:>12.0f}{1.0:>9.2f}")
    print(f"{'acknowledged (stored in the inbox, deduplicated)':<52}{ack_per_s:>12.0f}{ack_per_s / floor_per_s:>9.2f}")
    print(f"{'processed (identify -> update -> compute, visible)':<52}{processed_per_s:>12.0f}"
          f"{processed_per_s / floor_per_s:>9.2f}")
    total = sum(cpu.values())
    print(f"\nCPU seconds, first send -> all visible, per 1,000 events: {total * 1000 / EVENTS:.3f} ("
          + ", ".join(f"{name} {seconds * 1000 / EVENTS:.3f}" for name, seconds in sorted(cpu.items())) + ")")
    print(f"\nack_per_s={ack_per_s:.0f} processed_per_s={processed_per_s:.0f} floor_per_s={floor_per_s:.0f} "
          f"cpu_s_per_1k={total * 1000 / EVENTS:.3f}")


if __name__ == "__main__":
    main()
