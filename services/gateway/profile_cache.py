"""Copies of the profiles GetDecisions reads, kept exact by the profile graph's change feed (WatchProfileChanges).

A visitor asks for decisions many times in a row (points of one page, page after page), and reading the profile is a
full round trip to the profile graph and PostgreSQL. So the gateway keeps what it read, per tenant, while a
WatchProfileChanges stream of that tenant is live:
- a committed write names the individuals it changed (or says any profile may have changed), and their copies are
  dropped when the stream says so, a few milliseconds after the commit: within the freshness target;
- a read that was in flight when its individual changed is used once but not kept (it may predate the change);
- nothing is kept while the stream is not live (not yet started, broken, reconnecting): those reads go to the
  profile graph, as they would without a cache;
- values that move with time alone (windowed insights, decayed affinities) are not announced, so a copy is also
  dropped after `seconds`;
- each tenant keeps at most `entries` individuals (the oldest copy goes first), so no tenant evicts another's.
A tenant with no decision for `idle_seconds` has its stream closed and its copies dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import grpc
import structlog

from shared import context as ctx

log = structlog.get_logger()

RETRY_SECONDS = 1.0  # between a stream's loss and the next try, while the tenant is in use


class _Read:
    """One read in flight; stale once its individual changed meanwhile (then it is not kept)."""

    __slots__ = ("stale",)

    def __init__(self) -> None:
        self.stale = False


class _Tenant:
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.live = False
        self.entries: dict[str, dict[Hashable, tuple[float, Any]]] = {}
        self.reads: dict[str, list[_Read]] = {}
        self.last_used = time.monotonic()
        self.call: Any = None
        self.task: asyncio.Task | None = None

    def forget(self, ids) -> None:
        for individual in ids:
            self.entries.pop(individual, None)
            for read in self.reads.get(individual, ()):
                read.stale = True

    def forget_all(self) -> None:
        self.entries.clear()
        for reads in self.reads.values():
            for read in reads:
                read.stale = True


class ProfileCache:
    """Per tenant: profile copies by (individual, what was read), dropped as the change feed says."""

    def __init__(self, watch: Callable[[], Any], *, seconds: float, entries: int = 10_000,
                 idle_seconds: float = 300.0):
        """watch opens the calling tenant's WatchProfileChanges stream (the tenant is the context's)."""
        self.watch = watch
        self.seconds = seconds
        self.max_entries = entries
        self.idle_seconds = idle_seconds
        self._tenants: dict[str, _Tenant] = {}
        self._next_sweep = time.monotonic() + idle_seconds

    async def read(self, tenant: str, individual: str, what: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        """The copy of what was read for the individual, or load()'s answer (kept when nothing changed meanwhile).
        Callers never change what this returns."""
        if self.seconds <= 0:
            return await load()
        now = time.monotonic()
        t = self._tenant(tenant, now)
        if not t.live:
            return await load()
        hit = t.entries.get(individual, {}).get(what)
        if hit is not None and hit[0] > now:
            return hit[1]
        read = _Read()
        reads = t.reads.setdefault(individual, [])
        reads.append(read)
        try:
            value = await load()
        finally:
            reads.remove(read)
            if not reads:
                del t.reads[individual]
        if t.live and not read.stale:
            kept = t.entries.get(individual)
            if kept is None:
                if len(t.entries) >= self.max_entries:
                    del t.entries[next(iter(t.entries))]
                kept = t.entries[individual] = {}
            kept[what] = (now + self.seconds, value)
        return value

    def live(self, tenant: str) -> bool:
        """Whether the tenant's stream is live (copies are being kept)."""
        t = self._tenants.get(tenant)
        return t is not None and t.live

    def _tenant(self, tenant: str, now: float) -> _Tenant:
        if now >= self._next_sweep:
            self._sweep(now)
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant(tenant)
            t.task = asyncio.create_task(self._follow(t))  # the task copies the context: this tenant's
        t.last_used = now
        return t

    def _sweep(self, now: float) -> None:
        """Closes the streams of tenants idle for idle_seconds (their task then ends and drops them)."""
        self._next_sweep = now + self.idle_seconds
        for t in self._tenants.values():
            if now - t.last_used > self.idle_seconds and t.call is not None:
                t.call.cancel()

    async def _follow(self, t: _Tenant) -> None:
        """Keeps the tenant's stream open while the tenant is in use, applying each change as it arrives."""
        ctx.deadline_var.set(None)  # the stream outlives the request that started it
        ctx.request_id_var.set(ctx.new_request_id())
        try:
            while True:
                t.call = self.watch()
                try:
                    async for change in t.call:
                        if change.live:
                            t.live = True
                        elif change.all_changed:
                            t.forget_all()
                        else:
                            t.forget(change.unified_individual_ids)
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.CANCELLED:
                        log.warning("profile_cache_stream_lost", tenant=t.tenant, code=error.code().name)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # the cache is closing; otherwise the sweep cancelled the call of an idle tenant
                finally:
                    t.live = False
                    t.forget_all()
                    t.call = None
                if time.monotonic() - t.last_used > self.idle_seconds:
                    return
                await asyncio.sleep(RETRY_SECONDS)
        finally:
            if self._tenants.get(t.tenant) is t:
                del self._tenants[t.tenant]

    async def close(self) -> None:
        """Closes every stream (the server is stopping)."""
        tasks = [t.task for t in self._tenants.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

