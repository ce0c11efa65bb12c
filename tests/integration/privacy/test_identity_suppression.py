"""Suppression, erasure and export in the identity service, through a real gRPC server on a real PostgreSQL."""

from __future__ import annotations

import json

import grpc
import pytest

from personalization.common.v1 import common_pb2
from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.server import build
from shared.errors import status_details
from tests.conftest import schema_connection, serving, tenant_md


@pytest.fixture(scope="module")
async def server(database_url):
    async with serving(await build(database_url), pb_grpc.IdentityServiceStub) as stub:
        yield stub


@pytest.fixture(scope="module")
async def db(database_url):
    async with schema_connection(database_url, "identity") as conn:
        yield conn


def ident(t: str, v: str) -> common_pb2.Identity:
    return common_pb2.Identity(type=t, value=v)


def subject(*identities: tuple[str, str]) -> pb.Subject:
    return pb.Subject(identities=[ident(t, v) for t, v in identities])


async def resolve(stub, tenant, *subjects, lookup_only=False) -> list[pb.Resolution]:
    reply = await stub.ResolveIdentities(pb.ResolveIdentitiesRequest(subjects=list(subjects), lookup_only=lookup_only),
                                         metadata=tenant_md(tenant))
    return list(reply.resolutions)


async def suppress(stub, tenant, **target) -> pb.SuppressIndividualResponse:
    return await stub.SuppressIndividual(pb.SuppressIndividualRequest(**target), metadata=tenant_md(tenant))


async def test_a_suppressed_identity_is_not_resolved_and_its_tombstone_is_a_salted_hash(server, db, tenant):
    [person] = await resolve(server, tenant, subject(("email", "Ann@Example.com"), ("device_id", "d-ann")))
    merged = (await resolve(server, tenant, subject(("customer_id", "c-ann"))))[0].unified_individual_id
    await resolve(server, tenant, subject(("customer_id", "c-ann"), ("device_id", "d-ann")))

    found = await suppress(server, tenant, identity=ident("email", " ANN@example.com"))

    assert found.unified_individual_id == person.unified_individual_id and list(found.alias_ids) == [merged]
    assert {(i.type, i.value) for i in found.identities} == {
        ("email", "ann@example.com"), ("device_id", "d-ann"), ("customer_id", "c-ann")}
    assert found.suppressed_identity_count == 3
    stones = await db.fetch("SELECT value_hash, kind FROM suppressions WHERE tenant_id = $1", tenant)
    assert sorted(r["kind"] for r in stones) == ["identity"] * 3 + ["individual"] * 2
    assert all(len(r["value_hash"]) == 32 and b"ann" not in bytes(r["value_hash"]) for r in stones)

    # Suppressed subjects are answered as such, in place; the others of the batch resolve as usual.
    answers = await resolve(server, tenant, subject(("email", "ann@example.com"), ("device_id", "brand-new")),
                            subject(("email", "bob@example.com")), subject(("device_id", "d-ann")))
    assert [(a.suppressed, bool(a.unified_individual_id)) for a in answers] == [(True, False), (False, True),
                                                                               (True, False)]
    [looked_up] = await resolve(server, tenant, subject(("device_id", "d-ann")), lookup_only=True)
    assert looked_up.suppressed and not looked_up.unified_individual_id
    assert not await db.fetchval("SELECT count(*) FROM identities WHERE tenant_id = $1 AND id_value = 'brand-new'",
                                 tenant)

    # Idempotent: the same target again tombstones nothing new.
    again = await suppress(server, tenant, unified_individual_id=merged)
    assert again.unified_individual_id == person.unified_individual_id
    assert await db.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = $1", tenant) == 5


