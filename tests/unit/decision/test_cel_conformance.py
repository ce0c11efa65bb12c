"""The CEL library behind targeting rules, run against the CEL spec's conformance tests (simple text protos).

The test files are read where they live (../shared/external-data/cel-spec-simple/testdata/); a minimal
text-proto reader below turns them into nested dicts. Tests the library does not pass are listed in
EXPECTED_FAIL with the reason; every other test must pass, and every listed one must still fail (so the
list shrinks when the library improves).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import cel
import pytest

TESTDATA = Path(__file__).resolve().parents[3].parent / "shared" / "external-data" / "cel-spec-simple" / "testdata"
FILES = ["basic", "logic", "fp_math", "integer_math", "lists", "macros", "string", "comparisons"]

# ------------------------------------------------------------------------------------------- text-proto reader

_TOKEN = re.compile(r"""
    \s+ | \#[^\n]* |                                   # whitespace and comments (skipped)
    (?P<str>(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')) |
    (?P<punct>[{}\[\]:,;<>]) |
    (?P<word>[-+]?[\w.]+)
""", re.VERBOSE)
_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v",
            "\\": b"\\", "'": b"'", '"': b'"', "?": b"?"}


def _unquote(literal: str) -> bytes:
    body, out, i = literal[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            i += 2
        elif nxt in "xX":
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]).group()
            out.append(int(digits, 16))
            i += 2 + len(digits)
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()
            out.append(int(digits, 8))
            i += 1 + len(digits)
        elif nxt in "uU":
            width = 4 if nxt == "u" else 8
            out += chr(int(body[i + 2:i + 2 + width], 16)).encode()
            i += 2 + width
        else:
            raise ValueError(f"unknown escape \\{nxt}")
    return bytes(out)


def _tokens(text: str) -> list[tuple[str, Any]]:
    found, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"cannot read text proto at {text[pos:pos + 30]!r}")
        pos = m.end()
        if m.group("str") is not None:
            if found and found[-1][0] == "str":  # adjacent literals concatenate
                found[-1] = ("str", found[-1][1] + _unquote(m.group("str")))
            else:
                found.append(("str", _unquote(m.group("str"))))
        elif m.group("punct"):
            found.append(("punct", m.group("punct")))
        elif m.group("word"):
            found.append(("word", m.group("word")))
    return found


def parse_textproto(text: str) -> dict[str, list[Any]]:
    """A message as {field: [values]}; a value is bytes (string literal), str (scalar word) or a nested message."""
    tokens = _tokens(text)
    pos = 0

    def message(closer: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        fields: dict[str, list[Any]] = {}
        while pos < len(tokens):
            kind, value = tokens[pos]
            if kind == "punct" and value == closer:
                pos += 1
                return fields
            if kind == "punct" and value in ",;":
                pos += 1
                continue
            name = value
            pos += 1
            if tokens[pos] == ("punct", ":"):
                pos += 1
            fields.setdefault(name, []).extend(field_values())
        if closer is not None:
            raise ValueError("unterminated message")
        return fields

    def field_values() -> list[Any]:
        nonlocal pos
        kind, value = tokens[pos]
        if kind == "punct" and value == "[":
            pos += 1
            items = []
            while tokens[pos] != ("punct", "]"):
                if tokens[pos] == ("punct", ","):
                    pos += 1
                    continue
                items += field_values()
            pos += 1
            return items
        pos += 1
        if kind == "punct" and value in "{<":
            return [message("}" if value == "{" else ">")]
        return [value]

    return message(None)


# ------------------------------------------------------------------------------------------- expected values


def _one(msg: dict[str, list[Any]], name: str, default: Any = None) -> Any:
    return msg.get(name, [default])[0]


def to_python(value: dict[str, list[Any]]) -> Any:
    """A cel.expr.Value as the Python value the library returns."""
    (kind, [raw]), = value.items()
    if kind in ("int64_value", "uint64_value"):
        return int(raw)
    if kind == "double_value":
        return float(raw)
    if kind == "string_value":
        return raw.decode()
    if kind == "bytes_value":
        return raw
    if kind == "bool_value":
        return raw == "true"
    if kind == "null_value":
        return None
    if kind == "list_value":
        return [to_python(v) for v in raw.get("values", [])]
    if kind == "map_value":
        return {to_python(_one(e, "key")): to_python(_one(e, "value")) for e in raw.get("entries", [])}
    raise Unsupported(f"value kind {kind}")


class Unsupported(Exception):
    """A test needs something this runner does not model (proto messages, types as values)."""


def same(actual: Any, expected: Any) -> bool:
    """Equality that tells bool from int and int from double, and treats NaN as equal to NaN."""
    if isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected):
        return math.isnan(actual)
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected))
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k]) for k in expected)
    return actual == expected


def load_cases() -> list[tuple[str, dict]]:
    cases = []
    for name in FILES:
        parsed = parse_textproto((TESTDATA / f"{name}.textproto").read_text())
        for section in parsed.get("section", []):
            for test in section.get("test", []):
                cases.append((f"{name}/{_one(section, 'name').decode()}/{_one(test, 'name').decode()}", test))
    return cases


def run_case(test: dict) -> tuple[bool, str]:
    """Runs one conformance test through the library: (passed, what happened)."""
    if "container" in test:
        raise Unsupported("needs a proto message container")
    bindings = {}
    for binding in test.get("bindings", []):
        bindings[_one(binding, "key").decode()] = to_python(_one(_one(binding, "value"), "value"))
    expr = _one(test, "expr").decode()
    wants_error = "eval_error" in test
    expected = None if wants_error else to_python(_one(test, "value", {"bool_value": ["true"]}))
    try:
        actual = cel.compile(expr).execute(bindings)
    except Exception as error:  # noqa: BLE001 - any failure is a result to compare
        return wants_error, f"raised {type(error).__name__}: {error}"[:200]
    if wants_error:
        return False, f"expected an error, got {actual!r}"
    return same(actual, expected), f"got {actual!r}, expected {expected!r}"


# Conformance tests the library (common-expression-language 0.10, cel-rust underneath) does not pass.
_PROTO = "needs the conformance proto2/proto3 message types (a container); rules see maps, not messages"
_WRAPPERS = "google.protobuf wrapper, Value and timestamp messages are not enabled in the library's build"
EXPECTED_FAIL: dict[str, str] = {
    **dict.fromkeys([
        "comparisons/eq_literal/not_eq_dyn_proto2_msg_null", "comparisons/eq_literal/not_eq_dyn_proto3_msg_null",
        *(f"comparisons/eq_wrapper/eq_{t}_proto{v}_null"
          for t in ("bool", "bytes", "double", "float", "int32", "int64", "string", "uint32", "uint64")
          for v in (2, 3)),
        "comparisons/eq_wrapper/eq_proto2", "comparisons/eq_wrapper/eq_proto3",
        "comparisons/eq_wrapper/eq_proto2_missing_fields_neq", "comparisons/eq_wrapper/eq_proto3_missing_fields_neq",
        "comparisons/eq_wrapper/eq_proto_nan_equal", "comparisons/eq_wrapper/eq_proto_different_types",
        *(f"comparisons/eq_wrapper/eq_proto{v}_any_unpack_{how}"
          for v in (2, 3)
          for how in ("equal", "not_equal", "bytewise_fallback_not_equal", "bytewise_fallback_equal")),
        "comparisons/ne_literal/ne_proto2", "comparisons/ne_literal/ne_proto3",
        "comparisons/ne_literal/ne_proto2_missing_fields_neq", "comparisons/ne_literal/ne_proto3_missing_fields_neq",
        "comparisons/ne_literal/ne_proto_nan_not_equal", "comparisons/ne_literal/ne_proto_different_types",
        "comparisons/ne_literal/ne_proto2_any_unpack", "comparisons/ne_literal/ne_proto2_any_unpack_bytewise_fallback",
        "comparisons/ne_literal/ne_proto3_any_unpack", "comparisons/ne_literal/ne_proto3_any_unpack_bytewise_fallback",
    ], _PROTO),
    **dict.fromkeys([
        "comparisons/eq_literal/eq_dyn_json_null", "comparisons/eq_literal/not_eq_dyn_timestamp_null",
        *(f"comparisons/eq_wrapper/eq_{t}{suffix}"
          for t in ("bool", "bytes", "double", "float", "int32", "int64", "string", "uint32", "uint64")
          for suffix in ("", "_empty", "_not_null")),
    ], _WRAPPERS),
    "integer_math/int64_math/unary_minus_not_bool": "the library negates a bool (-false is true) instead of failing",
    "integer_math/int64_math/int64_min_negate": "the library wraps -(-2^63) around instead of reporting overflow",
    "lists/index/zero_based_double": "the library refuses a double list index even when it is a whole number",
    "macros/all/list_elem_error_shortcircuit": "all() does not absorb an element's error once another is false",
    "string/size/one_unicode": "size() of a string counts UTF-8 bytes, not code points",
    "string/size/unicode": "size() of a string counts UTF-8 bytes, not code points",
    "comparisons/eq_literal/eq_map_mixed_type_numbers": "map keys 1 and 1u are not treated as equal",
}

CASES = load_cases()


def test_the_conformance_files_are_read_in_full():
    assert len(CASES) > 700
    assert {name.split("/")[0] for name, _ in CASES} == set(FILES)


@pytest.mark.parametrize("name, test", CASES, ids=[name for name, _ in CASES])
def test_cel_conformance(name, test):
    try:
        passed, what = run_case(test)
    except Unsupported as gap:
        passed, what = False, f"unsupported: {gap}"
    if name in EXPECTED_FAIL:
        assert not passed, f"{name} now passes; remove it from EXPECTED_FAIL ({EXPECTED_FAIL[name]})"
    else:
        assert passed, f"{name}: {_one(test, 'expr').decode()!r} {what}"


def test_every_expected_failure_names_a_real_test():
    assert set(EXPECTED_FAIL) <= {name for name, _ in CASES}
