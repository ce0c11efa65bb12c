"""The gateway's own rows of an individual: batch outputs, activation state, rows inside deliveries and the batch
progress of activations, erased on a real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from services.gateway import server as gateway_server
from services.gateway.postgres_privacy import PostgresPrivacy
from shared.runtime import prepare_schema


@pytest.fixture(scope="module")
async def pool(database_url):
    pool = await prepare_schema(database_url, "gateway", gateway_server.__file__)
    yield pool
    await pool.close()


async def _seed(pool, tenant: str) -> None:
    for who in ("ind_a", "ind_gone", "ind_z"):
        for point in ("p1", "p2"):
            await pool.execute(
                "INSERT INTO batch_results (tenant_id, job_id, unified_individual_id, point_name, individual_id,"
                " segment_id, point_id, decision_id, personalization_id, payload)"
                " VALUES ($1, 'job1', $2, $3, '', 'seg', 'pt', 'dec', 'pers', '{}')", tenant, who, point)
        await pool.execute("INSERT INTO activation_state (tenant_id, activation, unified_individual_id, member)"
                           " VALUES ($1, 'act', $2, true)", tenant, who)
    await pool.execute("INSERT INTO activation_batch_progress (tenant_id, activation, job_id, after_key)"
                       " VALUES ($1, 'act', 'job1', ARRAY['ind_gone', 'p2']), ($1, 'first', 'job1', ARRAY['ind_gone', 'p1'])",
                       tenant)
    await pool.execute(
        "INSERT INTO deliveries (tenant_id, delivery_id, activation, rows, row_count) VALUES"
        " ($1, 'd1', 'act', $2::jsonb, 2), ($1, 'd2', 'act', $3::jsonb, 1)", tenant,
        json.dumps([{"unified_individual_id": "ind_a", "city": "Oslo"},
                    {"unified_individual_id": "ind_gone", "city": "Secretville"}]),
        json.dumps([{"unified_individual_id": "ind_gone", "city": "Secretville"}]))


async def test_erase_takes_the_individual_out_of_outputs_state_and_deliveries_and_moves_progress_back(pool, tenant):
    await _seed(pool, tenant)
    store = PostgresPrivacy(pool)
    exported = await store.export(tenant, ["ind_gone"])
    assert len(exported["batch_results"]) == 2 and len(exported["deliveries"]) == 2

    erased = await store.erase(tenant, ["ind_gone"], [])

    assert erased == 2 + 1 + 1 + 1 + 2 + 1  # progress rows, delivery rewritten, delivery emptied, state, outputs
    assert await pool.fetchval("SELECT count(*) FROM batch_results WHERE tenant_id = $1", tenant) == 4
    assert await pool.fetchval("SELECT count(*) FROM activation_state WHERE tenant_id = $1", tenant) == 2
    deliveries = await pool.fetch("SELECT delivery_id, rows::text AS rows, row_count FROM deliveries"
                                  " WHERE tenant_id = $1 ORDER BY delivery_id", tenant)
    assert [(d["delivery_id"], json.loads(d["rows"]), d["row_count"]) for d in deliveries] == [
        ("d1", [{"unified_individual_id": "ind_a", "city": "Oslo"}], 1)]
    progress = {r["activation"]: list(r["after_key"]) for r in await pool.fetch(
        "SELECT activation, after_key FROM activation_batch_progress WHERE tenant_id = $1", tenant)}
    # Both pointed inside the erased rows: they now point at the last row before them, which queues the same rows.
    assert progress == {"act": ["ind_a", "p2"], "first": ["ind_a", "p2"]}
    assert await store.erase(tenant, ["ind_gone"], []) == 0
