"""The asyncpg adapter of quotas: the operator's limits and the decision credits used per month."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import asyncpg


@dataclass(frozen=True)
class QuotaState:
    """A tenant's limits (0 = none) and the credits it used in one period."""

    credit_limit: int
    rate_limit: float
    used: int


class PostgresQuotas:
    """Reads limits and usage, adds used credits, and sets limits."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def state(self, tenant_id: str, period: date) -> QuotaState:
        row = await self.pool.fetchrow(
            "SELECT coalesce(q.decision_credit_limit, 0) AS credit_limit, "
            "coalesce(q.request_rate_limit, 0) AS rate_limit, coalesce(u.used, 0) AS used "
            "FROM (SELECT $1::text AS tenant_id) t "
            "LEFT JOIN quotas q ON q.tenant_id = t.tenant_id "
            "LEFT JOIN credit_usage u ON u.tenant_id = t.tenant_id AND u.period_start = $2",
            tenant_id, period)
        return QuotaState(int(row["credit_limit"]), float(row["rate_limit"]), int(row["used"]))

    async def add_used(self, tenant_id: str, period: date, count: int) -> None:
        await add_credits(self.pool, tenant_id, period, count)

    async def set_limits(self, tenant_id: str, credit_limit: int, rate_limit: float) -> None:
        await self.pool.execute(
            "INSERT INTO quotas (tenant_id, decision_credit_limit, request_rate_limit) VALUES ($1, $2, $3) "
            "ON CONFLICT (tenant_id) DO UPDATE SET decision_credit_limit = $2, request_rate_limit = $3",
            tenant_id, credit_limit, rate_limit)


async def add_credits(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, period: date, count: int) -> None:
    """Counts used credits, inside the caller's transaction when conn is a connection in one (batch pages)."""
    await conn.execute(
        "INSERT INTO credit_usage (tenant_id, period_start, used) VALUES ($1, $2, $3) "
        "ON CONFLICT (tenant_id, period_start) DO UPDATE SET used = credit_usage.used + $3",
        tenant_id, period, count)
