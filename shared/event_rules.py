"""The rules of an event that depend on its type, beside the contract's limits (shared.contract).

The gateway enforces them at ingest; a client that checks events before sending them (`tailor import`) runs the
same code, so it sets aside exactly the rows the gateway would refuse, named by the same field paths, and its
batches are not refused.
"""

from __future__ import annotations

from personalization.common.v1 import common_pb2
from shared.errors import Violations

ITEM_EVENTS = (common_pb2.EVENT_TYPE_PRODUCT_VIEW, common_pb2.EVENT_TYPE_ADD_TO_CART)
_CUSTOM, _PURCHASE, _RETURN = common_pb2.EVENT_TYPE_CUSTOM, common_pb2.EVENT_TYPE_PURCHASE, common_pb2.EVENT_TYPE_RETURN


def type_ok(event: common_pb2.Event) -> bool:
    """Whether the event follows the rules of its type (the fast answer; type_violations says which field not)."""
    kind = event.type
    if kind == _PURCHASE:
        ok = bool(event.line_items)
    elif kind in ITEM_EVENTS:
        ok = bool(event.item_id)
    elif kind == _CUSTOM:
        ok = bool(event.name.strip())
    elif kind == _RETURN:
        lines = event.line_items
        return bool(lines) and not any(line.quantity < 0 for line in lines)
    else:
        ok = True
    return ok and not event.order_id


def type_violations(event: common_pb2.Event, path: str, v: Violations) -> None:
    """Adds a violation, under path (for example events[3]), for every field that breaks its type's rules."""
    kind = event.type
    if kind == _CUSTOM:
        if not event.name.strip():
            v.add(f"{path}.name", "is required for custom events")
    elif kind in ITEM_EVENTS:
        if not event.item_id:
            v.add(f"{path}.item_id", "is required for product views and add-to-cart events")
    elif kind == _PURCHASE and not event.line_items:
        v.add(f"{path}.line_items", "a purchase needs at least one line item")
    elif kind == _RETURN:
        if not event.line_items:
            v.add(f"{path}.line_items", "a return needs at least one line item")
        for j, line in enumerate(event.line_items):
            if line.quantity < 0:  # zero and NaN are the contract's own violations
                v.add(f"{path}.line_items[{j}].quantity", "must be positive in a return: the units returned")
    if event.order_id and kind != _RETURN:
        v.add(f"{path}.order_id", "is read only for EVENT_TYPE_RETURN events")


__all__ = ["ITEM_EVENTS", "type_ok", "type_violations"]
