"""Writes decision-log rows off the request path: queued per request, sent in batches, retried until stored."""

from __future__ import annotations

import asyncio
from itertools import groupby

import grpc

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from services.gateway.ports import DecisionPort
from shared import context as ctx
from shared import metrics
from shared.log import get_logger

log = get_logger("gateway.decision_log")


# How long the writer lets rows gather after the first before sending them: under load, fewer and larger
# LogDecisions calls (and inserts); a row is never held longer than this plus the send.
LINGER_SECONDS = 0.02


class DecisionLogWriter:
    """A bounded queue drained by one task; a full queue makes callers wait rather than drop rows."""

    def __init__(self, decision_stub: DecisionPort, *, max_batch: int = 500, max_queue: int = 50_000,
                 linger: float = LINGER_SECONDS):
        self.stub = decision_stub
        self.max_batch = max_batch
        self.linger = linger
        self.queue: asyncio.Queue[tuple[str, decision_pb.DecisionLogEntry]] = asyncio.Queue(max_queue)
        self._interrupted: list[tuple[str, decision_pb.DecisionLogEntry]] = []

    async def submit(self, entries: list[decision_pb.DecisionLogEntry]) -> None:
        tenant = ctx.current_tenant()
        for entry in entries:
            metrics.record_served(tenant, entry.point_name, entry.unified_individual_id)
            if self.queue.full():
                await self.queue.put((tenant, entry))
            else:
                self.queue.put_nowait((tenant, entry))

    async def write(self, groups: list[decision_pb.DecisionLogGroup]) -> None:
        """Sends grouped rows now, in the caller's tenant, retried until stored (batch jobs log a page before
        committing it), at most max_batch rows per call."""
        tenant = ctx.current_tenant()
        request = decision_pb.LogDecisionsRequest()
        size = 0
        for group in groups:
            metrics.record_served_many(tenant, group.shared.point_name,
                                       [row.unified_individual_id for row in group.rows])
            for start in range(0, len(group.rows), self.max_batch):
                rows = group.rows[start:start + self.max_batch]
                if size + len(rows) > self.max_batch:
                    await self._call(tenant, request)
                    request, size = decision_pb.LogDecisionsRequest(), 0
                request.groups.add(shared=group.shared, rows=rows)
                size += len(rows)
        if size:
            await self._call(tenant, request)

    async def run(self) -> None:
        """Sends queued rows until cancelled."""
        while True:
            batch = [await self.queue.get()]
            try:
                if self.linger > 0 and self.queue.qsize() < self.max_batch - 1:
                    await asyncio.sleep(self.linger)
                while len(batch) < self.max_batch and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                await self._send(batch)
            except asyncio.CancelledError:
                # Stopping: keep the rows for flush() (resending is idempotent).
                self._interrupted.extend(batch)
                raise

    async def flush(self) -> None:
        """Sends whatever is queued (at shutdown)."""
        if self._interrupted:
            batch, self._interrupted = self._interrupted, []
            await self._send(batch, attempts=3)
        while not self.queue.empty():
            batch = [self.queue.get_nowait() for _ in range(min(self.max_batch, self.queue.qsize()))]
            await self._send(batch, attempts=3)

    async def _send(self, batch, attempts: int | None = None) -> None:
        ordered = sorted(batch, key=lambda pair: pair[0])
        for tenant, group in groupby(ordered, key=lambda pair: pair[0]):
            await self._call(tenant, decision_pb.LogDecisionsRequest(entries=[entry for _, entry in group]),
                             attempts)

    async def _call(self, tenant: str, request: decision_pb.LogDecisionsRequest, attempts: int | None = None) -> None:
        ctx.tenant_var.set(tenant)
        ctx.request_id_var.set(ctx.new_request_id())
        ctx.deadline_var.set(None)
        rows = len(request.entries) + sum(len(g.rows) for g in request.groups)
        tried = 0
        while True:
            tried += 1
            try:
                await self.stub.LogDecisions(request)
                return
            except grpc.aio.AioRpcError as error:
                # Rows are idempotent by personalization id, so resending after an unclear failure is safe.
                log.warning("decision_log_retry", code=error.code().name, rows=rows)
                if attempts is not None and tried >= attempts:
                    log.error("decision_log_dropped", rows=rows)
                    return
                await asyncio.sleep(min(0.05 * 2 ** tried, 2.0))
