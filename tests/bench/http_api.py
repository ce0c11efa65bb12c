"""Bench: the public API over HTTP/JSON (Connect protocol, services/gateway/http.py) next to gRPC, in one run.

Starts the suite as `make run` does (demo tenant), then times sequential GetDecisions calls for one demo customer
over gRPC (the baseline) and over HTTP with a JSON body (a kept-alive connection, as a browser or backend uses),
and batched ingest (batches of 100 page views, 4 in flight) over both. Target: HTTP p50 within 1.5x gRPC.
Ingest also reports the CPU each event costs the gateway process and this client (from /proc and process_time):
on a shared machine the rates follow the load, the CPU per event much less. HTTP ingest runs twice: with httpx (the
summary's figure; pure Python, it costs the client about twice what grpc's C core does) and with aiohttp (its
parser in C), so the server's share of the gap shows apart from the client library's.
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
import os
import time
import uuid

import aiohttp
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


def _gateway_pid(http_port: int) -> int | None:
    """The gateway process serving http_port (its command line and environment say so), if it can be read."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"services.gateway"] \
                    and f"TAILOR_HTTP_PORT={http_port}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except (OSError, IndexError):
            continue
    return None


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU time of a process so far (0 when it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _ingest_rate(send, batch, gateway: int | None = None) -> tuple[float, float, float]:
    """Events acknowledged per second with IN_FLIGHT batches in flight for INGEST_SECONDS, and the CPU microseconds
    each event took in the gateway and in this client."""
    done = 0
    stop = time.perf_counter() + INGEST_SECONDS

    async def sender():
        nonlocal done
        while time.perf_counter() < stop:
            await send(batch())
            done += BATCH

    started, server_cpu, client_cpu = time.perf_counter(), _cpu_seconds(gateway), time.process_time()
    await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - started
    return (done / elapsed, (_cpu_seconds(gateway) - server_cpu) / done * 1e6,
            (time.process_time() - client_cpu) / done * 1e6)


async def measure(ready: dict) -> tuple[dict[str, list[float]], dict[str, tuple[float, float, float]]]:
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

        lean = aiohttp.ClientSession(f"http://127.0.0.1:{ready['http_port']}", headers=headers)

        async def ingest_aiohttp(body):
            async with lean.post(SERVICE + "IngestEvents", data=body) as reply:
                reply.raise_for_status()
                await reply.read()

        first = (await http.post(SERVICE + "GetDecisions", content=body)).json()
        print(f"decision for customer {customer} over HTTP: {first['personalizations'][0]['decisionName']}")
        latencies = {"GetDecisions over gRPC (baseline)": await _time(lambda: stub.GetDecisions(request, metadata=md),
                                                                      SAMPLES),
                     "GetDecisions over HTTP/JSON": await _time(over_http, SAMPLES)}
        gateway = _gateway_pid(ready["http_port"])
        try:
            rates = {"IngestEvents over gRPC": await _ingest_rate(ingest_grpc, _batch, gateway),
                     "IngestEvents over HTTP/JSON": await _ingest_rate(ingest_http, _json_batch, gateway),
                     "IngestEvents over HTTP/JSON, aiohttp": await _ingest_rate(ingest_aiohttp, _json_batch,
                                                                                gateway)}
        finally:
            await lean.close()
        return latencies, rates


def main() -> None:
    with running_suite(demo=True) as (ready, _):
        latencies, rates = asyncio.run(measure(ready))
    grpc_p50 = percentile(latencies["GetDecisions over gRPC (baseline)"], 50)
    print(f"\n{'operation':<36}{'p50 ms':>10}{'p99 ms':>10}{'x gRPC p50':>12}")
    for name, samples in latencies.items():
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        print(f"{name:<36}{p50:>10.3f}{p99:>10.3f}{p50 / grpc_p50:>12.2f}")
    base_rate, base_cpu, _ = rates["IngestEvents over gRPC"]
    print(f"\n{'operation':<36}{'events/s':>10}{'x gRPC':>8}{'gateway CPU us/event':>22}{'x gRPC':>8}"
          f"{'client CPU us/event':>21}")
    for name, (rate, server_cpu, client_cpu) in rates.items():
        print(f"{name:<36}{rate:>10.0f}{rate / base_rate:>8.2f}{server_cpu:>22.1f}"
              f"{server_cpu / base_cpu if base_cpu else 0:>8.2f}{client_cpu:>21.1f}")
    http_rate, http_cpu, _ = rates["IngestEvents over HTTP/JSON"]
    print(f"\ndecide_http_p50_ms={percentile(latencies['GetDecisions over HTTP/JSON'], 50):.3f} "
          f"decide_grpc_p50_ms={grpc_p50:.3f} ingest_http_per_s={http_rate:.0f} "
          f"ingest_http_gateway_cpu_us={http_cpu:.1f} ingest_grpc_gateway_cpu_us={base_cpu:.1f}")


if __name__ == "__main__":
    main()
