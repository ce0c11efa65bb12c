"""Paging for every List RPC: one page-size rule and one opaque page-token format.

Page size (AIP-158): 0 means the RPC's default; more than the RPC's declared maximum is lowered to it; a negative size
is INVALID_ARGUMENT naming `page_size`.

Page token: URL-safe base64 (no padding) of an 8-byte digest followed by the JSON list `key`, the keyset position after
which the next page starts (the last row's sort key). The digest covers the tenant of the call, the listing (what is
listed, e.g. `segments` or `members/vip`, with the request's filters when they shape the order) and the key, so a
token that was edited, cut short, or issued for another listing or another tenant is INVALID_ARGUMENT naming
`page_token`, as is a key of the wrong shape. The token is no credential: every query is already confined to the caller's tenant, so the
digest (not keyed) only keeps a client from resuming where it never was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from shared.context import current_tenant
from shared.errors import InvalidArgument, Violations

T = TypeVar("T")

# Types a key may hold: JSON's own, and datetimes (carried as ISO 8601 with their offset).
KeyType = type[str] | type[int] | type[float] | type[datetime]

_DIGEST_BYTES = 8
MAX_TOKEN_CHARS = 2048  # far above any key we issue; a longer one is refused before it is decoded
_BAD_TOKEN = "is not a page token this listing issued"


def page_size(requested: int, default: int = 100, maximum: int = 1000, v: Violations | None = None) -> int:
    """A request's page size: 0 means default, above maximum means maximum. A negative one is INVALID_ARGUMENT on
    page_size: added to v when given (the default is returned), else raised."""
    if requested < 0:
        _refuse(v, "page_size", f"must not be negative (0 means {default}, at most {maximum})")
        return default
    return min(requested, maximum) if requested else default


def _digest(listing: str, key: bytes) -> bytes:
    signed = b"\0".join((current_tenant().encode(), listing.encode("utf-8", "surrogatepass"), key))
    return hashlib.blake2b(signed, digest_size=_DIGEST_BYTES).digest()


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def encode_token(listing: str, key: Sequence[Any]) -> str:
    """The page token that resumes listing after a row with this sort key (str, int, float or aware datetime)."""
    body = json.dumps([_plain(k) for k in key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_digest(listing, body) + body).decode().rstrip("=")


def _typed(value: Any, expected: KeyType) -> Any:
    """value as the expected key type, or a ValueError."""
    if expected is datetime:
        if not isinstance(value, str):
            raise ValueError(value)
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(value)
        return parsed
    if isinstance(value, bool) or not isinstance(value, expected):
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise ValueError(value)
    if isinstance(value, int) and not -(2**63) <= value < 2**63:  # keys are bigint columns at most
        raise ValueError(value)
    return value


def decode_token(token: str, listing: str, shape: Sequence[KeyType], v: Violations | None = None) -> list | None:
    """The sort key inside a page token (typed as shape says), None for the first page. A token this listing did not
    issue for this tenant is INVALID_ARGUMENT on page_token: added to v when given (None is returned), else raised."""
    if not token:
        return None
    try:
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError("too long")
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        digest, body = raw[:_DIGEST_BYTES], raw[_DIGEST_BYTES:]
        if not hmac.compare_digest(digest, _digest(listing, body)):
            raise ValueError("digest")
        key = json.loads(body)
        if not isinstance(key, list) or len(key) != len(shape):
            raise ValueError("shape")
        return [_typed(value, expected) for value, expected in zip(key, shape)]
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        _refuse(v, "page_token", _BAD_TOKEN)
        return None


def next_page(rows: list[T], size: int, listing: str, key: Callable[[T], Sequence[Any]]) -> tuple[list[T], str]:
    """Cuts rows fetched with limit size + 1 to one page; the token resumes after key(last row kept)."""
    if len(rows) <= size:
        return rows, ""
    return rows[:size], encode_token(listing, key(rows[size - 1]))


def _refuse(v: Violations | None, field: str, message: str) -> None:
    if v is None:
        raise InvalidArgument([(field, message)])
    v.add(field, message)
