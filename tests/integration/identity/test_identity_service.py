"""The identity service through a real gRPC server on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import time

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


def subject(*identities: tuple[str, str]) -> pb.Subject:
    return pb.Subject(identities=[common_pb2.Identity(type=t, value=v) for t, v in identities])


async def resolve(stub, tenant, *subjects: pb.Subject, lookup_only=False) -> list[pb.Resolution]:
    reply = await stub.ResolveIdentities(
        pb.ResolveIdentitiesRequest(subjects=list(subjects), lookup_only=lookup_only), metadata=tenant_md(tenant)
    )
    return list(reply.resolutions)


async def resolve_one(stub, tenant, *identities, lookup_only=False) -> pb.Resolution:
    [resolution] = await resolve(stub, tenant, subject(*identities), lookup_only=lookup_only)
    return resolution


async def get(stub, tenant, individual_id) -> pb.Individual:
    reply = await stub.GetIndividual(
        pb.GetIndividualRequest(unified_individual_id=individual_id), metadata=tenant_md(tenant)
    )
    return reply.individual


async def counts(db, tenant) -> tuple[int, int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM individuals WHERE tenant_id = $1) AS n,"
        " (SELECT count(*) FROM identities WHERE tenant_id = $1) AS i,"
        " (SELECT count(*) FROM merge_events WHERE tenant_id = $1) AS m",
        tenant,
    )
    return row["n"], row["i"], row["m"]


def identity_set(individual: pb.Individual) -> set[tuple[str, str]]:
    return {(i.type, i.value) for i in individual.identities}


async def test_unknown_email_creates_an_individual_with_its_normalized_identity(server, tenant, db):
    resolution = await resolve_one(server, tenant, ("email", "  Ada@Example.COM "))
    assert resolution.created
    assert re.fullmatch(r"ind_[0-9a-f]{32}", resolution.unified_individual_id)
    individual = await get(server, tenant, resolution.unified_individual_id)
    assert individual.unified_individual_id == resolution.unified_individual_id
    assert identity_set(individual) == {("email", "ada@example.com")}
    assert list(individual.alias_ids) == []
    assert abs(individual.create_time.ToDatetime().timestamp() - time.time()) < 60
    assert await counts(db, tenant) == (1, 1, 0)


async def test_known_identity_resolves_to_the_same_individual_without_creating(server, tenant, db):
    first = await resolve_one(server, tenant, ("phone", "+1 (555) 010-0000"))
    again = await resolve_one(server, tenant, ("phone", "+15550100000"))
    assert again.unified_individual_id == first.unified_individual_id
    assert not again.created
    assert await counts(db, tenant) == (1, 1, 0)


async def test_new_identities_are_attached_to_the_known_individual(server, tenant):
    first = await resolve_one(server, tenant, ("email", "ada@x.io"))
    second = await resolve_one(server, tenant, ("email", "ada@x.io"), ("customer_id", " C-42 "))
    assert second.unified_individual_id == first.unified_individual_id and not second.created
    individual = await get(server, tenant, first.unified_individual_id)
    assert identity_set(individual) == {("email", "ada@x.io"), ("customer_id", "C-42")}


async def test_anonymous_device_is_stitched_to_the_profile_on_login(server, tenant, db):
    anonymous = await resolve_one(server, tenant, ("device_id", "dev-1"))
    login = await resolve_one(server, tenant, ("device_id", "dev-1"), ("email", "ada@x.io"))
    later = await resolve_one(server, tenant, ("email", "ADA@x.io"))
    assert anonymous.unified_individual_id == login.unified_individual_id == later.unified_individual_id
    assert anonymous.created and not login.created and not later.created
    assert await counts(db, tenant) == (1, 2, 0)


async def test_merging_two_known_individuals_keeps_the_oldest_and_the_merged_id_still_resolves(server, tenant, db):
    old = await resolve_one(server, tenant, ("email", "ada@x.io"))
    young = await resolve_one(server, tenant, ("device_id", "dev-1"))
    merged = await resolve_one(server, tenant, ("device_id", "dev-1"), ("email", "ada@x.io"))
    assert merged.unified_individual_id == old.unified_individual_id
    assert list(merged.merged_individual_ids) == [young.unified_individual_id]
    via_alias = await get(server, tenant, young.unified_individual_id)
    assert via_alias.unified_individual_id == old.unified_individual_id
    assert list(via_alias.alias_ids) == [young.unified_individual_id]
    assert identity_set(via_alias) == {("email", "ada@x.io"), ("device_id", "dev-1")}
    event = await db.fetchrow("SELECT * FROM merge_events WHERE tenant_id = $1", tenant)
    assert (event["survivor_id"], event["merged_id"], event["rule"]) == (
        old.unified_individual_id, young.unified_individual_id, "unique_identity")
    evidence = {(e["type"], e["value"]) for e in json.loads(event["evidence"])}
    assert evidence == {("device_id", "dev-1"), ("email", "ada@x.io")}
    assert await counts(db, tenant) == (2, 2, 1)


async def test_alias_chains_are_flattened_when_the_survivor_is_merged_again(server, tenant, db):
    oldest = await resolve_one(server, tenant, ("email", "a@x.io"))
    middle = await resolve_one(server, tenant, ("email", "b@x.io"))
    youngest = await resolve_one(server, tenant, ("email", "c@x.io"))
    await resolve_one(server, tenant, ("email", "b@x.io"), ("email", "c@x.io"))
    final = await resolve_one(server, tenant, ("email", "c@x.io"), ("email", "a@x.io"))
    assert final.unified_individual_id == oldest.unified_individual_id
    assert list(final.merged_individual_ids) == [middle.unified_individual_id]
    rows = await db.fetch("SELECT individual_id, merged_into FROM individuals WHERE tenant_id = $1", tenant)
    pointers = {r["individual_id"]: r["merged_into"] for r in rows}
    assert pointers == {
        oldest.unified_individual_id: None,
        middle.unified_individual_id: oldest.unified_individual_id,
        youngest.unified_individual_id: oldest.unified_individual_id,
    }
    individual = await get(server, tenant, youngest.unified_individual_id)
    assert individual.unified_individual_id == oldest.unified_individual_id
    assert sorted(individual.alias_ids) == sorted([middle.unified_individual_id, youngest.unified_individual_id])
    assert len(individual.identities) == 3


async def test_a_batch_resolves_subjects_in_order_and_reports_final_survivors(server, tenant, db):
    resolutions = await resolve(
        server, tenant,
        subject(("device_id", "d1")),
        subject(("email", "ada@x.io")),
        subject(("device_id", "d1"), ("email", "ada@x.io")),
        subject(("email", "bob@x.io")),
    )
    survivor = resolutions[0].unified_individual_id
    assert [r.unified_individual_id for r in resolutions[:3]] == [survivor] * 3
    assert len(resolutions[2].merged_individual_ids) == 1
    assert resolutions[3].unified_individual_id not in ("", survivor)
    assert await counts(db, tenant) == (3, 3, 1)
    merged = resolutions[2].merged_individual_ids[0]
    assert (await get(server, tenant, merged)).unified_individual_id == survivor


async def test_lookup_only_creates_nothing_and_returns_an_empty_id(server, tenant, db):
    known = await resolve_one(server, tenant, ("email", "ada@x.io"))
    resolutions = await resolve(
        server, tenant,
        subject(("email", "nobody@x.io")),
        subject(("email", "Ada@x.io"), ("device_id", "new-device")),
        lookup_only=True,
    )
    assert [r.unified_individual_id for r in resolutions] == ["", known.unified_individual_id]
    assert not any(r.created for r in resolutions)
    assert await counts(db, tenant) == (1, 1, 0)


async def test_lookup_only_does_not_merge(server, tenant, db):
    old = await resolve_one(server, tenant, ("email", "ada@x.io"))
    await resolve_one(server, tenant, ("device_id", "dev-1"))
    found = await resolve_one(server, tenant, ("device_id", "dev-1"), ("email", "ada@x.io"), lookup_only=True)
    assert found.unified_individual_id == old.unified_individual_id
    assert list(found.merged_individual_ids) == []
    assert await counts(db, tenant) == (2, 2, 0)


async def test_bad_input_gets_a_violation_per_field_and_stores_nothing(server, tenant, db):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await resolve(
            server, tenant,
            subject(("email", "good@x.io")),
            subject(("email", "fine@x.io"), ("device_id", "   ")),
            subject(),
            subject(("Email", "x@y.io"), ("phone", "n/a"), ("crm_contact_key", "v" * 513)),
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(info.value)
    assert [field for field, _ in violations] == [
        "subjects[1].identities[1].value",
        "subjects[2].identities",
        "subjects[3].identities[0].type",
        "subjects[3].identities[1].value",
        "subjects[3].identities[2].value",
    ]
    assert await counts(db, tenant) == (0, 0, 0)


async def test_empty_request_is_invalid(server, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await resolve(server, tenant)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["subjects"]


async def test_more_than_a_thousand_subjects_is_invalid(server, tenant, db):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await resolve(server, tenant, *[subject(("email", f"{i}@x.io")) for i in range(1001)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["subjects"]
    assert await counts(db, tenant) == (0, 0, 0)


async def test_a_thousand_new_subjects_are_created_in_one_call(server, tenant, db):
    resolutions = await resolve(server, tenant, *[subject(("email", f"{i}@x.io")) for i in range(1000)])
    assert len({r.unified_individual_id for r in resolutions}) == 1000
    assert all(r.created for r in resolutions)
    assert await counts(db, tenant) == (1000, 1000, 0)


async def test_the_same_email_in_two_tenants_is_two_individuals(server, tenant, db):
    other = tenant + "_other"
    mine = await resolve_one(server, tenant, ("email", "ada@x.io"))
    theirs = await resolve_one(server, other, ("email", "ada@x.io"))
    assert mine.unified_individual_id != theirs.unified_individual_id
    assert mine.created and theirs.created
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(server, other, mine.unified_individual_id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert await counts(db, tenant) == (1, 1, 0)
    assert await counts(db, other) == (1, 1, 0)


async def test_unknown_individual_is_not_found(server, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(server, tenant, "ind_00000000000000000000000000000000")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(info.value)[1] == "INDIVIDUAL_NOT_FOUND"


async def test_an_id_with_a_nul_character_is_not_found(server, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(server, tenant, "ind_\x00")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(info.value)[1] == "INDIVIDUAL_NOT_FOUND"


async def test_get_individual_with_an_empty_id_is_invalid(server, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(server, tenant, "")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["unified_individual_id"]


async def test_a_call_without_tenant_is_unauthenticated(server):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.GetIndividual(pb.GetIndividualRequest(unified_individual_id="ind_x"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def warm_up(stub, tenant) -> None:
    """Opens every pooled connection, so the concurrent calls below really run side by side."""
    await asyncio.gather(*[resolve_one(stub, tenant, ("email", f"warm{n}@x.io"), lookup_only=True) for n in range(30)])


async def test_twenty_concurrent_calls_for_the_same_new_email_create_one_individual(server, tenant, db):
    await warm_up(server, tenant)
    for round_ in range(5):  # several races, so a missing lock cannot slip through by luck of timing
        resolutions = await asyncio.gather(
            *[resolve_one(server, tenant, ("email", f"Race{round_}@x.io"), ("device_id", f"dev-{round_}-{n}"))
              for n in range(20)]
        )
        assert len({r.unified_individual_id for r in resolutions}) == 1
        assert sum(r.created for r in resolutions) == 1
    assert await counts(db, tenant) == (5, 5 * 21, 0)


async def test_concurrent_overlapping_merges_converge_on_the_oldest_individual(server, tenant, db):
    ids = [(await resolve_one(server, tenant, ("device_id", f"d{n}"))).unified_individual_id for n in range(12)]
    await warm_up(server, tenant)
    # Each call links two neighbours, in both directions and in both identity orders, so lock orders would
    # clash without sorting and merges race on shared survivors.
    calls = [
        resolve_one(server, tenant, ("device_id", f"d{(n + 1) % 12}"), ("device_id", f"d{n}"))
        if n % 2 else resolve_one(server, tenant, ("device_id", f"d{n}"), ("device_id", f"d{(n + 1) % 12}"))
        for n in range(12)
    ]
    await asyncio.gather(*calls)
    individuals = await db.fetch(
        "SELECT individual_id FROM individuals WHERE tenant_id = $1 AND merged_into IS NULL", tenant
    )
    assert [r["individual_id"] for r in individuals] == [ids[0]]
    owners = await db.fetch("SELECT DISTINCT individual_id FROM identities WHERE tenant_id = $1", tenant)
    assert [r["individual_id"] for r in owners] == [ids[0]]
    for individual_id in ids:
        assert (await get(server, tenant, individual_id)).unified_individual_id == ids[0]
    assert (await counts(db, tenant))[2] == 11
