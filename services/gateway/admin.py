"""Operator actions that run before any key exists (used by `tailor tenant create` and the launcher)."""

from __future__ import annotations

from pathlib import Path

from services.gateway.auth import SCOPES, KeyService
from services.gateway.postgres import GatewayStore
from shared import db

SCHEMA = "gateway"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


async def create_tenant_with_key(dsn: str, tenant_id: str, display_name: str = "",
                                 scopes: tuple[str, ...] = SCOPES, key_name: str = "initial") -> tuple[bool, str]:
    """Creates the tenant if needed and a new API key for it; returns (tenant_created, secret)."""
    await db.migrate(dsn, SCHEMA, MIGRATIONS)
    pool = await db.create_pool(dsn, SCHEMA, min_size=1, max_size=2)
    try:
        keys = KeyService(GatewayStore(pool))
        with db.all_tenants():  # an operator action, outside any call
            created = await keys.create_tenant(tenant_id, display_name)
            _, secret = await keys.create_key(tenant_id, list(scopes), key_name)
        return created, secret
    finally:
        await pool.close()


async def write_operator_key(dsn: str, path: Path) -> str:
    """The operator key (the `operator` scope: CreateTenant, ListTenants, SetTenantQuota): the one stored at path
    while it still works, else a new one written there with mode 0600. Called by the launcher at every start."""
    from services.gateway.tenants import ensure_operator_key

    await db.migrate(dsn, SCHEMA, MIGRATIONS)
    pool = await db.create_pool(dsn, SCHEMA, min_size=1, max_size=2)
    try:
        return await ensure_operator_key(KeyService(GatewayStore(pool)), path)
    finally:
        await pool.close()
