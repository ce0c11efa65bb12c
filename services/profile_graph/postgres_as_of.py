"""asyncpg adapter of as-of profile reads: events up to a time and the membership history replayed to it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.profile_graph.domain import StoredEvent
from services.profile_graph.postgres_sql import (
    _EVENT_COLUMNS,
    _LINE_COLUMNS,
    _NO_LINES,
    _stored_event,
)


class PostgresHistory:
    """Reads the profile graph's events and membership history as of given times."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def events_until(self, tenant: str, ids: Sequence[str], until: datetime, lines: bool,
                           properties: bool) -> list[StoredEvent]:
        columns = _EVENT_COLUMNS.format(properties="properties::text" if properties else "NULL::text",
                                        lines=_LINE_COLUMNS if lines else _NO_LINES)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {columns} FROM events WHERE tenant_id = $1 AND individual_id = ANY($2::text[])"
                " AND event_time <= $3", tenant, list(ids), until)
        return [_stored_event(r) for r in rows]

    async def history_at(self, tenant: str, entries: Sequence[tuple[str, datetime]], event_limit: int
                         ) -> list[tuple[list[bytes], list[str]]]:
        """Per (individual, time), in order: the payloads of its latest events up to the time (most recent first)
        and the segments whose last recorded change up to the time is an entry."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT ARRAY(SELECT payload FROM events WHERE tenant_id = $1 AND individual_id = u.id"
                "   AND event_time <= u.t ORDER BY event_time DESC, message_id DESC LIMIT $4) AS events,"
                " ARRAY(SELECT segment FROM (SELECT DISTINCT ON (segment) segment, change FROM membership_history"
                "   WHERE tenant_id = $1 AND individual_id = u.id AND change_time <= u.t"
                "   ORDER BY segment, change_time DESC, id DESC) h WHERE change = 'entered' ORDER BY segment)"
                "   AS segments"
                " FROM unnest($2::text[], $3::timestamptz[]) WITH ORDINALITY AS u(id, t, n) ORDER BY u.n",
                tenant, [i for i, _ in entries], [t for _, t in entries], event_limit)
        return [(list(r["events"]), list(r["segments"])) for r in rows]

    async def item_attributes(self, tenant: str, ids: Sequence[str]) -> dict[str, dict]:
        if not ids:
            return {}
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT item_id, attributes::text AS a FROM items WHERE tenant_id = $1 AND item_id = ANY($2::text[])",
                tenant, list(ids))
        return {r["item_id"]: json.loads(r["a"]) for r in rows}
