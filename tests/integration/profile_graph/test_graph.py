"""The profile data graph on a real PostgreSQL: profile objects, consents, affinities, rich insights with windows
and dimensions, segments over all of them, items, reconciliation, unmerge and the live event stream."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2 as common
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.postgres_sql import TENANT_LOCK_KEY
from services.profile_graph.server import build
from shared.errors import status_details
from shared.runtime import start_built, stop_built
from tests.conftest import schema_connection, serving, struct, tenant_md

PURCHASE, VIEW, CART = common.EVENT_TYPE_PURCHASE, common.EVENT_TYPE_PRODUCT_VIEW, common.EVENT_TYPE_ADD_TO_CART
GRANTED, DENIED = common.CONSENT_STATUS_GRANTED, common.CONSENT_STATUS_DENIED
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
# What every writer of a tenant's profile data takes first (PostgresUnit.lock_definitions), here shared.
TENANT_LOCK = f"SELECT pg_advisory_xact_lock_shared({TENANT_LOCK_KEY})"


class Clock:
    """The service's clock: real time until a test sets it."""

    def __init__(self):
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at or datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
async def service(database_url, clock):
    async with serving(await build(database_url, clock=clock), pb_grpc.ProfileGraphServiceStub) as stub:
        yield stub


@pytest.fixture(autouse=True)
def real_time(clock):
    clock.at = None
    yield
    clock.at = None


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def dur(**kw) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(**kw))
    return out


def value(v) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, (int, float)):
        out.number_value = v
    else:
        out.string_value = v
    return out


def ev(individual: str, type=VIEW, when: datetime = T0, *, item="", lines=(), attributes=None, source="",
       consents=(), objects=(), identities=None, properties=None, message_id=None):
    e = common.Event(
        message_id=message_id or uuid.uuid4().hex, type=type, event_time=ts(when), item_id=item, source=source,
        identities=identities or [common.Identity(type="email", value=f"{individual}@example.com")],
        line_items=[common.LineItem(item_id=i, quantity=q, unit_price=p) for i, q, p in lines],
        consents=[common.Consent(purpose=p, status=s) for p, s in consents],
        profile_objects=[common.ProfileObject(type=t, object_id=o, attributes=struct(a)) for t, o, a in objects])
    if attributes:
        e.attributes.update(attributes)
    if properties:
        e.properties.update(properties)
    return pb.IndividualEvent(unified_individual_id=individual, event=e)


async def append(stub, tenant, *events):
    return await stub.AppendEvents(pb.AppendEventsRequest(events=list(events)), metadata=tenant_md(tenant))


async def profile(stub, tenant, individual, **kw):
    return (await stub.GetProfile(pb.GetProfileRequest(unified_individual_id=individual, **kw),
                                  metadata=tenant_md(tenant))).profile


async def insight(stub, tenant, **kw):
    return await stub.UpsertInsight(pb.UpsertInsightRequest(insight=pb.Insight(**kw)), metadata=tenant_md(tenant))


async def segment(stub, tenant, name, rule):
    return (await stub.UpsertSegment(pb.UpsertSegmentRequest(segment=pb.Segment(name=name, rule=rule)),
                                     metadata=tenant_md(tenant))).segment


async def items(stub, tenant, *rows):
    await stub.UpsertItems(pb.UpsertItemsRequest(items=[
        pb.Item(item_id=i, name=i, attributes=struct(a)) for i, a in rows]), metadata=tenant_md(tenant))


async def refused(call) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return [f for f, _ in status_details(info.value)[0]]


# ---- profile objects and consents ---------------------------------------------------------------------------


async def test_profile_objects_keep_the_latest_version_most_recent_first(service, tenant):
    await append(service, tenant,
                 ev("p", when=T0, objects=[("order", "o1", {"total": 10}), ("case", "c1", {"state": "open"})]),
                 ev("p", when=T0 + timedelta(hours=1), objects=[("order", "o2", {"total": 20})]),
                 ev("p", when=T0 + timedelta(hours=2), objects=[("order", "o1", {"total": 11})]))
    p = await profile(service, tenant, "p", read_mask={"paths": ["profile_objects"]})
    assert [(o.object.type, o.object.object_id) for o in p.profile_objects] == [
        ("case", "c1"), ("order", "o1"), ("order", "o2")]
    assert p.profile_objects[1].object.attributes["total"] == 11
    assert not p.attributes.fields and not p.events


