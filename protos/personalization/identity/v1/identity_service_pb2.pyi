import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from personalization.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Subject(_message.Message):
    __slots__ = ("identities",)
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    def __init__(self, identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ...) -> None: ...

class ResolveIdentitiesRequest(_message.Message):
    __slots__ = ("subjects", "lookup_only")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_ONLY_FIELD_NUMBER: _ClassVar[int]
    subjects: _containers.RepeatedCompositeFieldContainer[Subject]
    lookup_only: bool
    def __init__(self, subjects: _Optional[_Iterable[_Union[Subject, _Mapping]]] = ..., lookup_only: _Optional[bool] = ...) -> None: ...

class Resolution(_message.Message):
    __slots__ = ("unified_individual_id", "created", "merged_individual_ids")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MERGED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    created: bool
    merged_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unified_individual_id: _Optional[str] = ..., created: _Optional[bool] = ..., merged_individual_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ResolveIdentitiesResponse(_message.Message):
    __slots__ = ("resolutions",)
    RESOLUTIONS_FIELD_NUMBER: _ClassVar[int]
    resolutions: _containers.RepeatedCompositeFieldContainer[Resolution]
    def __init__(self, resolutions: _Optional[_Iterable[_Union[Resolution, _Mapping]]] = ...) -> None: ...

class GetIndividualRequest(_message.Message):
    __slots__ = ("unified_individual_id",)
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    def __init__(self, unified_individual_id: _Optional[str] = ...) -> None: ...

class Individual(_message.Message):
    __slots__ = ("unified_individual_id", "identities", "alias_ids", "create_time")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ALIAS_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    alias_ids: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, unified_individual_id: _Optional[str] = ..., identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ..., alias_ids: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetIndividualResponse(_message.Message):
    __slots__ = ("individual",)
    INDIVIDUAL_FIELD_NUMBER: _ClassVar[int]
    individual: Individual
    def __init__(self, individual: _Optional[_Union[Individual, _Mapping]] = ...) -> None: ...
