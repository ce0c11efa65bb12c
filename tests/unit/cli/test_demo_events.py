"""Online Retail CSV lines -> catalog items and one PURCHASE event per invoice."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from personalization.common.v1 import common_pb2
from tailor_cli.demo import DATA_PATH, events_from_rows, items_from_rows, read_rows, time_shift, top_customer

CSV = [
    "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country",
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850,United Kingdom",
    "536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,France",
    "C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-2,2010-12-01 09:41:00,2.65,17850,United Kingdom",
    "536380,71053,,3,2010-12-03 10:00:00,0,14688,United Kingdom",
]
NOW = datetime(2030, 1, 10, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def rows():
    return read_rows(CSV)


def test_lines_of_one_invoice_become_one_purchase_with_all_line_items(rows):
    events = events_from_rows(rows, NOW)

    assert [e.message_id for e in events] == ["invoice-536365", "invoice-536366", "invoice-C536379", "invoice-536380"]
    first = events[0]
    assert first.type == common_pb2.EVENT_TYPE_PURCHASE
    assert [(li.item_id, li.quantity, li.unit_price) for li in first.line_items] == [
        ("85123A", 6.0, 2.55), ("71053", 6.0, 3.39)]
    assert [(i.type, i.value) for i in first.identities] == [("customer_id", "17850")]
    assert dict(first.attributes) == {"country": "United Kingdom"}


def test_an_invoice_without_customer_gets_an_anonymous_device_id(rows):
    anonymous = events_from_rows(rows, NOW)[1]
    assert [(i.type, i.value) for i in anonymous.identities] == [("device_id", "anon-536366")]
    assert anonymous.attributes["country"] == "France"


def test_times_are_shifted_by_one_constant_so_the_last_invoice_is_now(rows):
    events = events_from_rows(rows, NOW)
    times = [e.event_time.ToDatetime(tzinfo=timezone.utc) for e in events]

    assert times[-1] == NOW
    assert time_shift(rows, NOW) == NOW - datetime(2010, 12, 3, 10, 0, tzinfo=timezone.utc)
    assert times[0] == NOW - (datetime(2010, 12, 3, 10, 0) - datetime(2010, 12, 1, 8, 26))
    assert times[2] - times[1] == timedelta(hours=1, minutes=13)


def test_a_cancellation_invoice_becomes_a_return_of_the_units_it_lists(rows):
    events = events_from_rows(rows, NOW)
    cancelled = events[2]
    assert cancelled.type == common_pb2.EVENT_TYPE_RETURN and cancelled.order_id == ""
    assert [(li.item_id, li.quantity, li.unit_price) for li in cancelled.line_items] == [("85123A", 2.0, 2.65)]
    assert [e.type for e in events].count(common_pb2.EVENT_TYPE_PURCHASE) == 3


def test_items_take_their_description_as_name_and_the_latest_positive_price(rows):
    items = {item.item_id: item for item in items_from_rows(rows)}

    assert set(items) == {"85123A", "71053", "22633"}
    heart = items["85123A"]
    assert heart.name == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert dict(heart.attributes) == {"price": 2.65, "description": "WHITE HANGING HEART T-LIGHT HOLDER"}
    lantern = items["71053"]  # its last line has no description and a zero price
    assert (lantern.name, lantern.attributes["price"]) == ("WHITE METAL LANTERN", 3.39)


def test_the_demo_customer_is_the_biggest_known_spender(rows):
    assert top_customer(rows) == "17850"


def test_a_csv_without_the_expected_columns_is_refused():
    with pytest.raises(ValueError, match="CustomerID"):
        read_rows(["InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,Country", "1,a,b,1,x,1,UK"])


def test_the_real_demo_file_has_one_event_per_invoice():
    rows = read_rows(DATA_PATH)
    events = events_from_rows(rows, NOW)

    assert len(rows) == 42_481
    assert len(events) == len({r["InvoiceNo"] for r in rows})
    assert sum(len(e.line_items) for e in events) == len(rows)
    assert len({e.message_id for e in events}) == len(events)
    assert max(e.event_time.ToDatetime(tzinfo=timezone.utc) for e in events) == NOW
