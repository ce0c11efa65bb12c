"""Experiments: cohorts, validation, GrowthBook assignment, statistics, results and attribution. No grpc, no SQL."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from scipy.special import betaln, logsumexp
from scipy.stats import chi2

from services.decision import growthbook, rules
from shared.errors import quote

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
METRICS = ("CLICK_THROUGH", "CONVERSION", "REVENUE_PER_INDIVIDUAL")
TOTAL_BPS = 10_000
MIN_PARTICIPANTS = (300, 5_000)
MIN_CONVERSIONS = 25  # per cohort before any cohort can lead: 4 against 0 of 300 each is noise, not a winner
THRESHOLD = (85.0, 100.0)
DEFAULT_WINDOW = timedelta(days=7)
MAX_WINDOW = timedelta(days=90)
SRM_P = 0.001
HASH_VERSION = 2


@dataclass(frozen=True)
class Cohort:
    """One arm of an experiment: a weight and either a decision of the point or (control) fall-through."""

    cohort_id: str
    weight_bps: int
    control: bool = False
    decision_id: str = ""
    fall_through: bool = False


@dataclass(frozen=True)
class Experiment:
    """An A/B/n test on one point."""

    experiment_id: str
    name: str
    point_name: str
    cohorts: tuple[Cohort, ...]
    state: str = "DRAFT"
    targeting_rule: str = ""
    primary_metric: str = "CONVERSION"
    secondary_metrics: tuple[str, ...] = ()
    min_participants: int = 300
    min_duration: timedelta = timedelta(0)
    max_duration: timedelta = timedelta(0)
    chance_to_win_threshold: float = 95.0
    winner_selection: str = "MANUAL"
    seed: str = ""
    hash_version: int = HASH_VERSION
    layer: str = ""  # a GrowthBook namespace: "" overlaps every experiment
    layer_start_bps: int = 0  # the experiment's slice of the layer, [start, end) in basis points
    layer_end_bps: int = 0
    attribution_window: timedelta = timedelta(0)
    winner_cohort_id: str = ""
    start_time: datetime | None = None
    stop_time: datetime | None = None

    @property
    def hash_seed(self) -> str:
        return self.seed or self.name

    @property
    def window(self) -> timedelta:
        return self.attribution_window or DEFAULT_WINDOW

    def baseline(self) -> Cohort:
        """The cohort the others are compared with: the control, else the first cohort."""
        return next((c for c in self.cohorts if c.control), self.cohorts[0])

    def in_layer(self, unified_id: str) -> bool:
        """Whether the individual falls in the experiment's slice of its layer (always, without a layer).

        GrowthBook's inNamespace: hash v1 of the id with seed `__` + layer, in [start, end)."""
        if not self.layer:
            return True
        n = growthbook.gb_hash("__" + self.layer, unified_id, 1) or 0.0
        return self.layer_start_bps / TOTAL_BPS <= n < self.layer_end_bps / TOTAL_BPS

    def overlaps(self, other: Experiment) -> bool:
        """Whether two experiments of one layer claim a common part of it."""
        return (self.layer == other.layer and self.layer_start_bps < other.layer_end_bps
                and other.layer_start_bps < self.layer_end_bps)

    def expired(self, now: datetime) -> bool:
        """Whether a running experiment has passed its maximum duration."""
        return bool(self.max_duration) and self.start_time is not None and now >= self.start_time + self.max_duration


