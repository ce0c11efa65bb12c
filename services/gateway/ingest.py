"""Ingest: validate a batch of events, store it durably in the inbox, acknowledge each event."""

from __future__ import annotations

import re
import time

from personalization.common.v1 import common_pb2
from services.gateway.postgres import GatewayStore
from services.gateway.routing import route_of
from shared.errors import InvalidArgument, Violations

MAX_EVENTS = 10_000
MAX_ID_LENGTH = 128
MAX_VALUE_LENGTH = 512
MAX_FUTURE_SECONDS = 24 * 3600
IDENTITY_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
NAME = IDENTITY_TYPE  # purposes, object types and sources follow the same lowercase-identifier rule
ITEM_EVENTS = (common_pb2.EVENT_TYPE_PRODUCT_VIEW, common_pb2.EVENT_TYPE_ADD_TO_CART)


KNOWN_TYPES = frozenset(common_pb2.EventType.values()) - {common_pb2.EVENT_TYPE_UNSPECIFIED}
_NAMES_SEEN: set[str] = set()  # names already matched against NAME: a few identity types, repeated millions of times


def _is_name(text: str) -> bool:
    if text in _NAMES_SEEN:
        return True
    if not NAME.match(text):
        return False
    if len(_NAMES_SEEN) < 10_000:
        _NAMES_SEEN.add(text)
    return True


def validate_event(event: common_pb2.Event, path: str, v: Violations, now: float) -> None:
    """Adds a violation for every bad field of one event."""
    message_id = event.message_id
    if not message_id.strip():
        v.add(f"{path}.message_id", "must not be empty")
    elif len(message_id) > MAX_ID_LENGTH:
        v.add(f"{path}.message_id", f"must be at most {MAX_ID_LENGTH} characters")
    kind = event.type
    if kind not in KNOWN_TYPES:
        v.add(f"{path}.type", "must be a known event type")
    if kind == common_pb2.EVENT_TYPE_CUSTOM and not event.name.strip():
        v.add(f"{path}.name", "is required for custom events")
    seconds = event.event_time.seconds
    if seconds <= 0:
        v.add(f"{path}.event_time", "is required")
    elif seconds > now + MAX_FUTURE_SECONDS:
        v.add(f"{path}.event_time", "must not be more than a day in the future")
    identities = event.identities
    if not identities:
        v.add(f"{path}.identities", "at least one identity is required")
    for j, identity in enumerate(identities):
        if not _is_name(identity.type):
            v.add(f"{path}.identities[{j}].type", "must match ^[a-z][a-z0-9_]{0,63}$")
        value = identity.value
        if not value.strip():
            v.add(f"{path}.identities[{j}].value", "must not be empty")
        elif len(value) > MAX_VALUE_LENGTH:
            v.add(f"{path}.identities[{j}].value", f"must be at most {MAX_VALUE_LENGTH} characters")
    if kind in ITEM_EVENTS and not event.item_id:
        v.add(f"{path}.item_id", "is required for product views and add-to-cart events")
    if kind == common_pb2.EVENT_TYPE_PURCHASE:
        _check_lines(event.line_items, path, v)
    elif event.line_items:
        _check_lines(event.line_items, path, v)
    if event.source and not _is_name(event.source):
        v.add(f"{path}.source", "must match ^[a-z][a-z0-9_]{0,63}$")
    # Consents and profile objects are rare on behavioural events: look only when there are some.
    if event.consents:
        for j, consent in enumerate(event.consents):
            if not _is_name(consent.purpose):
                v.add(f"{path}.consents[{j}].purpose", "must match ^[a-z][a-z0-9_]{0,63}$")
            if consent.status not in (common_pb2.CONSENT_STATUS_GRANTED, common_pb2.CONSENT_STATUS_DENIED):
                v.add(f"{path}.consents[{j}].status", "must be GRANTED or DENIED")
    if event.profile_objects:
        for j, obj in enumerate(event.profile_objects):
            if not _is_name(obj.type):
                v.add(f"{path}.profile_objects[{j}].type", "must match ^[a-z][a-z0-9_]{0,63}$")
            if not obj.object_id.strip():
                v.add(f"{path}.profile_objects[{j}].object_id", "must not be empty")
            elif len(obj.object_id) > MAX_ID_LENGTH:
                v.add(f"{path}.profile_objects[{j}].object_id", f"must be at most {MAX_ID_LENGTH} characters")


def _check_lines(lines, path: str, v: Violations) -> None:
    if not lines:
        v.add(f"{path}.line_items", "a purchase needs at least one line item")
    for j, line in enumerate(lines):
        if not line.item_id:
            v.add(f"{path}.line_items[{j}].item_id", "must not be empty")
        if line.quantity == 0 or line.quantity != line.quantity:
            v.add(f"{path}.line_items[{j}].quantity", "must be a non-zero number")
        if not line.unit_price >= 0:
            v.add(f"{path}.line_items[{j}].unit_price", "must be zero or more")


def validate_batch(events, field: str = "events") -> None:
    """Raises one InvalidArgument listing every bad field of the batch."""
    v = Violations()
    if not events:
        v.add(field, "at least one event is required")
    elif len(events) > MAX_EVENTS:
        v.add(field, f"at most {MAX_EVENTS} events per message")
    else:
        now = time.time()
        for i, event in enumerate(events):
            validate_event(event, f"{field}[{i}]", v, now)
    v.raise_if_any()


class Ingest:
    """Stores validated events; acknowledged means committed to the inbox."""

    def __init__(self, store: GatewayStore):
        self.store = store

    @staticmethod
    def prepare(events) -> tuple[list[str], list[bytes], list[int]]:
        """Validates a batch (InvalidArgument listing every bad field), serializes it and routes it for the inbox."""
        validate_batch(events)
        return [e.message_id for e in events], [e.SerializeToString() for e in events], [route_of(e) for e in events]

    async def store_prepared(self, tenant_id: str, ids: list[str], payloads: list[bytes], routes: list[int]
                             ) -> list[tuple[str, bool]]:
        """Returns (message_id, stored_now) per event in request order; a repeat within the batch is a duplicate."""
        stored = await self.store.store_events(tenant_id, ids, payloads, routes)
        acks, seen = [], set()
        for message_id in ids:
            fresh = message_id in stored and message_id not in seen
            seen.add(message_id)
            acks.append((message_id, fresh))
        return acks

    async def ingest(self, tenant_id: str, events) -> list[tuple[str, bool]]:
        """prepare, then store_prepared."""
        return await self.store_prepared(tenant_id, *self.prepare(events))


__all__ = ["Ingest", "validate_batch", "InvalidArgument"]
