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