def validate_experiment(e: Experiment, decision_ids: set[str], v, path: str = "experiment") -> None:
    """Adds one violation per bad field; decision_ids are the point's live decisions (None-checks skipped if empty)."""
    if not NAME.match(e.name):
        v.add(f"{path}.name", "must match ^[a-z][a-z0-9_]{0,63}$")
    if not e.point_name:
        v.add(f"{path}.point_name", "must name a point")
    if not e.cohorts:
        v.add(f"{path}.cohorts", "must hold at least one cohort")
    seen: set[str] = set()
    total = 0
    for i, c in enumerate(e.cohorts):
        p = f"{path}.cohorts[{i}]"
        if not NAME.match(c.cohort_id):
            v.add(f"{p}.cohort_id", "must match ^[a-z][a-z0-9_]{0,63}$")
        elif c.cohort_id in seen:
            v.add(f"{p}.cohort_id", f"duplicate cohort id {quote(c.cohort_id)}")
        seen.add(c.cohort_id)
        if not 1 <= c.weight_bps <= TOTAL_BPS:
            # A zero-weight cohort never gets a participant, so it could never reach min_participants.
            v.add(f"{p}.weight_bps", "must be between 1 and 10,000 basis points")
        total += c.weight_bps
        if c.fall_through and not c.control:
            v.add(f"{p}.fall_through", "only the control cohort can fall through to the point's decisions")
        if c.fall_through and c.decision_id:
            v.add(f"{p}.decision_id", "a fall-through cohort serves the point's decisions, not one decision")
        elif not c.fall_through and not c.decision_id:
            v.add(f"{p}.decision_id", "must name a decision of the point (or set fall_through on the control)")
        elif c.decision_id and c.decision_id not in decision_ids:
            v.add(f"{p}.decision_id",
                  f"decision {quote(c.decision_id)} is not a live decision of point {quote(e.point_name)}")
    if sum(1 for c in e.cohorts if c.control) > 1:
        v.add(f"{path}.cohorts", "at most one cohort can be the control")
    if total > TOTAL_BPS:
        v.add(f"{path}.cohorts", f"weights sum to {total} basis points; at most 10,000 are allowed")
    try:
        rules.compile_rule(e.targeting_rule)
    except rules.RuleError as error:
        v.add(f"{path}.targeting_rule", str(error))
    if e.primary_metric not in METRICS:
        v.add(f"{path}.primary_metric", "must be METRIC_CLICK_THROUGH, _CONVERSION or _REVENUE_PER_INDIVIDUAL")
    for i, m in enumerate(e.secondary_metrics):
        if m not in METRICS:
            v.add(f"{path}.secondary_metrics[{i}]", "must be a known metric")
    if not MIN_PARTICIPANTS[0] <= e.min_participants <= MIN_PARTICIPANTS[1]:
        v.add(f"{path}.min_participants", "must be between 300 and 5,000")
    if e.min_duration < timedelta(0):
        v.add(f"{path}.min_duration", "must not be negative")
    if e.max_duration < timedelta(0) or (e.max_duration and e.max_duration < e.min_duration):
        v.add(f"{path}.max_duration", "must be 0 (no limit) or at least min_duration")
    if not THRESHOLD[0] <= e.chance_to_win_threshold <= THRESHOLD[1]:
        v.add(f"{path}.chance_to_win_threshold", "must be between 85 and 100 percent")
    if e.winner_selection not in ("MANUAL", "AUTOMATIC"):
        v.add(f"{path}.winner_selection", "must be manual or automatic")
    if not timedelta(0) <= e.attribution_window <= MAX_WINDOW:
        v.add(f"{path}.attribution_window", "must be between 0 (7 days) and 90 days")
    if len(e.seed) > 256:
        v.add(f"{path}.seed", "must be at most 256 characters")
    if e.hash_version not in (1, 2):
        v.add(f"{path}.hash_version", "must be 1 or 2 (0 means 2)")
    if e.layer:
        if not NAME.match(e.layer):
            v.add(f"{path}.layer.name", "must match ^[a-z][a-z0-9_]{0,63}$")
        if not 0 <= e.layer_start_bps < TOTAL_BPS:
            v.add(f"{path}.layer.start_bps", "must be between 0 and 9,999 basis points")
        if not e.layer_start_bps < e.layer_end_bps <= TOTAL_BPS:
            v.add(f"{path}.layer.end_bps", "must be above start_bps and at most 10,000 basis points")
    elif e.layer_start_bps or e.layer_end_bps:
        v.add(f"{path}.layer.name", "must name the layer the range belongs to")


@dataclass(frozen=True)
class Assignment:
    """An individual's place in one experiment."""

    experiment: Experiment
    cohort: Cohort | None
    bucket: float
    targeted: bool
    error: str = ""

    @property
    def in_experiment(self) -> bool:
        return self.cohort is not None

    @property
    def layer(self) -> str:
        return self.experiment.layer


@dataclass(frozen=True)
class CompiledExperiment:
    """A running experiment ready to assign: its targeting rule compiled and its bucket ranges computed."""

    experiment: Experiment
    targeting: rules.CompiledRule
    ranges: tuple[tuple[float, float], ...]

    def assign(self, unified_id: str, ctx) -> Assignment:
        """GrowthBook assignment: targeting, then hash(seed, id, v2) into the cohorts' bucket ranges."""
        e = self.experiment
        bucket = growthbook.gb_hash(e.hash_seed, unified_id, e.hash_version) or 0.0
        matched, error = rules.evaluate(self.targeting, ctx)
        if not matched:
            return Assignment(e, None, bucket, False, error)
        if not e.in_layer(unified_id):
            return Assignment(e, None, bucket, True)
        index = growthbook.choose_variation(bucket, self.ranges)
        return Assignment(e, e.cohorts[index] if index >= 0 else None, bucket, True)


