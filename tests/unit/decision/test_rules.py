"""Rule compilation details: what a rule reads, and what the activation hands to CEL."""

from __future__ import annotations

import pytest
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
    with pytest.raises(rules.RuleError) as info:
        rules.compile_rule("[" * 33 + "]" * 33 + " == []")
    assert "at column 33" in str(info.value)
    assert rules.compile_rule('"' + "[" * 40 + '" == ""').program is not None


def test_a_rule_too_costly_for_its_data_does_not_run_and_says_why():
    rule = rules.compile_rule("profile.attributes.tags.all(x, x in profile.attributes.tags)")
    small = rules.activation(rule.needs, {"profile": {"attributes": {"tags": ["a", "b"]}}, "context": {}})
    assert rules.evaluate(rule, small) == (True, "")
    big = rules.activation(rule.needs, {"profile": {"attributes": {"tags": [str(i) for i in range(1000)]}},
                                        "context": {}})
    matched, error = rules.evaluate(rule, big)
    assert not matched and error.startswith("not run: over the evaluation budget on a collection of 1000 elements")
