import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from personalization.common.v1 import limits_pb2 as _limits_pb2
from personalization.common.v1 import common_pb2 as _common_pb2
from personalization.decision.v1 import decision_service_pb2 as _decision_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AckStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_STATUS_UNSPECIFIED: _ClassVar[AckStatus]
    ACK_STATUS_STORED: _ClassVar[AckStatus]
    ACK_STATUS_DUPLICATE: _ClassVar[AckStatus]
    ACK_STATUS_REJECTED: _ClassVar[AckStatus]

class ExecutionFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_FLAG_UNSPECIFIED: _ClassVar[ExecutionFlag]
    EXECUTION_FLAG_TEST_MODE: _ClassVar[ExecutionFlag]
    EXECUTION_FLAG_CONTEXT_ONLY: _ClassVar[ExecutionFlag]
    EXECUTION_FLAG_DIAGNOSTICS: _ClassVar[ExecutionFlag]

class DiagnosticCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIAGNOSTIC_CODE_UNSPECIFIED: _ClassVar[DiagnosticCode]
    DIAGNOSTIC_CODE_NO_DECISION_QUALIFIED: _ClassVar[DiagnosticCode]
    DIAGNOSTIC_CODE_POINT_NOT_CONFIGURED: _ClassVar[DiagnosticCode]
    DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL: _ClassVar[DiagnosticCode]
    DIAGNOSTIC_CODE_FEWER_ITEMS_THAN_REQUESTED: _ClassVar[DiagnosticCode]
    DIAGNOSTIC_CODE_QUOTA_EXCEEDED: _ClassVar[DiagnosticCode]
    DIAGNOSTIC_CODE_CONSENT_MISSING: _ClassVar[DiagnosticCode]
    DIAGNOSTIC_CODE_AUTHENTICATION_REQUIRED: _ClassVar[DiagnosticCode]
    DIAGNOSTIC_CODE_HOLDOUT: _ClassVar[DiagnosticCode]

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_INGEST: _ClassVar[Scope]
    SCOPE_DECIDE: _ClassVar[Scope]
    SCOPE_ADMIN: _ClassVar[Scope]

class AttributeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTRIBUTE_TYPE_UNSPECIFIED: _ClassVar[AttributeType]
    ATTRIBUTE_TYPE_STRING: _ClassVar[AttributeType]
    ATTRIBUTE_TYPE_NUMBER: _ClassVar[AttributeType]
    ATTRIBUTE_TYPE_BOOL: _ClassVar[AttributeType]
    ATTRIBUTE_TYPE_STRING_LIST: _ClassVar[AttributeType]

class BatchJobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_JOB_STATE_UNSPECIFIED: _ClassVar[BatchJobState]
    BATCH_JOB_STATE_PENDING: _ClassVar[BatchJobState]
    BATCH_JOB_STATE_RUNNING: _ClassVar[BatchJobState]
    BATCH_JOB_STATE_SUCCEEDED: _ClassVar[BatchJobState]
    BATCH_JOB_STATE_FAILED: _ClassVar[BatchJobState]

class BatchContextSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_CONTEXT_SOURCE_UNSPECIFIED: _ClassVar[BatchContextSource]
    BATCH_CONTEXT_SOURCE_LAST_CART: _ClassVar[BatchContextSource]
    BATCH_CONTEXT_SOURCE_RECENTLY_VIEWED: _ClassVar[BatchContextSource]
    BATCH_CONTEXT_SOURCE_LAST_PURCHASE: _ClassVar[BatchContextSource]

class FileFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_FORMAT_UNSPECIFIED: _ClassVar[FileFormat]
    FILE_FORMAT_JSONL: _ClassVar[FileFormat]
    FILE_FORMAT_CSV: _ClassVar[FileFormat]

class DeliveryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATE_UNSPECIFIED: _ClassVar[DeliveryState]
    DELIVERY_STATE_PENDING: _ClassVar[DeliveryState]
    DELIVERY_STATE_DELIVERED: _ClassVar[DeliveryState]
    DELIVERY_STATE_FAILED: _ClassVar[DeliveryState]
ACK_STATUS_UNSPECIFIED: AckStatus
ACK_STATUS_STORED: AckStatus
ACK_STATUS_DUPLICATE: AckStatus
ACK_STATUS_REJECTED: AckStatus
EXECUTION_FLAG_UNSPECIFIED: ExecutionFlag
EXECUTION_FLAG_TEST_MODE: ExecutionFlag
EXECUTION_FLAG_CONTEXT_ONLY: ExecutionFlag
EXECUTION_FLAG_DIAGNOSTICS: ExecutionFlag
DIAGNOSTIC_CODE_UNSPECIFIED: DiagnosticCode
DIAGNOSTIC_CODE_NO_DECISION_QUALIFIED: DiagnosticCode
DIAGNOSTIC_CODE_POINT_NOT_CONFIGURED: DiagnosticCode
DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL: DiagnosticCode
DIAGNOSTIC_CODE_FEWER_ITEMS_THAN_REQUESTED: DiagnosticCode
DIAGNOSTIC_CODE_QUOTA_EXCEEDED: DiagnosticCode
DIAGNOSTIC_CODE_CONSENT_MISSING: DiagnosticCode
DIAGNOSTIC_CODE_AUTHENTICATION_REQUIRED: DiagnosticCode
DIAGNOSTIC_CODE_HOLDOUT: DiagnosticCode
SCOPE_UNSPECIFIED: Scope
SCOPE_INGEST: Scope
SCOPE_DECIDE: Scope
SCOPE_ADMIN: Scope
ATTRIBUTE_TYPE_UNSPECIFIED: AttributeType
ATTRIBUTE_TYPE_STRING: AttributeType
ATTRIBUTE_TYPE_NUMBER: AttributeType
ATTRIBUTE_TYPE_BOOL: AttributeType
ATTRIBUTE_TYPE_STRING_LIST: AttributeType
BATCH_JOB_STATE_UNSPECIFIED: BatchJobState
BATCH_JOB_STATE_PENDING: BatchJobState
BATCH_JOB_STATE_RUNNING: BatchJobState
BATCH_JOB_STATE_SUCCEEDED: BatchJobState
BATCH_JOB_STATE_FAILED: BatchJobState
BATCH_CONTEXT_SOURCE_UNSPECIFIED: BatchContextSource
BATCH_CONTEXT_SOURCE_LAST_CART: BatchContextSource
BATCH_CONTEXT_SOURCE_RECENTLY_VIEWED: BatchContextSource
BATCH_CONTEXT_SOURCE_LAST_PURCHASE: BatchContextSource
FILE_FORMAT_UNSPECIFIED: FileFormat
FILE_FORMAT_JSONL: FileFormat
FILE_FORMAT_CSV: FileFormat
DELIVERY_STATE_UNSPECIFIED: DeliveryState
DELIVERY_STATE_PENDING: DeliveryState
DELIVERY_STATE_DELIVERED: DeliveryState
DELIVERY_STATE_FAILED: DeliveryState

