"""The shared server and client plumbing, exercised through real grpc.aio servers on 127.0.0.1:0."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from shared import client, context, service_auth
from shared.errors import InvalidArgument, NotFound, status_details
from shared.server import Service, start_server
from tests.conftest import tenant_md

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name


class Downstream(pb_grpc.IdentityServiceServicer):
    """Echoes what the call context holds, so the test can see what arrived."""

    async def GetIndividual(self, request, context_):
        if request.unified_individual_id == "missing":
            raise NotFound("no such individual", reason="INDIVIDUAL_NOT_FOUND")
        if request.unified_individual_id == "boom":
            raise RuntimeError("secret detail that must not leak")
        remaining = context.remaining_seconds()
        return pb.GetIndividualResponse(
            individual=pb.Individual(
                unified_individual_id=context.current_tenant(),
                alias_ids=[context.request_id_var.get(), f"{remaining:.3f}"],
            )
        )

    async def ResolveIdentities(self, request, context_):
        raise InvalidArgument([("subjects[0].identities[0].value", "must not be empty"), ("subjects[1]", "empty")])


class Upstream(pb_grpc.IdentityServiceServicer):
    """Forwards to Downstream through the shared client factory."""

    def __init__(self, target: str):
        self.stub = pb_grpc.IdentityServiceStub(client.channel(target))

    async def GetIndividual(self, request, context_):
        return await self.stub.GetIndividual(request)

    async def ResolveIdentities(self, request, context_):
        return await self.stub.ResolveIdentities(request)


@pytest.fixture
async def chain():
    verify = service_auth.verifier_from_env().authenticate
    down = await start_server([Service(pb_grpc.add_IdentityServiceServicer_to_server, Downstream(), SERVICE_NAME)],
                              port=0, host="127.0.0.1", authenticate=verify)
    up = await start_server(
        [Service(pb_grpc.add_IdentityServiceServicer_to_server, Upstream(f"127.0.0.1:{down.port}"), SERVICE_NAME)],
        port=0, host="127.0.0.1", authenticate=verify)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{up.port}")
    yield channel, pb_grpc.IdentityServiceStub(channel)
    await channel.close()
    await up.stop(0)
    await down.stop(0)


async def test_tenant_request_id_and_deadline_reach_the_downstream_service(chain):
    _, stub = chain
    reply = await stub.GetIndividual(
        pb.GetIndividualRequest(unified_individual_id="x"),
        metadata=(*tenant_md("acme"), ("x-request-id", "req-123")),
        timeout=2.0,
    )
    assert reply.individual.unified_individual_id == "acme"
    assert reply.individual.alias_ids[0] == "req-123"
    # The caller's 2 s deadline, not the client factory's 10 s cap (grpc-timeout is rounded on the wire).
    assert 0 < float(reply.individual.alias_ids[1]) < 2.1


async def test_call_without_token_is_unauthenticated(chain):
    _, stub = chain
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetIndividual(pb.GetIndividualRequest(unified_individual_id="x"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status_details(info.value)[1] == "TOKEN_MISSING"


async def test_downstream_field_violations_are_relayed_with_their_paths(chain):
    _, stub = chain
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ResolveIdentities(pb.ResolveIdentitiesRequest(), metadata=tenant_md("acme"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(info.value)
    assert [f for f, _ in violations] == ["subjects[0].identities[0].value", "subjects[1]"]


async def test_not_found_carries_its_reason(chain):
    _, stub = chain
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetIndividual(pb.GetIndividualRequest(unified_individual_id="missing"),
                                 metadata=tenant_md("acme"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(info.value)[1] == "INDIVIDUAL_NOT_FOUND"


async def test_unexpected_error_is_internal_without_the_traceback(chain):
    _, stub = chain
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetIndividual(pb.GetIndividualRequest(unified_individual_id="boom"),
                                 metadata=tenant_md("acme"))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (info.value.details() or "")


async def test_health_is_serving_and_reflection_lists_the_service(chain):
    channel, _ = chain
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    async for response in call:
        names = [s.name for s in response.list_services_response.service]
        break
    assert SERVICE_NAME in names
