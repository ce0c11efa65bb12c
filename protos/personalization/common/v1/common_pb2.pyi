import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from personalization.common.v1 import limits_pb2 as _limits_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_PAGE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_PRODUCT_VIEW: _ClassVar[EventType]
    EVENT_TYPE_ADD_TO_CART: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
    EVENT_TYPE_EMAIL_CLICK: _ClassVar[EventType]
    EVENT_TYPE_LOGIN: _ClassVar[EventType]
    EVENT_TYPE_CUSTOM: _ClassVar[EventType]
    EVENT_TYPE_RETURN: _ClassVar[EventType]

class ConsentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSENT_STATUS_UNSPECIFIED: _ClassVar[ConsentStatus]
    CONSENT_STATUS_GRANTED: _ClassVar[ConsentStatus]
    CONSENT_STATUS_DENIED: _ClassVar[ConsentStatus]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_PAGE_VIEW: EventType
EVENT_TYPE_PRODUCT_VIEW: EventType
EVENT_TYPE_ADD_TO_CART: EventType
EVENT_TYPE_PURCHASE: EventType
EVENT_TYPE_EMAIL_CLICK: EventType
EVENT_TYPE_LOGIN: EventType
EVENT_TYPE_CUSTOM: EventType
EVENT_TYPE_RETURN: EventType
CONSENT_STATUS_UNSPECIFIED: ConsentStatus
CONSENT_STATUS_GRANTED: ConsentStatus
CONSENT_STATUS_DENIED: ConsentStatus

class Identity(_message.Message):
    __slots__ = ("type", "value")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    type: str
    value: str
    def __init__(self, type: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class LineItem(_message.Message):
    __slots__ = ("item_id", "quantity", "unit_price")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    quantity: float
    unit_price: float
    def __init__(self, item_id: _Optional[str] = ..., quantity: _Optional[float] = ..., unit_price: _Optional[float] = ...) -> None: ...

class Consent(_message.Message):
    __slots__ = ("purpose", "status")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    status: ConsentStatus
    def __init__(self, purpose: _Optional[str] = ..., status: _Optional[_Union[ConsentStatus, str]] = ...) -> None: ...

class ProfileObject(_message.Message):
    __slots__ = ("type", "object_id", "attributes")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    type: str
    object_id: str
    attributes: _struct_pb2.Struct
    def __init__(self, type: _Optional[str] = ..., object_id: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("message_id", "type", "name", "event_time", "identities", "attributes", "item_id", "line_items", "properties", "source", "consents", "profile_objects", "order_id")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    type: EventType
    name: str
    event_time: _timestamp_pb2.Timestamp
    identities: _containers.RepeatedCompositeFieldContainer[Identity]
    attributes: _struct_pb2.Struct
    item_id: str
    line_items: _containers.RepeatedCompositeFieldContainer[LineItem]
    properties: _struct_pb2.Struct
    source: str
    consents: _containers.RepeatedCompositeFieldContainer[Consent]
    profile_objects: _containers.RepeatedCompositeFieldContainer[ProfileObject]
    order_id: str
    def __init__(self, message_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., name: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., identities: _Optional[_Iterable[_Union[Identity, _Mapping]]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., item_id: _Optional[str] = ..., line_items: _Optional[_Iterable[_Union[LineItem, _Mapping]]] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., source: _Optional[str] = ..., consents: _Optional[_Iterable[_Union[Consent, _Mapping]]] = ..., profile_objects: _Optional[_Iterable[_Union[ProfileObject, _Mapping]]] = ..., order_id: _Optional[str] = ...) -> None: ...
