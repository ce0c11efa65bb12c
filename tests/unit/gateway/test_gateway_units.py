"""Unit tests of the gateway's use cases on fakes: validation, keys and scopes, pipeline composition."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from services.gateway import auth
from services.gateway.ingest import validate_batch
from services.gateway.pipeline import Pipeline, Stubs, interactions_of
from services.gateway.postgres import KeyRow
from shared.errors import InvalidArgument, PermissionDenied, Unauthenticated


def _event(message_id="m1", **overrides) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp(seconds=int(time.time()) - 60)
    event = common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=ts,
                             identities=[common_pb2.Identity(type="device_id", value="d1")])
    for key, value in overrides.items():
        if key == "event_time" and value is None:
            event.ClearField("event_time")
        elif isinstance(value, list):
            del getattr(event, key)[:]
            getattr(event, key).extend(value)
        else:
            setattr(event, key, value)
    return event


def test_a_valid_batch_passes_validation():
    validate_batch([_event("a"), _event("b", type=common_pb2.EVENT_TYPE_PRODUCT_VIEW, item_id="sku-1")])


def test_each_bad_field_gets_its_own_violation_path():
    events = [
        _event("ok"),
        _event("", event_time=None),
        _event("p", type=common_pb2.EVENT_TYPE_PURCHASE),
        _event("c", type=common_pb2.EVENT_TYPE_CUSTOM, identities=[common_pb2.Identity(type="Email", value=" ")]),
    ]
    with pytest.raises(InvalidArgument) as info:
        validate_batch(events)
    assert [f for f, _ in info.value.violations] == [
        "events[1].message_id",
        "events[1].event_time",
        "events[2].line_items",
        "events[3].identities[0].type",
        "events[3].identities[0].value",
        "events[3].name",
    ]


def test_consents_objects_and_source_are_checked_field_by_field():
    event = _event("x", source="Web!", consents=[common_pb2.Consent(purpose="email")],
                   profile_objects=[common_pb2.ProfileObject(type="order", object_id=" ")])
    with pytest.raises(InvalidArgument) as info:
        validate_batch([event])
    assert [f for f, _ in info.value.violations] == [
        "events[0].source", "events[0].consents[0].status", "events[0].profile_objects[0].object_id"]


def test_an_empty_batch_is_refused():
    with pytest.raises(InvalidArgument) as info:
        validate_batch([])
    assert info.value.violations[0][0] == "events"


def test_purchase_line_items_are_checked_one_by_one():
    purchase = _event("p", type=common_pb2.EVENT_TYPE_PURCHASE, line_items=[
        common_pb2.LineItem(item_id="a", quantity=1, unit_price=2.5),
        common_pb2.LineItem(item_id="", quantity=0, unit_price=-1),
    ])
    with pytest.raises(InvalidArgument) as info:
        validate_batch([purchase])
    assert [f for f, _ in info.value.violations] == [
        "events[0].line_items[1].item_id", "events[0].line_items[1].quantity", "events[0].line_items[1].unit_price"]


def test_a_return_needs_lines_of_positive_units_and_only_a_return_names_an_order():
    events = [
        _event("r0", type=common_pb2.EVENT_TYPE_RETURN, order_id="o1"),
        _event("r1", type=common_pb2.EVENT_TYPE_RETURN, order_id="o" * 129, line_items=[
            common_pb2.LineItem(item_id="a", quantity=2, unit_price=2.5),
            common_pb2.LineItem(item_id="b", quantity=-1, unit_price=4.0),
            common_pb2.LineItem(item_id="c", quantity=0, unit_price=1.0)]),
        _event("p", type=common_pb2.EVENT_TYPE_PURCHASE, order_id="o1",
               line_items=[common_pb2.LineItem(item_id="a", quantity=1, unit_price=1.0)]),
        _event("r2", type=common_pb2.EVENT_TYPE_RETURN, order_id="o1",
               line_items=[common_pb2.LineItem(item_id="a", quantity=1, unit_price=1.0)]),
    ]
    with pytest.raises(InvalidArgument) as info:
        validate_batch(events)
    assert [f for f, _ in info.value.violations] == [
        "events[0].line_items", "events[1].line_items[2].quantity", "events[1].order_id",
        "events[1].line_items[1].quantity", "events[2].order_id"]
    validate_batch(events[3:])


def test_a_return_yields_one_interaction_per_line_naming_the_order():
    refund = _event("r", type=common_pb2.EVENT_TYPE_RETURN, order_id="o1", line_items=[
        common_pb2.LineItem(item_id="a", quantity=2, unit_price=2.5)])
    got = [(i.item_id, i.type, i.quantity, i.revenue, i.order_id) for i in interactions_of("ind_1", refund)]
    assert got == [("a", common_pb2.EVENT_TYPE_RETURN, 2.0, 5.0, "o1")]


def test_a_purchase_yields_one_interaction_per_line_with_revenue():
    purchase = _event("p", type=common_pb2.EVENT_TYPE_PURCHASE, line_items=[
        common_pb2.LineItem(item_id="a", quantity=2, unit_price=2.5),
        common_pb2.LineItem(item_id="b", quantity=-1, unit_price=4.0),
    ])
    got = [(i.item_id, i.quantity, i.revenue) for i in interactions_of("ind_1", purchase)]
    assert got == [("a", 2.0, 5.0), ("b", -1.0, -4.0)]
    assert interactions_of("ind_1", _event("v")) == []


class FakeKeyStore:
    def __init__(self):
        self.rows: dict[str, KeyRow] = {}
        self.tenants = {"acme"}
        self.lookups = 0

    async def tenant_exists(self, tenant_id):
        return tenant_id in self.tenants

    async def insert_key(self, tenant_id, key_id, secret_hash, scopes, display_name, browser=False):
        row = KeyRow(tenant_id, key_id, secret_hash, tuple(scopes), display_name, datetime.now(timezone.utc), None,
                     browser)
        self.rows[key_id] = row
        return row

    async def find_key(self, key_id):
        self.lookups += 1
        return self.rows.get(key_id)

    async def revoke_key(self, tenant_id, key_id):
        row = self.rows.get(key_id)
        if row is None or row.tenant_id != tenant_id:
            return None
        revoked = KeyRow(*[*row.__dict__.values()][:6], datetime.now(timezone.utc))
        self.rows[key_id] = revoked
        return revoked


async def test_a_key_authenticates_to_its_tenant_and_is_stored_only_as_a_hash():
    store = FakeKeyStore()
    keys = auth.KeyService(store)
    row, secret = await keys.create_key("acme", ["ingest"])
    assert secret.encode() not in row.secret_hash and row.secret_hash == auth.hash_secret(secret)
    tenant = await keys.authenticate(auth.GATEWAY + "IngestEvents", {"authorization": f"Bearer {secret}"})
    assert tenant == "acme"


async def test_a_key_without_the_scope_is_permission_denied():
    keys = auth.KeyService(FakeKeyStore())
    _, secret = await keys.create_key("acme", ["ingest"])
    with pytest.raises(PermissionDenied) as info:
        await keys.authenticate(auth.GATEWAY + "GetDecisions", {"authorization": f"Bearer {secret}"})
    assert info.value.reason == "SCOPE_MISSING"


@pytest.mark.parametrize("header", ["", "Bearer ", "Basic abc", "Bearer tlr_0123456789abcdef_wrong"])
async def test_missing_or_wrong_keys_are_unauthenticated(header):
    keys = auth.KeyService(FakeKeyStore())
    await keys.create_key("acme", ["admin"])
    with pytest.raises(Unauthenticated):
        await keys.authenticate(auth.GATEWAY + "ListApiKeys", {"authorization": header} if header else {})


async def test_a_revoked_key_stops_working_at_once_on_this_replica():
    keys = auth.KeyService(FakeKeyStore(), cache_seconds=60)
    row, secret = await keys.create_key("acme", ["decide"])
    await keys.authenticate(auth.GATEWAY + "GetDecisions", {"authorization": f"Bearer {secret}"})
    await keys.revoke_key("acme", row.key_id)
    with pytest.raises(Unauthenticated) as info:
        await keys.authenticate(auth.GATEWAY + "GetDecisions", {"authorization": f"Bearer {secret}"})
    assert info.value.reason == "API_KEY_INVALID"


async def test_unknown_scopes_are_refused_with_their_index():
    keys = auth.KeyService(FakeKeyStore())
    with pytest.raises(InvalidArgument) as info:
        await keys.create_key("acme", ["ingest", "root"])
    assert info.value.violations[0][0] == "scopes[1]"


class Recorder:
    """A fake of the three downstream stubs that records calls in order."""

    def __init__(self, resolutions):
        self.resolutions = resolutions
        self.calls = []

    async def ResolveIdentities(self, request):
        self.calls.append(("resolve", len(request.subjects)))
        return identity_pb.ResolveIdentitiesResponse(resolutions=self.resolutions)

    async def ReassignIndividual(self, request):
        if hasattr(request, "from_individual_ids"):
            self.calls.append(("reassign", list(request.from_individual_ids), request.to_individual_id))
        else:
            self.calls.append(("reassign_cohorts", list(request.from_unified_individual_ids),
                               request.to_unified_individual_id))

    async def ReassignInteractions(self, request):
        self.calls.append(("reassign_interactions", list(request.from_individual_ids), request.to_individual_id))

    async def MarkMergeEventsPropagated(self, request):
        self.calls.append(("marked", [(m.survivor_individual_id, m.merged_individual_id) for m in request.merges]))

    async def AppendEvents(self, request):
        self.calls.append(("append", [e.unified_individual_id for e in request.events]))

    async def RecordInteractions(self, request):
        self.calls.append(("record", [i.item_id for i in request.interactions]))

    async def RecordOutcomes(self, request):
        self.calls.append(("outcomes", [(o.outcome_id, o.revenue) for o in request.outcomes]))


async def test_events_resolved_before_a_merge_are_appended_to_the_survivor():
    fake = Recorder([
        identity_pb.Resolution(unified_individual_id="ind_anon", created=True),
        identity_pb.Resolution(unified_individual_id="ind_known", merged_individual_ids=["ind_anon"]),
    ])
    view = _event("v1", type=common_pb2.EVENT_TYPE_PRODUCT_VIEW, item_id="sku")
    login = _event("l1", type=common_pb2.EVENT_TYPE_LOGIN)
    await Pipeline(Stubs(fake, fake, fake, fake)).process([view, login])
    assert fake.calls == [
        ("resolve", 2),
        ("reassign", ["ind_anon"], "ind_known"),
        ("reassign_cohorts", ["ind_anon"], "ind_known"),
        ("reassign_interactions", ["ind_anon"], "ind_known"),
        ("marked", [("ind_known", "ind_anon")]),
        ("append", ["ind_known", "ind_known"]),
        ("record", ["sku"]),
    ]


async def test_purchases_with_revenue_and_clicks_become_outcomes_and_returns_do_not():
    fake = Recorder([identity_pb.Resolution(unified_individual_id="ind_1")] * 3)
    buy = _event("b1", type=common_pb2.EVENT_TYPE_PURCHASE,
                 line_items=[common_pb2.LineItem(item_id="a", quantity=2, unit_price=3.0)])
    refund = _event("r1", type=common_pb2.EVENT_TYPE_PURCHASE,
                    line_items=[common_pb2.LineItem(item_id="a", quantity=-2, unit_price=3.0)])
    click = _event("c1", type=common_pb2.EVENT_TYPE_EMAIL_CLICK, item_id="a")
    await Pipeline(Stubs(fake, fake, fake, fake)).process([buy, refund, click])
    assert ("outcomes", [("b1", 6.0), ("c1", 0.0)]) in fake.calls


class CountingIdentity:
    def __init__(self):
        self.calls = 0

    async def ResolveIdentities(self, request):
        self.calls += 1
        found = "ind_1" if request.subjects[0].identities[0].value == "known" else ""
        return identity_pb.ResolveIdentitiesResponse(resolutions=[identity_pb.Resolution(unified_individual_id=found)])


async def test_found_identities_are_cached_briefly_and_unknown_ones_never():
    from services.gateway.decide import Decider

    identity = CountingIdentity()
    decider = Decider(Stubs(identity, None, None, None), None, None, resolve_cache_seconds=60)
    known = common_pb2.Identity(type="device_id", value="known")
    new = common_pb2.Identity(type="device_id", value="new")
    assert [await decider.resolve(known, "") for _ in range(3)] == ["ind_1"] * 3
    assert identity.calls == 1
    assert [await decider.resolve(new, "") for _ in range(2)] == ["", ""]
    assert identity.calls == 3
    await decider.resolve(known, "", cached=False)
    assert identity.calls == 4


def test_a_batch_members_context_comes_from_their_recent_events_as_the_job_chooses():
    from services.gateway.personalize import member_context

    def e(type_, item_id="", lines=()):
        return common_pb2.Event(type=type_, item_id=item_id,
                                line_items=[common_pb2.LineItem(item_id=i, quantity=1) for i in lines])

    newest_first = [e(common_pb2.EVENT_TYPE_ADD_TO_CART, "c2"), e(common_pb2.EVENT_TYPE_PRODUCT_VIEW, "v2"),
                    e(common_pb2.EVENT_TYPE_ADD_TO_CART, "c1"), e(common_pb2.EVENT_TYPE_PURCHASE, lines=["p1", "p2"]),
                    e(common_pb2.EVENT_TYPE_ADD_TO_CART, "bought_before"), e(common_pb2.EVENT_TYPE_PRODUCT_VIEW, "v1")]
    cart_and_viewed = member_context(newest_first, [pb.BATCH_CONTEXT_SOURCE_LAST_CART,
                                                    pb.BATCH_CONTEXT_SOURCE_RECENTLY_VIEWED])
    assert list(cart_and_viewed.cart_item_ids) == ["c2", "c1"]  # added since the last purchase
    assert (cart_and_viewed.anchor_id, cart_and_viewed.anchor_type, cart_and_viewed.channel) == ("v2", "product",
                                                                                                  "batch")
    assert dict(cart_and_viewed.attributes)["recently_viewed"] == ["v2", "v1"]
    purchase_first = member_context(newest_first, [pb.BATCH_CONTEXT_SOURCE_LAST_PURCHASE,
                                                   pb.BATCH_CONTEXT_SOURCE_RECENTLY_VIEWED])
    assert (purchase_first.anchor_id, purchase_first.anchor_type) == ("p1", "purchase")
    assert list(purchase_first.cart_item_ids) == []
    assert member_context(newest_first, []) == pb.DecisionContext(channel="batch")


def test_what_the_decide_path_remembers_is_bounded_per_tenant_and_never_evicts_another_tenants():
    from services.gateway.decide import PerTenant

    remembered = PerTenant(limit=3)
    remembered.put("calm", "visitor", "u1")
    for n in range(10_000):  # a tenant with many keys pushes out only its own oldest
        remembered.put("busy", f"k{n}", n)
    assert remembered.get("calm", "visitor") == "u1"
    assert [remembered.get("busy", f"k{n}") for n in (9_996, 9_997, 9_998, 9_999)] == [None, 9_997, 9_998, 9_999]
    remembered.put("busy", "k9997", "again")  # a key already there takes no room
    assert remembered.get("busy", "k9998") == 9_998
    remembered.pop("calm", "visitor")
    remembered.pop("nobody", "visitor")
    assert remembered.get("calm", "visitor") is None and remembered.get("nobody", "visitor") is None
