"""Identity types, rulesets, fuzzy matching, re-runs, unmerge and merge history through gRPC on PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import struct_pb2

from personalization.common.v1 import common_pb2
from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.server import build
from services.identity.service import Settings
from shared.errors import status_details
from tests.conftest import schema_connection, serving, tenant_md

EXACT, NORMALIZED, FUZZY = pb.MATCH_METHOD_EXACT, pb.MATCH_METHOD_EXACT_NORMALIZED, pb.MATCH_METHOD_FUZZY


@pytest.fixture(scope="module")
async def server(database_url):
    async with serving(await build(database_url, Settings(max_cluster=3, config_ttl_seconds=0)),
                       pb_grpc.IdentityServiceStub) as stub:
        yield stub


@pytest.fixture(scope="module")
async def db(database_url):
    async with schema_connection(database_url, "identity") as conn:
        yield conn


def subject(*identities, **attributes) -> pb.Subject:
    attrs = struct_pb2.Struct()
    attrs.update(attributes)
    return pb.Subject(identities=[common_pb2.Identity(type=t, value=v) for t, v in identities], attributes=attrs)


async def resolve(stub, tenant, *subjects) -> list[str]:
    reply = await stub.ResolveIdentities(pb.ResolveIdentitiesRequest(subjects=list(subjects)),
                                         metadata=tenant_md(tenant))
    return [r.unified_individual_id for r in reply.resolutions]


def attr(name, method, precision=0) -> pb.MatchCriterion:
    return pb.MatchCriterion(attribute=name, method=method, precision=precision)


def ident(name, method, precision=0) -> pb.MatchCriterion:
    return pb.MatchCriterion(identity_type=name, method=method, precision=precision)


async def create_ruleset(stub, tenant, *rules: tuple[str, list[pb.MatchCriterion]], custom=()):
    reply = await stub.CreateRuleset(pb.CreateRulesetRequest(ruleset=pb.Ruleset(
        rules=[pb.MatchRule(name=n, criteria=c) for n, c in rules], custom_attributes=list(custom))),
        metadata=tenant_md(tenant))
    return reply.ruleset


async def get(stub, tenant, individual_id) -> pb.Individual:
    return (await stub.GetIndividual(pb.GetIndividualRequest(unified_individual_id=individual_id),
                                     metadata=tenant_md(tenant))).individual


async def events(stub, tenant, individual_id="") -> list[pb.MergeEvent]:
    reply = await stub.ListMergeEvents(pb.ListMergeEventsRequest(unified_individual_id=individual_id),
                                       metadata=tenant_md(tenant))
    return list(reply.merge_events)


async def run(stub, tenant) -> list[pb.RunRulesetResponse]:
    return [p async for p in stub.RunRuleset(pb.RunRulesetRequest(), metadata=tenant_md(tenant))]


async def test_the_default_ruleset_merges_phone_plus_fuzzy_first_name_plus_exact_last_name(server, tenant):
    await server.UpsertIdentityType(pb.UpsertIdentityTypeRequest(identity_type=pb.IdentityType(
        name="phone", unique=False, normalization=pb.NORMALIZATION_PHONE, default_region="GB")),
        metadata=tenant_md(tenant))
    [a] = await resolve(server, tenant, subject(("customer_id", "c1"), ("phone", "020 7946 0958"),
                                                first_name="Jonathan", last_name="Smith"))
    [b] = await resolve(server, tenant, subject(("customer_id", "c2")))
    [b2, c] = await resolve(
        server, tenant,
        subject(("customer_id", "c2"), ("phone", "+44 20 7946 0958"), first_name="Jonathon", last_name="Smith"),
        subject(("customer_id", "c3"), ("phone", "+44 20 7946 0958"), first_name="Jonathan", last_name="Smyth"),
    )
    assert a == b2 != c
    assert (await get(server, tenant, b)).unified_individual_id == a
    individual = await get(server, tenant, a)
    assert ("phone", "+442079460958") in {(i.type, i.value) for i in individual.identities}
    assert individual.source_record_count == 3
    [merge] = [e for e in await events(server, tenant) if e.kind == pb.MERGE_EVENT_KIND_MERGE]
    assert (merge.survivor_individual_id, merge.other_individual_id, merge.rule) == (a, b, "phone_and_name")


async def test_each_method_matches_as_documented(server, tenant):
    await create_ruleset(server, tenant, ("exact", [attr("company", EXACT)]),
                         ("normalized", [attr("city", NORMALIZED)]),
                         ("fuzzy", [attr("last_name", FUZZY, pb.FUZZY_PRECISION_HIGH)]))
    ids = await resolve(
        server, tenant,
        subject(("customer_id", "1"), company="Acme"), subject(("customer_id", "2"), company="Acme"),
        subject(("customer_id", "3"), company="acme"),
        subject(("customer_id", "4"), city="São Paulo"), subject(("customer_id", "5"), city="sao  paulo"),
        subject(("customer_id", "6"), last_name="Lovelace"), subject(("customer_id", "7"), last_name="Lovelase"),
        subject(("customer_id", "8"), last_name="Babbage"),
    )
    assert ids[0] == ids[1] != ids[2]
    assert ids[3] == ids[4]
    assert ids[5] == ids[6] != ids[7]


async def test_blank_values_never_match(server, tenant):
    await create_ruleset(server, tenant, ("last", [attr("last_name", EXACT)]))
    a, b = await resolve(server, tenant, subject(("customer_id", "1"), last_name=" "),
                         subject(("customer_id", "2"), last_name=""))
    assert a != b


async def test_rules_are_ored_and_criteria_anded(server, tenant):
    await create_ruleset(server, tenant, ("both", [attr("first_name", EXACT), attr("last_name", EXACT)]),
                         ("city", [attr("city", EXACT)]))
    ids = await resolve(
        server, tenant,
        subject(("customer_id", "1"), first_name="Ada", last_name="Lee"),
        subject(("customer_id", "2"), first_name="Ada", last_name="Kim"),  # AND fails
        subject(("customer_id", "3"), first_name="Ada", last_name="Lee", city="Leeds"),  # rule 1
        subject(("customer_id", "4"), city="Leeds"),  # rule 2
    )
    assert ids[0] == ids[2] == ids[3] != ids[1]


async def test_the_size_guard_refuses_a_merge_and_records_why(server, tenant):
    for i in range(3):
        await resolve(server, tenant, subject(("email", "big@x.io"), ("device_id", f"d{i}")))
    [small] = await resolve(server, tenant, subject(("email", "small@x.io")))
    [both] = await resolve(server, tenant, subject(("email", "small@x.io"), ("email", "big@x.io")))
    [refused] = [e for e in await events(server, tenant) if e.kind == pb.MERGE_EVENT_KIND_REFUSED]
    assert "above the limit of 3" in refused.reason
    assert both != small and (refused.survivor_individual_id, refused.other_individual_id) == (both, small)
    assert (await get(server, tenant, small)).unified_individual_id == small


async def test_two_concurrent_first_sightings_matched_only_by_a_rule_make_one_individual(server, tenant):
    await create_ruleset(server, tenant, ("dob_name", [attr("date_of_birth", EXACT), attr("last_name", EXACT)]))
    for round_ in range(5):
        ids = await asyncio.gather(*[
            resolve(server, tenant, subject(("customer_id", f"{round_}-{i}"), date_of_birth=f"199{round_}-01-01",
                                            last_name="Lee"))
            for i in range(2)
        ])
        survivors = {(await get(server, tenant, i)).unified_individual_id for [i] in ids}
        assert len(survivors) == 1


async def test_bad_rulesets_get_field_paths_and_change_nothing(server, tenant, db):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await create_ruleset(server, tenant, ("ok", [attr("first_name", EXACT)]),
                             ("bad", [attr("shoe_size", EXACT), ident("loyalty_no", EXACT),
                                      attr("city", FUZZY), pb.MatchCriterion(attribute="city")]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == [
        "ruleset.rules[1].criteria[0].attribute", "ruleset.rules[1].criteria[1].identity_type",
        "ruleset.rules[1].criteria[2].precision", "ruleset.rules[1].criteria[3].method"]
    assert await db.fetchval("SELECT count(*) FROM rulesets WHERE tenant_id = $1", tenant) == 0
    assert (await server.GetRuleset(pb.GetRulesetRequest(), metadata=tenant_md(tenant))).ruleset.version == 0


async def test_unknown_types_and_oversize_attributes_are_refused(server, tenant, db):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await resolve(server, tenant, subject(("loyalty_no", "1")), subject(("email", "a@x.io"), city="x" * 600))
    assert [f for f, _ in status_details(info.value)[0]] == [
        "subjects[0].identities[0].type", "subjects[1].attributes.city"]
    assert await db.fetchval("SELECT count(*) FROM source_records WHERE tenant_id = $1", tenant) == 0


async def test_numbers_and_booleans_are_attributes_as_text_and_lists_are_ignored(server, tenant, db):
    # Lists and objects are valid event attributes (events bring their attributes here) that no criterion compares.
    [a] = await resolve(server, tenant, subject(("email", "a@x.io"), postal_code=2000, vip=True, company=None,
                                                tags=["a", "b"], address={"city": "Oslo"}))
    stored = await db.fetchval("SELECT attributes FROM source_records WHERE tenant_id = $1", tenant)
    assert stored == '{"vip": "true", "postal_code": "2000"}'
    # the same content again (a number written as text this time) is the same record: nothing new
    [b] = await resolve(server, tenant, subject(("email", "a@x.io"), postal_code="2000", vip=True))
    assert b == a and await db.fetchval("SELECT count(*) FROM source_records WHERE tenant_id = $1", tenant) == 1


async def test_custom_types_can_be_added_and_changing_uniqueness_in_use_fails(server, tenant):
    md = tenant_md(tenant)
    await server.UpsertIdentityType(pb.UpsertIdentityTypeRequest(identity_type=pb.IdentityType(
        name="loyalty_no", unique=True, normalization=pb.NORMALIZATION_TRIM_LOWERCASE)), metadata=md)
    a, b = await resolve(server, tenant, subject(("loyalty_no", " L-1 ")), subject(("loyalty_no", "l-1")))
    assert a == b
    listed = await server.ListIdentityTypes(pb.ListIdentityTypesRequest(), metadata=md)
    assert "loyalty_no" in {t.name for t in listed.identity_types}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.UpsertIdentityType(pb.UpsertIdentityTypeRequest(identity_type=pb.IdentityType(
            name="loyalty_no", unique=False, normalization=pb.NORMALIZATION_TRIM)), metadata=md)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(info.value)[1] == "IDENTITY_TYPE_IN_USE"


async def test_unmerge_splits_back_reports_what_moved_and_is_not_redone(server, tenant, db):
    [old] = await resolve(server, tenant, subject(("email", "ada@x.io")))
    [young] = await resolve(server, tenant, subject(("device_id", "dev-1"), first_name="Ada"))
    [merged] = await resolve(server, tenant, subject(("device_id", "dev-1"), ("email", "ada@x.io")))
    assert merged == old
    reply = await server.Unmerge(pb.UnmergeRequest(unified_individual_id=young), metadata=tenant_md(tenant))
    assert (reply.unified_individual_id, reply.survivor_individual_id) == (young, old)
    assert [(i.type, i.value) for i in reply.identities] == [("device_id", "dev-1")]
    assert (await get(server, tenant, young)).unified_individual_id == young
    assert {(i.type, i.value) for i in (await get(server, tenant, old)).identities} == {("email", "ada@x.io")}
    # The same evidence again does not merge them back.
    [again] = await resolve(server, tenant, subject(("device_id", "dev-1"), ("email", "ada@x.io"), city="Leeds"))
    assert again == old
    assert (await get(server, tenant, young)).unified_individual_id == young
    kinds = [e.kind for e in await events(server, tenant, young)]
    assert kinds[:2] == [pb.MERGE_EVENT_KIND_REFUSED, pb.MERGE_EVENT_KIND_UNMERGE]
    # A re-run keeps them apart too.
    await run(server, tenant)
    assert (await get(server, tenant, young)).unified_individual_id == young


async def test_unmerge_of_a_survivor_or_unknown_id_fails(server, tenant):
    [a] = await resolve(server, tenant, subject(("email", "a@x.io")))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.Unmerge(pb.UnmergeRequest(unified_individual_id=a), metadata=tenant_md(tenant))
    assert (info.value.code(), status_details(info.value)[1]) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_MERGED")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.Unmerge(pb.UnmergeRequest(unified_individual_id="ind_nope"), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_rerun_streams_progress_and_keeps_ids_of_unchanged_clusters(server, tenant, db):
    ids = [(await resolve(server, tenant, s))[0] for s in (
        subject(("email", "a@x.io"), ("device_id", "d1")), subject(("email", "b@x.io"), last_name="Lee"),
        subject(("email", "c@x.io"), last_name="Lee"))]
    assert len(set(ids)) == 3
    steps = await run(server, tenant)
    assert steps[-1].phase == pb.RUN_PHASE_DONE
    assert (steps[-1].clusters, steps[-1].kept_ids, steps[-1].new_ids) == (3, 3, 0)
    assert [(await get(server, tenant, i)).unified_individual_id for i in ids] == ids
    # A new ruleset links b and c on the last name: the re-run merges c into the older b, and a keeps its id.
    await create_ruleset(server, tenant, ("last", [attr("last_name", EXACT)]))
    done = (await run(server, tenant))[-1]
    assert (done.clusters, done.merged) == (2, 1)
    assert [(await get(server, tenant, i)).unified_individual_id for i in ids] == [ids[0], ids[1], ids[1]]
    again = (await run(server, tenant))[-1]
    assert (again.clusters, again.kept_ids, again.merged) == (2, 2, 0)


async def test_merge_events_page_and_bad_page_arguments_fail(server, tenant):
    for n in range(3):
        await resolve(server, tenant, subject(("email", f"{n}a@x.io")))
        await resolve(server, tenant, subject(("email", f"{n}b@x.io")))
        await resolve(server, tenant, subject(("email", f"{n}a@x.io"), ("email", f"{n}b@x.io")))
    md = tenant_md(tenant)
    first = await server.ListMergeEvents(pb.ListMergeEventsRequest(page_size=2), metadata=md)
    second = await server.ListMergeEvents(pb.ListMergeEventsRequest(page_size=2, page_token=first.next_page_token),
                                          metadata=md)
    assert len(first.merge_events) == 2 and len(second.merge_events) == 1 and second.next_page_token == ""
    assert first.merge_events[0].evidence and first.merge_events[0].rule == "unique_identity"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.ListMergeEvents(pb.ListMergeEventsRequest(page_size=-1, page_token="zz"), metadata=md)
    assert [f for f, _ in status_details(info.value)[0]] == ["page_size", "page_token"]
