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
