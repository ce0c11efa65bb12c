"""The asyncpg adapter of batch personalization: jobs with checkpoints, output rows and cron schedules."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
import orjson

from services.gateway.postgres_quotas import add_credits

BATCH_CHANNEL = "tailor_batch"


@dataclass(frozen=True)
class Job:
    """A batch job: a segment's members decided for some points, from a checkpoint."""

    tenant_id: str
    job_id: str
    segment: str
    point_names: tuple[str, ...]
    state: str  # PENDING, RUNNING, SUCCEEDED, FAILED
    processed_count: int
    row_count: int
    total_count: int
    schedule_name: str
    error: str
    checkpoint: str
    created_at: datetime
    ended_at: datetime | None
    context_sources: tuple[str, ...] = ()  # BatchContextSource names without the prefix, e.g. LAST_CART


@dataclass(slots=True)  # not frozen: a batch page makes one per member, and a frozen one costs 9x as much to make
class OutputRow:
    """One decided (individual, point) of a job, as written."""

    unified_individual_id: str
    individual_id: str
    segment_id: str
    point_id: str
    point_name: str
    decision_id: str
    personalization_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredRow:
    """An output row as stored: with its job, write time and write order."""

    job_id: str
    row: OutputRow
    updated_at: datetime
    seq: int


@dataclass(frozen=True)
class Schedule:
    """A cron schedule that starts batch jobs."""

    tenant_id: str
    name: str
    segment: str
    point_names: tuple[str, ...]
    cron: str
    enabled: bool
    next_run_at: datetime
    context_sources: tuple[str, ...] = ()


def _job(row) -> Job:
    return Job(row["tenant_id"], row["job_id"], row["segment"], tuple(row["point_names"]), row["state"],
               row["processed_count"], row["row_count"], row["total_count"], row["schedule_name"], row["error"],
               row["checkpoint"], row["created_at"], row["ended_at"], tuple(row["context_sources"]))


def _stored(row) -> StoredRow:
    payload = row["payload"]
    return StoredRow(row["job_id"], OutputRow(
        row["unified_individual_id"], row["individual_id"], row["segment_id"], row["point_id"], row["point_name"],
        row["decision_id"], row["personalization_id"], json.loads(payload) if isinstance(payload, str) else payload),
        row["updated_at"], row["seq"])


def _schedule(row) -> Schedule:
    return Schedule(row["tenant_id"], row["name"], row["segment"], tuple(row["point_names"]), row["cron"],
                    row["enabled"], row["next_run_at"], tuple(row["context_sources"]))


_INSERT_ROWS = (
    "INSERT INTO batch_results (tenant_id, job_id, unified_individual_id, point_name, individual_id, segment_id, "
    "point_id, decision_id, personalization_id, payload) "
    "SELECT $1, $2, r.u, k.p, r.i, k.s, k.pid, k.d, r.per, r.pay::json "
    "FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int[]) WITH ORDINALITY AS r(u, i, per, pay, n, o) "
    "JOIN unnest($8::text[], $9::text[], $10::text[], $11::text[]) WITH ORDINALITY AS k(s, pid, p, d, n) USING (n) "
    "ORDER BY r.o ")  # seq follows the rows' order
_UPSERT_ROWS = (
    "ON CONFLICT (tenant_id, job_id, unified_individual_id, point_name) DO UPDATE SET "
    "decision_id = excluded.decision_id, personalization_id = excluded.personalization_id, "
    "payload = excluded.payload, updated_at = now() RETURNING (xmax = 0) AS inserted")


