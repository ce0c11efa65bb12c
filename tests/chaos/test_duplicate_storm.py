"""Chaos: a duplicate storm, the same message ids sent again and again, at once, by two tenants."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from tests.conftest import schema_connection, wait_for
from tests.suite import Suite

EVENTS = 300
SENDERS = 6
ROUNDS = 4


@pytest.fixture
async def suite(database_url):
    s = await Suite(database_url).start()
    yield s
    await s.stop()


def _purchase(i: int) -> common_pb2.Event:
    return common_pb2.Event(
        message_id=f"storm-{i}", type=common_pb2.EVENT_TYPE_PURCHASE,
        event_time=timestamp_pb2.Timestamp(seconds=int(time.time()) - 30),
        identities=[common_pb2.Identity(type="customer_id", value=f"c{i % 30}")],
        line_items=[common_pb2.LineItem(item_id="sku", quantity=1, unit_price=1.0)])


async def _insert_spend_insight(suite: Suite, md) -> None:
    from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb

    await suite.profile_admin.UpsertInsight(profile_pb.UpsertInsightRequest(insight=profile_pb.Insight(
        name="spend", aggregate=profile_pb.AGGREGATE_SUM, field="revenue", event_type=common_pb2.EVENT_TYPE_PURCHASE)),
        metadata=md)


async def test_each_tenant_stores_and_processes_its_own_copy_of_the_same_message_ids_once(suite, database_url):
    tenants = [await suite.new_tenant() for _ in range(2)]
    for _, md in tenants:
        await _insert_spend_insight(suite, md)
    events = [_purchase(i) for i in range(EVENTS)]
    stored = {tenant: 0 for tenant, _ in tenants}

    async def sender(tenant: str, md, offset: int) -> None:
        for r in range(ROUNDS):
            # Overlapping, shuffled slices: every message id is sent many times, often at the same moment.
            start = (offset * 37 + r * 53) % EVENTS
            batch = (events[start:] + events[:start])[: EVENTS // 2]
            reply = await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=batch), metadata=md)
            stored[tenant] += sum(a.status == pb.ACK_STATUS_STORED for a in reply.acks)

    await asyncio.gather(*(sender(t, md, k) for t, md in tenants for k in range(SENDERS)))
    for tenant, _md in tenants:
        assert stored[tenant] <= EVENTS

    async with schema_connection(database_url, "profile_graph") as conn:
        async def processed(tenant: str) -> bool:
            return await conn.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", tenant) == EVENTS

        for tenant, md in tenants:
            # Top up what no sender happened to cover, then wait for the pipeline.
            await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events), metadata=md)
            assert await wait_for(lambda t=tenant: processed(t), timeout=60)
            spend = await conn.fetchval(
                "SELECT sum(value) FROM insight_values WHERE tenant_id = $1 AND name = 'spend'", tenant)
            assert spend == EVENTS * 1.0  # every purchase counted exactly once
    async with schema_connection(database_url, "gateway") as conn:
        for tenant, _ in tenants:
            rows = await conn.fetchval("SELECT count(*) FROM inbox WHERE tenant_id = $1", tenant)
            assert rows == EVENTS
