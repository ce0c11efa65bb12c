"""Proto <-> domain translation of the decision service's messages (Structs, points, decisions, log rows,
schemas, experiments, assignments, outcomes)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2

from personalization.decision.v1 import decision_service_pb2 as pb
from services.decision.bandit import BanditConfig, Choice
from services.decision.domain import Decision, Holdout, LogEntry, LogGroup, Point, Template, TemplateField
from services.decision.experiments import MODELS, Assignment, Cohort, CohortResult, Experiment, Outcome
from services.decision.schema import ProfileSchema
from shared.structs import struct_to_dict, value_to_py

_POINT_TYPES = {pb.POINT_TYPE_MANUAL_CONTENT: "MANUAL_CONTENT", pb.POINT_TYPE_RECOMMENDATIONS: "RECOMMENDATIONS"}
_POINT_TYPES_BACK = {v: k for k, v in _POINT_TYPES.items()}
_FIELD_TYPES = {
    pb.FIELD_TYPE_STRING: "STRING",
    pb.FIELD_TYPE_NUMBER: "NUMBER",
    pb.FIELD_TYPE_BOOL: "BOOL",
    pb.FIELD_TYPE_STRING_LIST: "STRING_LIST",
}
_FIELD_TYPES_BACK = {v: k for k, v in _FIELD_TYPES.items()}
_STATES = {pb.EXPERIMENT_STATE_DRAFT: "DRAFT", pb.EXPERIMENT_STATE_RUNNING: "RUNNING",
           pb.EXPERIMENT_STATE_STOPPED: "STOPPED", pb.EXPERIMENT_STATE_ARCHIVED: "ARCHIVED"}
_STATES_BACK = {v: k for k, v in _STATES.items()}
_METRICS = {pb.METRIC_CLICK_THROUGH: "CLICK_THROUGH", pb.METRIC_CONVERSION: "CONVERSION",
            pb.METRIC_REVENUE_PER_INDIVIDUAL: "REVENUE_PER_INDIVIDUAL"}
_METRICS_BACK = {v: k for k, v in _METRICS.items()}
_SELECTION = {pb.WINNER_SELECTION_UNSPECIFIED: "MANUAL", pb.WINNER_SELECTION_MANUAL: "MANUAL",
              pb.WINNER_SELECTION_AUTOMATIC: "AUTOMATIC"}
_SELECTION_BACK = {"MANUAL": pb.WINNER_SELECTION_MANUAL, "AUTOMATIC": pb.WINNER_SELECTION_AUTOMATIC}
_OUTCOMES = {pb.OUTCOME_TYPE_CLICK: "CLICK", pb.OUTCOME_TYPE_PURCHASE: "PURCHASE"}
_REWARDS = {pb.BANDIT_REWARD_CLICK: "CLICK", pb.BANDIT_REWARD_CONVERSION: "CONVERSION",
            pb.BANDIT_REWARD_REVENUE: "REVENUE"}
_REWARDS_BACK = {v: k for k, v in _REWARDS.items()}
MODEL_ENUMS = {name: pb.AttributionModel.Value("ATTRIBUTION_MODEL_" + name) for name in MODELS}


class StructView(Mapping):
    """A read-only dict view of a Struct that converts each top-level key once, on first read.

    Qualify hands rules only the keys they read, so a profile's 200 events are never converted for a
    rule that looks only at segments.
    """

    def __init__(self, struct: struct_pb2.Struct):
        self._fields = struct.fields
        self._converted: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._converted[key]
        except KeyError:
            if key not in self._fields:
                raise
            value = self._converted[key] = value_to_py(self._fields[key])
            return value

    def __contains__(self, key: object) -> bool:
        return key in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def point_from_proto(message: pb.Point) -> Point:
    return Point(
        point_id=message.point_id,
        name=message.name,
        description=message.description,
        type=_POINT_TYPES.get(message.type, "UNSPECIFIED"),
        template=Template(
            fields=tuple(
                TemplateField(f.name, _FIELD_TYPES.get(f.type, "UNSPECIFIED"), f.required)
                for f in message.template.fields
            ),
            item_attributes=tuple(message.template.item_attributes),
        ),
        consent_purpose=message.consent_purpose,
        requires_authentication=message.requires_authentication,
        bandit=bandit_from_proto(message.bandit) if message.HasField("bandit") else None,
    )


def bandit_from_proto(m: pb.BanditConfig) -> BanditConfig:
    return BanditConfig(reward=_REWARDS.get(m.reward, "UNSPECIFIED"), min_offer_share=m.min_offer_share,
                        holdout_share=m.holdout_share, segments=tuple(m.segments),
                        attribution_window=duration_from_proto(m.attribution_window))


def bandit_to_proto(config: BanditConfig) -> pb.BanditConfig:
    message = pb.BanditConfig(reward=_REWARDS_BACK[config.reward], min_offer_share=config.min_offer_share,
                              holdout_share=config.holdout_share, segments=config.segments)
    message.attribution_window.FromTimedelta(config.attribution_window)
    return message


def choice_to_proto(choice: Choice, names: Mapping[str, str]) -> pb.BanditChoice:
    """How a bandit chose; names maps decision ids to names."""
    return pb.BanditChoice(segment=choice.segment, holdout=choice.holdout, explored=choice.explored, arms=[
        pb.BanditArm(decision_id=d.decision_id, decision_name=names.get(d.decision_id, ""), trials=d.stats.trials,
                     successes=int(d.posterior.alpha - 1), revenue=d.stats.revenue, alpha=d.posterior.alpha,
                     beta=d.posterior.beta, value_mean=d.posterior.mean, value_kappa=d.posterior.kappa,
                     value_shape=d.posterior.shape, value_rate=d.posterior.rate, sampled=d.sampled)
        for d in choice.draws])


def point_to_proto(point: Point) -> pb.Point:
    return pb.Point(
        point_id=point.point_id,
        name=point.name,
        description=point.description,
        type=_POINT_TYPES_BACK[point.type],
        archived=point.archived,
        consent_purpose=point.consent_purpose,
        requires_authentication=point.requires_authentication,
        template=pb.ResponseTemplate(
            fields=[
                pb.TemplateField(name=f.name, type=_FIELD_TYPES_BACK[f.type], required=f.required)
                for f in point.template.fields
            ],
            item_attributes=point.template.item_attributes,
        ),
        bandit=bandit_to_proto(point.bandit) if point.bandit is not None else None,
    )


def decision_from_proto(message: pb.Decision) -> Decision:
    payload = message.WhichOneof("payload")
    return Decision(
        decision_id=message.decision_id,
        point_name=message.point_name,
        name=message.name,
        priority=message.priority,
        rule=message.rule,
        fallback=message.fallback,
        content=struct_to_dict(message.content) if payload == "content" else None,
        recommender=message.recommendations.recommender if payload == "recommendations" else "",
        count=message.recommendations.count if payload == "recommendations" else 0,
        consent_purpose=message.consent_purpose,
    )


def decision_to_proto(decision: Decision) -> pb.Decision:
    message = pb.Decision(
        decision_id=decision.decision_id,
        point_name=decision.point_name,
        name=decision.name,
        priority=decision.priority,
        rule=decision.rule,
        fallback=decision.fallback,
        archived=decision.archived,
        consent_purpose=decision.consent_purpose,
    )
    if decision.content is not None:
        message.content.update(decision.content)
        if not decision.content:
            message.content.SetInParent()
    else:
        message.recommendations.recommender = decision.recommender
        message.recommendations.count = decision.count
    return message


def logs_from_proto(messages, times: dict[tuple[int, int], datetime] | None = None) -> list[LogEntry]:
    """Log rows as the use case takes them; rows sent together mostly share their log time (a gateway's linger),
    which converts once."""
    times = {} if times is None else times
    return [log_from_proto(m, times) for m in messages]


def log_groups_from_proto(messages, times: dict[tuple[int, int], datetime] | None = None) -> list[LogGroup]:
    """Grouped log rows as the use case takes them: each group's shared fields converted once."""
    return [LogGroup(log_from_proto(g.shared, times), [r.personalization_id for r in g.rows],
                     [r.unified_individual_id for r in g.rows], [tuple(r.item_ids) for r in g.rows])
            for g in messages]


def log_from_proto(message: pb.DecisionLogEntry, times: dict[tuple[int, int], datetime] | None = None) -> LogEntry:
    log_time = None
    if message.HasField("log_time"):
        key = (message.log_time.seconds, message.log_time.nanos)
        log_time = times.get(key) if times is not None else None
        if log_time is None:
            log_time = message.log_time.ToDatetime(tzinfo=UTC)
            if times is not None:
                times[key] = log_time
    return LogEntry(
        personalization_id=message.personalization_id,
        request_id=message.request_id,
        point_id=message.point_id,
        point_name=message.point_name,
        decision_id=message.decision_id,
        unified_individual_id=message.unified_individual_id,
        channel=message.channel,
        correlation_id=message.correlation_id,
        anchor_id=message.anchor_id,
        served=struct_to_dict(message.served),
        stage_ms=dict(message.stage_ms),
        log_time=log_time,
        experiment_id=message.experiment_id,
        cohort_id=message.cohort_id,
        batch_job_id=message.batch_job_id,
        served_item_ids=tuple(message.item_ids),
        bandit_trial=message.bandit_trial,
        bandit_segment=message.bandit_segment,
        holdout=message.holdout,
    )


def log_to_proto(entry: LogEntry) -> pb.DecisionLogEntry:
    message = pb.DecisionLogEntry(
        personalization_id=entry.personalization_id,
        request_id=entry.request_id,
        point_id=entry.point_id,
        point_name=entry.point_name,
        decision_id=entry.decision_id,
        unified_individual_id=entry.unified_individual_id,
        channel=entry.channel,
        correlation_id=entry.correlation_id,
        anchor_id=entry.anchor_id,
        stage_ms=entry.stage_ms,
        experiment_id=entry.experiment_id,
        cohort_id=entry.cohort_id,
        exposure_conflict=entry.exposure_conflict,
        batch_job_id=entry.batch_job_id,
        item_ids=entry.item_ids,
        bandit_trial=entry.bandit_trial,
        bandit_segment=entry.bandit_segment,
        holdout=entry.holdout,
    )
    message.served.update(entry.served)
    if entry.log_time is not None:
        message.log_time.FromDatetime(entry.log_time)
    return message


def duration_from_proto(d) -> timedelta:
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def time_from_proto(ts):
    return ts.ToDatetime(tzinfo=UTC)


def schema_from_proto(m: pb.ProfileSchema) -> ProfileSchema:
    return ProfileSchema(
        attributes=tuple((f.name, _FIELD_TYPES.get(f.type, "UNSPECIFIED")) for f in m.attributes),
        insights=tuple(m.insights), segments=tuple(m.segments), affinities=tuple(m.affinities),
        consents=tuple(m.consents),
        context_attributes=tuple((f.name, _FIELD_TYPES.get(f.type, "UNSPECIFIED")) for f in m.context_attributes),
    )


def schema_to_proto(schema: ProfileSchema) -> pb.ProfileSchema:
    return pb.ProfileSchema(
        attributes=[pb.SchemaField(name=n, type=_FIELD_TYPES_BACK[t]) for n, t in schema.attributes],
        insights=schema.insights, segments=schema.segments, affinities=schema.affinities, consents=schema.consents,
        context_attributes=[pb.SchemaField(name=n, type=_FIELD_TYPES_BACK[t])
                            for n, t in schema.context_attributes],
    )


def experiment_from_proto(m: pb.Experiment) -> Experiment:
    return Experiment(
        experiment_id="", name=m.name, point_name=m.point_name,
        cohorts=tuple(Cohort(c.cohort_id, c.weight_bps, c.control, c.decision_id, c.fall_through) for c in m.cohorts),
        targeting_rule=m.targeting_rule, primary_metric=_METRICS.get(m.primary_metric, "UNSPECIFIED"),
        secondary_metrics=tuple(_METRICS.get(x, "UNSPECIFIED") for x in m.secondary_metrics),
        min_participants=m.min_participants, min_duration=duration_from_proto(m.min_duration),
        max_duration=duration_from_proto(m.max_duration), chance_to_win_threshold=m.chance_to_win_threshold,
        winner_selection=_SELECTION.get(m.winner_selection, "UNSPECIFIED"), seed=m.seed,
        attribution_window=duration_from_proto(m.attribution_window), hash_version=m.hash_version or 2,
        layer=m.layer.name, layer_start_bps=m.layer.start_bps, layer_end_bps=m.layer.end_bps,
    )


def experiment_to_proto(e: Experiment) -> pb.Experiment:
    m = pb.Experiment(
        experiment_id=e.experiment_id, name=e.name, point_name=e.point_name, state=_STATES_BACK[e.state],
        cohorts=[pb.Cohort(cohort_id=c.cohort_id, weight_bps=c.weight_bps, control=c.control,
                           decision_id=c.decision_id, fall_through=c.fall_through) for c in e.cohorts],
        targeting_rule=e.targeting_rule, primary_metric=_METRICS_BACK[e.primary_metric],
        secondary_metrics=[_METRICS_BACK[x] for x in e.secondary_metrics], min_participants=e.min_participants,
        chance_to_win_threshold=e.chance_to_win_threshold, winner_selection=_SELECTION_BACK[e.winner_selection],
        seed=e.seed, winner_cohort_id=e.winner_cohort_id, hash_version=e.hash_version,
    )
    if e.layer:
        m.layer.CopyFrom(pb.ExperimentLayer(name=e.layer, start_bps=e.layer_start_bps, end_bps=e.layer_end_bps))
    m.min_duration.FromTimedelta(e.min_duration)
    m.max_duration.FromTimedelta(e.max_duration)
    m.attribution_window.FromTimedelta(e.attribution_window)
    if e.start_time is not None:
        m.start_time.FromDatetime(e.start_time)
    if e.stop_time is not None:
        m.stop_time.FromDatetime(e.stop_time)
    return m


def assignment_to_proto(a: Assignment) -> pb.ExperimentAssignment:
    c = a.cohort
    return pb.ExperimentAssignment(
        experiment_id=a.experiment.experiment_id, experiment_name=a.experiment.name,
        point_name=a.experiment.point_name, cohort_id=c.cohort_id if c else "", control=bool(c and c.control),
        fall_through=bool(c and c.fall_through), decision_id=c.decision_id if c else "", bucket=a.bucket,
        in_experiment=a.in_experiment, layer=a.layer,
    )


def outcome_from_proto(m: pb.Outcome) -> Outcome:
    return Outcome(
        outcome_id=m.outcome_id, unified_individual_id=m.unified_individual_id,
        # A missing time stays None here for validate_outcomes to refuse, naming the field.
        type=_OUTCOMES.get(m.type, "UNSPECIFIED"), time=time_from_proto(m.time) if m.HasField("time") else None,  # type: ignore[arg-type]
        item_ids=tuple(m.item_ids), revenue=m.revenue, personalization_id=m.personalization_id,
    )


def holdout_from_proto(m: pb.Holdout) -> Holdout:
    return Holdout(fraction_bps=m.fraction_bps, seed=m.seed)


def holdout_to_proto(h: Holdout) -> pb.Holdout:
    m = pb.Holdout(fraction_bps=h.fraction_bps, seed=h.seed)
    if h.update_time is not None:
        m.update_time.FromDatetime(h.update_time)
    return m


def cohort_result_to_proto(r: CohortResult) -> pb.CohortResult:
    return pb.CohortResult(
        cohort_id=r.cohort_id, control=r.control, participants=r.participants, clickers=r.clickers,
        converters=r.converters, revenue=r.revenue, value=r.value, chance_to_beat_control=r.chance_to_beat_control,
        secondary=r.secondary, excluded_conflicts=r.excluded_conflicts)


def metric_from_proto(value: int) -> str:
    """A Metric as the domain names it: "" when unspecified (the default applies), UNSPECIFIED when unknown."""
    return "" if value == pb.METRIC_UNSPECIFIED else _METRICS.get(value, "UNSPECIFIED")
