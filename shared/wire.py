"""Requests the protobuf runtime refuses to parse, answered as INVALID_ARGUMENT naming the field.

google.protobuf refuses a string that is not valid UTF-8, and a message nested past its recursion limit, while
parsing, before any handler runs; grpc then answers INTERNAL or UNKNOWN. The server's request deserializer is
wrapped (tolerant): a request that does not parse becomes an Unparsable value carrying an InvalidArgument, which
the call wrapper raises (raise_if_unparsable, or unparsable_checked for a request stream). The field is found by
walking the wire format beside the message's descriptor; this happens only for a request that failed to parse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf import descriptor as _d
from google.protobuf.message import DecodeError

from shared.errors import InvalidArgument

_STRUCT_FAMILY = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")
_DEEP = 90  # message levels at which google.protobuf's parser (limit 100) is close to giving up


class Unparsable:
    """A request that did not parse, and the error that says where."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument):
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wraps a generated FromString: a DecodeError becomes an Unparsable instead of failing the call."""
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    if deserializer is None or descriptor is None:
        return deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return Unparsable(diagnose(descriptor, data))

    return deserialize


def checked(request_or_iterator: Any, streaming: bool) -> Any:
    """What a handler gets: the request (raising when it did not parse), or the stream wrapped to do the same."""
    if streaming:
        return unparsable_checked(request_or_iterator)
    raise_if_unparsable(request_or_iterator)
    return request_or_iterator


def raise_if_unparsable(request: Any) -> None:
    """Raises the request's InvalidArgument when it did not parse."""
    if type(request) is Unparsable:
        raise request.error


async def unparsable_checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The messages of a request stream; raises at the first that did not parse (its index in the message)."""
    index = 0
    async for request in requests:
        if type(request) is Unparsable:
            error = request.error
            error.metadata["message_index"] = str(index)
            error.message = f"stream message {index}: {error.message}"
            raise error
        index += 1
        yield request


def diagnose(descriptor: _d.Descriptor, data: bytes) -> InvalidArgument:
    """The InvalidArgument for bytes that do not parse as descriptor's message: the bad field when it is found."""
    walker = _Walker()
    try:
        found = walker.message(descriptor, memoryview(data), "", 0, "")
    except _Malformed:
        found = None
    if found is None and walker.deepest[0] >= _DEEP:
        found = (walker.deepest[1] or "request", "nesting too deep")
    if found is None:
        found = ("", f"the request is not a valid {descriptor.full_name}")
    field, problem = found
    return InvalidArgument([(field, problem)], reason="MALFORMED_REQUEST")


class _Malformed(Exception):
    pass


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


class _Walker:
    def __init__(self) -> None:
        self.deepest = (0, "")  # (message level, the outermost Struct field holding it)

    def message(self, descriptor: _d.Descriptor, data: memoryview, path: str, depth: int,
                struct_root: str) -> tuple[str, str] | None:
        if depth > self.deepest[0]:
            self.deepest = (depth, struct_root or path)
        if depth > 200:
            raise _Malformed
        counts: dict[int, int] = {}
        prefix = f"{path}." if path else ""
        pos = 0
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
                continue
            if wire == 1 or wire == 5:
                pos += 8 if wire == 1 else 4
                continue
            if wire != 2:
                raise _Malformed
            size, pos = _varint(data, pos)
            chunk = data[pos:pos + size]
            pos += size
            if len(chunk) != size:
                raise _Malformed
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            index = counts.get(number, 0)
            counts[number] = index + 1
            where = self._path(descriptor, field, prefix, path, index)
            found = self.field(field, chunk, where, depth, struct_root)
            if found is not None:
                return found
        return None

    @staticmethod
    def _path(descriptor: _d.Descriptor, field: _d.FieldDescriptor, prefix: str, path: str, index: int) -> str:
        if descriptor.full_name == "google.protobuf.Value" or descriptor.full_name == "google.protobuf.Struct":
            return path  # a Value stands where its key put it; Struct entries name their key below
        if descriptor.full_name == "google.protobuf.ListValue":
            return f"{path}[{index}]"
        if field.is_repeated and not (field.message_type and field.message_type.GetOptions().map_entry):
            return f"{prefix}{field.name}[{index}]"
        return f"{prefix}{field.name}"

    def field(self, field: _d.FieldDescriptor, chunk: memoryview, where: str, depth: int,
              struct_root: str) -> tuple[str, str] | None:
        if field.type == _d.FieldDescriptor.TYPE_STRING:
            try:
                bytes(chunk).decode("utf-8")
            except UnicodeDecodeError:
                return where, "must be valid UTF-8"
            return None
        if field.type != _d.FieldDescriptor.TYPE_MESSAGE:
            return None
        inner = field.message_type
        if inner.full_name in _STRUCT_FAMILY and not struct_root:
            struct_root = where
        if inner.GetOptions().map_entry:
            return self.map_entry(inner, chunk, where, depth, struct_root)
        return self.message(inner, chunk, where, depth + 1, struct_root)

    def map_entry(self, entry: _d.Descriptor, chunk: memoryview, where: str, depth: int,
                  struct_root: str) -> tuple[str, str] | None:
        key_field, value_field = entry.fields_by_number[1], entry.fields_by_number[2]
        key, value, pos = "", None, 0
        while pos < len(chunk):
            tag, pos = _varint(chunk, pos)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = _varint(chunk, pos)
                continue
            if wire in (1, 5):
                pos += 8 if wire == 1 else 4
                continue
            size, pos = _varint(chunk, pos)
            part = chunk[pos:pos + size]
            pos += size
            if number == 1 and key_field.type == _d.FieldDescriptor.TYPE_STRING:
                try:
                    key = bytes(part).decode("utf-8")
                except UnicodeDecodeError:
                    return where, "keys must be valid UTF-8"
            elif number == 2:
                value = part
        if value is None or value_field.type != _d.FieldDescriptor.TYPE_MESSAGE:
            if value is not None and value_field.type == _d.FieldDescriptor.TYPE_STRING:
                try:
                    bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    return f"{where}.{key}", "must be valid UTF-8"
            return None
        named = f"{where}.{key}" if key and len(key) <= 128 else where
        return self.message(value_field.message_type, value, named, depth + 2, struct_root)
