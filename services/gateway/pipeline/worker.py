"""The partitioned pipeline worker: leases inbox partitions, takes work per tenant in a fair rotation, and isolates
a failing event by bisection so that only its own routing identity waits."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import grpc
from google.protobuf.message import DecodeError

from personalization.common.v1 import common_pb2
from services.gateway.pipeline.apply import Pipeline, Plan
from services.gateway.postgres import BULK_NOTICE, INBOX_CHANNEL
from services.gateway.postgres_inbox import PARTITIONS_CHANNEL, InboxRow, InboxStore
from shared import context as ctx
from shared import contract, db
from shared.log import get_logger
from shared.settings import env_float, env_int

log = get_logger("gateway.pipeline")

# Failures that say nothing about the events: the work stays pending, the tenant backs off, no attempt is counted.
# ABORTED: a service's write lost to a concurrent one more times than it retries by itself.
INFRA = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAUTHENTICATED,
                   grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ABORTED})
# Refusals of the content: once isolated to one event, it is dead-lettered at once (a retry would be refused again).
# RESOURCE_EXHAUSTED is here because an oversize request is never transient.
CONTENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                     grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND,
                     grpc.StatusCode.ALREADY_EXISTS})
# Anything else (INTERNAL, UNKNOWN, a deadline, ...) is retried with backoff up to max_attempts once isolated.
# A deadline is first taken for a slow service (infra) this many times in a row before it is suspected.
DEADLINE_STRIKES = 2
# A chunk's payloads stay under three quarters of the contract's message limit (the rest is room for the request's
# own fields); one event, at most contract.MAX_EVENT_BYTES, always fits.
CHUNK_BYTES = contract.MAX_MESSAGE_BYTES * 3 // 4


@dataclass(frozen=True)
class WorkerSettings:
    """How one worker shares the inbox with the others."""

    lease_seconds: float = 5.0      # a dead worker's partitions move to the others within this time
    # At most this many of one tenant's events in flight in one worker: two full chunks, so a backlog's next chunk
    # is identified while one is updated (with one, a full chunk's refill had no room left).
    tenant_take: int = 1000
    chunk_events: int = 500         # events per Identify/Update round trip
    chunk_bytes: int = CHUNK_BYTES  # and at most this many payload bytes, so no request nears the message limit
    concurrency: int = 8            # tenants processed at once
    max_attempts: int = 5           # attempts of an isolated failing event before it is dead-lettered
    idle_seconds: float = 1.0       # polling interval when no NOTIFY arrives
    turn_seconds: float = 1.0       # a tenant's task keeps taking its new events for at most this long
    # Bulk rows (backfills) are taken only with slots left over, at most half of them; while a tenant's bulk rows
    # are still arriving or live events wait, one bulk chunk at a time per worker, for this share of its time.
    bulk_duty: float = 0.1
    bulk_quiet_seconds: float = 2.0  # bulk rows arrived within this long: the tenant's import is still running
    live_wait_seconds: float = 0.5   # a live event pending this long anywhere paces the bulk drain

    @classmethod
    def from_env(cls) -> "WorkerSettings":
        return cls(
            lease_seconds=env_float("TAILOR_PIPELINE_LEASE_SECONDS", 5.0, minimum=0.5),
            tenant_take=env_int("TAILOR_PIPELINE_TENANT_TAKE", 1000, minimum=1, maximum=10_000),
            chunk_events=env_int("TAILOR_PIPELINE_CHUNK_EVENTS", 500, minimum=1, maximum=1000),
            chunk_bytes=env_int("TAILOR_PIPELINE_CHUNK_BYTES", CHUNK_BYTES, minimum=contract.MAX_EVENT_BYTES,
                                maximum=CHUNK_BYTES),
            concurrency=env_int("TAILOR_PIPELINE_CONCURRENCY", 8, minimum=1, maximum=64),
            max_attempts=env_int("TAILOR_GATEWAY_MAX_ATTEMPTS", 5, minimum=1),
            turn_seconds=env_float("TAILOR_PIPELINE_TURN_SECONDS", 1.0, minimum=0.0),
            bulk_duty=min(env_float("TAILOR_PIPELINE_BULK_DUTY", 0.1, minimum=0.01), 1.0),
            bulk_quiet_seconds=env_float("TAILOR_PIPELINE_BULK_QUIET_SECONDS", 2.0, minimum=0.0),
            live_wait_seconds=env_float("TAILOR_PIPELINE_LIVE_WAIT_SECONDS", 0.5, minimum=0.0),
        )


@dataclass
class Failure:
    """Why a chunk failed, classified."""

    code: str
    message: str
    infra: bool = False
    content: bool = False


class Transient(Exception):
    """The tenant's work could not be applied for reasons outside the events; it stays pending."""


