"""Batch output rows on a real PostgreSQL: a page is inserted, and a page written again replaces its rows."""

from __future__ import annotations

import json
from datetime import date

import pytest

from services.gateway import server as gateway_server
from services.gateway.postgres_batch import OutputRow, PostgresBatch
from shared import db
from shared.runtime import prepare_schema


@pytest.fixture(scope="module")
async def pool(database_url):
    pool = await prepare_schema(database_url, "gateway", gateway_server.__file__)
    yield pool
    await pool.close()


def _rows(members: list[str], headline: str) -> list[OutputRow]:
    return [OutputRow(m, m, "buyers", f"pt_{point}", point, f"dec_{point}", f"pz_{m}_{point}",
                      {"decision_name": "top", "data": [{"headline": f"{headline} {m}", "score": 0.5}],
                       "diagnostics": []})
            for m in members for point in ("banner", "recs")]


async def test_a_page_written_again_replaces_its_rows_and_counts_only_new_ones(pool, tenant):
    batch = PostgresBatch(pool)
    with db.all_tenants():
        job = await batch.create_job(tenant, "job_1", "buyers", ["banner", "recs"], "", 3)
        period = date(2026, 12, 1)
        assert await batch.commit_page(tenant, job.job_id, _rows(["u1", "u2"], "first"), "t1", 2, period) == 4
        # A redone page (a worker stopped after the commit) plus a member new to the job: only that member counts.
        assert await batch.commit_page(tenant, job.job_id, _rows(["u2", "u3"], "again"), "t2", 2, period) == 2
        stored = await batch.results(tenant, job.job_id, 10, None)
        assert [(s.row.unified_individual_id, s.row.point_name, s.row.payload["data"][0]["headline"])
                for s in stored] == [("u1", "banner", "first u1"), ("u1", "recs", "first u1"),
                                     ("u2", "banner", "again u2"), ("u2", "recs", "again u2"),
                                     ("u3", "banner", "again u3"), ("u3", "recs", "again u3")]
        assert [(s.row.point_id, s.row.decision_id, s.row.segment_id) for s in stored[:2]] == [
            ("pt_banner", "dec_banner", "buyers"), ("pt_recs", "dec_recs", "buyers")]
        assert json.loads(await pool.fetchval(
            "SELECT payload::text FROM batch_results WHERE tenant_id = $1 AND unified_individual_id = 'u3' "
            "AND point_name = 'recs'", tenant)) == _rows(["u3"], "again")[1].payload
        after = await batch.job(tenant, job.job_id)
        assert (after.processed_count, after.row_count, after.checkpoint) == (4, 6, "t2")
        # Watchers read rows in write order: a page's rows in the order given; rewritten rows keep their place.
        order = [(s.row.unified_individual_id, s.row.point_name) for s in
                 await batch.results_after(tenant, job.job_id, 0, 10)]
        assert order == [("u1", "banner"), ("u1", "recs"), ("u2", "banner"), ("u2", "recs"), ("u3", "banner"),
                         ("u3", "recs")]
