"""Per-tenant quotas: a request rate (token bucket per replica) and monthly decision credits."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import asyncpg

from services.gateway.postgres_quotas import PostgresQuotas
from shared import db
from shared.log import get_logger

log = get_logger("gateway.quotas")


def period_start(now: datetime | None = None) -> date:
    """The first day of the current calendar month (UTC): credits are counted per month."""
    now = now or datetime.now(timezone.utc)
    return date(now.year, now.month, 1)


@dataclass
class _Tenant:
    credit_limit: int = 0
    rate_limit: float = 0.0
    used: int = 0
    pending: int = 0          # credits counted here, not yet written
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    loaded: float = 0.0       # monotonic time of the last read of the store; 0 = never read
    # Orders reads of the store against writes of pending credits: a read that overlapped a write could count the
    # written credits twice (stored and still in flight) or not at all (taken from pending, not yet committed).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Quotas:
    """Checks run on cached limits and usage (refreshed every refresh_seconds), so the hot path makes no query.

    Across replicas, usage converges within refresh_seconds; a tenant can overshoot its credit limit by what the
    replicas serve in that time. Batch jobs count their credits exactly, in the transaction that writes their rows.
    """

    def __init__(self, store: PostgresQuotas, refresh_seconds: float = 1.0):
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.tenants: dict[str, _Tenant] = {}

    async def _state(self, tenant_id: str, fresh: bool = False) -> _Tenant:
        state = self.tenants.get(tenant_id)
        if state is None:
            state = self.tenants[tenant_id] = _Tenant()
        if fresh or self._stale(state):
            async with state.lock:
                if fresh or self._stale(state):  # a caller that held the lock before us may have just read it
                    stored = await self.store.state(tenant_id, period_start())
                    if not state.loaded:
                        state.tokens = max(stored.rate_limit, 1.0)  # start with a full bucket
                    state.credit_limit, state.rate_limit = stored.credit_limit, stored.rate_limit
                    state.used, state.loaded = stored.used, time.monotonic()
        return state

    def _stale(self, state: _Tenant) -> bool:
        return time.monotonic() - state.loaded > self.refresh_seconds

    async def retry_after(self, tenant_id: str) -> float | None:
        """Takes one request token; returns None when allowed, else the seconds until a token is available."""
        state = await self._state(tenant_id)
        if state.rate_limit <= 0:
            return None
        now = time.monotonic()
        burst = max(state.rate_limit, 1.0)
        state.tokens = min(burst, state.tokens + (now - state.refilled) * state.rate_limit)
        state.refilled = now
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            return None
        return (1.0 - state.tokens) / state.rate_limit

    async def take_credits(self, tenant_id: str, count: int) -> bool:
        """Counts count decision credits if the tenant has them left; False (nothing counted) when over quota."""
        state = await self._state(tenant_id)
        if state.credit_limit > 0 and state.used + state.pending + count > state.credit_limit:
            return False
        state.pending += count
        return True

    async def over_quota(self, tenant_id: str, credits: int) -> bool:
        """The decide path's admission: counts credits (when left) and takes a request token; True when either is
        exhausted, in which case the caller serves a degraded, non-personal answer rather than an error."""
        return not await self.take_credits(tenant_id, credits) or await self.retry_after(tenant_id) is not None

    async def flush(self) -> None:
        """Writes the credits counted since the last flush (of every tenant, also when one tenant's call asks)."""
        start = period_start()
        with db.all_tenants():
            await self._flush(start)

    async def _flush(self, start: date) -> None:
        for tenant_id, state in list(self.tenants.items()):
            if not state.pending:
                continue
            async with state.lock:
                pending, state.pending = state.pending, 0
                if not pending:  # a flush that held the lock before us wrote them
                    continue
                try:
                    await self.store.add_used(tenant_id, start, pending)
                except Exception:
                    state.pending += pending
                    raise
                state.used += pending

    async def run(self) -> None:
        """Flushes counted credits every second until cancelled."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.flush()
            except Exception:
                log.exception("quota_flush_failed")

    async def usage(self, tenant_id: str) -> tuple[int, int, date, float]:
        """(credits used this period, credit limit, period start, request-rate limit)."""
        await self.flush()
        state = await self._state(tenant_id, fresh=True)
        return state.used + state.pending, state.credit_limit, period_start(), state.rate_limit


async def set_quota(pool: asyncpg.Pool, tenant_id: str, credit_limit: int, rate_limit: float) -> None:
    """The operator's knob (`tailor tenant quota`)."""
    await PostgresQuotas(pool).set_limits(tenant_id, credit_limit, rate_limit)
