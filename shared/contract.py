"""The contract of what a message may carry: the limits declared in the protos, checked by generated code.

The limits are options on the contracts' fields and messages (protos/personalization/common/v1/limits.proto).
For each message type that is checked, this module reads them from the descriptors once and writes two plain
Python functions (compiled with exec, cached per type): a fast one that only answers "valid or not" without
building a single string, and a detailed one, run only for an invalid message, that adds one field violation per
bad field, named by its path as the caller sent it (events[2].line_items[0].unit_price, events[0].attributes.age),
stating the limit and never echoing the value.

Rules that hold for every checked message, declared or not: no string contains NUL (PostgreSQL text cannot hold it;
the protobuf runtime already refused invalid UTF-8 while parsing, see shared.wire), every Timestamp is between 1970
and 9999 with nanos in range, every Duration is within what google.protobuf.Duration allows, and every number
inside a Struct is finite.

buf.validate with protovalidate was measured first (protovalidate 2.1 on the same Event): about 11 us per event for
a subset of these rules, against a budget of a few us; it also needs a second protobuf runtime (protobuf-py) and
validate.proto, which its wheel does not ship. Hence our own options and this generator.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.protobuf import descriptor as _d
from google.protobuf.message import Message

from personalization.common.v1 import common_pb2, limits_pb2
from shared.errors import QUOTE_CHARS, InvalidArgument, Violations, shorten
from shared.settings import env_int
from shared.structs import value_to_py

# What a default gRPC client accepts (4 MiB): no service sends a larger response.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Room left in a response for what surrounds the data that is cut to fit (ids, counters, field tags).
RESPONSE_MARGIN_BYTES = 64 * 1024
# What a response that could grow without bound (a profile) is cut to.
RESPONSE_BUDGET_BYTES = MAX_MESSAGE_BYTES - RESPONSE_MARGIN_BYTES
# Timestamps: from 1970-01-01T00:00:01Z to 9999-12-31T23:59:59Z.
MAX_TIMESTAMP_SECONDS = 253_402_300_799
# Durations: what google.protobuf.Duration allows (about 10,000 years either way, nanos of the seconds' sign).
MAX_DURATION_SECONDS = 315_576_000_000


def _message_limits(descriptor: _d.Descriptor) -> limits_pb2.MessageLimits | None:
    options = descriptor.GetOptions()
    return options.Extensions[limits_pb2.message] if options.HasExtension(limits_pb2.message) else None


def _max_bytes(descriptor: _d.Descriptor) -> int:
    """The declared max_bytes of a message, replaced by its environment variable when set (read once)."""
    limits = _message_limits(descriptor)
    if limits is None or not limits.max_bytes:
        return 0
    if limits.max_bytes_env:
        return env_int(limits.max_bytes_env, limits.max_bytes, minimum=1024, maximum=MAX_MESSAGE_BYTES // 4)
    return limits.max_bytes


# The size of one serialized event (TAILOR_MAX_EVENT_BYTES, default 256 KiB).
MAX_EVENT_BYTES = _max_bytes(common_pb2.Event.DESCRIPTOR)


def _field_limits(field: _d.FieldDescriptor) -> limits_pb2.FieldLimits:
    options = field.GetOptions()
    return options.Extensions[limits_pb2.field] if options.HasExtension(limits_pb2.field) else limits_pb2.FieldLimits()


def _literal(x: float) -> str:
    """A number as Python source (infinities by name)."""
    return repr(x) if math.isfinite(x) else ("_INF" if x > 0 else "-_INF")


def field_limits(descriptor: _d.Descriptor, field: str) -> limits_pb2.FieldLimits:
    """The limits declared on one field (for example field_limits(RecordInteractionsRequest.DESCRIPTOR,
    "interactions").max_items: how many interactions one call may carry)."""
    return _field_limits(descriptor.fields_by_name[field])


def _number(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else repr(x)


# ---- Struct content (JSON values) ------------------------------------------------------------------------------

_STRUCT = "google.protobuf.Struct"
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"


class _StructRules:
    """Checks the content of one Struct field against its StructLimits."""

    def __init__(self, field: _d.FieldDescriptor, limits: limits_pb2.FieldLimits):
        s = limits.struct
        self.max_fields = limits.max_items
        self.max_depth = s.max_depth or 32
        self.max_key = s.max_key_length or 256
        self.max_string = s.max_string_length or (1 << 30)
        self.max_bytes = s.max_bytes
        self.max_json = s.max_value_json_bytes

    def ok(self, struct, size: int | None = None) -> bool:
        """True when struct is within the limits; size, when given, bounds its serialized size (the whole event's)."""
        fields = struct.fields
        if not fields:
            return True
        if self.max_fields and len(fields) > self.max_fields:
            return False
        if self.max_bytes and (size is None or size > self.max_bytes) and struct.ByteSize() > self.max_bytes:
            return False
        return self._fast(fields, 1)

    def _fast(self, fields, depth: int) -> bool:
        # The hot path of events with attributes or properties: plain locals, no paths, no calls for scalars.
        # (Indexing the map by key is about twice as fast as its items(); reading string_value, then number_value,
        # spares the WhichOneof of the common scalar values.)
        max_key, max_string, max_json = self.max_key, self.max_string, self.max_json if depth == 1 else 0
        for key in fields:
            if not key or len(key) > max_key or "\x00" in key:
                return False
            value = fields[key]
            text = value.string_value
            if text:
                if len(text) > max_string or "\x00" in text:
                    return False
                if max_json and len(text) * 12 + 2 > max_json and len(json.dumps(text)) > max_json:
                    return False
                continue
            number = value.number_value
            if number:  # NaN is true too
                if not math.isfinite(number):
                    return False
                continue
            if not self._nested_ok(value, depth):
                return False
            if max_json and value.ByteSize() * 6 + 8 > max_json and len(json.dumps(
                    value_to_py(value), sort_keys=True)) > max_json:
                return False
        return True

    def _nested_ok(self, value, depth: int) -> bool:
        kind = value.WhichOneof("kind")
        if kind == "struct_value" or kind == "list_value":
            if depth >= self.max_depth:
                return False
            if kind == "struct_value":
                return self._fast(value.struct_value.fields, depth + 1)
            return self._fast_list(value.list_value.values, depth + 1)
        return True

    def _fast_list(self, values, depth: int) -> bool:
        for value in values:
            text = value.string_value
            if text:
                if len(text) > self.max_string or "\x00" in text:
                    return False
                continue
            number = value.number_value
            if number:
                if not math.isfinite(number):
                    return False
                continue
            if not self._nested_ok(value, depth):
                return False
        return True

    def add(self, struct, path: str, v: Violations) -> None:
        fields = struct.fields
        if not fields:
            return
        if self.max_fields and len(fields) > self.max_fields:
            v.add(path, f"at most {self.max_fields:,} fields")
            return
        if self.max_bytes and struct.ByteSize() > self.max_bytes:
            v.add(path, f"must be at most {self.max_bytes:,} bytes serialized")
            return
        bad: list[tuple[str, str]] = []
        self._walk_struct(struct, 1, path, bad, False)
        for where, problem in bad:
            v.add(where, problem)

    def _key_ok(self, key: str) -> bool:
        return 0 < len(key) <= self.max_key and "\x00" not in key

    def _walk_struct(self, struct, depth: int, path: str, bad: list, fast: bool) -> None:
        for key, value in struct.fields.items():
            if not self._key_ok(key):
                bad.append((path, f"keys must be 1 to {self.max_key} characters without NUL"))
                if fast:
                    return
                continue
            where = f"{path}.{shorten(key, QUOTE_CHARS)}" if not fast else ""  # a path never repeats a long key
            self._walk_value(value, depth, where, bad, fast)
            if depth == 1 and self.max_json and not bad and value.ByteSize() * 6 + 8 > self.max_json:
                # Cheap bound first (JSON with escapes is at most ~6x the wire bytes); exact only when it may exceed.
                if len(json.dumps(value_to_py(value), sort_keys=True)) > self.max_json:
                    bad.append((where, f"must be at most {self.max_json:,} bytes as JSON"))
            if fast and bad:
                return

    def _walk_value(self, value, depth: int, path: str, bad: list, fast: bool) -> None:
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            text = value.string_value
            if len(text) > self.max_string:
                bad.append((path, f"strings must be at most {self.max_string:,} characters"))
            elif "\x00" in text:
                bad.append((path, "must not contain NUL characters"))
        elif kind == "number_value":
            if not math.isfinite(value.number_value):
                bad.append((path, "must be a finite number"))
        elif kind == "struct_value" or kind == "list_value":
            if depth >= self.max_depth:
                bad.append((path, f"nesting deeper than {self.max_depth} levels"))
                return
            if kind == "struct_value":
                self._walk_struct(value.struct_value, depth + 1, path, bad, fast)
            else:
                for j, item in enumerate(value.list_value.values):
                    self._walk_value(item, depth + 1, f"{path}[{j}]" if not fast else "", bad, fast)
                    if fast and bad:
                        return


# ---- generated checks -------------------------------------------------------------------------------------------


class _Generator:
    """Writes the source of the two check functions of a message type and of every type it contains.

    The fast function inlines the checks of contained messages (no call per identity or line item) and joins the
    conditions on one string into one test; the detailed one calls a function per contained message with its path.
    """

    def __init__(self, check_size: bool = True) -> None:
        self.names: dict[str, str] = {}
        self.lines: list[str] = []
        self.env: dict[str, Any] = {"_isfinite": math.isfinite, "_TS_MAX": MAX_TIMESTAMP_SECONDS, "_INF": math.inf,
                                    "_DUR_MAX": MAX_DURATION_SECONDS}
        self.counter = 0
        self.check_size = check_size

    def constant(self, value: Any) -> str:
        self.counter += 1
        name = f"_c{self.counter}"
        self.env[name] = value
        return name

    def root(self, descriptor: _d.Descriptor) -> str:
        name = self.function(descriptor)
        fast: list[str] = []
        self.body(descriptor, True, "m", 0, "    ", fast, root=True)
        self.lines += [f"def ok_{name}(m, now, known=None, size=None):", *fast, "    return True", ""]
        return name

    def function(self, descriptor: _d.Descriptor, root: bool = True) -> str:
        name = self.names.get(descriptor.full_name)
        if name is None:
            name = self.names[descriptor.full_name] = f"m{len(self.names)}"
            slow: list[str] = []
            self.body(descriptor, False, "m", 0, "    ", slow, root=root)
            self.lines += [f"def add_{name}(m, now, v, p, known=None):", "    P = p + '.' if p else ''", *slow,
                           "    pass", ""]
        return name

    def fail(self, fast: bool, lines: list[str], path: str, problem: str, indent: str) -> None:
        lines.append(f"{indent}return False" if fast else f"{indent}v.add({path}, {self.constant(problem)})")

    def body(self, descriptor: _d.Descriptor, fast: bool, var: str, depth: int, ind: str, out: list[str],
             root: bool = False) -> None:
        size = _max_bytes(descriptor) if (self.check_size or not root) else 0
        if size:
            out.append(f"{ind}if {var}.ByteSize() > {size}:")
            self.fail(fast, out, "p or 'message'", f"must be at most {size:,} bytes serialized", ind + "    ")
            if not fast:
                out.append(f"{ind}    return")
        for field in descriptor.fields:
            self.field(field, fast, var, depth, ind, out)

    def field(self, f: _d.FieldDescriptor, fast: bool, var: str, depth: int, ind: str, out: list[str]) -> None:
        lim = _field_limits(f)
        name = f.name
        path = f"P + {name!r}"
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            return  # no map carries event content
        if f.is_repeated:
            xs, y = f"xs{depth}", f"y{depth}"
            element = limits_pb2.FieldLimits()
            element.CopyFrom(lim)
            element.ClearField("required")  # required is about the list; its elements follow their own rules
            inner: list[str] = []
            item = f"{path} + '[' + str(j) + ']'"
            self.value(f, element, y, item, fast, depth + 1, ind + "        ", inner)
            if not lim.required and not lim.max_items and not inner:
                return
            # An empty list (the usual case for most of them) costs one test.
            out.append(f"{ind}{xs} = {var}.{name}")
            out.append(f"{ind}if not {xs}:")
            if lim.required:
                self.fail(fast, out, path, "at least one is required", ind + "    ")
            else:
                out.append(f"{ind}    pass")
            if lim.max_items:
                out.append(f"{ind}elif len({xs}) > {lim.max_items}:")
                self.fail(fast, out, path, f"at most {lim.max_items:,} items", ind + "    ")
            if inner:
                out.append(f"{ind}else:")
                loop = f"for {y} in {xs}:" if fast else f"for j, {y} in enumerate({xs}):"
                out.append(f"{ind}    {loop}")
                out.extend(inner)
            return
        if f.type == _d.FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name == _TIMESTAMP:
            # An unset Timestamp reads as zeros, which the checks below refuse when required: no HasField needed.
            self.value(f, lim, f"{var}.{name}", path, fast, depth + 1, ind, out)
            return
        if f.type == _d.FieldDescriptor.TYPE_MESSAGE:
            out.append(f"{ind}if {var}.HasField({name!r}):")
            inner = []
            self.value(f, lim, f"{var}.{name}", path, fast, depth + 1, ind + "    ", inner)
            out.extend(inner or [f"{ind}    pass"])
            if lim.required:
                out.append(f"{ind}else:")
                self.fail(fast, out, path, "is required", ind + "    ")
            return
        self.value(f, lim, f"{var}.{name}", path, fast, depth, ind, out)

    def value(self, f: _d.FieldDescriptor, lim, expr: str, path: str, fast: bool, depth: int, ind: str,
              out: list[str]) -> None:
        """Checks one value (a singular field or one element of a repeated field)."""
        t = f.type
        D = _d.FieldDescriptor
        x = f"x{depth}"
        if t == D.TYPE_STRING:
            checks: list[tuple[str, str]] = []
            if lim.max_length:
                checks.append((f"len({x}) > {lim.max_length}", f"must be at most {lim.max_length:,} characters"))
            checks.append((f"'\\x00' in {x}", "must not contain NUL characters"))
            if lim.pattern:
                pattern = re.compile(lim.pattern)
                seen: set[str] = set()

                # No max_length: no bound (the default was len(text), evaluated at definition, where text is unbound).
                def match(text: str, pattern=pattern, seen=seen, longest=lim.max_length or sys.maxsize) -> bool:
                    if pattern.fullmatch(text) is None or len(text) > longest or "\x00" in text:
                        return False
                    if len(seen) < 10_000:  # a few names (identity types, sources) repeated millions of times
                        seen.add(text)
                    return True

                seen_name, match_name = self.constant(seen), self.constant(match)
                if fast:  # a string the pattern matched once passed every check of this field
                    checks = []
                checks.append((f"{x} not in {seen_name} and not {match_name}({x})", f"must match {lim.pattern}"))
            out.append(f"{ind}{x} = {expr}")
            if lim.registry and lim.pattern:
                # A known name passed every check when it was declared; a well-formed unknown one is refused as such,
                # a malformed one by the checks that follow.
                out.append(f"{ind}if known is not None and {x} in known:")
                out.append(f"{ind}    pass")
                out.append(f"{ind}elif known is not None and ({x} in {seen_name} or {match_name}({x})):")
                self.fail(fast, out, path, f"unknown {lim.registry.replace('_', ' ')}: declare it first", ind + "    ")
                out.append(f"{ind}else:")
                ind = ind + "    "
            if fast:
                joined = " or ".join(f"({c})" for c, _ in checks)
                if lim.required:
                    out.append(f"{ind}if not {x} or {x}.isspace() or {joined}:")
                else:
                    out.append(f"{ind}if {x} and ({joined}):")
                out.append(f"{ind}    return False")
                return
            if lim.required:
                out.append(f"{ind}if not {x} or {x}.isspace():")
                self.fail(fast, out, path, "is required", ind + "    ")
                keyword = "elif"
            else:
                out.append(f"{ind}if {x}:")
                ind, keyword = ind + "    ", "if"
            for condition, problem in checks:
                out.append(f"{ind}{keyword} {condition}:")
                self.fail(fast, out, path, problem, ind + "    ")
                keyword = "elif"
            return
        if t in (D.TYPE_DOUBLE, D.TYPE_FLOAT):
            has_range = lim.HasField("min") or lim.HasField("max")
            low = lim.min if lim.HasField("min") else -math.inf
            high = lim.max if lim.HasField("max") else math.inf
            conditions = []
            if lim.finite or has_range:
                conditions.append((f"not _isfinite({x})", "must be a finite number"))
            if has_range:
                conditions.append((f"not ({_literal(low)} <= {x} <= {_literal(high)})", self._range(lim)))
            if lim.non_zero:
                conditions.append((f"{x} == 0", "must not be zero"))
            if not conditions:
                return
            out.append(f"{ind}{x} = {expr}")
            if fast:
                # NaN fails every comparison, so a range test alone refuses it; infinities are outside any range.
                tests = [f"not ({_literal(low)} <= {x} <= {_literal(high)})" if has_range else f"not _isfinite({x})"]
                if lim.non_zero:
                    tests.append(f"{x} == 0")
                out.append(f"{ind}if {' or '.join(tests)}:")
                out.append(f"{ind}    return False")
                return
            keyword = "if"
            for condition, problem in conditions:
                out.append(f"{ind}{keyword} {condition}:")
                self.fail(fast, out, path, problem, ind + "    ")
                keyword = "elif"
            return
        if t == D.TYPE_ENUM:
            if lim.defined_only:
                valid = frozenset(v.number for v in f.enum_type.values if v.number != 0)
                out.append(f"{ind}if {expr} not in {self.constant(valid)}:")
                self.fail(fast, out, path,
                          f"must be a known {f.enum_type.name} other than {f.enum_type.values[0].name}", ind + "    ")
            return
        if t in (D.TYPE_INT32, D.TYPE_INT64, D.TYPE_UINT32, D.TYPE_UINT64, D.TYPE_SINT32, D.TYPE_SINT64):
            if lim.HasField("min") or lim.HasField("max"):
                low = lim.min if lim.HasField("min") else -math.inf
                high = lim.max if lim.HasField("max") else math.inf
                out.append(f"{ind}if not ({_literal(low)} <= {expr} <= {_literal(high)}):")
                self.fail(fast, out, path, self._range(lim), ind + "    ")
            return
        if t != D.TYPE_MESSAGE:
            return
        full = f.message_type.full_name
        if full == _TIMESTAMP:
            ts, s = f"t{depth}", f"s{depth}"
            nanos = f"n{depth}"
            out.append(f"{ind}{ts} = {expr}")
            out.append(f"{ind}{s} = {ts}.seconds")
            out.append(f"{ind}{nanos} = {ts}.nanos")
            if lim.required:
                out.append(f"{ind}if {s} == 0 and {nanos} == 0:")
                self.fail(fast, out, path, "is required", ind + "    ")
                keyword = "elif"
            else:
                out.append(f"{ind}if {s} == 0 and {nanos} == 0:")
                out.append(f"{ind}    pass")
                keyword = "elif"
            out.append(f"{ind}{keyword} not (0 < {s} <= _TS_MAX and 0 <= {nanos} <= 999999999):")
            self.fail(fast, out, path, "must be a time between 1970 and 9999 with nanos from 0 to 999,999,999",
                      ind + "    ")
            if lim.max_future_seconds:
                out.append(f"{ind}elif {s} > now + {lim.max_future_seconds}:")
                self.fail(fast, out, path, f"must not be more than {lim.max_future_seconds:,} seconds in the future",
                          ind + "    ")
            return
        if full == _DURATION:
            d = f"d{depth}"
            out.append(f"{ind}{d} = {expr}")
            out.append(f"{ind}if not (-_DUR_MAX <= {d}.seconds <= _DUR_MAX and -999999999 <= {d}.nanos <= 999999999"
                       f" and ({d}.seconds == 0 or {d}.nanos == 0 or ({d}.seconds > 0) == ({d}.nanos > 0))):")
            self.fail(fast, out, path, "must be a duration of at most 315,576,000,000 seconds either way, with nanos "
                      "from -999,999,999 to 999,999,999 of the seconds' sign", ind + "    ")
            return
        if full == _STRUCT:
            rules = self.constant(_StructRules(f, lim))
            if fast:
                out.append(f"{ind}if not {rules}.ok({expr}, size):")
                out.append(f"{ind}    return False")
            else:
                out.append(f"{ind}{rules}.add({expr}, {path}, v)")
            return
        if full.startswith("google.protobuf."):
            return
        if fast:
            m = expr
            if not expr.isidentifier():
                m = f"m{depth}"
                out.append(f"{ind}{m} = {expr}")
            self.body(f.message_type, True, m, depth, ind, out)
        else:
            out.append(f"{ind}add_{self.function(f.message_type, root=False)}({expr}, now, v, {path}, known)")

    @staticmethod
    def _range(lim) -> str:
        if lim.HasField("min") and lim.HasField("max"):
            return f"must be between {_number(lim.min)} and {_number(lim.max)}"
        if lim.HasField("min"):
            return f"must be at least {_number(lim.min)}"
        return f"must be at most {_number(lim.max)}"


class Checker:
    """The generated checks of one message type (check_size=False leaves the size of the whole message to the
    caller, who may know it already from serializing it)."""

    def __init__(self, descriptor: _d.Descriptor, check_size: bool = True):
        gen = _Generator(check_size)
        name = gen.root(descriptor)
        self.source = "\n".join(gen.lines)
        exec(compile(self.source, f"<contract {descriptor.full_name}>", "exec"), gen.env)  # our own generated code
        # (message, now, known names or None) -> bool; (message, now, violations, path, known) -> None
        self.ok: Callable[..., bool] = gen.env[f"ok_{name}"]  # (message, now, known=None, size=None)
        self._add: Callable[[Message, float, Violations, str, frozenset[str] | set[str] | None], None] = \
            gen.env[f"add_{name}"]
        self.descriptor = descriptor

    def add(self, message: Message, path: str, v: Violations, now: float | None = None,
            known: frozenset[str] | set[str] | None = None) -> bool:
        """Adds a violation per bad field of message (paths under path); returns True when it had none.

        known, when given, holds the names the tenant declared in the registry its fields refer to (identity types).
        """
        now = time.time() if now is None else now
        if self.ok(message, now, known):
            return True
        before = len(v.items)
        self._add(message, now, v, path, known)
        if len(v.items) == before:  # the two functions come from one declaration; never silently pass
            v.add(path or "message", "is not valid")
        return False

    def add_each(self, messages: Iterable[Message], field: str, v: Violations, now: float | None = None,
                 known: frozenset[str] | set[str] | None = None) -> None:
        """Checks each message of a repeated field, naming each bad one field[i]...."""
        now = time.time() if now is None else now
        ok = self.ok
        for i, message in enumerate(messages):
            if not ok(message, now, known):
                self.add(message, f"{field}[{i}]", v, now, known)


_CHECKERS: dict[tuple[str, bool], Checker] = {}


def checker(descriptor: _d.Descriptor, check_size: bool = True) -> Checker:
    """The checks of a message type, generated on first use and kept."""
    key = (descriptor.full_name, check_size)
    found = _CHECKERS.get(key)
    if found is None:
        found = _CHECKERS[key] = Checker(descriptor, check_size)
    return found


def check(message: Message, path: str = "", now: float = math.inf) -> None:
    """Raises InvalidArgument with one field violation per bad field of message (a request, usually).

    Services downstream of the gateway leave now at infinity: how far in the future a time may be is checked where
    the data enters the suite, against that clock; another host's clock must not refuse it later.
    """
    v = Violations()
    checker(message.DESCRIPTOR).add(message, path, v, now)
    v.raise_if_any()


def violations(message: Message, path: str = "", now: float = math.inf) -> list[tuple[str, str]]:
    """The field violations of message (empty when it is valid); now as in check."""
    v = Violations()
    checker(message.DESCRIPTOR).add(message, path, v, now)
    return v.items


_INDEX = re.compile(r"\[(\d+)\]")


def raise_merged(found: list[tuple[str, str]], *validators: Callable[[], object]) -> None:
    """Raises one InvalidArgument with the contract's violations found and those the service's own validators add
    on other fields, in request order (by the indexes in the path), so a caller sees every bad field at once.

    Each validator is a pure check of the same request that raises InvalidArgument; none may write anything.
    """
    merged = list(found)
    named = {field for field, _ in found}
    for validate in validators:
        try:
            validate()
        except InvalidArgument as error:
            merged += [(f, d) for f, d in error.violations if f not in named]
            named.update(f for f, _ in error.violations)
        except Exception:  # a validator tripping on data the contract already refused adds nothing
            if not found:
                raise
    if merged:

        def position(item: tuple[str, str]) -> list[int]:
            return [int(n) for n in _INDEX.findall(item[0])]

        raise InvalidArgument(sorted(merged, key=position))


# ---- responses that fit any client ------------------------------------------------------------------------------


def _varint_size(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _trim_tail(container, size: int, budget: int) -> tuple[int, int]:
    """Removes elements from the end of a repeated message field until size fits budget: (removed, new size)."""
    removed = 0
    while size > budget and len(container):
        n = container[-1].ByteSize()
        size -= n + 1 + _varint_size(n)
        del container[-1]
        removed += 1
    return removed, size


def fit_profile(profile: Message, budget: int = RESPONSE_BUDGET_BYTES) -> bool:
    """Cuts a profile (profile_graph's Profile or the gateway's GetProfileResponse) to at most budget bytes: the
    oldest events first (they come most recent first), then profile objects from the end, then attributes (last
    keys first). Sets truncated and adds to the omitted counts; returns whether anything was cut."""
    if profile.ByteSize() <= budget:
        return False
    profile.truncated = True
    # The flags and counts set below take a few bytes of their own: cut to a little less, then check exactly.
    target = budget - 32
    while True:
        size = profile.ByteSize()
        if size <= budget:
            return True
        removed, size = _trim_tail(profile.events, size, target)
        profile.omitted_event_count += removed
        removed, size = _trim_tail(profile.profile_objects, size, target)
        profile.omitted_profile_object_count += removed
        fields = profile.attributes.fields
        keys = sorted(fields, reverse=True)
        if not keys and not removed and not len(profile.events):
            return True  # nothing left that may be cut; what remains is small by the contract's limits
        for key in keys:
            if size <= target:
                break
            key_size = len(key.encode())
            value_size = fields[key].ByteSize()
            entry = 2 + _varint_size(key_size) + key_size + _varint_size(value_size) + value_size
            del fields[key]
            size -= 1 + _varint_size(entry) + entry
            profile.omitted_attribute_count += 1


def fit_profiles(profiles: Sequence[Message], budget: int = RESPONSE_BUDGET_BYTES) -> None:
    """Cuts profiles that do not fit together in budget bytes, each to an equal share of it."""
    sizes = [p.ByteSize() for p in profiles]
    if sum(sizes) + 6 * len(sizes) <= budget:
        return
    share = budget // len(profiles) - 6
    for profile, size in zip(profiles, sizes):
        if size > share:
            fit_profile(profile, share)


def check_events(events: Sequence[common_pb2.Event], field: str = "events", v: Violations | None = None,
                 now: float | None = None) -> Violations:
    """Adds a violation per bad field of each event (field[i]...) to v (a new Violations when None)."""
    v = Violations() if v is None else v
    EVENT.add_each(events, field, v, now)
    return v


EVENT = checker(common_pb2.Event.DESCRIPTOR)

__all__ = [
    "MAX_EVENT_BYTES", "MAX_MESSAGE_BYTES", "RESPONSE_MARGIN_BYTES", "Checker", "checker", "check", "check_events",
    "violations", "raise_merged", "field_limits", "RESPONSE_BUDGET_BYTES", "fit_profile", "fit_profiles",
    "EVENT", "InvalidArgument",
]
