import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from personalization.common.v1 import limits_pb2 as _limits_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PointType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POINT_TYPE_UNSPECIFIED: _ClassVar[PointType]
    POINT_TYPE_MANUAL_CONTENT: _ClassVar[PointType]
    POINT_TYPE_RECOMMENDATIONS: _ClassVar[PointType]

class FieldType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_TYPE_UNSPECIFIED: _ClassVar[FieldType]
    FIELD_TYPE_STRING: _ClassVar[FieldType]
    FIELD_TYPE_NUMBER: _ClassVar[FieldType]
    FIELD_TYPE_BOOL: _ClassVar[FieldType]
    FIELD_TYPE_STRING_LIST: _ClassVar[FieldType]

class BanditReward(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BANDIT_REWARD_UNSPECIFIED: _ClassVar[BanditReward]
    BANDIT_REWARD_CLICK: _ClassVar[BanditReward]
    BANDIT_REWARD_CONVERSION: _ClassVar[BanditReward]
    BANDIT_REWARD_REVENUE: _ClassVar[BanditReward]

class ExperimentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATE_UNSPECIFIED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_DRAFT: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_RUNNING: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_STOPPED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_ARCHIVED: _ClassVar[ExperimentState]

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_CLICK_THROUGH: _ClassVar[Metric]
    METRIC_CONVERSION: _ClassVar[Metric]
    METRIC_REVENUE_PER_INDIVIDUAL: _ClassVar[Metric]

class WinnerSelection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINNER_SELECTION_UNSPECIFIED: _ClassVar[WinnerSelection]
    WINNER_SELECTION_MANUAL: _ClassVar[WinnerSelection]
    WINNER_SELECTION_AUTOMATIC: _ClassVar[WinnerSelection]

class OutcomeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_TYPE_UNSPECIFIED: _ClassVar[OutcomeType]
    OUTCOME_TYPE_CLICK: _ClassVar[OutcomeType]
    OUTCOME_TYPE_PURCHASE: _ClassVar[OutcomeType]

class AttributionModel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTRIBUTION_MODEL_UNSPECIFIED: _ClassVar[AttributionModel]
    ATTRIBUTION_MODEL_FIRST_TOUCH_VIEW: _ClassVar[AttributionModel]
    ATTRIBUTION_MODEL_LAST_TOUCH_VIEW: _ClassVar[AttributionModel]
    ATTRIBUTION_MODEL_FIRST_TOUCH_CLICK: _ClassVar[AttributionModel]
    ATTRIBUTION_MODEL_LAST_TOUCH_CLICK: _ClassVar[AttributionModel]
POINT_TYPE_UNSPECIFIED: PointType
POINT_TYPE_MANUAL_CONTENT: PointType
POINT_TYPE_RECOMMENDATIONS: PointType
FIELD_TYPE_UNSPECIFIED: FieldType
FIELD_TYPE_STRING: FieldType
FIELD_TYPE_NUMBER: FieldType
FIELD_TYPE_BOOL: FieldType
FIELD_TYPE_STRING_LIST: FieldType
BANDIT_REWARD_UNSPECIFIED: BanditReward
BANDIT_REWARD_CLICK: BanditReward
BANDIT_REWARD_CONVERSION: BanditReward
BANDIT_REWARD_REVENUE: BanditReward
EXPERIMENT_STATE_UNSPECIFIED: ExperimentState
EXPERIMENT_STATE_DRAFT: ExperimentState
EXPERIMENT_STATE_RUNNING: ExperimentState
EXPERIMENT_STATE_STOPPED: ExperimentState
EXPERIMENT_STATE_ARCHIVED: ExperimentState
METRIC_UNSPECIFIED: Metric
METRIC_CLICK_THROUGH: Metric
METRIC_CONVERSION: Metric
METRIC_REVENUE_PER_INDIVIDUAL: Metric
WINNER_SELECTION_UNSPECIFIED: WinnerSelection
WINNER_SELECTION_MANUAL: WinnerSelection
WINNER_SELECTION_AUTOMATIC: WinnerSelection
OUTCOME_TYPE_UNSPECIFIED: OutcomeType
OUTCOME_TYPE_CLICK: OutcomeType
OUTCOME_TYPE_PURCHASE: OutcomeType
ATTRIBUTION_MODEL_UNSPECIFIED: AttributionModel
ATTRIBUTION_MODEL_FIRST_TOUCH_VIEW: AttributionModel
ATTRIBUTION_MODEL_LAST_TOUCH_VIEW: AttributionModel
ATTRIBUTION_MODEL_FIRST_TOUCH_CLICK: AttributionModel
ATTRIBUTION_MODEL_LAST_TOUCH_CLICK: AttributionModel

class TemplateField(_message.Message):
    __slots__ = ("name", "type", "required")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: FieldType
    required: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[FieldType, str]] = ..., required: _Optional[bool] = ...) -> None: ...