async def test_at_most_n_objects_per_type_are_kept(database_url, tenant, monkeypatch):
    monkeypatch.setenv("TAILOR_PROFILE_GRAPH_OBJECTS_PER_TYPE", "3")
    async with serving(await build(database_url), pb_grpc.ProfileGraphServiceStub) as stub:
        await append(stub, tenant, *[ev("n", when=T0 + timedelta(minutes=i), objects=[("order", f"o{i}", {})])
                                     for i in range(6)])
        p = await profile(stub, tenant, "n", read_mask={"paths": ["profile_objects"]})
    assert [o.object.object_id for o in p.profile_objects] == ["o5", "o4", "o3"]


async def test_consents_from_events_and_the_api_keep_the_latest_and_feed_segments(service, tenant, clock):
    clock.at = T0 + timedelta(hours=1)
    await segment(service, tenant, "mailable", "has(consents.email) && consents.email == 'GRANTED'")
    reply = await append(service, tenant, ev("c", when=T0, consents=[("email", GRANTED), ("tracking", DENIED)]),
                         ev("c", when=T0 - timedelta(days=1), consents=[("email", DENIED)]))
    assert list(reply.results[1].entered_segments) == ["mailable"]
    p = await profile(service, tenant, "c")
    assert [(c.purpose, c.status) for c in p.consents] == [("email", GRANTED), ("tracking", DENIED)]
    got = await service.SetConsents(pb.SetConsentsRequest(unified_individual_id="c", consents=[
        common.Consent(purpose="email", status=DENIED)]), metadata=tenant_md(tenant))
    assert [(c.purpose, c.status, c.source) for c in got.consents][0] == ("email", DENIED, "api")
    assert "mailable" not in (await profile(service, tenant, "c")).segments


async def test_bad_consent_is_refused_with_its_path(service, tenant):
    paths = await refused(service.SetConsents(pb.SetConsentsRequest(unified_individual_id="c", consents=[
        common.Consent(purpose="Email!", status=0)]), metadata=tenant_md(tenant)))
    assert paths == ["consents[0].purpose", "consents[0].status"]


# ---- insights -----------------------------------------------------------------------------------------------


async def test_count_distinct_max_last_conditions_and_dimensions(service, tenant, clock):
    clock.at = T0 + timedelta(hours=1)
    await items(service, tenant, ("a", {"category": "shoes"}), ("b", {"category": "hats"}), ("c", {"category": "shoes"}))
    await insight(service, tenant, name="items_bought", aggregate=pb.AGGREGATE_COUNT_DISTINCT, field="item_id",
                  event_type=PURCHASE)
    await insight(service, tenant, name="biggest", aggregate=pb.AGGREGATE_MAX, field="revenue", event_type=PURCHASE)
    await insight(service, tenant, name="last_order", aggregate=pb.AGGREGATE_LAST, field="revenue", event_type=PURCHASE)
    await insight(service, tenant, name="web_orders", aggregate=pb.AGGREGATE_COUNT, event_type=PURCHASE,
                  conditions=[pb.Condition(field="source", operator=pb.OPERATOR_EQUALS, value=value("web"))])
    await insight(service, tenant, name="spend_by_category", aggregate=pb.AGGREGATE_SUM, field="revenue",
                  event_type=PURCHASE, dimension="item.category")
    await append(service, tenant,
                 ev("d", PURCHASE, T0, lines=[("a", 1, 30), ("b", 2, 5)], source="web"),
                 ev("d", PURCHASE, T0 + timedelta(minutes=5), lines=[("c", 1, 12)], source="pos"),
                 ev("d", PURCHASE, T0 - timedelta(minutes=5), lines=[("a", 1, 70)], source="web"))
    p = await profile(service, tenant, "d", read_mask={"paths": ["insights"]})
    assert dict(p.insights) == {"items_bought": 3.0, "biggest": 70.0, "last_order": 12.0, "web_orders": 2.0}
    assert dict(p.grouped_insights["spend_by_category"].values) == {"shoes": 112.0, "hats": 10.0}
    await segment(service, tenant, "shoe_fans", "insights.spend_by_category['shoes'] > 100.0")
    assert "shoe_fans" in (await profile(service, tenant, "d")).segments


