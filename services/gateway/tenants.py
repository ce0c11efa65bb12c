"""Operator use cases: create tenants, list them across the suite, set their quotas (operator-scoped keys only).

The operator key belongs to a reserved tenant (OPERATOR_TENANT, which TENANT_ID_PATTERN can never name) and is the
only key with the `operator` scope; tenants' keys never get it (auth.check_scopes refuses it), so no tenant can reach
these RPCs or another tenant's rows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.auth import OPERATOR_SCOPE, OPERATOR_TENANT, TENANT_ID_PATTERN, KeyService, hash_secret, parse_key
from services.gateway.postgres import KeyRow
from services.gateway.postgres_tenants import TenantRow, TenantStore
from shared import context as ctx
from shared import db
from shared.context import current_tenant
from shared.errors import InvalidArgument, NotFound, PermissionDenied, Violations, quote
from shared.paging import decode_token, next_page, page_size

DEFAULT_SCOPES = ("ingest", "decide", "admin")
SCOPE_NAMES = {pb.SCOPE_INGEST: "ingest", pb.SCOPE_DECIDE: "decide", pb.SCOPE_ADMIN: "admin"}


@contextlib.asynccontextmanager
async def named_tenant(requested: str, exists: Callable[[str], Awaitable[bool]] | None,
                       what: str) -> AsyncIterator[str]:
    """The tenant a read that the operator may make for any tenant is about, bound as the call's tenant inside: a
    tenant's key reads its own (`tenant_id` empty or its own), the operator key names an existing tenant."""
    caller = current_tenant()
    if caller != OPERATOR_TENANT:
        if requested and requested != caller:
            raise PermissionDenied(f"only the operator key reads another tenant's {what}", reason="OPERATOR_ONLY",
                                   metadata={"field": "tenant_id"})
        yield caller
        return
    if not requested:
        raise InvalidArgument([("tenant_id", "must name the tenant (the operator key has none of its own)")])
    if exists is None or not await exists(requested):
        raise NotFound(f"tenant {quote(requested)} does not exist", reason="TENANT_NOT_FOUND")
    # Internal calls and row-level security follow the call's tenant: the named one, inside.
    reset = ctx.tenant_var.set(requested)
    try:
        yield requested
    finally:
        ctx.tenant_var.reset(reset)


def tenant_message(row: TenantRow) -> pb.Tenant:
    tenant = pb.Tenant(tenant_id=row.tenant_id, display_name=row.display_name,
                       decision_credit_limit=row.credit_limit, request_rate_limit=row.rate_limit,
                       decision_credits_used=row.credits_used, active_key_count=row.active_keys)
    tenant.create_time.FromDatetime(row.created_at)
    return tenant


class Tenants:
    """CreateTenant, ListTenants and SetTenantQuota."""

    def __init__(self, keys: KeyService, store: TenantStore):
        self.keys = keys
        self.store = store

    async def create(self, request: pb.CreateTenantRequest) -> tuple[pb.Tenant, bool, KeyRow, str]:
        """(the tenant, whether it is new, its new key, the key's secret)."""
        v = Violations()
        if not TENANT_ID_PATTERN.match(request.tenant_id):
            v.add("tenant_id", "must match ^[a-z][a-z0-9_-]{1,62}$")
        scopes = []
        for i, scope in enumerate(request.scopes):
            if scope not in SCOPE_NAMES:
                v.add(f"scopes[{i}]", "must be SCOPE_INGEST, SCOPE_DECIDE or SCOPE_ADMIN")
            else:
                scopes.append(SCOPE_NAMES[scope])
        if len(request.display_name) > 200:
            v.add("display_name", "must be at most 200 characters")
        v.raise_if_any()
        with db.all_tenants():  # the operator acts on other tenants' rows
            created = await self.keys.create_tenant(request.tenant_id, request.display_name)
            row, secret = await self.keys.create_key(request.tenant_id, scopes or list(DEFAULT_SCOPES),
                                                     request.key_display_name or "operator")
            return tenant_message(await self._get(request.tenant_id)), created, row, secret

    async def list(self, request: pb.ListTenantsRequest) -> pb.ListTenantsResponse:
        size = page_size(request.page_size, 100, 1000)
        after = decode_token(request.page_token, "tenants", (str,))
        with db.all_tenants():  # every tenant, by definition
            rows = await self.store.list(after[0] if after else "", size + 1)
        rows, token = next_page(rows, size, "tenants", lambda r: [r.tenant_id])
        return pb.ListTenantsResponse(tenants=[tenant_message(r) for r in rows], next_page_token=token)

    async def set_quota(self, request: pb.SetTenantQuotaRequest) -> pb.SetTenantQuotaResponse:
        v = Violations()
        if not request.tenant_id:
            v.add("tenant_id", "must not be empty")
        if request.decision_credit_limit < 0:
            v.add("decision_credit_limit", "must be 0 (unlimited) or more")
        if request.request_rate_limit < 0 or request.request_rate_limit != request.request_rate_limit:
            v.add("request_rate_limit", "must be 0 (unlimited) or more")
        v.raise_if_any()
        with db.all_tenants():  # the operator acts on another tenant's rows
            await self._get(request.tenant_id)
            await self.store.set_quota(request.tenant_id, request.decision_credit_limit, request.request_rate_limit)
            return pb.SetTenantQuotaResponse(tenant=tenant_message(await self._get(request.tenant_id)))

    async def exists(self, tenant_id: str) -> bool:
        """Whether the tenant exists (the operator's reserved tenant never does)."""
        with db.all_tenants():  # the operator asks about another tenant
            return await self.store.get(tenant_id) is not None

    async def _get(self, tenant_id: str) -> TenantRow:
        row = await self.store.get(tenant_id)
        if row is None:
            raise NotFound(f"tenant {quote(tenant_id)} does not exist", reason="TENANT_NOT_FOUND")
        return row


async def ensure_operator_key(keys: KeyService, path: Path) -> str:
    """The operator key stored at path while it still works, else a new one written there (mode 0600)."""
    with db.all_tenants():  # the operator's reserved tenant, before any call
        return await _ensure_operator_key(keys, path)


async def _ensure_operator_key(keys: KeyService, path: Path) -> str:
    if path.exists():
        secret = path.read_text().strip()
        key_id = parse_key(secret)
        row = await keys.store.find_key(key_id) if key_id else None
        if row is not None and row.revoked_at is None and row.secret_hash == hash_secret(secret) \
                and OPERATOR_SCOPE in row.scopes:
            return secret
    await keys.store.create_tenant(OPERATOR_TENANT, "Operator")
    secret = await keys.create_operator_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it then renamed over it, so a reader (or another gateway replica starting) never sees it half
    # written.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(partial, 0o600)
    os.replace(partial, path)
    return secret

