"""The gateway's asyncpg adapter: tenants, API keys, the ingest inbox and dead letters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from personalization.gateway.v1 import gateway_service_pb2 as pb

INBOX_CHANNEL = "tailor_inbox"


@dataclass(frozen=True)
class KeyRow:
    tenant_id: str
    key_id: str
    secret_hash: bytes
    scopes: tuple[str, ...]
    display_name: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class InboxRow:
    tenant_id: str
    message_id: str
    seq: int
    payload: bytes
    attempts: int


def _key(row) -> KeyRow:
    return KeyRow(row["tenant_id"], row["key_id"], bytes(row["secret_hash"]), tuple(row["scopes"]),
                  row["display_name"], row["created_at"], row["revoked_at"])


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
                         display_name: str) -> KeyRow:
        row = await self.pool.fetchrow(
            "INSERT INTO api_keys (tenant_id, key_id, secret_hash, scopes, display_name) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING *",
            tenant_id, key_id, secret_hash, scopes, display_name)
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

    # Record-sync data model.
    async def data_model(self, tenant_id: str):
        """The tenant's declared data model, or None when it never declared one."""
        raw = await self.pool.fetchval("SELECT model FROM data_models WHERE tenant_id = $1", tenant_id)
        return None if raw is None else pb.DataModel.FromString(raw)

    async def put_data_model(self, tenant_id: str, model: bytes) -> None:
        await self.pool.execute(
            "INSERT INTO data_models (tenant_id, model) VALUES ($1, $2) ON CONFLICT (tenant_id) "
            "DO UPDATE SET model = excluded.model, updated_at = now()", tenant_id, model)

    # Inbox.
    async def store_events(self, tenant_id: str, message_ids: list[str], payloads: list[bytes]) -> set[str]:
        """Stores new events in one statement and wakes the worker; returns the message ids newly stored."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "INSERT INTO inbox (tenant_id, message_id, payload) "
                "SELECT $1, m, p FROM unnest($2::text[], $3::bytea[]) AS u(m, p) "
                "ON CONFLICT (tenant_id, message_id) DO NOTHING RETURNING message_id",
                tenant_id, message_ids, payloads)
            if rows:
                await conn.execute("SELECT pg_notify($1, '')", INBOX_CHANNEL)
        return {r["message_id"] for r in rows}

    async def pending(self, limit: int) -> list[InboxRow]:
        rows = await self.pool.fetch(
            "SELECT tenant_id, message_id, seq, payload, attempts FROM inbox "
            "WHERE processed_at IS NULL ORDER BY seq LIMIT $1", limit)
        return [InboxRow(r["tenant_id"], r["message_id"], r["seq"], bytes(r["payload"]), r["attempts"]) for r in rows]

    async def mark_processed(self, tenant_id: str, message_ids: list[str]) -> None:
        await self.pool.execute(
            "UPDATE inbox SET processed_at = now() WHERE tenant_id = $1 AND message_id = ANY($2::text[])",
            tenant_id, message_ids)

    async def record_failure(self, row: InboxRow, error: str, max_attempts: int) -> bool:
        """Counts a failed attempt; after max_attempts the event moves to dead_letters. True when dead-lettered."""
        async with self.pool.acquire() as conn, conn.transaction():
            attempts = await conn.fetchval(
                "UPDATE inbox SET attempts = attempts + 1, last_error = $3 "
                "WHERE tenant_id = $1 AND message_id = $2 RETURNING attempts",
                row.tenant_id, row.message_id, error[:2000])
            if attempts is None or attempts < max_attempts:
                return False
            await conn.execute(
                "INSERT INTO dead_letters (tenant_id, message_id, payload, error, attempts) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                row.tenant_id, row.message_id, row.payload, error[:2000], attempts)
            await conn.execute(
                "UPDATE inbox SET processed_at = now() WHERE tenant_id = $1 AND message_id = $2",
                row.tenant_id, row.message_id)
            return True
