"""asyncpg adapter of the identity repository: one transaction per resolve, advisory locks per identity."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random

import asyncpg

from services.identity.service import IndividualView, Key, Owner, Plan, Planner
from shared.errors import Unavailable
from shared.log import get_logger

log = get_logger("identity.postgres")

# A resolve whose snapshot went stale (a concurrent merge), or that lost a deadlock, is retried this many times.
MAX_ATTEMPTS = 8

_OWNERS = """
SELECT k.t, k.v, n.individual_id, n.created_at
FROM unnest($2::text[], $3::text[]) AS k(t, v)
JOIN identities AS i ON i.tenant_id = $1 AND i.id_type = k.t AND i.id_value = k.v
JOIN individuals AS n ON n.tenant_id = $1 AND n.individual_id = i.individual_id
"""

# The array is sorted by the caller, and unnest yields it in order, so every transaction takes its locks in the
# same global order: two batches that share identities cannot deadlock on them. The clock is read afterwards.
_LOCK = """
SELECT clock_timestamp() FROM (SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k) AS locked
"""

# Row locks on the owners, in id order; a row that is no longer a survivor means the snapshot is stale.
_LOCK_OWNERS = """
SELECT individual_id, merged_into FROM individuals
WHERE tenant_id = $1 AND individual_id = ANY($2::text[])
ORDER BY individual_id
FOR NO KEY UPDATE
"""

# All the writes of one plan in one round trip. Foreign keys are checked at the end of the statement.
_APPLY = """
WITH new_individuals AS (
    INSERT INTO individuals (tenant_id, individual_id, created_at, merged_into)
    SELECT $1, u.id, $2, u.merged_into FROM unnest($3::text[], $4::text[]) AS u(id, merged_into)
), redirected AS (
    UPDATE individuals AS n SET merged_into = r.survivor
    FROM unnest($5::text[], $6::text[]) AS r(merged, survivor)
    WHERE n.tenant_id = $1 AND (n.individual_id = r.merged OR n.merged_into = r.merged)
), moved AS (
    UPDATE identities AS i SET individual_id = r.survivor
    FROM unnest($5::text[], $6::text[]) AS r(merged, survivor)
    WHERE i.tenant_id = $1 AND i.individual_id = r.merged
), new_identities AS (
    INSERT INTO identities (tenant_id, id_type, id_value, individual_id, first_seen_at)
    SELECT $1, u.t, u.v, u.owner, $2 FROM unnest($7::text[], $8::text[], $9::text[]) AS u(t, v, owner)
)
INSERT INTO merge_events (tenant_id, survivor_id, merged_id, rule, evidence, merged_at)
SELECT $1, u.s, u.m, u.r, u.e::jsonb, $2
FROM unnest($10::text[], $11::text[], $12::text[], $13::text[]) AS u(s, m, r, e)
"""

_GET = """
WITH target AS (
    SELECT coalesce(merged_into, individual_id) AS id FROM individuals WHERE tenant_id = $1 AND individual_id = $2
)
SELECT s.individual_id, s.created_at,
    ARRAY(SELECT a.individual_id FROM individuals AS a
          WHERE a.tenant_id = $1 AND a.merged_into = s.individual_id ORDER BY a.individual_id) AS alias_ids,
    ARRAY(SELECT ARRAY[i.id_type, i.id_value] FROM identities AS i
          WHERE i.tenant_id = $1 AND i.individual_id = s.individual_id
          ORDER BY i.first_seen_at, i.id_type, i.id_value) AS identities
FROM target AS t
JOIN individuals AS s ON s.tenant_id = $1 AND s.individual_id = t.id
"""


def lock_key(tenant: str, key: Key) -> int:
    """A stable signed 64-bit advisory lock key for one identity of one tenant."""
    digest = hashlib.blake2b(f"{tenant}\x1f{key[0]}\x1f{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Stale(Exception):
    """An owner read before its row lock was merged away meanwhile."""


class PostgresRepository:
    """Identities, individuals and merge history in the service's schema."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def lookup(self, tenant: str, keys: list[Key]) -> dict[Key, Owner]:
        async with self.pool.acquire() as conn:
            return await _owners(conn, tenant, keys)

    async def resolve(self, tenant: str, keys: list[Key], planner: Planner) -> Plan:
        locks = sorted({lock_key(tenant, key) for key in keys})
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    now = await conn.fetchval(_LOCK, locks)
                    owners = await _owners(conn, tenant, keys)
                    ids = sorted({o.individual_id for o in owners.values()})
                    if ids:
                        rows = await conn.fetch(_LOCK_OWNERS, tenant, ids)
                        if len(rows) != len(ids) or any(r["merged_into"] is not None for r in rows):
                            raise _Stale()
                    plan = planner(owners, now)
                    if plan.writes:
                        await _apply(conn, tenant, now, plan)
                    return plan
            except (_Stale, asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as error:
                log.info("identity_resolve_retry", attempt=attempt, cause=type(error).__name__)
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        raise Unavailable(
            "identity resolution kept conflicting with concurrent merges; retry", reason="RESOLVE_CONFLICT"
        )

    async def get_individual(self, tenant: str, individual_id: str) -> IndividualView | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_GET, tenant, individual_id)
        if row is None:
            return None
        return IndividualView(
            individual_id=row["individual_id"],
            identities=[(t, v) for t, v in row["identities"]],
            alias_ids=list(row["alias_ids"]),
            created_at=row["created_at"],
        )


async def _owners(conn: asyncpg.Connection, tenant: str, keys: list[Key]) -> dict[Key, Owner]:
    rows = await conn.fetch(_OWNERS, tenant, [k[0] for k in keys], [k[1] for k in keys])
    return {(r["t"], r["v"]): Owner(r["individual_id"], r["created_at"]) for r in rows}


async def _apply(conn: asyncpg.Connection, tenant: str, now, plan: Plan) -> None:
    await conn.execute(
        _APPLY,
        tenant,
        now,
        [n.individual_id for n in plan.new_individuals],
        [n.merged_into for n in plan.new_individuals],
        list(plan.redirects),
        list(plan.redirects.values()),
        [key[0] for key, _ in plan.new_identities],
        [key[1] for key, _ in plan.new_identities],
        [owner for _, owner in plan.new_identities],
        [m.survivor_id for m in plan.merges],
        [m.merged_id for m in plan.merges],
        [m.rule for m in plan.merges],
        [json.dumps([{"type": t, "value": v} for t, v in m.evidence]) for m in plan.merges],
    )
