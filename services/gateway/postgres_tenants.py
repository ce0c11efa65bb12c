"""The tenants' table as the operator sees it: tenants with their quotas, this month's usage and active keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.gateway.auth import OPERATOR_TENANT
from services.gateway.postgres_quotas import PostgresQuotas
from services.gateway.quotas import period_start

_SELECT = (
    "SELECT t.tenant_id, t.display_name, t.created_at, coalesce(q.decision_credit_limit, 0) AS credit_limit, "
    "coalesce(q.request_rate_limit, 0) AS rate_limit, coalesce(u.used, 0) AS credits_used, "
    "(SELECT count(*) FROM api_keys k WHERE k.tenant_id = t.tenant_id AND k.revoked_at IS NULL) AS active_keys "
    "FROM tenants t LEFT JOIN quotas q ON q.tenant_id = t.tenant_id "
    "LEFT JOIN credit_usage u ON u.tenant_id = t.tenant_id AND u.period_start = $1 "
)


@dataclass(frozen=True)
class TenantRow:
    """One tenant with its quotas and usage."""

    tenant_id: str
    display_name: str
    created_at: datetime
    credit_limit: int
    rate_limit: float
    credits_used: int
    active_keys: int


class TenantStore:
    """Reads tenants (never the operator's reserved one) and writes quotas."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def get(self, tenant_id: str) -> TenantRow | None:
        row = await self.pool.fetchrow(_SELECT + "WHERE t.tenant_id = $2 AND t.tenant_id <> $3",
                                       period_start(), tenant_id, OPERATOR_TENANT)
        return TenantRow(**row) if row else None

    async def list(self, after: str, limit: int) -> list[TenantRow]:
        rows = await self.pool.fetch(_SELECT + "WHERE t.tenant_id > $2 AND t.tenant_id <> $3 "
                                     "ORDER BY t.tenant_id LIMIT $4", period_start(), after, OPERATOR_TENANT, limit)
        return [TenantRow(**r) for r in rows]

    async def set_quota(self, tenant_id: str, credit_limit: int, rate_limit: float) -> None:
        await PostgresQuotas(self.pool).set_limits(tenant_id, credit_limit, rate_limit)
