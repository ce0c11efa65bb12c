"""Renders experiment results (GetExperimentResults, fetched over the public API) as a self-contained HTML page with an
SVG bar chart, client-side, for `tailor experiment report`."""

from __future__ import annotations

from html import escape

from personalization.decision.v1 import decision_service_pb2 as pb

_BAR_WIDTH = 360


def render_html(results: pb.GetExperimentResultsResponse) -> str:
    """One page: the experiment, a bar per cohort (primary metric, chance to beat control) and the verdict."""
    e = results.experiment
    metric = pb.Metric.Name(e.primary_metric).removeprefix("METRIC_").replace("_", " ").lower()
    top = max((c.value for c in results.cohorts), default=0.0) or 1.0
    rows = []
    for i, c in enumerate(results.cohorts):
        y = 30 + i * 40
        width = _BAR_WIDTH * c.value / top
        colour = "#2f7d32" if c.cohort_id == results.leading_cohort_id else ("#888" if c.control else "#3367d6")
        rows.append(
            f'<text x="0" y="{y + 18}">{escape(c.cohort_id)}{" (control)" if c.control else ""}</text>'
            f'<rect x="140" y="{y}" width="{width:.1f}" height="26" fill="{colour}"/>'
            f'<text x="{146 + width:.1f}" y="{y + 18}">{c.value:.4g} · n={c.participants} · '
            f'P(beats control)={c.chance_to_beat_control:.1%}</text>')
    height = 40 + 40 * len(results.cohorts)
    srm = (f"<p><b>Sample ratio mismatch</b> (p = {results.sample_ratio_p_value:.2g}): do not trust these results.</p>"
           if results.sample_ratio_mismatch else f"<p>Sample ratio check: p = {results.sample_ratio_p_value:.2g}.</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Experiment {escape(e.name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}text{font-size:13px}</style></head><body>"
        f"<h1>Experiment {escape(e.name)}</h1>"
        f"<p>Point <code>{escape(e.point_name)}</code> · state "
        f"{pb.ExperimentState.Name(e.state).removeprefix('EXPERIMENT_STATE_').lower()} · primary metric {metric}"
        f"{' · winner ' + escape(e.winner_cohort_id) if e.winner_cohort_id else ''}</p>"
        f"<svg width='900' height='{height}' role='img' aria-label='{escape(metric)} per cohort'>{''.join(rows)}</svg>"
        f"{srm}<p>{escape(results.verdict)}</p></body></html>"
    )
