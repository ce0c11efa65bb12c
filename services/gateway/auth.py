"""API keys: issued once, stored as sha256 hashes, scoped, revocable; and the authenticator the server uses."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from services.gateway.browser import BROWSER_METHODS, Origins, check_browser_scopes
from services.gateway.postgres import GatewayStore, KeyRow
from shared import db
from shared.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, quote

SCOPES = ("ingest", "decide", "admin")
# The operator's key (written by the launcher, see tenants.ensure_operator_key) is the only one with this scope;
# it belongs to a reserved tenant TENANT_ID_PATTERN can never name, and check_scopes never grants it to a tenant.
OPERATOR_SCOPE = "operator"
OPERATOR_TENANT = "_operator"
KEY_PREFIX = "tlr"
TENANT_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{1,62}$")

GATEWAY = "/personalization.gateway.v1.GatewayService/"
PROFILE = "/personalization.profile_graph.v1.ProfileGraphService/"
DECISION = "/personalization.decision.v1.DecisionService/"
IDENTITY = "/personalization.identity.v1.IdentityService/"
RECOMMENDER = "/personalization.recommender.v1.RecommenderService/"

# The scopes that allow each method; any one of them suffices. Domain-service methods listed here are the
# configuration and read RPCs the gateway forwards (admin passthrough); internal pipeline RPCs are not reachable.
METHOD_SCOPES: dict[str, frozenset[str]] = {
    GATEWAY + "IngestEvents": frozenset({"ingest"}),
    GATEWAY + "StreamIngestEvents": frozenset({"ingest"}),
    GATEWAY + "GetDecisions": frozenset({"decide"}),
    GATEWAY + "AssignExperiments": frozenset({"decide"}),
    GATEWAY + "GetProfile": frozenset({"decide", "admin"}),
    GATEWAY + "WatchEvents": frozenset({"admin"}),
    GATEWAY + "CreateApiKey": frozenset({"admin"}),
    GATEWAY + "ListApiKeys": frozenset({"admin"}),
    GATEWAY + "RevokeApiKey": frozenset({"admin"}),
    GATEWAY + "SendRecordData": frozenset({"ingest"}),
    GATEWAY + "UpsertDataModel": frozenset({"admin"}),
    GATEWAY + "GetDataModel": frozenset({"admin"}),
    GATEWAY + "StartBatchJob": frozenset({"admin"}),
    GATEWAY + "GetBatchJob": frozenset({"admin"}),
    GATEWAY + "ListBatchJobs": frozenset({"admin"}),
    GATEWAY + "WatchBatchJob": frozenset({"admin"}),
    GATEWAY + "ListBatchResults": frozenset({"admin"}),
    GATEWAY + "UpsertBatchSchedule": frozenset({"admin"}),
    GATEWAY + "ListBatchSchedules": frozenset({"admin"}),
    GATEWAY + "UpsertDestination": frozenset({"admin"}),
    GATEWAY + "ListDestinations": frozenset({"admin"}),
    GATEWAY + "UpsertActivation": frozenset({"admin"}),
    GATEWAY + "ListActivations": frozenset({"admin"}),
    GATEWAY + "DeleteDestination": frozenset({"admin"}),
    GATEWAY + "SetDestinationPaused": frozenset({"admin"}),
    GATEWAY + "DeleteActivation": frozenset({"admin"}),
    GATEWAY + "SetActivationPaused": frozenset({"admin"}),
    GATEWAY + "ListDeliveries": frozenset({"admin"}),
    GATEWAY + "ListDeadLetters": frozenset({"admin"}),
    GATEWAY + "RetryDeadLetters": frozenset({"admin"}),
    GATEWAY + "DiscardDeadLetters": frozenset({"admin"}),
    GATEWAY + "GetPipelineStatus": frozenset({"admin", OPERATOR_SCOPE}),  # the operator: any tenant's
    GATEWAY + "GetUsageStats": frozenset({"admin", OPERATOR_SCOPE}),  # the operator: any tenant's
    GATEWAY + "GetUsage": frozenset({"admin"}),
    GATEWAY + "ForgetIndividual": frozenset({"admin"}),
    GATEWAY + "ExportIndividual": frozenset({"admin"}),
    GATEWAY + "LiftSuppression": frozenset({"admin"}),
    GATEWAY + "GetRecommendations": frozenset({"decide"}),
    GATEWAY + "ReplayDecisions": frozenset({"admin"}),
    GATEWAY + "CreateTenant": frozenset({OPERATOR_SCOPE}),
    GATEWAY + "ListTenants": frozenset({OPERATOR_SCOPE}),
    GATEWAY + "SetTenantQuota": frozenset({OPERATOR_SCOPE}),
    GATEWAY + "UpdateBrowserSettings": frozenset({"admin"}),
    GATEWAY + "GetBrowserSettings": frozenset({"admin"}),
    PROFILE + "UpsertItems": frozenset({"ingest", "admin"}),
    PROFILE + "GetItems": frozenset({"decide", "admin"}),
    PROFILE + "UpsertInsight": frozenset({"admin"}),
    PROFILE + "ListInsights": frozenset({"admin"}),
    PROFILE + "UpsertSegment": frozenset({"admin"}),
    PROFILE + "ListSegments": frozenset({"admin"}),
    PROFILE + "ListSegmentMembers": frozenset({"admin"}),
    PROFILE + "ListItems": frozenset({"decide", "admin"}),
    PROFILE + "GetAffinities": frozenset({"decide", "admin"}),
    PROFILE + "SetConsents": frozenset({"ingest", "admin"}),
    PROFILE + "ListMembershipChanges": frozenset({"admin"}),
    PROFILE + "RecomputeAll": frozenset({"admin"}),
    PROFILE + "SetAffinityConfig": frozenset({"admin"}),
    PROFILE + "GetAffinityConfig": frozenset({"admin"}),
    PROFILE + "SetReconciliationRule": frozenset({"admin"}),
    PROFILE + "GetReconciliationRule": frozenset({"admin"}),
    DECISION + "UpsertPoint": frozenset({"admin"}),
    DECISION + "ListPoints": frozenset({"admin"}),
    DECISION + "UpsertDecision": frozenset({"admin"}),
    DECISION + "ListDecisions": frozenset({"admin"}),
    DECISION + "ListDecisionLog": frozenset({"admin"}),
    DECISION + "ArchivePoint": frozenset({"admin"}),
    DECISION + "ArchiveDecision": frozenset({"admin"}),
    DECISION + "DeclareProfileSchema": frozenset({"admin"}),
    DECISION + "GetProfileSchema": frozenset({"admin"}),
    DECISION + "UpsertExperiment": frozenset({"admin"}),
    DECISION + "ListExperiments": frozenset({"admin"}),
    DECISION + "StartExperiment": frozenset({"admin"}),
    DECISION + "StopExperiment": frozenset({"admin"}),
    DECISION + "ArchiveExperiment": frozenset({"admin"}),
    DECISION + "GetExperimentResults": frozenset({"admin"}),
    DECISION + "GetAttribution": frozenset({"admin"}),
    DECISION + "SetHoldout": frozenset({"admin"}),
    DECISION + "GetHoldout": frozenset({"admin"}),
    DECISION + "GetHoldoutResults": frozenset({"admin"}),
    IDENTITY + "GetIndividual": frozenset({"admin"}),
    IDENTITY + "UpsertIdentityType": frozenset({"admin"}),
    IDENTITY + "ListIdentityTypes": frozenset({"admin"}),
    IDENTITY + "CreateRuleset": frozenset({"admin"}),
    IDENTITY + "GetRuleset": frozenset({"admin"}),
    IDENTITY + "RunRuleset": frozenset({"admin"}),
    IDENTITY + "Unmerge": frozenset({"admin"}),
    IDENTITY + "ListMergeEvents": frozenset({"admin"}),
    RECOMMENDER + "PutRecommender": frozenset({"admin"}),
    RECOMMENDER + "GetRecommender": frozenset({"admin"}),
    RECOMMENDER + "ListRecommenders": frozenset({"admin"}),
    RECOMMENDER + "DeleteRecommender": frozenset({"admin"}),
    RECOMMENDER + "TrainRecommender": frozenset({"admin"}),
    RECOMMENDER + "EvaluateRecommender": frozenset({"admin"}),
    RECOMMENDER + "SimilarItems": frozenset({"decide", "admin"}),
}


def hash_secret(secret: str) -> bytes:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str]:
    """A fresh (key_id, full secret); the secret embeds the id so lookup needs no tenant."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def parse_key(secret: str) -> str | None:
    """The key id inside a secret, or None when it is not shaped like one of ours."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 16:
        return None
    return parts[1]


def check_scopes(scopes: list[str], field: str = "scopes") -> list[str]:
    if not scopes:
        raise InvalidArgument([(field, "at least one scope is required")])
    bad = [(f"{field}[{i}]", f"unknown scope {quote(s)}; one of {', '.join(SCOPES)}") for i, s in enumerate(scopes)
           if s not in SCOPES]
    if bad:
        raise InvalidArgument(bad)
    return sorted(set(scopes))


@dataclass
class _Cached:
    row: KeyRow | None
    expires: float


class KeyService:
    """Issues, lists and revokes keys, and authenticates calls with a short-lived in-process cache."""

    def __init__(self, store: GatewayStore, cache_seconds: float = 5.0):
        self.store = store
        self.cache_seconds = cache_seconds
        self.origins = Origins(store, cache_seconds)
        self._cache: dict[str, _Cached] = {}

    async def create_tenant(self, tenant_id: str, display_name: str = "") -> bool:
        if not TENANT_ID_PATTERN.match(tenant_id):
            raise InvalidArgument([("tenant_id", "must match ^[a-z][a-z0-9_-]{1,62}$")])
        return await self.store.create_tenant(tenant_id, display_name or tenant_id)

    async def create_key(self, tenant_id: str, scopes: list[str], display_name: str = "",
                         browser: bool = False) -> tuple[KeyRow, str]:
        checked = check_scopes(scopes)
        if browser:
            check_browser_scopes(scopes)  # named as the caller sent them
        scopes = checked
        if not await self.store.tenant_exists(tenant_id):
            raise NotFound(f"tenant {quote(tenant_id)} does not exist", reason="TENANT_NOT_FOUND")
        key_id, secret = new_key()
        row = await self.store.insert_key(tenant_id, key_id, hash_secret(secret), scopes, display_name, browser)
        return row, secret

    async def create_operator_key(self) -> str:
        """A new operator key (in the reserved operator tenant, which must exist); returns its secret."""
        key_id, secret = new_key()
        await self.store.insert_key(OPERATOR_TENANT, key_id, hash_secret(secret), [OPERATOR_SCOPE], "operator")
        return secret

    async def revoke_key(self, tenant_id: str, key_id: str) -> KeyRow:
        row = await self.store.revoke_key(tenant_id, key_id)
        if row is None:
            raise NotFound(f"API key {quote(key_id)} not found", reason="API_KEY_NOT_FOUND")
        self._cache = {k: v for k, v in self._cache.items() if v.row is None or v.row.key_id != key_id}
        return row

    async def _lookup(self, secret: str) -> KeyRow | None:
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is not None and cached.expires > now:
            return cached.row
        key_id = parse_key(secret)
        with db.all_tenants():  # the key names its tenant: looked up before the tenant is known
            row = await self.store.find_key(key_id) if key_id else None
        if row is not None and not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
            row = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[secret] = _Cached(row, now + self.cache_seconds)
        return row

    async def authenticate(self, method: str, metadata: dict[str, str]) -> str:
        """The tenant of a call's API key, if the key is valid, unrevoked and has a scope the method needs."""
        header = metadata.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("missing `authorization: Bearer <api key>` metadata", reason="API_KEY_MISSING")
        row = await self._lookup(secret.strip())
        if row is None or row.revoked_at is not None:
            raise Unauthenticated("the API key is not valid or was revoked", reason="API_KEY_INVALID")
        needed = METHOD_SCOPES.get(method)
        if needed is None:
            raise PermissionDenied(f"{method} is not available through the gateway", reason="METHOD_NOT_EXPOSED")
        if row.browser and method not in BROWSER_METHODS:
            raise PermissionDenied(f"a browser key cannot call {method.rsplit('/', 1)[-1]}",
                                   reason="BROWSER_KEY_NOT_ALLOWED")
        origin = metadata.get("origin", "")  # sent by browsers (the HTTP port passes it on)
        if origin or row.browser:
            await self.origins.check(row.tenant_id, origin, row.browser)
        if not needed.intersection(row.scopes):
            raise PermissionDenied(f"the API key lacks the scope {' or '.join(sorted(needed))}",
                                   reason="SCOPE_MISSING", metadata={"required": ",".join(sorted(needed))})
        return row.tenant_id
