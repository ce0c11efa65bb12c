"""Browser access: each tenant's allowed web origins (CORS), and what a browser key may do."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.postgres import GatewayStore
from shared import db
from shared.errors import InvalidArgument, PermissionDenied, quote

# The RPCs a browser key may call, whatever its scopes: what a web page needs, and nothing that reads a profile.
BROWSER_METHODS = frozenset("/personalization.gateway.v1.GatewayService/" + name for name in (
    "IngestEvents", "GetDecisions", "AssignExperiments", "GetRecommendations"))
BROWSER_SCOPES = ("ingest", "decide")
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(text: str) -> str | None:
    """The origin as browsers send it (lower-case scheme and host, no default port), or None if text is not one."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username or parts.password or "*" in text:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    suffix = "" if port in (None, DEFAULT_PORTS[parts.scheme]) else f":{port}"
    return f"{parts.scheme}://{host}{suffix}"


def check_browser_scopes(scopes: list[str], field: str = "scopes") -> None:
    """A browser key is public: it may only send events and ask for decisions."""
    bad = [(f"{field}[{i}]", f"a browser key may only have the scopes {' and '.join(BROWSER_SCOPES)}")
           for i, scope in enumerate(scopes) if scope not in BROWSER_SCOPES]
    if bad:
        raise InvalidArgument(bad)


class Origins:
    """The tenants' allowed origins, cached in process for cache_seconds (a change on this replica counts at once)."""

    def __init__(self, store: GatewayStore, cache_seconds: float = 5.0):
        self.store = store
        self.cache_seconds = cache_seconds
        self._tenants: dict[str, tuple[frozenset[str], float]] = {}
        self._known: dict[str, tuple[bool, float]] = {}

    async def of_tenant(self, tenant_id: str) -> frozenset[str]:
        now = time.monotonic()
        cached = self._tenants.get(tenant_id)
        if cached is None or cached[1] <= now:
            with db.all_tenants():  # read while authenticating, before the call's tenant is bound
                origins = frozenset(await self.store.browser_origins(tenant_id))
            if len(self._tenants) > 10_000:
                self._tenants.clear()
            cached = self._tenants[tenant_id] = (origins, now + self.cache_seconds)
        return cached[0]

    async def known(self, origin: str) -> bool:
        """Whether any tenant allows origin: what a CORS preflight, which carries no key, is answered by."""
        now = time.monotonic()
        cached = self._known.get(origin)
        if cached is None or cached[1] <= now:
            with db.all_tenants():
                allowed = await self.store.origin_allowed_anywhere(origin)
            if len(self._known) > 10_000:
                self._known.clear()
            cached = self._known[origin] = (allowed, now + self.cache_seconds)
        return cached[0]

    async def check(self, tenant_id: str, origin: str, browser: bool) -> None:
        """Refuses a call from a page on an origin the tenant does not allow, and a browser key's call from none."""
        if not origin:
            if browser:
                raise PermissionDenied("a browser key works only from a web page on one of the tenant's allowed "
                                       "origins", reason="ORIGIN_NOT_ALLOWED")
            return
        if normalize_origin(origin) not in await self.of_tenant(tenant_id):
            raise PermissionDenied(f"the origin {quote(origin)} is not allowed for this tenant (UpdateBrowserSettings)",
                                   reason="ORIGIN_NOT_ALLOWED")

    async def get(self, tenant_id: str) -> pb.BrowserSettings:
        return pb.BrowserSettings(allowed_origins=sorted(await self.store.browser_origins(tenant_id)))

    async def update(self, tenant_id: str, settings: pb.BrowserSettings) -> pb.BrowserSettings:
        origins: list[str] = []
        bad = []
        for i, text in enumerate(settings.allowed_origins):
            origin = normalize_origin(text)
            if origin is None:
                bad.append((f"settings.allowed_origins[{i}]",
                            "must be an origin such as https://shop.example.com (http or https, no path, no *)"))
            elif origin not in origins:
                origins.append(origin)
        if bad:
            raise InvalidArgument(bad)
        await self.store.set_browser_origins(tenant_id, origins)
        self._tenants.pop(tenant_id, None)
        self._known.clear()
        return pb.BrowserSettings(allowed_origins=sorted(origins))
