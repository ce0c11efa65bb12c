import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from personalization.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Interaction(_message.Message):
    __slots__ = ("message_id", "unified_individual_id", "item_id", "type", "quantity", "revenue", "event_time")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    unified_individual_id: str
    item_id: str
    type: _common_pb2.EventType
    quantity: float
    revenue: float
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., unified_individual_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.EventType, str]] = ..., quantity: _Optional[float] = ..., revenue: _Optional[float] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("interactions",)
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    def __init__(self, interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("recorded_count",)
    RECORDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    recorded_count: int
    def __init__(self, recorded_count: _Optional[int] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("unified_individual_id", "strategy", "count", "exclude_item_ids", "exclude_purchased")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PURCHASED_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    strategy: str
    count: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_purchased: bool
    def __init__(self, unified_individual_id: _Optional[str] = ..., strategy: _Optional[str] = ..., count: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_purchased: _Optional[bool] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "source")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    source: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ...) -> None: ...
