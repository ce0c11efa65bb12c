"""google.protobuf.Struct and Value as plain Python, the one converter every service uses (json_format's
MessageToDict gives the same values and is several times slower)."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2


def value_to_py(value: struct_pb2.Value) -> Any:
    """A Value as plain Python: numbers are floats (as in JSON), null and an unset value are None."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_py(item) for item in value.list_value.values]
    return None if kind in (None, "null_value") else getattr(value, kind)


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict."""
    return {key: value_to_py(value) for key, value in struct.fields.items()}
