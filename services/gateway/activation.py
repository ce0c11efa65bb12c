"""Activation: destinations and activations per tenant, and the loop that pushes rows to them.

What is pushed is found from the profile graph's membership change feed (ListMembershipChanges, after a cursor
kept per activation), checked against what this activation last queued (`activation_state`); every
`TAILOR_GATEWAY_ACTIVATION_RECONCILE_SECONDS` (and on the first pass) the whole segment is compared instead, which
also repairs anything a feed read could miss. Attributes and insights are compared by hash on every pass; batch
outputs are read after a per-job cursor.
The changes are written as deliveries (an outbox) in the same transaction that advances that state; the leader
then sends each delivery, in order, until it succeeds, always under the same delivery id (at least once, receivers
deduplicate). A permanent failure (a 4xx, a refused URL) halts the activation, in order, until its destination or
the activation itself is upserted again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import field_mask_pb2, json_format

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from services.gateway.activation_store import ActivationRow, ActivationStore, DeliveryRow
from services.gateway.destinations import (
    ALLOWED_NETWORKS_SETTING,
    DeliveryError,
    FileSink,
    Network,
    Resolver,
    UrlPolicy,
    WebhookSender,
    check_url,
    default_export_root,
    directory_problem,
    parse_networks,
    system_resolve,
)
from services.gateway.ports import ProfilePort
from shared import context as ctx
from shared import db, paging
from shared.errors import FailedPrecondition, NotFound, Violations, quote, shorten
from shared.leader import lead
from shared.log import get_logger
from shared.paging import decode_token, next_page
from shared.settings import env_float, env_int, env_str

log = get_logger("gateway.activation")

LEADER_LOCK = "tailor-activation-leader"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
ATTRIBUTE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# A destination's field name: letters, digits and _ . - (what webhook JSON keys and CSV headers carry safely).
MAPPED_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
MAX_MAPPED_FIELDS = 200
DEFAULT_BATCH_SIZE = 100
FEED_PAGE = 10_000          # membership changes per ListMembershipChanges call (its maximum)
PROFILES_PER_CALL = 1_000   # individuals per GetProfiles call
MAX_BATCH_SIZE = 10_000
SEGMENT_COLUMNS = ["unified_individual_id", "segment", "member"]
BATCH_COLUMNS = ["individual_id", "unified_individual_id", "segment_id", "point_id", "point_name", "decision_id",
                 "batch_job_id", "personalization_id", "payload", "updated_time"]
DEFAULT_KEYS = {"segment_membership": ["unified_individual_id", "segment"],
                "attributes": ["unified_individual_id"],
                "batch_output": ["unified_individual_id", "point_name"]}
FORMATS = {pb.FILE_FORMAT_JSONL: "jsonl", pb.FILE_FORMAT_CSV: "csv"}


@dataclass(frozen=True)
class ActivationSettings:
    """Activation settings, read once from the environment."""

    interval_seconds: float = 5.0
    export_root: Path | None = None
    concurrency: int = 16
    webhook_attempts: int = 4
    webhook_timeout_seconds: float = 10.0
    retry_max_seconds: float = 300.0
    retention_hours: float = 168.0
    webhook_allowed_networks: tuple[Network, ...] = ()
    reconcile_seconds: float = 3600.0

    @classmethod
    def from_env(cls) -> ActivationSettings:
        return cls(
            interval_seconds=env_float("TAILOR_GATEWAY_ACTIVATION_INTERVAL_SECONDS", 5.0, minimum=0.01),
            export_root=default_export_root(),
            concurrency=env_int("TAILOR_GATEWAY_ACTIVATION_CONCURRENCY", 16, minimum=1, maximum=256),
            webhook_attempts=env_int("TAILOR_GATEWAY_WEBHOOK_ATTEMPTS", 4, minimum=1, maximum=20),
            webhook_timeout_seconds=env_float("TAILOR_GATEWAY_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            retry_max_seconds=env_float("TAILOR_GATEWAY_DELIVERY_RETRY_MAX_SECONDS", 300.0, minimum=0.01),
            retention_hours=env_float("TAILOR_GATEWAY_DELIVERY_RETENTION_HOURS", 168.0, minimum=0.0),
            webhook_allowed_networks=parse_networks(env_str(ALLOWED_NETWORKS_SETTING, "")),
            reconcile_seconds=env_float("TAILOR_GATEWAY_ACTIVATION_RECONCILE_SECONDS", 3600.0, minimum=0.0),
        )


# Pure rules (unit-tested without a database).

def membership_changes(current: set[str], delivered: dict[str, bool]) -> tuple[list[str], list[str]]:
    """(entries, exits): members not delivered as members yet, and delivered members no longer in the segment."""
    entries = sorted(uid for uid in current if not delivered.get(uid, False))
    exits = sorted(uid for uid, member in delivered.items() if member and uid not in current)
    return entries, exits


def feed_changes(changes: list[tuple[str, bool]], delivered: dict[str, bool], allowed: set[str] | None
                 ) -> tuple[list[str], list[str]]:
    """(entries, exits) from feed changes in order (the last change of an individual wins) against what was
    delivered; `allowed` (consent) bars entries of the others and makes delivered members outside it exit."""
    latest = dict(changes)
    entries = sorted(uid for uid, entered in latest.items()
                     if entered and not delivered.get(uid, False) and (allowed is None or uid in allowed))
    exits = {uid for uid, entered in latest.items() if not entered and delivered.get(uid, False)}
    if allowed is not None:
        exits |= {uid for uid, member in delivered.items() if member and uid not in allowed}
    return entries, sorted(exits)


def mapped(rows: list[dict], mapping: dict[str, str]) -> list[dict]:
    """Rows with their fields renamed to the destination's names (unmapped fields keep theirs)."""
    if not mapping:
        return rows
    return [{mapping.get(k, k): v for k, v in row.items()} for row in rows]