def assign_on_point(
    experiments: Sequence[CompiledExperiment], unified_id: str, ctx, now: datetime | None
) -> list[Assignment]:
    """The individual's assignment in each running experiment of one point, in order (layer, then name).

    An individual takes part in at most one experiment per point, since the point serves one decision: the first
    that places them in a cohort. The ones after it report them outside (in_experiment false). Experiments in one
    layer are exclusive anyway; across layers this order decides.
    """
    out = []
    taken = False
    for compiled in experiments:
        if now is not None and compiled.experiment.expired(now):
            continue
        a = compiled.assign(unified_id, ctx)
        if taken and a.in_experiment:
            a = Assignment(a.experiment, None, a.bucket, a.targeted)
        taken |= a.in_experiment
        out.append(a)
    return out


def experiment_order(e: Experiment) -> tuple[str, str]:
    """The order in which a point's running experiments claim an individual: by layer, then by name."""
    return e.layer, e.name


def compile_experiment(e: Experiment) -> CompiledExperiment:
    try:
        targeting = rules.compile_rule(e.targeting_rule)
    except rules.RuleError as error:
        targeting = rules.broken_rule(e.targeting_rule, str(error))
    return CompiledExperiment(e, targeting, tuple(growthbook.ranges_for_bps([c.weight_bps for c in e.cohorts])))


def hashed_cohort(e: Experiment, unified_id: str) -> str:
    """The cohort an individual's hash falls in (targeting aside); empty when outside every range or the layer."""
    if not e.in_layer(unified_id):
        return ""
    bucket = growthbook.gb_hash(e.hash_seed, unified_id, e.hash_version) or 0.0
    index = growthbook.choose_variation(bucket, growthbook.ranges_for_bps([c.weight_bps for c in e.cohorts]))
    return e.cohorts[index].cohort_id if index >= 0 else ""


# ---------------------------------------------------------------------------------------------- statistics


def chance_beta_beats(conv_b: int, n_b: int, conv_a: int, n_a: int) -> float:
    """P(p_B > p_A) under Beta(1 + conversions, 1 + failures) posteriors (Evan Miller's closed form).

    The closed form is a sum of one term per conversion of B: computed as one numpy vector in log space
    (logsumexp), not a Python loop.
    """
    alpha_a, beta_a = conv_a + 1, n_a - conv_a + 1
    alpha_b, beta_b = conv_b + 1, n_b - conv_b + 1
    i = np.arange(alpha_b, dtype=np.float64)
    terms = (betaln(alpha_a + i, beta_b + beta_a) - np.log(beta_b + i) - betaln(1 + i, beta_b)
             - betaln(alpha_a, beta_a))
    return min(max(float(np.exp(logsumexp(terms))), 0.0), 1.0)


def chance_normal_beats(values_b: Sequence[float], values_a: Sequence[float]) -> float:
    """P(mean_B > mean_A) by a normal approximation of the difference of means (revenue per individual)."""
    if not len(values_a) or not len(values_b):
        return 0.5
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    var_a = float(a.var(ddof=1)) if len(a) > 1 else 0.0
    var_b = float(b.var(ddof=1)) if len(b) > 1 else 0.0
    se = math.sqrt(var_a / len(a) + var_b / len(b))
    if se == 0:
        return 0.5 if mean_a == mean_b else float(mean_b > mean_a)
    return 0.5 * (1 + math.erf((mean_b - mean_a) / se / math.sqrt(2)))


def srm_p_value(observed: Sequence[int], weights: Sequence[int]) -> float:
    """Chi-square goodness of fit of observed participants against the configured weights (1.0 when untestable)."""
    pairs = [(o, w) for o, w in zip(observed, weights) if w > 0]
    n = sum(o for o, _ in pairs)
    if len(pairs) < 2 or n == 0:
        return 1.0
    total_w = sum(w for _, w in pairs)
    stat = sum((o - n * w / total_w) ** 2 / (n * w / total_w) for o, w in pairs)
    return float(chi2.sf(stat, len(pairs) - 1))


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Exposure:
    """One logged personalization of an experiment (or of any point, for attribution)."""

    personalization_id: str
    unified_individual_id: str
    log_time: datetime
    point_name: str = ""
    decision_id: str = ""
    experiment_id: str = ""
    cohort_id: str = ""
    item_ids: tuple[str, ...] = ()
    exposure_conflict: bool = False


@dataclass(frozen=True)
class Outcome:
    """A click or purchase."""

    outcome_id: str
    unified_individual_id: str
    type: str
    time: datetime
    item_ids: tuple[str, ...] = ()
    revenue: float = 0.0
    personalization_id: str = ""


