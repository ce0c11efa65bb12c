"""Retries, round_robin over replicas, and answers during a database outage, through real grpc.aio servers."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from shared import client, service_auth
from shared.db import is_database_outage, watch_database
from shared.errors import Unavailable, retry_delay_of, status_details
from shared.ports import free_port
from shared.server import LIVENESS_SERVICE, Service, start_server
from tests.conftest import tenant_md

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name
MD = tenant_md("acme")


class Replica(pb_grpc.IdentityServiceServicer):
    """Counts its calls; fails the first `failures` with UNAVAILABLE; GetRuleset fails as a lost database does."""

    def __init__(self, name: str, failures: int = 0):
        self.name, self.failures, self.calls = name, failures, 0

    async def GetIndividual(self, request, context_):
        self.calls += 1
        if self.calls <= self.failures:
            raise Unavailable("restarting", retry_after_seconds=0.01)
        return pb.GetIndividualResponse(individual=pb.Individual(unified_individual_id=self.name))

    async def GetRuleset(self, request, context_):
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    async def UpsertIdentityType(self, request, context_):
        raise asyncpg.DeadlockDetectedError("deadlock detected")


async def _serve(servicer):
    return await start_server([Service(pb_grpc.add_IdentityServiceServicer_to_server, servicer, SERVICE_NAME)],
                              port=0, host="127.0.0.1", authenticate=service_auth.verifier_from_env().authenticate)


async def test_a_call_answered_unavailable_is_retried_until_it_succeeds():
    replica = Replica("one", failures=2)
    server = await _serve(replica)
    channel = client.channel(f"127.0.0.1:{server.port}")
    try:
        reply = await pb_grpc.IdentityServiceStub(channel).GetIndividual(
            pb.GetIndividualRequest(unified_individual_id="x"), metadata=MD, timeout=5)
    finally:
        await channel.close()
        await server.stop(0)
    assert reply.individual.unified_individual_id == "one"
    assert replica.calls == 3


async def test_calls_are_spread_round_robin_over_a_list_of_replicas():
    replicas = [Replica("a"), Replica("b")]
    servers = [await _serve(r) for r in replicas]
    channel = client.channel(",".join(f"127.0.0.1:{s.port}" for s in servers))
    try:
        stub = pb_grpc.IdentityServiceStub(channel)
        await channel.channel_ready()
        answers = [(await stub.GetIndividual(pb.GetIndividualRequest(unified_individual_id="x"), metadata=MD,
                                             timeout=5)).individual.unified_individual_id for _ in range(20)]
    finally:
        await channel.close()
        for server in servers:
            await server.stop(0)
    assert sorted(set(answers)) == ["a", "b"]
    assert min(r.calls for r in replicas) >= 5 and sum(r.calls for r in replicas) == 20


async def test_a_replica_that_stops_leaves_the_calls_to_the_others():
    replicas = [Replica("a"), Replica("b")]
    servers = [await _serve(r) for r in replicas]
    channel = client.channel(",".join(f"127.0.0.1:{s.port}" for s in servers))
    try:
        stub = pb_grpc.IdentityServiceStub(channel)
        await stub.GetIndividual(pb.GetIndividualRequest(unified_individual_id="x"), metadata=MD, timeout=5)
        await servers[0].stop(1.0)
        answers = [(await stub.GetIndividual(pb.GetIndividualRequest(unified_individual_id="x"), metadata=MD,
                                             timeout=5)).individual.unified_individual_id for _ in range(10)]
    finally:
        await channel.close()
        await servers[1].stop(0)
    assert answers == ["b"] * 10


async def test_replacing_a_server_by_a_successor_on_its_port_under_load_costs_no_call():
    """What a rolling restart does: the successor listens beside its predecessor (SO_REUSEPORT), which then drains."""

    async def serve_on(port: int, name: str):
        return await start_server([Service(pb_grpc.add_IdentityServiceServicer_to_server, Replica(name), SERVICE_NAME)],
                                  port=port, host="127.0.0.1", reuse_port=True, authenticate=None)

    current = await serve_on(0, "first")
    channel = client.channel(f"127.0.0.1:{current.port}")
    stub = pb_grpc.IdentityServiceStub(channel)
    answers: list[str] = []
    errors: list[str] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                reply = await stub.GetIndividual(pb.GetIndividualRequest(), timeout=10)
                answers.append(reply.individual.unified_individual_id)
            except grpc.aio.AioRpcError as error:
                errors.append(error.code().name)

    tasks = [asyncio.create_task(load()) for _ in range(8)]
    try:
        for generation in range(8):
            await asyncio.sleep(0.2)
            successor = await serve_on(current.port, str(generation))
            await current.stop(5.0)
            current = successor
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await channel.close()
        await current.stop(0)
    assert errors == []
    assert answers[-1] == "7" and len(answers) > 100


def test_a_list_of_replicas_becomes_an_ipv4_target_and_names_stay_as_they_are():
    assert client.target_of("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert client.target_of("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"
    assert client.target_of("dns:///identity:50052") == "dns:///identity:50052"
    assert client.target_of("identity:50052") == "identity:50052"
    with pytest.raises(ValueError, match="IP:port"):
        client.target_of("identity-0:50052,identity-1:50052")


async def test_a_lost_database_connection_answers_unavailable_with_retry_info():
    server = await _serve(Replica("a"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.IdentityServiceStub(channel).GetRuleset(pb.GetRulesetRequest(), metadata=MD, timeout=5)
    finally:
        await server.stop(0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert status_details(info.value)[1] == "DATABASE_UNAVAILABLE"
    assert retry_delay_of(info.value) == 1.0


async def test_a_write_that_lost_a_deadlock_answers_aborted_not_internal():
    server = await _serve(Replica("a"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.IdentityServiceStub(channel).UpsertIdentityType(pb.UpsertIdentityTypeRequest(
                    identity_type=pb.IdentityType(name="email", unique=True)), metadata=MD, timeout=5)
    finally:
        await server.stop(0)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert status_details(info.value)[1] == "CONCURRENT_WRITE"


async def test_an_unreachable_downstream_service_answers_unavailable_with_retry_info():
    class Upstream(pb_grpc.IdentityServiceServicer):
        def __init__(self):
            self.stub = pb_grpc.IdentityServiceStub(client.channel(f"127.0.0.1:{free_port()}"))

        async def GetIndividual(self, request, context_):
            return await self.stub.GetIndividual(request)

    server = await _serve(Upstream())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.IdentityServiceStub(channel).GetIndividual(pb.GetIndividualRequest(), metadata=MD,
                                                                         timeout=10)
    finally:
        await server.stop(0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert status_details(info.value)[1] == "DOWNSTREAM_UNAVAILABLE"
    assert retry_delay_of(info.value) == 1.0


def test_connection_errors_are_outages_and_query_errors_are_not():
    assert is_database_outage(ConnectionRefusedError(111, "refused"))
    assert is_database_outage(asyncpg.exceptions.CannotConnectNowError("the database system is starting up"))
    assert is_database_outage(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert is_database_outage(ExceptionGroup("writes", [ValueError("x"), ConnectionResetError()]))
    assert not is_database_outage(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert not is_database_outage(TimeoutError())
    assert not is_database_outage(FileNotFoundError(2, "missing"))


async def test_health_follows_the_database(database_url):
    servers = [await _serve(Replica("down")), await _serve(Replica("up"))]
    watches = [asyncio.create_task(watch_database(dsn, server.set_serving, interval=0.1))
               for dsn, server in ((f"postgresql://postgres@127.0.0.1:{free_port()}/none", servers[0]),
                                   (database_url, servers[1]))]
    try:
        await asyncio.sleep(1.0)
        statuses = []
        for server in servers:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                statuses.append([(await health.Check(health_pb2.HealthCheckRequest(service=name))).status
                                 for name in ("", SERVICE_NAME, LIVENESS_SERVICE)])
    finally:
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        for server in servers:
            await server.stop(0)
    not_serving, serving = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
    # Out of rotation while the database is down, yet alive (a liveness probe does not restart it).
    assert statuses == [[not_serving, not_serving, serving], [serving, serving, serving]]
