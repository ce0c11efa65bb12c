"""Ingest: validate a batch of events, store it durably in the inbox, acknowledge each event.

What an event may carry is the contract's (shared.contract, declared in the protos); this module adds only the
rules that depend on the event type, and the tenant's identity types (learned from the identity service).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import grpc

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gateway_pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from services.gateway.postgres import GatewayStore
from services.gateway.routing import route_of
from shared import contract, metrics
from shared.errors import InvalidArgument, Violations
from shared.event_rules import type_ok, type_violations
from shared.identity_values import normalize_phone
from shared.log import get_logger

log = get_logger("gateway.ingest")

MAX_EVENTS = contract.field_limits(gateway_pb.IngestEventsRequest.DESCRIPTOR, "events").max_items
# The longest item id the contract lets an event carry (other RPCs that name items use the same).
MAX_ID_LENGTH = contract.field_limits(common_pb2.Event.DESCRIPTOR, "item_id").max_length
IDENTITY_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
NAME = IDENTITY_TYPE  # purposes, object types and sources follow the same lowercase-identifier rule
UNKNOWN_TYPE = "unknown identity type: declare it first"
# The event checks without the size of the whole event: ingest measures the serialized bytes it stores anyway.
_EVENT = contract.checker(common_pb2.Event.DESCRIPTOR, check_size=False)
T = TypeVar("T")


class TenantTypes(frozenset):
    """A tenant's identity type names, and the region each phone-normalized type parses national numbers with."""

    phones: dict[str, str]

    @classmethod
    def of(cls, names, phones: dict[str, str]) -> "TenantTypes":
        types = cls(names)
        types.phones = phones
        return types


@lru_cache(maxsize=65_536)
def _phone_problem(value: str, region: str) -> str | None:
    try:
        normalize_phone(value.strip(), region)
    except ValueError as error:
        return str(error)
    return None


def _phones_ok(event: common_pb2.Event, phones: dict[str, str]) -> bool:
    for identity in event.identities:
        kind = identity.type
        if kind in phones and _phone_problem(identity.value, phones[kind]):
            return False
    return True


def validate_event(event: common_pb2.Event, path: str, v: Violations, now: float,
                   known: frozenset[str] | None = None) -> None:
    """Adds a violation for every bad field of one event (the contract's limits, then the event-type rules, then
    what the identity service would refuse: a phone value of a phone type it cannot parse)."""
    if not _EVENT.ok(event, now, known):
        _EVENT.add(event, path, v, now, known)
    phones = getattr(known, "phones", None)
    if phones:
        for j, identity in enumerate(event.identities):
            problem = identity.type in phones and _phone_problem(identity.value, phones[identity.type])
            if problem:
                v.add(f"{path}.identities[{j}].value", problem)
    type_violations(event, path, v)


def validate_batch(events, field: str = "events", known: frozenset[str] | None = None) -> list[bytes]:
    """Raises one InvalidArgument listing every bad field of the batch; returns the serialized events."""
    return _prepare(events, field, known)[1]


# The bad fields of each rejected event of a batch ingested with skip_invalid: {index in the batch: [(path, reason)]}.
Rejections = dict[int, list[tuple[str, str]]]


def _prepare(events, field: str, known: frozenset[str] | None, rejected: Rejections | None = None
             ) -> tuple[list[str], list[bytes], list[int]]:
    """validate_batch, also returning each event's message id and route: one pass over the events (each access to
    a field of a parsed message costs, so every one is read once). With `rejected` (skip_invalid), a bad event is
    left out and its violations go there instead; only a problem of the batch as a whole is raised."""
    v = Violations()
    ids: list[str] = []
    payloads: list[bytes] = []
    routes: list[int] = []
    if not events:
        v.add(field, "at least one event is required")
    elif len(events) > MAX_EVENTS:
        v.add(field, f"at most {MAX_EVENTS:,} events per message")
    else:
        now = time.time()
        ok = _EVENT.ok
        limit = contract.MAX_EVENT_BYTES
        phones = getattr(known, "phones", None)
        for i, event in enumerate(events):
            # Serialized first: its size bounds every Struct's, so small events skip measuring those again.
            payload = event.SerializeToString()
            size = len(payload)
            if (not ok(event, now, known, size) or not type_ok(event) or size > limit
                    or (phones and not _phones_ok(event, phones))):
                bad = Violations() if rejected is not None else v
                validate_event(event, f"{field}[{i}]", bad, now, known)
                if size > limit:
                    bad.add(f"{field}[{i}]", f"must be at most {limit:,} bytes serialized")
                if rejected is not None:
                    if bad.items:
                        rejected[i] = bad.items
                        continue
            if not v.items:  # kept while the batch is still good (a valid event has a first identity)
                payloads.append(payload)
                ids.append(event.message_id)
                routes.append(route_of(event))
    v.raise_if_any()
    return ids, payloads, routes


