"""JSON request bodies to protobuf messages, fast: the HTTP port's decoder.

protobuf's json_format walks descriptors in Python and takes about a millisecond per ingested event; here the JSON
is read by the C json module and handed to the message constructor (upb, in C), which takes nested dicts, lists,
enum names and Struct content as they are. Only well-known types other than Timestamp, Duration and Struct, bytes,
nulls, JSON number strings for floats and anything unexpected leave the fast path: json_format.Parse then decides,
with its own answer and error, so a body means exactly what protojson says it means.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from google.protobuf import descriptor, duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message

FD = descriptor.FieldDescriptor
INTEGERS = frozenset({FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_SINT32, FD.TYPE_SINT64,
                      FD.TYPE_FIXED32, FD.TYPE_FIXED64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64})
FLOATS = frozenset({FD.TYPE_FLOAT, FD.TYPE_DOUBLE})


class _Slow(Exception):
    """Input the fast path leaves to json_format."""


class _Field:
    """What the fast path needs of a field, read once from its descriptor (upb builds descriptor objects anew on
    each attribute access, and options on each GetOptions call)."""

    __slots__ = ("name", "oneof", "repeated", "map_value", "type", "message", "message_name", "enum_names")

    def __init__(self, field: descriptor.FieldDescriptor):
        self.name = field.name
        self.oneof = field.containing_oneof.name if field.containing_oneof is not None else None
        kind = field.message_type
        is_map = kind is not None and kind.GetOptions().map_entry
        self.repeated = field.is_repeated and not is_map
        self.map_value: _Field | None = None
        if is_map:
            if kind.fields_by_name["key"].type != FD.TYPE_STRING:
                raise _Slow  # integer or bool keys: left to json_format
            self.map_value = _Field(kind.fields_by_name["value"])
            kind = None
        self.type = field.type
        self.message = kind
        self.message_name = kind.full_name if kind is not None else ""
        self.enum_names = frozenset(field.enum_type.values_by_name) if field.enum_type is not None else frozenset()


_FIELDS: dict[str, dict[str, _Field | None]] = {}


def _fields(message: descriptor.Descriptor) -> dict[str, _Field | None]:
    found = _FIELDS.get(message.full_name)
    if found is None:
        found = {}
        for field in message.fields:
            try:
                spec: _Field | None = _Field(field)
            except _Slow:
                spec = None
            found[field.name] = found[field.json_name] = spec
        _FIELDS[message.full_name] = found
    return found


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise _Slow  # a repeated key: json_format refuses it
    return data


def _kwargs(message: descriptor.Descriptor, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _Slow
    fields = _fields(message)
    out: dict[str, Any] = {}
    oneofs: set[str] = set()
    for key, value in data.items():
        field = fields.get(key)
        if field is None or value is None or field.name in out:
            raise _Slow  # unknown, null, named twice (by name and json_name), or a kind left to json_format
        if field.oneof is not None:
            if field.oneof in oneofs:
                raise _Slow
            oneofs.add(field.oneof)
        if field.map_value is not None:
            if not isinstance(value, dict):
                raise _Slow
            out[field.name] = {k: _single(field.map_value, v) for k, v in value.items()}
        elif field.repeated:
            if not isinstance(value, list):
                raise _Slow
            out[field.name] = [_single(field, v) for v in value]
        else:
            out[field.name] = _single(field, value)
    return out


def _single(field: _Field, value: Any) -> Any:
    if value is None:
        raise _Slow
    if field.message is not None:
        name = field.message_name
        if name == "google.protobuf.Timestamp" or name == "google.protobuf.Duration":
            if not isinstance(value, str):
                raise _Slow
            if name == "google.protobuf.Timestamp":
                return _timestamp(value)
            parsed = duration_pb2.Duration()
            parsed.FromJsonString(value)  # ValueError: json_format answers with its own message
            return parsed
        if name == "google.protobuf.Struct":
            if not isinstance(value, dict):
                raise _Slow
            return value
        if name.startswith("google.protobuf."):
            raise _Slow
        return _kwargs(field.message, value)
    kind = field.type
    if kind == FD.TYPE_STRING:
        if isinstance(value, str):
            return value
    elif kind == FD.TYPE_BOOL:
        if isinstance(value, bool):
            return value
    elif kind in INTEGERS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit() and value.isascii():
            return int(value)
    elif kind in FLOATS:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == FD.TYPE_ENUM:
        if isinstance(value, str) and value in field.enum_names:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise _Slow


_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _timestamp(value: str) -> timestamp_pb2.Timestamp:
    """An RFC 3339 time as Timestamp.FromJsonString reads it (its strptime takes most of an event's decoding)."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        parsed = timestamp_pb2.Timestamp()
        parsed.FromJsonString(value)
        return parsed
    when = datetime.fromisoformat(match.group(1) + ("+00:00" if match.group(3) == "Z" else match.group(3)))
    seconds = (when - _EPOCH) // timedelta(seconds=1)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=int((match.group(2) or "").ljust(9, "0")))


def parse(body: bytes, message_class: type[Message]) -> Message:
    """The message a protojson body says; raises json_format.ParseError (or ValueError) as json_format.Parse does."""
    try:
        data = json.loads(body.decode("utf-8") or "{}", object_pairs_hook=_object)
        return message_class(**_kwargs(message_class.DESCRIPTOR, data))
    except (_Slow, ValueError, TypeError, KeyError, OverflowError, RecursionError, UnicodeDecodeError):
        message = message_class()
        json_format.Parse(body or b"{}", message)
        return message
