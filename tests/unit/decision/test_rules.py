"""Rule compilation details: what a rule reads, and what the activation hands to CEL."""

from __future__ import annotations

from google.protobuf import struct_pb2

from services.decision import rules
from services.decision.servicer import StructView


def test_a_rule_records_the_top_level_keys_it_reads():
    rule = rules.compile_rule(
        '"vip" in profile.segments && profile["insights"].spend > 1.0 && context.channel == "web"'
    )
    assert rule.needs == {"profile": frozenset({"segments", "insights"}), "context": frozenset({"channel"})}


def test_a_rule_using_a_whole_variable_reads_all_of_it():
    assert rules.compile_rule("size(profile) > 0").needs == {"profile": rules.ALL}
    assert rules.compile_rule("profile.exists(k, k == 'segments')").needs == {"profile": rules.ALL}


def test_only_the_keys_a_rule_reads_are_converted_from_the_request():
    profile = struct_pb2.Struct()
    profile.update({"segments": ["vip"], "events": [{"type": "PURCHASE"}] * 50})
    view = StructView(profile)
    rule = rules.compile_rule('"vip" in profile.segments')
    ctx = rules.activation(rule.needs, {"profile": view, "context": StructView(struct_pb2.Struct())})
    assert rules.evaluate(rule, ctx) == (True, "")
    assert set(view._converted) == {"segments"}


def test_missing_documented_keys_default_to_empty():
    rule = rules.compile_rule('size(profile.events) == 0 && context.anchor_id == ""')
    ctx = rules.activation(rule.needs, {"profile": {}, "context": {}})
    assert rules.evaluate(rule, ctx) == (True, "")


def test_depth_counts_brackets_outside_string_literals_only():
    assert rules.check_cost("[" * 33 + "]" * 33) is not None
    assert rules.check_cost('"' + "[" * 40 + '" == ""') is None
