"""The change feed: what each committed write NOTIFYs, and the one LISTEN connection per process that wakes the live
streams (an individual's events, a tenant's profile changes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import asyncpg

from shared.errors import Unavailable

# Every write that changes a profile notifies this channel, in its transaction (so on commit), with the tenant and
# the individuals it touched, or with "a" when any profile of the tenant may have changed; live streams on any
# replica listen to it.
CHANNEL = "profile_graph_events"
NOTIFY_BYTES = 7_000
# A profile-changes stream names at most this many individuals per message; more queued up means "all changed".
MAX_NAMED = 10_000


def _notify_payloads(tenant: str, individuals: Iterable[str], everything: bool = False) -> list[str]:
    """NOTIFY payloads (each under the 8,000-byte limit) naming the tenant and the individuals a write touched."""
    out: list[str] = [json.dumps({"t": tenant, "a": 1})] if everything else []
    chunk: list[str] = []
    size = 0
    for i in individuals:
        if chunk and size + len(i) + 4 > NOTIFY_BYTES - len(tenant):
            out.append(json.dumps({"t": tenant, "i": chunk}))
            chunk, size = [], 0
        chunk.append(i)
        size += len(i) + 4
    if chunk:
        out.append(json.dumps({"t": tenant, "i": chunk}))
    return out


async def notify(conn: asyncpg.Connection, tenant: str, individuals: Iterable[str], everything: bool = False) -> None:
    """Notifies the change feed from within the writer's transaction (delivered when it commits)."""
    payloads = _notify_payloads(tenant, sorted(individuals), everything)
    if payloads:
        await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS u(p)", CHANNEL, payloads)


class Changes:
    """The profile changes of one tenant queued for one stream since it last took them."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.everything = False
        self.lost = False  # the LISTEN connection closed: changes may have been missed
        self.ended = False  # the server is draining: the stream ends (its caller watches again, elsewhere)
        self.ready = asyncio.Event()

    def add(self, ids: Iterable[str], everything: bool) -> None:
        if everything or self.everything:
            self.everything = True
            self.ids.clear()
        else:
            self.ids.update(ids)
            if len(self.ids) > MAX_NAMED:
                self.everything = True
                self.ids.clear()
        self.ready.set()

    async def take(self) -> tuple[list[str], bool] | None:
        """Waits for changes, then returns (the individuals named, whether every profile may have changed); None
        once the server drains."""
        await self.ready.wait()
        if self.ended:
            return None
        if self.lost:
            raise Unavailable("the profile change feed lost its database connection; watch again",
                              reason="CHANGE_FEED_LOST", retry_after_seconds=1.0)
        self.ready.clear()
        ids, everything = sorted(self.ids), self.everything
        self.ids, self.everything = set(), False
        return ids, everything


class EventFeed:
    """One LISTEN connection per process; wakes the streams of the individuals and tenants each notification names."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.conn: asyncpg.Connection | None = None
        self.waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        self.tenants: dict[str, set[Changes]] = {}
        self._lock = asyncio.Lock()

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        data = json.loads(payload)
        tenant, ids = data["t"], data.get("i", ())
        for individual in ids:
            for wake in self.waiters.get((tenant, individual), ()):
                wake.set()
        for changes in self.tenants.get(tenant, ()):
            changes.add(ids, bool(data.get("a")))

    async def _listen(self) -> None:
        async with self._lock:
            if self.conn is None or self.conn.is_closed():
                self.conn = await self.pool.acquire()
                await self.conn.add_listener(CHANNEL, self._on_notify)
                self.conn.add_termination_listener(self._on_lost)

    def end_streams(self) -> None:
        """Ends every profile-changes stream (the server is draining; a watch is simply opened again)."""
        for queues in self.tenants.values():
            for changes in queues:
                changes.ended = True
                changes.ready.set()

    def _on_lost(self, _conn) -> None:
        """The LISTEN connection closed: every profile-changes stream ends (its caller drops its copies and watches
        again, which listens anew), since what was committed meanwhile was not heard."""
        for queues in self.tenants.values():
            for changes in queues:
                changes.lost = True
                changes.ready.set()

    @asynccontextmanager
    async def watch(self, tenant: str, individual_id: str) -> AsyncIterator[asyncio.Event]:
        await self._listen()
        wake = asyncio.Event()
        key = (tenant, individual_id)
        self.waiters.setdefault(key, set()).add(wake)
        try:
            yield wake
        finally:
            self.waiters[key].discard(wake)
            if not self.waiters[key]:
                del self.waiters[key]

    @asynccontextmanager
    async def watch_tenant(self, tenant: str) -> AsyncIterator[Changes]:
        """The tenant's profile changes, queued from the moment this is entered (the LISTEN is up by then)."""
        await self._listen()
        changes = Changes()
        self.tenants.setdefault(tenant, set()).add(changes)
        try:
            yield changes
        finally:
            self.tenants[tenant].discard(changes)
            if not self.tenants[tenant]:
                del self.tenants[tenant]

    async def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.remove_listener(CHANNEL, self._on_notify)
            await self.pool.release(self.conn)
        self.conn = None