async def test_window_edges_are_exact_and_a_moving_window_exits_the_segment(service, tenant, clock):
    clock.at = T0
    await insight(service, tenant, name="views_1h", aggregate=pb.AGGREGATE_COUNT, event_type=VIEW, window=dur(hours=1))
    await segment(service, tenant, "active", "insights.views_1h >= 2.0")
    await append(service, tenant, ev("w", when=T0 - timedelta(hours=1)),  # exactly at the edge: out
                 ev("w", when=T0 - timedelta(minutes=59, seconds=59)), ev("w", when=T0 - timedelta(minutes=30)))
    assert (await profile(service, tenant, "w")).insights["views_1h"] == 2.0
    assert "active" in (await profile(service, tenant, "w")).segments
    clock.at = T0 + timedelta(seconds=1)  # the 59:59 view ages out at T0 + 1 s
    await service.RecomputeAll(pb.RecomputeAllRequest(), metadata=tenant_md(tenant))
    p = await profile(service, tenant, "w")
    assert p.insights["views_1h"] == 1.0 and "active" not in p.segments
    changes = await service.ListMembershipChanges(pb.ListMembershipChangesRequest(segment="active"),
                                                  metadata=tenant_md(tenant))
    assert [(c.unified_individual_id, c.entered, c.change_time.ToDatetime(tzinfo=timezone.utc)) for c in
            changes.changes] == [("w", True, T0), ("w", False, T0 + timedelta(seconds=1))]


async def test_bad_insights_are_refused_with_their_paths(service, tenant):
    assert await refused(insight(service, tenant, name="x", aggregate=pb.AGGREGATE_COUNT, window=dur(seconds=0))) == [
        "insight.window"]
    assert await refused(insight(service, tenant, name="x", aggregate=pb.AGGREGATE_MAX, field="colour",
                                 dimension="nope", conditions=[pb.Condition(field="item.x")])) == [
        "insight.field", "insight.conditions[0].operator", "insight.conditions[0].value", "insight.dimension"]
    listed = await service.ListInsights(pb.ListInsightsRequest(), metadata=tenant_md(tenant))
    assert not listed.insights


async def test_unknown_insight_or_segment_references_are_refused(service, tenant):
    await insight(service, tenant, name="spend", aggregate=pb.AGGREGATE_SUM, field="revenue")
    assert await refused(segment(service, tenant, "s", "insights.spnd > 1.0")) == ["segment.rule"]
    assert await refused(segment(service, tenant, "s", "'vips' in segments")) == ["segment.rule"]
    await segment(service, tenant, "vips", "insights.spend > 10.0")
    assert (await segment(service, tenant, "s", "'vips' in segments")).name == "s"


# ---- affinities ---------------------------------------------------------------------------------------------


async def test_affinities_are_weighted_decayed_and_ranked(service, tenant, clock):
    await items(service, tenant, ("a", {"category": "shoes", "brand": "acme"}), ("b", {"category": "hats"}))
    await service.SetAffinityConfig(pb.SetAffinityConfigRequest(config=pb.AffinityConfig(
        dimensions=["category", "brand"], half_life=dur(days=1),
        weights=[pb.EventWeight(event_type=VIEW, weight=1), pb.EventWeight(event_type=PURCHASE, weight=5)])),
        metadata=tenant_md(tenant))
    clock.at = T0
    await append(service, tenant, ev("f", VIEW, T0 - timedelta(days=1), item="a"), ev("f", VIEW, T0, item="b"),
                 ev("f", PURCHASE, T0, lines=[("b", 1, 3)]))
    got = await service.GetAffinities(pb.GetAffinitiesRequest(unified_individual_id="f", limit=2),
                                      metadata=tenant_md(tenant))
    assert [(a.dimension, a.value, round(a.score, 6)) for a in got.affinities] == [
        ("category", "hats", 6.0), ("brand", "acme", 0.5)]
    clock.at = T0 + timedelta(days=1)
    p = await profile(service, tenant, "f", affinity_limit=1)
    assert [(a.value, round(a.score, 6)) for a in p.affinities] == [("hats", 3.0)]
    await segment(service, tenant, "hat_people", "affinities.category.hats > 2.0")
    assert "hat_people" in (await profile(service, tenant, "f")).segments