async def test_erase_deletes_every_row_and_forgotten_targets_answer_already_forgotten(server, db, tenant):
    [a] = await resolve(server, tenant, subject(("email", "cy@example.com")))
    await resolve(server, tenant, subject(("device_id", "d-cy")))
    await resolve(server, tenant, subject(("device_id", "d-cy"), ("email", "cy@example.com")))
    [other] = await resolve(server, tenant, subject(("email", "dee@example.com")))
    individual = (await server.GetIndividual(pb.GetIndividualRequest(unified_individual_id=a.unified_individual_id),
                                             metadata=tenant_md(tenant))).individual
    ids = [individual.unified_individual_id, *individual.alias_ids]
    exported = json.loads((await server.ExportIndividual(pb.ExportIndividualRequest(unified_individual_ids=ids),
                                                         metadata=tenant_md(tenant))).json)
    assert {r["id_value"] for r in exported["identities"]} == {"cy@example.com", "d-cy"}
    assert exported["merge_events"] and len(exported["individuals"]) == 2

    found = await suppress(server, tenant, identity=ident("device_id", "d-cy"))
    assert [found.unified_individual_id, *found.alias_ids] == ids and found.suppressed_identity_count == 2
    assert not await db.fetchval("SELECT count(*) FROM identities WHERE tenant_id = $1 AND individual_id = ANY($2)",
                                 tenant, ids), "nothing resolves to a suppressed individual any more"
    # A forget that stopped here is found again by any of its identities, until the erasure completes.
    resumed = await suppress(server, tenant, identity=ident("email", "cy@example.com"))
    assert [resumed.unified_individual_id, *resumed.alias_ids] == ids and not resumed.already_forgotten

    erased = await server.EraseIndividual(pb.EraseIndividualRequest(unified_individual_ids=ids),
                                          metadata=tenant_md(tenant))

    assert erased.erased_rows > 0
    for table, column in (("individuals", "individual_id"), ("identities", "individual_id"),
                          ("source_records", "individual_id"), ("merge_events", "survivor_id")):
        assert not await db.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1 AND {column} = ANY($2)",
                                     tenant, ids), table
    assert await db.fetchval("SELECT count(*) FROM individuals WHERE tenant_id = $1", tenant) == 1
    assert (await server.EraseIndividual(pb.EraseIndividualRequest(unified_individual_ids=ids),
                                         metadata=tenant_md(tenant))).erased_rows == 0
    for target in ({"identity": ident("email", "cy@example.com")}, {"unified_individual_id": a.unified_individual_id}):
        assert (await suppress(server, tenant, **target)).already_forgotten
    assert (await suppress(server, tenant, identity=ident("email", "dee@example.com"))).unified_individual_id == \
        other.unified_individual_id
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await suppress(server, tenant, identity=ident("email", "never@example.com"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_lifting_lets_the_identity_create_a_profile_again(server, tenant):
    await resolve(server, tenant, subject(("email", "eve@example.com"), ("device_id", "d-eve")))
    await suppress(server, tenant, identity=ident("email", "eve@example.com"))

    lifted = await server.LiftSuppression(pb.LiftSuppressionRequest(
        identities=[ident("email", " EVE@example.com "), ident("email", "unknown@example.com")]),
        metadata=tenant_md(tenant))

    assert lifted.lifted_count == 1
    [back] = await resolve(server, tenant, subject(("email", "eve@example.com")))
    assert not back.suppressed and back.unified_individual_id
    [still] = await resolve(server, tenant, subject(("device_id", "d-eve")))
    assert still.suppressed


async def test_bad_targets_and_ids_are_refused_field_by_field(server, tenant):
    cases = [
        (server.SuppressIndividual, pb.SuppressIndividualRequest(), ["identity"]),
        (server.SuppressIndividual, pb.SuppressIndividualRequest(identity=ident("phone", "no phone")),
         ["identity.value"]),
        (server.SuppressIndividual, pb.SuppressIndividualRequest(identity=ident("shoe_size", "9")), ["identity.type"]),
        (server.EraseIndividual, pb.EraseIndividualRequest(), ["unified_individual_ids"]),
        (server.ExportIndividual, pb.ExportIndividualRequest(unified_individual_ids=["ok", "", "a\x00b"]),
         ["unified_individual_ids[1]", "unified_individual_ids[2]"]),
        (server.LiftSuppression, pb.LiftSuppressionRequest(identities=[ident("email", "x@y.z"), ident("nope", "1")]),
         ["identities[1].type"]),
    ]
    for call, request, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(request, metadata=tenant_md(tenant))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(error.value)[0]] == fields


async def test_forgetting_someone_unknown_is_not_found_and_stores_nothing(server, db, tenant):
    await resolve(server, tenant, subject(("email", "fay@example.com")))
    long_id = "u" * 150

    for target in (dict(identity=ident("email", "nobody@example.com")), dict(unified_individual_id=long_id)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await suppress(server, tenant, **target)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert status_details(error.value)[1] == "INDIVIDUAL_NOT_FOUND" and long_id not in error.value.details()

    # The tenant never forgot anyone: no salt and no tombstone were stored by the refused calls.
    assert await db.fetchval("SELECT count(*) FROM suppression_salts WHERE tenant_id = $1", tenant) == 0
    assert await db.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = $1", tenant) == 0