class IngestEventsRequest(_message.Message):
    __slots__ = ("events", "bulk", "skip_invalid")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    BULK_FIELD_NUMBER: _ClassVar[int]
    SKIP_INVALID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    bulk: bool
    skip_invalid: bool
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ..., bulk: _Optional[bool] = ..., skip_invalid: _Optional[bool] = ...) -> None: ...

class EventViolation(_message.Message):
    __slots__ = ("field", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    description: str
    def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class EventAck(_message.Message):
    __slots__ = ("message_id", "status", "violations", "message_index")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    status: AckStatus
    violations: _containers.RepeatedCompositeFieldContainer[EventViolation]
    message_index: int
    def __init__(self, message_id: _Optional[str] = ..., status: _Optional[_Union[AckStatus, str]] = ..., violations: _Optional[_Iterable[_Union[EventViolation, _Mapping]]] = ..., message_index: _Optional[int] = ...) -> None: ...

class IngestEventsResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[EventAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[EventAck, _Mapping]]] = ...) -> None: ...

class StreamIngestEventsRequest(_message.Message):
    __slots__ = ("events", "bulk", "skip_invalid")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    BULK_FIELD_NUMBER: _ClassVar[int]
    SKIP_INVALID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    bulk: bool
    skip_invalid: bool
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ..., bulk: _Optional[bool] = ..., skip_invalid: _Optional[bool] = ...) -> None: ...

class StreamIngestEventsResponse(_message.Message):
    __slots__ = ("acks", "stored_count", "duplicate_count", "rejected_count")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    STORED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[EventAck]
    stored_count: int
    duplicate_count: int
    rejected_count: int
    def __init__(self, acks: _Optional[_Iterable[_Union[EventAck, _Mapping]]] = ..., stored_count: _Optional[int] = ..., duplicate_count: _Optional[int] = ..., rejected_count: _Optional[int] = ...) -> None: ...

