from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
FIELD_FIELD_NUMBER: _ClassVar[int]
field: _descriptor.FieldDescriptor
MESSAGE_FIELD_NUMBER: _ClassVar[int]
message: _descriptor.FieldDescriptor

class FieldLimits(_message.Message):
    __slots__ = ("required", "max_length", "pattern", "max_items", "finite", "min", "max", "non_zero", "defined_only", "max_future_seconds", "struct", "registry")
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    FINITE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    NON_ZERO_FIELD_NUMBER: _ClassVar[int]
    DEFINED_ONLY_FIELD_NUMBER: _ClassVar[int]
    MAX_FUTURE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STRUCT_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    required: bool
    max_length: int
    pattern: str
    max_items: int
    finite: bool
    min: float
    max: float
    non_zero: bool
    defined_only: bool
    max_future_seconds: int
    struct: StructLimits
    registry: str
    def __init__(self, required: _Optional[bool] = ..., max_length: _Optional[int] = ..., pattern: _Optional[str] = ..., max_items: _Optional[int] = ..., finite: _Optional[bool] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., non_zero: _Optional[bool] = ..., defined_only: _Optional[bool] = ..., max_future_seconds: _Optional[int] = ..., struct: _Optional[_Union[StructLimits, _Mapping]] = ..., registry: _Optional[str] = ...) -> None: ...

class StructLimits(_message.Message):
    __slots__ = ("max_depth", "max_key_length", "max_string_length", "max_bytes", "max_value_json_bytes")
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_KEY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_STRING_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_JSON_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_depth: int
    max_key_length: int
    max_string_length: int
    max_bytes: int
    max_value_json_bytes: int
    def __init__(self, max_depth: _Optional[int] = ..., max_key_length: _Optional[int] = ..., max_string_length: _Optional[int] = ..., max_bytes: _Optional[int] = ..., max_value_json_bytes: _Optional[int] = ...) -> None: ...

class MessageLimits(_message.Message):
    __slots__ = ("max_bytes", "max_bytes_env")
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_ENV_FIELD_NUMBER: _ClassVar[int]
    max_bytes: int
    max_bytes_env: str
    def __init__(self, max_bytes: _Optional[int] = ..., max_bytes_env: _Optional[str] = ...) -> None: ...
