import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
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

class Aggregate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATE_UNSPECIFIED: _ClassVar[Aggregate]
    AGGREGATE_COUNT: _ClassVar[Aggregate]
    AGGREGATE_SUM: _ClassVar[Aggregate]
AGGREGATE_UNSPECIFIED: Aggregate
AGGREGATE_COUNT: Aggregate
AGGREGATE_SUM: Aggregate

class IndividualEvent(_message.Message):
    __slots__ = ("unified_individual_id", "event")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    event: _common_pb2.Event
    def __init__(self, unified_individual_id: _Optional[str] = ..., event: _Optional[_Union[_common_pb2.Event, _Mapping]] = ...) -> None: ...

class AppendEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[IndividualEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[IndividualEvent, _Mapping]]] = ...) -> None: ...

class AppendResult(_message.Message):
    __slots__ = ("message_id", "duplicate", "entered_segments", "exited_segments")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ENTERED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    EXITED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    duplicate: bool
    entered_segments: _containers.RepeatedScalarFieldContainer[str]
    exited_segments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., entered_segments: _Optional[_Iterable[str]] = ..., exited_segments: _Optional[_Iterable[str]] = ...) -> None: ...

class AppendEventsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AppendResult]
    def __init__(self, results: _Optional[_Iterable[_Union[AppendResult, _Mapping]]] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("unified_individual_id", "read_mask", "event_limit")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    READ_MASK_FIELD_NUMBER: _ClassVar[int]
    EVENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    read_mask: _field_mask_pb2.FieldMask
    event_limit: int
    def __init__(self, unified_individual_id: _Optional[str] = ..., read_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., event_limit: _Optional[int] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("unified_individual_id", "attributes", "events", "insights", "segments", "update_time")
    class InsightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    INSIGHTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    attributes: _struct_pb2.Struct
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    insights: _containers.ScalarMap[str, float]
    segments: _containers.RepeatedScalarFieldContainer[str]
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, unified_individual_id: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ..., insights: _Optional[_Mapping[str, float]] = ..., segments: _Optional[_Iterable[str]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetProfileResponse(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ...) -> None: ...

class ReassignIndividualRequest(_message.Message):
    __slots__ = ("from_individual_ids", "to_individual_id")
    FROM_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    TO_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    from_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    to_individual_id: str
    def __init__(self, from_individual_ids: _Optional[_Iterable[str]] = ..., to_individual_id: _Optional[str] = ...) -> None: ...

class ReassignIndividualResponse(_message.Message):
    __slots__ = ("moved_event_count",)
    MOVED_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    moved_event_count: int
    def __init__(self, moved_event_count: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "name", "attributes")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    name: str
    attributes: _struct_pb2.Struct
    def __init__(self, item_id: _Optional[str] = ..., name: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted_count",)
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    upserted_count: int
    def __init__(self, upserted_count: _Optional[int] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class Insight(_message.Message):
    __slots__ = ("name", "description", "aggregate", "field", "event_type", "window")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    aggregate: Aggregate
    field: str
    event_type: _common_pb2.EventType
    window: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., aggregate: _Optional[_Union[Aggregate, str]] = ..., field: _Optional[str] = ..., event_type: _Optional[_Union[_common_pb2.EventType, str]] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class UpsertInsightRequest(_message.Message):
    __slots__ = ("insight",)
    INSIGHT_FIELD_NUMBER: _ClassVar[int]
    insight: Insight
    def __init__(self, insight: _Optional[_Union[Insight, _Mapping]] = ...) -> None: ...

class UpsertInsightResponse(_message.Message):
    __slots__ = ("insight",)
    INSIGHT_FIELD_NUMBER: _ClassVar[int]
    insight: Insight
    def __init__(self, insight: _Optional[_Union[Insight, _Mapping]] = ...) -> None: ...

class ListInsightsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInsightsResponse(_message.Message):
    __slots__ = ("insights", "next_page_token")
    INSIGHTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    insights: _containers.RepeatedCompositeFieldContainer[Insight]
    next_page_token: str
    def __init__(self, insights: _Optional[_Iterable[_Union[Insight, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("name", "description", "rule", "member_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    rule: str
    member_count: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., rule: _Optional[str] = ..., member_count: _Optional[int] = ...) -> None: ...

class UpsertSegmentRequest(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ...) -> None: ...

class UpsertSegmentResponse(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ...) -> None: ...

class ListSegmentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSegmentsResponse(_message.Message):
    __slots__ = ("segments", "next_page_token")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    next_page_token: str
    def __init__(self, segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListSegmentMembersRequest(_message.Message):
    __slots__ = ("segment", "page_size", "page_token")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    segment: str
    page_size: int
    page_token: str
    def __init__(self, segment: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SegmentMember(_message.Message):
    __slots__ = ("unified_individual_id", "enter_time")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ENTER_TIME_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    enter_time: _timestamp_pb2.Timestamp
    def __init__(self, unified_individual_id: _Optional[str] = ..., enter_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSegmentMembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[SegmentMember]
    next_page_token: str
    def __init__(self, members: _Optional[_Iterable[_Union[SegmentMember, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