async def test_bad_affinity_config_is_refused(service, tenant):
    paths = await refused(service.SetAffinityConfig(pb.SetAffinityConfigRequest(config=pb.AffinityConfig(
        dimensions=["bad name"], weights=[pb.EventWeight(event_type=VIEW, weight=-1)])), metadata=tenant_md(tenant)))
    assert paths == ["config.dimensions[0]", "config.weights[0].weight", "config.half_life"]


# ---- items --------------------------------------------------------------------------------------------------


async def test_items_list_by_typed_filters_in_pages(service, tenant):
    await items(service, tenant, ("i1", {"price": 5, "tags": ["new"], "live": True, "since": "2030-01-01T00:00:00Z"}),
                ("i2", {"price": 15, "tags": ["new", "sale"], "live": True}), ("i3", {"price": 25, "live": False}))
    md = tenant_md(tenant)
    cheap_live = [pb.Condition(field="price", operator=pb.OPERATOR_LESS_THAN, value=value(20)),
                  pb.Condition(field="live", operator=pb.OPERATOR_EQUALS, value=value(True))]
    first = await service.ListItems(pb.ListItemsRequest(filters=cheap_live, page_size=1), metadata=md)
    second = await service.ListItems(pb.ListItemsRequest(filters=cheap_live, page_size=1,
                                                         page_token=first.next_page_token), metadata=md)
    assert [i.item_id for i in list(first.items) + list(second.items)] == ["i1", "i2"] and not second.next_page_token
    sale = await service.ListItems(pb.ListItemsRequest(filters=[
        pb.Condition(field="tags", operator=pb.OPERATOR_CONTAINS, value=value("sale"))]), metadata=md)
    assert [i.item_id for i in sale.items] == ["i2"]
    assert await refused(service.ListItems(pb.ListItemsRequest(filters=[
        pb.Condition(field="price", operator=pb.OPERATOR_CONTAINS, value=value("x")),
        pb.Condition(field="colour", operator=pb.OPERATOR_EQUALS, value=value("red"))]), metadata=md)) == [
        "filters[0].operator", "filters[1].field"]


async def test_item_attribute_of_the_wrong_type_is_refused_and_nothing_stored(service, tenant):
    await items(service, tenant, ("i1", {"price": 5}))
    assert await refused(items(service, tenant, ("i2", {"price": "cheap"}), ("i3", {"dims": {"w": 1}}))) == [
        "items[0].attributes.price", "items[1].attributes.dims"]
    got = await service.GetItems(pb.GetItemsRequest(item_ids=["i2", "i3"]), metadata=tenant_md(tenant))
    assert not got.items


async def test_item_insights_are_kept_current(service, tenant):
    await items(service, tenant, ("a", {}), ("b", {}))
    await insight(service, tenant, name="views_7d", aggregate=pb.AGGREGATE_COUNT, event_type=VIEW, window=dur(days=7),
                  subject=pb.INSIGHT_SUBJECT_ITEM)
    now = datetime.now(timezone.utc)
    await append(service, tenant, ev("x", VIEW, now, item="a"), ev("y", VIEW, now, item="a"),
                 ev("y", VIEW, now - timedelta(days=8), item="b"))
    for _ in range(50):
        got = await service.GetItems(pb.GetItemsRequest(item_ids=["a", "b"]), metadata=tenant_md(tenant))
        if got.items[0].insights.get("views_7d") == 2.0:
            break
        await asyncio.sleep(0.1)
    assert [dict(i.insights) for i in got.items] == [{"views_7d": 2.0}, {"views_7d": 0.0}]


