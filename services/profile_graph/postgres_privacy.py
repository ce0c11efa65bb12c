"""asyncpg adapter of the profile graph's erase and export: every row of an individual, by individual_id."""

from __future__ import annotations

import asyncpg

from services.profile_graph.postgres_feed import notify
from services.profile_graph.postgres_sql import TENANT_LOCK_KEY
from shared.privacy import erase_rows, export_rows

# Every table holding rows of an individual (item tables and definitions hold none).
TABLES = ("attributes", "attribute_values", "insight_values", "insight_partials", "memberships", "membership_history",
          "profile_objects", "consents", "affinities", "events", "individuals", "merged_individuals")

# How each table names the individual (merged-id redirects name it on either side).
_WHERE = {"merged_individuals": "(t.individual_id = ANY($2::text[]) OR t.survivor_id = ANY($2::text[]))"}


def _where(table: str) -> str:
    return _WHERE.get(table, "t.individual_id = ANY($2::text[])")


def _export_sql(table: str) -> str:
    drop = " - 'payload'" if table == "events" else ""  # the columns hold the event; the bytes add nothing readable
    order = {"events": "t.seq", "membership_history": "t.id"}.get(table, "1")
    return (f"SELECT to_jsonb(t) - 'tenant_id'{drop} AS row FROM {table} AS t"
            f" WHERE t.tenant_id = $1 AND {_where(table)} ORDER BY {order}")


class PostgresPrivacy:
    """Erases and exports an individual's rows in the profile_graph schema."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def erase(self, tenant: str, ids: list[str]) -> tuple[int, list[str]]:
        """Deletes the individuals' rows in one transaction; returns (rows, message ids of the erased events)."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The tenant's definitions lock, exclusively: appends hold it shared, so none is half-way meanwhile.
            await conn.execute(f"SELECT pg_advisory_xact_lock({TENANT_LOCK_KEY})", tenant)
            message_ids = [r["message_id"] for r in await conn.fetch(
                "SELECT message_id FROM events WHERE tenant_id = $1 AND individual_id = ANY($2::text[])", tenant, ids)]
            # Which items the events named (no foreign key cascades it: see migration 0008); not counted, as before.
            await conn.execute("DELETE FROM event_items WHERE tenant_id = $1 AND message_id = ANY($2::text[])",
                               tenant, message_ids)
            erased = await erase_rows(conn, [
                f"DELETE FROM {t} AS t WHERE t.tenant_id = $1 AND {_where(t)}" for t in TABLES], tenant, ids)
            await notify(conn, tenant, ids)
        return erased, message_ids

    async def export(self, tenant: str, ids: list[str]) -> dict[str, list]:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await export_rows(conn, {t: _export_sql(t) for t in TABLES}, tenant, ids)
