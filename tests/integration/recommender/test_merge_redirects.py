"""Merges and unmerges in the recommender on a real PostgreSQL, through its gRPC server: interactions recorded for an
individual after it was merged away land on its survivor, a merge applied late onto a merged-away target goes on to
that target's survivor, an unmerge ends the redirect, per tenant, under concurrency, and erasure removes redirects."""

from __future__ import annotations

import asyncio
import json

import pytest

from personalization.common.v1 import common_pb2
from personalization.recommender.v1 import recommender_service_pb2 as pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from services.recommender.server import Settings, build
from tests.conftest import schema_connection, serving, tenant_md

PURCHASE = common_pb2.EVENT_TYPE_PURCHASE
VIEW = common_pb2.EVENT_TYPE_PRODUCT_VIEW


@pytest.fixture(scope="module")
async def stub(database_url):
    async with serving(await build(database_url, Settings(cache_seconds=0.0)), pb_grpc.RecommenderServiceStub) as s:
        yield s


def buy(message: str, who: str, item_id: str) -> pb.Interaction:
    return pb.Interaction(message_id=message, unified_individual_id=who, item_id=item_id, type=PURCHASE, quantity=1)


async def record(stub, tenant: str, *interactions: pb.Interaction) -> int:
    reply = await stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=interactions),
                                          metadata=tenant_md(tenant))
    return reply.recorded_count


async def merge(stub, tenant: str, merged: list[str], survivor: str) -> int:
    reply = await stub.ReassignInteractions(pb.ReassignInteractionsRequest(
        from_individual_ids=merged, to_individual_id=survivor), metadata=tenant_md(tenant))
    return reply.moved_count


async def unmerge(stub, tenant: str, survivor: str, restored: str) -> int:
    reply = await stub.ReassignInteractions(pb.ReassignInteractionsRequest(
        from_individual_ids=[survivor], to_individual_id=restored, only_first_recorded_for=[restored]),
        metadata=tenant_md(tenant))
    return reply.moved_count


async def owners(database_url: str, tenant: str) -> dict[str, str]:
    """{message id: the individual its interaction is stored under}."""
    async with schema_connection(database_url, "recommender") as conn:
        rows = await conn.fetch("SELECT message_id, unified_individual_id FROM interactions WHERE tenant_id = $1",
                                tenant)
    return {r["message_id"]: r["unified_individual_id"] for r in rows}


async def redirects(database_url: str, tenant: str) -> dict[str, str]:
    async with schema_connection(database_url, "recommender") as conn:
        rows = await conn.fetch("SELECT individual_id, survivor_id FROM merged_individuals WHERE tenant_id = $1",
                                tenant)
    return {r["individual_id"]: r["survivor_id"] for r in rows}


async def bought(stub, tenant: str, who: str) -> list[str]:
    reply = await stub.Recommend(pb.RecommendRequest(unified_individual_id=who, strategy="bought_by_you_again"),
                                 metadata=tenant_md(tenant))
    return sorted(i.item_id for i in reply.items)


async def test_an_interaction_recorded_after_its_individual_was_merged_away_lands_on_the_survivor(
        stub, database_url, tenant):
    await record(stub, tenant, buy("m1", "ann", "hat"), buy("m2", "bob", "shoe"))
    assert await merge(stub, tenant, ["ann"], "bob") == 1

    assert await record(stub, tenant, buy("m3", "ann", "sock")) == 1  # identified as ann before the merge

    assert await owners(database_url, tenant) == {"m1": "bob", "m2": "bob", "m3": "bob"}
    assert await bought(stub, tenant, "bob") == ["hat", "shoe", "sock"]
    assert await bought(stub, tenant, "ann") == []
    # A retry of the same chunk, and of the merge, change nothing.
    assert await record(stub, tenant, buy("m3", "ann", "sock")) == 0
    assert await merge(stub, tenant, ["ann"], "bob") == 0
    assert await redirects(database_url, tenant) == {"ann": "bob"}
    assert await bought(stub, tenant, "bob") == ["hat", "shoe", "sock"]


async def test_a_merge_onto_an_individual_merged_away_since_goes_on_to_its_survivor(stub, database_url, tenant):
    await record(stub, tenant, buy("m1", "ann", "hat"), buy("m2", "bob", "shoe"), buy("m3", "cid", "sock"))
    assert await merge(stub, tenant, ["bob"], "cid") == 1

    assert await merge(stub, tenant, ["ann"], "bob") == 1  # applied late: bob is cid's now

    assert await owners(database_url, tenant) == {"m1": "cid", "m2": "cid", "m3": "cid"}
    assert await redirects(database_url, tenant) == {"ann": "cid", "bob": "cid"}
    await record(stub, tenant, buy("m4", "ann", "belt"), buy("m5", "bob", "scarf"))
    assert await bought(stub, tenant, "cid") == ["belt", "hat", "scarf", "shoe", "sock"]
    assert await bought(stub, tenant, "ann") == await bought(stub, tenant, "bob") == []