# ---- reconciliation -----------------------------------------------------------------------------------------


async def reconcile(stub, tenant, default, sources=(), overrides=None):
    rule = pb.ReconciliationRule(object="individual", default_reconciliation=pb.AttributeReconciliation(
        policy=default, source_priority=list(sources)), attribute_overrides=overrides or {})
    return await stub.SetReconciliationRule(pb.SetReconciliationRuleRequest(rule=rule), metadata=tenant_md(tenant))


async def test_each_reconciliation_policy_chooses_the_unified_value(service, tenant):
    await append(service, tenant,
                 ev("r", when=T0, source="crm", attributes={"city": "Oslo", "tier": "gold"}),
                 ev("r", when=T0 + timedelta(minutes=1), source="web", attributes={"city": "Bergen", "tier": ""}),
                 ev("r", when=T0 + timedelta(minutes=2), source="web", attributes={"city": "Bergen"}),
                 ev("r", when=T0 + timedelta(minutes=3), source="app", attributes={"city": "Oslo", "tier": None}),
                 ev("r", when=T0 + timedelta(minutes=4), source="pos", attributes={"city": "Trondheim"}))
    assert (await profile(service, tenant, "r")).attributes["city"] == "Trondheim"  # LAST_UPDATED by default
    await reconcile(service, tenant, pb.RECONCILIATION_POLICY_MOST_FREQUENT)
    p = await profile(service, tenant, "r")
    assert p.attributes["city"] == "Oslo" and p.attributes["tier"] == "gold"  # 2-2 tie: the most recent; empties ignored
    await reconcile(service, tenant, pb.RECONCILIATION_POLICY_SOURCE_PRIORITY, ["crm", "web"], {
        "tier": pb.AttributeReconciliation(policy=pb.RECONCILIATION_POLICY_LAST_UPDATED, include_empty_values=True)})
    p = await profile(service, tenant, "r")
    assert p.attributes["city"] == "Oslo" and p.attributes["tier"] is None
    await append(service, tenant, ev("r", when=T0 + timedelta(hours=1), source="web", attributes={"city": "Bergen"}))
    assert (await profile(service, tenant, "r")).attributes["city"] == "Oslo"  # crm still outranks web
    got = await service.GetReconciliationRule(pb.GetReconciliationRuleRequest(), metadata=tenant_md(tenant))
    assert list(got.rule.default_reconciliation.source_priority) == ["crm", "web"]


async def test_bad_reconciliation_rule_is_refused(service, tenant):
    rule = pb.ReconciliationRule(object="order", default_reconciliation=pb.AttributeReconciliation())
    assert await refused(service.SetReconciliationRule(pb.SetReconciliationRuleRequest(rule=rule),
                                                       metadata=tenant_md(tenant))) == [
        "rule.object", "rule.default_reconciliation.policy"]


# ---- merge, unmerge ----------------------------------------------------------------------------------------


async def test_merge_then_unmerge_moves_only_the_events_of_given_identities_back(service, tenant):
    await insight(service, tenant, name="spend", aggregate=pb.AGGREGATE_SUM, field="revenue")
    bob = [common.Identity(type="email", value="Bob@Example.com")]
    await append(service, tenant,
                 ev("ann", PURCHASE, T0, lines=[("a", 1, 10)], attributes={"name": "Ann"},
                    objects=[("order", "o1", {})], consents=[("email", GRANTED)]),
                 ev("bob", PURCHASE, T0 + timedelta(minutes=1), lines=[("a", 1, 5)], attributes={"name": "Bob"},
                    identities=bob, objects=[("order", "o2", {})]))
    md = tenant_md(tenant)
    merged = await service.ReassignIndividual(pb.ReassignIndividualRequest(
        from_individual_ids=["bob"], to_individual_id="ann"), metadata=md)
    p = await profile(service, tenant, "ann")
    assert merged.moved_event_count == 1 and p.insights["spend"] == 15.0 and p.attributes["name"] == "Bob"
    assert len(p.profile_objects) == 2
    split = await service.ReassignIndividual(pb.ReassignIndividualRequest(
        from_individual_ids=["ann"], to_individual_id="bob",
        only_events_with_identities=[common.Identity(type="email", value="bob@example.com")]), metadata=md)
    ann, bob_p = await profile(service, tenant, "ann"), await profile(service, tenant, "bob")
    assert split.moved_event_count == 1
    assert (ann.insights["spend"], ann.attributes["name"], [o.object.object_id for o in ann.profile_objects]) == (
        10.0, "Ann", ["o1"])
    assert (bob_p.insights["spend"], bob_p.attributes["name"], [o.object.object_id for o in bob_p.profile_objects]) == (
        5.0, "Bob", ["o2"])
    assert [c.purpose for c in ann.consents] == ["email"] and not bob_p.consents


