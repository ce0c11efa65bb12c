"""Activation: destinations and activations per tenant, and the loop that pushes rows to them.

What is pushed is found by diffing: the current members of a segment (and their attributes) against what this
activation last queued (`activation_state`), or the output rows of finished batch jobs after a per-job cursor.
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
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import field_mask_pb2, json_format

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from services.gateway.activation_store import ActivationRow, ActivationStore, DeliveryRow
from services.gateway.destinations import (ALLOWED_NETWORKS_SETTING, DeliveryError, FileSink, Network, Resolver,
                                           UrlPolicy, WebhookSender, check_url, default_export_root,
                                           directory_problem, parse_networks, system_resolve)
from services.gateway.ports import ProfilePort
from shared import context as ctx
from shared import db
from shared.errors import InvalidArgument, NotFound, Violations, quote, shorten
from shared.leader import lead
from shared.log import get_logger
from shared import paging
from shared.paging import decode_token, next_page
from shared.settings import env_float, env_int, env_str

log = get_logger("gateway.activation")

LEADER_LOCK = "tailor-activation-leader"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
ATTRIBUTE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
DEFAULT_BATCH_SIZE = 100
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
        )


# Pure rules (unit-tested without a database).

def membership_changes(current: set[str], delivered: dict[str, bool]) -> tuple[list[str], list[str]]:
    """(entries, exits): members not delivered as members yet, and delivered members no longer in the segment."""
    entries = sorted(uid for uid in current if not delivered.get(uid, False))
    exits = sorted(uid for uid, member in delivered.items() if member and uid not in current)
    return entries, exits


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
        return ["unified_individual_id", "segment", *activation.attributes.attributes]
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
        if not a.attributes.attributes:
            v.add("activation.attributes.attributes", "at least one attribute name is required")
        seen: set[str] = set()
        for i, name in enumerate(a.attributes.attributes):
            if not ATTRIBUTE_PATTERN.match(name):
                v.add(f"activation.attributes.attributes[{i}]", "must be an attribute name")
            elif name in ("unified_individual_id", "segment") or name in seen:
                v.add(f"activation.attributes.attributes[{i}]", f"{quote(name)} is repeated or a reserved row field")
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
    return v


def _after(token: str) -> str:
    key = decode_token(token, "page_token")
    if key is None:
        return ""
    if len(key) != 1 or not isinstance(key[0], str):
        raise InvalidArgument([("page_token", "is not a token this service issued")])
    return key[0]


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
        await self.store.save_destination(tenant_id, d)
        self._wake.set()
        return public_destination(d)

    async def list_destinations(self, tenant_id: str, page_size: int, page_token: str
                                ) -> tuple[list[pb.Destination], str]:
        size = paging.page_size(page_size)
        rows, token = next_page(await self.store.list_destinations(tenant_id, _after(page_token), size + 1), size,
                                lambda d: [d.name])
        return [public_destination(d) for d in rows], token

    async def upsert_activation(self, tenant_id: str, activation: pb.Activation) -> pb.Activation:
        """Creates or replaces an activation; NOT_FOUND for an unknown destination, segment or schedule."""
        a = pb.Activation()
        a.CopyFrom(activation)
        a.ClearField("status")
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
            or previous.WhichOneof("source") != source
            or getattr(previous, source).SerializeToString() != getattr(a, source).SerializeToString())
        await self.store.save_activation(tenant_id, a, reset)
        self._wake.set()
        listed = await self.store.list_activations(tenant_id, "", 1, only=a.name)
        return listed[0] if listed else a

    async def list_activations(self, tenant_id: str, page_size: int, page_token: str
                               ) -> tuple[list[pb.Activation], str]:
        size = paging.page_size(page_size)
        return next_page(await self.store.list_activations(tenant_id, _after(page_token), size + 1), size,
                         lambda a: [a.name])

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
        with db.all_tenants():  # the pass spans tenants; each activation's own work runs in its tenant alone
            activations = await self.store.all_activations(tenant_id)
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
        destination = await self.store.get_destination(row.tenant_id, row.config.destination)
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

    async def _refresh_membership(self, row: ActivationRow, batch_size: int) -> int:
        segment = row.config.segment_membership.segment
        current = await self._members(segment, row.config.consent_purpose)
        state = await self.store.load_state(row.tenant_id, row.name)
        entries, exits = membership_changes(current, {uid: member for uid, (member, _) in state.items()})
        rows = ([{"unified_individual_id": uid, "segment": segment, "member": True} for uid in entries]
                + [{"unified_individual_id": uid, "segment": segment, "member": False} for uid in exits])
        if not rows:
            return 0
        upserts = [(uid, True, "") for uid in entries] + [(uid, False, "") for uid in exits]
        await self.store.commit(row.tenant_id, row.name, row.generation, _deliveries(rows, batch_size), upserts)
        return len(rows)

    async def _attributes(self, uid: str, names: list[str], limit: asyncio.Semaphore) -> dict:
        async with limit:
            reply = await self.profile.GetProfile(profile_pb.GetProfileRequest(
                unified_individual_id=uid, read_mask=field_mask_pb2.FieldMask(paths=["attributes"])))
        values = json_format.MessageToDict(reply.profile.attributes)
        return {name: values.get(name) for name in names}

    async def _refresh_attributes(self, row: ActivationRow, batch_size: int) -> int:
        segment = row.config.attributes.segment
        names = list(row.config.attributes.attributes)
        current = sorted(await self._members(segment, row.config.consent_purpose))
        state = await self.store.load_state(row.tenant_id, row.name)
        limit = asyncio.Semaphore(self.settings.concurrency)
        values = await asyncio.gather(*(self._attributes(uid, names, limit) for uid in current))
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
        if destination.HasField("webhook"):
            body = json.dumps({
                "delivery_id": delivery.delivery_id, "activation": row.name, "destination": destination.name,
                "source": source_of(row.config), "primary_key": primary_key_of(row.config), "rows": delivery.rows,
            }, separators=(",", ":")).encode()
            hook = destination.webhook
            await self.sender.send(hook.url, hook.secret, delivery.delivery_id, body, self.policy)
        elif destination.HasField("file"):
            await self.sink.append(destination.file.directory, row.name, FORMATS.get(destination.file.format, "jsonl"),
                                   columns_of(row.config), delivery.rows)
        else:
            raise DeliveryError("the destination has no kind", permanent=True)


def _deliveries(rows: list[dict], batch_size: int) -> list[tuple[str, list[dict]]]:
    return [("dlv_" + uuid.uuid4().hex, batch) for batch in chunks(rows, batch_size)]


def _bind(tenant_id: str) -> None:
    ctx.tenant_var.set(tenant_id)
    ctx.request_id_var.set(ctx.new_request_id())
    ctx.deadline_var.set(None)