class PostgresBatch:
    """All SQL of batch jobs. Every query names the tenant, except the leader's search for work."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create_job(self, tenant_id: str, job_id: str, segment: str, point_names: Sequence[str],
                         schedule_name: str, total: int, context_sources: Sequence[str] = (),
                         conn: asyncpg.Connection | None = None) -> Job:
        """Inserts a PENDING job and wakes the batch leader."""
        db = conn or self.pool
        row = await db.fetchrow(
            "INSERT INTO batch_jobs (tenant_id, job_id, segment, point_names, schedule_name, total_count, "
            "context_sources) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            tenant_id, job_id, segment, list(point_names), schedule_name, total, list(context_sources))
        await db.execute("SELECT pg_notify($1, '')", BATCH_CHANNEL)
        return _job(row)

    async def job(self, tenant_id: str, job_id: str) -> Job | None:
        row = await self.pool.fetchrow("SELECT * FROM batch_jobs WHERE tenant_id = $1 AND job_id = $2",
                                       tenant_id, job_id)
        return None if row is None else _job(row)

    async def list_jobs(self, tenant_id: str, limit: int, after: tuple[datetime, str] | None) -> list[Job]:
        """Jobs newest first, after a (created_at, job_id) key."""
        if after is None:
            rows = await self.pool.fetch("SELECT * FROM batch_jobs WHERE tenant_id = $1 "
                                         "ORDER BY created_at DESC, job_id DESC LIMIT $2", tenant_id, limit)
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM batch_jobs WHERE tenant_id = $1 AND (created_at, job_id) < ($2, $3) "
                "ORDER BY created_at DESC, job_id DESC LIMIT $4", tenant_id, after[0], after[1], limit)
        return [_job(r) for r in rows]

    async def results(self, tenant_id: str, job_id: str, limit: int,
                      after: tuple[str, str] | None) -> list[StoredRow]:
        """Output rows by (unified id, point name), after that key."""
        rows = await self.pool.fetch(
            "SELECT * FROM batch_results WHERE tenant_id = $1 AND job_id = $2 "
            "AND ($3::text IS NULL OR (unified_individual_id, point_name) > ($3, $4)) "
            "ORDER BY unified_individual_id, point_name LIMIT $5",
            tenant_id, job_id, after[0] if after else None, after[1] if after else "", limit)
        return [_stored(r) for r in rows]

    async def results_after(self, tenant_id: str, job_id: str, seq: int, limit: int) -> list[StoredRow]:
        """Output rows in write order after seq (for watchers)."""
        rows = await self.pool.fetch(
            "SELECT * FROM batch_results WHERE tenant_id = $1 AND job_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            tenant_id, job_id, seq, limit)
        return [_stored(r) for r in rows]

    async def upsert_schedule(self, schedule: Schedule) -> Schedule:
        row = await self.pool.fetchrow(
            "INSERT INTO batch_schedules (tenant_id, name, segment, point_names, cron, enabled, next_run_at, "
            "context_sources) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, name) DO UPDATE SET "
            "segment = excluded.segment, point_names = excluded.point_names, cron = excluded.cron, "
            "enabled = excluded.enabled, next_run_at = excluded.next_run_at, "
            "context_sources = excluded.context_sources RETURNING *",
            schedule.tenant_id, schedule.name, schedule.segment, list(schedule.point_names), schedule.cron,
            schedule.enabled, schedule.next_run_at, list(schedule.context_sources))
        return _schedule(row)

    async def list_schedules(self, tenant_id: str, limit: int, after_name: str) -> list[Schedule]:
        rows = await self.pool.fetch(
            "SELECT * FROM batch_schedules WHERE tenant_id = $1 AND name > $2 ORDER BY name LIMIT $3",
            tenant_id, after_name, limit)
        return [_schedule(r) for r in rows]

    async def start_due(self, now: datetime, next_run: Callable[[Schedule, datetime], datetime],
                        new_job_id: Callable[[], str]) -> list[Job]:
        """In one transaction: every enabled schedule due at now gets its next run time and a new job (replicas
        skip schedules another has locked)."""
        jobs = []
        async with self.pool.acquire() as conn, conn.transaction():
            due = await conn.fetch("SELECT * FROM batch_schedules WHERE enabled AND next_run_at <= $1 "
                                   "FOR UPDATE SKIP LOCKED", now)
            for row in due:
                schedule = _schedule(row)
                await conn.execute("UPDATE batch_schedules SET next_run_at = $3 WHERE tenant_id = $1 AND name = $2",
                                   schedule.tenant_id, schedule.name, next_run(schedule, now))
                jobs.append(await self.create_job(schedule.tenant_id, new_job_id(), schedule.segment,
                                                  schedule.point_names, schedule.name, 0,
                                                  schedule.context_sources, conn))
        return jobs

    async def next_open_job(self) -> Job | None:
        """The job to run next, of any tenant: RUNNING ones (to resume) first, then the oldest PENDING one."""
        row = await self.pool.fetchrow(
            "SELECT * FROM batch_jobs WHERE state IN ('RUNNING', 'PENDING') "
            "ORDER BY state = 'RUNNING' DESC, created_at LIMIT 1")
        return None if row is None else _job(row)

    async def mark_running(self, tenant_id: str, job_id: str) -> None:
        await self.pool.execute("UPDATE batch_jobs SET state = 'RUNNING' WHERE tenant_id = $1 AND job_id = $2",
                                tenant_id, job_id)

    async def mark_ended(self, tenant_id: str, job_id: str, error: str | None = None) -> None:
        """SUCCEEDED, or FAILED with the error."""
        if error is None:
            await self.pool.execute("UPDATE batch_jobs SET state = 'SUCCEEDED', ended_at = now() "
                                    "WHERE tenant_id = $1 AND job_id = $2", tenant_id, job_id)
        else:
            await self.pool.execute("UPDATE batch_jobs SET state = 'FAILED', error = $3, ended_at = now() "
                                    "WHERE tenant_id = $1 AND job_id = $2", tenant_id, job_id, error)

    async def commit_page(self, tenant_id: str, job_id: str, rows: Sequence[OutputRow], checkpoint: str,
                          members: int, period: date) -> int:
        """A page's rows (upserted: a re-run page replaces its rows), their credits and the job's checkpoint, in
        one transaction; returns the rows new to the job (the credits counted)."""
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = 0
            if rows:
                # A page's rows share a few (segment, point, decision) values: each is sent once and rows name its
                # position (asyncpg encodes every array element alike, a repeated one included: about 0.6 us each).
                positions: dict[tuple[str, str, str, str], int] = {}
                kinds = [positions.setdefault((r.segment_id, r.point_id, r.point_name, r.decision_id),
                                              len(positions) + 1) for r in rows]
                args = [tenant_id, job_id, [r.unified_individual_id for r in rows], [r.individual_id for r in rows],
                        [r.personalization_id for r in rows], [orjson.dumps(r.payload).decode() for r in rows], kinds,
                        *[list(c) for c in zip(*positions)]]
                try:
                    # Most pages are new: a plain insert costs PostgreSQL less than an upsert. A redone page's
                    # rows collide; then only this savepoint is undone and the page is upserted.
                    async with conn.transaction():
                        await conn.execute(_INSERT_ROWS, *args)
                    inserted = len(rows)
                except asyncpg.UniqueViolationError:
                    written = await conn.fetch(_INSERT_ROWS + _UPSERT_ROWS, *args)
                    inserted = sum(1 for r in written if r["inserted"])
            await add_credits(conn, tenant_id, period, inserted)
            await conn.execute(
                "UPDATE batch_jobs SET checkpoint = $3, processed_count = processed_count + $4, "
                "row_count = row_count + $5 WHERE tenant_id = $1 AND job_id = $2",
                tenant_id, job_id, checkpoint, members, inserted)
        return inserted
