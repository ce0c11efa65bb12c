"""Bench: how long `tailor up` takes to be ready, and one GetDecisions at concurrency 1 through all five processes.

Starts the whole suite exactly as `make run` does (its own embedded PostgreSQL under a temporary TAILOR_HOME,
five service processes, the demo tenant), then times sequential GetDecisions calls. The baseline, measured in the
same run, is a health check on the gateway: one gRPC round trip with no work. The last line is the summary.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tests.bench._common import percentile, running_suite

WARMUP = 50
SAMPLES = 1000



async def _time(call, n: int) -> list[float]:
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def measure(ready: dict) -> dict[str, list[float]]:
    gateway = ready["addresses"]["gateway"]
    md = (("authorization", f"Bearer {ready['api_key']}"),)
    customer = ready.get("demo_customer_id") or "17850"
    async with grpc.aio.insecure_channel(gateway) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.GatewayServiceStub(channel)
        request = pb.GetDecisionsRequest(
            individual_id=common_pb2.Identity(type="customer_id", value=customer),
            personalization_points=[pb.PointRequest(name="home_banner")],
            context=pb.DecisionContext(channel="web"))
        reply = await stub.GetDecisions(request, metadata=md)
        print(f"decision for customer {customer}: {reply.personalizations[0].decision_name}")
        return {
            "health check (baseline)": await _time(lambda: health.Check(health_pb2.HealthCheckRequest()), SAMPLES),
            "GetDecisions home_banner": await _time(lambda: stub.GetDecisions(request, metadata=md), SAMPLES),
        }


def main() -> None:
    with running_suite(demo=True) as (ready, ready_s):
        results = asyncio.run(measure(ready))
    base = statistics.median(results["health check (baseline)"])
    print(f"\n{'operation':<28}{'p50 ms':>10}{'p99 ms':>10}{'x baseline p50':>16}")
    for name, samples in results.items():
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        print(f"{name:<28}{p50:>10.3f}{p99:>10.3f}{p50 / base:>16.1f}")
    decide = results["GetDecisions home_banner"]
    print(f"\nready_s={ready_s:.2f} decide_p50_ms={percentile(decide, 50):.3f} "
          f"decide_p99_ms={percentile(decide, 99):.3f}")


if __name__ == "__main__":
    main()
