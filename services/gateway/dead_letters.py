"""Dead letters as an API: list them by reason and time, retry them or discard them; and the pipeline's state."""

from __future__ import annotations

import asyncio
import builtins
from datetime import datetime, timedelta, timezone

import grpc

from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.postgres_inbox import DeadLetterRow, InboxStore
from shared import contract, db, metrics
from shared.errors import Violations
from shared.log import get_logger
from shared.paging import decode_token, encode_token, page_size

MAX_IDS = 10_000
METRICS_SECONDS = 5.0  # how often the pipeline gauges are refreshed
log = get_logger("gateway.dead_letters")
REASONS = frozenset(code.name for code in grpc.StatusCode)


def _time(ts, field: str, v: Violations) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    if ts.seconds < 0 or not 0 <= ts.nanos < 1_000_000_000:
        v.add(field, "must be a valid time after 1970")
        return None
    return ts.ToDatetime(tzinfo=timezone.utc)


def _filter(request, v: Violations) -> tuple[str, datetime | None, datetime | None]:
    f = request.filter
    if f.reason and f.reason not in REASONS:
        v.add("filter.reason", "must be a gRPC status code name such as INVALID_ARGUMENT or INTERNAL")
    since = _time(f.fail_time_from, "filter.fail_time_from", v) if f.HasField("fail_time_from") else None
    until = _time(f.fail_time_to, "filter.fail_time_to", v) if f.HasField("fail_time_to") else None
    if since and until and since >= until:
        v.add("filter.fail_time_to", "must be after filter.fail_time_from")
    return f.reason, since, until


def _selection(request, v: Violations) -> list[str] | None:
    ids = list(request.message_ids)
    if len(ids) > MAX_IDS:
        v.add("message_ids", f"at most {MAX_IDS} ids")
    for i, message_id in enumerate(ids[:MAX_IDS]):
        if not message_id:
            v.add(f"message_ids[{i}]", "must not be empty")
    if not ids and not request.all_matching:
        v.add("message_ids", "name the dead letters, or set all_matching to select by the filter alone")
    return ids or None


def _selected(request) -> tuple[list[str] | None, str, datetime | None, datetime | None]:
    """(message ids, reason, since, until) of a retry or discard; InvalidArgument with every bad field."""
    v = Violations()
    reason, since, until = _filter(request, v)
    ids = _selection(request, v)
    v.raise_if_any()
    return ids, reason, since, until


def dead_letter_message(row: DeadLetterRow) -> pb.DeadLetter:
    message = pb.DeadLetter(message_id=row.message_id, reason=row.reason, error=row.error, attempts=row.attempts)
    try:
        message.event.ParseFromString(row.payload)
    except Exception:  # noqa: BLE001 - a payload that cannot be decoded is shown without its event
        message.ClearField("event")
    if row.received_at is not None:
        message.receive_time.FromDatetime(row.received_at)
    message.fail_time.FromDatetime(row.failed_at)
    return message


class DeadLetters:
    """The tenant's dead letters and pipeline state, over the inbox store."""

    def __init__(self, store: InboxStore):
        self.store = store

    async def list(self, tenant: str, request: pb.ListDeadLettersRequest) -> pb.ListDeadLettersResponse:
        v = Violations()
        reason, since, until = _filter(request, v)
        size = page_size(request.page_size, 100, 1000, v)
        key = decode_token(request.page_token, "dead_letters", (datetime, str), v)
        after = None if key is None else (key[0], key[1])
        v.raise_if_any()
        rows = await self.store.list_dead_letters(tenant, reason, since, until, after, size + 1)
        # A page also ends before it would outgrow what a default client receives (events are up to 256 KiB each).
        letters: list[pb.DeadLetter] = []
        used = 0
        for row in rows[:size]:
            letter = dead_letter_message(row)
            used += letter.ByteSize() + 8
            if letters and used > contract.RESPONSE_BUDGET_BYTES:
                break
            letters.append(letter)
        more = len(letters) < len(rows)
        last = rows[len(letters) - 1] if letters else None
        token = encode_token("dead_letters", [last.failed_at, last.message_id]) if more and last else ""
        return pb.ListDeadLettersResponse(dead_letters=letters, next_page_token=token)

    async def retry(self, tenant: str, request: pb.RetryDeadLettersRequest) -> pb.RetryDeadLettersResponse:
        return pb.RetryDeadLettersResponse(
            retried_count=await self.store.retry_dead_letters(tenant, *_selected(request)))

    async def discard(self, tenant: str, request: pb.DiscardDeadLettersRequest) -> pb.DiscardDeadLettersResponse:
        return pb.DiscardDeadLettersResponse(
            discarded_count=await self.store.discard_dead_letters(tenant, *_selected(request)))

    async def status(self, tenant: str) -> pb.GetPipelineStatusResponse:
        counts = await self.store.counts(tenant)
        reply = pb.GetPipelineStatusResponse(
            pending_count=counts.pending, retrying_count=counts.retrying, dead_letter_count=counts.dead_letters,
            oldest_pending_seconds=round(counts.oldest_pending_seconds, 3), bulk_pending_count=counts.bulk_pending,
            oldest_live_pending_seconds=round(counts.oldest_live_pending_seconds, 3))
        reply.minutes.extend(await self.history(tenant, counts.pending))
        return reply

    async def history(self, tenant: str, pending_now: int, minutes: int = 60) -> builtins.list[pb.PipelineMinute]:
        """The last `minutes` minutes, oldest first: the backlog at each minute's end is walked back from now's
        (each minute's arrivals added, its processed events taken away); dead letters count as processed."""
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        starts = [now - timedelta(minutes=i) for i in range(minutes - 1, -1, -1)]
        received, processed = await self.store.minutes(tenant, starts[0])
        history, backlog = [], pending_now
        for start in reversed(starts):
            done, lag = processed.get(start, (0, 0.0))
            entry = pb.PipelineMinute(received_count=received.get(start, 0), processed_count=done,
                                      backlog_count=max(backlog, 0), mean_lag_seconds=round(lag, 3))
            entry.start_time.FromDatetime(start)
            history.append(entry)
            backlog = backlog - entry.received_count + done
        return history[::-1]

    async def export_metrics(self, every: float = METRICS_SECONDS) -> None:
        """Keeps the pipeline gauges (backlog, lag, dead letters per tenant) current until cancelled."""
        while True:
            try:
                with db.all_tenants():  # every tenant's backlog, as the pipeline workers see it
                    rows = await self.store.backlog_by_tenant()
                metrics.set_pipeline(rows)
            except Exception as error:  # noqa: BLE001 - a database outage: the gauges keep their last values
                log.warning("pipeline_metrics_failed", error=f"{type(error).__name__}: {error}")
            await asyncio.sleep(every)


__all__ = ["DeadLetters"]