@dataclass
class CohortResult:
    """The figures of one cohort."""

    cohort_id: str
    control: bool
    participants: int = 0
    clickers: int = 0
    converters: int = 0
    revenue: float = 0.0
    value: float = 0.0
    chance_to_beat_control: float = 0.5
    secondary: dict[str, float] = field(default_factory=dict)
    excluded_conflicts: int = 0
    revenues: list[float] = field(default_factory=list)


@dataclass
class Results:
    """Per-cohort figures, the sample-ratio check and the leading cohort."""

    cohorts: list[CohortResult]
    srm_p_value: float
    srm: bool
    leading_cohort_id: str
    verdict: str


def _metric_value(r: CohortResult, metric: str) -> float:
    if r.participants == 0:
        return 0.0
    if metric == "CLICK_THROUGH":
        return r.clickers / r.participants
    if metric == "CONVERSION":
        return r.converters / r.participants
    return r.revenue / r.participants


def _successes(r: CohortResult, metric: str) -> int:
    """The primary metric's conversions of a cohort: clickers for click-through, converters otherwise."""
    return r.clickers if metric == "CLICK_THROUGH" else r.converters


def _chance(r: CohortResult, base: CohortResult, metric: str) -> float:
    if metric == "REVENUE_PER_INDIVIDUAL":
        return chance_normal_beats(r.revenues, base.revenues)
    hits = {"CLICK_THROUGH": lambda x: x.clickers, "CONVERSION": lambda x: x.converters}[metric]
    return chance_beta_beats(hits(r), r.participants, hits(base), base.participants)


def compute_results(
    e: Experiment,
    exposures: Sequence[Exposure],
    outcomes: Sequence[Outcome],
    survivors: Mapping[str, str],
    conflicts: set[str],
    now: datetime,
) -> Results:
    """Aggregates exposures and later outcomes per cohort; individuals with exposure conflicts are excluded.

    An individual's id is mapped to its merge survivor first. A participant converts when they purchase between
    their first exposure and the attribution window after their last one; they click when a click names one of
    their personalizations or, naming none, falls in that span.
    """
    def who(uid: str) -> str:
        return survivors.get(uid, uid)

    seen: dict[str, dict] = {}
    for x in exposures:
        p = seen.setdefault(who(x.unified_individual_id),
                            {"cohorts": set(), "first": x.log_time, "last": x.log_time, "pids": set(),
                             "conflict": False})
        p["cohorts"].add(x.cohort_id)
        p["first"] = min(p["first"], x.log_time)
        p["last"] = max(p["last"], x.log_time)
        p["pids"].add(x.personalization_id)
        p["conflict"] |= x.exposure_conflict
    by_person: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_person[who(o.unified_individual_id)].append(o)
    results = {c.cohort_id: CohortResult(c.cohort_id, c.control) for c in e.cohorts}
    for uid, p in seen.items():
        if uid in conflicts or p["conflict"] or len(p["cohorts"]) > 1:
            for cohort in p["cohorts"]:
                if cohort in results:
                    results[cohort].excluded_conflicts += 1
            continue
        r = results.get(next(iter(p["cohorts"])))
        if r is None:
            continue
        r.participants += 1
        end = p["last"] + e.window
        clicked = converted = False
        revenue = 0.0
        for o in by_person.get(uid, ()):
            in_span = p["first"] <= o.time <= end
            if o.type == "CLICK" and ((o.personalization_id in p["pids"]) or (not o.personalization_id and in_span)):
                clicked = True
            elif o.type == "PURCHASE" and in_span:
                converted = True
                revenue += o.revenue
        r.clickers += clicked
        r.converters += converted
        r.revenue += revenue
        r.revenues.append(revenue)
    ordered = [results[c.cohort_id] for c in e.cohorts]
    base = results[e.baseline().cohort_id]
    for r in ordered:
        r.value = _metric_value(r, e.primary_metric)
        r.chance_to_beat_control = 0.5 if r is base else _chance(r, base, e.primary_metric)
        r.secondary = {m: _metric_value(r, m) for m in e.secondary_metrics}
    p_value = srm_p_value([r.participants for r in ordered], [c.weight_bps for c in e.cohorts])
    srm = p_value < SRM_P
    leading, verdict = _leader(e, ordered, base, srm, now)
    return Results(ordered, p_value, srm, leading, verdict)


