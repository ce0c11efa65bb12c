"""Activation rules without a database: diffing, batching, validation, and the MCP context summary."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.activation import (
    Activations,
    ActivationSettings,
    attributes_hash,
    chunks,
    columns_of,
    membership_changes,
    primary_key_of,
    public_destination,
    validate_activation,
    validate_destination,
)
from services.gateway.mcp_server import context_summary, key_attributes
from shared.errors import InvalidArgument


def fields(violations) -> list[str]:
    return [f for f, _ in violations.items]


# Diffing and batching.

def test_new_members_are_entries_and_departed_members_are_exits():
    entries, exits = membership_changes({"a", "b", "c"}, {"b": True, "c": False, "d": True, "e": False})
    assert entries == ["a", "c"]      # c left before and came back
    assert exits == ["d"]             # e already left: not sent again


def test_nothing_changes_when_the_delivered_membership_matches():
    assert membership_changes({"a", "b"}, {"a": True, "b": True, "z": False}) == ([], [])


def test_rows_are_cut_into_batches_of_at_most_the_batch_size():
    rows = list(range(250))
    assert [len(c) for c in chunks(rows, 100)] == [100, 100, 50]
    assert [x for c in chunks(rows, 100) for x in c] == rows
    assert chunks([], 100) == []


def test_the_attributes_hash_ignores_key_order_and_sees_value_changes():
    assert attributes_hash({"a": 1, "b": "x"}) == attributes_hash({"b": "x", "a": 1})
    assert attributes_hash({"a": 1, "b": "x"}) != attributes_hash({"a": 1, "b": "y"})
    assert attributes_hash({"a": None}) != attributes_hash({})


# Validation.

def test_a_destination_without_kind_or_with_a_bad_name_lists_each_bad_field():
    assert fields(validate_destination(pb.Destination(name="Bad Name", batch_size=20_000))) == [
        "destination.name", "destination.kind", "destination.batch_size"]


def test_a_file_destination_needs_a_relative_folder_and_a_format():
    v = validate_destination(pb.Destination(name="files", file=pb.FileDestination(directory="../up")))
    assert fields(v) == ["destination.file.directory", "destination.file.format"]


def test_an_activation_lists_each_bad_field_with_its_path():
    v = validate_activation(pb.Activation(name="x", attributes=pb.AttributesSource(
        attributes=["tier", "tier", "bad-name", "segment"]), primary_key=["email", "tier"]))
    assert fields(v) == ["activation.destination", "activation.attributes.segment",
                         "activation.attributes.attributes[1]", "activation.attributes.attributes[2]",
                         "activation.attributes.attributes[3]", "activation.primary_key[0]"]
    assert fields(validate_activation(pb.Activation(name="x", destination="d"))) == ["activation.source"]


def test_row_fields_and_default_primary_keys_follow_the_source():
    seg = pb.Activation(segment_membership=pb.SegmentMembershipSource(segment="gold"))
    attrs = pb.Activation(attributes=pb.AttributesSource(segment="gold", attributes=["tier", "city"]))
    batch = pb.Activation(batch_output=pb.BatchOutputSource(schedule_name="nightly"), primary_key=["individual_id"])
    assert columns_of(seg) == ["unified_individual_id", "segment", "member"]
    assert columns_of(attrs) == ["unified_individual_id", "segment", "tier", "city"]
    assert "payload" in columns_of(batch) and "batch_job_id" in columns_of(batch)
    assert primary_key_of(seg) == ["unified_individual_id", "segment"]
    assert primary_key_of(attrs) == ["unified_individual_id"]
    assert primary_key_of(batch) == ["individual_id"]


def test_the_secret_is_never_in_a_returned_destination():
    d = pb.Destination(name="hook", webhook=pb.WebhookDestination(url="https://x.example.com", secret="s" * 20))
    assert public_destination(d).webhook.secret == "" and d.webhook.secret == "s" * 20


async def test_a_refused_url_is_invalid_argument_on_its_field_and_nothing_is_stored():
    # No pool and no profile graph: validation must fail before either is touched.
    activations = Activations(None, None, settings=ActivationSettings())
    with pytest.raises(InvalidArgument) as info:
        await activations.upsert_destination("t1", pb.Destination(
            name="hook", webhook=pb.WebhookDestination(url="https://10.0.0.1/hook", secret="short")))
    assert [f for f, _ in info.value.violations] == ["destination.webhook.url", "destination.webhook.secret"]
    await activations.close()


async def test_an_invalid_activation_is_refused_before_any_lookup():
    activations = Activations(None, None, settings=ActivationSettings())
    with pytest.raises(InvalidArgument) as info:
        await activations.upsert_activation("t1", pb.Activation(name="a", destination="d"))
    assert [f for f, _ in info.value.violations] == ["activation.source"]
    with pytest.raises(InvalidArgument) as info:
        await activations.list_activations("t1", -1, "")
    assert [f for f, _ in info.value.violations] == ["page_size"]
    with pytest.raises(InvalidArgument) as info:
        await activations.list_destinations("t1", 0, "garbage!")
    assert [f for f, _ in info.value.violations] == ["page_token"]
    await activations.close()


# The MCP context summary.

def test_key_attributes_put_descriptive_ones_first_and_cap_the_count():
    attrs = {f"z{i:02d}": i for i in range(30)} | {"city": "Oslo", "first_name": "Ann"}
    picked = key_attributes(attrs, limit=5)
    assert list(picked) == ["first_name", "city", "z00", "z01", "z02"]


def test_the_context_summary_is_compact():
    profile = pb.GetProfileResponse(unified_individual_id="u1",
                                    identities=[common_pb2.Identity(type="email", value="ann@example.com")],
                                    segments=["vip", "gold"], insights={"spend_30d": 150.123456})
    profile.attributes.update({"first_name": "Ann"})
    profile.affinities.extend([pb.Affinity(dimension="category", value=f"c{i}", score=10.0 - i) for i in range(7)])
    profile.consents.append(common_pb2.Consent(purpose="email", status=common_pb2.CONSENT_STATUS_DENIED))
    when = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    profile.events.append(common_pb2.Event(message_id="e1", type=common_pb2.EVENT_TYPE_PURCHASE, event_time=when,
                                           line_items=[common_pb2.LineItem(item_id="sku-1", quantity=3,
                                                                           unit_price=50.0)]))
    summary = context_summary(profile)
    assert summary == {
        "unified_individual_id": "u1",
        "identities": [{"type": "email", "value": "ann@example.com"}],
        "key_attributes": {"first_name": "Ann"},
        "segments": ["gold", "vip"],
        "insights": {"spend_30d": 150.1235},
        "top_affinities": [{"dimension": "category", "value": f"c{i}", "score": 10.0 - i} for i in range(5)],
        "consents": {"email": "DENIED"},
        "recent_events": [{"type": "purchase", "time": "2023-11-14T22:13:20Z",
                           "items": [{"item_id": "sku-1", "quantity": 3.0}], "revenue": 150.0}],
    }


def test_a_huge_primary_key_name_is_quoted_only_in_part():
    v = validate_activation(pb.Activation(name="a", destination="d", primary_key=["k" * 5000],
                                          segment_membership=pb.SegmentMembershipSource(segment="gold")))
    [(field, description)] = v.items
    assert field == "activation.primary_key[0]" and "k" * 64 not in description and len(description) < 200
