"""The gateway's cache of each tenant's identity types: fresh for a few seconds, refreshed once on a miss, and never
a reason for ingest to wait on an unreachable identity service."""

from __future__ import annotations

import time

import grpc
import pytest

from personalization.common.v1 import common_pb2
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from services.gateway.ingest import IdentityTypes, Ingest
from shared.errors import InvalidArgument


class FakeIdentity:
    def __init__(self, *types: str):
        self.types = list(types)
        self.calls = 0
        self.down = False

    async def ListIdentityTypes(self, request, timeout=None):
        self.calls += 1
        if self.down:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        return identity_pb.ListIdentityTypesResponse(
            identity_types=[identity_pb.IdentityType(name=t) for t in self.types])


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _event(*types: str) -> common_pb2.Event:
    event = common_pb2.Event(message_id="m1", type=common_pb2.EVENT_TYPE_PAGE_VIEW,
                             identities=[common_pb2.Identity(type=t, value="v") for t in types])
    event.event_time.seconds = int(time.time())
    return event


@pytest.fixture
def world():
    identity, clock = FakeIdentity("email", "device_id"), Clock()
    return identity, clock, Ingest(store=None, identity_types=IdentityTypes(identity, ttl=5.0, clock=clock))


async def test_known_types_are_read_once_per_ttl(world):
    identity, clock, ingest = world
    await ingest.validate("t1", [_event("email")])
    await ingest.validate("t1", [_event("device_id")])
    assert identity.calls == 1
    clock.now += 6
    await ingest.validate("t1", [_event("email")])
    assert identity.calls == 2


async def test_a_type_declared_a_moment_ago_is_accepted_after_one_refresh(world):
    identity, _, ingest = world
    await ingest.validate("t1", [_event("email")])
    identity.types.append("loyalty_card")
    await ingest.validate("t1", [_event("loyalty_card")])
    assert identity.calls == 2


async def test_an_unknown_type_is_refused_after_one_refresh_naming_the_field(world):
    identity, _, ingest = world
    with pytest.raises(InvalidArgument) as info:
        await ingest.validate("t1", [_event("email", "loyalty_card")])
    assert info.value.violations == [("events[0].identities[1].type", "unknown identity type: declare it first")]
    assert identity.calls == 2


async def test_each_tenant_has_its_own_types(world):
    identity, _, ingest = world
    await ingest.validate("t1", [_event("email")])
    identity.types = ["email"]
    with pytest.raises(InvalidArgument):
        await ingest.validate("t2", [_event("device_id")])


async def test_an_unreachable_identity_service_does_not_stop_ingest(world):
    identity, clock, ingest = world
    identity.down = True
    # Nothing known yet: the form of the name only.
    await ingest.validate("t1", [_event("anything_well_formed")])
    identity.down = False
    clock.now += 2
    await ingest.validate("t1", [_event("email")])
    identity.down = True
    clock.now += 6
    # Known before: those types still apply while the service is away.
    with pytest.raises(InvalidArgument):
        await ingest.validate("t1", [_event("loyalty_card")])
    await ingest.validate("t1", [_event("email")])


class FakeStore:
    async def store_events(self, tenant_id, ids, payloads, routes, bulk):
        return set(ids)


async def test_skip_invalid_refreshes_once_for_a_new_type_and_rejects_only_the_events_still_unknown(world):
    identity, _, ingest = world
    ingest.store = FakeStore()
    await ingest.validate("t1", [_event("email")])
    identity.types.append("loyalty_card")
    events = [_event("loyalty_card"), _event("email", "no_such_type")]
    events[1].message_id = "m2"
    acks, rejected = await ingest.ingest_valid("t1", events)
    assert acks == [("m1", True)]
    assert rejected == {1: [("events[1].identities[1].type", "unknown identity type: declare it first")]}
    assert identity.calls == 2
