"""asyncpg pool per service schema, and the migration runner (ordered SQL files, one schema per service)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import asyncpg

from shared import db_roles
from shared.context import tenant_var
from shared.log import get_logger

log = get_logger("shared.db")


async def _no_reset(_connection: asyncpg.Connection) -> None:
    # The default reset runs several statements on every release; our code never leaves session state behind.
    return None


# Row-level security: every tenant table's policy lets a session see the rows whose tenant_id equals its
# `tailor.tenant` setting, or every row while `tailor.all_tenants` is 'on'. A session with neither sees none.
_all_tenants_var: contextvars.ContextVar[bool] = contextvars.ContextVar("all_tenants", default=False)


@contextlib.contextmanager
def all_tenants() -> Iterator[None]:
    """Inside this block, connections acquired from a pool see the rows of every tenant. Only for work that
    really spans tenants (the pipeline's partitions, sweepers and leader jobs, key lookup before the tenant is
    known, tenant administration); a call on behalf of one tenant never uses it."""
    token = _all_tenants_var.set(True)
    try:
        yield
    finally:
        _all_tenants_var.reset(token)


@contextlib.contextmanager
def one_tenant() -> Iterator[None]:
    """Inside all_tenants(), a stretch of work for the one tenant in context.tenant_var (a worker's task for one
    tenant): its connections see that tenant's rows only."""
    token = _all_tenants_var.set(False)
    try:
        yield
    finally:
        _all_tenants_var.reset(token)


def current_scope() -> tuple[str, str]:
    """(tailor.tenant, tailor.all_tenants) for connections acquired now."""
    return ("", "on") if _all_tenants_var.get() else (tenant_var.get(), "")


class _Connection(asyncpg.Connection):
    """A pool connection that remembers the tenant scope its session was last given."""

    scope: tuple[str, str] | None = None

    async def apply_scope(self, scope: tuple[str, str]) -> None:
        if scope != self.scope:
            self.scope = None  # unknown until the statement has run
            await self.execute("SELECT set_config('tailor.tenant', $1, false), "
                               "set_config('tailor.all_tenants', $2, false)", *scope)
            self.scope = scope


async def _set_scope(connection) -> None:
    # Runs at every acquire. A session-level setting rather than SET LOCAL in each transaction: one statement
    # when the tenant changes, none when it does not (most acquires), and statements outside a transaction
    # are covered too.
    await connection.apply_scope(current_scope())


# (dsn, schema) -> whether dsn logs in as a superuser (the test and development path: connections then SET ROLE
# to the schema's roles, which are bootstrapped here once per process).
_admin_dsns: dict[tuple[str, str], bool] = {}


async def _drops_to_roles(dsn: str, schema: str) -> bool:
    key = (dsn, schema)
    if key not in _admin_dsns:
        conn = await asyncpg.connect(dsn)
        try:
            admin = bool(await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
        finally:
            await conn.close()
        if admin:
            # Under the schema's migration lock: its GRANT ... ON ALL TABLES rewrites the tables' catalog rows, and
            # run beside another process's migration of the schema (ALTER TABLE) one of them fails with "tuple
            # concurrently updated" (the gateway and its pipeline workers start together on a fresh database).
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"tailor-migrate-{schema}")
                await db_roles.bootstrap(dsn, [schema])
            finally:
                await conn.close()  # the session's advisory lock goes with it
        _admin_dsns[key] = admin
    return _admin_dsns[key]


async def create_pool(dsn: str, schema: str, *, min_size: int = 2, max_size: int = 10,
                      application_name: str = "", server_settings: dict[str, str] | None = None) -> asyncpg.Pool:
    """A pool whose connections see `schema` first on their search path, skip the reset query on release, and
    carry the tenant of the current call (or all_tenants()) into row-level security at each acquire.

    dsn is the service's login role in production. Given a superuser's DSN (tests, development), the
    connections SET ROLE to the service role `tailor_<schema>` at login, so they have its rights and no more.
    """
    settings = {"search_path": f"{schema},public", "application_name": application_name or f"tailor-{schema}",
                **(server_settings or {})}
    if await _drops_to_roles(dsn, schema):
        settings["role"] = db_roles.service_role(schema)
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=_no_reset, setup=_set_scope,
                                     connection_class=_Connection, server_settings=settings)


async def migrate(dsn: str, schema: str, migrations_dir: Path) -> list[str]:
    """Applies the not-yet-applied *.sql files of migrations_dir, in name order, each in its own transaction.

    Returns the names applied. Concurrent runners are serialized by an advisory lock per schema. dsn is the
    schema's owner role in production; a superuser's DSN (tests, development) SETs ROLE to that owner. A role that
    may not create anything (the service's own) can run it when there is nothing to apply.
    """
    files = sorted(migrations_dir.glob("*.sql"))
    applied: list[str] = []
    # Migrations see every tenant's rows (a backfill must not be filtered by row-level security).
    settings = {"tailor.all_tenants": "on"}
    if await _drops_to_roles(dsn, schema):
        settings["role"] = db_roles.owner_role(schema)
    conn = await asyncpg.connect(dsn, server_settings=settings)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"tailor-migrate-{schema}")
        try:
            # Checked first: CREATE ... IF NOT EXISTS needs the right to create even when the object exists.
            if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
                await conn.execute(f'CREATE SCHEMA "{schema}"')
            if await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".schema_migrations') is None:
                await conn.execute(
                    f'CREATE TABLE "{schema}".schema_migrations '
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


# A transaction PostgreSQL rolled back whole for a concurrent one: nothing of it stayed, running it again may succeed.
CONTENTION_ERRORS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def is_contention(error: BaseException) -> bool:
    """True when error is one of CONTENTION_ERRORS (a deadlock, a serialization failure)."""
    return isinstance(error, CONTENTION_ERRORS)


async def lock_following_redirects(ids: Sequence[str], lock: Callable[[list[str]], Awaitable[object]],
                                   redirects_of: Callable[[Sequence[str]], Awaitable[dict[str, str]]]
                                   ) -> dict[str, str]:
    """For a service that keeps merged-id -> survivor redirects: locks the ids (lock takes them sorted), then the
    survivors their redirects name; returns {merged id: survivor} for the ids merged away.

    A survivor may itself be merged away by another transaction while this one waits for its lock (a redirect read
    before then names it still): the redirects are read again once their survivors are locked, until every survivor
    named is locked. Then they cannot change, as long as moving a redirect takes its survivor's lock."""
    locked = set(ids)
    await lock(sorted(locked))
    while True:
        redirects = await redirects_of(ids)
        unlocked = set(redirects.values()) - locked
        if not unlocked:
            return redirects
        await lock(sorted(unlocked))
        locked |= unlocked


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
