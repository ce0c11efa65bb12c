"""The right to be forgotten in the identity service: suppression (tombstones), erasure, export and lifting.

Tombstones are salted SHA-256 hashes of normalized unique identities and of forgotten unified ids, with one random
salt per tenant; the values themselves are never kept. Subjects carrying a tombstoned identity resolve as suppressed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from services.identity import matching
from services.identity.model import Key
from services.identity.postgres_privacy import PostgresPrivacy, Target
from services.identity.service import IdentityService
from shared.errors import InvalidArgument, NotFound, Violations, quote
from shared.privacy import MAX_IDS, document, validate_ids


def tombstone(salt: bytes, id_type: str, value: str) -> bytes:
    """The salted hash kept for one normalized identity (or, with type INDIVIDUAL, one unified id)."""
    return hashlib.sha256(salt + f"{id_type}\x1f{value}".encode()).digest()


@dataclass(frozen=True)
class Suppressed:
    """What SuppressIndividual answers."""

    target: Target | None  # None: forgotten before
    suppressed_count: int


class IdentityPrivacy:
    """Forget, export and lift for the identity service; also the suppression check of every resolve."""

    def __init__(self, store: PostgresPrivacy, identity: IdentityService):
        self.store = store
        self.identity = identity
        self._salts: dict[str, tuple[float, bytes | None]] = {}

    async def _salt(self, tenant: str) -> bytes | None:
        """The tenant's salt; a tenant that never forgot anyone has none, cached for the config TTL (others' forgets
        show within it; forgets through this process at once)."""
        cached = self._salts.get(tenant)
        if cached and (cached[1] is not None or time.monotonic() - cached[0] < self.identity.settings.config_ttl_seconds):
            return cached[1]
        salt = await self.store.salt(tenant)
        self._salts[tenant] = (time.monotonic(), salt)
        return salt

    async def blocked(self, tenant: str, keys: list[Key]) -> set[Key]:
        """The normalized unique identities among keys that are suppressed (no query when the tenant has none)."""
        salt = await self._salt(tenant) if keys else None
        if salt is None:
            return set()
        hashes = {tombstone(salt, t, v): (t, v) for t, v in keys}
        return {hashes[h] for h in await self.store.suppressed(tenant, list(hashes))}

    async def _normalize(self, tenant: str, pairs: list[tuple[str, str]], path: str) -> list[tuple[Key, bool]]:
        """(normalized key, unique) per identity; INVALID_ARGUMENT naming path[i].type / .value."""
        config = await self.identity.config(tenant)
        v = Violations()
        out = []
        for i, (id_type, value) in enumerate(pairs):
            at = path.format(i=i)
            kind = config.types.get(id_type)
            if kind is None:
                v.add(f"{at}.type", f"unknown identity type {quote(id_type)}")
                continue
            try:
                out.append(((id_type, matching.normalize_value(kind, value, self.identity.settings.default_region)),
                            kind.unique))
            except ValueError as problem:
                v.add(f"{at}.value", str(problem))
        v.raise_if_any()
        return out

    async def suppress(self, tenant: str, identity: tuple[str, str] | None, individual_id: str) -> Suppressed:
        """Tombstones the individual the target names; already forgotten -> target None; unknown -> NOT_FOUND."""
        if (identity is None) == (not individual_id):
            raise InvalidArgument([("identity", "name the individual by an identity or by unified_individual_id")])
        key = None
        if identity is not None:
            key = (await self._normalize(tenant, [identity], "identity"))[0][0]
        elif len(individual_id) > 200 or "\x00" in individual_id:
            raise InvalidArgument([("unified_individual_id", "must be at most 200 characters without NUL")])
        found, salt, tombstoned = await self.store.suppress(tenant, individual_id or None, key, tombstone)
        self._salts[tenant] = (time.monotonic(), salt)
        if found is not None and not found.individual_id:
            raise InvalidArgument([("identity", f"{len(found.alias_ids)} individuals share this identity; name one"
                                                " by a unique identity or its unified_individual_id")])
        if found is None:
            if tombstoned:
                return Suppressed(None, 0)
            raise NotFound("no individual has this identity or id, and none was forgotten under it",
                           reason="INDIVIDUAL_NOT_FOUND")
        return Suppressed(found, found.suppressed_count)

    async def erase(self, tenant: str, ids: list[str]) -> int:
        """Deletes every identity row of the individuals; the tombstones stay."""
        return await self.store.erase(tenant, validate_ids(ids))

    async def export(self, tenant: str, ids: list[str]) -> str:
        """Every identity row of the individuals, as JSON."""
        return document(await self.store.export(tenant, validate_ids(ids)))

    async def lift(self, tenant: str, identities: list[tuple[str, str]]) -> int:
        """Lifts the tombstones of the identities; returns how many there were."""
        if not identities or len(identities) > MAX_IDS:
            raise InvalidArgument([("identities", f"name 1 to {MAX_IDS} identities")])
        keys = [k for k, unique in await self._normalize(tenant, identities, "identities[{i}]") if unique]
        salt = await self._salt(tenant)
        if salt is None or not keys:
            return 0
        return await self.store.lift(tenant, [tombstone(salt, t, v) for t, v in keys])