class ResponseTemplate(_message.Message):
    __slots__ = ("fields", "item_attributes")
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ITEM_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedCompositeFieldContainer[TemplateField]
    item_attributes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fields: _Optional[_Iterable[_Union[TemplateField, _Mapping]]] = ..., item_attributes: _Optional[_Iterable[str]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("point_id", "name", "description", "type", "template", "archived", "consent_purpose", "requires_authentication", "bandit")
    POINT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    CONSENT_PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_AUTHENTICATION_FIELD_NUMBER: _ClassVar[int]
    BANDIT_FIELD_NUMBER: _ClassVar[int]
    point_id: str
    name: str
    description: str
    type: PointType
    template: ResponseTemplate
    archived: bool
    consent_purpose: str
    requires_authentication: bool
    bandit: BanditConfig
    def __init__(self, point_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., type: _Optional[_Union[PointType, str]] = ..., template: _Optional[_Union[ResponseTemplate, _Mapping]] = ..., archived: _Optional[bool] = ..., consent_purpose: _Optional[str] = ..., requires_authentication: _Optional[bool] = ..., bandit: _Optional[_Union[BanditConfig, _Mapping]] = ...) -> None: ...

class BanditConfig(_message.Message):
    __slots__ = ("reward", "min_offer_share", "holdout_share", "segments", "attribution_window")
    REWARD_FIELD_NUMBER: _ClassVar[int]
    MIN_OFFER_SHARE_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_SHARE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_WINDOW_FIELD_NUMBER: _ClassVar[int]
    reward: BanditReward
    min_offer_share: float
    holdout_share: float
    segments: _containers.RepeatedScalarFieldContainer[str]
    attribution_window: _duration_pb2.Duration
    def __init__(self, reward: _Optional[_Union[BanditReward, str]] = ..., min_offer_share: _Optional[float] = ..., holdout_share: _Optional[float] = ..., segments: _Optional[_Iterable[str]] = ..., attribution_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BanditArm(_message.Message):
    __slots__ = ("decision_id", "decision_name", "trials", "successes", "revenue", "alpha", "beta", "value_mean", "value_kappa", "value_shape", "value_rate", "sampled")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_NAME_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    VALUE_MEAN_FIELD_NUMBER: _ClassVar[int]
    VALUE_KAPPA_FIELD_NUMBER: _ClassVar[int]
    VALUE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_RATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    decision_name: str
    trials: int
    successes: int
    revenue: float
    alpha: float
    beta: float
    value_mean: float
    value_kappa: float
    value_shape: float
    value_rate: float
    sampled: float
    def __init__(self, decision_id: _Optional[str] = ..., decision_name: _Optional[str] = ..., trials: _Optional[int] = ..., successes: _Optional[int] = ..., revenue: _Optional[float] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ..., value_mean: _Optional[float] = ..., value_kappa: _Optional[float] = ..., value_shape: _Optional[float] = ..., value_rate: _Optional[float] = ..., sampled: _Optional[float] = ...) -> None: ...

class BanditChoice(_message.Message):
    __slots__ = ("segment", "holdout", "explored", "arms")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    segment: str
    holdout: bool
    explored: bool
    arms: _containers.RepeatedCompositeFieldContainer[BanditArm]
    def __init__(self, segment: _Optional[str] = ..., holdout: _Optional[bool] = ..., explored: _Optional[bool] = ..., arms: _Optional[_Iterable[_Union[BanditArm, _Mapping]]] = ...) -> None: ...

class UpsertPointRequest(_message.Message):
    __slots__ = ("point",)
    POINT_FIELD_NUMBER: _ClassVar[int]
    point: Point
    def __init__(self, point: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class UpsertPointResponse(_message.Message):
    __slots__ = ("point",)
    POINT_FIELD_NUMBER: _ClassVar[int]
    point: Point
    def __init__(self, point: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class ListPointsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "include_archived")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    include_archived: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_archived: _Optional[bool] = ...) -> None: ...

class ListPointsResponse(_message.Message):
    __slots__ = ("points", "next_page_token")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    next_page_token: str
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RecommendationSpec(_message.Message):
    __slots__ = ("recommender", "count")
    RECOMMENDER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    recommender: str
    count: int
    def __init__(self, recommender: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "point_name", "name", "priority", "rule", "fallback", "content", "recommendations", "archived", "consent_purpose")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATIONS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    CONSENT_PURPOSE_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    point_name: str
    name: str
    priority: int
    rule: str
    fallback: bool
    content: _struct_pb2.Struct
    recommendations: RecommendationSpec
    archived: bool
    consent_purpose: str
    def __init__(self, decision_id: _Optional[str] = ..., point_name: _Optional[str] = ..., name: _Optional[str] = ..., priority: _Optional[int] = ..., rule: _Optional[str] = ..., fallback: _Optional[bool] = ..., content: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., recommendations: _Optional[_Union[RecommendationSpec, _Mapping]] = ..., archived: _Optional[bool] = ..., consent_purpose: _Optional[str] = ...) -> None: ...

class UpsertDecisionRequest(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class UpsertDecisionResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class ListDecisionsRequest(_message.Message):
    __slots__ = ("point_name", "page_size", "page_token", "include_archived")
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    point_name: str
    page_size: int
    page_token: str
    include_archived: bool
    def __init__(self, point_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_archived: _Optional[bool] = ...) -> None: ...

class ListDecisionsResponse(_message.Message):
    __slots__ = ("decisions", "next_page_token")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    next_page_token: str
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PointSelection(_message.Message):
    __slots__ = ("name", "decision_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    decision_id: str
    def __init__(self, name: _Optional[str] = ..., decision_id: _Optional[str] = ...) -> None: ...

class QualifyRequest(_message.Message):
    __slots__ = ("points", "profile", "context", "unified_individual_id", "fallback_only")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ONLY_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[PointSelection]
    profile: _struct_pb2.Struct
    context: _struct_pb2.Struct
    unified_individual_id: str
    fallback_only: bool
    def __init__(self, points: _Optional[_Iterable[_Union[PointSelection, _Mapping]]] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., unified_individual_id: _Optional[str] = ..., fallback_only: _Optional[bool] = ...) -> None: ...

class RuleEvaluation(_message.Message):
    __slots__ = ("decision_id", "decision_name", "matched", "error")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_NAME_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    decision_name: str
    matched: bool
    error: str
    def __init__(self, decision_id: _Optional[str] = ..., decision_name: _Optional[str] = ..., matched: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class Qualification(_message.Message):
    __slots__ = ("point", "decision", "evaluations", "experiment", "missing_consents", "authentication_required", "bandit", "holdout")
    POINT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    MISSING_CONSENTS_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    BANDIT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    point: Point
    decision: Decision
    evaluations: _containers.RepeatedCompositeFieldContainer[RuleEvaluation]
    experiment: ExperimentAssignment
    missing_consents: _containers.RepeatedScalarFieldContainer[str]
    authentication_required: bool
    bandit: BanditChoice
    holdout: bool
    def __init__(self, point: _Optional[_Union[Point, _Mapping]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., evaluations: _Optional[_Iterable[_Union[RuleEvaluation, _Mapping]]] = ..., experiment: _Optional[_Union[ExperimentAssignment, _Mapping]] = ..., missing_consents: _Optional[_Iterable[str]] = ..., authentication_required: _Optional[bool] = ..., bandit: _Optional[_Union[BanditChoice, _Mapping]] = ..., holdout: _Optional[bool] = ...) -> None: ...

class QualifyResponse(_message.Message):
    __slots__ = ("qualifications", "profile_keys")
    QUALIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_KEYS_FIELD_NUMBER: _ClassVar[int]
    qualifications: _containers.RepeatedCompositeFieldContainer[Qualification]
    profile_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, qualifications: _Optional[_Iterable[_Union[Qualification, _Mapping]]] = ..., profile_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchIndividual(_message.Message):
    __slots__ = ("unified_individual_id", "profile", "context")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    profile: _struct_pb2.Struct
    context: _struct_pb2.Struct
    def __init__(self, unified_individual_id: _Optional[str] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class QualifyBatchRequest(_message.Message):
    __slots__ = ("points", "context", "individuals", "fallback_only", "compact")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    INDIVIDUALS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ONLY_FIELD_NUMBER: _ClassVar[int]
    COMPACT_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedScalarFieldContainer[str]
    context: _struct_pb2.Struct
    individuals: _containers.RepeatedCompositeFieldContainer[BatchIndividual]
    fallback_only: bool
    compact: bool
    def __init__(self, points: _Optional[_Iterable[str]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., individuals: _Optional[_Iterable[_Union[BatchIndividual, _Mapping]]] = ..., fallback_only: _Optional[bool] = ..., compact: _Optional[bool] = ...) -> None: ...

class BatchQualification(_message.Message):
    __slots__ = ("decision_id", "evaluations", "experiment", "missing_consents", "bandit", "holdout")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    MISSING_CONSENTS_FIELD_NUMBER: _ClassVar[int]
    BANDIT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    evaluations: _containers.RepeatedCompositeFieldContainer[RuleEvaluation]
    experiment: ExperimentAssignment
    missing_consents: _containers.RepeatedScalarFieldContainer[str]
    bandit: BanditChoice
    holdout: bool
    def __init__(self, decision_id: _Optional[str] = ..., evaluations: _Optional[_Iterable[_Union[RuleEvaluation, _Mapping]]] = ..., experiment: _Optional[_Union[ExperimentAssignment, _Mapping]] = ..., missing_consents: _Optional[_Iterable[str]] = ..., bandit: _Optional[_Union[BanditChoice, _Mapping]] = ..., holdout: _Optional[bool] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("unified_individual_id", "qualifications", "qualification_indexes")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    QUALIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    QUALIFICATION_INDEXES_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    qualifications: _containers.RepeatedCompositeFieldContainer[BatchQualification]
    qualification_indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, unified_individual_id: _Optional[str] = ..., qualifications: _Optional[_Iterable[_Union[BatchQualification, _Mapping]]] = ..., qualification_indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class QualifyBatchResponse(_message.Message):
    __slots__ = ("points", "decisions", "results", "profile_keys", "qualifications", "qualify_profile_keys")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_KEYS_FIELD_NUMBER: _ClassVar[int]
    QUALIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    QUALIFY_PROFILE_KEYS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    profile_keys: _containers.RepeatedScalarFieldContainer[str]
    qualifications: _containers.RepeatedCompositeFieldContainer[BatchQualification]
    qualify_profile_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ..., profile_keys: _Optional[_Iterable[str]] = ..., qualifications: _Optional[_Iterable[_Union[BatchQualification, _Mapping]]] = ..., qualify_profile_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class DecisionLogEntry(_message.Message):
    __slots__ = ("personalization_id", "request_id", "point_id", "point_name", "decision_id", "unified_individual_id", "channel", "correlation_id", "anchor_id", "served", "stage_ms", "log_time", "experiment_id", "cohort_id", "exposure_conflict", "batch_job_id", "item_ids", "bandit_trial", "bandit_segment", "holdout")
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PERSONALIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_ID_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    LOG_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPOSURE_CONFLICT_FIELD_NUMBER: _ClassVar[int]
    BATCH_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    BANDIT_TRIAL_FIELD_NUMBER: _ClassVar[int]
    BANDIT_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    personalization_id: str
    request_id: str
    point_id: str
    point_name: str
    decision_id: str
    unified_individual_id: str
    channel: str
    correlation_id: str
    anchor_id: str
    served: _struct_pb2.Struct
    stage_ms: _containers.ScalarMap[str, float]
    log_time: _timestamp_pb2.Timestamp
    experiment_id: str
    cohort_id: str
    exposure_conflict: bool
    batch_job_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    bandit_trial: bool
    bandit_segment: str
    holdout: bool
    def __init__(self, personalization_id: _Optional[str] = ..., request_id: _Optional[str] = ..., point_id: _Optional[str] = ..., point_name: _Optional[str] = ..., decision_id: _Optional[str] = ..., unified_individual_id: _Optional[str] = ..., channel: _Optional[str] = ..., correlation_id: _Optional[str] = ..., anchor_id: _Optional[str] = ..., served: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., stage_ms: _Optional[_Mapping[str, float]] = ..., log_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., experiment_id: _Optional[str] = ..., cohort_id: _Optional[str] = ..., exposure_conflict: _Optional[bool] = ..., batch_job_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., bandit_trial: _Optional[bool] = ..., bandit_segment: _Optional[str] = ..., holdout: _Optional[bool] = ...) -> None: ...

class LogDecisionsRequest(_message.Message):
    __slots__ = ("entries", "groups")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[DecisionLogEntry]
    groups: _containers.RepeatedCompositeFieldContainer[DecisionLogGroup]
    def __init__(self, entries: _Optional[_Iterable[_Union[DecisionLogEntry, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[DecisionLogGroup, _Mapping]]] = ...) -> None: ...

class DecisionLogGroup(_message.Message):
    __slots__ = ("shared", "rows")
    SHARED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    shared: DecisionLogEntry
    rows: _containers.RepeatedCompositeFieldContainer[DecisionLogRow]
    def __init__(self, shared: _Optional[_Union[DecisionLogEntry, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[DecisionLogRow, _Mapping]]] = ...) -> None: ...

class DecisionLogRow(_message.Message):
    __slots__ = ("personalization_id", "unified_individual_id", "item_ids")
    PERSONALIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    personalization_id: str
    unified_individual_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, personalization_id: _Optional[str] = ..., unified_individual_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LogDecisionsResponse(_message.Message):
    __slots__ = ("logged_count",)
    LOGGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    logged_count: int
    def __init__(self, logged_count: _Optional[int] = ...) -> None: ...

class ListDecisionLogRequest(_message.Message):
    __slots__ = ("unified_individual_id", "page_size", "page_token")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    page_size: int
    page_token: str
    def __init__(self, unified_individual_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDecisionLogResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[DecisionLogEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[DecisionLogEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDecisionLogStatsRequest(_message.Message):
    __slots__ = ("start_time", "end_time")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PointLogStats(_message.Message):
    __slots__ = ("point_name", "served_count", "unique_individuals")
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_INDIVIDUALS_FIELD_NUMBER: _ClassVar[int]
    point_name: str
    served_count: int
    unique_individuals: int
    def __init__(self, point_name: _Optional[str] = ..., served_count: _Optional[int] = ..., unique_individuals: _Optional[int] = ...) -> None: ...

class GetDecisionLogStatsResponse(_message.Message):
    __slots__ = ("request_count", "served_count", "unique_individuals", "points")
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    SERVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_INDIVIDUALS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    request_count: int
    served_count: int
    unique_individuals: int
    points: _containers.RepeatedCompositeFieldContainer[PointLogStats]
    def __init__(self, request_count: _Optional[int] = ..., served_count: _Optional[int] = ..., unique_individuals: _Optional[int] = ..., points: _Optional[_Iterable[_Union[PointLogStats, _Mapping]]] = ...) -> None: ...

class ArchivePointRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ArchivePointResponse(_message.Message):
    __slots__ = ("point",)
    POINT_FIELD_NUMBER: _ClassVar[int]
    point: Point
    def __init__(self, point: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class ArchiveDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class ArchiveDecisionResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class SchemaField(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: FieldType
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[FieldType, str]] = ...) -> None: ...

class ProfileSchema(_message.Message):
    __slots__ = ("attributes", "insights", "segments", "affinities", "consents", "context_attributes")
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    INSIGHTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.RepeatedCompositeFieldContainer[SchemaField]
    insights: _containers.RepeatedScalarFieldContainer[str]
    segments: _containers.RepeatedScalarFieldContainer[str]
    affinities: _containers.RepeatedScalarFieldContainer[str]
    consents: _containers.RepeatedScalarFieldContainer[str]
    context_attributes: _containers.RepeatedCompositeFieldContainer[SchemaField]
    def __init__(self, attributes: _Optional[_Iterable[_Union[SchemaField, _Mapping]]] = ..., insights: _Optional[_Iterable[str]] = ..., segments: _Optional[_Iterable[str]] = ..., affinities: _Optional[_Iterable[str]] = ..., consents: _Optional[_Iterable[str]] = ..., context_attributes: _Optional[_Iterable[_Union[SchemaField, _Mapping]]] = ...) -> None: ...

class DeclareProfileSchemaRequest(_message.Message):
    __slots__ = ("schema",)
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    schema: ProfileSchema
    def __init__(self, schema: _Optional[_Union[ProfileSchema, _Mapping]] = ...) -> None: ...

class DeclareProfileSchemaResponse(_message.Message):
    __slots__ = ("schema",)
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    schema: ProfileSchema
    def __init__(self, schema: _Optional[_Union[ProfileSchema, _Mapping]] = ...) -> None: ...

class GetProfileSchemaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetProfileSchemaResponse(_message.Message):
    __slots__ = ("schema", "declared")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    DECLARED_FIELD_NUMBER: _ClassVar[int]
    schema: ProfileSchema
    declared: bool
    def __init__(self, schema: _Optional[_Union[ProfileSchema, _Mapping]] = ..., declared: _Optional[bool] = ...) -> None: ...

class Cohort(_message.Message):
    __slots__ = ("cohort_id", "weight_bps", "control", "decision_id", "fall_through")
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BPS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    FALL_THROUGH_FIELD_NUMBER: _ClassVar[int]
    cohort_id: str
    weight_bps: int
    control: bool
    decision_id: str
    fall_through: bool
    def __init__(self, cohort_id: _Optional[str] = ..., weight_bps: _Optional[int] = ..., control: _Optional[bool] = ..., decision_id: _Optional[str] = ..., fall_through: _Optional[bool] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("experiment_id", "name", "point_name", "state", "cohorts", "targeting_rule", "primary_metric", "secondary_metrics", "min_participants", "min_duration", "max_duration", "chance_to_win_threshold", "winner_selection", "seed", "attribution_window", "winner_cohort_id", "start_time", "stop_time", "layer", "hash_version")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COHORTS_FIELD_NUMBER: _ClassVar[int]
    TARGETING_RULE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_METRIC_FIELD_NUMBER: _ClassVar[int]
    SECONDARY_METRICS_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    CHANCE_TO_WIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINNER_SELECTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINNER_COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    STOP_TIME_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HASH_VERSION_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    name: str
    point_name: str
    state: ExperimentState
    cohorts: _containers.RepeatedCompositeFieldContainer[Cohort]
    targeting_rule: str
    primary_metric: Metric
    secondary_metrics: _containers.RepeatedScalarFieldContainer[Metric]
    min_participants: int
    min_duration: _duration_pb2.Duration
    max_duration: _duration_pb2.Duration
    chance_to_win_threshold: float
    winner_selection: WinnerSelection
    seed: str
    attribution_window: _duration_pb2.Duration
    winner_cohort_id: str
    start_time: _timestamp_pb2.Timestamp
    stop_time: _timestamp_pb2.Timestamp
    layer: ExperimentLayer
    hash_version: int
    def __init__(self, experiment_id: _Optional[str] = ..., name: _Optional[str] = ..., point_name: _Optional[str] = ..., state: _Optional[_Union[ExperimentState, str]] = ..., cohorts: _Optional[_Iterable[_Union[Cohort, _Mapping]]] = ..., targeting_rule: _Optional[str] = ..., primary_metric: _Optional[_Union[Metric, str]] = ..., secondary_metrics: _Optional[_Iterable[_Union[Metric, str]]] = ..., min_participants: _Optional[int] = ..., min_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., chance_to_win_threshold: _Optional[float] = ..., winner_selection: _Optional[_Union[WinnerSelection, str]] = ..., seed: _Optional[str] = ..., attribution_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., winner_cohort_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stop_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., layer: _Optional[_Union[ExperimentLayer, _Mapping]] = ..., hash_version: _Optional[int] = ...) -> None: ...

class UpsertExperimentRequest(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class UpsertExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ("point_name", "page_size", "page_token", "include_archived")
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    point_name: str
    page_size: int
    page_token: str
    include_archived: bool
    def __init__(self, point_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_archived: _Optional[bool] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments", "next_page_token")
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    next_page_token: str
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StartExperimentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class StartExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class StopExperimentRequest(_message.Message):
    __slots__ = ("name", "winner_cohort_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WINNER_COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    winner_cohort_id: str
    def __init__(self, name: _Optional[str] = ..., winner_cohort_id: _Optional[str] = ...) -> None: ...

class StopExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class ArchiveExperimentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ArchiveExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class ExperimentAssignment(_message.Message):
    __slots__ = ("experiment_id", "experiment_name", "point_name", "cohort_id", "control", "fall_through", "decision_id", "bucket", "in_experiment", "layer")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    FALL_THROUGH_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    IN_EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    experiment_name: str
    point_name: str
    cohort_id: str
    control: bool
    fall_through: bool
    decision_id: str
    bucket: float
    in_experiment: bool
    layer: str
    def __init__(self, experiment_id: _Optional[str] = ..., experiment_name: _Optional[str] = ..., point_name: _Optional[str] = ..., cohort_id: _Optional[str] = ..., control: _Optional[bool] = ..., fall_through: _Optional[bool] = ..., decision_id: _Optional[str] = ..., bucket: _Optional[float] = ..., in_experiment: _Optional[bool] = ..., layer: _Optional[str] = ...) -> None: ...

class AssignExperimentsRequest(_message.Message):
    __slots__ = ("unified_individual_id", "point_names", "profile", "context", "record_exposure", "channel")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_NAMES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RECORD_EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    point_names: _containers.RepeatedScalarFieldContainer[str]
    profile: _struct_pb2.Struct
    context: _struct_pb2.Struct
    record_exposure: bool
    channel: str
    def __init__(self, unified_individual_id: _Optional[str] = ..., point_names: _Optional[_Iterable[str]] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., record_exposure: _Optional[bool] = ..., channel: _Optional[str] = ...) -> None: ...

class AssignExperimentsResponse(_message.Message):
    __slots__ = ("assignments", "holdout")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[ExperimentAssignment]
    holdout: bool
    def __init__(self, assignments: _Optional[_Iterable[_Union[ExperimentAssignment, _Mapping]]] = ..., holdout: _Optional[bool] = ...) -> None: ...

class ReassignIndividualRequest(_message.Message):
    __slots__ = ("from_unified_individual_ids", "to_unified_individual_id", "unmerge")
    FROM_UNIFIED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    TO_UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    UNMERGE_FIELD_NUMBER: _ClassVar[int]
    from_unified_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    to_unified_individual_id: str
    unmerge: bool
    def __init__(self, from_unified_individual_ids: _Optional[_Iterable[str]] = ..., to_unified_individual_id: _Optional[str] = ..., unmerge: _Optional[bool] = ...) -> None: ...

class ReassignIndividualResponse(_message.Message):
    __slots__ = ("conflicting_experiment_ids",)
    CONFLICTING_EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    conflicting_experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conflicting_experiment_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("outcome_id", "unified_individual_id", "type", "time", "item_ids", "revenue", "personalization_id")
    OUTCOME_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    outcome_id: str
    unified_individual_id: str
    type: OutcomeType
    time: _timestamp_pb2.Timestamp
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    revenue: float
    personalization_id: str
    def __init__(self, outcome_id: _Optional[str] = ..., unified_individual_id: _Optional[str] = ..., type: _Optional[_Union[OutcomeType, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., item_ids: _Optional[_Iterable[str]] = ..., revenue: _Optional[float] = ..., personalization_id: _Optional[str] = ...) -> None: ...

class RecordOutcomesRequest(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ...) -> None: ...

class RecordOutcomesResponse(_message.Message):
    __slots__ = ("recorded_count",)
    RECORDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    recorded_count: int
    def __init__(self, recorded_count: _Optional[int] = ...) -> None: ...

class GetExperimentResultsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CohortResult(_message.Message):
    __slots__ = ("cohort_id", "control", "participants", "clickers", "converters", "revenue", "value", "chance_to_beat_control", "secondary", "excluded_conflicts")
    class SecondaryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CLICKERS_FIELD_NUMBER: _ClassVar[int]
    CONVERTERS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CHANCE_TO_BEAT_CONTROL_FIELD_NUMBER: _ClassVar[int]
    SECONDARY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    cohort_id: str
    control: bool
    participants: int
    clickers: int
    converters: int
    revenue: float
    value: float
    chance_to_beat_control: float
    secondary: _containers.ScalarMap[str, float]
    excluded_conflicts: int
    def __init__(self, cohort_id: _Optional[str] = ..., control: _Optional[bool] = ..., participants: _Optional[int] = ..., clickers: _Optional[int] = ..., converters: _Optional[int] = ..., revenue: _Optional[float] = ..., value: _Optional[float] = ..., chance_to_beat_control: _Optional[float] = ..., secondary: _Optional[_Mapping[str, float]] = ..., excluded_conflicts: _Optional[int] = ...) -> None: ...

class GetExperimentResultsResponse(_message.Message):
    __slots__ = ("experiment", "cohorts", "sample_ratio_p_value", "sample_ratio_mismatch", "leading_cohort_id", "verdict")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    COHORTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATIO_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATIO_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    LEADING_COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    cohorts: _containers.RepeatedCompositeFieldContainer[CohortResult]
    sample_ratio_p_value: float
    sample_ratio_mismatch: bool
    leading_cohort_id: str
    verdict: str
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ..., cohorts: _Optional[_Iterable[_Union[CohortResult, _Mapping]]] = ..., sample_ratio_p_value: _Optional[float] = ..., sample_ratio_mismatch: _Optional[bool] = ..., leading_cohort_id: _Optional[str] = ..., verdict: _Optional[str] = ...) -> None: ...

class GetAttributionRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "window", "point_name")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    window: _duration_pb2.Duration
    point_name: str
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., point_name: _Optional[str] = ...) -> None: ...

class AttributionRow(_message.Message):
    __slots__ = ("model", "point_name", "decision_id", "item_id", "conversions", "clicks", "revenue")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    model: AttributionModel
    point_name: str
    decision_id: str
    item_id: str
    conversions: int
    clicks: int
    revenue: float
    def __init__(self, model: _Optional[_Union[AttributionModel, str]] = ..., point_name: _Optional[str] = ..., decision_id: _Optional[str] = ..., item_id: _Optional[str] = ..., conversions: _Optional[int] = ..., clicks: _Optional[int] = ..., revenue: _Optional[float] = ...) -> None: ...

class GetAttributionResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[AttributionRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[AttributionRow, _Mapping]]] = ...) -> None: ...

class EraseIndividualRequest(_message.Message):
    __slots__ = ("unified_individual_ids",)
    UNIFIED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    unified_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unified_individual_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class EraseIndividualResponse(_message.Message):
    __slots__ = ("erased_rows",)
    ERASED_ROWS_FIELD_NUMBER: _ClassVar[int]
    erased_rows: int
    def __init__(self, erased_rows: _Optional[int] = ...) -> None: ...

class ExportIndividualRequest(_message.Message):
    __slots__ = ("unified_individual_ids",)
    UNIFIED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    unified_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unified_individual_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportIndividualResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class ExperimentLayer(_message.Message):
    __slots__ = ("name", "start_bps", "end_bps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_BPS_FIELD_NUMBER: _ClassVar[int]
    END_BPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    start_bps: int
    end_bps: int
    def __init__(self, name: _Optional[str] = ..., start_bps: _Optional[int] = ..., end_bps: _Optional[int] = ...) -> None: ...

class Holdout(_message.Message):
    __slots__ = ("fraction_bps", "seed", "update_time")
    FRACTION_BPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    fraction_bps: int
    seed: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, fraction_bps: _Optional[int] = ..., seed: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetHoldoutRequest(_message.Message):
    __slots__ = ("holdout",)
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    holdout: Holdout
    def __init__(self, holdout: _Optional[_Union[Holdout, _Mapping]] = ...) -> None: ...

class SetHoldoutResponse(_message.Message):
    __slots__ = ("holdout",)
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    holdout: Holdout
    def __init__(self, holdout: _Optional[_Union[Holdout, _Mapping]] = ...) -> None: ...

class GetHoldoutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetHoldoutResponse(_message.Message):
    __slots__ = ("holdout",)
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    holdout: Holdout
    def __init__(self, holdout: _Optional[_Union[Holdout, _Mapping]] = ...) -> None: ...

class GetHoldoutResultsRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "metric", "attribution_window")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_WINDOW_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    metric: Metric
    attribution_window: _duration_pb2.Duration
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metric: _Optional[_Union[Metric, str]] = ..., attribution_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetHoldoutResultsResponse(_message.Message):
    __slots__ = ("holdout", "groups", "sample_ratio_p_value", "sample_ratio_mismatch")
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATIO_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATIO_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    holdout: Holdout
    groups: _containers.RepeatedCompositeFieldContainer[CohortResult]
    sample_ratio_p_value: float
    sample_ratio_mismatch: bool
    def __init__(self, holdout: _Optional[_Union[Holdout, _Mapping]] = ..., groups: _Optional[_Iterable[_Union[CohortResult, _Mapping]]] = ..., sample_ratio_p_value: _Optional[float] = ..., sample_ratio_mismatch: _Optional[bool] = ...) -> None: ...

class DraftCase(_message.Message):
    __slots__ = ("unified_individual_id", "point_name", "profile", "context")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    point_name: str
    profile: _struct_pb2.Struct
    context: _struct_pb2.Struct
    def __init__(self, unified_individual_id: _Optional[str] = ..., point_name: _Optional[str] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class QualifyDraftRequest(_message.Message):
    __slots__ = ("points", "decisions", "cases")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CASES_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    cases: _containers.RepeatedCompositeFieldContainer[DraftCase]
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., cases: _Optional[_Iterable[_Union[DraftCase, _Mapping]]] = ...) -> None: ...

class DraftResult(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class QualifyDraftResponse(_message.Message):
    __slots__ = ("results", "decisions", "changed_decision_ids")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_DECISION_IDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DraftResult]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    changed_decision_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, results: _Optional[_Iterable[_Union[DraftResult, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., changed_decision_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListReplayLogRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "attribution_window", "page_size", "page_token")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_WINDOW_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    attribution_window: _duration_pb2.Duration
    page_size: int
    page_token: str
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attribution_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ReplayLogRow(_message.Message):
    __slots__ = ("entry", "clicked", "converted", "revenue", "randomized", "propensity", "randomized_decision_ids", "primary_metric")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    CLICKED_FIELD_NUMBER: _ClassVar[int]
    CONVERTED_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    RANDOMIZED_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    RANDOMIZED_DECISION_IDS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_METRIC_FIELD_NUMBER: _ClassVar[int]
    entry: DecisionLogEntry
    clicked: bool
    converted: bool
    revenue: float
    randomized: bool
    propensity: float
    randomized_decision_ids: _containers.RepeatedScalarFieldContainer[str]
    primary_metric: Metric
    def __init__(self, entry: _Optional[_Union[DecisionLogEntry, _Mapping]] = ..., clicked: _Optional[bool] = ..., converted: _Optional[bool] = ..., revenue: _Optional[float] = ..., randomized: _Optional[bool] = ..., propensity: _Optional[float] = ..., randomized_decision_ids: _Optional[_Iterable[str]] = ..., primary_metric: _Optional[_Union[Metric, str]] = ...) -> None: ...

class ListReplayLogResponse(_message.Message):
    __slots__ = ("rows", "next_page_token")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[ReplayLogRow]
    next_page_token: str
    def __init__(self, rows: _Optional[_Iterable[_Union[ReplayLogRow, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
