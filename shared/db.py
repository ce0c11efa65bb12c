"""asyncpg pool per service schema, and the migration runner (ordered SQL files, one schema per service)."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from shared.log import get_logger

log = get_logger("shared.db")


async def _no_reset(_connection: asyncpg.Connection) -> None:
    # The default reset runs several statements on every release; our code never leaves session state behind.
    return None


async def create_pool(dsn: str, schema: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections see `schema` first on their search path and skip the reset query on release."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        reset=_no_reset,
        server_settings={"search_path": f"{schema},public", "application_name": f"tailor-{schema}"},
    )


async def migrate(dsn: str, schema: str, migrations_dir: Path) -> list[str]:
    """Applies the not-yet-applied *.sql files of migrations_dir, in name order, each in its own transaction.

    Returns the names applied. Concurrent runners are serialized by an advisory lock per schema.
    """
    files = sorted(migrations_dir.glob("*.sql"))
    applied: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"tailor-migrate-{schema}")
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
                "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')}
            await conn.execute(f'SET search_path TO "{schema}", public')
            for path in files:
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', path.name)
                applied.append(path.name)
                log.info("migration_applied", schema=schema, version=path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"tailor-migrate-{schema}")
    finally:
        await conn.close()
    return applied


# What a lost, refused or restarting database looks like to asyncpg: the connection is gone (class 08), the server
# is shutting down, crashed or still starting (57P01-57P03), or has no connection slot free (53300).
_OUTAGE_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError,
    socket.gaierror,
)
_OUTAGE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


def is_database_outage(error: BaseException) -> bool:
    """True when error (or what it wraps) means the database cannot be reached now, so a retry later may succeed."""
    if isinstance(error, BaseExceptionGroup):
        return any(is_database_outage(e) for e in error.exceptions)
    if isinstance(error, _OUTAGE_ERRORS):
        return True
    if isinstance(error, OSError) and error.errno in _OUTAGE_ERRNOS:
        return True
    if isinstance(error, asyncpg.InterfaceError) and "connection is closed" in str(error):
        return True
    cause = error.__cause__
    return cause is not None and is_database_outage(cause)


async def watch_database(dsn: str, on_change: Callable[[bool], Awaitable[None]], *, interval: float = 0.5) -> None:
    """Pings the database every `interval` seconds on a connection of its own, until cancelled, and awaits
    on_change(False) when it stops answering and on_change(True) when it answers again."""
    conn: asyncpg.Connection | None = None
    up = True
    try:
        while True:
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(dsn, timeout=max(interval * 2, 1.0),
                                                 server_settings={"application_name": "tailor-health"})
                await conn.fetchval("SELECT 1", timeout=max(interval * 2, 1.0))
                now_up = True
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError) as error:
                if conn is not None:
                    conn.terminate()
                    conn = None
                now_up = False
                if up:
                    log.warning("database_unreachable", error=f"{type(error).__name__}: {error}")
            if now_up != up:
                up = now_up
                if up:
                    log.info("database_reachable")
                await on_change(up)
            await asyncio.sleep(interval)
    finally:
        if conn is not None:
            conn.terminate()