# ---- live stream --------------------------------------------------------------------------------------------


async def test_watch_replays_the_last_events_then_streams_new_ones(service, tenant):
    await append(service, tenant, *[ev("s", when=T0 + timedelta(minutes=i), message_id=f"m{i}") for i in range(3)])
    stream = service.WatchEvents(pb.WatchEventsRequest(unified_individual_id="s", replay_count=2),
                                 metadata=tenant_md(tenant))
    seen = [(await stream.read()).event.message_id for _ in range(2)]
    await append(service, tenant, ev("other", message_id="x"), ev("s", message_id="m3"))
    seen.append((await asyncio.wait_for(stream.read(), 5)).event.message_id)
    stream.cancel()
    assert seen == ["m1", "m2", "m3"]


async def test_watch_without_an_id_is_refused(service, tenant):
    stream = service.WatchEvents(pb.WatchEventsRequest(replay_count=-1), metadata=tenant_md(tenant))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["unified_individual_id", "replay_count"]


async def _changes_until(stream, wanted: set[str] | None) -> tuple[set[str], bool]:
    """Reads a profile-changes stream until it has named every wanted individual (or said all changed, when wanted
    is None); returns what it named and whether it said all changed."""
    named: set[str] = set()
    everything = False
    while (not everything) if wanted is None else not wanted <= named:
        change = await asyncio.wait_for(stream.read(), 5)
        named.update(change.unified_individual_ids)
        everything = everything or change.all_changed
    return named, everything


async def test_profile_changes_name_each_committed_write_of_the_tenant_only(service, tenant):
    other = f"{tenant}_other"
    stream = service.WatchProfileChanges(pb.WatchProfileChangesRequest(), metadata=tenant_md(tenant))
    first = await asyncio.wait_for(stream.read(), 5)
    assert first.live and not first.unified_individual_ids and not first.all_changed
    md = tenant_md(tenant)
    await append(service, other, ev("intruder"))  # another tenant's write is never named here
    await append(service, tenant, ev("ann"), ev("bob"))
    assert await _changes_until(stream, {"ann", "bob"}) == ({"ann", "bob"}, False)
    await service.SetConsents(pb.SetConsentsRequest(unified_individual_id="cy", consents=[
        common.Consent(purpose="email", status=GRANTED)]), metadata=md)
    assert (await _changes_until(stream, {"cy"}))[0] == {"cy"}
    await service.ReassignIndividual(pb.ReassignIndividualRequest(from_individual_ids=["bob"], to_individual_id="ann"),
                                     metadata=md)
    assert (await _changes_until(stream, {"ann", "bob"}))[0] == {"ann", "bob"}
    await service.EraseIndividual(pb.EraseIndividualRequest(unified_individual_ids=["ann"]), metadata=md)
    assert (await _changes_until(stream, {"ann"}))[0] == {"ann"}
    await segment(service, tenant, "everyone", "true")
    named, everything = await _changes_until(stream, None)
    assert everything and "intruder" not in named
    stream.cancel()


