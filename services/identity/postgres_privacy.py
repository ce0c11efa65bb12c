"""asyncpg adapter of the identity service's privacy use cases: tombstones, erasure and export."""

from __future__ import annotations

import os
from dataclasses import dataclass

import asyncpg

from services.identity.model import Key
from services.identity.postgres import tenant_lock
from shared.privacy import table_rows

INDIVIDUAL = "\x00individual"  # the "type" under which forgotten unified ids are hashed

# Rows of the individual (and its aliases) in every table of the schema, for ExportIndividual.
_EXPORT = {
    "individuals": "SELECT to_jsonb(t) - 'tenant_id' AS row FROM individuals AS t"
                   " WHERE t.tenant_id = $1 AND t.individual_id = ANY($2::text[]) ORDER BY t.individual_id",
    "identities": "SELECT to_jsonb(t) - 'tenant_id' AS row FROM identities AS t"
                  " WHERE t.tenant_id = $1 AND t.individual_id = ANY($2::text[]) ORDER BY t.id_type, t.id_value",
    "source_records": "SELECT to_jsonb(t) - 'tenant_id' AS row FROM source_records AS t"
                      " WHERE t.tenant_id = $1 AND t.individual_id = ANY($2::text[]) ORDER BY t.created_at, t.record_id",
    "shared_identities": "SELECT to_jsonb(t) - 'tenant_id' AS row FROM shared_identities AS t"
                         " JOIN source_records AS r ON r.tenant_id = $1 AND r.record_id = t.record_id"
                         " WHERE t.tenant_id = $1 AND r.individual_id = ANY($2::text[]) ORDER BY t.id_type, t.id_value",
    "separations": "SELECT to_jsonb(t) - 'tenant_id' AS row FROM separations AS t"
                   " WHERE t.tenant_id = $1 AND (t.individual_id = ANY($2::text[]) OR t.other_id = ANY($2::text[]))",
    "merge_events": "SELECT to_jsonb(t) - 'tenant_id' AS row FROM merge_events AS t"
                    " WHERE t.tenant_id = $1 AND (t.survivor_id = ANY($2::text[]) OR t.merged_id = ANY($2::text[]))"
                    " ORDER BY t.event_id",
}

# Every row of the individuals in one statement; records other individuals hold that were first seen under them
# keep no trace of the forgotten ids (their origin becomes their current owner).
_ERASE = """
WITH ids AS (
    SELECT DISTINCT x FROM (
        SELECT unnest($2::text[]) AS x
        UNION ALL SELECT individual_id FROM individuals WHERE tenant_id = $1 AND merged_into = ANY($2::text[])
    ) AS u
), records AS (
    DELETE FROM source_records WHERE tenant_id = $1 AND individual_id IN (SELECT x FROM ids) RETURNING record_id
), blocks AS (
    DELETE FROM record_blocks WHERE tenant_id = $1 AND record_id IN (SELECT record_id FROM records) RETURNING 1
), shared AS (
    DELETE FROM shared_identities WHERE tenant_id = $1 AND record_id IN (SELECT record_id FROM records) RETURNING 1
), record_origins AS (
    UPDATE source_records SET origin_individual_id = individual_id
    WHERE tenant_id = $1 AND origin_individual_id IN (SELECT x FROM ids)
      AND individual_id NOT IN (SELECT x FROM ids) RETURNING 1
), identity_rows AS (
    DELETE FROM identities WHERE tenant_id = $1 AND individual_id IN (SELECT x FROM ids) RETURNING 1
), identity_origins AS (
    UPDATE identities SET origin_individual_id = individual_id
    WHERE tenant_id = $1 AND origin_individual_id IN (SELECT x FROM ids)
      AND individual_id NOT IN (SELECT x FROM ids) RETURNING 1
), separated AS (
    DELETE FROM separations WHERE tenant_id = $1
      AND (individual_id IN (SELECT x FROM ids) OR other_id IN (SELECT x FROM ids)) RETURNING 1
), history AS (
    DELETE FROM merge_events WHERE tenant_id = $1
      AND (survivor_id IN (SELECT x FROM ids) OR merged_id IN (SELECT x FROM ids)) RETURNING 1
)
SELECT (SELECT count(*) FROM records) + (SELECT count(*) FROM blocks) + (SELECT count(*) FROM shared)
     + (SELECT count(*) FROM record_origins) + (SELECT count(*) FROM identity_rows)
     + (SELECT count(*) FROM identity_origins) + (SELECT count(*) FROM separated) + (SELECT count(*) FROM history)
     AS erased, ARRAY(SELECT x FROM ids) AS ids
"""


