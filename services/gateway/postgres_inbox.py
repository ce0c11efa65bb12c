"""The pipeline's asyncpg adapter: partition leases, fair takes from the inbox, failures and dead letters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import asyncpg

ERROR_LIMIT = 2000  # characters of a failure's message kept
# Workers LISTEN here to rebalance at once: a worker that joins, leaves or frees partitions it handed over says so.
PARTITIONS_CHANNEL = "tailor_partitions"


@dataclass(frozen=True)
class InboxRow:
    tenant_id: str
    message_id: str
    seq: int
    payload: bytes
    attempts: int
    route: int
    partition: int = 0


@dataclass(frozen=True)
class DeadLetterRow:
    tenant_id: str
    message_id: str
    payload: bytes
    reason: str
    error: str
    attempts: int
    received_at: datetime | None
    failed_at: datetime


@dataclass(frozen=True)
class PipelineCounts:
    pending: int
    retrying: int
    dead_letters: int
    oldest_pending_seconds: float
    bulk_pending: int = 0                     # of pending, ingested as bulk
    oldest_live_pending_seconds: float = 0.0  # the oldest pending live (not bulk) event's age


# Pending (partition, tenant) pairs of the given partitions, skipping busy tenants: per partition, a loose index scan
# over the lane's pending index's tenants (one probe per pair, however long a backlog is; a single scan across
# partitions with a row comparison `(partition, tenant_id) > ...` reads every pending entry of a partition to find the
# next one); then, per pair, its oldest rows whose routing identity is not blocked, at most $3 each. {lane} is the
# lane's predicate, written out so that the planner matches it to that lane's partial index (inbox_pending or
# inbox_pending_bulk). {pair} adds columns per pair and {extra} to the result (the bulk take's arrival signal).
_TAKE = """
SELECT r.tenant_id, r.message_id, r.seq, r.payload, r.attempts, r.route, q.partition{extra}
FROM unnest($1::int[]) AS q(partition) CROSS JOIN LATERAL (
    WITH RECURSIVE tenants AS (
        (SELECT tenant_id FROM inbox WHERE processed_at IS NULL AND {lane} AND partition = q.partition
         ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT n.tenant_id FROM tenants AS t CROSS JOIN LATERAL (
            SELECT tenant_id FROM inbox
            WHERE processed_at IS NULL AND {lane} AND partition = q.partition AND tenant_id > t.tenant_id
            ORDER BY tenant_id LIMIT 1) AS n
    )
    SELECT tenant_id{pair} FROM tenants) AS p
CROSS JOIN LATERAL (
    SELECT i.tenant_id, i.message_id, i.seq, i.payload, i.attempts, i.route FROM inbox AS i
    WHERE i.processed_at IS NULL AND {lane} AND i.partition = q.partition AND i.tenant_id = p.tenant_id
      AND NOT EXISTS (SELECT 1 FROM blocked_routes AS b
                      WHERE b.tenant_id = i.tenant_id AND b.route = i.route AND b.until > now())
    ORDER BY i.seq LIMIT $3) AS r
WHERE NOT (p.tenant_id = ANY($2::text[]))"""
_TAKE_LIVE = _TAKE.format(lane="NOT bulk", pair="", extra="")
# The bulk take also says, per pair, how long ago its newest pending bulk row arrived (a tenant whose bulk rows are
# still arriving is being imported right now), and whether a live row has waited more than $4 seconds in any
# partition (live work is falling behind, on this worker or another).
_TAKE_BULK = _TAKE.format(lane="bulk", pair=""",
        (SELECT extract(epoch FROM now() - n.received_at) FROM inbox AS n
         WHERE n.processed_at IS NULL AND n.bulk AND n.partition = q.partition AND n.tenant_id = tenants.tenant_id
         ORDER BY n.seq DESC LIMIT 1) AS newest_age""",
                          extra=""", p.newest_age,
    coalesce((SELECT min(l.received_at) FROM inbox AS l WHERE l.processed_at IS NULL AND NOT l.bulk)
             < now() - make_interval(secs => $4), false) AS live_waiting""")


@dataclass(frozen=True)
class BulkTake:
    """Bulk rows taken, and what says whether to apply them at full speed or paced behind live work."""

    rows: list[InboxRow]
    newest_age: dict[str, float]  # per tenant taken: seconds since its newest pending bulk row arrived
    live_waiting: bool            # a live row has waited longer than asked, in some partition (any worker's)


# One tenant's pending rows of one lane after a given seq per partition (what its running task takes next), oldest
# first per partition, at most $4 each, skipping routing identities that wait for a retry.
_TAKE_MORE = """
SELECT r.tenant_id, r.message_id, r.seq, r.payload, r.attempts, r.route, q.partition
FROM unnest($2::int[], $3::bigint[]) AS q(partition, after) CROSS JOIN LATERAL (
    SELECT i.tenant_id, i.message_id, i.seq, i.payload, i.attempts, i.route FROM inbox AS i
    WHERE i.processed_at IS NULL AND {lane} AND i.partition = q.partition AND i.tenant_id = $1 AND i.seq > q.after
      AND NOT EXISTS (SELECT 1 FROM blocked_routes AS b
                      WHERE b.tenant_id = i.tenant_id AND b.route = i.route AND b.until > now())
    ORDER BY i.seq LIMIT $4) AS r"""
_TAKE_MORE_LIVE = _TAKE_MORE.format(lane="NOT bulk")
_TAKE_MORE_BULK = _TAKE_MORE.format(lane="bulk")

# Renews this worker's leases, then claims free or expired partitions up to its fair share, in one statement.
_CLAIM = """
WITH live AS (
    SELECT greatest(count(*), 1) AS n FROM pipeline_workers WHERE heartbeat_at > now() - make_interval(secs => $2)
), total AS (
    SELECT count(*) AS n FROM pipeline_partitions
), renewed AS (
    UPDATE pipeline_partitions SET lease_until = now() + make_interval(secs => $2)
    WHERE owner = $1 RETURNING partition
), wanted AS (
    SELECT partition FROM pipeline_partitions
    WHERE (owner IS NULL OR owner <> $1) AND lease_until < now()
    ORDER BY partition
    LIMIT greatest((SELECT ceil(total.n::float / live.n)::int FROM total, live) - (SELECT count(*) FROM renewed), 0)
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE pipeline_partitions AS p SET owner = $1, lease_until = now() + make_interval(secs => $2)
    FROM wanted WHERE p.partition = wanted.partition RETURNING p.partition
)
SELECT partition, (SELECT ceil(total.n::float / live.n)::int FROM total, live) AS share FROM renewed
UNION ALL SELECT partition, NULL FROM claimed
"""


def _rows(records) -> list[InboxRow]:
    return [InboxRow(r["tenant_id"], r["message_id"], r["seq"], bytes(r["payload"]), r["attempts"], r["route"],
                     r["partition"]) for r in records]


class InboxStore:
    """All SQL of the pipeline workers."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    # Workers and leases.
    async def heartbeat(self, worker_id: str) -> None:
        await self.pool.execute(
            "INSERT INTO pipeline_workers (worker_id) VALUES ($1) "
            "ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()", worker_id)

    async def claim(self, worker_id: str, lease_seconds: float) -> tuple[list[int], int]:
        """Renews this worker's leases and claims free partitions up to its fair share.

        Returns (the partitions it now holds, its fair share)."""
        rows = await self.pool.fetch(_CLAIM, worker_id, lease_seconds)
        shares = [r["share"] for r in rows if r["share"] is not None]
        return sorted(r["partition"] for r in rows), (shares[0] if shares else len(rows))

    async def release(self, worker_id: str, partitions: list[int], handover_seconds: float) -> None:
        """Gives partitions up; others may claim them after handover_seconds (work in flight ends first)."""
        await self.pool.execute(
            "UPDATE pipeline_partitions SET owner = NULL, lease_until = now() + make_interval(secs => $3) "
            "WHERE owner = $1 AND partition = ANY($2::int[])", worker_id, partitions, handover_seconds)

    async def hand_over(self, partitions: list[int]) -> None:
        """Ends the handover of partitions this worker released once its work on them is done: they are free at
        once (unless another worker claimed them meanwhile), and the workers are told to claim them."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE pipeline_partitions SET lease_until = '-infinity' "
                               "WHERE owner IS NULL AND partition = ANY($1::int[])", partitions)
            await conn.execute("SELECT pg_notify($1, '')", PARTITIONS_CHANNEL)

    async def announce(self) -> None:
        """Tells the other workers to rebalance now (this one just joined)."""
        await self.pool.execute("SELECT pg_notify($1, '')", PARTITIONS_CHANNEL)

    async def leave(self, worker_id: str) -> None:
        """A clean stop: every partition is free at once, the worker no longer counts as live, and the others are
        told to claim its partitions now."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE pipeline_partitions SET owner = NULL, lease_until = '-infinity' "
                               "WHERE owner = $1", worker_id)
            await conn.execute("DELETE FROM pipeline_workers WHERE worker_id = $1", worker_id)
            await conn.execute("SELECT pg_notify($1, '')", PARTITIONS_CHANNEL)

    async def owners(self) -> dict[int, str | None]:
        """Each partition's owner while its lease lasts (None when free or expired)."""
        rows = await self.pool.fetch(
            "SELECT partition, CASE WHEN lease_until > now() THEN owner END AS owner FROM pipeline_partitions")
        return {r["partition"]: r["owner"] for r in rows}

    # Work.
    async def take(self, partitions: list[int], busy_tenants: list[str], per_pair: int) -> list[InboxRow]:
        """Pending rows of the partitions, oldest first per (partition, tenant), at most per_pair each, skipping busy
        tenants and routing identities that wait for a retry."""
        return _rows(await self.pool.fetch(_TAKE_LIVE, partitions, busy_tenants, per_pair))

    async def take_more(self, tenant_id: str, after: list[tuple[int, int]], per_pair: int, bulk: bool = False
                        ) -> list[InboxRow]:
        """One tenant's pending rows of one lane after (partition, seq) pairs, at most per_pair per partition,
        skipping routing identities that wait for a retry."""
        return _rows(await self.pool.fetch(_TAKE_MORE_BULK if bulk else _TAKE_MORE_LIVE, tenant_id,
                                           [p for p, _ in after], [s for _, s in after], per_pair))

    async def take_bulk(self, partitions: list[int], busy_tenants: list[str], per_pair: int,
                        live_wait_seconds: float) -> BulkTake:
        """take, from the bulk lane; with each tenant's newest arrival and whether a live row has waited longer than
        live_wait_seconds anywhere."""
        rows = await self.pool.fetch(_TAKE_BULK, partitions, busy_tenants, per_pair, live_wait_seconds)
        newest: dict[str, float] = {}
        for r in rows:
            age = float(r["newest_age"] if r["newest_age"] is not None else math.inf)
            newest[r["tenant_id"]] = min(age, newest.get(r["tenant_id"], math.inf))
        return BulkTake(_rows(rows), newest, bool(rows) and rows[0]["live_waiting"])

    async def mark_processed(self, tenant_id: str, rows: list[InboxRow]) -> None:
        """Marks rows done; a routing identity that waited for one of them is free again."""
        async with self.pool.acquire() as conn, conn.transaction():
            # By primary key: with `processed_at IS NULL` in the WHERE clause the planner takes a partial index of
            # pending rows (estimated few) and filters the whole backlog of the tenant for every chunk.
            await conn.execute(
                "UPDATE inbox SET processed_at = coalesce(processed_at, now()) "
                "WHERE tenant_id = $1 AND message_id = ANY($2::text[])", tenant_id, [r.message_id for r in rows])
            retried = sorted({r.route for r in rows if r.attempts})
            if retried:
                await conn.execute("DELETE FROM blocked_routes WHERE tenant_id = $1 AND route = ANY($2::bigint[])",
                                   tenant_id, retried)

    async def retry_later(self, row: InboxRow, reason: str, error: str, backoff_seconds: float) -> int:
        """Counts a failed attempt and holds the row's routing identity back for backoff_seconds; returns attempts."""
        async with self.pool.acquire() as conn, conn.transaction():
            attempts = await conn.fetchval(
                "UPDATE inbox SET attempts = attempts + 1, last_error = $3, last_reason = $4 "
                "WHERE tenant_id = $1 AND message_id = $2 RETURNING attempts",
                row.tenant_id, row.message_id, error[:ERROR_LIMIT], reason)
            await conn.execute(
                "INSERT INTO blocked_routes (tenant_id, route, until) "
                "VALUES ($1, $2, now() + make_interval(secs => $3)) "
                "ON CONFLICT (tenant_id, route) DO UPDATE SET until = excluded.until",
                row.tenant_id, row.route, backoff_seconds)
            return attempts or 0

    async def dead_letter(self, row: InboxRow, reason: str, error: str) -> None:
        """Moves the row to dead_letters with why; its routing identity's later events go on."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO dead_letters (tenant_id, message_id, payload, error, attempts, reason, received_at) "
                "SELECT tenant_id, message_id, payload, $3, attempts + 1, $4, received_at FROM inbox "
                "WHERE tenant_id = $1 AND message_id = $2 "
                "ON CONFLICT (tenant_id, message_id) DO UPDATE SET error = excluded.error, "
                "attempts = excluded.attempts, reason = excluded.reason, failed_at = now()",
                row.tenant_id, row.message_id, error[:ERROR_LIMIT], reason)
            await conn.execute(
                "UPDATE inbox SET processed_at = now(), attempts = attempts + 1, last_error = $3, last_reason = $4 "
                "WHERE tenant_id = $1 AND message_id = $2", row.tenant_id, row.message_id, error[:ERROR_LIMIT], reason)
            await conn.execute("DELETE FROM blocked_routes WHERE tenant_id = $1 AND route = $2",
                               row.tenant_id, row.route)

    # Dead letters as an API.
    @staticmethod
    def _where(message_ids: list[str] | None, reason: str, since: datetime | None, until: datetime | None
               ) -> tuple[str, list]:
        clauses, args = ["tenant_id = $1"], []
        for clause, value in (("message_id = ANY(${}::text[])", message_ids), ("reason = ${}", reason or None),
                              ("failed_at >= ${}", since), ("failed_at < ${}", until)):
            if value is not None:
                args.append(value)
                clauses.append(clause.format(len(args) + 1))
        return " AND ".join(clauses), args

    async def list_dead_letters(self, tenant_id: str, reason: str, since: datetime | None, until: datetime | None,
                                after: tuple[datetime, str] | None, limit: int) -> list[DeadLetterRow]:
        where, args = self._where(None, reason, since, until)
        if after is not None:
            args += list(after)
            where += f" AND (failed_at, message_id) < (${len(args)}, ${len(args) + 1})"
        rows = await self.pool.fetch(
            f"SELECT tenant_id, message_id, payload, reason, error, attempts, received_at, failed_at FROM dead_letters "
            f"WHERE {where} ORDER BY failed_at DESC, message_id DESC LIMIT ${len(args) + 2}", tenant_id, *args, limit)
        return [DeadLetterRow(r["tenant_id"], r["message_id"], bytes(r["payload"]), r["reason"], r["error"],
                              r["attempts"], r["received_at"], r["failed_at"]) for r in rows]

    async def retry_dead_letters(self, tenant_id: str, message_ids: list[str] | None, reason: str,
                                 since: datetime | None, until: datetime | None) -> int:
        """Puts matching dead letters back in the inbox as pending (their original order) and deletes them."""
        where, args = self._where(message_ids, reason, since, until)
        async with self.pool.acquire() as conn, conn.transaction():
            ids = [r["message_id"] for r in await conn.fetch(
                f"DELETE FROM dead_letters WHERE {where} RETURNING message_id", tenant_id, *args)]
            if ids:
                await conn.execute(
                    "UPDATE inbox SET processed_at = NULL, attempts = 0 "
                    "WHERE tenant_id = $1 AND message_id = ANY($2::text[])", tenant_id, ids)
                await conn.execute("SELECT pg_notify('tailor_inbox', 'bulk')")  # either lane's rows may be back
            return len(ids)

    async def discard_dead_letters(self, tenant_id: str, message_ids: list[str] | None, reason: str,
                                   since: datetime | None, until: datetime | None) -> int:
        where, args = self._where(message_ids, reason, since, until)
        status = await self.pool.execute(f"DELETE FROM dead_letters WHERE {where}", tenant_id, *args)
        return int(status.rsplit(" ", 1)[-1])

    async def counts(self, tenant_id: str) -> PipelineCounts:
        row = await self.pool.fetchrow(
            "SELECT p.*, (SELECT count(*) FROM dead_letters WHERE tenant_id = $1) AS dead FROM ("
            " SELECT count(*) AS pending, count(*) FILTER (WHERE attempts > 0) AS retrying,"
            " count(*) FILTER (WHERE bulk) AS bulk, extract(epoch FROM now() - min(received_at)) AS oldest,"
            " extract(epoch FROM now() - min(received_at) FILTER (WHERE NOT bulk)) AS oldest_live"
            " FROM inbox WHERE tenant_id = $1 AND processed_at IS NULL) AS p", tenant_id)
        return PipelineCounts(row["pending"], row["retrying"], row["dead"], float(row["oldest"] or 0.0),
                              row["bulk"], float(row["oldest_live"] or 0.0))

    async def minutes(self, tenant_id: str, since: datetime) -> tuple[dict, dict]:
        """Per minute from since: {minute: received} and {minute: (processed, mean lag in seconds)}."""
        received = await self.pool.fetch(
            "SELECT date_trunc('minute', received_at) AS m, count(*) AS n FROM inbox "
            "WHERE tenant_id = $1 AND received_at >= $2 GROUP BY 1", tenant_id, since)
        processed = await self.pool.fetch(
            "SELECT date_trunc('minute', processed_at) AS m, count(*) AS n, "
            "avg(extract(epoch FROM processed_at - received_at)) AS lag FROM inbox "
            "WHERE tenant_id = $1 AND processed_at >= $2 GROUP BY 1", tenant_id, since)
        return ({r["m"]: r["n"] for r in received},
                {r["m"]: (r["n"], float(r["lag"] or 0.0)) for r in processed})

    async def backlog_by_tenant(self) -> list[tuple[str, int, float, int, int]]:
        """(tenant, pending events, age of the oldest in seconds, dead letters, pending bulk events) of every tenant
        with any (metrics)."""
        rows = await self.pool.fetch(
            "WITH pending AS (SELECT tenant_id, count(*) AS n, extract(epoch FROM now() - min(received_at)) AS age, "
            "                 count(*) FILTER (WHERE bulk) AS bulk "
            "                 FROM inbox WHERE processed_at IS NULL GROUP BY tenant_id), "
            "dead AS (SELECT tenant_id, count(*) AS n FROM dead_letters GROUP BY tenant_id) "
            "SELECT coalesce(p.tenant_id, d.tenant_id) AS tenant_id, coalesce(p.n, 0) AS pending, "
            "coalesce(p.age, 0) AS age, coalesce(d.n, 0) AS dead, coalesce(p.bulk, 0) AS bulk "
            "FROM pending AS p FULL JOIN dead AS d USING (tenant_id)")
        return [(r["tenant_id"], r["pending"], float(r["age"]), r["dead"], r["bulk"]) for r in rows]