def _events(rows: list[InboxRow]) -> list[common_pb2.Event]:
    return [common_pb2.Event.FromString(r.payload) for r in rows]


async def _settle(task: asyncio.Task | None) -> None:
    """Waits for a task whose result is no longer wanted, ignoring how it ended."""
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


async def _settle_refill(task: asyncio.Task | None) -> None:
    """Waits for a refill no longer wanted and for the identification it started (its rows stay pending)."""
    if task is not None:
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        if isinstance(outcome, tuple):
            await _settle(outcome[1])


def chunks_of(rows: list[InboxRow], max_events: int, max_bytes: int) -> list[list[InboxRow]]:
    """Consecutive chunks of at most max_events rows and max_bytes of payload (a larger single row goes alone)."""
    chunks: list[list[InboxRow]] = []
    current: list[InboxRow] = []
    size = 0
    for row in rows:
        if current and (len(current) >= max_events or size + len(row.payload) > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(row)
        size += len(row.payload)
    if current:
        chunks.append(current)
    return chunks


@dataclass
class _TenantState:
    backoff_until: float = 0.0
    infra_failures: int = 0
    deadline_strikes: int = 0
    last_started: float = 0.0


class PartitionWorker:
    """One of N workers: holds leases on a fair share of the partitions and drains them, tenant by tenant."""

    def __init__(self, dsn: str, store: InboxStore, pipeline: Pipeline, settings: WorkerSettings | None = None,
                 *, worker_id: str | None = None):
        self.dsn = dsn
        self.store = store
        self.pipeline = pipeline
        self.settings = settings or WorkerSettings()
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.partitions: list[int] = []
        self.tasks: dict[str, asyncio.Task] = {}
        self.tenants: dict[str, _TenantState] = {}
        self.wake = asyncio.Event()
        self.rebalance_now = asyncio.Event()  # another worker joined, left or freed partitions
        self.handovers: list[list[int]] = []  # partitions released whose work in flight must end before freeing them
        self._handing_over: set[asyncio.Task] = set()
        self.stopping = False
        self._listener: asyncpg.Connection | None = None
        self._renewed_at = -math.inf
        self.bulk: set[str] = set()      # tenants whose task in flight applies bulk rows
        self._paced_busy = False         # a paced bulk chunk is in flight
        self._paced_until = -math.inf    # no paced bulk chunk starts before this (the duty cycle's pause)
        self._bulk_look_at = -math.inf   # the bulk lane is not looked at again before this
        self._bulk_empty = False         # the last look found nothing: look again at a bulk NOTIFY or the poll
        self._live_notices = 0           # NOTIFYs of live rows so far (a bulk task stops refilling at the next)

    # ---- the loops ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Leases and drains until cancelled or stop() is called; then gives its partitions back."""
        with db.all_tenants():  # partitions hold every tenant's inbox rows (the tasks created here inherit it)
            await self._run()

    async def _run(self) -> None:
        leasing = asyncio.create_task(self._lease_loop())
        try:
            await self._drain_loop()
        finally:
            leasing.cancel()
            await _settle(leasing)
            await self._close_listener()
            for task in [*self.tasks.values(), *self._handing_over]:
                task.cancel()
            await asyncio.gather(*self.tasks.values(), *self._handing_over, return_exceptions=True)
            if not self.stopping:  # cancelled: still free the partitions at once for the other workers
                try:
                    await self.store.leave(self.worker_id)
                except Exception:  # noqa: BLE001 - the leases expire by themselves anyway
                    log.warning("pipeline_leave_failed", worker=self.worker_id)

    async def stop(self, grace: float = 5.0) -> None:
        """Takes no new work, lets work in flight finish (up to grace seconds), then frees the partitions at once."""
        self.stopping = True
        self.wake.set()
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=grace)
        try:
            await self.store.leave(self.worker_id)
        except (OSError, asyncpg.PostgresError):
            log.warning("pipeline_leave_failed", worker=self.worker_id)

    async def rebalance(self) -> list[int]:
        """Heartbeat, renew, claim up to the fair share, and give back what is beyond it. Returns what is held."""
        await self.store.heartbeat(self.worker_id)
        held, share = await self.store.claim(self.worker_id, self.settings.lease_seconds)
        if len(held) > share:
            # Given back with a short handover, so chunks in flight on them end before another worker starts; the
            # drain loop frees them as soon as that work has ended (the handover is only the upper bound).
            await self.store.release(self.worker_id, held[share:], min(2.0, self.settings.lease_seconds / 2))
            self.handovers.append(held[share:])
            held = held[:share]
        if held != self.partitions:
            log.info("pipeline_partitions", worker=self.worker_id, partitions=len(held))
            self.wake.set()
        self.partitions = held
        self._renewed_at = time.monotonic()
        return held

    def held(self) -> list[int]:
        """The partitions to take from: none once the leases may have expired unrenewed (another worker may hold
        them by now), until the next renewal."""
        if time.monotonic() - self._renewed_at > self.settings.lease_seconds:
            return []
        return self.partitions

    async def _lease_loop(self) -> None:
        announced = False
        while not self.stopping:
            self.rebalance_now.clear()
            try:
                await self._ensure_listener()
                await self.rebalance()
                if not announced:  # the others give up their excess now rather than at their next renewal
                    await self.store.announce()
                    announced = True
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a lost database must not end the loop; it retries
                log.warning("pipeline_lease_failed", worker=self.worker_id, error=type(error).__name__)
                await self._close_listener()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.rebalance_now.wait(), self.settings.lease_seconds / 3)

    async def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.is_closed():
            self._listener = await asyncpg.connect(self.dsn)
            await self._listener.add_listener(INBOX_CHANNEL, self._notified)
            await self._listener.add_listener(PARTITIONS_CHANNEL, lambda *_: self.rebalance_now.set())

    def _start_handovers(self) -> None:
        """Frees released partitions once the work that may hold their rows has ended. Called between takes: every
        task that took from them exists by now, and later takes no longer read them."""
        while self.handovers:
            partitions = self.handovers.pop()
            in_flight = list(self.tasks.values())
            task = asyncio.create_task(self._hand_over(partitions, in_flight))
            self._handing_over.add(task)
            task.add_done_callback(self._handing_over.discard)

    async def _hand_over(self, partitions: list[int], in_flight: list[asyncio.Task]) -> None:
        if in_flight:
            await asyncio.wait(in_flight, timeout=min(2.0, self.settings.lease_seconds / 2))
        try:
            await self.store.hand_over(partitions)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("pipeline_handover_failed", worker=self.worker_id, error=type(error).__name__)

    async def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.terminate()
            self._listener = None

    async def _drain_loop(self) -> None:
        while not self.stopping:
            self.wake.clear()
            self._start_handovers()
            started = 0
            if self.held() and len(self.tasks) < self.settings.concurrency:
                try:
                    started = await self.take_once()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    log.warning("pipeline_take_failed", error=type(error).__name__)
                    await asyncio.sleep(0.5)
                    continue
                except Exception:  # a bug here must not end the worker inside a gateway process
                    log.exception("pipeline_take_error")
                    await asyncio.sleep(1.0)
                    continue
            # Wait for a tenant's work to end or for new events (a NOTIFY), whichever comes first.
            woken = asyncio.ensure_future(self.wake.wait())
            try:
                await asyncio.wait([*self.tasks.values(), woken], timeout=self._idle_timeout(),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            if not started and self.tasks and self.wake.is_set():
                # Woken by ingest while the pending tenants are busy: let some work end before looking again.
                await asyncio.sleep(0.005)

    async def take_once(self) -> int:
        """Takes pending work of idle tenants and starts a task per tenant; returns how many tasks started.

        Live rows first, for every tenant; bulk rows only with slots left over (see _take_bulk)."""
        now = time.monotonic()
        waiting = [t for t, s in self.tenants.items() if s.backoff_until > now]
        partitions = self.held()
        per_pair = self._per_pair(partitions)
        rows = await self.store.take(partitions, [*self.tasks, *waiting], per_pair)
        started = 0
        for tenant, work in self._fair(rows):
            if len(self.tasks) >= self.settings.concurrency:
                break
            self._start(tenant, now, self._run_tenant(tenant, work))
            started += 1
        return started + await self._take_bulk(partitions, per_pair, [*self.tasks, *waiting], now)

    async def _take_bulk(self, partitions: list[int], per_pair: int, busy: list[str], now: float) -> int:
        """Starts bulk work in the slots live work left, at most half of them. A tenant whose bulk rows are still
        arriving (the newest is under bulk_quiet_seconds old), or any tenant while a live event has waited over
        live_wait_seconds in any partition, is paced: one such chunk at a time per worker, each followed by a pause
        that keeps the paced drain to bulk_duty of the worker's time. Otherwise bulk rows go at full speed."""
        bulk_slots = max(1, self.settings.concurrency // 2)
        if (now < self._bulk_look_at or len(self.tasks) >= self.settings.concurrency
                or len(self.bulk) >= bulk_slots):
            return 0
        taken = await self.store.take_bulk(partitions, busy, per_pair, self.settings.live_wait_seconds)
        if not taken.rows:  # nothing to take: live stores do not make the next wake look again, bulk ones do
            self._bulk_empty = True
            self._bulk_look_at = now + self.settings.idle_seconds
            return 0
        started = 0
        paced_left = False
        quiet_at = math.inf  # when the first paced tenant stops counting as still importing
        for tenant, work in self._fair(taken.rows):
            if len(self.tasks) >= self.settings.concurrency or len(self.bulk) >= bulk_slots:
                break
            quiet_in = self.settings.bulk_quiet_seconds - taken.newest_age.get(tenant, math.inf)
            paced = taken.live_waiting or quiet_in > 0
            if paced and (self._paced_busy or now < self._paced_until):
                paced_left = True
                if not taken.live_waiting:
                    quiet_at = min(quiet_at, now + quiet_in)
                continue
            self._paced_busy = self._paced_busy or paced
            self.bulk.add(tenant)
            self._start(tenant, now, self._run_bulk(tenant, work, paced))
            started += 1
        if paced_left and not started:
            # Only paced work waits: look again when its pause ends (or when a paced chunk ends: _run_bulk), or
            # when a tenant's import has stopped and its backlog may go at full speed.
            self._bulk_look_at = min(quiet_at, math.inf if self._paced_busy else self._paced_until)
        return started

    def _per_pair(self, partitions: list[int]) -> int:
        """Rows taken per (partition, tenant) at once: the tenant's take spread over the partitions held."""
        return max(16, math.ceil(self.settings.tenant_take / max(len(partitions), 1)))

    def _fair(self, rows: list[InboxRow]) -> list[tuple[str, list[InboxRow]]]:
        """Rows per tenant, oldest first, at most tenant_take each; the tenant served longest ago first (when slots
        are short, it goes first)."""
        by_tenant: dict[str, list[InboxRow]] = {}
        for row in rows:
            by_tenant.setdefault(row.tenant_id, []).append(row)
        order = sorted(by_tenant, key=lambda t: self.tenants.get(t, _TenantState()).last_started)
        return [(t, sorted(by_tenant[t], key=lambda r: r.seq)[:self.settings.tenant_take]) for t in order]

    def _start(self, tenant: str, now: float, run) -> None:
        self.tenants.setdefault(tenant, _TenantState()).last_started = now
        self.tasks[tenant] = asyncio.create_task(run)

    async def _run_bulk(self, tenant: str, rows: list[InboxRow], paced: bool) -> None:
        started = time.monotonic()
        try:
            await self._run_tenant(tenant, rows, bulk=True, refill=not paced)
        finally:
            self.bulk.discard(tenant)
            self._bulk_look_at = -math.inf  # the tenant's next rows, or others' waiting behind it
            if paced:
                ended = time.monotonic()
                duty = self.settings.bulk_duty
                self._paced_busy = False
                self._paced_until = ended + (ended - started) * (1 - duty) / duty

    def _notified(self, _connection, _pid, _channel, payload: str) -> None:
        """A NOTIFY of new inbox rows: wakes the drain loop; bulk rows make it look at the bulk lane again."""
        if payload != BULK_NOTICE:
            self._live_notices += 1
        elif self._bulk_empty:
            self._bulk_empty = False
            self._bulk_look_at = -math.inf
        self.wake.set()

    def _idle_timeout(self) -> float:
        """How long the drain loop waits with no NOTIFY and no task ending: the poll, or less when paced bulk work
        may start sooner."""
        until = self._bulk_look_at - time.monotonic()
        return self.settings.idle_seconds if until <= 0 else min(self.settings.idle_seconds, until)

    # ---- one tenant's work ----------------------------------------------------------------------------------

    async def _run_tenant(self, tenant: str, rows: list[InboxRow], bulk: bool = False, refill: bool = True) -> None:
        """Applies a tenant's rows of one lane; with refill, its task goes on with the lane's next rows for a turn."""
        ctx.tenant_var.set(tenant)
        ctx.request_id_var.set(ctx.new_request_id())
        ctx.deadline_var.set(None)
        state = self.tenants.setdefault(tenant, _TenantState())
        try:
            with db.one_tenant():  # the worker spans tenants; this task serves one
                await self.process(tenant, rows, refill=self._refill_for(tenant, rows, bulk) if refill else None)
            state.infra_failures = 0
        except Transient as error:
            state.infra_failures += 1
            state.backoff_until = time.monotonic() + min(0.25 * 2 ** (state.infra_failures - 1), 5.0)
            log.warning("pipeline_transient_failure", tenant=tenant, error=str(error), events=len(rows))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            state.infra_failures += 1
            state.backoff_until = time.monotonic() + min(0.25 * 2 ** (state.infra_failures - 1), 5.0)
            log.warning("pipeline_database_failure", tenant=tenant, error=type(error).__name__)
        except Exception:  # one tenant's bug must not stop the worker
            state.backoff_until = time.monotonic() + 1.0
            log.exception("pipeline_tenant_error", tenant=tenant)
        finally:
            self.tasks.pop(tenant, None)
            # Events that arrived while this tenant was busy were skipped by the takes meanwhile, and their NOTIFY
            # may already have been spent on those takes: look again now rather than at the next idle poll.
            self.wake.set()

    def _refill_for(self, tenant: str, rows: list[InboxRow], bulk: bool = False
                    ) -> Callable[[int], Awaitable[list[InboxRow]]]:
        """What a tenant's task takes next, without going back to the drain loop: per partition it still holds, the
        pending events of its lane after the last one this task took there, oldest first (so each routing identity's
        events stay in order). It takes none once other tenants need the slots, this worker is stopping or handing
        partitions over, or the task has had its turn (`turn_seconds`), so tenants still rotate; a bulk task also
        stops once live events have arrived (their NOTIFY), so they do not wait for its turn to end."""
        after: dict[int, int] = {}
        ends = time.monotonic() + self.settings.turn_seconds
        live_notices = self._live_notices

        def note(taken: list[InboxRow]) -> None:
            for r in taken:
                after[r.partition] = max(after.get(r.partition, 0), r.seq)

        note(rows)

        async def refill(limit: int) -> list[InboxRow]:
            if (self.stopping or self.handovers or self._handing_over or time.monotonic() > ends
                    or len(self.tasks) >= self.settings.concurrency or (bulk and self._live_notices != live_notices)):
                return []
            partitions = self.held()
            per_pair = self._per_pair(partitions)
            taken = await self.store.take_more(tenant, [(p, after.get(p, 0)) for p in partitions], per_pair, bulk)
            taken = sorted(taken, key=lambda r: r.seq)[:limit]  # with the chunk in flight, at most tenant_take
            note(taken)
            return taken

        return refill

    def _classify(self, tenant: str, error: BaseException) -> Failure:
        if isinstance(error, grpc.aio.AioRpcError):
            code = error.code()
            failure = Failure(code.name, error.details() or code.name)
            state = self.tenants.setdefault(tenant, _TenantState())
            if code in INFRA:
                failure.infra = True
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                state.deadline_strikes += 1
                failure.infra = state.deadline_strikes <= DEADLINE_STRIKES
            elif code in CONTENT:
                failure.content = True
            return failure
        if isinstance(error, DecodeError):
            return Failure("INVALID_ARGUMENT", "the stored event could not be decoded", content=True)
        return Failure("INTERNAL", f"{type(error).__name__}: {error}")

    async def process(self, tenant: str, rows: list[InboxRow], blocked: set[int] | None = None,
                      refill: Callable[[int], Awaitable[list[InboxRow]]] | None = None) -> None:
        """Applies rows in order, chunk by chunk; the next chunk is identified while one is updated, and, with
        `refill`, the tenant's next pending events are taken and identified while the last chunk is updated.

        A failing chunk is split in halves until the failing event is alone; that event is retried later (its
        routing identity's later events wait: `blocked`) or dead-lettered, and the rest go on (without refills).
        Raises Transient when the failure is not the events' (the rest then stays pending)."""
        blocked = set() if blocked is None else blocked
        rows = [r for r in rows if r.route not in blocked]
        chunks = chunks_of(rows, self.settings.chunk_events, self.settings.chunk_bytes)
        upcoming: asyncio.Task | None = None  # identifies chunks[k + 1]
        refilling: asyncio.Task | None = None  # takes more and starts identifying them, while chunk k is updated
        k = 0
        while k < len(chunks):
            chunk = chunks[k]
            plan: Plan | None = None
            try:
                plan = await (upcoming if upcoming is not None else self.pipeline.identify(_events(chunk)))
                upcoming = None
                refill_limit = 0  # the next events this chunk's update is overlapped with taking and identifying
                if k + 1 < len(chunks):
                    upcoming = asyncio.create_task(self.pipeline.identify(_events(chunks[k + 1])))
                elif refill is not None and len(chunk) < self.settings.tenant_take:
                    refill_limit = self.settings.tenant_take - len(chunk)

                def start_refill(limit: int = refill_limit) -> None:
                    nonlocal refilling
                    if refill is not None and refilling is None and limit:
                        refilling = asyncio.create_task(self._refilled(refill, blocked, limit))

                if len(chunk) >= self.settings.chunk_events:
                    start_refill()  # a backlog: the next events are taken and identified during the whole update
                    await self.pipeline.update(plan)
                else:
                    # Live traffic: they are taken once this chunk is appended (visible), so the events that
                    # arrived during its append are in the next chunk rather than in the one after it.
                    await self.pipeline.update(plan, appended=start_refill)
                start_refill()  # (when the pipeline did not call it)
                await self.store.mark_processed(tenant, chunk)
                self.tenants.setdefault(tenant, _TenantState()).deadline_strikes = 0
                if refilling is not None:
                    more, upcoming = await refilling
                    refilling = None
                    chunks.extend(more)
                k += 1
                continue
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await _settle_refill(refilling)
                await _settle(upcoming)
                raise
            except Exception as error:  # noqa: BLE001 - classified below; nothing about an event stops the worker
                await _settle_refill(refilling)
                await _settle(upcoming)
                failure = self._classify(tenant, error)
            if failure.infra:
                raise Transient(f"{failure.code}: {failure.message}")
            if plan is not None:
                # Merges are facts of the identity service whatever happens to this chunk: apply them now, or the
                # identifications of the smaller chunks below (which see them done) would never propagate them.
                await self._apply_merges_quietly(plan)
            if len(chunk) == 1:
                await self._failed(chunk[0], failure, blocked)
            else:
                middle = len(chunk) // 2
                await self.process(tenant, chunk[:middle], blocked)
                await self.process(tenant, chunk[middle:], blocked)
            await self.process(tenant, [r for later in chunks[k + 1:] for r in later], blocked)
            return

    async def _refilled(self, refill: Callable[[int], Awaitable[list[InboxRow]]], blocked: set[int], limit: int
                        ) -> tuple[list[list[InboxRow]], asyncio.Task | None]:
        """The tenant's next pending events (at most limit) as chunks, and a task identifying the first of them."""
        rows = [r for r in await refill(limit) if r.route not in blocked]
        if not rows:
            return [], None
        more = chunks_of(rows, self.settings.chunk_events, self.settings.chunk_bytes)
        return more, asyncio.create_task(self.pipeline.identify(_events(more[0])))

    async def _apply_merges_quietly(self, plan: Plan) -> None:
        try:
            await self.pipeline.apply_merges(plan)
        except grpc.aio.AioRpcError as error:
            log.warning("pipeline_merge_propagation_deferred", code=error.code().name)

    async def _failed(self, row: InboxRow, failure: Failure, blocked: set[int]) -> None:
        if failure.content or row.attempts + 1 >= self.settings.max_attempts:
            await self.store.dead_letter(row, failure.code, failure.message)
            log.warning("pipeline_event_dead_lettered", message_id=row.message_id, reason=failure.code,
                        attempts=row.attempts + 1)
            return
        backoff = min(0.2 * 2 ** row.attempts, 30.0)
        await self.store.retry_later(row, failure.code, failure.message, backoff)
        blocked.add(row.route)
        log.warning("pipeline_event_failed", message_id=row.message_id, reason=failure.code,
                    attempts=row.attempts + 1, retry_in_s=backoff)

