"""The CSV importer on fakes: mappings, row conversion, field paths back to columns, refused batches, checkpoints."""

from __future__ import annotations

import json

import grpc
import pytest

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gw
from shared.errors import InvalidArgument, Unavailable
from tailor_cli import importer

HEADER = ["email", "cid", "when", "kind", "sku", "qty", "price", "first", "vip"]


def _events_mapping(**constants):
    columns = {"identity.email": "email", "identity.customer_id": "cid", "time": "when", "type": "kind",
               "item_id": "sku", "quantity": "qty", "unit_price": "price", "attribute.first_name": "first",
               "attribute.vip:bool": "vip"}
    return importer.build_mapping("events", HEADER, columns, **constants)


def test_a_purchase_row_becomes_an_event_with_identities_a_line_item_and_typed_attributes():
    converter = importer.RowConverter(_events_mapping())
    event = converter.convert(7, ["a@x.io", "c1", "2026-12-01T10:00:00Z", "purchase", "sku-1", "2", "9.5", "Ann",
                                  "yes"])
    assert event.type == common_pb2.EVENT_TYPE_PURCHASE
    assert [(i.type, i.value) for i in event.identities] == [("email", "a@x.io"), ("customer_id", "c1")]
    assert event.event_time.ToJsonString() == "2026-12-01T10:00:00Z"
    assert [(li.item_id, li.quantity, li.unit_price) for li in event.line_items] == [("sku-1", 2.0, 9.5)]
    assert dict(event.attributes) == {"first_name": "Ann", "vip": True}
    assert event.source == "import" and event.message_id


