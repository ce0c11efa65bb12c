"""The decide path's profile copies against a real profile graph: kept while nothing changes, dropped as each
committed write is announced (WatchProfileChanges), and only for the individuals it names."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from personalization.common.v1 import common_pb2 as common
from personalization.gateway.v1 import gateway_service_pb2 as gpb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.gateway.decide import Decider
from services.gateway.ports import Stubs
from services.profile_graph.server import build
from shared import client
from shared.runtime import start_built, stop_built
from tests.conftest import keys, schema_connection

HOUR = 3600.0  # copies outlive every test: only the change feed can drop them


@pytest.fixture
async def graph(database_url):
    keys()
    built = await build(database_url)
    running, tasks = await start_built(built)
    channel = client.channel(f"127.0.0.1:{running.port}")
    try:
        yield pb_grpc.ProfileGraphServiceStub(channel)
    finally:
        await channel.close()
        await stop_built(built, running, tasks, grace=0)


@pytest.fixture
async def decider(graph):
    d = Decider(Stubs(identity=None, profile=graph, recommender=None, decision=None),  # type: ignore[arg-type]
                None, None, profile_cache_seconds=HOUR)  # type: ignore[arg-type]
    yield d
    await d.profiles.close()


async def tier(graph, individual: str, value: str) -> None:
    """Writes the individual's tier attribute through the profile graph (an append, announced on commit)."""
    event = common.Event(message_id=uuid.uuid4().hex, type=common.EVENT_TYPE_LOGIN,
                         identities=[common.Identity(type="email", value=f"{individual}@example.com")])
    event.event_time.GetCurrentTime()
    event.attributes.update({"tier": value})
    await graph.AppendEvents(pb.AppendEventsRequest(events=[
        pb.IndividualEvent(unified_individual_id=individual, event=event)]))


async def read_tier(decider: Decider, individual: str) -> str:
    profile = await decider.augment(gpb.GetDecisionsRequest(unified_individual_id=individual), individual)
    return profile["attributes"].get("tier", "")


async def behind_its_back(database_url, tenant: str, individual: str, value: str) -> None:
    """Changes the stored tier directly in the table, so nothing is announced: only a copy hides it."""
    async with schema_connection(database_url, "profile_graph") as conn:
        await conn.execute("UPDATE attributes SET value = to_jsonb($3::text) WHERE tenant_id = $1"
                           " AND individual_id = $2 AND key = 'tier'", tenant, individual, value)


async def until(check, seconds: float = 10.0) -> None:
    """Waits until check() is true; fails after `seconds` (copies live an hour: only an announcement drops one)."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < seconds, "not seen in time"
        await asyncio.sleep(0.005)


async def test_a_copy_is_kept_until_a_committed_write_names_its_individual(decider, graph, database_url, tenant):
    await tier(graph, "ann", "silver")
    await tier(graph, "bob", "silver")

    async def live():
        await read_tier(decider, "ann")
        return decider.profiles.live(tenant)

    await until(live)
    assert await read_tier(decider, "ann") == "silver" and await read_tier(decider, "bob") == "silver"
    await behind_its_back(database_url, tenant, "ann", "hidden")
    await behind_its_back(database_url, tenant, "bob", "hidden")
    assert await read_tier(decider, "ann") == "silver"  # the copy answered

    await tier(graph, "ann", "gold")  # committed, announced: ann's copy goes, bob's stays
    await until(lambda: _is(decider, "ann", "gold"))  # milliseconds (tests/bench/freshness.py measures it)
    assert await read_tier(decider, "bob") == "silver"

    # A definition saved: any profile may have changed, so every copy goes.
    await graph.UpsertSegment(pb.UpsertSegmentRequest(segment=pb.Segment(name="all", rule="true")))
    await until(lambda: _is(decider, "bob", "hidden"))


async def test_another_tenants_writes_never_drop_this_tenants_copies(decider, graph, database_url, tenant):
    await tier(graph, "cy", "silver")

    async def live():
        await read_tier(decider, "cy")
        return decider.profiles.live(tenant)

    await until(live)
    assert await read_tier(decider, "cy") == "silver"
    await behind_its_back(database_url, tenant, "cy", "hidden")
    from shared import context as ctx

    token = ctx.tenant_var.set(f"{tenant}_other")
    try:
        await tier(graph, "cy", "other tenant's")
        await graph.UpsertSegment(pb.UpsertSegmentRequest(segment=pb.Segment(name="all", rule="true")))
    finally:
        ctx.tenant_var.reset(token)
    await asyncio.sleep(0.2)  # well past the few milliseconds an announcement takes
    assert await read_tier(decider, "cy") == "silver"


async def test_nothing_is_kept_when_the_cache_is_off(graph, database_url, tenant):
    d = Decider(Stubs(identity=None, profile=graph, recommender=None, decision=None),  # type: ignore[arg-type]
                None, None, profile_cache_seconds=0)  # type: ignore[arg-type]
    await tier(graph, "dee", "silver")
    assert await read_tier(d, "dee") == "silver"
    await behind_its_back(database_url, tenant, "dee", "hidden")
    assert await read_tier(d, "dee") == "hidden"
    assert not d.profiles.live(tenant)


async def _is(decider: Decider, individual: str, value: str) -> bool:
    return await read_tier(decider, individual) == value
