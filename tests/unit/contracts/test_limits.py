"""Every limit of the event contract: the generated checks refuse it, name the field and never echo the value."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from personalization.common.v1 import common_pb2, limits_pb2
from shared import contract
from shared.errors import InvalidArgument, Violations

NOW = time.time()
SECRET = "s3cr3t"  # in every bad value, so a description that echoes a value is caught


def _event() -> common_pb2.Event:
    event = common_pb2.Event(message_id="m1", type=common_pb2.EVENT_TYPE_PURCHASE, name="checkout", source="web",
                             item_id="sku-1", identities=[common_pb2.Identity(type="email", value="a@example.com")],
                             line_items=[common_pb2.LineItem(item_id="sku-1", quantity=2, unit_price=9.5)],
                             consents=[common_pb2.Consent(purpose="email", status=common_pb2.CONSENT_STATUS_GRANTED)],
                             profile_objects=[common_pb2.ProfileObject(type="order", object_id="o1")])
    event.event_time.seconds = int(NOW) - 60
    event.attributes.update({"first_name": "Ann", "age": 31, "tags": ["a", "b"], "vip": True, "none": None})
    event.properties.update({"url": "https://example.com/", "cart": {"items": [1, 2, {"x": "y"}]}})
    event.profile_objects[0].attributes.update({"total": 12.5, "lines": [{"sku": "a"}]})
    return event


def _violations(event: common_pb2.Event, known=None) -> list[tuple[str, str]]:
    v = Violations()
    ok = contract.EVENT.add(event, "events[0]", v, NOW, known)
    assert ok == (not v.items)
    return v.items


def _long(n: int) -> str:
    return (SECRET * (n // len(SECRET) + 1))[:n]


def test_a_full_valid_event_passes_both_the_fast_and_the_detailed_check():
    assert _violations(_event()) == []
    assert contract.EVENT.ok(_event(), NOW)


def _set(path: str, value):
    def apply(e):
        target = e
        *parts, last = path.split(".")
        for part in parts:
            target = getattr(target, part) if not part.isdigit() else target[int(part)]
        setattr(target, last, value)
    return apply


def _struct(field: str, value: dict):
    def apply(e):
        getattr(e, field).update(value)
    return apply


def _nested(depth: int, leaf="x") -> dict:
    value: object = leaf
    for _ in range(depth):
        value = {"k": value}
    return value  # type: ignore[return-value]


CASES = [
    # (what, change, field, description)
    ("empty message id", _set("message_id", ""), "events[0].message_id", "is required"),
    ("blank message id", _set("message_id", "   "), "events[0].message_id", "is required"),
    ("long message id", _set("message_id", _long(129)), "events[0].message_id", "must be at most 128 characters"),
    ("NUL in message id", _set("message_id", SECRET + "\x00"), "events[0].message_id",
     "must not contain NUL characters"),
    ("unspecified type", _set("type", 0), "events[0].type", "must be a known EventType other than "
                                                            "EVENT_TYPE_UNSPECIFIED"),
    ("undeclared type value", _set("type", 99), "events[0].type", "must be a known EventType other than "
                                                                  "EVENT_TYPE_UNSPECIFIED"),
    ("long name", _set("name", _long(129)), "events[0].name", "must be at most 128 characters"),
    ("no event time", lambda e: e.ClearField("event_time"), "events[0].event_time", "is required"),
    ("nanos out of range", _set("event_time.nanos", 1_000_000_000), "events[0].event_time",
     "must be a time between 1970 and 9999 with nanos from 0 to 999,999,999"),
    ("negative seconds", _set("event_time.seconds", -5), "events[0].event_time",
     "must be a time between 1970 and 9999 with nanos from 0 to 999,999,999"),
    ("after year 9999", _set("event_time.seconds", 253_402_300_800), "events[0].event_time",
     "must be a time between 1970 and 9999 with nanos from 0 to 999,999,999"),
    ("two days ahead", _set("event_time.seconds", int(NOW) + 2 * 86400), "events[0].event_time",
     "must not be more than 86,400 seconds in the future"),
    ("no identity", lambda e: e.ClearField("identities"), "events[0].identities", "at least one is required"),
    ("33 identities", lambda e: e.identities.extend([common_pb2.Identity(type="email", value="x")] * 32),
     "events[0].identities", "at most 32 items"),
    ("identity type form", _set("identities.0.type", "E-mail"), "events[0].identities[0].type",
     "must match ^[a-z][a-z0-9_]{0,63}$"),
    ("identity type length", _set("identities.0.type", "a" * 65), "events[0].identities[0].type",
     "must be at most 64 characters"),
    ("empty identity value", _set("identities.0.value", ""), "events[0].identities[0].value", "is required"),
    ("long identity value", _set("identities.0.value", _long(513)), "events[0].identities[0].value",
     "must be at most 512 characters"),
    ("NUL in identity value", _set("identities.0.value", "a\x00" + SECRET), "events[0].identities[0].value",
     "must not contain NUL characters"),
    ("101 attributes", _struct("attributes", {f"a{n}": n for n in range(101)}), "events[0].attributes",
     "at most 100 fields"),
    ("NaN attribute", _struct("attributes", {"score": float("nan")}), "events[0].attributes.score",
     "must be a finite number"),
    ("infinite attribute", _struct("attributes", {"score": float("-inf")}), "events[0].attributes.score",
     "must be a finite number"),
    ("deep attribute", _struct("attributes", {"address": _nested(3)}), "events[0].attributes.address.k.k",
     "nesting deeper than 3 levels"),
    ("long attribute key", _struct("attributes", {"k" * 65: 1}), "events[0].attributes",
     "keys must be 1 to 64 characters without NUL"),
    ("empty attribute key", _struct("attributes", {"": 1}), "events[0].attributes",
     "keys must be 1 to 64 characters without NUL"),
    ("long attribute string", _struct("attributes", {"bio": _long(513)}), "events[0].attributes.bio",
     "strings must be at most 512 characters"),
    ("NUL in attribute string", _struct("attributes", {"bio": SECRET + "\x00"}), "events[0].attributes.bio",
     "must not contain NUL characters"),
    ("attribute value over its JSON size", _struct("attributes", {"tags": ["\u00e9" * 120] * 3}),
     "events[0].attributes.tags", "must be at most 2,048 bytes as JSON"),
    ("long item id", _set("item_id", _long(257)), "events[0].item_id", "must be at most 256 characters"),
    ("1001 line items", lambda e: e.line_items.extend([e.line_items[0]] * 1000), "events[0].line_items",
     "at most 1,000 items"),
    ("line without item", _set("line_items.0.item_id", ""), "events[0].line_items[0].item_id", "is required"),
    ("zero quantity", _set("line_items.0.quantity", 0.0), "events[0].line_items[0].quantity", "must not be zero"),
    ("NaN quantity", _set("line_items.0.quantity", float("nan")), "events[0].line_items[0].quantity",
     "must be a finite number"),
    ("huge quantity", _set("line_items.0.quantity", 2e9), "events[0].line_items[0].quantity",
     "must be between -1,000,000,000 and 1,000,000,000"),
    ("negative price", _set("line_items.0.unit_price", -1.0), "events[0].line_items[0].unit_price",
     "must be between 0 and 1,000,000,000,000"),
    ("infinite price", _set("line_items.0.unit_price", float("inf")), "events[0].line_items[0].unit_price",
     "must be a finite number"),
    ("201 properties", _struct("properties", {f"p{n}": n for n in range(201)}), "events[0].properties",
     "at most 200 fields"),
    ("deep properties", _struct("properties", {"a": _nested(8)}), "events[0].properties.a.k.k.k.k.k.k.k",
     "nesting deeper than 8 levels"),
    ("long property key", _struct("properties", {"k" * 129: 1}), "events[0].properties",
     "keys must be 1 to 128 characters without NUL"),
    ("long property string", _struct("properties", {"page": _long(8193)}), "events[0].properties.page",
     "strings must be at most 8,192 characters"),
    ("large properties", _struct("properties", {f"p{n}": _long(8000) for n in range(17)}), "events[0].properties",
     "must be at most 131,072 bytes serialized"),
    ("source form", _set("source", "Web!"), "events[0].source", "must match ^[a-z][a-z0-9_]{0,63}$"),
    ("33 consents", lambda e: e.consents.extend([e.consents[0]] * 32), "events[0].consents", "at most 32 items"),
    ("consent purpose", _set("consents.0.purpose", ""), "events[0].consents[0].purpose", "is required"),
    ("consent status", _set("consents.0.status", 0), "events[0].consents[0].status",
     "must be a known ConsentStatus other than CONSENT_STATUS_UNSPECIFIED"),
    ("33 profile objects", lambda e: e.profile_objects.extend([e.profile_objects[0]] * 32),
     "events[0].profile_objects", "at most 32 items"),
    ("object type", _set("profile_objects.0.type", "Order"), "events[0].profile_objects[0].type",
     "must match ^[a-z][a-z0-9_]{0,63}$"),
    ("object id", _set("profile_objects.0.object_id", _long(129)), "events[0].profile_objects[0].object_id",
     "must be at most 128 characters"),
    ("object attribute", lambda e: e.profile_objects[0].attributes.update({"total": float("inf")}),
     "events[0].profile_objects[0].attributes.total", "must be a finite number"),
    ("whole event size", lambda e: [e.profile_objects.add(type="note", object_id=f"n{n}").attributes.update(
        {f"k{k}": _long(8000) for k in range(7)}) for n in range(5)], "events[0]",
     f"must be at most {contract.MAX_EVENT_BYTES:,} bytes serialized"),
]


@pytest.mark.parametrize("what,change,field,description", CASES, ids=[c[0] for c in CASES])
def test_each_limit_is_refused_naming_the_field_and_the_limit(what, change, field, description):
    event = _event()
    change(event)
    got = _violations(event)
    assert got == [(field, description)]
    assert all(SECRET not in d for _, d in got)


def test_an_identity_type_the_tenant_did_not_declare_is_refused_when_the_types_are_known():
    event = _event()
    assert _violations(event, known=frozenset({"email", "device_id"})) == []
    event.identities.add(type="loyalty_card", value="L1")
    assert _violations(event, known=frozenset({"email"})) == [
        ("events[0].identities[1].type", "unknown identity type: declare it first")]
    # Without the tenant's types (a downstream service), only the form is checked.
    assert _violations(event) == []


def test_the_fast_check_and_the_detailed_check_agree_on_every_case():
    for _, change, _, _ in CASES:
        event = _event()
        change(event)
        assert not contract.EVENT.ok(event, NOW)


def test_check_raises_one_invalid_argument_for_a_request():
    from personalization.profile_graph.v1 import profile_graph_service_pb2 as ppb

    request = ppb.AppendEventsRequest(events=[ppb.IndividualEvent(unified_individual_id="i1", event=_event())])
    contract.check(request)
    request.events[0].event.line_items[0].unit_price = float("nan")
    with pytest.raises(InvalidArgument) as info:
        contract.check(request)
    assert info.value.violations == [("events[0].event.line_items[0].unit_price", "must be a finite number")]


def test_the_limits_are_readable_from_the_descriptors():
    field = common_pb2.Event.DESCRIPTOR.fields_by_name["message_id"]
    assert field.GetOptions().Extensions[limits_pb2.field].max_length == 128
    message = common_pb2.Event.DESCRIPTOR.GetOptions().Extensions[limits_pb2.message]
    assert (message.max_bytes, message.max_bytes_env) == (262_144, "TAILOR_MAX_EVENT_BYTES")


def test_the_event_size_limit_is_read_from_the_environment():
    code = "from shared import contract; print(contract.MAX_EVENT_BYTES)"
    env = {**os.environ, "TAILOR_MAX_EVENT_BYTES": "65536"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "65536"
    env["TAILOR_MAX_EVENT_BYTES"] = "lots"
    failed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "TAILOR_MAX_EVENT_BYTES" in failed.stderr


def test_raise_merged_adds_the_services_own_violations_on_other_fields_in_request_order():
    def service_check():
        raise InvalidArgument([("events[0].event.type", "not for this service"), ("events[1].x", "a dup"),
                               ("events[2].event.source", "unknown source")])

    def broken_on_refused_data():
        raise ValueError("trips on a NaN the contract already refused")

    found = [("events[1].x", "from the contract"), ("events[10].y", "from the contract")]
    with pytest.raises(InvalidArgument) as info:
        contract.raise_merged(found, service_check, broken_on_refused_data)
    assert info.value.violations == [
        ("events[0].event.type", "not for this service"), ("events[1].x", "from the contract"),
        ("events[2].event.source", "unknown source"), ("events[10].y", "from the contract")]


def test_a_thousand_bad_events_send_a_bounded_error():
    events = [_event() for _ in range(1000)]
    for event in events:
        event.message_id = ""
    v = Violations()
    contract.EVENT.add_each(events, "events", v, NOW)
    error = InvalidArgument(v.items)
    assert len(error.violations) == 1000
    assert len(error.to_status().trailing_metadata[0][1]) < 4000
    assert error.message.endswith("; and 995 more") and len(error.message) < 400


def test_a_duration_outside_what_protobuf_allows_is_refused_naming_the_field():
    from personalization.decision.v1 import decision_service_pb2 as dpb

    for seconds, nanos in ((2**62, 0), (-(2**40), 0), (5, -1), (-5, 1), (0, 1_000_000_000)):
        request = dpb.GetAttributionRequest()
        request.window.seconds, request.window.nanos = seconds, nanos
        assert [f for f, _ in contract.violations(request)] == ["window"]
    request.window.seconds, request.window.nanos = 315_576_000_000, 999_999_999
    assert contract.violations(request) == []
