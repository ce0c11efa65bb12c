"""YAML configuration -> the admin upsert requests `tailor apply` sends."""

from __future__ import annotations

import pytest
import yaml

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as dec
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pg
from tailor_cli.demo import DEMO_CONFIG_PATH, ConfigError, load_config_file, parse_config


def _parse(text: str):
    return parse_config(yaml.safe_load(text))


def test_demo_config_becomes_the_requests_of_the_brief():
    config = load_config_file(DEMO_CONFIG_PATH)

    spend, purchases = (r.insight for r in config.insights)
    assert (spend.name, spend.aggregate, spend.field, spend.event_type, spend.window.seconds) == (
        "spend_30d", pg.AGGREGATE_SUM, "revenue", common_pb2.EVENT_TYPE_PURCHASE, 2_592_000)
    assert (purchases.name, purchases.aggregate, purchases.event_type, purchases.window.seconds) == (
        "purchases_30d", pg.AGGREGATE_COUNT, common_pb2.EVENT_TYPE_PURCHASE, 2_592_000)
    assert [(r.segment.name, r.segment.rule) for r in config.segments] == [
        ("big_spenders", "insights.spend_30d >= 1000.0")]

    banner, recs = (r.point for r in config.points)
    assert banner.type == dec.POINT_TYPE_MANUAL_CONTENT
    assert [(f.name, f.type, f.required) for f in banner.template.fields] == [
        ("headline", dec.FIELD_TYPE_STRING, True), ("body", dec.FIELD_TYPE_STRING, False),
        ("cta_url", dec.FIELD_TYPE_STRING, False)]
    assert recs.type == dec.POINT_TYPE_RECOMMENDATIONS
    assert list(recs.template.item_attributes) == ["name", "price"]

    vip, welcome, top = (r.decision for r in config.decisions)
    assert (vip.point_name, vip.name, vip.priority, vip.rule, vip.fallback) == (
        "home_banner", "vip_offer", 100, "'big_spenders' in profile.segments", False)
    assert vip.content["headline"]
    assert (welcome.point_name, welcome.name, welcome.fallback) == ("home_banner", "welcome", True)
    assert welcome.WhichOneof("payload") == "content"
    assert (top.point_name, top.name, top.fallback) == ("home_recs", "top_sellers", True)
    assert (top.recommendations.recommender, top.recommendations.count) == ("top_sellers", 12)


def test_enum_values_may_be_written_in_full_and_windows_in_days():
    config = _parse("""
insights:
  - {name: views_7d, aggregate: AGGREGATE_COUNT, event_type: event_type_product_view, window: 7d}
  - {name: all_time_spend, aggregate: sum, field: revenue}
points:
  - name: email_block
    type: POINT_TYPE_RECOMMENDATIONS
    template: {fields: [{name: title, type: field_type_string}]}
""")
    views, total = (r.insight for r in config.insights)
    assert (views.aggregate, views.event_type, views.window.seconds) == (
        pg.AGGREGATE_COUNT, common_pb2.EVENT_TYPE_PRODUCT_VIEW, 7 * 86400)
    assert (total.aggregate, total.event_type, total.HasField("window")) == (
        pg.AGGREGATE_SUM, common_pb2.EVENT_TYPE_UNSPECIFIED, False)
    assert config.points[0].point.type == dec.POINT_TYPE_RECOMMENDATIONS
    assert config.points[0].point.template.fields[0].type == dec.FIELD_TYPE_STRING


def test_decisions_take_the_point_they_are_listed_under_and_keep_an_explicit_id():
    config = _parse("""
points:
  - name: hero
    type: MANUAL_CONTENT
    decisions:
      - {name: a, decision_id: d-1, content: {headline: Hi, tags: [x, y], score: 2.5}}
      - {name: b, point_name: hero, rule: "context.channel == 'web'"}
""")
    a, b = (r.decision for r in config.decisions)
    assert (a.point_name, a.decision_id, a.name) == ("hero", "d-1", "a")
    assert a.content["tags"] == ["x", "y"] and a.content["score"] == 2.5
    assert (b.point_name, b.rule, b.decision_id) == ("hero", "context.channel == 'web'", "")


