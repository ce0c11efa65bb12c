"""Bench: what the right to be forgotten costs.

The five services run in this process on a scratch embedded PostgreSQL (tests/suite.py). For tenants whose inbox
holds N events (N individuals with one page view each, all processed), it times ForgetIndividual of one individual
with a handful of events (the gateway scans the tenant's inbox for the individual's payloads, so the cost grows with
N) against a GetProfile round trip measured in the same run. It also times ResolveIdentities (500 known subjects,
the pipeline's hot path) on a tenant that never forgot anyone and on one that did (one extra indexed read per
call). The last line is the summary.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
from shared import client, log
from shared import context as ctx
from tests.bench._common import scratch_database
from tests.suite import Suite

SIZES = (1_000, 10_000, 40_000)
FORGETS = 5
RESOLVE_ROUNDS = 30


def _view(message_id: str, *identities: tuple[str, str]) -> common_pb2.Event:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=now,
                            identities=[common_pb2.Identity(type=t, value=v) for t, v in identities])


async def _ingest(suite: Suite, md, events: list[common_pb2.Event]) -> None:
    for start in range(0, len(events), 5_000):
        await suite.gateway.IngestEvents(gw.IngestEventsRequest(events=events[start:start + 5_000]), metadata=md)


async def _processed(suite: Suite, md, email: str) -> None:
    while True:
        try:
            await suite.gateway.GetProfile(gw.GetProfileRequest(
                individual_id=common_pb2.Identity(type="email", value=email)), metadata=md)
            return
        except Exception:  # noqa: BLE001 - not processed yet
            await asyncio.sleep(0.1)


async def _timed(call) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


async def _forget_row(suite: Suite, size: int) -> tuple[float, float]:
    """(median GetProfile ms, median ForgetIndividual ms) on a tenant with `size` events in its inbox."""
    _, md = await suite.new_tenant()
    run = uuid.uuid4().hex[:6]
    events = [_view(f"{run}-bulk-{i}", ("customer_id", f"c{i}")) for i in range(size)]
    for k in range(FORGETS):
        events += [_view(f"{run}-p{k}-{j}", ("email", f"p{k}@example.com"), ("device_id", f"d{k}")) for j in range(3)]
    events.append(_view(f"{run}-last", ("email", "last@example.com")))
    await _ingest(suite, md, events)
    await _processed(suite, md, "last@example.com")
    profile = [await _timed(lambda: suite.gateway.GetProfile(gw.GetProfileRequest(
        individual_id=common_pb2.Identity(type="email", value="last@example.com")), metadata=md))
        for _ in range(20)]
    forget = []
    for k in range(FORGETS):
        request = gw.ForgetIndividualRequest(individual_id=common_pb2.Identity(type="email", value=f"p{k}@example.com"))
        forget.append(await _timed(lambda request=request: suite.gateway.ForgetIndividual(request, metadata=md,
                                                                                           timeout=300)))
    return statistics.median(profile), statistics.median(forget)


async def _resolve_ms(suite: Suite, forget_one: bool) -> float:
    """Median ms of ResolveIdentities for 500 known subjects, on a tenant with or without a forgotten individual."""
    tenant, md = await suite.new_tenant()
    subjects = [identity_pb.Subject(identities=[common_pb2.Identity(type="customer_id", value=f"k{i}")])
                for i in range(500)]
    ctx.tenant_var.set(tenant)
    channel = client.channel(f"127.0.0.1:{suite.ports['identity']}")
    stub = identity_grpc.IdentityServiceStub(channel)
    try:
        await stub.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(subjects=subjects))
        if forget_one:
            await stub.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(subjects=[identity_pb.Subject(
                identities=[common_pb2.Identity(type="email", value="gone@example.com")])]))
            await stub.SuppressIndividual(identity_pb.SuppressIndividualRequest(
                identity=common_pb2.Identity(type="email", value="gone@example.com")))
        times = [await _timed(lambda: stub.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(subjects=subjects)))
                 for _ in range(RESOLVE_ROUNDS)]
        return statistics.median(times[5:])
    finally:
        await channel.close()


async def main() -> None:
    log.configure("bench", "WARNING")
    async with scratch_database("tailor-bench-forget-") as dsn:
        suite = await Suite(dsn).start()
        try:
            print(f"{'inbox events':>12} {'GetProfile ms':>14} {'Forget ms':>10} {'ratio':>7}")
            rows = []
            for size in SIZES:
                profile_ms, forget_ms = await _forget_row(suite, size)
                rows.append((size, profile_ms, forget_ms))
                print(f"{size:>12,} {profile_ms:>14.1f} {forget_ms:>10.1f} {forget_ms / profile_ms:>6.0f}x", flush=True)
            plain = await _resolve_ms(suite, forget_one=False)
            suppressed = await _resolve_ms(suite, forget_one=True)
            print(f"\nResolveIdentities, 500 known subjects: {plain:.1f} ms without suppressions, "
                  f"{suppressed:.1f} ms with ({suppressed / plain:.2f}x)")
        finally:
            await suite.stop()
    largest = rows[-1]
    print(f"forget_ms_{largest[0]}={largest[2]:.1f} forget_ms_{rows[0][0]}={rows[0][2]:.1f} "
          f"resolve_ratio_with_suppressions={suppressed / plain:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