@dataclass(frozen=True)
class Target:
    """The survivor a forget request names, its aliases and every identity it holds (unique and searchable)."""

    individual_id: str
    alias_ids: list[str]
    unique: list[Key]
    shared: list[Key]
    suppressed_count: int = 0  # unique identities tombstoned for it (this call and earlier ones)


class PostgresPrivacy:
    """Tombstones, erasure and export in the identity schema."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def salt(self, tenant: str) -> bytes | None:
        """The tenant's tombstone salt, or None when it never forgot anyone."""
        raw = await self.pool.fetchval("SELECT salt FROM suppression_salts WHERE tenant_id = $1", tenant)
        return None if raw is None else bytes(raw)

    async def suppressed(self, tenant: str, hashes: list[bytes]) -> set[bytes]:
        """Which of the hashes are tombstones."""
        rows = await self.pool.fetch(
            "SELECT value_hash FROM suppressions WHERE tenant_id = $1 AND value_hash = ANY($2::bytea[])", tenant, hashes)
        return {bytes(r["value_hash"]) for r in rows}

    async def suppress(self, tenant: str, individual_id: str | None, key: Key | None, hasher
                       ) -> tuple[Target | None, bytes | None, bool]:
        """Under the tenant's exclusive lock: finds the survivor the target names (also half-way through a forget),
        tombstones its unique identities and ids (hasher(salt, type, value) makes a tombstone) naming it as pending,
        and deletes everything of it but its individuals rows. Returns (target or None, the tenant's salt or None,
        target tombstoned). A refused call stores nothing: the salt is created with the tenant's first tombstones."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", tenant_lock(tenant))
            raw = await conn.fetchval("SELECT salt FROM suppression_salts WHERE tenant_id = $1", tenant)
            salt = None if raw is None else bytes(raw)
            if individual_id is not None:
                survivors = await conn.fetch(
                    "SELECT coalesce(merged_into, individual_id) AS id FROM individuals"
                    " WHERE tenant_id = $1 AND individual_id = $2", tenant, individual_id)
            else:
                assert key is not None
                survivors = await conn.fetch(
                    "SELECT individual_id AS id FROM identities WHERE tenant_id = $1 AND id_type = $2 AND id_value = $3"
                    " UNION SELECT r.individual_id FROM shared_identities AS s"
                    " JOIN source_records AS r ON r.tenant_id = $1 AND r.record_id = s.record_id"
                    " WHERE s.tenant_id = $1 AND s.id_type = $2 AND s.id_value = $3", tenant, key[0], key[1])
            if len(survivors) > 1:
                return Target("", [r["id"] for r in survivors], [], []), salt, False
            if not survivors:
                if salt is None:  # nobody was ever forgotten in this tenant: there is no tombstone to find
                    return None, None, False
                hashed = hasher(salt, *key) if key else hasher(salt, INDIVIDUAL, individual_id)
                stone = await conn.fetchrow(
                    "SELECT s.pending_individual, n.individual_id IS NOT NULL AS present FROM suppressions AS s"
                    " LEFT JOIN individuals AS n ON n.tenant_id = $1 AND n.individual_id = s.pending_individual"
                    " WHERE s.tenant_id = $1 AND s.value_hash = $2", tenant, hashed)
                if stone is None or not stone["present"]:
                    return None, salt, stone is not None
                survivors = [{"id": stone["pending_individual"]}]  # a forget that stopped half-way
            survivor = survivors[0]["id"]
            if salt is None:  # the tenant's first forget
                salt = os.urandom(32)
                await conn.execute("INSERT INTO suppression_salts (tenant_id, salt) VALUES ($1, $2)", tenant, salt)
            aliases = [r["individual_id"] for r in await conn.fetch(
                "SELECT individual_id FROM individuals WHERE tenant_id = $1 AND merged_into = $2 ORDER BY individual_id",
                tenant, survivor)]
            unique = [(r["id_type"], r["id_value"]) for r in await conn.fetch(
                "SELECT id_type, id_value FROM identities WHERE tenant_id = $1 AND individual_id = $2"
                " ORDER BY id_type, id_value", tenant, survivor)]
            shared = [(r["id_type"], r["id_value"]) for r in await conn.fetch(
                "SELECT DISTINCT s.id_type, s.id_value FROM source_records AS r"
                " JOIN shared_identities AS s ON s.tenant_id = $1 AND s.record_id = r.record_id"
                " WHERE r.tenant_id = $1 AND r.individual_id = $2 ORDER BY 1, 2", tenant, survivor)]
            stones = [(hasher(salt, t, v), "identity") for t, v in unique]
            stones += [(hasher(salt, "\x00individual", i), "individual") for i in [survivor, *aliases]]
            await conn.execute(
                "INSERT INTO suppressions (tenant_id, value_hash, kind, pending_individual)"
                " SELECT $1, u.h, u.k, $4 FROM unnest($2::bytea[], $3::text[]) AS u(h, k)"
                " ON CONFLICT (tenant_id, value_hash) DO UPDATE SET pending_individual = excluded.pending_individual",
                tenant, [h for h, _ in stones], [k for _, k in stones], survivor)
            count = await conn.fetchval(
                "SELECT count(*) FROM suppressions WHERE tenant_id = $1 AND pending_individual = $2"
                " AND kind = 'identity'", tenant, survivor)
            # From here nothing resolves to the individual: its identities and records are gone.
            await conn.fetchrow(_ERASE, tenant, [survivor, *aliases])
            return Target(survivor, aliases, unique, shared, count), salt, True

    async def erase(self, tenant: str, ids: list[str]) -> int:
        """Deletes every row of the individuals (and of individuals merged into them) in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", tenant_lock(tenant))
            row = await conn.fetchrow(_ERASE, tenant, ids)
            # Individuals last: identities and aliases reference them (the statement above sees the rows as they were).
            status = await conn.execute(
                "DELETE FROM individuals WHERE tenant_id = $1 AND individual_id = ANY($2::text[])", tenant, row["ids"])
            await conn.execute("UPDATE suppressions SET pending_individual = NULL"
                               " WHERE tenant_id = $1 AND pending_individual = ANY($2::text[])", tenant, row["ids"])
            return row["erased"] + int(status.split()[-1])

    async def export(self, tenant: str, ids: list[str]) -> dict[str, list]:
        """The individuals' rows in every table, by table."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            ids = list(dict.fromkeys(ids + [r["individual_id"] for r in await conn.fetch(
                "SELECT individual_id FROM individuals WHERE tenant_id = $1 AND merged_into = ANY($2::text[])",
                tenant, ids)]))
            return {name: table_rows(await conn.fetch(sql, tenant, ids)) for name, sql in _EXPORT.items()}

    async def lift(self, tenant: str, hashes: list[bytes]) -> int:
        """Removes identity tombstones; returns how many existed."""
        status = await self.pool.execute(
            "DELETE FROM suppressions WHERE tenant_id = $1 AND kind = 'identity' AND value_hash = ANY($2::bytea[])",
            tenant, hashes)
        return int(status.split()[-1])