class IdentityTypes:
    """The identity types each tenant declared, asked of the identity service and kept for ttl seconds.

    A type missing from the cache makes the caller refresh once before refusing, so a type declared a moment ago
    is accepted at once. Ingest does not wait on the identity service: when it cannot be reached, the last types
    known are used, and with none yet the types are checked for their form only (logged), for retry_after seconds.
    """

    def __init__(self, identity_stub, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 timeout: float = 1.0, retry_after: float = 1.0):
        self.identity = identity_stub
        self.ttl = ttl
        self.clock = clock
        self.timeout = timeout
        self.retry_after = retry_after
        self._cache: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._loading: dict[str, asyncio.Future] = {}

    async def known(self, tenant: str) -> frozenset[str] | None:
        """The tenant's types, from the cache while it is fresh (None: unknown for now, check the form only)."""
        cached = self._cache.get(tenant)
        if cached is not None and self.clock() < cached[0]:
            return cached[1]
        return await self.refresh(tenant)

    async def refresh(self, tenant: str) -> frozenset[str] | None:
        """Asks the identity service now (concurrent callers for one tenant share one call)."""
        pending = self._loading.get(tenant)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._loading[tenant] = future
        try:
            try:
                reply = await self.identity.ListIdentityTypes(identity_pb.ListIdentityTypesRequest(),
                                                              timeout=self.timeout)
                types: frozenset[str] | None = TenantTypes.of(
                    (t.name for t in reply.identity_types),
                    {t.name: t.default_region or reply.default_region for t in reply.identity_types
                     if t.normalization == identity_pb.NORMALIZATION_PHONE})
                self._cache[tenant] = (self.clock() + self.ttl, types)
            except grpc.aio.AioRpcError as error:
                stale = self._cache.get(tenant)
                types = stale[1] if stale is not None else None
                self._cache[tenant] = (self.clock() + self.retry_after, types)
                log.warning("identity_types_unavailable", code=error.code().name, using_last_known=types is not None)
            future.set_result(types)
            return types
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters get it, nobody else needs to
            raise
        finally:
            del self._loading[tenant]


async def checked(types: IdentityTypes | None, tenant: str, validate: Callable[[frozenset[str] | None], T],
                  names_unknown: Callable[[T], bool] | None = None) -> T:
    """Runs validate with the tenant's identity types; an unknown type refreshes them once before it is refused
    (raised as a violation, or found in validate's result by names_unknown)."""
    known = None if types is None else await types.known(tenant)
    if types is None or known is None:
        return validate(None)
    try:
        result = validate(known)
    except InvalidArgument as error:
        if not _names_unknown_type(error.violations):
            raise
    else:
        if names_unknown is None or not names_unknown(result):
            return result
    return validate(await types.refresh(tenant))


def _names_unknown_type(violations) -> bool:
    return any(description == UNKNOWN_TYPE for _, description in violations)


class Ingest:
    """Stores validated events; acknowledged means committed to the inbox."""

    def __init__(self, store: GatewayStore, identity_types: IdentityTypes | None = None):
        self.store = store
        self.identity_types = identity_types

    @staticmethod
    def prepare(events, known: frozenset[str] | None = None) -> tuple[list[str], list[bytes], list[int]]:
        """Validates a batch (InvalidArgument listing every bad field), serializes it and routes it for the inbox."""
        return _prepare(events, "events", known)

    async def validate(self, tenant_id: str, events) -> tuple[list[str], list[bytes], list[int]]:
        """prepare, with the tenant's identity types."""
        return await checked(self.identity_types, tenant_id, lambda known: self.prepare(events, known))

    async def store_prepared(self, tenant_id: str, ids: list[str], payloads: list[bytes], routes: list[int],
                             bulk: bool = False) -> list[tuple[str, bool]]:
        """Returns (message_id, stored_now) per event in request order; a repeat within the batch is a duplicate.
        Bulk events (a backfill) are stored in the inbox's bulk lane, which the pipeline applies behind live events."""
        stored = await self.store.store_events(tenant_id, ids, payloads, routes, bulk)
        acks, seen = [], set()
        for message_id in ids:
            fresh = message_id in stored and message_id not in seen
            seen.add(message_id)
            acks.append((message_id, fresh))
        fresh_count = sum(fresh for _, fresh in acks)
        metrics.record_ingested(tenant_id, fresh_count, len(acks) - fresh_count)
        return acks

    async def ingest(self, tenant_id: str, events, bulk: bool = False) -> list[tuple[str, bool]]:
        """validate, then store_prepared."""
        return await self.store_prepared(tenant_id, *await self.validate(tenant_id, events), bulk=bulk)

    async def validate_some(self, tenant_id: str, events) -> tuple[tuple[list[str], list[bytes], list[int]],
                                                                    Rejections]:
        """validate for skip_invalid: the valid events prepared for the inbox, and the violations of each one left
        out, by index (counted as rejected). Only a problem of the batch as a whole raises."""
        def valid(known: frozenset[str] | None) -> tuple[tuple[list[str], list[bytes], list[int]], Rejections]:
            rejected: Rejections = {}
            return _prepare(events, "events", known, rejected), rejected

        prepared, rejected = await checked(
            self.identity_types, tenant_id, valid,
            lambda result: any(_names_unknown_type(r) for r in result[1].values()))
        if rejected:
            metrics.record_rejected(tenant_id, len(rejected))
        return prepared, rejected

    async def ingest_valid(self, tenant_id: str, events, bulk: bool = False
                           ) -> tuple[list[tuple[str, bool]], Rejections]:
        """validate_some, then store_prepared of the valid events: their (message_id, stored_now) in request order
        and the rejections by index."""
        prepared, rejected = await self.validate_some(tenant_id, events)
        return (await self.store_prepared(tenant_id, *prepared, bulk=bulk) if prepared[0] else []), rejected


__all__ = ["Ingest", "IdentityTypes", "validate_batch", "validate_event", "checked", "InvalidArgument"]
