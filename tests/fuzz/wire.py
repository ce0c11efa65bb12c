"""Hypothesis strategies that write any request message at the wire level, from its descriptor.

A request is drawn as protobuf wire bytes, not as a message object, so that it can also carry what no protobuf
runtime would serialize: strings that are not UTF-8, negative numbers in unsigned fields, unknown enum numbers and
unknown field numbers, Structs nested past the parser's limit. Values lean towards the edges (empty, huge, NaN and
infinities, negative, NUL, repeated fields at and just over their declared limits) and towards names that exist
(a pool of the tenant's configuration names and of another tenant's ids), so that many cases reach the handler.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from google.protobuf import descriptor as _d
from hypothesis import strategies as st

from personalization.common.v1 import limits_pb2

_F = _d.FieldDescriptor
_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST = "google.protobuf.ListValue"
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # what a default gRPC server accepts
MAX_DEPTH = 4  # levels of ordinary messages drawn below the request (Structs have their own depth)


@dataclass
class Drawn:
    """The wire bytes of one drawn message and the strings it carries (to check errors never echo them)."""

    data: bytes
    strings: list[str] = field(default_factory=list)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _len(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


_EDGE_INTS = [0, 1, -1, 2, 7, 100, 1000, 10_000, 2**31 - 1, -(2**31), 2**32 - 1, 2**53, 2**63 - 1, -(2**63)]
_EDGE_DOUBLES = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 1e308, -1e308, math.inf, -math.inf, math.nan, 2.0**53]


def _pool_text(pool: list[str]):
    long = st.sampled_from(["x" * 41, "y" * 300, "é" * 1000, "z" * 70_000, "a" * 1_100_000])
    nasty = st.sampled_from(["", " ", "\x00", "a\x00b", "\t\n", "../../etc/passwd", "' OR 1=1 --", "%s%n",
                             "\u202e", "\U0001f600" * 3, "${jndi:x}", "0", "-1", "NaN", "true", "null",
                             "1970-01-01T00:00:00Z", "\ud7ff", "{}", "[]"])
    choices = [st.text(max_size=12), nasty, long, st.text(min_size=41, max_size=80)]
    if pool:
        choices = [st.sampled_from(pool)] * 3 + choices
    return st.one_of(*choices)


# Byte sequences that are not UTF-8 (each alone, or inside valid text).
_BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"abc\xe2\x82"]


class Strategies:
    """Builds and caches a strategy per message type; pool holds strings that name existing things."""

    def __init__(self, pool: list[str]):
        self.pool = list(pool)
        self.text = _pool_text(self.pool)

    # ---- strings

    def string_bytes(self, limits: limits_pb2.FieldLimits):
        """(wire bytes, the str when it is valid text)."""
        around = []
        if limits.max_length:
            n = limits.max_length
            around = [st.sampled_from(["a" * n, "a" * (n + 1), "é" * n, "é" * (n + 1)])]
        good = st.one_of(self.text, *around).map(lambda s: (s.encode("utf-8", "surrogatepass"), s))
        bad = st.tuples(st.sampled_from(_BAD_UTF8), st.text(max_size=5)).map(
            lambda t: (t[1].encode() + t[0] + t[1].encode(), None))
        return st.one_of(good, good, good, good, good, bad)

    # ---- fields

    def repeated_count(self, limits: limits_pb2.FieldLimits):
        small = st.integers(0, 3)
        if limits.max_items:
            n = limits.max_items
            return st.one_of(small, small, small, st.sampled_from([n, n + 1]))
        return st.one_of(small, small, small, st.sampled_from([50, 1200]))

    def scalar(self, f: _d.FieldDescriptor, limits: limits_pb2.FieldLimits):
        """A strategy of (wire bytes of one value with its key, strings)."""
        t, n = f.type, f.number
        if t in (_F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_BOOL):
            ints = st.one_of(st.sampled_from(_EDGE_INTS), st.integers(-1000, 1000))
            return ints.map(lambda v: (_key(n, 0) + _varint(v), []))
        if t in (_F.TYPE_SINT32, _F.TYPE_SINT64):
            ints = st.one_of(st.sampled_from(_EDGE_INTS), st.integers(-1000, 1000))
            return ints.map(lambda v: (_key(n, 0) + _varint(_zigzag(v)), []))
        if t == _F.TYPE_ENUM:
            known = [v.number for v in f.enum_type.values]
            numbers = st.one_of(st.sampled_from(known), st.sampled_from(known), st.sampled_from([-1, 99, 2**31 - 1]))
            return numbers.map(lambda v: (_key(n, 0) + _varint(v), []))
        if t == _F.TYPE_DOUBLE:
            doubles = st.one_of(st.sampled_from(_EDGE_DOUBLES), st.floats(allow_nan=True, allow_infinity=True))
            return doubles.map(lambda v: (_key(n, 1) + struct.pack("<d", v), []))
        if t == _F.TYPE_FLOAT:
            floats = st.one_of(st.sampled_from(_EDGE_DOUBLES[:4] + [math.inf, math.nan, 3e38]),
                               st.floats(width=32))
            return floats.map(lambda v: (_key(n, 5) + struct.pack("<f", v), []))
        if t in (_F.TYPE_FIXED32, _F.TYPE_SFIXED32):
            return st.integers(0, 2**32 - 1).map(lambda v: (_key(n, 5) + struct.pack("<I", v), []))
        if t in (_F.TYPE_FIXED64, _F.TYPE_SFIXED64):
            return st.integers(0, 2**64 - 1).map(lambda v: (_key(n, 1) + struct.pack("<Q", v), []))
        if t == _F.TYPE_STRING:
            return self.string_bytes(limits).map(lambda p: (_len(n, p[0]), [p[1]] if p[1] else []))
        if t == _F.TYPE_BYTES:
            data = st.one_of(st.binary(max_size=20), st.sampled_from([b"", b"\x00" * 1000, b"\xff" * 100_000]))
            return data.map(lambda b: (_len(n, b), []))
        raise AssertionError(f"unhandled field type {t} of {f.full_name}")

    def value_of(self, f: _d.FieldDescriptor, depth: int):
        """One value of field f (a single element for a repeated field): (bytes with key, strings)."""
        limits = f.GetOptions().Extensions[limits_pb2.field]
        if f.type != _F.TYPE_MESSAGE:
            return self.scalar(f, limits)
        inner = f.message_type
        if inner.GetOptions().map_entry:
            return st.tuples(self.value_of(inner.fields_by_number[1], depth),
                             self.value_of(inner.fields_by_number[2], depth)).map(
                lambda kv: (_len(f.number, kv[0][0] + kv[1][0]), kv[0][1] + kv[1][1]))
        return self.message(inner, depth + 1).map(lambda m: (_len(f.number, m.data), m.strings))

    def field_values(self, f: _d.FieldDescriptor, depth: int):
        """All occurrences of field f in the message: (bytes, strings)."""
        one = self.value_of(f, depth)
        if not f.is_repeated:
            return one
        limits = f.GetOptions().Extensions[limits_pb2.field]

        def build(args):
            count, first, rest = args
            # Copies past what a server accepts would only be thrown away (and nested lists of big elements
            # would not fit in memory): stop a little past the request limit.
            count = min(count, 2 + MAX_REQUEST_BYTES // max(1, len(first[0])))
            if count <= 3:
                parts = [first, *rest][:count]
            else:  # many elements: copies of one (cheap to draw), another one last
                parts = [first] * (count - 1) + [rest[0] if rest else first]
            return b"".join(p[0] for p in parts), [s for p in parts[:4] for s in p[1]]

        return st.tuples(self.repeated_count(limits), one, st.lists(one, min_size=1, max_size=3)).map(build)

    # ---- messages

    def message(self, descriptor: _d.Descriptor, depth: int = 0):
        name = descriptor.full_name
        if name == _STRUCT:
            return self.struct(depth)
        if name == _VALUE:
            return self.value(depth)
        if name == _LIST:
            return st.lists(self.value(depth + 1), max_size=3).map(
                lambda vs: Drawn(b"".join(_len(1, v.data) for v in vs), [s for v in vs for s in v.strings]))
        if name in (_TIMESTAMP, _DURATION):
            seconds = st.one_of(st.sampled_from([0, -1, 1, 1_700_000_000, 253_402_300_800, -62_135_596_801,
                                                 2**63 - 1]), st.integers(0, 2_000_000_000))
            nanos = st.one_of(st.just(0), st.sampled_from([-1, 999_999_999, 1_000_000_000]))
            return st.tuples(seconds, nanos).map(
                lambda sn: Drawn(_key(1, 0) + _varint(sn[0]) + _key(2, 0) + _varint(sn[1])))
        fields = list(descriptor.fields)
        if depth >= MAX_DEPTH:
            fields = [f for f in fields if f.type != _F.TYPE_MESSAGE]
        if not fields:
            return st.just(Drawn(b""))
        per_field = [self.field_values(f, depth) for f in fields]
        unknown = st.sampled_from([b"", b"", b"", _key(1999, 0) + _varint(5), _len(2000, b"\xff\xff")])

        @st.composite
        def draw(draw_):
            chosen = draw_(st.lists(st.integers(0, len(fields) - 1), max_size=min(len(fields), 6), unique=True))
            data, strings = [], []
            for i in sorted(chosen):
                b, s = draw_(per_field[i])
                data.append(b)
                strings += s
            data.append(draw_(unknown))
            return Drawn(b"".join(data), strings)

        return draw()

    def value(self, depth: int):
        """A google.protobuf.Value: scalars, or (rarely) a nested list or Struct; sometimes a very deep chain."""
        text = self.text.map(lambda s: Drawn(_len(3, s.encode("utf-8", "surrogatepass")), [s]))
        bad = st.sampled_from(_BAD_UTF8).map(lambda b: Drawn(_len(3, b)))
        number = st.one_of(st.sampled_from(_EDGE_DOUBLES), st.floats()).map(
            lambda v: Drawn(_key(2, 1) + struct.pack("<d", v)))
        scalars = st.one_of(number, text, text, bad, st.booleans().map(lambda b: Drawn(_key(4, 0) + _varint(b))),
                            st.just(Drawn(_key(1, 0) + _varint(0))))
        if depth > 6:
            return scalars
        nested = st.deferred(lambda: st.one_of(
            self.struct(depth + 1).map(lambda s: Drawn(_len(5, s.data), s.strings)),
            st.lists(self.value(depth + 1), max_size=3).map(
                lambda vs: Drawn(_len(6, b"".join(_len(1, v.data) for v in vs)), [s for v in vs for s in v.strings]))))
        return st.one_of(scalars, scalars, scalars, nested, st.sampled_from([20, 40, 49, 60, 120]).map(_deep_value))

    def struct(self, depth: int):
        entry = st.tuples(self.text, self.value(depth + 1)).map(
            lambda kv: (_len(1, _len(1, kv[0].encode("utf-8", "surrogatepass")) + _len(2, kv[1].data)),
                        [kv[0], *kv[1].strings]))
        wide = st.sampled_from([150, 1100]).map(
            lambda n: (b"".join(_len(1, _len(1, f"k{i}".encode()) + _len(2, _key(2, 1) + struct.pack("<d", i)))
                                for i in range(n)), []))
        return st.one_of(st.lists(entry, max_size=4), st.lists(entry, max_size=4), wide.map(lambda w: [w])).map(
            lambda es: Drawn(b"".join(e[0] for e in es), [s for e in es for s in e[1]]))


def _deep_value(levels: int) -> Drawn:
    """A Value that is a list inside a list ... `levels` deep, ending with a number."""
    data = _key(2, 1) + struct.pack("<d", 1.0)
    for _ in range(levels):
        data = _len(6, _len(1, data))
    return Drawn(data)
