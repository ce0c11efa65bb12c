"""Bench: the public API over HTTP/JSON (Connect protocol, services/gateway/http.py) next to gRPC, in one run.

Starts the suite as `make run` does (demo tenant), then times sequential GetDecisions calls for one demo customer
over gRPC (the baseline) and over HTTP with a JSON body (a kept-alive connection, as a browser or backend uses),
and batched ingest (batches of 100 page views, 4 in flight) over both. Target: HTTP p50 within 1.5x gRPC.
The last line is the summary. (Named http_api.py, not http.py: a script's folder comes first on sys.path, so a
bench file named http.py would hide the standard library's http package from every other bench.)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder leads sys.path and its name would hide the standard library's http package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import asyncio
import json
import time
import uuid

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from google.protobuf import json_format, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tests.bench._common import percentile, running_suite

WARMUP = 50
SAMPLES = 500
BATCH = 100
IN_FLIGHT = 4
INGEST_SECONDS = 5.0
SERVICE = "/personalization.gateway.v1.GatewayService/"


async def _time(call, n: int) -> list[float]:
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _batch() -> pb.IngestEventsRequest:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    run = uuid.uuid4().hex[:8]
    return pb.IngestEventsRequest(events=[common_pb2.Event(
        message_id=f"bench-{run}-{i}", type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=now, source="web",
        identities=[common_pb2.Identity(type="device_id", value=f"bench-{run}-{i % 50}")]) for i in range(BATCH)])


def _json_batch() -> bytes:
    """The same batch as a browser or a backend writes it (JSON.stringify, json.dumps), not through protobuf."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run = uuid.uuid4().hex[:8]
    return json.dumps({"events": [
        {"messageId": f"bench-{run}-{i}", "type": "EVENT_TYPE_PAGE_VIEW", "eventTime": now, "source": "web",
         "identities": [{"type": "device_id", "value": f"bench-{run}-{i % 50}"}]} for i in range(BATCH)]}).encode()


async def _ingest_rate(send, batch) -> float:
    """Events acknowledged per second with IN_FLIGHT batches in flight for INGEST_SECONDS."""
    done = 0
    stop = time.perf_counter() + INGEST_SECONDS

    async def sender():
        nonlocal done
        while time.perf_counter() < stop:
            await send(batch())
            done += BATCH

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    return done / (time.perf_counter() - started)


async def measure(ready: dict) -> tuple[dict[str, list[float]], dict[str, float]]:
    key = ready["api_key"]
    md = (("authorization", f"Bearer {key}"),)
    customer = ready.get("demo_customer_id") or "17850"
    request = pb.GetDecisionsRequest(individual_id=common_pb2.Identity(type="customer_id", value=customer),
                                     personalization_points=[pb.PointRequest(name="home_banner")],
                                     context=pb.DecisionContext(channel="web"))
    body = json_format.MessageToJson(request, indent=None)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with grpc.aio.insecure_channel(ready["addresses"]["gateway"]) as channel, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ready['http_port']}", headers=headers, timeout=30) as http:
        stub = pb_grpc.GatewayServiceStub(channel)

        async def over_http():
            reply = await http.post(SERVICE + "GetDecisions", content=body)
            reply.raise_for_status()

        async def ingest_http(body):
            reply = await http.post(SERVICE + "IngestEvents", content=body)
            reply.raise_for_status()

        async def ingest_grpc(batch):
            await stub.IngestEvents(batch, metadata=md)

        first = (await http.post(SERVICE + "GetDecisions", content=body)).json()
        print(f"decision for customer {customer} over HTTP: {first['personalizations'][0]['decisionName']}")
        latencies = {"GetDecisions over gRPC (baseline)": await _time(lambda: stub.GetDecisions(request, metadata=md),
                                                                      SAMPLES),
                     "GetDecisions over HTTP/JSON": await _time(over_http, SAMPLES)}
        rates = {"IngestEvents over gRPC": await _ingest_rate(ingest_grpc, _batch),
                 "IngestEvents over HTTP/JSON": await _ingest_rate(ingest_http, _json_batch)}
        return latencies, rates


def main() -> None:
    with running_suite(demo=True) as (ready, _):
        latencies, rates = asyncio.run(measure(ready))
    grpc_p50 = percentile(latencies["GetDecisions over gRPC (baseline)"], 50)
    print(f"\n{'operation':<36}{'p50 ms':>10}{'p99 ms':>10}{'x gRPC p50':>12}")
    for name, samples in latencies.items():
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        print(f"{name:<36}{p50:>10.3f}{p99:>10.3f}{p50 / grpc_p50:>12.2f}")
    base_rate = rates["IngestEvents over gRPC"]
    print(f"\n{'operation':<36}{'events/s':>10}{'x gRPC':>12}")
    for name, rate in rates.items():
        print(f"{name:<36}{rate:>10.0f}{rate / base_rate:>12.2f}")
    print(f"\ndecide_http_p50_ms={percentile(latencies['GetDecisions over HTTP/JSON'], 50):.3f} "
          f"decide_grpc_p50_ms={grpc_p50:.3f} ingest_http_per_s={rates['IngestEvents over HTTP/JSON']:.0f}")


if __name__ == "__main__":
    main()
