"""JSON request bodies to protobuf messages and replies back to JSON, fast: the HTTP port's codec.

protobuf's json_format walks descriptors in Python and takes about a millisecond per ingested event; here the JSON
is read by the C json module and handed to the message constructor (upb, in C), which takes nested dicts, lists,
enum names and Struct content as they are. Only well-known types other than Timestamp, Duration and Struct, bytes,
nulls, JSON number strings for floats and anything unexpected leave the fast path: json_format.Parse then decides,
with its own answer and error, so a body means exactly what protojson says it means.

Replies go the other way (dump): each set field by a printer read once from its descriptor, then the C json
encoder; well-known types (Timestamp, Struct, ...) and messages with float or bytes fields are left to
json_format.MessageToDict, so the text is json_format.MessageToJson's (indent None), byte for byte.
"""

from __future__ import annotations

import base64
import functools
import json
import math
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

    __slots__ = ("name", "oneof", "repeated", "map_value", "type", "plain", "message", "message_name", "enum_names",
                 "nested")

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
        # A singular string or bool field takes a JSON string or bool as it is (the common case, checked first).
        self.plain: type | None = None if self.repeated else {FD.TYPE_STRING: str, FD.TYPE_BOOL: bool}.get(field.type)
        self.message = kind
        self.nested: dict[str, _Field | None] | None = None  # the message type's fields, once first needed
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


def _kwargs(fields: dict[str, _Field | None], data: Any) -> dict[str, Any]:
    if data.__class__ is not dict:
        raise _Slow
    out: dict[str, Any] = {}
    oneofs: set[str] | None = None
    for key, value in data.items():
        field = fields.get(key)
        if field is None or value is None or field.name in out:
            raise _Slow  # unknown, null, named twice (by name and json_name), or a kind left to json_format
        if field.oneof is not None:
            oneofs = oneofs if oneofs is not None else set()
            if field.oneof in oneofs:
                raise _Slow
            oneofs.add(field.oneof)
        if value.__class__ is field.plain:
            out[field.name] = value
        elif field.map_value is not None:
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
        if field.nested is None:
            field.nested = _fields(field.message)
        return _kwargs(field.nested, value)
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


@functools.lru_cache(maxsize=4096)
def _timestamp(value: str) -> timestamp_pb2.Timestamp:
    """An RFC 3339 time as Timestamp.FromJsonString reads it (its strptime takes most of an event's decoding).
    Cached: a batch's events mostly share a few times; the message constructor copies the value it is given."""
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
        return message_class(**_kwargs(_fields(message_class.DESCRIPTOR), data))
    except (_Slow, ValueError, TypeError, KeyError, OverflowError, RecursionError, UnicodeDecodeError):
        message = message_class()
        json_format.Parse(body or b"{}", message)
        return message


# Printing replies: what each field is, read once per message type.
_STRING, _BOOL, _INT, _INT64, _DOUBLE, _ENUM, _MESSAGE, _BYTES = range(8)
_CPP_KINDS = {FD.CPPTYPE_STRING: _STRING, FD.CPPTYPE_BOOL: _BOOL, FD.CPPTYPE_INT32: _INT, FD.CPPTYPE_UINT32: _INT,
              FD.CPPTYPE_INT64: _INT64, FD.CPPTYPE_UINT64: _INT64, FD.CPPTYPE_DOUBLE: _DOUBLE, FD.CPPTYPE_ENUM: _ENUM,
              FD.CPPTYPE_MESSAGE: _MESSAGE}


class _Printer:
    """How one field is printed: its JSON name, kind, whether repeated, a map's value printer, an enum's names."""

    __slots__ = ("attribute", "name", "kind", "repeated", "presence", "map_value", "enum_names")

    def __init__(self, field: descriptor.FieldDescriptor, name: str = ""):
        self.attribute = field.name
        self.name = name or field.json_name
        self.presence = field.has_presence
        kind = _CPP_KINDS.get(field.cpp_type)
        if field.type == FD.TYPE_BYTES:
            kind = _BYTES
        if kind is None or field.is_extension:
            raise _Slow  # float32 (json_format's shortest-float form) and extensions: left to json_format
        self.kind = kind
        message = field.message_type
        is_map = message is not None and message.GetOptions().map_entry
        self.repeated = field.is_repeated and not is_map
        self.map_value = _Printer(message.fields_by_name["value"], "value") if is_map else None
        self.enum_names: dict[int, str] = {}
        if kind == _ENUM:
            enum = field.enum_type
            if enum.is_closed or enum.full_name == "google.protobuf.NullValue" or any(
                    v.GetOptions().ListFields() for v in enum.values):
                raise _Slow  # closed enums, null and enum values with JSON options: left to json_format
            self.enum_names = {v.number: v.name for v in enum.values}


_PRINTERS: dict[str, list[_Printer] | None] = {}


def _printers(message: descriptor.Descriptor) -> list[_Printer] | None:
    """The printers of a message type's fields in field-number order (ListFields' order, so json_format's); None
    when json_format alone prints it."""
    name = message.full_name
    if name in _PRINTERS:
        return _PRINTERS[name]
    found: list[_Printer] | None = None
    if not name.startswith("google.protobuf."):
        try:
            found = [_Printer(field) for field in sorted(message.fields, key=lambda f: f.number)]
        except _Slow:
            found = None
    _PRINTERS[name] = found
    return found


def _value(printer: _Printer, value: Any) -> Any:
    kind = printer.kind
    if kind == _STRING or kind == _INT:
        return value
    if kind == _MESSAGE:
        return _as_json(value)
    if kind == _ENUM:
        return printer.enum_names.get(value, value)
    if kind == _INT64:
        return str(value)
    if kind == _BOOL:
        return bool(value)
    if kind == _DOUBLE:
        if math.isinf(value):
            return "-Infinity" if value < 0 else "Infinity"
        return "NaN" if math.isnan(value) else value
    return base64.b64encode(value).decode("utf-8")  # _BYTES


def _as_json(message: Message) -> Any:
    printers = _printers(message.DESCRIPTOR)
    if printers is None:
        return json_format.MessageToDict(message)
    out: dict[str, Any] = {}
    # The fields ListFields would list, found without it (it builds a descriptor object per field, upb's slowest
    # part here): repeated and maps when not empty, fields with presence when set, others when not their default
    # (-0.0 included, as its bits are not zero).
    for printer in printers:
        value = getattr(message, printer.attribute)
        if printer.repeated or printer.map_value is not None:
            if not value:
                continue
        elif printer.presence:
            if not message.HasField(printer.attribute):
                continue
        elif not value and (printer.kind != _DOUBLE or math.copysign(1.0, value) > 0):
            continue
        if printer.map_value is not None:
            inner = printer.map_value
            out[printer.name] = {("true" if key else "false") if isinstance(key, bool) else str(key):
                                 _value(inner, value[key]) for key in value}
        elif printer.repeated:
            out[printer.name] = [_value(printer, v) for v in value]
        else:
            out[printer.name] = _value(printer, value)
    return out


def dump(message: Message) -> bytes:
    """The message as json_format.MessageToJson(message, indent=None) writes it, encoded."""
    return json.dumps(_as_json(message)).encode()