def _leader(e: Experiment, ordered: list[CohortResult], base: CohortResult, srm: bool, now: datetime):
    if len(ordered) < 2:
        return "", "an experiment needs two cohorts to compare"
    if srm:
        return "", "sample ratio mismatch: the observed allocation differs from the configured weights"
    short = [r.cohort_id for r in ordered if r.participants < e.min_participants]
    if short:
        return "", f"cohorts below {e.min_participants} participants: {', '.join(short)}"
    few = [r.cohort_id for r in ordered if _successes(r, e.primary_metric) < MIN_CONVERSIONS]
    if few:
        return "", f"cohorts below {MIN_CONVERSIONS} conversions: {', '.join(few)}"
    if e.start_time is None or now - e.start_time < e.min_duration:
        return "", "the minimum duration has not passed"
    threshold = e.chance_to_win_threshold / 100
    others = [r for r in ordered if r is not base]
    best = max(others, key=lambda r: r.chance_to_beat_control)
    if best.chance_to_beat_control >= threshold:
        return best.cohort_id, (f"{best.cohort_id} beats {base.cohort_id} with chance "
                                f"{best.chance_to_beat_control:.1%} >= {threshold:.0%}")
    if all(r.chance_to_beat_control <= 1 - threshold for r in others):
        return base.cohort_id, f"{base.cohort_id} beats every other cohort with chance >= {threshold:.0%}"
    return "", f"no cohort reaches the chance-to-win threshold of {threshold:.0%} yet"


# ---------------------------------------------------------------------------------------------- attribution

MODELS = ("FIRST_TOUCH_VIEW", "LAST_TOUCH_VIEW", "FIRST_TOUCH_CLICK", "LAST_TOUCH_CLICK")


@dataclass
class Credit:
    """Credit of one model for one (point, decision, item)."""

    conversions: int = 0
    clicks: int = 0
    revenue: float = 0.0


def attribute(
    exposures: Sequence[Exposure], outcomes: Sequence[Outcome], survivors: Mapping[str, str], window: timedelta
) -> dict[tuple[str, str, str, str], Credit]:
    """Credits each outcome to the personalizations served to its individual in the window before it.

    View-based models pick the first or last personalization served; click-based models pick among the ones the
    individual clicked (a click naming it, or a click on an item it served) before the outcome. A click is
    credited to what was clicked: the personalization it names, else those that served the clicked item. A
    purchase credits the personalization and each bought item it served (revenue split evenly over the items
    bought). Keys are (model, point, decision, item; "" for the personalization as a whole).
    """
    def who(uid: str) -> str:
        return survivors.get(uid, uid)

    touches: dict[str, list[Exposure]] = defaultdict(list)
    for x in sorted(exposures, key=lambda x: (x.log_time, x.personalization_id)):
        touches[who(x.unified_individual_id)].append(x)
    clicks: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.type == "CLICK":
            clicks[who(o.unified_individual_id)].append(o)
    credit: dict[tuple[str, str, str, str], Credit] = defaultdict(Credit)

    def served_by(x: Exposure, o: Outcome) -> bool:
        return o.personalization_id == x.personalization_id or (
            not o.personalization_id and bool(set(o.item_ids) & set(x.item_ids)))

    for o in outcomes:
        uid = who(o.unified_individual_id)
        before = [x for x in touches.get(uid, ()) if o.time - window <= x.log_time <= o.time]
        if o.type == "CLICK":
            hit = [x for x in before if served_by(x, o)]
            chosen = {"FIRST_TOUCH_VIEW": hit[:1], "LAST_TOUCH_VIEW": hit[-1:],
                      "FIRST_TOUCH_CLICK": hit[:1], "LAST_TOUCH_CLICK": hit[-1:]}
        else:
            clicked = [x for x in before
                       if any(served_by(x, c) and x.log_time <= c.time <= o.time for c in clicks.get(uid, ()))]
            chosen = {"FIRST_TOUCH_VIEW": before[:1], "LAST_TOUCH_VIEW": before[-1:],
                      "FIRST_TOUCH_CLICK": clicked[:1], "LAST_TOUCH_CLICK": clicked[-1:]}
        for model, picked in chosen.items():
            for x in picked:
                whole = credit[(model, x.point_name, x.decision_id, "")]
                if o.type == "CLICK":
                    whole.clicks += 1
                    for item in set(o.item_ids) & set(x.item_ids):
                        credit[(model, x.point_name, x.decision_id, item)].clicks += 1
                    continue
                whole.conversions += 1
                whole.revenue += o.revenue
                share = o.revenue / len(o.item_ids) if o.item_ids else 0.0
                for item in sorted(set(o.item_ids) & set(x.item_ids)):
                    c = credit[(model, x.point_name, x.decision_id, item)]
                    c.conversions += 1
                    c.revenue += share
    return dict(credit)
