"""Incremental insights: partials per time bucket, and their rebuild for data appended before they existed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.server import build
from tests.conftest import schema_connection, serving, tenant_md
from tests.integration.profile_graph.test_profile_graph import append, purchase, window

NOW = datetime.now(timezone.utc)


async def spend_of(stub, tenant, who):
    reply = await stub.GetProfiles(pb.GetProfilesRequest(unified_individual_ids=[who]), metadata=tenant_md(tenant))
    return reply.profiles[0].insights


async def test_tenants_marked_by_the_migration_get_their_partials_rebuilt_at_start(database_url, tenant):
    md = tenant_md(tenant)
    async with serving(await build(database_url), pb_grpc.ProfileGraphServiceStub) as stub:
        await stub.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
            name="spend_7d", aggregate=pb.AGGREGATE_SUM, field="revenue", window=window(7))), metadata=md)
        await append(stub, tenant, purchase("ann", 0.1, days_ago=1), purchase("ann", 0.2, days_ago=3))
    # As after the migration: history without partials, and the tenant marked for a rebuild.
    async with schema_connection(database_url, "profile_graph") as conn:
        await conn.execute("DELETE FROM insight_partials WHERE tenant_id = $1", tenant)
        await conn.execute("INSERT INTO graph_config (tenant_id, kind, document)"
                           " VALUES ($1, 'insight_partials_pending', '{}')", tenant)
        async with serving(await build(database_url), pb_grpc.ProfileGraphServiceStub) as stub:
            assert await conn.fetchval("SELECT count(*) FROM insight_partials WHERE tenant_id = $1", tenant) == 2
            assert not await conn.fetchval(
                "SELECT count(*) FROM graph_config WHERE tenant_id = $1 AND kind = 'insight_partials_pending'", tenant)
            await append(stub, tenant, purchase("ann", 0.3, days_ago=2))
            assert (await spend_of(stub, tenant, "ann"))["spend_7d"] == 0.6  # exact: 0.1 + 0.2 + 0.3 rounded once


async def test_old_buckets_of_touched_individuals_are_dropped_as_the_window_moves_on(database_url, tenant):
    md = tenant_md(tenant)
    clock = [NOW]
    async with serving(await build(database_url, clock=lambda: clock[0]), pb_grpc.ProfileGraphServiceStub) as stub:
        await stub.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
            name="spend_7d", aggregate=pb.AGGREGATE_SUM, field="revenue", window=window(7))), metadata=md)
        await append(stub, tenant, purchase("bob", 10.0, days_ago=6))
        clock[0] = NOW + timedelta(days=2)
        await append(stub, tenant, purchase("bob", 5.0, days_ago=0))
        assert (await spend_of(stub, tenant, "bob"))["spend_7d"] == 5.0
        async with schema_connection(database_url, "profile_graph") as conn:
            buckets = await conn.fetchval("SELECT count(*) FROM insight_partials WHERE tenant_id = $1", tenant)
        assert buckets == 1
