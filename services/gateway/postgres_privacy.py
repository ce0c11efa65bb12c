"""asyncpg adapter of the gateway's part of erase and export: inbox rows, dead letters, batch outputs, activation.

Inbox and dead-letter rows are found by message id (the caller decides which rows are the individual's by decoding
their payloads), never by columns other than (tenant_id, message_id, payload).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg

from shared.privacy import erase_rows, export_rows

MESSAGE_TABLES = ("inbox", "dead_letters")

# Rows keyed by the individual's unified id.
_BY_INDIVIDUAL = {
    "batch_results": "unified_individual_id = ANY($2::text[])",
    "activation_state": "unified_individual_id = ANY($2::text[])",
}

# Deliveries hold rows of many individuals: the individual's rows are taken out, a delivery left empty is deleted.
_DELIVERY_ROWS = """
UPDATE deliveries AS d SET rows = kept.rows, row_count = jsonb_array_length(kept.rows)
FROM (
    SELECT d2.delivery_id, coalesce(jsonb_agg(x.r ORDER BY x.n) FILTER (
               WHERE NOT (x.r ->> 'unified_individual_id') = ANY($2::text[])), '[]'::jsonb) AS rows
    FROM deliveries AS d2 CROSS JOIN LATERAL jsonb_array_elements(d2.rows) WITH ORDINALITY AS x(r, n)
    WHERE d2.tenant_id = $1
      AND EXISTS (SELECT 1 FROM jsonb_array_elements(d2.rows) AS y(r) WHERE y.r ->> 'unified_individual_id' = ANY($2::text[]))
    GROUP BY d2.delivery_id
) AS kept
WHERE d.tenant_id = $1 AND d.delivery_id = kept.delivery_id
"""

# A batch job's activation progress names the last row it queued; when that row was the individual's, it is moved
# back to the row before it (or to the start when there is none), which queues exactly the same rows next.
_PROGRESS = """
UPDATE activation_batch_progress AS p SET after_key = coalesce((
    SELECT ARRAY[b.unified_individual_id, b.point_name] FROM batch_results AS b
    WHERE b.tenant_id = $1 AND b.job_id = p.job_id AND NOT b.unified_individual_id = ANY($2::text[])
      AND (b.unified_individual_id, b.point_name) < (p.after_key[1], p.after_key[2])
    ORDER BY b.unified_individual_id DESC, b.point_name DESC LIMIT 1), '{}')
WHERE p.tenant_id = $1 AND p.after_key[1] = ANY($2::text[])
"""


class PostgresPrivacy:
    """The gateway's rows of one individual."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def message_pages(self, tenant: str, table: str, page: int = 1000) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Every (message_id, payload) of the tenant in inbox or dead_letters, a page at a time."""
        assert table in MESSAGE_TABLES
        after = ""
        while True:
            rows = await self.pool.fetch(
                f"SELECT message_id, payload FROM {table} WHERE tenant_id = $1 AND message_id > $2"
                " ORDER BY message_id LIMIT $3", tenant, after, page)
            if not rows:
                return
            yield [(r["message_id"], bytes(r["payload"])) for r in rows]
            after = rows[-1]["message_id"]

    async def erase(self, tenant: str, ids: list[str], message_ids: list[str]) -> int:
        """Deletes the individual's inbox rows, dead letters, batch outputs and activation rows in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            erased = await erase_rows(conn, [_PROGRESS, _DELIVERY_ROWS], tenant, ids)
            erased += await erase_rows(conn, ["DELETE FROM deliveries WHERE tenant_id = $1 AND row_count = 0"
                                              " AND jsonb_array_length(rows) = 0"], tenant)
            erased += await erase_rows(conn, [
                f"DELETE FROM {t} WHERE tenant_id = $1 AND {where}" for t, where in _BY_INDIVIDUAL.items()], tenant, ids)
            erased += await erase_rows(conn, [
                f"DELETE FROM {t} WHERE tenant_id = $1 AND message_id = ANY($2::text[])" for t in MESSAGE_TABLES],
                tenant, message_ids)
        return erased

    async def export(self, tenant: str, ids: list[str]) -> dict[str, list]:
        """The individual's batch outputs, activation rows and the delivery rows about them."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            tables = await export_rows(conn, {
                t: f"SELECT to_jsonb(t) - 'tenant_id' AS row FROM {t} AS t WHERE t.tenant_id = $1 AND {where}"
                   " ORDER BY 1" for t, where in _BY_INDIVIDUAL.items()}, tenant, ids)
            tables |= await export_rows(conn, {
                "deliveries": "SELECT jsonb_build_object('delivery_id', d.delivery_id, 'activation', d.activation,"
                              " 'state', d.state, 'created_at', d.created_at, 'row', x.r) AS row"
                              " FROM deliveries AS d CROSS JOIN LATERAL jsonb_array_elements(d.rows) AS x(r)"
                              " WHERE d.tenant_id = $1 AND x.r ->> 'unified_individual_id' = ANY($2::text[])"
                              " ORDER BY d.seq"}, tenant, ids)
            return tables

    async def messages(self, tenant: str, table: str, message_ids: list[str]) -> list[tuple[str, bytes]]:
        """(message_id, payload) of the given messages."""
        rows = await self.pool.fetch(
            f"SELECT message_id, payload FROM {table} WHERE tenant_id = $1 AND message_id = ANY($2::text[])"
            " ORDER BY message_id", tenant, message_ids)
        return [(r["message_id"], bytes(r["payload"])) for r in rows]
