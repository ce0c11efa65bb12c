"""GetProfilesAsOf: profiles as they were at given times (events, insights and segments then; the rest as now)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2 as common
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.server import build
from shared.errors import status_details
from tests.conftest import serving, tenant_md
from tests.integration.profile_graph.test_profile_graph import (
    append,
    event,
    purchase,
    window,
)


@pytest.fixture(scope="module")
async def service(database_url):
    async with serving(await build(database_url), pb_grpc.ProfileGraphServiceStub) as stub:
        yield stub


def ts(at: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(at)
    return out


async def test_profiles_as_of_a_time_show_the_insights_and_segments_of_then(service, tenant):
    md = tenant_md(tenant)
    await service.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
        name="spend", aggregate=pb.AGGREGATE_SUM, field="revenue", event_type=common.EVENT_TYPE_PURCHASE)), metadata=md)
    await service.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
        name="spend_1d", aggregate=pb.AGGREGATE_SUM, field="revenue", event_type=common.EVENT_TYPE_PURCHASE,
        window=window(1))), metadata=md)
    await service.UpsertSegment(pb.UpsertSegmentRequest(segment=pb.Segment(name="big", rule="insights.spend >= 100.0")),
                                metadata=md)
    await append(service, tenant, event("ann", attributes={"city": "Lyon"}), purchase("ann", 40.0, days_ago=3))
    before = datetime.now(UTC)
    await append(service, tenant, purchase("ann", 150.0))
    after = datetime.now(UTC)
    reply = await service.GetProfilesAsOf(pb.GetProfilesAsOfRequest(entries=[
        pb.ProfileAsOf(unified_individual_id="ann", as_of=ts(before)),
        pb.ProfileAsOf(unified_individual_id="ann", as_of=ts(after)),
        pb.ProfileAsOf(unified_individual_id="ann", as_of=ts(before - timedelta(days=10))),
        pb.ProfileAsOf(unified_individual_id="nobody", as_of=ts(after)),
    ]), metadata=md)
    then, now, long_ago, nobody = reply.profiles
    assert (then.insights["spend"], then.insights["spend_1d"], list(then.segments)) == (40.0, 0.0, [])
    assert len(then.events) == 2 and then.update_time.ToDatetime(tzinfo=UTC) == before
    assert (now.insights["spend"], now.insights["spend_1d"], list(now.segments)) == (190.0, 150.0, ["big"])
    assert len(now.events) == 3 and now.events[0].line_items[0].unit_price == 150.0
    assert (long_ago.insights["spend"], list(long_ago.segments), len(long_ago.events)) == (0.0, [], 0)
    # Attributes have no history: they are as they are now, whatever the time.
    assert then.attributes["city"] == "Lyon" and long_ago.attributes["city"] == "Lyon"
    assert nobody.unified_individual_id == "nobody" and not nobody.events and nobody.insights["spend"] == 0.0
    current = (await service.GetProfile(pb.GetProfileRequest(unified_individual_id="ann"), metadata=md)).profile
    assert (current.insights["spend"], list(current.segments)) == (now.insights["spend"], list(now.segments))


async def test_an_exit_from_a_segment_is_seen_after_it_happened_only(service, tenant):
    md = tenant_md(tenant)
    await service.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
        name="n", aggregate=pb.AGGREGATE_COUNT, event_type=common.EVENT_TYPE_PAGE_VIEW)), metadata=md)
    await service.UpsertSegment(pb.UpsertSegmentRequest(segment=pb.Segment(name="few", rule="insights.n < 2.0")),
                                metadata=md)
    await append(service, tenant, event("bo"))
    member = datetime.now(UTC)
    await append(service, tenant, event("bo"))
    left = datetime.now(UTC)
    reply = await service.GetProfilesAsOf(pb.GetProfilesAsOfRequest(entries=[
        pb.ProfileAsOf(unified_individual_id="bo", as_of=ts(member)),
        pb.ProfileAsOf(unified_individual_id="bo", as_of=ts(left))], event_limit=1), metadata=md)
    assert [list(p.segments) for p in reply.profiles] == [["few"], []]
    assert [p.insights["n"] for p in reply.profiles] == [1.0, 2.0]
    assert [len(p.events) for p in reply.profiles] == [1, 1]


@pytest.mark.parametrize("entries, field", [
    ([], "entries"),
    ([pb.ProfileAsOf(unified_individual_id="a", as_of=timestamp_pb2.Timestamp(seconds=10))] * 201, "entries"),
    ([pb.ProfileAsOf(unified_individual_id="", as_of=timestamp_pb2.Timestamp(seconds=10))],
     "entries[0].unified_individual_id"),
    ([pb.ProfileAsOf(unified_individual_id="a")], "entries[0].as_of"),
])
async def test_bad_entries_are_refused_with_their_path(service, tenant, entries, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.GetProfilesAsOf(pb.GetProfilesAsOfRequest(entries=entries), metadata=tenant_md(tenant))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v[0] for v in status_details(caught.value)[0]] == [field]
