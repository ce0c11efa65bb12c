"""Training's read of a tenant's interactions on a real PostgreSQL: split into page ranges read at once under one
snapshot, it gives exactly what one scan gives, in the same order, and only the tenant's rows."""

from __future__ import annotations

import io
import uuid

import asyncpg
import numpy as np
import pytest

import services.recommender.postgres as postgres
from services.recommender import server
from services.recommender.postgres import PostgresRepository
from shared.context import tenant_var
from shared.runtime import prepare_schema


async def _load(database_url: str, tenant: str, other: str) -> None:
    """20,000 interactions of the tenant interleaved with another tenant's, then some of them moved (an update
    writes a new row version elsewhere in the table, as a merge of two individuals does)."""
    buffer = io.StringIO()
    for n in range(20_000):
        kind = ("purchase", "product_view", "add_to_cart")[n % 3]
        buffer.write(f"{tenant}\tm{n}\ti{n % 700}\tu{n % 3000}\t{kind}\t{1 + n % 4}\t{n % 50}\t2026-01-01 00:00:00+00\n")
        buffer.write(f"{other}\tm{n}\tx{n % 10}\tz{n % 10}\tpurchase\t1\t0\t2026-01-01 00:00:00+00\n")
    connection = await asyncpg.connect(database_url, server_settings={"search_path": "recommender"})
    try:
        await connection.copy_to_table("interactions", source=io.BytesIO(buffer.getvalue().encode()),
                                       columns=["tenant_id", "message_id", "item_id", "unified_individual_id",
                                                "kind", "quantity", "revenue", "event_time"])
        await connection.execute("UPDATE interactions SET unified_individual_id = 'u-merged' "
                                 "WHERE tenant_id = $1 AND unified_individual_id IN ('u5', 'u17')", tenant)
    finally:
        await connection.close()


@pytest.fixture
async def repository(database_url):
    pool = await prepare_schema(database_url, server.SCHEMA, server.__file__)
    yield PostgresRepository(pool)
    await pool.close()


async def test_a_read_in_page_ranges_gives_what_one_scan_gives(repository, database_url, monkeypatch):
    tenant, other = f"t_{uuid.uuid4().hex[:8]}", f"o_{uuid.uuid4().hex[:8]}"
    await _load(database_url, tenant, other)
    tenant_var.set(tenant)

    monkeypatch.setattr(postgres, "READ_SPLIT_PAGES", 10**9)
    whole = await repository.interaction_events(tenant, times=True)
    monkeypatch.setattr(postgres, "READ_SPLIT_PAGES", 1)
    monkeypatch.setattr(postgres, "READ_PARTS", 3)
    parts = await repository.interaction_events(tenant, times=True)

    assert len(whole.rows) == 20_000
    assert set(whole.individuals.tolist()) == {f"u{n}" for n in range(3000)} - {"u5", "u17"} | {"u-merged"}
    for name in ("individuals", "items", "rows", "cols", "kinds", "quantities", "revenues", "times"):
        assert np.array_equal(getattr(whole, name), getattr(parts, name)), name


async def test_a_read_without_revenue_gives_the_same_interactions_with_zero_revenue(repository, database_url):
    tenant, other = f"t_{uuid.uuid4().hex[:8]}", f"o_{uuid.uuid4().hex[:8]}"
    await _load(database_url, tenant, other)
    tenant_var.set(tenant)

    full = await repository.interaction_events(tenant)
    lean = await repository.interaction_events(tenant, revenue=False)

    assert full.revenues.any() and not lean.revenues.any() and len(lean.revenues) == 20_000
    for name in ("individuals", "items", "rows", "cols", "kinds", "quantities"):
        assert np.array_equal(getattr(full, name), getattr(lean, name)), name
