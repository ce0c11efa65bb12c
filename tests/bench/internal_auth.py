"""Bench: what authenticating internal calls costs per call, through real gRPC servers on 127.0.0.1.

Two servers with the same trivial handler (GetIndividual, answering the tenant it was called for) and the shared
server plumbing, called at concurrency 1 in interleaved blocks so that other work on the machine weighs on both
alike, both through the shared client factory: the baseline trusts an `x-tenant-id` header (what internal calls did
before tokens), the other verifies the gateway's token (shared/service_auth.py), which the client factory adds for
the tenant in context (minted once per tenant, verified once per token, a dictionary lookup after that). Also
the one-off costs: minting a token and verifying one the verifier has not seen. The last line is the summary.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from shared import client, context, log, service_auth
from shared.server import Service, start_server
from tests.bench._common import percentile
from tests.internal_auth import keys

BLOCKS = int(os.environ.get("TAILOR_BENCH_BLOCKS", "10"))
CALLS = int(os.environ.get("TAILOR_BENCH_CALLS", "500"))
NAME = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name


class Echo(pb_grpc.IdentityServiceServicer):
    async def GetIndividual(self, request, context_):
        return pb.GetIndividualResponse(individual=pb.Individual(unified_individual_id=context.current_tenant()))


async def trust_header(method: str, metadata: dict[str, str]) -> str:
    return metadata["x-tenant-id"]


async def _block(stub, request, metadata) -> list[float]:
    samples = []
    for _ in range(CALLS):
        start = time.perf_counter()
        reply = await stub.GetIndividual(request, metadata=metadata, timeout=5)
        samples.append((time.perf_counter() - start) * 1000)
    assert reply.individual.unified_individual_id == "bench"
    return samples


async def main() -> None:
    log.configure("bench", "WARNING")
    logging.getLogger().setLevel(logging.WARNING)
    files = keys()
    verifier = service_auth.verifier_from_env()
    servers = {}
    for name, authenticate in (("header", trust_header), ("token", verifier.authenticate)):
        servers[name] = await start_server([Service(pb_grpc.add_IdentityServiceServicer_to_server, Echo(), NAME)],
                                           port=0, host="127.0.0.1", authenticate=authenticate)
    channels = {name: client.channel(f"127.0.0.1:{server.port}") for name, server in servers.items()}
    stubs = {name: pb_grpc.IdentityServiceStub(channel) for name, channel in channels.items()}
    metadata = {"header": (("x-tenant-id", "bench"),), "token": ()}
    # The client factory signs for the tenant in context, as the gateway does; the baseline's context has none.
    contexts = {"header": contextvars.copy_context(), "token": contextvars.copy_context()}
    contexts["token"].run(context.tenant_var.set, "bench")
    request = pb.GetIndividualRequest(unified_individual_id="x")
    samples: dict[str, list[float]] = {"header": [], "token": []}
    medians: dict[str, list[float]] = {"header": [], "token": []}
    try:
        def block_of(name: str):
            return asyncio.create_task(_block(stubs[name], request, metadata[name]), context=contexts[name])

        for name in samples:
            await block_of(name)  # warm-up
        for round_ in range(BLOCKS):
            for name in (("header", "token") if round_ % 2 == 0 else ("token", "header")):  # neither always first
                block = await block_of(name)
                samples[name] += block
                medians[name].append(statistics.median(block))
    finally:
        for channel in channels.values():
            await channel.close()
        for server in servers.values():
            await server.stop(0)

    signer = service_auth.Signer.from_file(files.signing)
    token = signer.mint("bench")
    mint_us = min(timeit.repeat(lambda: signer.mint("bench"), number=200, repeat=5)) / 200 * 1e6

    def verify_fresh() -> None:
        service_auth.Verifier.from_file(files.verify).tenant_of(token)

    load_us = min(timeit.repeat(lambda: service_auth.Verifier.from_file(files.verify), number=200, repeat=5)) / 200
    verify_us = min(timeit.repeat(verify_fresh, number=200, repeat=5)) / 200 * 1e6 - load_us * 1e6
    cached = service_auth.Verifier.from_file(files.verify)
    cached.tenant_of(token)
    lookup_us = min(timeit.repeat(lambda: cached.tenant_of(token), number=20000, repeat=5)) / 20000 * 1e6

    base = statistics.median(medians["header"])
    print(f"\n{'one internal call, concurrency 1':<44}{'p50 ms':>9}{'p99 ms':>9}{'x base':>9}")
    for name, label in (("header", "x-tenant-id header (baseline)"), ("token", "signed token, verified")):
        p50 = statistics.median(medians[name])
        print(f"{label:<44}{p50:>9.3f}{percentile(samples[name], 99):>9.3f}{p50 / base:>9.3f}")
    print(f"one-off: mint {mint_us:.0f} us, verify an unseen token {verify_us:.0f} us; "
          f"a seen token {lookup_us:.2f} us")
    ratio = statistics.median(medians["token"]) / base
    print(f"\nheader_p50_ms={base:.3f} token_p50_ms={statistics.median(medians['token']):.3f} ratio={ratio:.3f} "
          f"mint_us={mint_us:.0f} verify_us={verify_us:.0f} cached_verify_us={lookup_us:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
