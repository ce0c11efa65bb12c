"""The HTML report of experiment results."""

from personalization.decision.v1 import decision_service_pb2 as pb
from tailor_cli.report import render_html


def test_report_shows_every_cohort_the_leader_and_the_verdict():
    results = pb.GetExperimentResultsResponse(
        experiment=pb.Experiment(name="banner_test", point_name="home_banner", state=pb.EXPERIMENT_STATE_STOPPED,
                                 primary_metric=pb.METRIC_CONVERSION, winner_cohort_id="b"),
        cohorts=[pb.CohortResult(cohort_id="control", control=True, participants=800, value=0.07,
                                 chance_to_beat_control=0.5),
                 pb.CohortResult(cohort_id="b", participants=790, value=0.12, chance_to_beat_control=0.998)],
        sample_ratio_p_value=0.7, leading_cohort_id="b", verdict="b beats control with chance 99.8% >= 95%")
    html = render_html(results)
    assert "<svg" in html and "control (control)" in html and "P(beats control)=99.8%" in html
    assert 'fill="#2f7d32"' in html and "winner b" in html and "b beats control" in html
    assert "Sample ratio mismatch" not in html
