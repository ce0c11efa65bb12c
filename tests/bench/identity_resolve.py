"""Bench: ResolveIdentities in batches of 500 subjects, as the gateway's pipeline worker calls it.

Through the real gRPC server on a fresh embedded PostgreSQL (temporary folder). 5,000 individuals are created
first as the pipeline meets them: an event with only a device_id, then a sign-up (device_id + email, first_name and
last_name). Then timed batches of 500 subjects (random known people, or new ones):
- known: known device_ids only, empty attributes (the common ingest event; a known source record);
- known_attrs: known device_ids with the first_name and last_name of their sign-up (no new information: the
  sign-up record contains the subject);
- new: 500 new people (device_id + email, first_name, last_name: the default ruleset's email rule blocks them).
The baseline, measured in the same run, is the single SELECT of the 500 device identities with asyncpg (the floor
of answering "who is this" at all). BENCH_IDENTITY_BATCHES changes how many batches are timed per workload.
The last line is the summary: known_ms=… known_attrs_ms=… new_ms=… subjects_per_s=… (p50 ms per batch; the
subjects/s of the known workload).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path

import asyncpg
from google.protobuf import struct_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.server import SCHEMA, build
from shared.log import configure
from tests.bench._common import percentile, scratch_database, served
from tests.internal_auth import tenant_md

INDIVIDUALS = 5_000
BATCH = 500
BATCHES = int(os.environ.get("BENCH_IDENTITY_BATCHES", "40"))
WARMUP_BATCHES = 3
TENANT = "bench"
MD = tenant_md(TENANT)
FIRST = ["ada", "bob", "carla", "dmitri", "eve", "farah", "gus", "hana", "ivan", "jo"]
LAST = ["smith", "jones", "garcia", "ito", "novak", "okafor", "silva", "berg", "kim", "moreau"]

_OWNERS = """
SELECT i.id_type, i.id_value, i.individual_id
FROM unnest($2::text[], $3::text[]) AS k(t, v)
JOIN identities AS i ON i.tenant_id = $1 AND i.id_type = k.t AND i.id_value = k.v
"""


def person(n: int, *, identities: str = "device", attributes: bool = True) -> pb.Subject:
    """Subject of person n: device_id (+ email), with or without first/last name."""
    ids = [common_pb2.Identity(type="device_id", value=f"dev-{n}")]
    if identities == "all":
        ids.append(common_pb2.Identity(type="email", value=f"person{n}@example.com"))
    subject = pb.Subject(identities=ids)
    if attributes:
        subject.attributes.update({"first_name": FIRST[n % 10], "last_name": LAST[n // 10 % 10]})
    else:
        subject.attributes.CopyFrom(struct_pb2.Struct())  # as the pipeline sends an event without attributes
    return subject


async def timed(stub, requests: list[pb.ResolveIdentitiesRequest]) -> list[float]:
    """ms per call of the requests after the first WARMUP_BATCHES."""
    times = []
    for n, request in enumerate(requests):
        start = time.perf_counter()
        reply = await stub.ResolveIdentities(request, metadata=MD, timeout=60)
        if n >= WARMUP_BATCHES:
            times.append((time.perf_counter() - start) * 1000)
        assert len(reply.resolutions) == len(request.subjects)
    return times


async def baseline(dsn: str, batches: list[list[int]]) -> list[float]:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    try:
        times = []
        for n, people in enumerate(batches):
            start = time.perf_counter()
            rows = await conn.fetch(_OWNERS, TENANT, ["device_id"] * len(people), [f"dev-{p}" for p in people])
            if n >= WARMUP_BATCHES:
                times.append((time.perf_counter() - start) * 1000)
            assert len(rows) == len(people)
        return times
    finally:
        await conn.close()


async def main() -> None:
    configure("identity", "WARNING")  # no line per RPC
    rng = random.Random(7)
    known = [rng.sample(range(INDIVIDUALS), BATCH) for _ in range(BATCHES + WARMUP_BATCHES)]
    async with scratch_database("tailor-identity-bench-") as dsn:
        async with served(await build(dsn), pb_grpc.IdentityServiceStub) as stub:
            start = time.perf_counter()
            for shape in ({"attributes": False}, {"identities": "all"}):
                for s in range(0, INDIVIDUALS, BATCH):
                    await stub.ResolveIdentities(pb.ResolveIdentitiesRequest(
                        subjects=[person(n, **shape) for n in range(s, s + BATCH)]), metadata=MD, timeout=60)
            setup_s = time.perf_counter() - start
            results = {
                "known": await timed(stub, [pb.ResolveIdentitiesRequest(
                    subjects=[person(n, attributes=False) for n in people]) for people in known]),
                "known_attrs": await timed(stub, [pb.ResolveIdentitiesRequest(
                    subjects=[person(n) for n in people]) for people in known]),
                "new": await timed(stub, [pb.ResolveIdentitiesRequest(
                    subjects=[person(n, identities="all") for n in range(s, s + BATCH)])
                    for s in range(INDIVIDUALS, INDIVIDUALS + (BATCHES + WARMUP_BATCHES) * BATCH, BATCH)]),
            }
        base = await baseline(dsn, known)

    base_p50 = percentile(base, 50)
    print(f"\nResolveIdentities, batches of {BATCH} subjects, {INDIVIDUALS} individuals created first "
          f"({2 * INDIVIDUALS / setup_s:.0f} subjects/s); baseline = one asyncpg SELECT of the {BATCH} identities")
    print(f"{'workload':<44}{'p50 ms':>8}{'p99 ms':>8}{'subjects/s':>12}{'x base':>8}")
    print(f"{'baseline: SELECT of 500 identities (asyncpg)':<44}{base_p50:>8.1f}{percentile(base, 99):>8.1f}"
          f"{BATCH * len(base) / (sum(base) / 1000):>12.0f}{1.0:>8.1f}")
    labels = {"known": "known, device_id only, empty attributes", "known_attrs": "known, with first/last name",
              "new": "new subjects (device_id + email + names)"}
    for name, times in results.items():
        p50 = percentile(times, 50)
        print(f"{labels[name]:<44}{p50:>8.1f}{percentile(times, 99):>8.1f}"
              f"{BATCH * len(times) / (sum(times) / 1000):>12.0f}{p50 / base_p50:>8.1f}")
    known_rate = BATCH * len(results["known"]) / (sum(results["known"]) / 1000)
    print(f"known_ms={percentile(results['known'], 50):.1f} known_attrs_ms={percentile(results['known_attrs'], 50):.1f} "
          f"new_ms={percentile(results['new'], 50):.1f} subjects_per_s={known_rate:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
