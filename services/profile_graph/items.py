"""Item catalog rules: the attribute types of item values and the checks of ListItems filters."""

from __future__ import annotations

import re

from services.profile_graph.domain import KEY_RE, OP_CONTAINS, ORDER_OPS, Condition, Item, validate_conditions
from shared.errors import QUOTE_CHARS, Violations, quote, shorten

TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def value_type(value: object) -> str | None:
    """The item attribute type of a JSON value, or None when it is not one of the five supported types."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "timestamp" if TIMESTAMP_RE.match(value) else "string"
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return "string_list"
    return None


def check_item_attributes(items: list[Item], known: dict[str, str]) -> dict[str, str]:
    """Refuses values of no supported type or of another type than the attribute has; returns new attribute types."""
    v = Violations()
    new: dict[str, str] = {}
    for i, item in enumerate(items):
        for key, value in item.attributes.items():
            kind = value_type(value)
            path = f"items[{i}].attributes.{key}"
            if not KEY_RE.match(key):
                path = f"items[{i}].attributes.{shorten(key, QUOTE_CHARS)}"  # a bad key, only as far as a quote
                v.add(path, "attribute names must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$")
            elif kind is None:
                v.add(path, "must be a string, number, bool, RFC 3339 timestamp string or list of strings")
            else:
                expected = known.get(key) or new.get(key)
                if expected is None:
                    new[key] = kind
                elif expected != kind:
                    v.add(path, f"must be a {expected} (the type of {quote(key)} in this catalog), got a {kind}")
    v.raise_if_any()
    return new


def check_item_filters(filters: list[Condition], types: dict[str, str]) -> None:
    """Filters name known attributes with operators and operands fit for their type."""
    v = Violations()
    validate_conditions(v, "filters", filters, item_attributes=True)
    v.raise_if_any()
    for j, c in enumerate(filters):
        kind = types.get(c.field)
        if kind is None:
            v.add(f"filters[{j}].field", f"no item has the attribute {quote(c.field)}")
        elif c.op == OP_CONTAINS and kind != "string_list":
            v.add(f"filters[{j}].operator", f"CONTAINS needs a string list, {quote(c.field)} is a {kind}")
        elif c.op != OP_CONTAINS and kind == "string_list":
            v.add(f"filters[{j}].operator", f"{quote(c.field)} is a string list: only CONTAINS applies")
        elif kind == "number" and (isinstance(c.value, bool) or not isinstance(c.value, (int, float))):
            v.add(f"filters[{j}].value", f"{quote(c.field)} is a number")
        elif kind == "bool" and (not isinstance(c.value, bool) or c.op in ORDER_OPS):
            v.add(f"filters[{j}].value", f"{quote(c.field)} is a bool: compare with EQUALS or NOT_EQUALS and a bool")
        elif kind in ("string", "timestamp", "string_list") and not isinstance(c.value, str):
            v.add(f"filters[{j}].value", f"{quote(c.field)} is a {kind}: the operand must be a string")
        elif kind == "timestamp" and not TIMESTAMP_RE.match(str(c.value)):
            v.add(f"filters[{j}].value", "must be an RFC 3339 timestamp")
    v.raise_if_any()