def test_an_empty_file_applies_nothing():
    config = parse_config(None)
    assert (config.insights, config.segments, config.points, config.decisions) == ([], [], [], [])


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("audiences: []", "audiences", "unknown section"),
        ("insights: {name: x}", "insights", "must be a list"),
        ("segments:\n  - {rule: 'true'}", "segments[0].name", "is required"),
        ("insights:\n  - {name: x, aggregate: AVERAGE}", "insights[0]", "AGGREGATE_AVERAGE"),
        ("insights:\n  - {name: x, aggregate: COUNT, window: a month}", "insights[0].window", "duration"),
        ("segments:\n  - {name: x, rule: 'true', colour: red}", "segments[0]", "colour"),
        ("points:\n  - {name: p, decisions: [{rule: 'true'}]}", "points[0].decisions[0].name", "is required"),
        ("points:\n  - {name: p, decisions: [{name: d, point_name: q}]}", "points[0].decisions[0].point_name", "'p'"),
        ("points:\n  - {name: p, type: MANUAL_CONTENT, template: {fields: [{name: f, type: DATE}]}}", "points[0]",
         "FIELD_TYPE_DATE"),
    ],
)
def test_bad_entries_are_refused_naming_their_path(text, path, fragment):
    with pytest.raises(ConfigError) as caught:
        _parse(text)
    assert caught.value.path == path
    assert fragment in str(caught.value)


def test_a_file_that_is_not_yaml_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("insights: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(bad)


def test_every_other_section_becomes_its_upsert_with_short_enums_and_durations():
    import yaml

    from tailor_cli.demo import parse_config

    config = parse_config(yaml.safe_load("""
identity_types: [{name: loyalty_id, unique: true, normalization: TRIM}]
affinity: {dimensions: [category], weights: [{event_type: PURCHASE, weight: 5}], half_life: 30d}
reconciliation:
  - object: individual
    default_reconciliation: {policy: SOURCE_PRIORITY, source_priority: [crm, web]}
    attribute_overrides: {email: {policy: LAST_UPDATED}}
profile_schema: {attributes: [{name: tier, type: STRING}], segments: [big_spenders]}
recommenders: [{name: als, strategy: learned, parameters: {algorithm: als, objective: MAXIMIZE_PURCHASES}}]
destinations: [{name: crm_export, file: {directory: crm, format: JSONL}}]
batch_schedules: [{name: nightly, segment: big_spenders, point_names: [home_recs], cron: "0 3 * * *"}]
"""))
    by_section = {section: request for section, _, _, _, request in config.others}
    assert by_section["identity_types"].identity_type.normalization != 0
    assert by_section["affinity"].config.half_life.seconds == 30 * 86400
    assert by_section["affinity"].config.weights[0].event_type == 4  # EVENT_TYPE_PURCHASE
    rule = by_section["reconciliation"].rule
    assert list(rule.default_reconciliation.source_priority) == ["crm", "web"]
    assert rule.attribute_overrides["email"].policy != 0
    assert by_section["recommenders"].config.parameters.objective != 0
    assert by_section["destinations"].destination.file.format != 0
    assert [name for _, name, _, _, _ in config.others] == [
        "loyalty_id", "", "individual", "", "als", "crm_export", "nightly"]


def test_experiment_layers_and_the_holdout_are_configured_in_the_file():
    import yaml

    from tailor_cli.demo import parse_config

    config = parse_config(yaml.safe_load("""
experiments:
  - {name: hero_test, point_name: home_banner, primary_metric: CONVERSION, hash_version: 1,
     cohorts: [{cohort_id: a, weight_bps: 5000, decision_id: d1}], layer: {name: promo, start_bps: 0, end_bps: 5000}}
holdout: {fraction_bps: 500, seed: q4}
"""))
    by_section = {section: (method, request) for section, _, _, method, request in config.others}
    method, request = by_section["experiments"]
    assert method == "UpsertExperiment" and request.experiment.layer.end_bps == 5000
    assert request.experiment.hash_version == 1
    method, request = by_section["holdout"]
    assert method == "SetHoldout" and (request.holdout.fraction_bps, request.holdout.seed) == (500, "q4")


def test_an_unknown_enum_value_in_any_section_names_its_path():
    import pytest
    import yaml

    from tailor_cli.demo import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_load("recommenders: [{name: x, strategy: learned, parameters: {objective: FAME}}]"))
    assert info.value.path == "recommenders[0]"
