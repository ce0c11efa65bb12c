"""The rules of an event's type (shared.event_rules), which the gateway enforces and `tailor import` checks first."""

from __future__ import annotations

from personalization.common.v1 import common_pb2
from shared.errors import Violations
from shared.event_rules import type_ok, type_violations


def _violations(event: common_pb2.Event) -> list[tuple[str, str]]:
    v = Violations()
    type_violations(event, "events[2]", v)
    return v.items


def test_each_type_rule_names_its_field_and_the_fast_answer_agrees():
    line = common_pb2.LineItem(item_id="s", quantity=1, unit_price=1)
    cases = [
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_CUSTOM, name=" "), ["events[2].name"]),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_PRODUCT_VIEW), ["events[2].item_id"]),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_ADD_TO_CART), ["events[2].item_id"]),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_PURCHASE), ["events[2].line_items"]),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_RETURN), ["events[2].line_items"]),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_RETURN, line_items=[line, common_pb2.LineItem(
            item_id="s", quantity=-2)]), ["events[2].line_items[1].quantity"]),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_PURCHASE, line_items=[line], order_id="o1"),
         ["events[2].order_id"]),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_RETURN, line_items=[line], order_id="o1"), []),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_PURCHASE, line_items=[line]), []),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_PRODUCT_VIEW, item_id="s"), []),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_CUSTOM, name="signup"), []),
        (common_pb2.Event(type=common_pb2.EVENT_TYPE_PAGE_VIEW), []),
    ]
    for event, fields in cases:
        assert [f for f, _ in _violations(event)] == fields, event
        assert type_ok(event) == (not fields), event
