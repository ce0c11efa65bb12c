"""Opaque page tokens: a JSON list of the last row's sort key, base64-encoded."""

from __future__ import annotations

import base64
import json

from shared.errors import InvalidArgument


def encode_token(key: list) -> str:
    """The page token that resumes after a row with this sort key."""
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode_token(token: str, field: str = "page_token") -> list | None:
    """The sort key inside a page token, None for the first page; a malformed token is INVALID_ARGUMENT."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise InvalidArgument([(field, "is not a token this service issued")]) from None
    if not isinstance(key, list):
        raise InvalidArgument([(field, "is not a token this service issued")])
    return key


def next_page(rows: list, size: int, key) -> tuple[list, str]:
    """Cuts rows fetched with limit size + 1 to one page; the token resumes after key(last row kept)."""
    if len(rows) <= size:
        return rows, ""
    return rows[:size], encode_token(key(rows[size - 1]))


def page_size(requested: int, default: int = 100, maximum: int = 1000) -> int:
    """A request's page_size: 0 means default; outside 0..maximum is INVALID_ARGUMENT on page_size."""
    if not 0 <= requested <= maximum:
        raise InvalidArgument([("page_size", f"must be between 0 (means {default}) and {maximum}")])
    return requested or default
