"""Errors quote what a caller sent only in a short, cut form."""

from __future__ import annotations

from google.rpc import error_details_pb2, status_pb2

from shared.errors import QUOTE_CHARS, NotFound, quote


def test_quote_keeps_a_short_value_whole_and_cuts_a_long_one_with_an_ellipsis():
    assert quote("home_banner") == "'home_banner'"
    long = "x" * 5000
    quoted = quote(long)
    assert quoted == "'" + "x" * (QUOTE_CHARS - 1) + "…'" and len(quoted) == QUOTE_CHARS + 2


def test_an_errors_metadata_never_carries_a_long_value_whole():
    error = NotFound(f"no recommender named {quote('r' * 900)}", reason="RECOMMENDER_NOT_FOUND",
                     metadata={"name": "r" * 900})
    status = status_pb2.Status.FromString(dict(error.to_status().trailing_metadata)["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.metadata["name"] == "r" * (QUOTE_CHARS - 1) + "…"
    assert "r" * (QUOTE_CHARS + 1) not in status.message


def test_many_long_violations_fit_the_headers_a_client_accepts():
    from shared.errors import InvalidArgument

    error = InvalidArgument([(f"events[{i}].attributes['{'é' * 300}']", "ü" * 300) for i in range(200)])
    status = error.to_status()
    header_bytes = sum(len(k) + len(v) for k, v in status.trailing_metadata)  # details-bin, as gRPC base64s it
    header_bytes = header_bytes * 4 // 3 + len(status.details.encode()) * 3
    assert header_bytes < 8 * 1024
    details = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    bad = error_details_pb2.BadRequest()
    details.details[1].Unpack(bad)
    assert 1 <= len(bad.field_violations) < 26 and bad.field_violations[-1].description.endswith("not listed")
    assert status.details.endswith("…") or len(status.details) < 1000
