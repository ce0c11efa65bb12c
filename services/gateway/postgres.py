"""The gateway's asyncpg adapter: tenants, API keys, data models and the ingest side of the inbox."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.routing import PARTITIONS

INBOX_CHANNEL = "tailor_inbox"
# The NOTIFY payload of a store that holds bulk rows (the pipeline looks at its bulk lane only when told, or once a
# poll interval); live stores send ''.
BULK_NOTICE = "bulk"
# A store that lost a deadlock to a concurrent store of the same message ids is run again this many times in all.
STORE_ATTEMPTS = 3
_STORE_ROWS = ("INSERT INTO inbox (tenant_id, message_id, payload, route, partition, bulk) "
               "SELECT $1, m, p, r, ((r # hashtextextended($1, 0)) % $5 + $5) % $5, $6 "
               "FROM unnest($2::text[], $3::bytea[], $4::bigint[]) AS u(m, p, r)")
# New ids only (a unique violation otherwise), and the workers woken in the same statement.
_STORE_NEW = (f"WITH stored AS ({_STORE_ROWS} RETURNING 1) "
              f"SELECT pg_notify($7, CASE WHEN $6 THEN '{BULK_NOTICE}' ELSE '' END) FROM (SELECT 1 FROM stored LIMIT 1) AS s")
# Any ids: those already stored are skipped.
_STORE_SOME = f"{_STORE_ROWS} ON CONFLICT (tenant_id, message_id) DO NOTHING RETURNING message_id"


@dataclass(frozen=True)
class KeyRow:
    tenant_id: str
    key_id: str
    secret_hash: bytes
    scopes: tuple[str, ...]
    display_name: str
    created_at: datetime
    revoked_at: datetime | None
    browser: bool = False  # a public key for web pages: allowed origins and BROWSER_METHODS only


def _key(row) -> KeyRow:
    return KeyRow(row["tenant_id"], row["key_id"], bytes(row["secret_hash"]), tuple(row["scopes"]),
                  row["display_name"], row["created_at"], row["revoked_at"], row["browser"])


class GatewayStore:
    """All SQL of the gateway. Every query names the tenant, except key lookup by its globally unique id."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    # Tenants and keys.
    async def create_tenant(self, tenant_id: str, display_name: str) -> bool:
        """Creates the tenant; False when it exists already."""
        status = await self.pool.execute(
            "INSERT INTO tenants (tenant_id, display_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            tenant_id, display_name)
        return status.endswith(" 1")

    async def tenant_ids(self) -> list[str]:
        """Every tenant (for sweeps that run per tenant)."""
        return [r["tenant_id"] for r in await self.pool.fetch("SELECT tenant_id FROM tenants ORDER BY tenant_id")]

    async def tenant_exists(self, tenant_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id))

    async def insert_key(self, tenant_id: str, key_id: str, secret_hash: bytes, scopes: list[str],
                         display_name: str, browser: bool = False) -> KeyRow:
        row = await self.pool.fetchrow(
            "INSERT INTO api_keys (tenant_id, key_id, secret_hash, scopes, display_name, browser) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            tenant_id, key_id, secret_hash, scopes, display_name, browser)
        return _key(row)

    async def find_key(self, key_id: str) -> KeyRow | None:
        row = await self.pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
        return None if row is None else _key(row)

    async def list_keys(self, tenant_id: str, after_key: tuple[datetime, str] | None, limit: int) -> list[KeyRow]:
        if after_key is None:
            rows = await self.pool.fetch(
                "SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id LIMIT $2", tenant_id, limit)
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM api_keys WHERE tenant_id = $1 AND (created_at, key_id) > ($2, $3) "
                "ORDER BY created_at, key_id LIMIT $4", tenant_id, after_key[0], after_key[1], limit)
        return [_key(r) for r in rows]

    async def revoke_key(self, tenant_id: str, key_id: str) -> KeyRow | None:
        row = await self.pool.fetchrow(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE tenant_id = $1 AND key_id = $2 "
            "RETURNING *", tenant_id, key_id)
        return None if row is None else _key(row)

    # Browser origins (CORS).
    async def browser_origins(self, tenant_id: str) -> list[str]:
        return [r["origin"] for r in await self.pool.fetch(
            "SELECT origin FROM browser_origins WHERE tenant_id = $1 ORDER BY origin", tenant_id)]

    async def set_browser_origins(self, tenant_id: str, origins: list[str]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM browser_origins WHERE tenant_id = $1", tenant_id)
            await conn.execute("INSERT INTO browser_origins (tenant_id, origin) SELECT $1, unnest($2::text[])",
                               tenant_id, origins)

    async def origin_allowed_anywhere(self, origin: str) -> bool:
        """Whether any tenant allows the origin (a CORS preflight names no tenant; the caller spans tenants)."""
        return bool(await self.pool.fetchval("SELECT 1 FROM browser_origins WHERE origin = $1 LIMIT 1", origin))

    # Record-sync data model.
    async def data_model(self, tenant_id: str):
        """The tenant's declared data model, or None when it never declared one."""
        raw = await self.pool.fetchval("SELECT model FROM data_models WHERE tenant_id = $1", tenant_id)
        return None if raw is None else pb.DataModel.FromString(raw)

    async def put_data_model(self, tenant_id: str, model: bytes) -> None:
        await self.pool.execute(
            "INSERT INTO data_models (tenant_id, model) VALUES ($1, $2) ON CONFLICT (tenant_id) "
            "DO UPDATE SET model = excluded.model, updated_at = now()", tenant_id, model)

    # Inbox (the pipeline's side is in postgres_inbox.py).
    async def store_events(self, tenant_id: str, message_ids: list[str], payloads: list[bytes],
                           routes: list[int], bulk: bool = False) -> set[str]:
        """Stores new events (in the bulk lane when bulk) and wakes the workers; returns the message ids newly stored.

        Most batches carry only new ids: they are stored by a plain INSERT that also wakes the workers, one statement
        (the conflict check of ON CONFLICT costs the database about a fifth more per row). A batch with an id already
        stored (a resend) fails that statement whole on the unique key, and is stored again with ON CONFLICT DO
        NOTHING, which skips the ids already there. Two requests carrying the same message ids in different orders can
        deadlock on the unique check; the loser's statement is rolled back whole and run again (the batch keeps its
        order, which the pipeline relies on) after a short random pause: run again at once, it could take the first
        id again before the winner's backend was scheduled to, and lose the same deadlock again.
        """
        for attempt in range(STORE_ATTEMPTS):
            try:
                async with self.pool.acquire() as conn:
                    try:
                        await conn.execute(_STORE_NEW, tenant_id, message_ids, payloads, routes, PARTITIONS, bulk,
                                           INBOX_CHANNEL)
                        return set(message_ids)
                    except asyncpg.UniqueViolationError:
                        pass
                    async with conn.transaction():
                        rows = await conn.fetch(_STORE_SOME, tenant_id, message_ids, payloads, routes, PARTITIONS, bulk)
                        if rows:
                            await conn.execute("SELECT pg_notify($1, $2)", INBOX_CHANNEL, BULK_NOTICE if bulk else "")
                    return {r["message_id"] for r in rows}
            except asyncpg.DeadlockDetectedError:
                if attempt == STORE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")