async def test_a_draining_server_ends_its_profile_change_streams_instead_of_waiting_out_its_grace(database_url,
                                                                                                  tenant):
    built = await build(database_url)
    running, tasks = await start_built(built)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        stream = pb_grpc.ProfileGraphServiceStub(channel).WatchProfileChanges(pb.WatchProfileChangesRequest(),
                                                                             metadata=tenant_md(tenant))
        assert (await asyncio.wait_for(stream.read(), 5)).live
        stopping = asyncio.create_task(stop_built(built, running, tasks, grace=120))
        assert await asyncio.wait_for(stream.read(), 60) is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 60)  # well before the 120 s grace
    finally:
        await channel.close()


async def test_the_change_feed_never_skips_a_change_whose_transaction_commits_after_a_later_one(
        service, tenant, database_url):
    await insight(service, tenant, name="seen", aggregate=pb.AGGREGATE_COUNT, event_type=VIEW)
    await segment(service, tenant, "seen", "insights.seen >= 1.0")
    md = tenant_md(tenant)
    async with schema_connection(database_url, "profile_graph") as late:
        # A change whose transaction began first (so it has the lower id) and commits last; like every writer of
        # the feed, it holds the tenant's lock from before it wrote anything.
        transaction = late.transaction()
        await transaction.start()
        await late.execute(TENANT_LOCK, tenant)
        await late.execute("INSERT INTO membership_history (tenant_id, segment, individual_id, change) "
                           "VALUES ($1, 'seen', 'late', 'entered')", tenant)
        await append(service, tenant, ev("early"))
        while_open = await service.ListMembershipChanges(pb.ListMembershipChangesRequest(segment="seen"), metadata=md)
        assert list(while_open.changes) == [] and while_open.next_page_token == ""
        await transaction.commit()
    first = await service.ListMembershipChanges(pb.ListMembershipChangesRequest(segment="seen"), metadata=md)
    assert [(c.unified_individual_id, c.entered) for c in first.changes] == [("late", True), ("early", True)]
    after = await service.ListMembershipChanges(pb.ListMembershipChangesRequest(
        segment="seen", page_token=first.next_page_token), metadata=md)
    assert list(after.changes) == [] and after.next_page_token == ""


async def test_another_tenants_long_transaction_never_holds_this_tenants_change_feed_back(
        service, tenant, database_url):
    busy = f"{tenant}_busy"
    for t in (tenant, busy):
        await insight(service, t, name="seen", aggregate=pb.AGGREGATE_COUNT, event_type=VIEW)
        await segment(service, t, "seen", "insights.seen >= 1.0")
    async with schema_connection(database_url, "profile_graph") as long, \
            schema_connection(database_url, "profile_graph") as unrelated:
        # The busy tenant's writer, still running (a definition saved over a large tenant, say), and a transaction
        # of no tenant at all: both began before this tenant's change and have lower ids.
        held = long.transaction()
        await held.start()
        await long.execute(TENANT_LOCK, busy)
        await long.execute("INSERT INTO membership_history (tenant_id, segment, individual_id, change) "
                           "VALUES ($1, 'seen', 'slow', 'entered')", busy)
        other = unrelated.transaction()
        await other.start()
        await unrelated.execute("SELECT pg_current_xact_id()")
        try:
            await append(service, tenant, ev("prompt"))
            await append(service, busy, ev("quick"))
            mine = await service.ListMembershipChanges(pb.ListMembershipChangesRequest(segment="seen"),
                                                       metadata=tenant_md(tenant))
            assert [c.unified_individual_id for c in mine.changes] == ["prompt"]
            # The busy tenant's own feed waits for its writer: "quick" sorts after "slow", which is not committed.
            theirs = await service.ListMembershipChanges(pb.ListMembershipChangesRequest(segment="seen"),
                                                         metadata=tenant_md(busy))
            assert list(theirs.changes) == []
            await held.commit()
            theirs = await service.ListMembershipChanges(pb.ListMembershipChangesRequest(segment="seen"),
                                                         metadata=tenant_md(busy))
            assert [c.unified_individual_id for c in theirs.changes] == ["slow", "quick"]
        finally:
            await other.rollback()
