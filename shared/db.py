"""asyncpg pool per service schema, and the migration runner (ordered SQL files, one schema per service)."""

from __future__ import annotations

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
