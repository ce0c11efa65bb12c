"""Ids longer than the contract declares are refused naming the field, before anything is written (a fuzzer found
them failing PostgreSQL's index row limit as INTERNAL)."""

from __future__ import annotations

import grpc
import pytest

from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.server import build
from shared.errors import status_details
from tests.conftest import schema_connection, serving, tenant_md

LONG = "x" * 5000


async def refused(call) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert LONG[:100] not in info.value.details()  # never the whole input
    return [f for f, _ in status_details(info.value)[0]]


async def test_over_long_item_and_individual_ids_are_refused_naming_the_field_and_store_nothing(database_url, tenant):
    md = tenant_md(tenant)
    async with serving(await build(database_url), pb_grpc.ProfileGraphServiceStub) as stub:
        items = [pb.Item(item_id="sku-1", name="ok"), pb.Item(item_id=LONG, name="too long")]
        assert await refused(stub.UpsertItems(pb.UpsertItemsRequest(items=items), metadata=md)) == [
            "items[1].item_id"]
        assert await refused(stub.ReassignIndividual(pb.ReassignIndividualRequest(
            from_individual_ids=["a", LONG], to_individual_id=LONG), metadata=md)) == [
            "from_individual_ids[1]", "to_individual_id"]
        async with schema_connection(database_url, "profile_graph") as conn:
            for table in ("items", "merged_individuals"):
                assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant) == 0
        # Within the limits, the same calls work.
        await stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id="s" * 256, name="at the limit")]),
                               metadata=md)
        reply = await stub.GetItems(pb.GetItemsRequest(item_ids=["s" * 256]), metadata=md)
        assert [i.name for i in reply.items] == ["at the limit"]
