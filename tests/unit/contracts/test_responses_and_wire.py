"""Responses cut to fit a default client, and requests that do not parse named by their bad field."""

from __future__ import annotations

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gateway_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as ppb
from shared import contract, wire


def _profile(events: int, size: int) -> ppb.Profile:
    profile = ppb.Profile(unified_individual_id="ind-1")
    for n in range(events):
        profile.events.add(message_id=f"m{n}").properties.update({"blob": "x" * size})
    profile.attributes.update({f"a{n:03d}": "y" * 100 for n in range(50)})
    profile.profile_objects.add(object=common_pb2.ProfileObject(type="order", object_id="o1"))
    return profile


def test_a_profile_within_the_budget_is_left_alone():
    profile = _profile(3, 1000)
    assert not contract.fit_profile(profile, 100_000)
    assert not profile.truncated and len(profile.events) == 3


def test_the_oldest_events_go_first_and_the_counts_say_how_many():
    profile = _profile(10, 10_000)
    assert contract.fit_profile(profile, 45_000)
    assert profile.truncated and profile.ByteSize() <= 45_000
    assert [e.message_id for e in profile.events] == [f"m{n}" for n in range(len(profile.events))]
    assert profile.omitted_event_count == 10 - len(profile.events) > 0
    assert len(profile.profile_objects) == 1 and len(profile.attributes.fields) == 50


def test_objects_then_attributes_go_when_events_are_not_enough():
    profile = _profile(2, 10_000)
    assert contract.fit_profile(profile, 2_000)
    assert profile.ByteSize() <= 2_000
    assert profile.omitted_event_count == 2 and profile.omitted_profile_object_count == 1
    assert 0 < profile.omitted_attribute_count < 50
    assert sorted(profile.attributes.fields) == [f"a{n:03d}" for n in range(50 - profile.omitted_attribute_count)]


def test_many_profiles_share_the_budget():
    profiles = ppb.GetProfilesResponse(profiles=[_profile(10, 10_000), _profile(1, 10)])
    contract.fit_profiles(profiles.profiles, 60_000)
    assert profiles.ByteSize() <= 60_000
    assert profiles.profiles[0].truncated and not profiles.profiles[1].truncated


def test_invalid_utf8_is_named_by_its_path():
    raw = gateway_pb.IngestEventsRequest(events=[common_pb2.Event(message_id="a"), common_pb2.Event(
        message_id="b", identities=[common_pb2.Identity(type="email", value="ok"),
                                    common_pb2.Identity(type="email", value="BAD")])]).SerializeToString()
    error = wire.diagnose(gateway_pb.IngestEventsRequest.DESCRIPTOR, raw.replace(b"BAD", b"\xffAD"))
    assert error.violations == [("events[1].identities[1].value", "must be valid UTF-8")]


def test_invalid_utf8_inside_a_struct_names_the_key():
    event = common_pb2.Event(message_id="a")
    event.attributes.update({"name": "BAD", "other": "fine"})
    raw = gateway_pb.IngestEventsRequest(events=[event]).SerializeToString().replace(b"BAD", b"\xc3(D")
    assert wire.diagnose(gateway_pb.IngestEventsRequest.DESCRIPTOR, raw).violations == [
        ("events[0].attributes.name", "must be valid UTF-8")]


def test_a_tolerant_deserializer_turns_a_decode_error_into_an_unparsable_request():
    parse = wire.tolerant(gateway_pb.IngestEventsRequest.FromString)
    good = gateway_pb.IngestEventsRequest(events=[common_pb2.Event(message_id="a")])
    assert parse(good.SerializeToString()) == good
    bad = parse(good.SerializeToString().replace(b"a", b"\xff"))
    assert isinstance(bad, wire.Unparsable) and bad.error.reason == "MALFORMED_REQUEST"
    assert bad.error.violations == [("events[0].message_id", "must be valid UTF-8")]


def test_bytes_that_are_not_a_message_at_all_name_the_request_type():
    error = wire.diagnose(gateway_pb.IngestEventsRequest.DESCRIPTOR, b"\x0a\xff\xff\xff\xff\x0f")
    assert error.violations == [("", "the request is not a valid personalization.gateway.v1.IngestEventsRequest")]
