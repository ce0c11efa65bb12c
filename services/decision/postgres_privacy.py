"""asyncpg adapter of the decision service's erase and export: decision log, outcomes, aliases, conflicts."""

from __future__ import annotations

import asyncpg

from shared.privacy import erase_rows, export_rows

# (table, condition on the individual's ids $2); cohort assignments live in the decision log (sticky by hash).
_ROWS = {
    "decision_log": "unified_individual_id = ANY($2::text[])",
    "outcomes": "unified_individual_id = ANY($2::text[])",
    "experiment_conflicts": "unified_individual_id = ANY($2::text[])",
    "individual_aliases": "(alias_id = ANY($2::text[]) OR survivor_id = ANY($2::text[]))",
}


class PostgresPrivacy:
    """Erases and exports an individual's rows in the decision schema."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def erase(self, tenant: str, ids: list[str]) -> int:
        """Deletes the individuals' rows in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await erase_rows(conn, [
                f"DELETE FROM {t} WHERE tenant_id = $1 AND {where}" for t, where in _ROWS.items()], tenant, ids)

    async def export(self, tenant: str, ids: list[str]) -> dict[str, list]:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await export_rows(conn, {
                t: f"SELECT to_jsonb(t) - 'tenant_id' AS row FROM {t} AS t WHERE t.tenant_id = $1 AND {where}"
                   " ORDER BY 1" for t, where in _ROWS.items()}, tenant, ids)
