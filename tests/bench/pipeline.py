"""Bench: the pipeline, processed events/s with one and with N worker processes, freshness, and a quiet tenant's
freshness while another tenant floods the pipeline with a poisoned backlog.

Starts the whole suite as processes (`tailor up --no-demo`, its own embedded PostgreSQL) with the gateway's
in-process worker off, so the workers measured are the only ones:
- reference: the same worker code in this process, calling the four domain services' servicers directly (built here
  on the same database): no gRPC, no serialization, one process;
- 1 worker and N worker processes (`python -m services.gateway.pipeline`) over gRPC.
Each drains a backlog of BACKLOG events (product views, add-to-carts and purchases with attributes, for 2,000
customers, a fifth carrying profile attributes) ingested through the public API beforehand; throughput = events processed / seconds from the first to
the last one processed.
Then, with N workers running: freshness (ack -> visible in segment and decision) at 1,000 events/s for one tenant,
and a quiet tenant's freshness at 10 events/s while another tenant's FLOOD events, 1% of them poison (rows the
pipeline cannot apply), are drained.
The last line is the summary.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from services.gateway.admin import create_tenant_with_key
from services.gateway.routing import route_of
from tailor_cli.demo import apply_config, parse_config
from tests.bench._common import percentile, running_suite
from tests.bench.freshness import CONFIG, _run_rate, _visible

BACKLOG = 30_000
FLOOD = 20_000
CUSTOMERS = 2_000
WORKERS = max(2, min(4, os.cpu_count() or 2))
DOMAIN = ("identity", "profile_graph", "recommender", "decision")


def _events(run: str, count: int) -> list[common_pb2.Event]:
    now = int(time.time()) - 60
    out = []
    for i in range(count):
        who = f"c{i % CUSTOMERS}"
        event = common_pb2.Event(message_id=f"{run}-{i}", event_time=timestamp_pb2.Timestamp(seconds=now + i // 1000),
                                 identities=[common_pb2.Identity(type="customer_id", value=f"{run}-{who}")])
        kind = i % 10
        if kind < 6:
            event.type, event.item_id = common_pb2.EVENT_TYPE_PRODUCT_VIEW, f"sku-{i % 500}"
        elif kind < 8:
            event.type, event.item_id = common_pb2.EVENT_TYPE_ADD_TO_CART, f"sku-{i % 500}"
        else:
            event.type = common_pb2.EVENT_TYPE_PURCHASE
            event.line_items.add(item_id=f"sku-{i % 500}", quantity=1 + i % 3, unit_price=9.5 + i % 40)
        if i % 5 == 0:  # profile attributes ride on some events, stable per customer as in real traffic
            c = i % CUSTOMERS
            event.attributes.update({"city": ["Oslo", "Lyon", "Porto"][c % 3], "tier": ["gold", "silver"][c % 2]})
        out.append(event)
    return out


async def _tenant(dsn: str, gateway: str, name: str):
    _, secret = await create_tenant_with_key(dsn, name, name)
    md = (("authorization", f"Bearer {secret}"),)
    await apply_config(gateway, secret, parse_config(CONFIG), out=lambda _: None)
    return secret, md


async def _ingest(stub, md, events: list[common_pb2.Event]) -> None:
    for start in range(0, len(events), 1000):
        await stub.IngestEvents(gw.IngestEventsRequest(events=events[start:start + 1000]), metadata=md, timeout=60)


async def _poison(dsn: str, tenant: str, events: list[common_pb2.Event]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO gateway.inbox (tenant_id, message_id, payload, route, partition) "
            "VALUES ($1, $2, $3, $4, ((($4::bigint # hashtextextended($1, 0)) % 32) + 32) % 32)",
            [(tenant, f"poison-{e.message_id}", b"\xff\xff not an event", route_of(e)) for e in events])
        await conn.execute("SELECT pg_notify('tailor_inbox', '')")
    finally:
        await conn.close()


async def _drain_rate(dsn: str, tenant: str, total: int) -> tuple[float, float]:
    """(events/s, seconds) from the first processed event of the tenant's backlog to the last."""
    conn = await asyncpg.connect(dsn)
    try:
        first = None
        while True:
            pending = await conn.fetchval(
                "SELECT count(*) FROM gateway.inbox WHERE tenant_id = $1 AND processed_at IS NULL", tenant)
            now = time.perf_counter()
            if first is None and pending < total:
                first, at_first = now, pending
            if pending == 0:
                seconds = now - first
                return at_first / seconds, seconds
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def _spawn_workers(ready: dict, count: int) -> list[subprocess.Popen]:
    env = dict(os.environ, DATABASE_URL=ready["dsn"], TAILOR_PIPELINE_PORT="0", TAILOR_LOG_LEVEL="WARNING",
               PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'protos'}")
    for name in DOMAIN:
        env[f"TAILOR_{name.upper()}_ADDR"] = ready["addresses"][name]
    return [subprocess.Popen([sys.executable, "-m", "services.gateway.pipeline"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]


def _stop(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(30)


class _Direct:
    """A stub that calls a servicer in this process: no gRPC, no serialization."""

    def __init__(self, servicer):
        self.servicer = servicer

    def __getattr__(self, method):
        handler = getattr(self.servicer, method)

        async def call(request, **_):
            return await handler(request, None)

        return call


async def _reference(ready: dict, stub, tenant: str, md) -> tuple[float, float]:
    from services.decision import server as decision
    from services.gateway.pipeline import PartitionWorker, Pipeline, Stubs
    from services.gateway.postgres_inbox import InboxStore
    from services.identity import server as identity
    from services.profile_graph import server as profile_graph
    from services.recommender import server as recommender
    from shared.db import create_pool

    built = {name: await module.build(ready["dsn"]) for name, module in (
        ("identity", identity), ("profile_graph", profile_graph), ("recommender", recommender),
        ("decision", decision))}
    stubs = Stubs(*(_Direct(built[n].services[0].servicer) for n in DOMAIN))
    pool = await create_pool(ready["dsn"], "gateway", max_size=10)
    worker = PartitionWorker(ready["dsn"], InboxStore(pool), Pipeline(stubs), worker_id="bench-reference")
    await _ingest(stub, md, _events("ref", BACKLOG))
    running = asyncio.create_task(worker.run())
    try:
        return await _drain_rate(ready["dsn"], tenant, BACKLOG)
    finally:
        await worker.stop(2.0)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.close()
        for b in built.values():
            await b.close()


async def _workers_rate(ready: dict, stub, tenant: str, md, count: int, run: str) -> tuple[float, float]:
    await _ingest(stub, md, _events(run, BACKLOG))
    workers = _spawn_workers(ready, count)
    try:
        return await _drain_rate(ready["dsn"], tenant, BACKLOG)
    finally:
        await asyncio.to_thread(_stop, workers)


async def _quiet_tenant(ready: dict, stub, flood: str, flood_md, quiet_md) -> tuple[list[float], float]:
    events = _events("flood", FLOOD)
    await _ingest(stub, flood_md, events[: FLOOD // 2])
    await _poison(ready["dsn"], flood, events[::100])
    latencies: list[float] = []
    run = uuid.uuid4().hex[:6]

    async def quiet() -> None:
        n = 0
        while True:
            customer = f"quiet-{run}-{n}"
            n += 1
            started = time.perf_counter()
            await stub.IngestEvents(gw.IngestEventsRequest(events=[_purchase(customer)]), metadata=quiet_md)
            seconds = await _visible(stub, quiet_md, customer)
            if seconds == seconds:
                latencies.append(seconds * 1000)
            await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))

    task = asyncio.create_task(quiet())
    await _ingest(stub, flood_md, events[FLOOD // 2:])
    rate, _ = await _drain_rate(ready["dsn"], flood, FLOOD + len(events[::100]))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return latencies, rate


def _purchase(customer: str) -> common_pb2.Event:
    from tests.bench.freshness import _purchase as purchase

    return purchase(customer)


async def measure(ready: dict) -> dict:
    gateway = ready["addresses"]["gateway"]
    results: dict = {}
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = gw_grpc.GatewayServiceStub(channel)
        tenants = {}
        for name in ("ref", "one", "many", "fresh", "flood", "quiet"):
            tenants[name] = await _tenant(ready["dsn"], gateway, f"bench-{name}")
        results["reference"] = await _reference(ready, stub, "bench-ref", tenants["ref"][1])
        results["one"] = await _workers_rate(ready, stub, "bench-one", tenants["one"][1], 1, "one")
        results["many"] = await _workers_rate(ready, stub, "bench-many", tenants["many"][1], WORKERS, "many")
        workers = _spawn_workers(ready, WORKERS)
        try:
            await asyncio.sleep(3.0)  # leases shared out
            results["fresh"] = await _run_rate(stub, tenants["fresh"][1], 1000)
            results["quiet"] = await _quiet_tenant(ready, stub, "bench-flood", tenants["flood"][1],
                                                   tenants["quiet"][1])
        finally:
            await asyncio.to_thread(_stop, workers)
    return results


def main() -> None:
    # No pipeline worker but those this bench starts (the launcher would start its own otherwise).
    with running_suite(extra_env={"TAILOR_GATEWAY_RUN_WORKER": "0", "TAILOR_PIPELINE_WORKERS": "0"}) as (ready, _):
        r = asyncio.run(measure(ready))
    ref_rate = r["reference"][0]
    print(f"\n{'processed (identify -> update -> compute)':<46}{'events':>8}{'seconds':>9}{'events/s':>10}"
          f"{'x reference':>13}")
    for label, key in (("in process, no gRPC (reference)", "reference"), ("1 worker process", "one"),
                       (f"{WORKERS} worker processes", "many")):
        rate, seconds = r[key]
        print(f"{label:<46}{BACKLOG:>8}{seconds:>9.2f}{rate:>10.0f}{rate / ref_rate:>13.2f}")
    fresh, achieved = r["fresh"]
    quiet, flood_rate = r["quiet"]
    fresh = fresh or [float("nan")]
    quiet = quiet or [float("nan")]
    print(f"\n{'ack -> visible (segment + decision)':<46}{'n':>8}{'p50 ms':>9}{'p95 ms':>10}{'p99 ms':>13}")
    print(f"{f'one tenant at {achieved:.0f} events/s':<46}{len(fresh):>8}{percentile(fresh, 50):>9.1f}"
          f"{percentile(fresh, 95):>10.1f}{percentile(fresh, 99):>13.1f}")
    print(f"{f'quiet tenant, flood drained at {flood_rate:.0f}/s':<46}{len(quiet):>8}{percentile(quiet, 50):>9.1f}"
          f"{percentile(quiet, 95):>10.1f}{percentile(quiet, 99):>13.1f}")
    print(f"\nprocessed_per_s_1w={r['one'][0]:.0f} processed_per_s_nw={r['many'][0]:.0f} workers={WORKERS} "
          f"quiet_tenant_p95_ms={percentile(quiet, 95):.1f} freshness_p95_ms={percentile(fresh, 95):.1f}")


if __name__ == "__main__":
    main()
