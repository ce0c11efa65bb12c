"""One worker per database: a loop that runs only while its process holds a session advisory lock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from shared.log import get_logger

log = get_logger("shared.leader")


async def lead(database: str | asyncpg.Pool, lock: str, step: Callable[[], Awaitable[bool]], *,
               idle_seconds: float, channel: str | None = None, wake: asyncio.Event | None = None) -> None:
    """Calls step() again and again while this process holds the advisory lock `lock`, until cancelled.

    step returns True when it did work (it runs again at once) and False when there was nothing to do; then the
    loop waits for a NOTIFY on `channel`, for `wake` to be set, or idle_seconds. Standby processes retry the lock
    every idle_seconds. The lock lives on a dedicated connection, checked before every step: when that connection
    is lost, so is the lock, and the loop steps down and competes again, so two leaders never run at once.
    `database` is a DSN, or a pool to borrow that connection from (it is closed, not reused, afterwards).
    """
    wake = wake or asyncio.Event()
    while True:
        conn = None
        try:
            conn = await (database.acquire() if isinstance(database, asyncpg.Pool) else asyncpg.connect(database))
            while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", lock):
                await asyncio.sleep(idle_seconds)
            if channel:
                await conn.add_listener(channel, lambda *_: wake.set())
            log.info("leader_elected", lock=lock)
            while True:
                await conn.fetchval("SELECT 1")
                wake.clear()
                if not await step():
                    try:
                        await asyncio.wait_for(wake.wait(), timeout=idle_seconds)
                    except TimeoutError:
                        pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("leader_loop_error", lock=lock)
            await asyncio.sleep(1.0)
        finally:
            if conn is not None:
                conn.terminate()  # ends the session, and its lock, even for a pool's connection
                if isinstance(database, asyncpg.Pool):
                    await database.release(conn)