async def test_a_merge_of_a_survivor_carries_the_individuals_merged_into_it_along(stub, database_url, tenant):
    await record(stub, tenant, buy("m1", "ann", "hat"))
    await merge(stub, tenant, ["ann"], "bob")
    await merge(stub, tenant, ["bob"], "cid")

    await record(stub, tenant, buy("m2", "ann", "shoe"))

    assert await redirects(database_url, tenant) == {"ann": "cid", "bob": "cid"}
    assert await owners(database_url, tenant) == {"m1": "cid", "m2": "cid"}


async def test_after_an_unmerge_the_restored_individual_keeps_what_is_recorded_for_it(stub, database_url, tenant):
    await record(stub, tenant, buy("m1", "ann", "hat"), buy("m2", "bob", "shoe"))
    await merge(stub, tenant, ["ann"], "bob")
    await record(stub, tenant, buy("m3", "ann", "sock"))  # late, for ann: on bob, first recorded for ann

    assert await unmerge(stub, tenant, "bob", "ann") == 2
    assert await unmerge(stub, tenant, "bob", "ann") == 0  # a retry moves nothing more
    await record(stub, tenant, buy("m4", "ann", "belt"))

    assert await owners(database_url, tenant) == {"m1": "ann", "m2": "bob", "m3": "ann", "m4": "ann"}
    assert await redirects(database_url, tenant) == {}
    assert await bought(stub, tenant, "ann") == ["belt", "hat", "sock"]
    assert await bought(stub, tenant, "bob") == ["shoe"]


async def test_a_merge_in_one_tenant_redirects_nothing_in_another_with_the_same_ids(stub, database_url, tenant):
    other = tenant + "-other"
    for t in (tenant, other):
        await record(stub, t, buy("m1", "ann", "hat"), buy("m2", "bob", "shoe"))
    await merge(stub, tenant, ["ann"], "bob")

    for t in (tenant, other):
        await record(stub, t, buy("m3", "ann", "sock"))

    assert await owners(database_url, tenant) == {"m1": "bob", "m2": "bob", "m3": "bob"}
    assert await owners(database_url, other) == {"m1": "ann", "m2": "bob", "m3": "ann"}
    assert await redirects(database_url, other) == {}
    assert await bought(stub, other, "ann") == ["hat", "sock"]


async def test_recordings_racing_merges_leave_nothing_on_merged_away_individuals(stub, database_url, tenant):
    # Two pipeline workers and the sweeper at once: chunks identified before the merges keep arriving for the
    # merged ids while ann -> bob and bob -> cid are applied (in either order).
    people = ["ann", "bob", "cid"]
    chunks = [record(stub, tenant, *(buy(f"m{n}-{k}-{who}", who, f"item{k}") for who in people for k in range(20)))
              for n in range(30)]
    merges = [merge(stub, tenant, ["bob"], "cid"), merge(stub, tenant, ["ann"], "bob")]
    await asyncio.gather(*chunks[:10], merges[0], *chunks[10:20], merges[1], *chunks[20:])
    # Whichever merge ran first, both retried by the sweeper end the same way.
    await merge(stub, tenant, ["bob"], "cid")
    await merge(stub, tenant, ["ann"], "bob")

    assert set((await owners(database_url, tenant)).values()) == {"cid"}
    assert len(await owners(database_url, tenant)) == 30 * 3 * 20
    assert await redirects(database_url, tenant) == {"ann": "cid", "bob": "cid"}
    async with schema_connection(database_url, "recommender") as conn:
        histories = await conn.fetch(
            "SELECT unified_individual_id, item_id, units FROM individual_items WHERE tenant_id = $1 ORDER BY 2",
            tenant)
    assert [tuple(r) for r in histories] == [("cid", f"item{k}", 90.0) for k in sorted(range(20), key=str)]


async def test_erasing_an_individual_removes_its_redirects_on_either_side(stub, database_url, tenant):
    md = tenant_md(tenant)
    await record(stub, tenant, buy("m1", "ann", "hat"), buy("m2", "eve", "shoe"))
    await merge(stub, tenant, ["ann"], "bob")
    await merge(stub, tenant, ["eve"], "dan")
    exported = json.loads((await stub.ExportIndividual(pb.ExportIndividualRequest(unified_individual_ids=["bob"]),
                                                       metadata=md)).json)
    assert [(r["individual_id"], r["survivor_id"]) for r in exported["merged_individuals"]] == [("ann", "bob")]

    erased = await stub.EraseIndividual(pb.EraseIndividualRequest(unified_individual_ids=["bob"]), metadata=md)

    assert erased.erased_rows == 1 + 1 + 1  # the interaction, the item history, the redirect
    assert await redirects(database_url, tenant) == {"eve": "dan"}
    assert await owners(database_url, tenant) == {"m2": "dan"}