def test_a_purchase_row_of_negative_units_is_a_return_and_a_return_row_names_its_order():
    # Online Retail's cancellation lines: InvoiceNo C536379, Quantity -2.
    header = ["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "kind", "cancels"]
    columns = {"identity.customer_id": "CustomerID", "time": "InvoiceDate", "item_id": "StockCode",
               "quantity": "Quantity", "unit_price": "UnitPrice", "property.invoice_no": "InvoiceNo",
               "type": "kind", "order_id": "cancels"}
    converter = importer.RowConverter(importer.build_mapping("events", header, columns, event_type="purchase"))
    cancelled = converter.convert(1, ["C536379", "85123A", "-2", "2010-12-01 09:41:00", "2.65", "17850", "", ""])
    assert cancelled.type == common_pb2.EVENT_TYPE_RETURN and cancelled.order_id == ""
    assert [(li.item_id, li.quantity, li.unit_price) for li in cancelled.line_items] == [("85123A", 2.0, 2.65)]
    bought = converter.convert(2, ["536365", "85123A", "6", "2010-12-01 08:26:00", "2.55", "17850", "", "o9"])
    assert bought.type == common_pb2.EVENT_TYPE_PURCHASE and bought.order_id == ""
    returned = converter.convert(3, ["R1", "85123A", "1", "2010-12-02 08:26:00", "2.55", "17850", "return", "o9"])
    assert returned.type == common_pb2.EVENT_TYPE_RETURN and returned.order_id == "o9"
    assert [(li.item_id, li.quantity) for li in returned.line_items] == [("85123A", 1.0)]
    assert converter.column_of([], "order_id") == "cancels"


def test_message_ids_are_stable_for_a_row_and_differ_between_rows():
    converter = importer.RowConverter(_events_mapping())
    row = ["a@x.io", "c1", "1733047200", "page_view", "", "", "", "", ""]
    assert converter.message_id(3, row) == converter.message_id(3, list(row))
    assert converter.message_id(3, row) != converter.message_id(4, row)
    assert converter.message_id(3, row) != converter.message_id(3, row[:-1] + ["no"])


@pytest.mark.parametrize("cells, column", [
    (["a@x.io", "c1", "yesterday", "page_view", "", "", "", "", ""], "when"),
    (["a@x.io", "c1", "2026-12-01", "purchase", "s", "two", "1", "", ""], "qty"),
    (["a@x.io", "c1", "2026-12-01", "page_view", "", "", "", "", "maybe"], "vip"),
    (["a@x.io", "c1", "2026-12-01", "teleport", "", "", "", "", ""], "kind"),
])
def test_a_cell_that_does_not_convert_names_its_column(cells, column):
    with pytest.raises(importer.RowError) as error:
        importer.RowConverter(_events_mapping()).convert(1, cells)
    assert error.value.column == column


def test_field_paths_from_the_gateway_map_back_to_columns():
    converter = importer.RowConverter(_events_mapping())
    row = ["", "c1", "2026-12-01", "purchase", "s", "1", "-1", "Ann", "no"]  # no email: customer_id is identities[0]
    assert converter.column_of(row, "identities[0].value") == "cid"
    assert converter.column_of(row, "line_items[0].unit_price") == "price"
    assert converter.column_of(row, "event_time") == "when"
    assert converter.column_of(row, "attributes.first_name") == "first"
    assert converter.column_of(row, "consents[0].purpose") == ""


def test_without_a_mapping_columns_named_like_keys_are_used():
    mapping = importer.build_mapping("individuals", ["identity.email", "attribute.age:number", "notes"], {})
    assert mapping.identities == [("email", 0)] and mapping.attributes == [("age", "number", 1)]


@pytest.mark.parametrize("kind, columns, message", [
    ("events", {"identity.email": "email"}, "time"),
    ("individuals", {"attribute.first_name": "first"}, "identity"),
    ("items", {"name": "first"}, "item_id"),
    ("events", {"identity.email": "nope"}, "no column"),
    ("events", {"colour": "email"}, "unknown mapping key"),
    ("objects", {"identity.email": "email", "object_id": "sku"}, "--object-type"),
])
def test_a_mapping_that_cannot_work_is_refused_with_the_reason(kind, columns, message):
    with pytest.raises(importer.MappingError, match=message):
        importer.build_mapping(kind, HEADER, columns)


def test_map_flags_are_key_equals_column():
    assert importer.parse_map_flags(["identity.email=E-mail", "time=ts"]) == {"identity.email": "E-mail", "time": "ts"}
    with pytest.raises(importer.MappingError):
        importer.parse_map_flags(["identity.email"])


def test_rows_the_gateway_would_refuse_for_their_type_are_set_aside_before_sending():
    # The type rules are the gateway's own (shared.event_rules): a purchase without an item would have its whole
    # batch refused, so the check names it, as the gateway would, and keeps it out of the batch.
    converter = importer.RowConverter(_events_mapping())
    check = importer.ContractCheck(common_pb2.Event.DESCRIPTOR)
    row = ["a@x.io", "c1", "1733047200", "purchase", "", "2", "9.5", "", ""]
    problems = check.problems(converter.convert(1, row))
    assert problems == [("line_items", "a purchase needs at least one line item")]
    assert converter.column_of(row, "line_items") == "sku"
    assert check.problems(converter.convert(2, ["a@x.io", "c1", "1733047200", "purchase", "s", "2", "9.5", "", ""])) \
        == []


async def test_serialized_rows_are_sent_as_the_request_message_they_make():
    sent = []

    class Channel:
        def unary_unary(self, method, request_serializer, response_deserializer):
            assert method == "/personalization.gateway.v1.GatewayService/IngestEvents" and request_serializer is None

            async def rpc(request, **kwargs):
                sent.append(request)
                return response_deserializer(gw.IngestEventsResponse(acks=[gw.EventAck(message_id="m")])
                                             .SerializeToString())
            return rpc

    events = [common_pb2.Event(message_id="small"), common_pb2.Event(message_id="m" * 100, name="n" * 100),
              common_pb2.Event(message_id="big", name="x" * 20_000)]  # lengths of one, two and three bytes
    call = importer._raw_method(Channel(), gw.DESCRIPTOR.services_by_name["GatewayService"], "IngestEvents",
                                "events", gw.IngestEventsResponse)
    reply = await call([e.SerializeToString() for e in events], timeout=1)
    assert gw.IngestEventsRequest.FromString(sent[0]) == gw.IngestEventsRequest(events=events)
    assert [a.message_id for a in reply.acks] == ["m"]


def _refusal(violations):
    status = InvalidArgument(violations).to_status()
    return grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata),
                                details=status.details)


