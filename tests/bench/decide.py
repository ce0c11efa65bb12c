"""Bench: GetDecisions through all five processes, against an echo chain of the same topology (the floor).

Starts the suite with `tailor up --no-demo --ready-file` (its own embedded PostgreSQL under a temporary
TAILOR_HOME), configures through the gateway's admin passthrough a manual point with 20 decisions (19 targeted
rules that do not match, so every rule is evaluated, and a fallback) and a recommendations point with one
top-sellers decision, seeds a small catalog and purchases, then asks GetDecisions for both points:
p50/p99 at concurrency 1, throughput at saturation, and p50/p99 at half of that throughput (open loop: calls sent
at a fixed rate, each timed from when it was due, so a late send counts against it). The floor is five empty-handler processes
(tests/bench/_decide_echo.py) making the same calls, measured in the same run. The last line is the summary.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import grpc
from google.protobuf import struct_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as dpb
from personalization.decision.v1 import decision_service_pb2_grpc as dgrpc
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as ppb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pgrpc
from tests.bench import _pyspy
from tests.bench._common import free_port, percentile, running_suite

WARMUP = 100
SAMPLES = int(os.environ.get("TAILOR_BENCH_SAMPLES", "1000"))
SATURATION_SECONDS = float(os.environ.get("TAILOR_BENCH_SECONDS", "5"))
# A folder: py-spy records every process of the suite during the saturation phase and the summary is printed.
PROFILE = os.environ.get("BENCH_PROFILE_DIR", "")
CONCURRENCY = (16, 64)
IDLE_SECONDS = 2.0  # before saturating: each process's idle CPU, taken out of its CPU per request
HALF_SECONDS = float(os.environ.get("TAILOR_BENCH_HALF_SECONDS", "10"))  # the open-loop run at half saturation
CUSTOMER = "bench_customer"
ECHO_METHOD = "/personalization.gateway.v1.GatewayService/GetDecisions"



def _struct(value: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


async def _latency(call) -> list[float]:
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(SAMPLES):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def _paced(call, rate: float, seconds: float) -> list[float]:
    """Milliseconds of each call sent open-loop at `rate` per second for `seconds`, timed from when it was due."""
    interval, samples = 1.0 / rate, []
    start = time.perf_counter()

    async def one(due: float) -> None:
        await call()
        samples.append((time.perf_counter() - due) * 1000)

    tasks = []
    for n in range(int(rate * seconds)):
        due = start + n * interval
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return samples


def _per_request(cpu: dict[str, float], calls: int) -> dict[str, float]:
    """Milliseconds of CPU per request by process, the pipeline workers as one."""
    out: dict[str, float] = {}
    for name, seconds in cpu.items():
        key = "pipeline" if name.startswith("pipeline") else name
        out[key] = out.get(key, 0.0) + seconds * 1000 / max(calls, 1)
    return out


async def _throughput(call, meter=None) -> tuple[float, dict[str, float]]:
    """Completed calls per second with N workers in a closed loop (the best of the concurrency levels tried), and
    the CPU milliseconds per completed call of each process of the meter over all levels, less what it spends idle."""
    best = 0.0
    calls = 0
    idle: dict[str, float] = {}
    if meter:
        # What the processes spend idle (background loops, polling) is not the requests': measured apart, removed.
        idle_meter = meter()
        idle_start = time.perf_counter()
        await asyncio.sleep(IDLE_SECONDS)
        idle = {name: cpu / (time.perf_counter() - idle_start) for name, cpu in idle_meter.used().items()}
    meter = meter() if meter else None
    started = time.perf_counter()
    for workers in CONCURRENCY:
        done = 0
        stop_at = time.perf_counter() + SATURATION_SECONDS

        async def worker(stop_at: float = stop_at) -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await call()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        best = max(best, done / (time.perf_counter() - start))
        calls += done
    if not meter:
        return best, {}
    elapsed = time.perf_counter() - started
    used = {name: max(0.0, cpu - idle.get(name, 0.0) * elapsed) for name, cpu in meter.used().items()}
    return best, _per_request(used, calls)


async def configure(gateway: str, md) -> None:
    """A manual point with 20 decisions and a recommendations point, a catalog and some purchases."""
    async with grpc.aio.insecure_channel(gateway) as channel:
        decisions = dgrpc.DecisionServiceStub(channel)
        profiles = pgrpc.ProfileGraphServiceStub(channel)
        ingest = pb_grpc.GatewayServiceStub(channel)
        await decisions.UpsertPoint(dpb.UpsertPointRequest(point=dpb.Point(
            name="bench_banner", type=dpb.POINT_TYPE_MANUAL_CONTENT,
            template=dpb.ResponseTemplate(fields=[dpb.TemplateField(name="headline", type=dpb.FIELD_TYPE_STRING),
                                                  dpb.TemplateField(name="discount", type=dpb.FIELD_TYPE_NUMBER)]))),
            metadata=md)
        rules = ['"segment_{i}" in profile.segments', 'profile.insights.metric_{i} > 1000.0',
                 'context.channel == "channel_{i}"', 'has(profile.attributes.tier_{i})']
        for i in range(19):
            await decisions.UpsertDecision(dpb.UpsertDecisionRequest(decision=dpb.Decision(
                point_name="bench_banner", name=f"targeted_{i:02d}", priority=100 - i,
                rule=rules[i % len(rules)].format(i=i), content=_struct({"headline": f"offer {i}", "discount": i}))),
                metadata=md)
        await decisions.UpsertDecision(dpb.UpsertDecisionRequest(decision=dpb.Decision(
            point_name="bench_banner", name="everyone_else", fallback=True, content=_struct({"headline": "Welcome"}))),
            metadata=md)
        await decisions.UpsertPoint(dpb.UpsertPointRequest(point=dpb.Point(
            name="bench_recs", type=dpb.POINT_TYPE_RECOMMENDATIONS,
            template=dpb.ResponseTemplate(item_attributes=["name", "price"]))), metadata=md)
        await decisions.UpsertDecision(dpb.UpsertDecisionRequest(decision=dpb.Decision(
            point_name="bench_recs", name="top_sellers", recommendations=dpb.RecommendationSpec(
                recommender="top_sellers", count=12))), metadata=md)
        listed = await decisions.ListDecisions(dpb.ListDecisionsRequest(point_name="bench_banner"), metadata=md)
        points = await decisions.ListPoints(dpb.ListPointsRequest(), metadata=md)
        print(f"configured {len(points.points)} points; bench_banner has {len(listed.decisions)} decisions")
        await profiles.UpsertItems(ppb.UpsertItemsRequest(items=[
            ppb.Item(item_id=f"sku_{i}", name=f"Item {i}", attributes=_struct({"price": 1.0 + i}))
            for i in range(40)]), metadata=md)
        now = datetime.now(UTC)
        events = []
        for c in range(20):
            for k in range(3):
                e = common_pb2.Event(message_id=f"bench_{c}_{k}", type=common_pb2.EVENT_TYPE_PURCHASE,
                                     identities=[common_pb2.Identity(type="customer_id",
                                                                     value=CUSTOMER if c == 0 else f"c{c}")],
                                     line_items=[common_pb2.LineItem(item_id=f"sku_{(c * 3 + k) % 40}", quantity=1,
                                                                     unit_price=5.0)])
                e.event_time.FromDatetime(now)
                events.append(e)
        await ingest.IngestEvents(pb.IngestEventsRequest(events=events), metadata=md)
        request = pb.GetProfileRequest(individual_id=common_pb2.Identity(type="customer_id", value=CUSTOMER))
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            try:
                await ingest.GetProfile(request, metadata=md, timeout=5)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.25)


async def measure_tailor(gateway: str, md, pids: dict[str, int], postgres_port: int):
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        request = pb.GetDecisionsRequest(
            individual_id=common_pb2.Identity(type="customer_id", value=CUSTOMER),
            personalization_points=[pb.PointRequest(name="bench_banner"), pb.PointRequest(name="bench_recs")],
            context=pb.DecisionContext(channel="web"))
        reply = await stub.GetDecisions(request, metadata=md)
        print("decisions: " + ", ".join(f"{p.personalization_point_name}={p.decision_name} ({len(p.data)} data)"
                                        for p in reply.personalizations))

        async def call():
            return await stub.GetDecisions(request, metadata=md)

        latency = await _latency(call)
        stages = await _stage_medians(channel, md)

        def meter():
            return _pyspy.CpuMeter(pids, postgres_port)

        if not PROFILE:
            rps, cpu = await _throughput(call, meter)
        else:
            seconds = SATURATION_SECONDS * len(CONCURRENCY)
            with _pyspy.recording(pids, Path(PROFILE), seconds):
                rps, cpu = await _throughput(call, meter)
            print("\n".join(_pyspy.summary(Path(PROFILE), list(pids), seconds)))
        return latency, rps, cpu, stages, await _paced(call, rps / 2, HALF_SECONDS)


async def _stage_medians(channel, md) -> dict[str, float]:
    """Median milliseconds per stage of the last sequential requests, from the decision log (admin passthrough)."""
    log = await dgrpc.DecisionServiceStub(channel).ListDecisionLog(
        dpb.ListDecisionLogRequest(page_size=1000), metadata=md)
    per_stage: dict[str, list[float]] = {}
    for entry in log.entries:
        if entry.point_name == "bench_banner":
            for stage, ms in entry.stage_ms.items():
                per_stage.setdefault(stage, []).append(ms)
    return {stage: percentile(values, 50) for stage, values in per_stage.items()}


async def measure_echo(gateway: str, pids: dict[str, int]):
    async with grpc.aio.insecure_channel(gateway) as channel:
        rpc = channel.unary_unary(ECHO_METHOD)

        async def call():
            return await rpc(b"", timeout=5)

        latency = await _latency(call)
        rps, cpu = await _throughput(call, lambda: _pyspy.CpuMeter(pids))
        return latency, rps, cpu, await _paced(call, rps / 2, HALF_SECONDS)


def _start_echo() -> tuple[list[subprocess.Popen], str, dict[str, int]]:
    ports = {name: free_port() for name in ("gateway", "identity", "profile", "recommender", "decision")}
    script = str(Path(__file__).with_name("_decide_echo.py"))
    procs = []
    for leaf in ("identity", "profile", "recommender", "decision"):
        procs.append(subprocess.Popen([sys.executable, script, "leaf", str(ports[leaf])], stdout=subprocess.PIPE))
    procs.append(subprocess.Popen(
        [sys.executable, script, "gateway", str(ports["gateway"])]
        + [f"127.0.0.1:{ports[x]}" for x in ("identity", "profile", "recommender", "decision")],
        stdout=subprocess.PIPE))
    for proc in procs:
        if proc.stdout.readline().strip() != b"ready":
            raise SystemExit("an echo server did not start")
    names = ("identity", "profile_graph", "recommender", "decision", "gateway")
    return procs, f"127.0.0.1:{ports['gateway']}", {name: proc.pid for name, proc in zip(names, procs)}


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=30)


def run_tailor():
    with running_suite() as (ready, _):
        gateway = ready["addresses"]["gateway"]
        md = (("authorization", f"Bearer {ready['api_key']}"),)

        async def both():
            await configure(gateway, md)
            return await measure_tailor(gateway, md, ready["pids"], urlparse(ready["dsn"]).port)

        return asyncio.run(both())


def main() -> None:
    procs, echo_gateway, echo_pids = _start_echo()
    try:
        floor_latency, floor_rps, floor_cpu, floor_half = asyncio.run(measure_echo(echo_gateway, echo_pids))
    finally:
        _stop(procs)
    latency, rps, cpu, stages, half = run_tailor()
    print(f"\n{'chain (GetDecisions, 2 points)':<34}{'p50 ms':>9}{'p99 ms':>9}{'rps':>9}")
    for name, samples, throughput in (("tailor, five services", latency, rps),
                                      ("echo chain (floor)", floor_latency, floor_rps)):
        print(f"{name:<34}{percentile(samples, 50):>9.3f}{percentile(samples, 99):>9.3f}{throughput:>9.0f}")
    half_p50, half_p99 = percentile(half, 50), percentile(half, 99)
    for name, samples, rate in (("tailor at half saturation", half, rps / 2),
                                ("echo chain at half saturation", floor_half, floor_rps / 2)):
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        print(f"{name:<34}{p50:>9.3f}{p99:>9.3f}{rate:>9.0f}  p99/p50 {p99 / p50:.2f} (open loop, {len(samples)} calls)")
    print(f"p99 at half saturation is {half_p99 / half_p50:.2f}x its p50 (target <= 3)")
    print("gateway stages (median ms, from the decision log): "
          + ", ".join(f"{stage} {ms:.3f}" for stage, ms in sorted(stages.items())))
    names = ["gateway", "identity", "profile_graph", "recommender", "decision", "postgres", "pipeline"]
    print(f"\n{'CPU ms per request at saturation':<34}" + "".join(f"{n[:9]:>10}" for n in names) + f"{'total':>10}")
    for name, used in (("tailor, five services", cpu), ("echo chain (floor)", floor_cpu)):
        print(f"{name:<34}" + "".join(f"{used.get(n, 0.0):>10.3f}" for n in names) + f"{sum(used.values()):>10.3f}")
    cpu_ms, floor_cpu_ms = sum(cpu.values()), sum(floor_cpu.values())
    ratio = rps / floor_rps if floor_rps else 0.0
    p50_ratio = percentile(latency, 50) / percentile(floor_latency, 50)
    print(f"throughput ratio tailor/floor = {ratio:.2f} (target >= 0.85); p50 ratio tailor/floor = {p50_ratio:.2f} "
          f"(target <= 1.00); CPU per request floor/tailor = {floor_cpu_ms / cpu_ms if cpu_ms else 0.0:.2f}")
    print(f"\np50_ms={percentile(latency, 50):.3f} p99_ms={percentile(latency, 99):.3f} rps={rps:.0f} "
          f"floor_rps={floor_rps:.0f} ratio={ratio:.2f} floor_p50_ms={percentile(floor_latency, 50):.3f} "
          f"cpu_ms={cpu_ms:.3f} floor_cpu_ms={floor_cpu_ms:.3f} half_p50_ms={half_p50:.3f} half_p99_ms={half_p99:.3f} "
          f"half_p99_ratio={half_p99 / half_p50:.2f} floor_half_p99_ratio="
          f"{percentile(floor_half, 99) / percentile(floor_half, 50):.2f}")


if __name__ == "__main__":
    main()
