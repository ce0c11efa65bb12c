"""Unit tests of the decision-credit counter on a fake store: reads of usage never race the writes of credits."""

from __future__ import annotations

import asyncio
from datetime import date

from services.gateway.postgres_quotas import QuotaState
from services.gateway.quotas import Quotas


class _SlowStore:
    """Keeps limits and usage in memory; a write of credits is held until the test releases it, either before it
    commits (commit_first=False) or after it committed, while its reply is still on the way (commit_first=True)."""

    def __init__(self, credit_limit: int, commit_first: bool):
        self.credit_limit, self.used, self.commit_first = credit_limit, 0, commit_first
        self.writing, self.release = asyncio.Event(), asyncio.Event()

    async def state(self, tenant_id: str, period: date) -> QuotaState:
        return QuotaState(self.credit_limit, 0.0, self.used)

    async def add_used(self, tenant_id: str, period: date, count: int) -> None:
        if self.commit_first:
            self.used += count
        self.writing.set()
        await self.release.wait()
        if not self.commit_first:
            self.used += count


async def _usage_during_a_flush(store: _SlowStore, quotas: Quotas) -> int:
    """Counts one credit, then reads usage while the background flush writes it."""
    assert await quotas.take_credits("t1", 1)
    background = asyncio.create_task(quotas.flush())
    await store.writing.wait()
    usage = asyncio.create_task(quotas.usage("t1"))
    await asyncio.sleep(0)
    store.release.set()
    await background
    return (await usage)[0]


async def test_usage_read_before_a_background_flush_commits_still_counts_the_credit():
    store = _SlowStore(credit_limit=1, commit_first=False)
    quotas = Quotas(store, refresh_seconds=60)  # type: ignore[arg-type]
    assert await _usage_during_a_flush(store, quotas) == 1
    assert not await quotas.take_credits("t1", 1)


async def test_usage_read_after_a_flush_committed_does_not_count_the_credit_twice():
    store = _SlowStore(credit_limit=3, commit_first=True)
    quotas = Quotas(store, refresh_seconds=60)  # type: ignore[arg-type]
    assert await _usage_during_a_flush(store, quotas) == 1
    assert [await quotas.take_credits("t1", 1) for _ in range(3)] == [True, True, False]