async def test_a_refused_batch_is_sent_again_without_the_rows_its_violations_name():
    calls = []

    async def call(messages):
        calls.append([m.message_id for m in messages])
        if len(calls) == 1:
            raise _refusal([("events[1].identities[0].value", "must not be empty"),
                            ("events[3].event_time", "must not be more than a day in the future")])
        return gw.IngestEventsResponse(acks=[gw.EventAck(message_id=m.message_id, status=gw.ACK_STATUS_STORED)
                                             for m in messages])

    entries = [(n, [f"r{n}"], common_pb2.Event(message_id=f"m{n}")) for n in range(10, 15)]
    reply, rejected = await importer.send_with_rejections(call, entries, lambda row, path: row[0] + ":" + path)
    assert calls == [["m10", "m11", "m12", "m13", "m14"], ["m10", "m12", "m14"]]
    assert len(reply.acks) == 3
    assert [(r.row, r.column, r.field) for r in rejected] == [(11, "r11:identities[0].value", "identities[0].value"),
                                                              (13, "r13:event_time", "event_time")]


async def test_a_refusal_naming_no_row_stops_the_import():
    async def call(messages):
        raise _refusal([("events", "at most 10000 events per message")])

    with pytest.raises(importer.ImportFailed, match="INVALID_ARGUMENT"):
        await importer.send_with_rejections(call, [(1, ["x"], common_pb2.Event())], lambda row, path: "")


async def test_an_unavailable_gateway_is_retried_then_gives_up():
    tries = []

    async def call(messages):
        tries.append(1)
        status = Unavailable("down").to_status()
        raise grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata),
                                   details=status.details)

    with pytest.raises(importer.ImportFailed, match="UNAVAILABLE"):
        await importer.send_with_rejections(call, [(1, ["x"], common_pb2.Event())], lambda row, path: "",
                                            attempts=2)
    assert len(tries) == 2


def test_a_checkpoint_of_another_mapping_is_not_resumed(tmp_path):
    path = tmp_path / "f.csv.checkpoint.json"
    importer.Checkpoint(path, {"file": "f.csv", "kind": "events", "mapping": "a"}, rows_done=100).save()
    assert importer.Checkpoint.open(path, {"file": "f.csv", "kind": "events", "mapping": "a"}, False).rows_done == 100
    with pytest.raises(importer.MappingError, match="--restart"):
        importer.Checkpoint.open(path, {"file": "f.csv", "kind": "events", "mapping": "b"}, False)
    assert importer.Checkpoint.open(path, {"kind": "x"}, True).rows_done == 0
    assert json.loads(path.read_text())["rows_done"] == 100


def test_the_report_is_cut_back_to_what_the_checkpoint_covers(tmp_path):
    path = tmp_path / "rejected.csv"
    report = importer.Report(path, 0)
    covered = report.write([importer.Rejected(3, "price", "line_items[0].unit_price", "must be positive")])
    report.write([importer.Rejected(9, "when", "", "not a time")])
    report.close()
    importer.Report(path, covered).close()
    assert path.read_text().splitlines() == ["row,column,field,reason",
                                             "3,price,line_items[0].unit_price,must be positive"]


def test_rows_are_counted_from_the_file_without_the_header(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    assert importer.count_rows(path) == 2
    path.write_text("a,b\n1,2\n3,4")
    assert importer.count_rows(path) == 2
