"""The live event feed: the NOTIFY payloads of appends and the one LISTEN connection that wakes streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

# Every append notifies this channel with the tenant and the individuals it touched; live streams on any replica
# listen to it.
CHANNEL = "profile_graph_events"
NOTIFY_BYTES = 7_000


def _notify_payloads(tenant: str, individuals: list[str]) -> list[str]:
    """NOTIFY payloads (each under the 8,000-byte limit) naming the tenant and the individuals a batch touched."""
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for i in individuals:
        if chunk and size + len(i) + 4 > NOTIFY_BYTES - len(tenant):
            out.append(json.dumps({"t": tenant, "i": chunk}))
            chunk, size = [], 0
        chunk.append(i)
        size += len(i) + 4
    out.append(json.dumps({"t": tenant, "i": chunk}))
    return out


class EventFeed:
    """One LISTEN connection per process; wakes the live streams of the individuals each notification names."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.conn: asyncpg.Connection | None = None
        self.waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._lock = asyncio.Lock()

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        data = json.loads(payload)
        for individual in data["i"]:
            for wake in self.waiters.get((data["t"], individual), ()):
                wake.set()

    async def _listen(self) -> None:
        async with self._lock:
            if self.conn is None or self.conn.is_closed():
                self.conn = await self.pool.acquire()
                await self.conn.add_listener(CHANNEL, self._on_notify)

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

    async def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.remove_listener(CHANNEL, self._on_notify)
            await self.pool.release(self.conn)
        self.conn = None
