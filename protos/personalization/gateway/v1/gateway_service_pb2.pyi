import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from personalization.common.v1 import common_pb2 as _common_pb2
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

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_INGEST: _ClassVar[Scope]
    SCOPE_DECIDE: _ClassVar[Scope]
    SCOPE_ADMIN: _ClassVar[Scope]
ACK_STATUS_UNSPECIFIED: AckStatus
ACK_STATUS_STORED: AckStatus
ACK_STATUS_DUPLICATE: AckStatus
EXECUTION_FLAG_UNSPECIFIED: ExecutionFlag
EXECUTION_FLAG_TEST_MODE: ExecutionFlag
EXECUTION_FLAG_CONTEXT_ONLY: ExecutionFlag
EXECUTION_FLAG_DIAGNOSTICS: ExecutionFlag
DIAGNOSTIC_CODE_UNSPECIFIED: DiagnosticCode
DIAGNOSTIC_CODE_NO_DECISION_QUALIFIED: DiagnosticCode
DIAGNOSTIC_CODE_POINT_NOT_CONFIGURED: DiagnosticCode
DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL: DiagnosticCode
DIAGNOSTIC_CODE_FEWER_ITEMS_THAN_REQUESTED: DiagnosticCode
SCOPE_UNSPECIFIED: Scope
SCOPE_INGEST: Scope
SCOPE_DECIDE: Scope
SCOPE_ADMIN: Scope

class IngestEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ...) -> None: ...

class EventAck(_message.Message):
    __slots__ = ("message_id", "status")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    status: AckStatus
    def __init__(self, message_id: _Optional[str] = ..., status: _Optional[_Union[AckStatus, str]] = ...) -> None: ...

class IngestEventsResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[EventAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[EventAck, _Mapping]]] = ...) -> None: ...

class StreamIngestEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ...) -> None: ...

class StreamIngestEventsResponse(_message.Message):
    __slots__ = ("acks", "stored_count", "duplicate_count")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    STORED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[EventAck]
    stored_count: int
    duplicate_count: int
    def __init__(self, acks: _Optional[_Iterable[_Union[EventAck, _Mapping]]] = ..., stored_count: _Optional[int] = ..., duplicate_count: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("rules", "unified_individual_id", "stage_ms")
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
    rules: _containers.RepeatedCompositeFieldContainer[RuleTrace]
    unified_individual_id: str
    stage_ms: _containers.ScalarMap[str, float]
    def __init__(self, rules: _Optional[_Iterable[_Union[RuleTrace, _Mapping]]] = ..., unified_individual_id: _Optional[str] = ..., stage_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Personalization(_message.Message):
    __slots__ = ("personalization_id", "personalization_point_id", "personalization_point_name", "decision_id", "decision_name", "data", "attributes", "diagnostics", "explanation")
    PERSONALIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_POINT_NAME_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    personalization_id: str
    personalization_point_id: str
    personalization_point_name: str
    decision_id: str
    decision_name: str
    data: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    attributes: _struct_pb2.Struct
    diagnostics: _containers.RepeatedCompositeFieldContainer[Diagnostic]
    explanation: Explanation
    def __init__(self, personalization_id: _Optional[str] = ..., personalization_point_id: _Optional[str] = ..., personalization_point_name: _Optional[str] = ..., decision_id: _Optional[str] = ..., decision_name: _Optional[str] = ..., data: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., diagnostics: _Optional[_Iterable[_Union[Diagnostic, _Mapping]]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("unified_individual_id", "identities", "attributes", "events", "insights", "segments")
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
    unified_individual_id: str
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    attributes: _struct_pb2.Struct
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    insights: _containers.ScalarMap[str, float]
    segments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unified_individual_id: _Optional[str] = ..., identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ..., insights: _Optional[_Mapping[str, float]] = ..., segments: _Optional[_Iterable[str]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "display_name", "scopes", "create_time", "revoke_time")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    display_name: str
    scopes: _containers.RepeatedScalarFieldContainer[Scope]
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., display_name: _Optional[str] = ..., scopes: _Optional[_Iterable[_Union[Scope, str]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("display_name", "scopes")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    scopes: _containers.RepeatedScalarFieldContainer[Scope]
    def __init__(self, display_name: _Optional[str] = ..., scopes: _Optional[_Iterable[_Union[Scope, str]]] = ...) -> None: ...

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
