"""The replay report of one point (services/gateway/replay.py), on hand-made log rows."""

from __future__ import annotations

import pytest

from personalization.decision.v1 import decision_service_pb2 as dec
from services.gateway.replay import point_report


def row(decision: str, *, converted=False, clicked=False, propensity=1.0, randomized=(), revenue=0.0,
        metric=dec.METRIC_UNSPECIFIED) -> dec.ReplayLogRow:
    return dec.ReplayLogRow(entry=dec.DecisionLogEntry(decision_id=decision), converted=converted, clicked=clicked,
                            revenue=revenue, randomized=bool(randomized), propensity=propensity,
                            randomized_decision_ids=list(randomized), primary_metric=metric)


def test_each_unestimable_request_is_counted_under_its_reason():
    rows = [
        (row("a", converted=True), "a"),  # unchanged, not randomized: weight 1
        (row("a"), "b"),  # changed, not randomized
        (row("a", propensity=0.5, randomized=("a", "b")), "c"),  # c was never a cohort's decision
        (row("b", converted=True, propensity=0.5, randomized=("a", "b")), "b"),  # weight 2
        (row("a", converted=True, propensity=0.5, randomized=("a", "b")), "b"),  # weight 0
        (row("b", propensity=0.5, randomized=("a", "b")), "b"),  # the draft changes b's content
    ]
    report = point_report("p", rows, {"b_new"}, dec.METRIC_UNSPECIFIED)
    assert report.metric == dec.METRIC_CONVERSION
    assert (report.replayed_requests, report.changed_requests) == (6, 3)
    assert report.changed_share == pytest.approx(0.5)
    assert {c.decision_id: c.count for c in report.gained} == {"b": 2, "c": 1}
    assert {c.decision_id: c.count for c in report.lost} == {"a": 3}
    assert {u.reason: u.count for u in report.unestimated} == {"NOT_RANDOMIZED": 1, "DECISION_NEVER_RANDOMIZED": 1}
    assert (report.randomized_requests, report.estimated_requests) == (4, 4)
    assert report.logged_value == pytest.approx(3 / 4)
    assert report.draft_value == pytest.approx((1 + 2) / 4)
    assert report.estimated_effect == pytest.approx(0.0)
    changed_content = point_report("p", rows[-1:], {"b"}, dec.METRIC_CONVERSION)
    assert {u.reason: u.count for u in changed_content.unestimated} == {"CONTENT_CHANGED": 1}
    assert changed_content.estimated_requests == 0 and changed_content.changed_requests == 1


def test_the_metric_is_the_experiments_unless_asked_and_revenue_is_weighted_too():
    rows = [(row("a", revenue=30.0, clicked=True, propensity=0.25, randomized=("a", "b"),
                  metric=dec.METRIC_CLICK_THROUGH), "a"),
            (row("b", revenue=10.0, propensity=0.75, randomized=("a", "b"), metric=dec.METRIC_CLICK_THROUGH), "a")]
    assert point_report("p", rows, set(), dec.METRIC_UNSPECIFIED).metric == dec.METRIC_CLICK_THROUGH
    clicks = point_report("p", rows, set(), dec.METRIC_UNSPECIFIED)
    assert (clicks.logged_value, clicks.draft_value) == (pytest.approx(0.5), pytest.approx(2.0))
    revenue = point_report("p", rows, set(), dec.METRIC_REVENUE_PER_INDIVIDUAL)
    assert (revenue.logged_value, revenue.draft_value) == (pytest.approx(20.0), pytest.approx(60.0))
