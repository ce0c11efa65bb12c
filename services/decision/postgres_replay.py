"""asyncpg adapter of offline replay: the decision-log rows of a time window, oldest first."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.decision.domain import LogEntry
from services.decision.postgres import _LOG_COLUMNS, _log_entry


class PostgresReplayLog:
    """Reads the decision log of a window for replay (keyset on log time and personalization id)."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def log_between(self, tenant: str, start: datetime, end: datetime, after: tuple[datetime, str] | None,
                          limit: int) -> list[LogEntry]:
        rows = await self.pool.fetch(
            f"SELECT {_LOG_COLUMNS}, item_ids FROM decision_log WHERE tenant_id = $1 AND log_time >= $2 "
            "AND log_time < $3 AND ($4::timestamptz IS NULL OR (log_time, personalization_id) > ($4, $5)) "
            "ORDER BY log_time, personalization_id LIMIT $6",
            tenant, start, end, after[0] if after else None, after[1] if after else "", limit)
        return [_log_entry(r) for r in rows]
