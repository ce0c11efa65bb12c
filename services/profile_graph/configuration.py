"""Use cases that configure how profiles are derived: affinities, reconciliation, consents set through the API."""

from __future__ import annotations

from services.profile_graph import domain
from services.profile_graph.derivation import RECOMPUTE_CHUNK, Derivation
from services.profile_graph.domain import (
    AffinityConfig,
    ConsentState,
    ReconRule,
)
from services.profile_graph.ports import Store
from shared.context import Slices, check_deadline
from shared.errors import InvalidArgument, Violations, quote


class Configuration:
    """Set/GetAffinityConfig, Set/GetReconciliationRule (each rebuilds every individual) and SetConsents."""

    def __init__(self, store: Store, derivation: Derivation):
        self.store = store
        self.derivation = derivation
        self.clock = derivation.clock

    async def set_affinity_config(self, tenant: str, config: AffinityConfig | None) -> AffinityConfig:
        """Saves the affinity configuration and rebuilds every individual's scores from their events."""
        config = domain.validate_affinity_config(config)
        await self._save_and_rebuild(tenant, lambda unit: unit.save_affinity_config(config))
        return config

    async def get_affinity_config(self, tenant: str) -> AffinityConfig:
        return (await self.store.read_config(tenant)).affinity

    async def set_recon_rule(self, tenant: str, rule: ReconRule | None) -> ReconRule:
        """Saves the reconciliation rule and recomputes every individual's unified attributes."""
        rule = domain.validate_recon_rule(rule)
        await self._save_and_rebuild(tenant, lambda unit: unit.save_recon_rule(rule))
        return rule

    async def get_recon_rule(self, tenant: str, obj: str) -> ReconRule:
        if obj and obj not in domain.RECONCILED_OBJECTS:
            raise InvalidArgument([("object", f"unknown object {quote(obj)}; expected individual")])
        return (await self.store.read_config(tenant)).recon

    async def _save_and_rebuild(self, tenant: str, save) -> None:
        what = "the rebuild of every individual"
        slices = Slices(what)
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=True)
            await save(unit)
            config = await unit.config()
            now = self.clock()
            after = ""
            while ids := await unit.individual_ids(after, RECOMPUTE_CHUNK):
                check_deadline(what)
                await self.derivation.rebuild(unit, tenant, config, ids, now, slices)
                after = ids[-1]

    async def set_consents(self, tenant: str, individual_id: str, consents: list[tuple[str, int]]
                           ) -> list[ConsentState]:
        """Records consent decisions made now (source api) and re-evaluates the individual's segments."""
        v = Violations()
        if not individual_id:
            v.add("unified_individual_id", "must not be empty")
        if not consents:
            v.add("consents", "must name at least one purpose")
        for i, (purpose, status) in enumerate(consents):
            if not domain.NAME_RE.match(purpose):
                v.add(f"consents[{i}].purpose", "must match ^[a-z][a-z0-9_]{0,63}$")
            if status not in domain.CONSENT_NAMES:
                v.add(f"consents[{i}].status", "must be CONSENT_STATUS_GRANTED or CONSENT_STATUS_DENIED")
        v.raise_if_any()
        now = self.clock()
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=False, large=False)
            await unit.touch_individuals([individual_id], now)
            latest = {p: s for p, s in consents}
            await unit.upsert_consents([(individual_id, p, s, now, "api") for p, s in latest.items()], from_api=True)
            await self.derivation.recompute(unit, tenant, await unit.config(), [individual_id], now, [])
        return await self.store.get_consents(tenant, individual_id)
