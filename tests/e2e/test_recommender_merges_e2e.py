"""End to end: a merge moves the merged individual's item interactions (and history) to the survivor in the
recommender, and an unmerge moves back those first recorded for the individual split off."""

from __future__ import annotations

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
from tests.conftest import wait_for


def _event(message_id, type_, *identities, **fields) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=type_, event_time=ts,
                            identities=[common_pb2.Identity(type=t, value=v) for t, v in identities], **fields)


async def _owners(dsn: str, tenant: str) -> dict[str, str]:
    """message id -> the individual each recommender interaction is under."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT message_id, unified_individual_id FROM recommender.interactions"
                                " WHERE tenant_id = $1", tenant)
        return {r["message_id"]: r["unified_individual_id"] for r in rows}
    finally:
        await conn.close()


async def _history(dsn: str, tenant: str) -> set[tuple[str, str, bool]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT unified_individual_id, item_id, bought FROM recommender.individual_items"
                                " WHERE tenant_id = $1", tenant)
        return {(r["unified_individual_id"], r["item_id"], r["bought"]) for r in rows}
    finally:
        await conn.close()


async def _individual(suite, md, identity_type, value) -> str | None:
    try:
        reply = await suite.gateway.GetProfile(pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type=identity_type, value=value)), metadata=md)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return None
    return reply.unified_individual_id


async def test_a_merge_moves_the_anonymous_visitors_interactions_to_the_known_individual(suite):
    tenant, md = await suite.new_tenant()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("buy1", common_pb2.EVENT_TYPE_PURCHASE, ("email", "ann@example.com"),
               line_items=[common_pb2.LineItem(item_id="sku-1", quantity=1, unit_price=10.0)]),
        _event("view1", common_pb2.EVENT_TYPE_PRODUCT_VIEW, ("device_id", "dev-a"), item_id="sku-2"),
    ]), metadata=md)

    async def both_recorded():
        owners = await _owners(suite.dsn, tenant)
        return owners if len(owners) == 2 else None

    before = await wait_for(both_recorded)
    assert before is not None and before["buy1"] != before["view1"]
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("login", common_pb2.EVENT_TYPE_LOGIN, ("device_id", "dev-a"), ("email", "ann@example.com"))]),
        metadata=md)

    async def one_owner():
        owners = await _owners(suite.dsn, tenant)
        return owners if len(set(owners.values())) == 1 else None

    after = await wait_for(one_owner)
    assert after is not None, "the anonymous view never moved to the survivor"
    survivor = await _individual(suite, md, "device_id", "dev-a")
    assert after == {"buy1": survivor, "view1": survivor}
    assert await _history(suite.dsn, tenant) == {(survivor, "sku-1", True), (survivor, "sku-2", False)}


async def test_an_unmerge_moves_back_the_interactions_first_recorded_for_the_individual_split_off(suite):
    identity = identity_grpc.IdentityServiceStub(suite.channel)
    tenant, md = await suite.new_tenant()
    await identity.UpsertIdentityType(identity_pb.UpsertIdentityTypeRequest(identity_type=identity_pb.IdentityType(
        name="phone", unique=False, normalization=identity_pb.NORMALIZATION_PHONE, default_region="US")),
        metadata=md)
    first = _event("n1", common_pb2.EVENT_TYPE_PRODUCT_VIEW, ("email", "jon@example.com"),
                   ("phone", "+1 415 555 0100"), item_id="sku-a")
    first.attributes.update({"first_name": "Jonathan", "last_name": "Smith"})
    second = _event("n2", common_pb2.EVENT_TYPE_PRODUCT_VIEW, ("customer_id", "c-9"), item_id="sku-b")
    # The third record links the customer to the first one through the default rule (phone + names).
    third = _event("n3", common_pb2.EVENT_TYPE_PAGE_VIEW, ("customer_id", "c-9"), ("phone", "+14155550100"))
    third.attributes.update({"first_name": "Jonathon", "last_name": "Smith"})
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[first]), metadata=md)
    kept = await wait_for(lambda: _individual(suite, md, "email", "jon@example.com"))
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[second]), metadata=md)
    split_off = await wait_for(lambda: _individual(suite, md, "customer_id", "c-9"))
    assert kept and split_off and kept != split_off
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[third]), metadata=md)

    async def merged():
        owners = await _owners(suite.dsn, tenant)
        return owners if owners.get("n2") == kept else None

    assert await wait_for(merged) == {"n1": kept, "n2": kept}, "the merge never moved n2's interaction"
    assert await _history(suite.dsn, tenant) == {(kept, "sku-a", False), (kept, "sku-b", False)}
    await identity.Unmerge(identity_pb.UnmergeRequest(unified_individual_id=split_off), metadata=md)
    # Unmerge through the gateway propagates at once (it drains the merge outbox).
    assert await _owners(suite.dsn, tenant) == {"n1": kept, "n2": split_off}
    assert await _history(suite.dsn, tenant) == {(kept, "sku-a", False), (split_off, "sku-b", False)}
