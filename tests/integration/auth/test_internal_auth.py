"""Internal calls are authenticated: the four domain services, served for real, answer only the gateway's tokens."""

from __future__ import annotations

import time

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import descriptor_pool, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.decision.v1 import decision_service_pb2_grpc as decision_grpc
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
from services.gateway.server import SERVICE_NAMES
from shared import service_auth
from shared.errors import status_details
from shared.settings import SettingsError
from tests.conftest import tenant_md, wait_for
from tests.internal_auth import signer
from tests.suite import Suite

DOMAIN = tuple(SERVICE_NAMES)


def _channel(suite: Suite, service: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{suite.ports[service]}")


def _call(channel: grpc.aio.Channel, method) -> grpc.aio.Call:
    """Any method of a domain service, called with an empty request and no credentials of its own."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    return kinds[(method.client_streaming, method.server_streaming)](path), method.client_streaming


async def _refusal(multicallable, client_streaming: bool, metadata=()) -> tuple[grpc.StatusCode, str]:
    request = iter([b""]) if client_streaming else b""
    try:
        call = multicallable(request, metadata=metadata, timeout=10)
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as err:
        return err.code(), status_details(err)[1]
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("service", DOMAIN)
async def test_every_method_of_a_domain_service_refuses_a_call_without_a_token(suite, service):
    methods = descriptor_pool.Default().FindServiceByName(SERVICE_NAMES[service]).methods
    async with _channel(suite, service) as channel:
        answers = {m.name: await _refusal(*_call(channel, m)) for m in methods}
    assert len(answers) >= 5
    assert {name: a for name, a in answers.items()
            if a != (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")} == {}


@pytest.mark.parametrize("service", DOMAIN)
async def test_the_tenant_header_alone_is_refused(suite, service):
    method = descriptor_pool.Default().FindServiceByName(SERVICE_NAMES[service]).methods[0]
    async with _channel(suite, service) as channel:
        answer = await _refusal(*_call(channel, method), metadata=(("x-tenant-id", "acme"),))
    assert answer == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize("token, reason", [
    (lambda: signer().mint("acme", issued_at=time.time() - 600), "TOKEN_EXPIRED"),
    (lambda: signer().mint("acme", audience="tailor-public"), "TOKEN_INVALID"),
    (lambda: service_auth.Signer(Ed25519PrivateKey.generate()).mint("acme"), "TOKEN_INVALID"),
    (lambda: "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnQiOiJhY21lIn0.", "TOKEN_INVALID"),
])
async def test_expired_misaddressed_and_foreign_tokens_are_refused(suite, token, reason):
    async with _channel(suite, "decision") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await decision_grpc.DecisionServiceStub(channel).ListPoints(decision_pb.ListPointsRequest(),
                                                                        metadata=_bearer(token()), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status_details(info.value)[1] == reason


async def test_a_token_for_one_tenant_reads_nothing_of_another(suite, tenant):
    other = tenant + "_b"
    async with _channel(suite, "decision") as channel:
        decision = decision_grpc.DecisionServiceStub(channel)
        await decision.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
            name="secret_banner", type=decision_pb.POINT_TYPE_MANUAL_CONTENT,
            template=decision_pb.ResponseTemplate(fields=[
                decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))),
            metadata=tenant_md(other))
        # The header names the other tenant; the token names this one, and only the token counts.
        mine = await decision.ListPoints(decision_pb.ListPointsRequest(),
                                         metadata=(*tenant_md(tenant), ("x-tenant-id", other)))
        theirs = await decision.ListPoints(decision_pb.ListPointsRequest(), metadata=tenant_md(other))
    assert [p.name for p in mine.points] == []
    assert [p.name for p in theirs.points] == ["secret_banner"]

    async with _channel(suite, "identity") as channel:
        identity = identity_grpc.IdentityServiceStub(channel)
        resolved = await identity.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(subjects=[identity_pb.Subject(
            identities=[common_pb2.Identity(type="email", value="b@example.com")])]), metadata=tenant_md(other))
        unified = resolved.resolutions[0].unified_individual_id
        found = await identity.GetIndividual(identity_pb.GetIndividualRequest(unified_individual_id=unified),
                                             metadata=tenant_md(other))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await identity.GetIndividual(identity_pb.GetIndividualRequest(unified_individual_id=unified),
                                         metadata=(*tenant_md(tenant), ("x-tenant-id", other)))
    assert found.individual.unified_individual_id == unified
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", DOMAIN)
async def test_health_and_reflection_answer_without_a_token(suite, service):
    async with _channel(suite, service) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        listed = [s.name async for reply in call for s in reply.list_services_response.service]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE_NAMES[service] in listed


async def test_the_gateway_signs_what_it_forwards_for_an_api_key_tenant(suite):
    tenant, md = await suite.new_tenant()
    await suite.gateway.IngestEvents(gw.IngestEventsRequest(events=[common_pb2.Event(
        message_id="m1", type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=timestamp_pb2.Timestamp(seconds=int(time.time())),
        identities=[
            common_pb2.Identity(type="email", value="signed@example.com")])]), metadata=md)

    async def processed():
        try:
            profile = await suite.gateway.GetProfile(gw.GetProfileRequest(individual_id=common_pb2.Identity(
                type="email", value="signed@example.com")), metadata=md)
        except grpc.aio.AioRpcError:
            return None
        return profile if profile.events else None

    profile = await wait_for(processed, timeout=60)
    assert profile is not None and [e.message_id for e in profile.events] == ["m1"]
    listed = await suite.decision_admin.ListPoints(decision_pb.ListPointsRequest(), metadata=md)
    assert list(listed.points) == []


@pytest.mark.parametrize("module", ["identity", "profile_graph", "recommender", "decision"])
async def test_a_domain_service_without_its_verify_key_setting_refuses_to_start(database_url, monkeypatch, module):
    import importlib

    monkeypatch.delenv(service_auth.VERIFY_KEY_ENV)
    build = importlib.import_module(f"services.{module}.server").build
    with pytest.raises(SettingsError, match=service_auth.VERIFY_KEY_ENV):
        await build(database_url)


async def test_the_gateway_without_its_signing_key_setting_refuses_to_start(database_url, monkeypatch):
    from services.gateway import server as gateway

    monkeypatch.delenv(service_auth.SIGNING_KEY_ENV)
    with pytest.raises(SettingsError, match=service_auth.SIGNING_KEY_ENV):
        await gateway.build(database_url, {name: "127.0.0.1:1" for name in DOMAIN})
