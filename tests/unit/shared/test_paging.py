"""shared.paging: the one page-size rule and the one page-token format of every List RPC."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from shared import paging
from shared.context import tenant_var
from shared.errors import InvalidArgument, Violations


def refused(call) -> list[str]:
    with pytest.raises(InvalidArgument) as info:
        call()
    return [field for field, _ in info.value.violations]


def test_page_size_zero_means_the_default_above_the_maximum_means_the_maximum():
    assert paging.page_size(0, 100, 1000) == 100
    assert paging.page_size(7, 100, 1000) == 7
    assert paging.page_size(5000, 100, 1000) == 1000


def test_a_negative_page_size_names_page_size_raised_or_collected():
    assert refused(lambda: paging.page_size(-1)) == ["page_size"]
    v = Violations()
    assert paging.page_size(-5, 100, 1000, v) == 100
    assert [field for field, _ in v.items] == ["page_size"]


def test_a_token_resumes_after_its_key_with_the_types_of_the_shape():
    at = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)
    token = paging.encode_token("api_keys", [at, "k1"])
    assert paging.decode_token(token, "api_keys", (datetime, str)) == [at, "k1"]
    assert paging.decode_token("", "api_keys", (datetime, str)) is None
    assert paging.decode_token(paging.encode_token("changes", [2**40]), "changes", (int,)) == [2**40]


def test_next_page_cuts_the_extra_row_and_names_the_last_kept():
    rows, token = paging.next_page([1, 2, 3], 2, "numbers", lambda n: [n])
    assert rows == [1, 2] and paging.decode_token(token, "numbers", (int,)) == [2]
    assert paging.next_page([1, 2], 2, "numbers", lambda n: [n]) == ([1, 2], "")


def test_a_token_of_another_listing_is_refused():
    token = paging.encode_token("members/vip", ["u1"])
    assert refused(lambda: paging.decode_token(token, "members/other", (str,))) == ["page_token"]
    assert refused(lambda: paging.decode_token(token, "insights", (str,))) == ["page_token"]


def test_a_token_of_another_tenant_is_refused():
    reset = tenant_var.set("acme")
    try:
        token = paging.encode_token("segments", ["s1"])
        assert paging.decode_token(token, "segments", (str,)) == ["s1"]
    finally:
        tenant_var.reset(reset)
    reset = tenant_var.set("globex")
    try:
        assert refused(lambda: paging.decode_token(token, "segments", (str,))) == ["page_token"]
    finally:
        tenant_var.reset(reset)


def test_an_edited_cut_or_made_up_token_is_refused_naming_page_token():
    token = paging.encode_token("segments", ["s1"])
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    edited = base64.urlsafe_b64encode(raw.replace(b"s1", b"s9")).decode().rstrip("=")
    for bad in (edited, token[:-3], "garbage", "!!", "zz", "x" * 5000, token + "\u00e9"):
        assert refused(lambda bad=bad: paging.decode_token(bad, "segments", (str,))) == ["page_token"], bad


def test_a_key_of_the_wrong_shape_is_refused():
    assert refused(lambda: paging.decode_token(paging.encode_token("x", ["a"]), "x", (int,))) == ["page_token"]
    assert refused(lambda: paging.decode_token(paging.encode_token("x", [True]), "x", (int,))) == ["page_token"]
    assert refused(lambda: paging.decode_token(paging.encode_token("x", [1, 2]), "x", (int,))) == ["page_token"]
    assert refused(lambda: paging.decode_token(paging.encode_token("x", [2**70]), "x", (int,))) == ["page_token"]
    naive = paging.encode_token("x", ["2026-12-06T10:30:00"])
    assert refused(lambda: paging.decode_token(naive, "x", (datetime,))) == ["page_token"]


def test_a_bad_token_is_collected_with_the_other_violations():
    v = Violations()
    assert paging.decode_token("garbage", "x", (str,), v) is None
    paging.page_size(-1, v=v)
    assert [field for field, _ in v.items] == ["page_token", "page_size"]
