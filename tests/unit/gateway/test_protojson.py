"""The HTTP port's fast JSON decoder means what protobuf's json_format means: same messages, same errors."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway import protojson

EVENT = {"messageId": "m-1", "type": "EVENT_TYPE_PURCHASE", "eventTime": "2026-12-06T10:00:00.250Z",
         "identities": [{"type": "email", "value": "ada@example.com"}], "source": "web",
         "attributes": {"first_name": "Ada", "vip": True, "n": 3, "tags": ["a", None, {"x": 1.5}]},
         "line_items": [{"item_id": "22423", "quantity": 80, "unitPrice": 12.75}],
         "consents": [{"purpose": "email", "status": 1}], "properties": {}}

VALID = [
    (pb.IngestEventsRequest, {"events": [EVENT, {**EVENT, "messageId": "m-2", "type": 3}]}),
    (pb.IngestEventsRequest, {}),
    (pb.GetDecisionsRequest, {"individualId": {"type": "device_id", "value": "d"},
                              "personalizationPoints": [{"name": "home_banner"}],
                              "context": {"cartItemIds": ["1", "2"], "attributes": {"k": "v"}},
                              "executionFlags": ["EXECUTION_FLAG_DIAGNOSTICS"]}),
    (pb.ListDeadLettersRequest, {"filter": {"failTimeFrom": "2026-01-01T00:00:00Z"}, "pageSize": "50"}),
    (decision_pb.UpsertDecisionRequest, {"decision": {"pointName": "p", "name": "d", "content": {"headline": "Hi"},
                                                      "priority": 3}}),
    (decision_pb.UpsertExperimentRequest, {"experiment": {"name": "e", "minDuration": "3600s",
                                                          "chanceToWinThreshold": 95}}),
]

TIMES = ["2026-12-06T10:00:00Z", "2026-12-06T10:00:00.5Z", "2026-12-06T10:00:00.123456789Z",
         "2026-12-06T10:00:00+02:00", "2026-12-06T10:00:00.000001-05:30", "1970-01-01T00:00:00Z",
         "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z", "1969-12-31T23:59:59.5Z"]

INVALID = [
    (pb.IngestEventsRequest, b'{"events": [{"messageId": 1}]}'),
    (pb.IngestEventsRequest, b'{"events": [{"eventTime": "yesterday"}]}'),
    (pb.IngestEventsRequest, b'{"nope": 1}'),
    (pb.IngestEventsRequest, b'{"events": [], "events": []}'),
    (pb.IngestEventsRequest, b'{"events": [{"type": "EVENT_TYPE_NOPE"}]}'),
    (pb.GetDecisionsRequest, b'{"individualId": "x"}'),
    (pb.ListDeadLettersRequest, b'{"pageSize": 1.5}'),
    (pb.ListDeadLettersRequest, b'{"pageSize": "99999999999"}'),
    (decision_pb.UpsertDecisionRequest, b'{"decision": {"content": {"a": 1}, "recommendations": {}}}'),
    (pb.IngestEventsRequest, b'[1]'),
    (pb.IngestEventsRequest, b'{"events": [{"eventTime": "2026-13-01T00:00:00Z"}]}'),
    (pb.IngestEventsRequest, b'{"events": [{"eventTime": "2026-12-06 10:00:00Z"}]}'),
    (pb.IngestEventsRequest, b'{"events": [{"messageId": "\xff"}]}'),
]


@pytest.mark.parametrize("message_class, data", VALID)
def test_a_valid_body_gives_the_message_json_format_gives(message_class, data):
    body = json.dumps(data).encode()
    assert protojson.parse(body, message_class) == json_format.Parse(body, message_class())


@pytest.mark.parametrize("message_class, body", INVALID)
def test_an_invalid_body_fails_as_json_format_fails(message_class, body):
    with pytest.raises(Exception) as expected:
        json_format.Parse(body, message_class())
    with pytest.raises(type(expected.value)) as got:
        protojson.parse(body, message_class)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("time", TIMES)
def test_a_time_reads_as_json_format_reads_it(time):
    body = json.dumps({"events": [{"eventTime": time}]}).encode()
    assert protojson.parse(body, pb.IngestEventsRequest) == json_format.Parse(body, pb.IngestEventsRequest())


def _fill(message, rng, depth: int = 0) -> None:
    """Sets a random share of message's fields to random values of their kind (nested messages a few levels)."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        kind = field.message_type
        if kind is not None and kind.GetOptions().map_entry:
            container = getattr(message, field.name)
            for _ in range(rng.randint(0, 3)):
                key = _scalar(kind.fields_by_name["key"], rng)
                value_field = kind.fields_by_name["value"]
                if value_field.message_type is not None:
                    if depth < 3:
                        _fill_message(container[key], value_field.message_type, rng, depth + 1)
                else:
                    container[key] = _scalar(value_field, rng)
        elif field.is_repeated:
            container = getattr(message, field.name)
            for _ in range(rng.randint(0, 3)):
                if kind is not None:
                    if depth < 3:
                        _fill_message(container.add(), kind, rng, depth + 1)
                else:
                    container.append(_scalar(field, rng))
        elif kind is not None:
            if depth < 3:
                _fill_message(getattr(message, field.name), kind, rng, depth + 1)
        else:
            setattr(message, field.name, _scalar(field, rng))


def _fill_message(message, kind, rng, depth: int) -> None:
    name = kind.full_name
    if name == "google.protobuf.Timestamp":
        message.FromSeconds(rng.randint(0, 4_000_000_000))
        message.nanos = rng.choice([0, 500_000_000, 123_456_789])
    elif name == "google.protobuf.Duration":
        message.FromSeconds(rng.randint(0, 100_000))
    elif name == "google.protobuf.Struct":
        message.update({"a": rng.random(), "b": "é ✓", "c": [1, None, {"d": True}]})
    elif name == "google.protobuf.Value":
        message.string_value = "v"
    elif not name.startswith("google.protobuf."):
        _fill(message, rng, depth)


def _scalar(field, rng):
    from google.protobuf.descriptor import FieldDescriptor as FD

    kind = field.type
    if kind == FD.TYPE_STRING:
        return rng.choice(["", "x", "Ada Lovelace", "naïve ☃ \u2028", 'quote " and \\ backslash'])
    if kind == FD.TYPE_BYTES:
        return rng.choice([b"", b"\x00\xff", b"abc"])
    if kind == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == FD.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [99])
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return rng.choice([0.0, -0.0, 1.5, -2.25, 1e300 if kind == FD.TYPE_DOUBLE else 3.5, float("inf"), float("nan"),
                           0.1])
    if kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return rng.randint(0, 2**32 - 1)
    if kind in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return rng.randint(0, 2**64 - 1)
    if kind in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return rng.randint(-2**63, 2**63 - 1)
    return rng.randint(-2**31, 2**31 - 1)


def _all_messages():
    from google.protobuf import message_factory

    from personalization.identity.v1 import identity_service_pb2 as identity_pb
    from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
    from personalization.recommender.v1 import recommender_service_pb2 as rec_pb

    for module in (pb, decision_pb, identity_pb, profile_pb, rec_pb):
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            yield message_factory.GetMessageClass(descriptor)


@pytest.mark.parametrize("message_class", list(_all_messages()), ids=lambda c: c.DESCRIPTOR.name)
def test_a_reply_is_printed_as_json_format_prints_it(message_class):
    import random

    rng = random.Random(message_class.DESCRIPTOR.full_name)
    for _ in range(5):
        message = message_class()
        _fill(message, rng)
        assert protojson.dump(message) == json_format.MessageToJson(message, indent=None).encode()
