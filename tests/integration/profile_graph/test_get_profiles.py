"""GetProfiles: many profiles in one call, the same messages as GetProfile, in request order."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from personalization.common.v1 import common_pb2 as common
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.server import build
from shared.errors import status_details
from tests.conftest import serving, tenant_md
from tests.integration.profile_graph.test_profile_graph import append, event, purchase


@pytest.fixture(scope="module")
async def service(database_url):
    async with serving(await build(database_url), pb_grpc.ProfileGraphServiceStub) as stub:
        yield stub


async def fill(stub, tenant):
    md = tenant_md(tenant)
    await stub.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
        name="spend", aggregate=pb.AGGREGATE_SUM, field="revenue", event_type=common.EVENT_TYPE_PURCHASE)), metadata=md)
    await stub.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
        name="spend_by_item", aggregate=pb.AGGREGATE_SUM, field="revenue", dimension="item_id")), metadata=md)
    await stub.UpsertSegment(pb.UpsertSegmentRequest(segment=pb.Segment(name="big", rule="insights.spend >= 100.0")),
                             metadata=md)
    await append(stub, tenant, purchase("ann", 150.0), purchase("ann", 20.0, days_ago=1),
                 event("bob", attributes={"city": "Lyon"}), purchase("bob", 5.0))
    await stub.SetConsents(pb.SetConsentsRequest(unified_individual_id="bob", consents=[
        common.Consent(purpose="email", status=common.CONSENT_STATUS_GRANTED)]), metadata=md)


async def one(stub, tenant, individual, **kw):
    return (await stub.GetProfile(pb.GetProfileRequest(unified_individual_id=individual, **kw),
                                  metadata=tenant_md(tenant))).profile


async def test_profiles_equal_get_profile_for_each_id_in_request_order(service, tenant):
    await fill(service, tenant)
    ids = ["bob", "nobody", "ann", "bob"]
    reply = await service.GetProfiles(pb.GetProfilesRequest(unified_individual_ids=ids), metadata=tenant_md(tenant))
    assert [p.unified_individual_id for p in reply.profiles] == ids
    assert list(reply.profiles) == [await one(service, tenant, i) for i in ids]
    ann = reply.profiles[2]
    assert ann.insights["spend"] == 170.0 and list(ann.segments) == ["big"] and len(ann.events) == 2
    assert reply.profiles[0].attributes["city"] == "Lyon" and reply.profiles[0].consents[0].purpose == "email"
    assert not reply.profiles[1].HasField("update_time") and not reply.profiles[1].events


async def test_read_mask_and_limits_apply_to_every_profile(service, tenant):
    await fill(service, tenant)
    mask = field_mask_pb2.FieldMask(paths=["events", "segments"])
    reply = await service.GetProfiles(pb.GetProfilesRequest(unified_individual_ids=["ann", "bob"], read_mask=mask,
                                                            event_limit=1), metadata=tenant_md(tenant))
    assert [len(p.events) for p in reply.profiles] == [1, 1]
    assert [list(p.segments) for p in reply.profiles] == [["big"], []]
    assert not any(p.insights or p.grouped_insights or p.consents for p in reply.profiles)
    assert list(reply.profiles) == [await one(service, tenant, i, read_mask=mask, event_limit=1) for i in ("ann", "bob")]


@pytest.mark.parametrize("request_fields, field", [
    ({"unified_individual_ids": []}, "unified_individual_ids"),
    ({"unified_individual_ids": [f"i{n}" for n in range(1_001)]}, "unified_individual_ids"),
    ({"unified_individual_ids": ["ann", ""]}, "unified_individual_ids[1]"),
    ({"unified_individual_ids": ["ann"], "read_mask": field_mask_pb2.FieldMask(paths=["nope"])}, "read_mask.paths[0]"),
    ({"unified_individual_ids": ["ann"], "event_limit": -1}, "event_limit"),
])
async def test_bad_requests_are_refused_with_the_field_path(service, tenant, request_fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.GetProfiles(pb.GetProfilesRequest(**request_fields), metadata=tenant_md(tenant))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(caught.value)
    assert [v[0] for v in violations] == [field]
