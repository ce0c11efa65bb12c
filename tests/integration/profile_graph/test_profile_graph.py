"""The profile graph service on a real PostgreSQL, through a real grpc.aio server and stubs."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2 as common
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.postgres import PostgresStore
from services.profile_graph.postgres_unit import PostgresUnit
from services.profile_graph.server import build
from services.profile_graph.service import ProfileGraph
from shared.errors import status_details
from shared.runtime import prepare_schema
from tests.conftest import schema_connection, serving, tenant_md, wait_for

PURCHASE = common.EVENT_TYPE_PURCHASE
PAGE_VIEW = common.EVENT_TYPE_PAGE_VIEW


@pytest.fixture(scope="module")
async def service(database_url):
    async with serving(await build(database_url), pb_grpc.ProfileGraphServiceStub) as stub:
        yield stub


@pytest.fixture(scope="module")
async def db(database_url):
    async with schema_connection(database_url, "profile_graph") as conn:
        yield conn


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def event(individual: str, *, type=PAGE_VIEW, when: datetime | None = None, message_id: str | None = None,
          attributes: dict | None = None, lines: list[tuple[str, float, float]] = (), properties: dict | None = None):
    e = common.Event(
        message_id=message_id or uuid.uuid4().hex, type=type,
        event_time=ts(when or datetime.now(timezone.utc)),
        identities=[common.Identity(type="email", value=f"{individual}@example.com")],
        line_items=[common.LineItem(item_id=i, quantity=q, unit_price=p) for i, q, p in lines],
    )
    if attributes:
        e.attributes.update(attributes)
    if properties:
        e.properties.update(properties)
    return pb.IndividualEvent(unified_individual_id=individual, event=e)


def purchase(individual: str, amount: float, *, days_ago: float = 0, message_id: str | None = None):
    when = datetime.now(timezone.utc) - timedelta(days=days_ago)
    return event(individual, type=PURCHASE, when=when, message_id=message_id, lines=[("sku-1", 1, amount)])


def window(days: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(days=days))
    return d


async def append(stub, tenant, *events):
    return await stub.AppendEvents(pb.AppendEventsRequest(events=list(events)), metadata=tenant_md(tenant))


async def profile(stub, tenant, individual, paths=(), limit=0):
    reply = await stub.GetProfile(
        pb.GetProfileRequest(unified_individual_id=individual, read_mask=field_mask_pb2.FieldMask(paths=list(paths)),
                             event_limit=limit),
        metadata=tenant_md(tenant))
    return reply.profile


async def spend_insight(stub, tenant, days=30, name="spend_30d"):
    await stub.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
        name=name, aggregate=pb.AGGREGATE_SUM, field="revenue", event_type=PURCHASE, window=window(days))),
        metadata=tenant_md(tenant))


async def segment(stub, tenant, name, rule):
    reply = await stub.UpsertSegment(pb.UpsertSegmentRequest(segment=pb.Segment(name=name, rule=rule)),
                                     metadata=tenant_md(tenant))
    return reply.segment


async def test_appended_events_show_in_the_profile_with_attributes_insights_and_segments(service, tenant):
    await spend_insight(service, tenant)
    await stub_count_insight(service, tenant)
    await segment(service, tenant, "gold", 'attributes.tier == "gold"')
    first = event("ind-1", when=datetime.now(timezone.utc) - timedelta(hours=2), attributes={"tier": "silver", "city": "Oslo"})
    second = event("ind-1", when=datetime.now(timezone.utc) - timedelta(hours=1), attributes={"tier": "gold"})
    third = purchase("ind-1", 42.5)
    reply = await append(service, tenant, first, second, third)

    assert [r.duplicate for r in reply.results] == [False, False, False]
    assert list(reply.results[2].entered_segments) == ["gold"]
    p = await profile(service, tenant, "ind-1")
    assert dict(p.attributes) == {"tier": "gold", "city": "Oslo"}
    assert [e.message_id for e in p.events] == [third.event.message_id, second.event.message_id, first.event.message_id]
    assert p.events[0] == third.event
    assert dict(p.insights) == {"spend_30d": 42.5, "views": 2.0}
    assert list(p.segments) == ["gold"]
    assert p.HasField("update_time")


async def stub_count_insight(stub, tenant):
    await stub.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
        name="views", aggregate=pb.AGGREGATE_COUNT, event_type=PAGE_VIEW)), metadata=tenant_md(tenant))


async def test_read_mask_limits_the_profile_and_event_limit_keeps_the_most_recent(service, tenant):
    now = datetime.now(timezone.utc)
    events = [event("ind-1", when=now - timedelta(minutes=i), attributes={"n": i}) for i in range(5)]
    await append(service, tenant, *events)
    p = await profile(service, tenant, "ind-1", paths=["events"], limit=2)
    assert [e.message_id for e in p.events] == [events[0].event.message_id, events[1].event.message_id]
    assert not p.attributes.fields
    p = await profile(service, tenant, "ind-1", paths=["attributes"])
    assert dict(p.attributes) == {"n": 0} and not p.events


async def test_unknown_read_mask_path_is_refused_with_its_index(service, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await profile(service, tenant, "ind-1", paths=["events", "friends"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["read_mask.paths[1]"]


async def test_unknown_individual_has_an_empty_profile(service, tenant):
    p = await profile(service, tenant, "nobody")
    assert p.unified_individual_id == "nobody"
    assert not p.events and not p.attributes.fields and not p.insights and not p.segments
    assert not p.HasField("update_time")


async def test_reappended_batch_is_duplicate_and_changes_no_count(service, tenant, db):
    await spend_insight(service, tenant)
    batch = [purchase("ind-1", 10.0), purchase("ind-1", 15.0)]
    await append(service, tenant, *batch)
    again = await append(service, tenant, *batch, batch[0])

    assert [r.duplicate for r in again.results] == [True, True, True]
    assert all(not r.entered_segments for r in again.results)
    p = await profile(service, tenant, "ind-1")
    assert len(p.events) == 2
    assert p.insights["spend_30d"] == 25.0
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", tenant) == 2


async def test_same_message_id_twice_in_one_batch_is_stored_once(service, tenant):
    reply = await append(service, tenant, purchase("ind-1", 5.0, message_id="m-1"), purchase("ind-1", 5.0, message_id="m-1"))
    assert [r.duplicate for r in reply.results] == [False, True]
    assert len((await profile(service, tenant, "ind-1")).events) == 1


async def test_sum_revenue_over_thirty_days_counts_an_event_29_days_old_and_not_one_31_days_old(service, tenant):
    await spend_insight(service, tenant)
    await append(service, tenant, purchase("ind-1", 100.0, days_ago=29), purchase("ind-1", 1000.0, days_ago=31),
                 purchase("ind-1", 7.0, days_ago=1))
    assert (await profile(service, tenant, "ind-1")).insights["spend_30d"] == 107.0


async def test_sum_over_an_event_property_and_quantity(service, tenant):
    md = tenant_md(tenant)
    await service.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
        name="points", aggregate=pb.AGGREGATE_SUM, field="properties.points")), metadata=md)
    await service.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(
        name="units", aggregate=pb.AGGREGATE_SUM, field="quantity", event_type=PURCHASE)), metadata=md)
    await append(service, tenant, event("ind-1", properties={"points": 3}), event("ind-1", properties={"points": "x"}),
                 event("ind-1", type=PURCHASE, lines=[("a", 2, 1.0), ("b", 3, 1.0)]))
    assert dict((await profile(service, tenant, "ind-1")).insights) == {"points": 3.0, "units": 5.0}


async def test_purchase_crossing_the_threshold_enters_the_segment_and_records_history(service, tenant, db):
    await spend_insight(service, tenant)
    await segment(service, tenant, "big_spender", "insights.spend_30d >= 100.0")
    below = await append(service, tenant, purchase("ind-1", 60.0))
    assert not below.results[0].entered_segments
    crossing = purchase("ind-1", 50.0)
    reply = await append(service, tenant, crossing)

    assert list(reply.results[0].entered_segments) == ["big_spender"]
    assert list((await profile(service, tenant, "ind-1")).segments) == ["big_spender"]
    history = await db.fetch(
        "SELECT segment, individual_id, change FROM membership_history WHERE tenant_id = $1", tenant)
    assert [tuple(r) for r in history] == [("big_spender", "ind-1", "entered")]


async def test_refund_leaves_the_segment_and_records_the_exit(service, tenant, db):
    await spend_insight(service, tenant)
    await segment(service, tenant, "big_spender", "insights.spend_30d >= 100.0")
    await append(service, tenant, purchase("ind-1", 150.0))
    refund = event("ind-1", type=PURCHASE, lines=[("sku-1", -1, 150.0)])
    reply = await append(service, tenant, refund)
    assert list(reply.results[0].exited_segments) == ["big_spender"]
    changes = await db.fetch(
        "SELECT change FROM membership_history WHERE tenant_id = $1 ORDER BY id", tenant)
    assert [r["change"] for r in changes] == ["entered", "exited"]


async def test_segment_of_segments_is_entered_in_the_same_batch(service, tenant):
    await spend_insight(service, tenant)
    await segment(service, tenant, "a_spender", "insights.spend_30d > 0.0")
    await segment(service, tenant, "b_vip", '"a_spender" in segments && attributes.vip == true')
    reply = await append(service, tenant, event("ind-1", attributes={"vip": True}), purchase("ind-1", 5.0))
    assert list(reply.results[1].entered_segments) == ["a_spender", "b_vip"]


async def test_invalid_rule_is_refused_on_segment_rule_and_nothing_is_stored(service, tenant, db):
    for rule in ["insights.spend >= ", "foo.bar == 1", "1 + 2", "x" * 4097]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await segment(service, tenant, "broken", rule)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations, _ = status_details(info.value)
        assert [f for f, _ in violations] == ["segment.rule"], rule
        if rule.startswith("foo"):
            assert "Undefined variable or function: 'foo'" in violations[0][1]
    assert await db.fetchval("SELECT count(*) FROM segments WHERE tenant_id = $1", tenant) == 0


async def test_rule_with_a_missing_attribute_key_is_accepted(service, tenant):
    await append(service, tenant, event("ind-1", attributes={"tier": "gold"}), event("ind-2"))
    saved = await segment(service, tenant, "gold", 'attributes.tier == "gold"')
    assert saved.member_count == 1


async def test_new_segment_counts_existing_individuals_and_lists_them(service, tenant):
    await append(service, tenant, *[event(f"ind-{i}", attributes={"age": 20 + i}) for i in range(6)])
    saved = await segment(service, tenant, "adults", "attributes.age >= 22")
    assert saved.member_count == 4
    listed = await service.ListSegments(pb.ListSegmentsRequest(), metadata=tenant_md(tenant))
    assert [(s.name, s.member_count) for s in listed.segments] == [("adults", 4)]


async def test_segment_members_page_stably_by_unified_id(service, tenant):
    ids = [f"ind-{i:02d}" for i in range(7)]
    await append(service, tenant, *[event(i) for i in reversed(ids)])
    await segment(service, tenant, "everyone", "true")
    seen, token, pages = [], "", 0
    while True:
        reply = await service.ListSegmentMembers(
            pb.ListSegmentMembersRequest(segment="everyone", page_size=3, page_token=token), metadata=tenant_md(tenant))
        seen += [m.unified_individual_id for m in reply.members]
        assert all(m.HasField("enter_time") for m in reply.members)
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert seen == ids and pages == 3


async def test_segment_members_ids_only_page_the_same_ids_without_members(service, tenant):
    ids = [f"ind-{i:02d}" for i in range(7)]
    await append(service, tenant, *[event(i) for i in reversed(ids)])
    await segment(service, tenant, "everyone", "true")
    seen, token = [], ""
    while True:
        reply = await service.ListSegmentMembers(pb.ListSegmentMembersRequest(
            segment="everyone", page_size=3, page_token=token, ids_only=True), metadata=tenant_md(tenant))
        assert not reply.members
        seen += list(reply.unified_individual_ids)
        token = reply.next_page_token
        if not token:
            break
    assert seen == ids


async def test_members_of_an_unknown_segment_is_not_found(service, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.ListSegmentMembers(pb.ListSegmentMembersRequest(segment="nope"), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(info.value)[1] == "SEGMENT_NOT_FOUND"


async def test_bad_page_token_is_refused(service, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.ListInsights(pb.ListInsightsRequest(page_token="garbage"), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["page_token"]


async def test_insights_list_page_by_page(service, tenant):
    for name in ["c_count", "a_count", "b_count"]:
        await service.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(name=name, aggregate=pb.AGGREGATE_COUNT)),
                                    metadata=tenant_md(tenant))
    first = await service.ListInsights(pb.ListInsightsRequest(page_size=2), metadata=tenant_md(tenant))
    second = await service.ListInsights(pb.ListInsightsRequest(page_size=2, page_token=first.next_page_token),
                                        metadata=tenant_md(tenant))
    assert [i.name for i in first.insights] + [i.name for i in second.insights] == ["a_count", "b_count", "c_count"]
    assert not second.next_page_token


async def test_new_insight_is_computed_for_individuals_already_known(service, tenant):
    await append(service, tenant, purchase("ind-1", 30.0), purchase("ind-2", 5.0))
    await spend_insight(service, tenant)
    assert (await profile(service, tenant, "ind-1")).insights["spend_30d"] == 30.0
    assert (await profile(service, tenant, "ind-2")).insights["spend_30d"] == 5.0


async def test_invalid_insight_is_refused_with_field_paths(service, tenant, db):
    bad = pb.Insight(name="Spend", aggregate=pb.AGGREGATE_SUM, field="price", window=duration_pb2.Duration(seconds=-1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.UpsertInsight(pb.UpsertInsightRequest(insight=bad), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["insight.name", "insight.field", "insight.window"]
    assert await db.fetchval("SELECT count(*) FROM insights WHERE tenant_id = $1", tenant) == 0


async def test_events_without_required_fields_are_refused_and_nothing_is_stored(service, tenant, db):
    good = event("ind-1")
    missing = pb.IndividualEvent(unified_individual_id="", event=common.Event(message_id="", type=0))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await append(service, tenant, good, missing)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == [
        "events[1].unified_individual_id", "events[1].event.message_id", "events[1].event.type",
        "events[1].event.event_time", "events[1].event.identities"]
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", tenant) == 0


async def test_reassign_moves_events_and_attributes_and_recomputes_the_survivor(service, tenant, db):
    await spend_insight(service, tenant)
    await segment(service, tenant, "big_spender", "insights.spend_30d >= 100.0")
    now = datetime.now(timezone.utc)
    await append(service, tenant,
                 event("anon", when=now - timedelta(hours=1), attributes={"city": "Oslo", "tier": "old"}),
                 purchase("anon", 70.0),
                 event("known", when=now - timedelta(hours=2), attributes={"tier": "gold"}),
                 purchase("known", 40.0))
    reply = await service.ReassignIndividual(
        pb.ReassignIndividualRequest(from_individual_ids=["anon"], to_individual_id="known"), metadata=tenant_md(tenant))

    assert reply.moved_event_count == 2
    p = await profile(service, tenant, "known")
    assert len(p.events) == 4
    assert dict(p.attributes) == {"city": "Oslo", "tier": "old"}
    assert p.insights["spend_30d"] == 110.0
    assert list(p.segments) == ["big_spender"]
    gone = await profile(service, tenant, "anon")
    assert not gone.events and not gone.attributes.fields and not gone.insights and not gone.HasField("update_time")
    again = await service.ReassignIndividual(
        pb.ReassignIndividualRequest(from_individual_ids=["anon"], to_individual_id="known"), metadata=tenant_md(tenant))
    assert again.moved_event_count == 0
    assert (await profile(service, tenant, "known")).insights["spend_30d"] == 110.0
    entries = await db.fetchval(
        "SELECT count(*) FROM membership_history WHERE tenant_id = $1 AND change = 'entered'", tenant)
    assert entries == 1


async def test_an_append_resolved_before_a_merge_lands_on_the_survivor_until_an_unmerge(service, tenant, db):
    await spend_insight(service, tenant)
    await append(service, tenant, purchase("late", 10.0), purchase("winner", 5.0))
    await service.ReassignIndividual(
        pb.ReassignIndividualRequest(from_individual_ids=["late"], to_individual_id="winner"), metadata=tenant_md(tenant))
    # Another pipeline worker identified this event as "late" before the merge and appends it afterwards.
    await append(service, tenant, purchase("late", 20.0, message_id="straggler"))
    assert (await profile(service, tenant, "winner")).insights["spend_30d"] == 35.0
    assert not (await profile(service, tenant, "late")).HasField("update_time")
    assert await db.fetchval("SELECT individual_id FROM events WHERE tenant_id = $1 AND message_id = 'straggler'",
                             tenant) == "winner"
    # A chain: winner merges into champion; appends to either earlier id land on champion.
    await service.ReassignIndividual(
        pb.ReassignIndividualRequest(from_individual_ids=["winner"], to_individual_id="champion"),
        metadata=tenant_md(tenant))
    await append(service, tenant, purchase("late", 1.0), purchase("winner", 2.0))
    assert (await profile(service, tenant, "champion")).insights["spend_30d"] == 38.0
    # An unmerge restores "late": its own later events stay its own.
    await service.ReassignIndividual(pb.ReassignIndividualRequest(
        from_individual_ids=["champion"], to_individual_id="late",
        only_events_with_identities=[common.Identity(type="email", value="nobody@example.com")]),
        metadata=tenant_md(tenant))
    await append(service, tenant, purchase("late", 4.0, message_id="after-split"))
    assert await db.fetchval("SELECT individual_id FROM events WHERE tenant_id = $1 AND message_id = 'after-split'",
                             tenant) == "late"


async def test_a_merge_applied_late_onto_an_individual_merged_away_since_lands_on_its_survivor(service, tenant, db):
    # The pipeline applies merges in whatever order workers (and, after a crash, the merge sweeper) get to them:
    # "middle" merged into "top" first, then the older merge of "early" into "middle" arrives.
    await spend_insight(service, tenant)
    await append(service, tenant, purchase("early", 1.0), purchase("middle", 2.0), purchase("top", 4.0))
    md = tenant_md(tenant)
    await service.ReassignIndividual(
        pb.ReassignIndividualRequest(from_individual_ids=["middle"], to_individual_id="top"), metadata=md)
    late = await service.ReassignIndividual(
        pb.ReassignIndividualRequest(from_individual_ids=["early"], to_individual_id="middle"), metadata=md)
    assert late.moved_event_count == 1
    assert [r["individual_id"] for r in await db.fetch(
        "SELECT DISTINCT individual_id FROM events WHERE tenant_id = $1", tenant)] == ["top"]
    assert (await profile(service, tenant, "top")).insights["spend_30d"] == 7.0
    assert not (await profile(service, tenant, "middle")).HasField("update_time")
    # Both earlier ids still lead to the survivor.
    await append(service, tenant, purchase("middle", 8.0, message_id="m2"), purchase("early", 16.0, message_id="e2"))
    assert (await profile(service, tenant, "top")).insights["spend_30d"] == 31.0


async def test_an_append_waiting_while_its_survivor_is_merged_away_lands_on_the_new_survivor(
        service, tenant, db, database_url):
    # "early" was merged into "middle"; while another transaction merges "middle" into "top", an append for
    # "early" (identified before either merge) reads the redirect to "middle" and waits for "middle"'s lock.
    await append(service, tenant, purchase("early", 1.0), purchase("middle", 2.0), purchase("top", 4.0))
    md = tenant_md(tenant)
    await service.ReassignIndividual(
        pb.ReassignIndividualRequest(from_individual_ids=["early"], to_individual_id="middle"), metadata=md)
    async with schema_connection(database_url, "profile_graph") as other:
        async with other.transaction():
            unit = PostgresUnit(other, tenant)
            await unit.lock_definitions(exclusive=False)
            await unit.lock_individuals(["middle", "top"])
            await unit.record_merge(["middle"], "top")
            await unit.move_events(["middle"], "top", None)
            straggler = asyncio.create_task(append(service, tenant, purchase("early", 8.0, message_id="straggler")))

            async def waiting() -> bool:
                return await db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                         "AND NOT granted") > 0

            assert await wait_for(waiting)
        await straggler
    assert await db.fetchval("SELECT individual_id FROM events WHERE tenant_id = $1 AND message_id = 'straggler'",
                             tenant) == "top"


async def test_reassign_onto_one_of_the_merged_ids_is_refused(service, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.ReassignIndividual(
            pb.ReassignIndividualRequest(from_individual_ids=["a", "b"], to_individual_id="b"), metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["from_individual_ids[1]"]


async def test_items_are_upserted_and_read_back_in_request_order(service, tenant):
    md = tenant_md(tenant)
    attrs = struct_pb2.Struct()
    attrs.update({"category": "mugs", "price": 9.5, "in_stock": True})
    reply = await service.UpsertItems(pb.UpsertItemsRequest(items=[
        pb.Item(item_id="sku-1", name="Mug", attributes=attrs), pb.Item(item_id="sku-2", name="Cup")]), metadata=md)
    assert reply.upserted_count == 2
    await service.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id="sku-2", name="Big cup")]), metadata=md)
    got = await service.GetItems(pb.GetItemsRequest(item_ids=["sku-2", "missing", "sku-1"]), metadata=md)
    assert [(i.item_id, i.name) for i in got.items] == [("sku-2", "Big cup"), ("sku-1", "Mug")]
    assert dict(got.items[1].attributes) == {"category": "mugs", "price": 9.5, "in_stock": True}


async def test_item_without_id_is_refused(service, tenant):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id="a"), pb.Item(name="x")]),
                                  metadata=tenant_md(tenant))
    assert [f for f, _ in status_details(info.value)[0]] == ["items[1].item_id"]


async def test_tenants_never_see_each_others_data(service, tenant):
    other = f"{tenant}_other"
    await spend_insight(service, tenant)
    await segment(service, tenant, "everyone", "true")
    await append(service, tenant, purchase("ind-1", 20.0, message_id="shared-id"))
    reply = await append(service, other, purchase("ind-1", 99.0, message_id="shared-id"))

    assert not reply.results[0].duplicate and not reply.results[0].entered_segments
    mine, theirs = await profile(service, tenant, "ind-1"), await profile(service, other, "ind-1")
    assert mine.insights["spend_30d"] == 20.0 and list(mine.segments) == ["everyone"]
    assert len(theirs.events) == 1 and theirs.events[0].line_items[0].unit_price == 99.0
    assert not theirs.insights and not theirs.segments
    listed = await service.ListSegments(pb.ListSegmentsRequest(), metadata=tenant_md(other))
    assert not listed.segments
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.ListSegmentMembers(pb.ListSegmentMembersRequest(segment="everyone"), metadata=tenant_md(other))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_call_without_tenant_is_unauthenticated(service):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.GetProfile(pb.GetProfileRequest(unified_individual_id="x"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_refresh_lets_an_aged_purchase_leave_the_insight_and_the_segment(service, tenant, db, database_url):
    await spend_insight(service, tenant)
    await segment(service, tenant, "big_spender", "insights.spend_30d >= 100.0")
    await append(service, tenant, purchase("ind-1", 150.0, days_ago=29))
    await db.execute("UPDATE events SET event_time = event_time - interval '2 days' WHERE tenant_id = $1", tenant)
    pool = await prepare_schema(database_url, "profile_graph", "services/profile_graph/server.py")
    try:
        assert await ProfileGraph(PostgresStore(pool)).recompute.refresh_windowed_insights() >= 1
    finally:
        await pool.close()
    p = await profile(service, tenant, "ind-1")
    assert p.insights["spend_30d"] == 0.0 and not p.segments
    changes = await db.fetch("SELECT change FROM membership_history WHERE tenant_id = $1 ORDER BY id", tenant)
    assert [r["change"] for r in changes] == ["entered", "exited"]


async def test_a_profile_larger_than_a_default_client_receives_is_cut_with_a_flag(service, tenant):
    # 40 events of ~120 KB: about 4.8 MB, more than the 4 MiB a default gRPC client accepts (the stub here is one).
    now = datetime.now(timezone.utc)
    events = [event("big", message_id=f"big-{n:02d}", when=now - timedelta(minutes=40 - n),
                    properties={f"part{k}": "x" * 8000 for k in range(15)}) for n in range(40)]
    await append(service, tenant, *events[:20])
    await append(service, tenant, *events[20:])
    got = await profile(service, tenant, "big", limit=40)
    assert got.truncated and got.omitted_event_count > 0
    assert len(got.events) + got.omitted_event_count == 40
    assert [e.message_id for e in got.events] == [f"big-{n:02d}" for n in range(39, 39 - len(got.events), -1)]
    assert got.ByteSize() <= 4 * 1024 * 1024
    small = await profile(service, tenant, "big", limit=3)
    assert not small.truncated and len(small.events) == 3
    many = await service.GetProfiles(pb.GetProfilesRequest(unified_individual_ids=["big", "big"], event_limit=40),
                                     metadata=tenant_md(tenant))
    assert all(p.truncated for p in many.profiles) and many.ByteSize() <= 4 * 1024 * 1024
