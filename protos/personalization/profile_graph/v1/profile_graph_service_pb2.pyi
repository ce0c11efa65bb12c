import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from personalization.common.v1 import limits_pb2 as _limits_pb2
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
    AGGREGATE_COUNT_DISTINCT: _ClassVar[Aggregate]
    AGGREGATE_MAX: _ClassVar[Aggregate]
    AGGREGATE_LAST: _ClassVar[Aggregate]

class InsightSubject(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSIGHT_SUBJECT_UNSPECIFIED: _ClassVar[InsightSubject]
    INSIGHT_SUBJECT_INDIVIDUAL: _ClassVar[InsightSubject]
    INSIGHT_SUBJECT_ITEM: _ClassVar[InsightSubject]

class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATOR_UNSPECIFIED: _ClassVar[Operator]
    OPERATOR_EQUALS: _ClassVar[Operator]
    OPERATOR_NOT_EQUALS: _ClassVar[Operator]
    OPERATOR_GREATER_THAN: _ClassVar[Operator]
    OPERATOR_GREATER_OR_EQUAL: _ClassVar[Operator]
    OPERATOR_LESS_THAN: _ClassVar[Operator]
    OPERATOR_LESS_OR_EQUAL: _ClassVar[Operator]
    OPERATOR_CONTAINS: _ClassVar[Operator]

class ReconciliationPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECONCILIATION_POLICY_UNSPECIFIED: _ClassVar[ReconciliationPolicy]
    RECONCILIATION_POLICY_LAST_UPDATED: _ClassVar[ReconciliationPolicy]
    RECONCILIATION_POLICY_MOST_FREQUENT: _ClassVar[ReconciliationPolicy]
    RECONCILIATION_POLICY_SOURCE_PRIORITY: _ClassVar[ReconciliationPolicy]
AGGREGATE_UNSPECIFIED: Aggregate
AGGREGATE_COUNT: Aggregate
AGGREGATE_SUM: Aggregate
AGGREGATE_COUNT_DISTINCT: Aggregate
AGGREGATE_MAX: Aggregate
AGGREGATE_LAST: Aggregate
INSIGHT_SUBJECT_UNSPECIFIED: InsightSubject
INSIGHT_SUBJECT_INDIVIDUAL: InsightSubject
INSIGHT_SUBJECT_ITEM: InsightSubject
OPERATOR_UNSPECIFIED: Operator
OPERATOR_EQUALS: Operator
OPERATOR_NOT_EQUALS: Operator
OPERATOR_GREATER_THAN: Operator
OPERATOR_GREATER_OR_EQUAL: Operator
OPERATOR_LESS_THAN: Operator
OPERATOR_LESS_OR_EQUAL: Operator
OPERATOR_CONTAINS: Operator
RECONCILIATION_POLICY_UNSPECIFIED: ReconciliationPolicy
RECONCILIATION_POLICY_LAST_UPDATED: ReconciliationPolicy
RECONCILIATION_POLICY_MOST_FREQUENT: ReconciliationPolicy
RECONCILIATION_POLICY_SOURCE_PRIORITY: ReconciliationPolicy

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
    __slots__ = ("unified_individual_id", "read_mask", "event_limit", "affinity_limit")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    READ_MASK_FIELD_NUMBER: _ClassVar[int]
    EVENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    read_mask: _field_mask_pb2.FieldMask
    event_limit: int
    affinity_limit: int
    def __init__(self, unified_individual_id: _Optional[str] = ..., read_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., event_limit: _Optional[int] = ..., affinity_limit: _Optional[int] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("unified_individual_id", "attributes", "events", "insights", "segments", "update_time", "profile_objects", "grouped_insights", "affinities", "consents", "truncated", "omitted_event_count", "omitted_profile_object_count", "omitted_attribute_count")
    class InsightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class GroupedInsightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: InsightGroups
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[InsightGroups, _Mapping]] = ...) -> None: ...
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    INSIGHTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    GROUPED_INSIGHTS_FIELD_NUMBER: _ClassVar[int]
    AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    OMITTED_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    OMITTED_PROFILE_OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    OMITTED_ATTRIBUTE_COUNT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    attributes: _struct_pb2.Struct
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    insights: _containers.ScalarMap[str, float]
    segments: _containers.RepeatedScalarFieldContainer[str]
    update_time: _timestamp_pb2.Timestamp
    profile_objects: _containers.RepeatedCompositeFieldContainer[StoredProfileObject]
    grouped_insights: _containers.MessageMap[str, InsightGroups]
    affinities: _containers.RepeatedCompositeFieldContainer[Affinity]
    consents: _containers.RepeatedCompositeFieldContainer[ConsentState]
    truncated: bool
    omitted_event_count: int
    omitted_profile_object_count: int
    omitted_attribute_count: int
    def __init__(self, unified_individual_id: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ..., insights: _Optional[_Mapping[str, float]] = ..., segments: _Optional[_Iterable[str]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., profile_objects: _Optional[_Iterable[_Union[StoredProfileObject, _Mapping]]] = ..., grouped_insights: _Optional[_Mapping[str, InsightGroups]] = ..., affinities: _Optional[_Iterable[_Union[Affinity, _Mapping]]] = ..., consents: _Optional[_Iterable[_Union[ConsentState, _Mapping]]] = ..., truncated: _Optional[bool] = ..., omitted_event_count: _Optional[int] = ..., omitted_profile_object_count: _Optional[int] = ..., omitted_attribute_count: _Optional[int] = ...) -> None: ...

class StoredProfileObject(_message.Message):
    __slots__ = ("object", "update_time", "source")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    object: _common_pb2.ProfileObject
    update_time: _timestamp_pb2.Timestamp
    source: str
    def __init__(self, object: _Optional[_Union[_common_pb2.ProfileObject, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class InsightGroups(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Affinity(_message.Message):
    __slots__ = ("dimension", "value", "score")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    dimension: str
    value: str
    score: float
    def __init__(self, dimension: _Optional[str] = ..., value: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ConsentState(_message.Message):
    __slots__ = ("purpose", "status", "update_time", "source")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    status: _common_pb2.ConsentStatus
    update_time: _timestamp_pb2.Timestamp
    source: str
    def __init__(self, purpose: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.ConsentStatus, str]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class GetProfileResponse(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ...) -> None: ...

class GetProfilesRequest(_message.Message):
    __slots__ = ("unified_individual_ids", "read_mask", "event_limit", "affinity_limit")
    UNIFIED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    READ_MASK_FIELD_NUMBER: _ClassVar[int]
    EVENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    read_mask: _field_mask_pb2.FieldMask
    event_limit: int
    affinity_limit: int
    def __init__(self, unified_individual_ids: _Optional[_Iterable[str]] = ..., read_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., event_limit: _Optional[int] = ..., affinity_limit: _Optional[int] = ...) -> None: ...

class GetProfilesResponse(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[Profile]
    def __init__(self, profiles: _Optional[_Iterable[_Union[Profile, _Mapping]]] = ...) -> None: ...

class ReassignIndividualRequest(_message.Message):
    __slots__ = ("from_individual_ids", "to_individual_id", "only_events_with_identities")
    FROM_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    TO_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ONLY_EVENTS_WITH_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    from_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    to_individual_id: str
    only_events_with_identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    def __init__(self, from_individual_ids: _Optional[_Iterable[str]] = ..., to_individual_id: _Optional[str] = ..., only_events_with_identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ...) -> None: ...

class ReassignIndividualResponse(_message.Message):
    __slots__ = ("moved_event_count",)
    MOVED_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    moved_event_count: int
    def __init__(self, moved_event_count: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "name", "attributes", "insights")
    class InsightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    INSIGHTS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    name: str
    attributes: _struct_pb2.Struct
    insights: _containers.ScalarMap[str, float]
    def __init__(self, item_id: _Optional[str] = ..., name: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., insights: _Optional[_Mapping[str, float]] = ...) -> None: ...

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

class Condition(_message.Message):
    __slots__ = ("field", "operator", "value")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    operator: Operator
    value: _struct_pb2.Value
    def __init__(self, field: _Optional[str] = ..., operator: _Optional[_Union[Operator, str]] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class Insight(_message.Message):
    __slots__ = ("name", "description", "aggregate", "field", "event_type", "window", "conditions", "dimension", "subject")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    aggregate: Aggregate
    field: str
    event_type: _common_pb2.EventType
    window: _duration_pb2.Duration
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    dimension: str
    subject: InsightSubject
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., aggregate: _Optional[_Union[Aggregate, str]] = ..., field: _Optional[str] = ..., event_type: _Optional[_Union[_common_pb2.EventType, str]] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., dimension: _Optional[str] = ..., subject: _Optional[_Union[InsightSubject, str]] = ...) -> None: ...

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
    __slots__ = ("segment", "page_size", "page_token", "ids_only")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    segment: str
    page_size: int
    page_token: str
    ids_only: bool
    def __init__(self, segment: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., ids_only: _Optional[bool] = ...) -> None: ...

class SegmentMember(_message.Message):
    __slots__ = ("unified_individual_id", "enter_time")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ENTER_TIME_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    enter_time: _timestamp_pb2.Timestamp
    def __init__(self, unified_individual_id: _Optional[str] = ..., enter_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSegmentMembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token", "unified_individual_ids")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[SegmentMember]
    next_page_token: str
    unified_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, members: _Optional[_Iterable[_Union[SegmentMember, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., unified_individual_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListMembershipChangesRequest(_message.Message):
    __slots__ = ("segment", "page_size", "page_token")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    segment: str
    page_size: int
    page_token: str
    def __init__(self, segment: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class MembershipChange(_message.Message):
    __slots__ = ("segment", "unified_individual_id", "entered", "change_time")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ENTERED_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    segment: str
    unified_individual_id: str
    entered: bool
    change_time: _timestamp_pb2.Timestamp
    def __init__(self, segment: _Optional[str] = ..., unified_individual_id: _Optional[str] = ..., entered: _Optional[bool] = ..., change_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMembershipChangesResponse(_message.Message):
    __slots__ = ("changes", "next_page_token")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[MembershipChange]
    next_page_token: str
    def __init__(self, changes: _Optional[_Iterable[_Union[MembershipChange, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("filters", "page_size", "page_token")
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[Condition]
    page_size: int
    page_token: str
    def __init__(self, filters: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RecomputeAllRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecomputeAllResponse(_message.Message):
    __slots__ = ("individual_count", "item_count")
    INDIVIDUAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    individual_count: int
    item_count: int
    def __init__(self, individual_count: _Optional[int] = ..., item_count: _Optional[int] = ...) -> None: ...

class GetAffinitiesRequest(_message.Message):
    __slots__ = ("unified_individual_id", "limit", "dimension")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    limit: int
    dimension: str
    def __init__(self, unified_individual_id: _Optional[str] = ..., limit: _Optional[int] = ..., dimension: _Optional[str] = ...) -> None: ...

class GetAffinitiesResponse(_message.Message):
    __slots__ = ("affinities",)
    AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    affinities: _containers.RepeatedCompositeFieldContainer[Affinity]
    def __init__(self, affinities: _Optional[_Iterable[_Union[Affinity, _Mapping]]] = ...) -> None: ...

class EventWeight(_message.Message):
    __slots__ = ("event_type", "weight")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    event_type: _common_pb2.EventType
    weight: float
    def __init__(self, event_type: _Optional[_Union[_common_pb2.EventType, str]] = ..., weight: _Optional[float] = ...) -> None: ...

class AffinityConfig(_message.Message):
    __slots__ = ("dimensions", "weights", "half_life")
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    HALF_LIFE_FIELD_NUMBER: _ClassVar[int]
    dimensions: _containers.RepeatedScalarFieldContainer[str]
    weights: _containers.RepeatedCompositeFieldContainer[EventWeight]
    half_life: _duration_pb2.Duration
    def __init__(self, dimensions: _Optional[_Iterable[str]] = ..., weights: _Optional[_Iterable[_Union[EventWeight, _Mapping]]] = ..., half_life: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SetAffinityConfigRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: AffinityConfig
    def __init__(self, config: _Optional[_Union[AffinityConfig, _Mapping]] = ...) -> None: ...

class SetAffinityConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: AffinityConfig
    def __init__(self, config: _Optional[_Union[AffinityConfig, _Mapping]] = ...) -> None: ...

class GetAffinityConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAffinityConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: AffinityConfig
    def __init__(self, config: _Optional[_Union[AffinityConfig, _Mapping]] = ...) -> None: ...

class SetConsentsRequest(_message.Message):
    __slots__ = ("unified_individual_id", "consents")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    consents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Consent]
    def __init__(self, unified_individual_id: _Optional[str] = ..., consents: _Optional[_Iterable[_Union[_common_pb2.Consent, _Mapping]]] = ...) -> None: ...

class SetConsentsResponse(_message.Message):
    __slots__ = ("consents",)
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    consents: _containers.RepeatedCompositeFieldContainer[ConsentState]
    def __init__(self, consents: _Optional[_Iterable[_Union[ConsentState, _Mapping]]] = ...) -> None: ...

class AttributeReconciliation(_message.Message):
    __slots__ = ("policy", "source_priority", "include_empty_values")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMPTY_VALUES_FIELD_NUMBER: _ClassVar[int]
    policy: ReconciliationPolicy
    source_priority: _containers.RepeatedScalarFieldContainer[str]
    include_empty_values: bool
    def __init__(self, policy: _Optional[_Union[ReconciliationPolicy, str]] = ..., source_priority: _Optional[_Iterable[str]] = ..., include_empty_values: _Optional[bool] = ...) -> None: ...

class ReconciliationRule(_message.Message):
    __slots__ = ("object", "default_reconciliation", "attribute_overrides")
    class AttributeOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AttributeReconciliation
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AttributeReconciliation, _Mapping]] = ...) -> None: ...
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RECONCILIATION_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    object: str
    default_reconciliation: AttributeReconciliation
    attribute_overrides: _containers.MessageMap[str, AttributeReconciliation]
    def __init__(self, object: _Optional[str] = ..., default_reconciliation: _Optional[_Union[AttributeReconciliation, _Mapping]] = ..., attribute_overrides: _Optional[_Mapping[str, AttributeReconciliation]] = ...) -> None: ...

class SetReconciliationRuleRequest(_message.Message):
    __slots__ = ("rule",)
    RULE_FIELD_NUMBER: _ClassVar[int]
    rule: ReconciliationRule
    def __init__(self, rule: _Optional[_Union[ReconciliationRule, _Mapping]] = ...) -> None: ...

class SetReconciliationRuleResponse(_message.Message):
    __slots__ = ("rule",)
    RULE_FIELD_NUMBER: _ClassVar[int]
    rule: ReconciliationRule
    def __init__(self, rule: _Optional[_Union[ReconciliationRule, _Mapping]] = ...) -> None: ...

class GetReconciliationRuleRequest(_message.Message):
    __slots__ = ("object",)
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    object: str
    def __init__(self, object: _Optional[str] = ...) -> None: ...

class GetReconciliationRuleResponse(_message.Message):
    __slots__ = ("rule",)
    RULE_FIELD_NUMBER: _ClassVar[int]
    rule: ReconciliationRule
    def __init__(self, rule: _Optional[_Union[ReconciliationRule, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("unified_individual_id", "replay_count")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAY_COUNT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    replay_count: int
    def __init__(self, unified_individual_id: _Optional[str] = ..., replay_count: _Optional[int] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event", "append_time")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    APPEND_TIME_FIELD_NUMBER: _ClassVar[int]
    event: _common_pb2.Event
    append_time: _timestamp_pb2.Timestamp
    def __init__(self, event: _Optional[_Union[_common_pb2.Event, _Mapping]] = ..., append_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchProfileChangesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchProfileChangesResponse(_message.Message):
    __slots__ = ("live", "unified_individual_ids", "all_changed")
    LIVE_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_CHANGED_FIELD_NUMBER: _ClassVar[int]
    live: bool
    unified_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    all_changed: bool
    def __init__(self, live: _Optional[bool] = ..., unified_individual_ids: _Optional[_Iterable[str]] = ..., all_changed: _Optional[bool] = ...) -> None: ...

class EraseIndividualRequest(_message.Message):
    __slots__ = ("unified_individual_ids",)
    UNIFIED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    unified_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unified_individual_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class EraseIndividualResponse(_message.Message):
    __slots__ = ("erased_rows", "message_ids")
    ERASED_ROWS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    erased_rows: int
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, erased_rows: _Optional[int] = ..., message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

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

class ProfileAsOf(_message.Message):
    __slots__ = ("unified_individual_id", "as_of")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, unified_individual_id: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetProfilesAsOfRequest(_message.Message):
    __slots__ = ("entries", "event_limit")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    EVENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ProfileAsOf]
    event_limit: int
    def __init__(self, entries: _Optional[_Iterable[_Union[ProfileAsOf, _Mapping]]] = ..., event_limit: _Optional[int] = ...) -> None: ...

class GetProfilesAsOfResponse(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[Profile]
    def __init__(self, profiles: _Optional[_Iterable[_Union[Profile, _Mapping]]] = ...) -> None: ...
