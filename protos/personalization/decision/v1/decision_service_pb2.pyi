import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
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
POINT_TYPE_UNSPECIFIED: PointType
POINT_TYPE_MANUAL_CONTENT: PointType
POINT_TYPE_RECOMMENDATIONS: PointType
FIELD_TYPE_UNSPECIFIED: FieldType
FIELD_TYPE_STRING: FieldType
FIELD_TYPE_NUMBER: FieldType
FIELD_TYPE_BOOL: FieldType
FIELD_TYPE_STRING_LIST: FieldType

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
    __slots__ = ("point_id", "name", "description", "type", "template")
    POINT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    point_id: str
    name: str
    description: str
    type: PointType
    template: ResponseTemplate
    def __init__(self, point_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., type: _Optional[_Union[PointType, str]] = ..., template: _Optional[_Union[ResponseTemplate, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("decision_id", "point_name", "name", "priority", "rule", "fallback", "content", "recommendations")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATIONS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    point_name: str
    name: str
    priority: int
    rule: str
    fallback: bool
    content: _struct_pb2.Struct
    recommendations: RecommendationSpec
    def __init__(self, decision_id: _Optional[str] = ..., point_name: _Optional[str] = ..., name: _Optional[str] = ..., priority: _Optional[int] = ..., rule: _Optional[str] = ..., fallback: _Optional[bool] = ..., content: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., recommendations: _Optional[_Union[RecommendationSpec, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("point_name", "page_size", "page_token")
    POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    point_name: str
    page_size: int
    page_token: str
    def __init__(self, point_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("points", "profile", "context")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[PointSelection]
    profile: _struct_pb2.Struct
    context: _struct_pb2.Struct
    def __init__(self, points: _Optional[_Iterable[_Union[PointSelection, _Mapping]]] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("point", "decision", "evaluations")
    POINT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    point: Point
    decision: Decision
    evaluations: _containers.RepeatedCompositeFieldContainer[RuleEvaluation]
    def __init__(self, point: _Optional[_Union[Point, _Mapping]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., evaluations: _Optional[_Iterable[_Union[RuleEvaluation, _Mapping]]] = ...) -> None: ...

class QualifyResponse(_message.Message):
    __slots__ = ("qualifications",)
    QUALIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    qualifications: _containers.RepeatedCompositeFieldContainer[Qualification]
    def __init__(self, qualifications: _Optional[_Iterable[_Union[Qualification, _Mapping]]] = ...) -> None: ...

class DecisionLogEntry(_message.Message):
    __slots__ = ("personalization_id", "request_id", "point_id", "point_name", "decision_id", "unified_individual_id", "channel", "correlation_id", "anchor_id", "served", "stage_ms", "log_time")
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
    def __init__(self, personalization_id: _Optional[str] = ..., request_id: _Optional[str] = ..., point_id: _Optional[str] = ..., point_name: _Optional[str] = ..., decision_id: _Optional[str] = ..., unified_individual_id: _Optional[str] = ..., channel: _Optional[str] = ..., correlation_id: _Optional[str] = ..., anchor_id: _Optional[str] = ..., served: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., stage_ms: _Optional[_Mapping[str, float]] = ..., log_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LogDecisionsRequest(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[DecisionLogEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[DecisionLogEntry, _Mapping]]] = ...) -> None: ...

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