def chunks(rows: list, size: int) -> list[list]:
    """Rows cut into consecutive batches of at most size."""
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def attributes_hash(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def source_of(activation: pb.Activation) -> str:
    return activation.WhichOneof("source") or ""


def columns_of(activation: pb.Activation) -> list[str]:
    """The fields of every row the activation sends, in file-column order."""
    source = source_of(activation)
    if source == "segment_membership":
        return list(SEGMENT_COLUMNS)
    if source == "attributes":
        return ["unified_individual_id", "segment", *activation.attributes.attributes,
                *activation.attributes.insights]
    return list(BATCH_COLUMNS)


def primary_key_of(activation: pb.Activation) -> list[str]:
    return list(activation.primary_key) or list(DEFAULT_KEYS.get(source_of(activation), []))


def batch_size_of(destination: pb.Destination) -> int:
    return destination.batch_size or DEFAULT_BATCH_SIZE


def public_destination(destination: pb.Destination) -> pb.Destination:
    """The destination as returned to callers: never with its secret."""
    out = pb.Destination()
    out.CopyFrom(destination)
    if out.HasField("webhook"):
        out.webhook.secret = ""
    return out


def validate_destination(d: pb.Destination) -> Violations:
    """Field violations of a destination, except the URL policy (which needs DNS) and the secret (needs storage)."""
    v = Violations()
    if not NAME_PATTERN.match(d.name):
        v.add("destination.name", "must be a lowercase identifier matching ^[a-z][a-z0-9_]{0,62}$")
    kind = d.WhichOneof("kind")
    if kind is None:
        v.add("destination.kind", "a webhook or a file destination is required")
    elif kind == "file":
        problem = directory_problem(d.file.directory)
        if problem is not None:
            v.add("destination.file.directory", problem)
        if d.file.format not in FORMATS:
            v.add("destination.file.format", "must be FILE_FORMAT_JSONL or FILE_FORMAT_CSV")
    if not 0 <= d.batch_size <= MAX_BATCH_SIZE:
        v.add("destination.batch_size", f"must be between 0 (means {DEFAULT_BATCH_SIZE}) and {MAX_BATCH_SIZE}")
    return v


def validate_activation(a: pb.Activation) -> Violations:
    """Field violations of an activation; existence of its destination, segment or schedule is checked after."""
    v = Violations()
    if not NAME_PATTERN.match(a.name):
        v.add("activation.name", "must be a lowercase identifier matching ^[a-z][a-z0-9_]{0,62}$")
    if not a.destination:
        v.add("activation.destination", "must name a destination")
    source = source_of(a)
    if not source:
        v.add("activation.source", "one of segment_membership, attributes or batch_output is required")
    elif source == "segment_membership" and not a.segment_membership.segment:
        v.add("activation.segment_membership.segment", "must name a segment")
    elif source == "attributes":
        if not a.attributes.segment:
            v.add("activation.attributes.segment", "must name a segment")
        if not a.attributes.attributes and not a.attributes.insights:
            v.add("activation.attributes.attributes", "at least one attribute or insight name is required")
        seen: set[str] = set()
        for group, names in (("attributes", a.attributes.attributes), ("insights", a.attributes.insights)):
            for i, name in enumerate(names):
                if not ATTRIBUTE_PATTERN.match(name):
                    v.add(f"activation.attributes.{group}[{i}]", f"must be an {group[:-1]} name")
                elif name in ("unified_individual_id", "segment") or name in seen:
                    v.add(f"activation.attributes.{group}[{i}]",
                          f"{quote(name)} is repeated or a reserved row field")
                seen.add(name)
    elif source == "batch_output" and not a.batch_output.schedule_name:
        v.add("activation.batch_output.schedule_name", "must name a batch schedule")
    if a.consent_purpose and not NAME_PATTERN.match(a.consent_purpose):
        v.add("activation.consent_purpose", "must be a lowercase identifier matching ^[a-z][a-z0-9_]{0,62}$")
    if source:
        columns = columns_of(a)
        seen = set()
        for i, key in enumerate(a.primary_key):
            if key not in columns:
                v.add(f"activation.primary_key[{i}]",
                      f"{quote(key)} is not a row field; one of {', '.join(columns)}")
            elif key in seen:
                v.add(f"activation.primary_key[{i}]", f"{quote(key)} is repeated")
            seen.add(key)
        if len(a.field_mapping) > MAX_MAPPED_FIELDS:
            v.add("activation.field_mapping", f"at most {MAX_MAPPED_FIELDS} fields can be renamed")
        targets: dict[str, str] = {}
        for field, target in sorted(a.field_mapping.items()):
            path = f"activation.field_mapping[{quote(field)}]"
            if field not in columns:
                v.add(path, f"{quote(field)} is not a row field; one of {', '.join(columns)}")
            elif not MAPPED_PATTERN.match(target):
                v.add(path, "must be a field name matching ^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
            elif target in targets.values() or (target in columns and target not in a.field_mapping):
                v.add(path, f"{quote(target)} would name two fields of a row")
            targets[field] = target
    return v


def _after(token: str, listing: str) -> str:
    key = decode_token(token, listing, (str,))
    return key[0] if key else ""


class Activations:
    """Destinations and activations of each tenant, and the background delivery loop (one leader per database)."""

    def __init__(self, pool: asyncpg.Pool, profile_graph: ProfilePort, *, settings: ActivationSettings | None = None,
                 sender: WebhookSender | None = None, sink: FileSink | None = None,
                 resolve: Resolver = system_resolve):
        self.settings = settings or ActivationSettings.from_env()
        self.store = ActivationStore(pool)
        self.pool = pool
        self.profile = profile_graph
        self.policy = UrlPolicy(self.settings.webhook_allowed_networks, resolve)
        self.sender = sender or WebhookSender(attempts=self.settings.webhook_attempts,
                                              timeout=self.settings.webhook_timeout_seconds)
        self.sink = sink or FileSink(self.settings.export_root)
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(self.settings.concurrency)
        # One pass at a time in this process: two passes over one activation would read the same cursor and state
        # and queue the same rows twice (the leader's and one asked for directly, as tests and tools do).
        self._pass = asyncio.Lock()
        self._cycles = 0

    async def close(self) -> None:
        await self.sender.close()

    # RPC use cases.

    async def upsert_destination(self, tenant_id: str, destination: pb.Destination) -> pb.Destination:
        """Creates or replaces a destination; INVALID_ARGUMENT per bad field (a refused URL included)."""
        d = pb.Destination()
        d.CopyFrom(destination)
        violations = validate_destination(d)
        if d.HasField("webhook"):
            if not d.webhook.url:
                violations.add("destination.webhook.url", "must not be empty")
            else:
                problem = await check_url(d.webhook.url, self.policy)
                if problem is not None:
                    violations.add("destination.webhook.url", problem)
            # Deprecated and ignored: only the operator's allowed networks open private targets.
            d.webhook.allow_private_network = False
            if not d.webhook.secret:
                existing = await self.store.get_destination(tenant_id, d.name) if NAME_PATTERN.match(d.name) else None
                if existing is not None and existing.HasField("webhook") and existing.webhook.secret:
                    d.webhook.secret = existing.webhook.secret   # write-only: a replace may leave it out
                else:
                    violations.add("destination.webhook.secret", "is required when the webhook is created")
            elif len(d.webhook.secret) < 16:
                violations.add("destination.webhook.secret", "must be at least 16 characters")
        violations.raise_if_any()
        d.batch_size = batch_size_of(d)
        d.paused = False  # output only: the stored flag is kept (SetDestinationPaused changes it)
        await self.store.save_destination(tenant_id, d)
        self._wake.set()
        stored = await self.store.get_destination(tenant_id, d.name)
        return public_destination(stored if stored is not None else d)

    async def list_destinations(self, tenant_id: str, page_size: int, page_token: str
                                ) -> tuple[list[pb.Destination], str]:
        size = paging.page_size(page_size)
        rows, token = next_page(await self.store.list_destinations(tenant_id, _after(page_token, "destinations"),
                                                                   size + 1), size, "destinations", lambda d: [d.name])
        return [public_destination(d) for d in rows], token

    async def upsert_activation(self, tenant_id: str, activation: pb.Activation) -> pb.Activation:
        """Creates or replaces an activation; NOT_FOUND for an unknown destination, segment or schedule."""
        a = pb.Activation()
        a.CopyFrom(activation)
        a.ClearField("status")
        a.paused = False  # output only: the stored flag is kept (SetActivationPaused changes it)
        validate_activation(a).raise_if_any()
        if await self.store.get_destination(tenant_id, a.destination) is None:
            raise NotFound(f"destination {quote(a.destination)} does not exist",
                           reason="DESTINATION_NOT_FOUND", metadata={"destination": a.destination})
        source = source_of(a)
        if source == "batch_output":
            if not await self.store.schedule_exists(tenant_id, a.batch_output.schedule_name):
                name = shorten(a.batch_output.schedule_name, 64)
                raise NotFound(f"batch schedule {quote(name)} does not exist", reason="BATCH_SCHEDULE_NOT_FOUND",
                               metadata={"schedule_name": name})
        else:
            await self._check_segment(tenant_id, self._segment_of(a))
        previous = await self.store.get_activation(tenant_id, a.name)
        reset = previous is not None and (
            previous.destination != a.destination or list(previous.primary_key) != list(a.primary_key)
            or dict(previous.field_mapping) != dict(a.field_mapping)
            or previous.WhichOneof("source") != source
            or getattr(previous, source).SerializeToString() != getattr(a, source).SerializeToString())
        await self.store.save_activation(tenant_id, a, reset)
        self._wake.set()
        listed = await self.store.list_activations(tenant_id, "", 1, only=a.name)
        return listed[0] if listed else a

    async def list_activations(self, tenant_id: str, page_size: int, page_token: str
                               ) -> tuple[list[pb.Activation], str]:
        size = paging.page_size(page_size)
        return next_page(await self.store.list_activations(tenant_id, _after(page_token, "activations"), size + 1),
                         size, "activations", lambda a: [a.name])

    async def delete_destination(self, tenant_id: str, name: str) -> None:
        """Deletes a destination; NOT_FOUND if unknown, FAILED_PRECONDITION while an activation sends to it."""
        users = await self.store.delete_destination(tenant_id, name)
        if users is None:
            raise _not_found("destination", name)
        if users:
            raise FailedPrecondition(
                f"destination {quote(name)} is used by {users} activation(s); delete or move them first",
                reason="DESTINATION_IN_USE", metadata={"destination": shorten(name, 64), "activations": str(users)})

    async def set_destination_paused(self, tenant_id: str, name: str, paused: bool) -> pb.Destination:
        if not await self.store.set_destination_paused(tenant_id, name, paused):
            raise _not_found("destination", name)
        self._wake.set()
        stored = await self.store.get_destination(tenant_id, name)
        return public_destination(stored) if stored is not None else pb.Destination(name=name, paused=paused)

    async def delete_activation(self, tenant_id: str, name: str) -> int:
        """Deletes an activation with its state and deliveries; returns how many were still undelivered."""
        dropped = await self.store.delete_activation(tenant_id, name)
        if dropped is None:
            raise _not_found("activation", name)
        return dropped

    async def set_activation_paused(self, tenant_id: str, name: str, paused: bool) -> pb.Activation:
        if not await self.store.set_activation_paused(tenant_id, name, paused):
            raise _not_found("activation", name)
        self._wake.set()
        listed = await self.store.list_activations(tenant_id, "", 1, only=name)
        return listed[0] if listed else pb.Activation(name=name, paused=paused)

    async def list_deliveries(self, tenant_id: str, activation: str, state: int, page_size: int, page_token: str
                              ) -> tuple[list[pb.Delivery], str]:
        """An activation's deliveries, newest first; NOT_FOUND for an unknown activation."""
        v = Violations()
        if state not in pb.DeliveryState.values():
            v.add("state", "must be a DeliveryState")
        listing = f"deliveries/{activation}/{state}"
        size = paging.page_size(page_size, 100, 1000, v)
        key = decode_token(page_token, listing, (int,), v)
        v.raise_if_any()
        if await self.store.get_activation(tenant_id, activation) is None:
            raise _not_found("activation", activation)
        wanted = "" if state == pb.DELIVERY_STATE_UNSPECIFIED else pb.DeliveryState.Name(state).removeprefix(
            "DELIVERY_STATE_")
        rows = await self.store.list_deliveries(tenant_id, activation, wanted, key[0] if key else None, size + 1)
        page, token = next_page(rows, size, listing, lambda r: [r[0]])
        return [d for _, d in page], token

    @staticmethod
    def _segment_of(a: pb.Activation) -> str:
        return a.segment_membership.segment if source_of(a) == "segment_membership" else a.attributes.segment

    async def _check_segment(self, tenant_id: str, segment: str) -> None:
        ctx.tenant_var.set(tenant_id)
        try:
            await self.profile.ListSegmentMembers(
                profile_pb.ListSegmentMembersRequest(segment=segment, page_size=1))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"segment {quote(segment)} does not exist", reason="SEGMENT_NOT_FOUND",
                               metadata={"segment": segment}) from None
            raise

    # The delivery loop.

    async def run(self) -> None:
        """Runs until cancelled: one leader per database refreshes and delivers every interval (or when woken)."""
        async def step() -> bool:
            await self.run_once()
            return False

        await lead(self.pool, LEADER_LOCK, step, idle_seconds=self.settings.interval_seconds, wake=self._wake)

    async def run_once(self, tenant_id: str | None = None) -> None:
        """One pass: every activation (of one tenant, or all) is refreshed, then its due deliveries are sent."""
        async with self._pass:
            with db.all_tenants():  # the pass spans tenants; each activation's own work runs in its tenant alone
                activations = await self.store.all_activations(tenant_id, self.settings.reconcile_seconds)
                await asyncio.gather(*(self._cycle(row) for row in activations))
                self._cycles += 1
                if self._cycles % 100 == 1:
                    await self.store.prune(self.settings.retention_hours)

    async def _cycle(self, row: ActivationRow) -> None:
        async with self._limit:
            _bind(row.tenant_id)
            with db.one_tenant():  # this activation's rows are its tenant's alone
                await self._cycle_bound(row)

    async def _cycle_bound(self, row: ActivationRow) -> None:
        if row.paused:
            return  # neither refreshed nor delivered; a resume catches up from the feed cursor and the state
        destination = row.destination  # read with the activation, in the pass's one query
        if destination is None:
            await self.store.record_error(row.tenant_id, row.name, "destination does not exist")
            return
        try:
            await self.refresh(row, batch_size_of(destination))
        except Exception as error:  # noqa: BLE001 - one activation must not stop the others
            message = (f"{error.code().name}: {error.details()}" if isinstance(error, grpc.aio.AioRpcError)
                       else repr(error))
            log.warning("activation_refresh_failed", activation=row.name, error=message)
            await self.store.record_error(row.tenant_id, row.name, f"refresh: {message}")
        if destination.paused:
            return  # deliveries keep being queued; they are sent, in order, once the destination is resumed
        try:
            await self.deliver(row, destination)
        except Exception as error:
            log.exception("activation_deliver_failed", activation=row.name)
            await self.store.record_error(row.tenant_id, row.name, f"deliver: {error!r}")

    async def refresh(self, row: ActivationRow, batch_size: int) -> int:
        """Finds what changed since the last refresh and queues it as deliveries; returns the rows queued."""
        source = source_of(row.config)
        if source == "segment_membership":
            return await self._refresh_membership(row, batch_size)
        if source == "attributes":
            return await self._refresh_attributes(row, batch_size)
        if source == "batch_output":
            return await self._refresh_batch_output(row, batch_size)
        return 0

    async def _all_members(self, segment: str) -> set[str]:
        members: set[str] = set()
        token = ""
        while True:
            reply = await self.profile.ListSegmentMembers(profile_pb.ListSegmentMembersRequest(
                segment=segment, page_size=10_000, page_token=token))
            members.update(m.unified_individual_id for m in reply.members)
            token = reply.next_page_token
            if not token:
                return members

    async def _consenting(self, ids: set[str], purpose: str) -> set[str]:
        """Those of ids who granted the consent purpose (read now, so a withdrawal counts on the next pass)."""
        granted: set[str] = set()
        ordered = sorted(ids)
        for start in range(0, len(ordered), 1000):
            chunk = ordered[start:start + 1000]
            reply = await self.profile.GetProfiles(profile_pb.GetProfilesRequest(
                unified_individual_ids=chunk, read_mask=field_mask_pb2.FieldMask(paths=["consents"])))
            granted.update(uid for uid, profile in zip(chunk, reply.profiles) if any(
                c.purpose == purpose and c.status == common_pb2.CONSENT_STATUS_GRANTED for c in profile.consents))
        return granted

    async def _members(self, segment: str, purpose: str = "") -> set[str]:
        """The segment's members; with a consent purpose, only those who granted it (the others are skipped, and
        one who withdraws leaves, as an exit)."""
        members = await self._all_members(segment)
        return await self._consenting(members, purpose) if purpose else members

    async def _feed(self, segment: str, token: str) -> tuple[list[tuple[str, bool]], str]:
        """The segment's membership changes after the cursor `token`, in order, and the cursor after the last."""
        changes: list[tuple[str, bool]] = []
        while True:
            reply = await self.profile.ListMembershipChanges(profile_pb.ListMembershipChangesRequest(
                segment=segment, page_size=FEED_PAGE, page_token=token))
            changes += [(c.unified_individual_id, c.entered) for c in reply.changes]
            if reply.next_page_token:
                token = reply.next_page_token
            if len(reply.changes) < FEED_PAGE:
                return changes, token

    async def _refresh_membership(self, row: ActivationRow, batch_size: int) -> int:
        """From the change feed after the activation's cursor; the whole segment when a reconciliation is due (the
        cursor is read to the end first, so no change after the comparison is skipped)."""
        segment = row.config.segment_membership.segment
        purpose = row.config.consent_purpose
        try:
            changes, token = await self._feed(segment, row.feed_token)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT or not row.feed_token:
                raise
            # A cursor the feed no longer accepts (one issued before its format changed): read the feed from its
            # start and compare the whole segment, as on a first pass.
            row = replace(row, feed_token="", reconcile_due=True)
            changes, token = await self._feed(segment, "")
        if row.reconcile_due:
            current = await self._members(segment, purpose)
            state = await self.store.load_state(row.tenant_id, row.name)
            entries, exits = membership_changes(current, {uid: member for uid, (member, _) in state.items()})
        else:
            delivered = set(await self.store.delivered_members(row.tenant_id, row.name)) if purpose else set()
            touched = sorted({uid for uid, _ in changes})
            state = await self.store.load_state(row.tenant_id, row.name, touched)
            known = {uid: member for uid, (member, _) in state.items()} | {uid: True for uid in delivered}
            allowed = await self._consenting(delivered | {u for u, e in changes if e}, purpose) if purpose else None
            entries, exits = feed_changes(changes, known, allowed)
        rows = ([{"unified_individual_id": uid, "segment": segment, "member": True} for uid in entries]
                + [{"unified_individual_id": uid, "segment": segment, "member": False} for uid in exits])
        upserts = [(uid, True, "") for uid in entries] + [(uid, False, "") for uid in exits]
        if rows or token != row.feed_token or row.reconcile_due:
            await self.store.commit(row.tenant_id, row.name, row.generation, _deliveries(rows, batch_size), upserts,
                                    feed_token=token, reconciled=row.reconcile_due)
        return len(rows)

    async def _values(self, ids: list[str], names: list[str], insights: list[str]) -> list[dict]:
        """Per individual, the named attributes and insights (None where a person has none), 1,000 per call."""
        paths = (["attributes"] if names else []) + (["insights"] if insights else [])
        out: list[dict] = []
        for start in range(0, len(ids), PROFILES_PER_CALL):
            reply = await self.profile.GetProfiles(profile_pb.GetProfilesRequest(
                unified_individual_ids=ids[start:start + PROFILES_PER_CALL],
                read_mask=field_mask_pb2.FieldMask(paths=paths)))
            for profile in reply.profiles:
                values = json_format.MessageToDict(profile.attributes) if names else {}
                row = {name: values.get(name) for name in names}
                row |= {name: profile.insights[name] if name in profile.insights else None for name in insights}
                out.append(row)
        return out

    async def _refresh_attributes(self, row: ActivationRow, batch_size: int) -> int:
        segment = row.config.attributes.segment
        names = list(row.config.attributes.attributes)
        current = sorted(await self._members(segment, row.config.consent_purpose))
        state = await self.store.load_state(row.tenant_id, row.name)
        values = await self._values(current, names, list(row.config.attributes.insights))
        rows, upserts = [], []
        for uid, attrs in zip(current, values):
            digest = attributes_hash(attrs)
            known = state.get(uid)
            if known is None or not known[0] or known[1] != digest:
                rows.append({"unified_individual_id": uid, "segment": segment, **attrs})
                upserts.append((uid, True, digest))
        members = set(current)
        deletes = [uid for uid in state if uid not in members]
        if not rows and not deletes:
            return 0
        await self.store.commit(row.tenant_id, row.name, row.generation, _deliveries(rows, batch_size),
                                upserts, deletes)
        return len(rows)

    async def _refresh_batch_output(self, row: ActivationRow, batch_size: int) -> int:
        queued = 0
        chunk = max(batch_size * 10, 1000)
        jobs = await self.store.open_batch_jobs(row.tenant_id, row.name, row.config.batch_output.schedule_name)
        for job_id, after_key in jobs:
            while True:
                rows = await self.store.batch_rows(row.tenant_id, job_id, after_key, chunk)
                done = len(rows) < chunk
                if rows:
                    after_key = [rows[-1]["unified_individual_id"], rows[-1]["point_name"]]
                    if row.config.consent_purpose:
                        granted = await self._consenting({r["unified_individual_id"] for r in rows},
                                                         row.config.consent_purpose)
                        rows = [r for r in rows if r["unified_individual_id"] in granted]
                if not await self.store.commit(row.tenant_id, row.name, row.generation,
                                               _deliveries(rows, batch_size), progress=(job_id, after_key, done)):
                    return queued
                queued += len(rows)
                if done:
                    break
        return queued

    async def deliver(self, row: ActivationRow, destination: pb.Destination) -> int:
        """Sends the activation's due deliveries in order, stopping at the first that fails; returns how many went."""
        sent = 0
        while True:
            batch = await self.store.open_deliveries(row.tenant_id, row.name, 50)
            if not batch:
                return sent
            for delivery in batch:
                if delivery.state == "FAILED" or not delivery.due:
                    return sent
                try:
                    await self._send(row, destination, delivery)
                except DeliveryError as error:
                    retry = min(2.0 ** delivery.attempts, self.settings.retry_max_seconds)
                    log.warning("delivery_failed", activation=row.name, delivery_id=delivery.delivery_id,
                                error=str(error), permanent=error.permanent)
                    await self.store.mark_failed(row.tenant_id, row.name, delivery.delivery_id, str(error),
                                                 error.permanent, retry)
                    return sent
                await self.store.mark_delivered(row.tenant_id, row.name, delivery)
                sent += 1

    async def _send(self, row: ActivationRow, destination: pb.Destination, delivery: DeliveryRow) -> None:
        mapping = dict(row.config.field_mapping)
        if destination.HasField("webhook"):
            body = json.dumps({
                "delivery_id": delivery.delivery_id, "activation": row.name, "destination": destination.name,
                "source": source_of(row.config), "primary_key": [mapping.get(k, k) for k in primary_key_of(row.config)],
                "rows": mapped(delivery.rows, mapping),
            }, separators=(",", ":")).encode()
            hook = destination.webhook
            await self.sender.send(hook.url, hook.secret, delivery.delivery_id, body, self.policy)
        elif destination.HasField("file"):
            mapping = dict(row.config.field_mapping)
            await self.sink.append(destination.file.directory, row.name, FORMATS.get(destination.file.format, "jsonl"),
                                   [mapping.get(c, c) for c in columns_of(row.config)], mapped(delivery.rows, mapping))
        else:
            raise DeliveryError("the destination has no kind", permanent=True)


def _deliveries(rows: list[dict], batch_size: int) -> list[tuple[str, list[dict]]]:
    return [("dlv_" + uuid.uuid4().hex, batch) for batch in chunks(rows, batch_size)]


def _not_found(kind: str, name: str) -> NotFound:
    return NotFound(f"{kind} {quote(name)} does not exist", reason=f"{kind.upper()}_NOT_FOUND",
                    metadata={kind: shorten(name, 64)})


def _bind(tenant_id: str) -> None:
    ctx.tenant_var.set(tenant_id)
    ctx.request_id_var.set(ctx.new_request_id())
    ctx.deadline_var.set(None)