class PointRequest(_message.Message):
    __slots__ = ("name", "decision_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    decision_id: str
    def __init__(self, name: _Optional[str] = ..., decision_id: _Optional[str] = ...) -> None: ...

class DecisionContext(_message.Message):
    __slots__ = ("anchor_id", "anchor_type", "cart_item_ids", "channel", "correlation_id", "request_url", "attributes")
    ANCHOR_ID_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    CART_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_URL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    anchor_id: str
    anchor_type: str
    cart_item_ids: _containers.RepeatedScalarFieldContainer[str]
    channel: str
    correlation_id: str
    request_url: str
    attributes: _struct_pb2.Struct
    def __init__(self, anchor_id: _Optional[str] = ..., anchor_type: _Optional[str] = ..., cart_item_ids: _Optional[_Iterable[str]] = ..., channel: _Optional[str] = ..., correlation_id: _Optional[str] = ..., request_url: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetDecisionsRequest(_message.Message):
    __slots__ = ("individual_id", "unified_individual_id", "personalization_points", "context", "profile", "execution_flags")
    INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_POINTS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FLAGS_FIELD_NUMBER: _ClassVar[int]
    individual_id: _common_pb2.Identity
    unified_individual_id: str
    personalization_points: _containers.RepeatedCompositeFieldContainer[PointRequest]
    context: DecisionContext
    profile: _struct_pb2.Struct
    execution_flags: _containers.RepeatedScalarFieldContainer[ExecutionFlag]
    def __init__(self, individual_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., unified_individual_id: _Optional[str] = ..., personalization_points: _Optional[_Iterable[_Union[PointRequest, _Mapping]]] = ..., context: _Optional[_Union[DecisionContext, _Mapping]] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., execution_flags: _Optional[_Iterable[_Union[ExecutionFlag, str]]] = ...) -> None: ...

class Diagnostic(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: DiagnosticCode
    message: str
    def __init__(self, code: _Optional[_Union[DiagnosticCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class RuleTrace(_message.Message):
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

class Explanation(_message.Message):
    __slots__ = ("rules", "unified_individual_id", "stage_ms", "experiment", "recommendations", "bandit", "holdout")
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RULES_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATIONS_FIELD_NUMBER: _ClassVar[int]
    BANDIT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[RuleTrace]
    unified_individual_id: str
    stage_ms: _containers.ScalarMap[str, float]
    experiment: ExperimentAssignment
    recommendations: RecommendationTrace
    bandit: BanditTrace
    holdout: bool
    def __init__(self, rules: _Optional[_Iterable[_Union[RuleTrace, _Mapping]]] = ..., unified_individual_id: _Optional[str] = ..., stage_ms: _Optional[_Mapping[str, float]] = ..., experiment: _Optional[_Union[ExperimentAssignment, _Mapping]] = ..., recommendations: _Optional[_Union[RecommendationTrace, _Mapping]] = ..., bandit: _Optional[_Union[BanditTrace, _Mapping]] = ..., holdout: _Optional[bool] = ...) -> None: ...

class BanditArmTrace(_message.Message):
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

class BanditTrace(_message.Message):
    __slots__ = ("segment", "holdout", "explored", "arms")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    segment: str
    holdout: bool
    explored: bool
    arms: _containers.RepeatedCompositeFieldContainer[BanditArmTrace]
    def __init__(self, segment: _Optional[str] = ..., holdout: _Optional[bool] = ..., explored: _Optional[bool] = ..., arms: _Optional[_Iterable[_Union[BanditArmTrace, _Mapping]]] = ...) -> None: ...

class FilterTrace(_message.Message):
    __slots__ = ("filter", "removed")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    filter: str
    removed: int
    def __init__(self, filter: _Optional[str] = ..., removed: _Optional[int] = ...) -> None: ...

class RecommendationTrace(_message.Message):
    __slots__ = ("recommenders", "filters", "diversity_removed", "model_version")
    RECOMMENDERS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_REMOVED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    recommenders: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.RepeatedCompositeFieldContainer[FilterTrace]
    diversity_removed: int
    model_version: int
    def __init__(self, recommenders: _Optional[_Iterable[str]] = ..., filters: _Optional[_Iterable[_Union[FilterTrace, _Mapping]]] = ..., diversity_removed: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("individual_id", "unified_individual_id", "point_names", "context", "profile", "record_exposure")
    INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_NAMES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    RECORD_EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    individual_id: _common_pb2.Identity
    unified_individual_id: str
    point_names: _containers.RepeatedScalarFieldContainer[str]
    context: DecisionContext
    profile: _struct_pb2.Struct
    record_exposure: bool
    def __init__(self, individual_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., unified_individual_id: _Optional[str] = ..., point_names: _Optional[_Iterable[str]] = ..., context: _Optional[_Union[DecisionContext, _Mapping]] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., record_exposure: _Optional[bool] = ...) -> None: ...

class AssignExperimentsResponse(_message.Message):
    __slots__ = ("assignments", "holdout")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[ExperimentAssignment]
    holdout: bool
    def __init__(self, assignments: _Optional[_Iterable[_Union[ExperimentAssignment, _Mapping]]] = ..., holdout: _Optional[bool] = ...) -> None: ...

class Personalization(_message.Message):
    __slots__ = ("personalization_id", "personalization_point_id", "personalization_point_name", "decision_id", "decision_name", "data", "attributes", "diagnostics", "explanation", "experiment_id", "cohort_id")
    PERSONALIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    COHORT_ID_FIELD_NUMBER: _ClassVar[int]
    personalization_id: str
    personalization_point_id: str
    personalization_point_name: str
    decision_id: str
    decision_name: str
    data: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    attributes: _struct_pb2.Struct
    diagnostics: _containers.RepeatedCompositeFieldContainer[Diagnostic]
    explanation: Explanation
    experiment_id: str
    cohort_id: str
    def __init__(self, personalization_id: _Optional[str] = ..., personalization_point_id: _Optional[str] = ..., personalization_point_name: _Optional[str] = ..., decision_id: _Optional[str] = ..., decision_name: _Optional[str] = ..., data: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., diagnostics: _Optional[_Iterable[_Union[Diagnostic, _Mapping]]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., experiment_id: _Optional[str] = ..., cohort_id: _Optional[str] = ...) -> None: ...

class GetDecisionsResponse(_message.Message):
    __slots__ = ("request_id", "personalizations")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    personalizations: _containers.RepeatedCompositeFieldContainer[Personalization]
    def __init__(self, request_id: _Optional[str] = ..., personalizations: _Optional[_Iterable[_Union[Personalization, _Mapping]]] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("individual_id", "unified_individual_id", "event_limit")
    INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    individual_id: _common_pb2.Identity
    unified_individual_id: str
    event_limit: int
    def __init__(self, individual_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., unified_individual_id: _Optional[str] = ..., event_limit: _Optional[int] = ...) -> None: ...

class GetProfileResponse(_message.Message):
    __slots__ = ("unified_individual_id", "identities", "attributes", "events", "insights", "segments", "profile_objects", "affinities", "consents", "truncated", "omitted_event_count", "omitted_profile_object_count", "omitted_attribute_count")
    class InsightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    INSIGHTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    OMITTED_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    OMITTED_PROFILE_OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    OMITTED_ATTRIBUTE_COUNT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    attributes: _struct_pb2.Struct
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    insights: _containers.ScalarMap[str, float]
    segments: _containers.RepeatedScalarFieldContainer[str]
    profile_objects: _containers.RepeatedCompositeFieldContainer[_common_pb2.ProfileObject]
    affinities: _containers.RepeatedCompositeFieldContainer[Affinity]
    consents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Consent]
    truncated: bool
    omitted_event_count: int
    omitted_profile_object_count: int
    omitted_attribute_count: int
    def __init__(self, unified_individual_id: _Optional[str] = ..., identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ..., insights: _Optional[_Mapping[str, float]] = ..., segments: _Optional[_Iterable[str]] = ..., profile_objects: _Optional[_Iterable[_Union[_common_pb2.ProfileObject, _Mapping]]] = ..., affinities: _Optional[_Iterable[_Union[Affinity, _Mapping]]] = ..., consents: _Optional[_Iterable[_Union[_common_pb2.Consent, _Mapping]]] = ..., truncated: _Optional[bool] = ..., omitted_event_count: _Optional[int] = ..., omitted_profile_object_count: _Optional[int] = ..., omitted_attribute_count: _Optional[int] = ...) -> None: ...

class Affinity(_message.Message):
    __slots__ = ("dimension", "value", "score")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    dimension: str
    value: str
    score: float
    def __init__(self, dimension: _Optional[str] = ..., value: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("individual_id", "unified_individual_id", "replay_count")
    INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAY_COUNT_FIELD_NUMBER: _ClassVar[int]
    individual_id: _common_pb2.Identity
    unified_individual_id: str
    replay_count: int
    def __init__(self, individual_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., unified_individual_id: _Optional[str] = ..., replay_count: _Optional[int] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event", "append_time")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    APPEND_TIME_FIELD_NUMBER: _ClassVar[int]
    event: _common_pb2.Event
    append_time: _timestamp_pb2.Timestamp
    def __init__(self, event: _Optional[_Union[_common_pb2.Event, _Mapping]] = ..., append_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "display_name", "scopes", "create_time", "revoke_time", "browser")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    BROWSER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    display_name: str
    scopes: _containers.RepeatedScalarFieldContainer[Scope]
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    browser: bool
    def __init__(self, key_id: _Optional[str] = ..., display_name: _Optional[str] = ..., scopes: _Optional[_Iterable[_Union[Scope, str]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., browser: _Optional[bool] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("display_name", "scopes", "browser")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    BROWSER_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    scopes: _containers.RepeatedScalarFieldContainer[Scope]
    browser: bool
    def __init__(self, display_name: _Optional[str] = ..., scopes: _Optional[_Iterable[_Union[Scope, str]]] = ..., browser: _Optional[bool] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("api_key", "secret")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    secret: str
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("api_keys", "next_page_token")
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    next_page_token: str
    def __init__(self, api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class SyncRecord(_message.Message):
    __slots__ = ("identities", "attributes", "profile_objects", "interaction_name", "dataset", "record_id")
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    attributes: _struct_pb2.Struct
    profile_objects: _containers.RepeatedCompositeFieldContainer[_common_pb2.ProfileObject]
    interaction_name: str
    dataset: str
    record_id: str
    def __init__(self, identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., profile_objects: _Optional[_Iterable[_Union[_common_pb2.ProfileObject, _Mapping]]] = ..., interaction_name: _Optional[str] = ..., dataset: _Optional[str] = ..., record_id: _Optional[str] = ...) -> None: ...

class SendRecordDataRequest(_message.Message):
    __slots__ = ("records", "increased_batch_size")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    INCREASED_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[SyncRecord]
    increased_batch_size: bool
    def __init__(self, records: _Optional[_Iterable[_Union[SyncRecord, _Mapping]]] = ..., increased_batch_size: _Optional[bool] = ...) -> None: ...

class RecordResult(_message.Message):
    __slots__ = ("index", "unified_individual_id", "created", "message_id", "status")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    index: int
    unified_individual_id: str
    created: bool
    message_id: str
    status: AckStatus
    def __init__(self, index: _Optional[int] = ..., unified_individual_id: _Optional[str] = ..., created: _Optional[bool] = ..., message_id: _Optional[str] = ..., status: _Optional[_Union[AckStatus, str]] = ...) -> None: ...

class SendRecordDataResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RecordResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RecordResult, _Mapping]]] = ...) -> None: ...

class AttributeDeclaration(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: AttributeType
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[AttributeType, str]] = ...) -> None: ...

class ObjectTypeDeclaration(_message.Message):
    __slots__ = ("type", "attributes")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    type: str
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeDeclaration]
    def __init__(self, type: _Optional[str] = ..., attributes: _Optional[_Iterable[_Union[AttributeDeclaration, _Mapping]]] = ...) -> None: ...

class DataModel(_message.Message):
    __slots__ = ("datasets", "attributes", "object_types")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPES_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeDeclaration]
    object_types: _containers.RepeatedCompositeFieldContainer[ObjectTypeDeclaration]
    def __init__(self, datasets: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Iterable[_Union[AttributeDeclaration, _Mapping]]] = ..., object_types: _Optional[_Iterable[_Union[ObjectTypeDeclaration, _Mapping]]] = ...) -> None: ...

class UpsertDataModelRequest(_message.Message):
    __slots__ = ("data_model",)
    DATA_MODEL_FIELD_NUMBER: _ClassVar[int]
    data_model: DataModel
    def __init__(self, data_model: _Optional[_Union[DataModel, _Mapping]] = ...) -> None: ...

class UpsertDataModelResponse(_message.Message):
    __slots__ = ("data_model",)
    DATA_MODEL_FIELD_NUMBER: _ClassVar[int]
    data_model: DataModel
    def __init__(self, data_model: _Optional[_Union[DataModel, _Mapping]] = ...) -> None: ...

class GetDataModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDataModelResponse(_message.Message):
    __slots__ = ("data_model",)
    DATA_MODEL_FIELD_NUMBER: _ClassVar[int]
    data_model: DataModel
    def __init__(self, data_model: _Optional[_Union[DataModel, _Mapping]] = ...) -> None: ...

class BatchJob(_message.Message):
    __slots__ = ("job_id", "segment", "point_names", "state", "processed_count", "row_count", "schedule_name", "error", "create_time", "end_time", "total_count", "context_sources")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    POINT_NAMES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_NAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SOURCES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    segment: str
    point_names: _containers.RepeatedScalarFieldContainer[str]
    state: BatchJobState
    processed_count: int
    row_count: int
    schedule_name: str
    error: str
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    total_count: int
    context_sources: _containers.RepeatedScalarFieldContainer[BatchContextSource]
    def __init__(self, job_id: _Optional[str] = ..., segment: _Optional[str] = ..., point_names: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[BatchJobState, str]] = ..., processed_count: _Optional[int] = ..., row_count: _Optional[int] = ..., schedule_name: _Optional[str] = ..., error: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total_count: _Optional[int] = ..., context_sources: _Optional[_Iterable[_Union[BatchContextSource, str]]] = ...) -> None: ...

class StartBatchJobRequest(_message.Message):
    __slots__ = ("segment", "point_names", "context_sources")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    POINT_NAMES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SOURCES_FIELD_NUMBER: _ClassVar[int]
    segment: str
    point_names: _containers.RepeatedScalarFieldContainer[str]
    context_sources: _containers.RepeatedScalarFieldContainer[BatchContextSource]
    def __init__(self, segment: _Optional[str] = ..., point_names: _Optional[_Iterable[str]] = ..., context_sources: _Optional[_Iterable[_Union[BatchContextSource, str]]] = ...) -> None: ...

class StartBatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: BatchJob
    def __init__(self, job: _Optional[_Union[BatchJob, _Mapping]] = ...) -> None: ...

class GetBatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetBatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: BatchJob
    def __init__(self, job: _Optional[_Union[BatchJob, _Mapping]] = ...) -> None: ...

class ListBatchJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBatchJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[BatchJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[BatchJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class BatchResultRow(_message.Message):
    __slots__ = ("individual_id", "unified_individual_id", "segment_id", "point_id", "point_name", "decision_id", "batch_job_id", "personalization_id", "payload", "update_time")
    INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    individual_id: str
    unified_individual_id: str
    segment_id: str
    point_id: str
    point_name: str
    decision_id: str
    batch_job_id: str
    personalization_id: str
    payload: _struct_pb2.Struct
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, individual_id: _Optional[str] = ..., unified_individual_id: _Optional[str] = ..., segment_id: _Optional[str] = ..., point_id: _Optional[str] = ..., point_name: _Optional[str] = ..., decision_id: _Optional[str] = ..., batch_job_id: _Optional[str] = ..., personalization_id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchBatchJobRequest(_message.Message):
    __slots__ = ("job_id", "include_rows")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ROWS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    include_rows: bool
    def __init__(self, job_id: _Optional[str] = ..., include_rows: _Optional[bool] = ...) -> None: ...

class WatchBatchJobResponse(_message.Message):
    __slots__ = ("job", "row")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    job: BatchJob
    row: BatchResultRow
    def __init__(self, job: _Optional[_Union[BatchJob, _Mapping]] = ..., row: _Optional[_Union[BatchResultRow, _Mapping]] = ...) -> None: ...

class ListBatchResultsRequest(_message.Message):
    __slots__ = ("job_id", "page_size", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page_size: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBatchResultsResponse(_message.Message):
    __slots__ = ("rows", "next_page_token")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[BatchResultRow]
    next_page_token: str
    def __init__(self, rows: _Optional[_Iterable[_Union[BatchResultRow, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class BatchSchedule(_message.Message):
    __slots__ = ("name", "segment", "point_names", "cron", "enabled", "next_run_time", "context_sources")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    POINT_NAMES_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_TIME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SOURCES_FIELD_NUMBER: _ClassVar[int]
    name: str
    segment: str
    point_names: _containers.RepeatedScalarFieldContainer[str]
    cron: str
    enabled: bool
    next_run_time: _timestamp_pb2.Timestamp
    context_sources: _containers.RepeatedScalarFieldContainer[BatchContextSource]
    def __init__(self, name: _Optional[str] = ..., segment: _Optional[str] = ..., point_names: _Optional[_Iterable[str]] = ..., cron: _Optional[str] = ..., enabled: _Optional[bool] = ..., next_run_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context_sources: _Optional[_Iterable[_Union[BatchContextSource, str]]] = ...) -> None: ...

class UpsertBatchScheduleRequest(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: BatchSchedule
    def __init__(self, schedule: _Optional[_Union[BatchSchedule, _Mapping]] = ...) -> None: ...

class UpsertBatchScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: BatchSchedule
    def __init__(self, schedule: _Optional[_Union[BatchSchedule, _Mapping]] = ...) -> None: ...

class ListBatchSchedulesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBatchSchedulesResponse(_message.Message):
    __slots__ = ("schedules", "next_page_token")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[BatchSchedule]
    next_page_token: str
    def __init__(self, schedules: _Optional[_Iterable[_Union[BatchSchedule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WebhookDestination(_message.Message):
    __slots__ = ("url", "secret", "allow_private_network")
    URL_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PRIVATE_NETWORK_FIELD_NUMBER: _ClassVar[int]
    url: str
    secret: str
    allow_private_network: bool
    def __init__(self, url: _Optional[str] = ..., secret: _Optional[str] = ..., allow_private_network: _Optional[bool] = ...) -> None: ...

class FileDestination(_message.Message):
    __slots__ = ("directory", "format")
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    directory: str
    format: FileFormat
    def __init__(self, directory: _Optional[str] = ..., format: _Optional[_Union[FileFormat, str]] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("name", "webhook", "file", "batch_size", "paused")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    webhook: WebhookDestination
    file: FileDestination
    batch_size: int
    paused: bool
    def __init__(self, name: _Optional[str] = ..., webhook: _Optional[_Union[WebhookDestination, _Mapping]] = ..., file: _Optional[_Union[FileDestination, _Mapping]] = ..., batch_size: _Optional[int] = ..., paused: _Optional[bool] = ...) -> None: ...

class UpsertDestinationRequest(_message.Message):
    __slots__ = ("destination",)
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    destination: Destination
    def __init__(self, destination: _Optional[_Union[Destination, _Mapping]] = ...) -> None: ...

class UpsertDestinationResponse(_message.Message):
    __slots__ = ("destination",)
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    destination: Destination
    def __init__(self, destination: _Optional[_Union[Destination, _Mapping]] = ...) -> None: ...

class ListDestinationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDestinationsResponse(_message.Message):
    __slots__ = ("destinations", "next_page_token")
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    next_page_token: str
    def __init__(self, destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SegmentMembershipSource(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: str
    def __init__(self, segment: _Optional[str] = ...) -> None: ...

class AttributesSource(_message.Message):
    __slots__ = ("segment", "attributes", "insights")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    INSIGHTS_FIELD_NUMBER: _ClassVar[int]
    segment: str
    attributes: _containers.RepeatedScalarFieldContainer[str]
    insights: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, segment: _Optional[str] = ..., attributes: _Optional[_Iterable[str]] = ..., insights: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchOutputSource(_message.Message):
    __slots__ = ("schedule_name",)
    SCHEDULE_NAME_FIELD_NUMBER: _ClassVar[int]
    schedule_name: str
    def __init__(self, schedule_name: _Optional[str] = ...) -> None: ...

class Activation(_message.Message):
    __slots__ = ("name", "destination", "segment_membership", "attributes", "batch_output", "primary_key", "status", "consent_purpose", "field_mapping", "paused")
    class FieldMappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    BATCH_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONSENT_PURPOSE_FIELD_NUMBER: _ClassVar[int]
    FIELD_MAPPING_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    destination: str
    segment_membership: SegmentMembershipSource
    attributes: AttributesSource
    batch_output: BatchOutputSource
    primary_key: _containers.RepeatedScalarFieldContainer[str]
    status: DeliveryStatus
    consent_purpose: str
    field_mapping: _containers.ScalarMap[str, str]
    paused: bool
    def __init__(self, name: _Optional[str] = ..., destination: _Optional[str] = ..., segment_membership: _Optional[_Union[SegmentMembershipSource, _Mapping]] = ..., attributes: _Optional[_Union[AttributesSource, _Mapping]] = ..., batch_output: _Optional[_Union[BatchOutputSource, _Mapping]] = ..., primary_key: _Optional[_Iterable[str]] = ..., status: _Optional[_Union[DeliveryStatus, _Mapping]] = ..., consent_purpose: _Optional[str] = ..., field_mapping: _Optional[_Mapping[str, str]] = ..., paused: _Optional[bool] = ...) -> None: ...

class DeliveryStatus(_message.Message):
    __slots__ = ("delivered_rows", "pending_rows", "failed_attempts", "last_delivery_time", "lag_seconds", "last_error")
    DELIVERED_ROWS_FIELD_NUMBER: _ClassVar[int]
    PENDING_ROWS_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_DELIVERY_TIME_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    delivered_rows: int
    pending_rows: int
    failed_attempts: int
    last_delivery_time: _timestamp_pb2.Timestamp
    lag_seconds: float
    last_error: str
    def __init__(self, delivered_rows: _Optional[int] = ..., pending_rows: _Optional[int] = ..., failed_attempts: _Optional[int] = ..., last_delivery_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lag_seconds: _Optional[float] = ..., last_error: _Optional[str] = ...) -> None: ...

class UpsertActivationRequest(_message.Message):
    __slots__ = ("activation",)
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    activation: Activation
    def __init__(self, activation: _Optional[_Union[Activation, _Mapping]] = ...) -> None: ...

class UpsertActivationResponse(_message.Message):
    __slots__ = ("activation",)
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    activation: Activation
    def __init__(self, activation: _Optional[_Union[Activation, _Mapping]] = ...) -> None: ...

class ListActivationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListActivationsResponse(_message.Message):
    __slots__ = ("activations", "next_page_token")
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    activations: _containers.RepeatedCompositeFieldContainer[Activation]
    next_page_token: str
    def __init__(self, activations: _Optional[_Iterable[_Union[Activation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDestinationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDestinationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetDestinationPausedRequest(_message.Message):
    __slots__ = ("name", "paused")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    paused: bool
    def __init__(self, name: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class SetDestinationPausedResponse(_message.Message):
    __slots__ = ("destination",)
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    destination: Destination
    def __init__(self, destination: _Optional[_Union[Destination, _Mapping]] = ...) -> None: ...

class DeleteActivationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteActivationResponse(_message.Message):
    __slots__ = ("dropped_deliveries",)
    DROPPED_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    dropped_deliveries: int
    def __init__(self, dropped_deliveries: _Optional[int] = ...) -> None: ...

class SetActivationPausedRequest(_message.Message):
    __slots__ = ("name", "paused")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    paused: bool
    def __init__(self, name: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class SetActivationPausedResponse(_message.Message):
    __slots__ = ("activation",)
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    activation: Activation
    def __init__(self, activation: _Optional[_Union[Activation, _Mapping]] = ...) -> None: ...

class DeliveryAttempt(_message.Message):
    __slots__ = ("attempt_time", "error")
    ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    attempt_time: _timestamp_pb2.Timestamp
    error: str
    def __init__(self, attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("delivery_id", "state", "row_count", "create_time", "deliver_time", "next_attempt_time", "failed_attempts")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELIVER_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    state: DeliveryState
    row_count: int
    create_time: _timestamp_pb2.Timestamp
    deliver_time: _timestamp_pb2.Timestamp
    next_attempt_time: _timestamp_pb2.Timestamp
    failed_attempts: _containers.RepeatedCompositeFieldContainer[DeliveryAttempt]
    def __init__(self, delivery_id: _Optional[str] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., row_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deliver_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., failed_attempts: _Optional[_Iterable[_Union[DeliveryAttempt, _Mapping]]] = ...) -> None: ...

class ListDeliveriesRequest(_message.Message):
    __slots__ = ("activation", "state", "page_size", "page_token")
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    activation: str
    state: DeliveryState
    page_size: int
    page_token: str
    def __init__(self, activation: _Optional[str] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeliveriesResponse(_message.Message):
    __slots__ = ("deliveries", "next_page_token")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    next_page_token: str
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("decision_credits_used", "decision_credit_limit", "period_start", "request_rate_limit")
    DECISION_CREDITS_USED_FIELD_NUMBER: _ClassVar[int]
    DECISION_CREDIT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    decision_credits_used: int
    decision_credit_limit: int
    period_start: _timestamp_pb2.Timestamp
    request_rate_limit: float
    def __init__(self, decision_credits_used: _Optional[int] = ..., decision_credit_limit: _Optional[int] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_rate_limit: _Optional[float] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("message_id", "event", "reason", "error", "attempts", "receive_time", "fail_time")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    FAIL_TIME_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    event: _common_pb2.Event
    reason: str
    error: str
    attempts: int
    receive_time: _timestamp_pb2.Timestamp
    fail_time: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., event: _Optional[_Union[_common_pb2.Event, _Mapping]] = ..., reason: _Optional[str] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., receive_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fail_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeadLetterFilter(_message.Message):
    __slots__ = ("reason", "fail_time_from", "fail_time_to")
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAIL_TIME_FROM_FIELD_NUMBER: _ClassVar[int]
    FAIL_TIME_TO_FIELD_NUMBER: _ClassVar[int]
    reason: str
    fail_time_from: _timestamp_pb2.Timestamp
    fail_time_to: _timestamp_pb2.Timestamp
    def __init__(self, reason: _Optional[str] = ..., fail_time_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fail_time_to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: DeadLetterFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[DeadLetterFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "next_page_token")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    next_page_token: str
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RetryDeadLettersRequest(_message.Message):
    __slots__ = ("message_ids", "filter", "all_matching")
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ALL_MATCHING_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: DeadLetterFilter
    all_matching: bool
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[DeadLetterFilter, _Mapping]] = ..., all_matching: _Optional[bool] = ...) -> None: ...

class RetryDeadLettersResponse(_message.Message):
    __slots__ = ("retried_count",)
    RETRIED_COUNT_FIELD_NUMBER: _ClassVar[int]
    retried_count: int
    def __init__(self, retried_count: _Optional[int] = ...) -> None: ...

class DiscardDeadLettersRequest(_message.Message):
    __slots__ = ("message_ids", "filter", "all_matching")
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ALL_MATCHING_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: DeadLetterFilter
    all_matching: bool
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[DeadLetterFilter, _Mapping]] = ..., all_matching: _Optional[bool] = ...) -> None: ...

class DiscardDeadLettersResponse(_message.Message):
    __slots__ = ("discarded_count",)
    DISCARDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    discarded_count: int
    def __init__(self, discarded_count: _Optional[int] = ...) -> None: ...

class GetPipelineStatusRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class GetPipelineStatusResponse(_message.Message):
    __slots__ = ("pending_count", "retrying_count", "dead_letter_count", "oldest_pending_seconds", "minutes", "bulk_pending_count", "oldest_live_pending_seconds")
    PENDING_COUNT_FIELD_NUMBER: _ClassVar[int]
    RETRYING_COUNT_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_COUNT_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MINUTES_FIELD_NUMBER: _ClassVar[int]
    BULK_PENDING_COUNT_FIELD_NUMBER: _ClassVar[int]
    OLDEST_LIVE_PENDING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    pending_count: int
    retrying_count: int
    dead_letter_count: int
    oldest_pending_seconds: float
    minutes: _containers.RepeatedCompositeFieldContainer[PipelineMinute]
    bulk_pending_count: int
    oldest_live_pending_seconds: float
    def __init__(self, pending_count: _Optional[int] = ..., retrying_count: _Optional[int] = ..., dead_letter_count: _Optional[int] = ..., oldest_pending_seconds: _Optional[float] = ..., minutes: _Optional[_Iterable[_Union[PipelineMinute, _Mapping]]] = ..., bulk_pending_count: _Optional[int] = ..., oldest_live_pending_seconds: _Optional[float] = ...) -> None: ...

class PipelineMinute(_message.Message):
    __slots__ = ("start_time", "received_count", "processed_count", "backlog_count", "mean_lag_seconds")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    received_count: int
    processed_count: int
    backlog_count: int
    mean_lag_seconds: float
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_count: _Optional[int] = ..., processed_count: _Optional[int] = ..., backlog_count: _Optional[int] = ..., mean_lag_seconds: _Optional[float] = ...) -> None: ...

class GetUsageStatsRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "tenant_id")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    tenant_id: str
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class PointUsage(_message.Message):
    __slots__ = ("point_name", "served_count", "unique_individuals")
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_INDIVIDUALS_FIELD_NUMBER: _ClassVar[int]
    point_name: str
    served_count: int
    unique_individuals: int
    def __init__(self, point_name: _Optional[str] = ..., served_count: _Optional[int] = ..., unique_individuals: _Optional[int] = ...) -> None: ...

class GetUsageStatsResponse(_message.Message):
    __slots__ = ("tenant_id", "start_time", "end_time", "request_count", "served_count", "unique_individuals", "points")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    SERVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_INDIVIDUALS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    request_count: int
    served_count: int
    unique_individuals: int
    points: _containers.RepeatedCompositeFieldContainer[PointUsage]
    def __init__(self, tenant_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_count: _Optional[int] = ..., served_count: _Optional[int] = ..., unique_individuals: _Optional[int] = ..., points: _Optional[_Iterable[_Union[PointUsage, _Mapping]]] = ...) -> None: ...

class ForgetIndividualRequest(_message.Message):
    __slots__ = ("individual_id", "unified_individual_id")
    INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    individual_id: _common_pb2.Identity
    unified_individual_id: str
    def __init__(self, individual_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., unified_individual_id: _Optional[str] = ...) -> None: ...

class ForgetIndividualResponse(_message.Message):
    __slots__ = ("already_forgotten", "erased_rows", "suppressed_identity_count")
    class ErasedRowsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ALREADY_FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    ERASED_ROWS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_IDENTITY_COUNT_FIELD_NUMBER: _ClassVar[int]
    already_forgotten: bool
    erased_rows: _containers.ScalarMap[str, int]
    suppressed_identity_count: int
    def __init__(self, already_forgotten: _Optional[bool] = ..., erased_rows: _Optional[_Mapping[str, int]] = ..., suppressed_identity_count: _Optional[int] = ...) -> None: ...

class ExportIndividualRequest(_message.Message):
    __slots__ = ("individual_id", "unified_individual_id")
    INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    individual_id: _common_pb2.Identity
    unified_individual_id: str
    def __init__(self, individual_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., unified_individual_id: _Optional[str] = ...) -> None: ...

class ExportIndividualResponse(_message.Message):
    __slots__ = ("unified_individual_id", "json")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    json: str
    def __init__(self, unified_individual_id: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class LiftSuppressionRequest(_message.Message):
    __slots__ = ("identities",)
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    def __init__(self, identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ...) -> None: ...

class LiftSuppressionResponse(_message.Message):
    __slots__ = ("lifted_count",)
    LIFTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    lifted_count: int
    def __init__(self, lifted_count: _Optional[int] = ...) -> None: ...

class GetRecommendationsRequest(_message.Message):
    __slots__ = ("individual_id", "unified_individual_id", "recommender", "count", "anchor_item_id", "cart_item_ids", "exclude_item_ids", "exclude_purchased", "item_attributes", "channel", "correlation_id", "execution_flags")
    INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CART_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PURCHASED_FIELD_NUMBER: _ClassVar[int]
    ITEM_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FLAGS_FIELD_NUMBER: _ClassVar[int]
    individual_id: _common_pb2.Identity
    unified_individual_id: str
    recommender: str
    count: int
    anchor_item_id: str
    cart_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_purchased: bool
    item_attributes: _containers.RepeatedScalarFieldContainer[str]
    channel: str
    correlation_id: str
    execution_flags: _containers.RepeatedScalarFieldContainer[ExecutionFlag]
    def __init__(self, individual_id: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., unified_individual_id: _Optional[str] = ..., recommender: _Optional[str] = ..., count: _Optional[int] = ..., anchor_item_id: _Optional[str] = ..., cart_item_ids: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_purchased: _Optional[bool] = ..., item_attributes: _Optional[_Iterable[str]] = ..., channel: _Optional[str] = ..., correlation_id: _Optional[str] = ..., execution_flags: _Optional[_Iterable[_Union[ExecutionFlag, str]]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "source", "attributes")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    source: str
    attributes: _struct_pb2.Struct
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., source: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetRecommendationsResponse(_message.Message):
    __slots__ = ("request_id", "personalization_id", "recommender", "items", "diagnostics", "trace", "unified_individual_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDER_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    personalization_id: str
    recommender: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    diagnostics: _containers.RepeatedCompositeFieldContainer[Diagnostic]
    trace: RecommendationTrace
    unified_individual_id: str
    def __init__(self, request_id: _Optional[str] = ..., personalization_id: _Optional[str] = ..., recommender: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., diagnostics: _Optional[_Iterable[_Union[Diagnostic, _Mapping]]] = ..., trace: _Optional[_Union[RecommendationTrace, _Mapping]] = ..., unified_individual_id: _Optional[str] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant_id", "display_name", "create_time", "decision_credit_limit", "request_rate_limit", "decision_credits_used", "active_key_count")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DECISION_CREDIT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    DECISION_CREDITS_USED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_KEY_COUNT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    display_name: str
    create_time: _timestamp_pb2.Timestamp
    decision_credit_limit: int
    request_rate_limit: float
    decision_credits_used: int
    active_key_count: int
    def __init__(self, tenant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decision_credit_limit: _Optional[int] = ..., request_rate_limit: _Optional[float] = ..., decision_credits_used: _Optional[int] = ..., active_key_count: _Optional[int] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "display_name", "scopes", "key_display_name")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    KEY_DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    display_name: str
    scopes: _containers.RepeatedScalarFieldContainer[Scope]
    key_display_name: str
    def __init__(self, tenant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., scopes: _Optional[_Iterable[_Union[Scope, str]]] = ..., key_display_name: _Optional[str] = ...) -> None: ...

class CreateTenantResponse(_message.Message):
    __slots__ = ("tenant", "created", "api_key", "secret")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    created: bool
    api_key: ApiKey
    secret: str
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ..., created: _Optional[bool] = ..., api_key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "next_page_token")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    next_page_token: str
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetTenantQuotaRequest(_message.Message):
    __slots__ = ("tenant_id", "decision_credit_limit", "request_rate_limit")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_CREDIT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    decision_credit_limit: int
    request_rate_limit: float
    def __init__(self, tenant_id: _Optional[str] = ..., decision_credit_limit: _Optional[int] = ..., request_rate_limit: _Optional[float] = ...) -> None: ...

class SetTenantQuotaResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class BrowserSettings(_message.Message):
    __slots__ = ("allowed_origins",)
    ALLOWED_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    allowed_origins: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allowed_origins: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateBrowserSettingsRequest(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: BrowserSettings
    def __init__(self, settings: _Optional[_Union[BrowserSettings, _Mapping]] = ...) -> None: ...

class UpdateBrowserSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: BrowserSettings
    def __init__(self, settings: _Optional[_Union[BrowserSettings, _Mapping]] = ...) -> None: ...

class GetBrowserSettingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBrowserSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: BrowserSettings
    def __init__(self, settings: _Optional[_Union[BrowserSettings, _Mapping]] = ...) -> None: ...

class ReplayDecisionsRequest(_message.Message):
    __slots__ = ("points", "decisions", "start_time", "end_time", "max_requests", "metric", "attribution_window")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_WINDOW_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_decision_service_pb2.Point]
    decisions: _containers.RepeatedCompositeFieldContainer[_decision_service_pb2.Decision]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    max_requests: int
    metric: _decision_service_pb2.Metric
    attribution_window: _duration_pb2.Duration
    def __init__(self, points: _Optional[_Iterable[_Union[_decision_service_pb2.Point, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[_decision_service_pb2.Decision, _Mapping]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_requests: _Optional[int] = ..., metric: _Optional[_Union[_decision_service_pb2.Metric, str]] = ..., attribution_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DecisionCount(_message.Message):
    __slots__ = ("decision_id", "count")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    count: int
    def __init__(self, decision_id: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class UnestimatedCount(_message.Message):
    __slots__ = ("reason", "count")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    count: int
    def __init__(self, reason: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class PointReplay(_message.Message):
    __slots__ = ("point_name", "replayed_requests", "changed_requests", "changed_share", "gained", "lost", "metric", "randomized_requests", "estimated_requests", "unestimated", "logged_value", "draft_value", "estimated_effect")
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_SHARE_FIELD_NUMBER: _ClassVar[int]
    GAINED_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    RANDOMIZED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UNESTIMATED_FIELD_NUMBER: _ClassVar[int]
    LOGGED_VALUE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_VALUE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_EFFECT_FIELD_NUMBER: _ClassVar[int]
    point_name: str
    replayed_requests: int
    changed_requests: int
    changed_share: float
    gained: _containers.RepeatedCompositeFieldContainer[DecisionCount]
    lost: _containers.RepeatedCompositeFieldContainer[DecisionCount]
    metric: _decision_service_pb2.Metric
    randomized_requests: int
    estimated_requests: int
    unestimated: _containers.RepeatedCompositeFieldContainer[UnestimatedCount]
    logged_value: float
    draft_value: float
    estimated_effect: float
    def __init__(self, point_name: _Optional[str] = ..., replayed_requests: _Optional[int] = ..., changed_requests: _Optional[int] = ..., changed_share: _Optional[float] = ..., gained: _Optional[_Iterable[_Union[DecisionCount, _Mapping]]] = ..., lost: _Optional[_Iterable[_Union[DecisionCount, _Mapping]]] = ..., metric: _Optional[_Union[_decision_service_pb2.Metric, str]] = ..., randomized_requests: _Optional[int] = ..., estimated_requests: _Optional[int] = ..., unestimated: _Optional[_Iterable[_Union[UnestimatedCount, _Mapping]]] = ..., logged_value: _Optional[float] = ..., draft_value: _Optional[float] = ..., estimated_effect: _Optional[float] = ...) -> None: ...

class ReplayDecisionsResponse(_message.Message):
    __slots__ = ("replayed_requests", "truncated", "points")
    REPLAYED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    replayed_requests: int
    truncated: bool
    points: _containers.RepeatedCompositeFieldContainer[PointReplay]
    def __init__(self, replayed_requests: _Optional[int] = ..., truncated: _Optional[bool] = ..., points: _Optional[_Iterable[_Union[PointReplay, _Mapping]]] = ...) -> None: ...
