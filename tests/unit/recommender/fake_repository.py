"""An in-memory repository with the same methods and meaning as services/recommender/postgres.py."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

from services.recommender.config import MOST_VIEWED, TOP_SELLERS, TRENDING, Config
from services.recommender.domain import (
    ADD_TO_CART,
    PRODUCT_VIEW,
    PURCHASE,
    CatalogItem,
    Interaction,
    Owned,
    RankingSpec,
    Scored,
    rank_key,
)
from services.recommender.evaluation import Events

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeRepository:
    """Keeps interactions, items, configs and models per tenant; counts calls so tests can see the queries."""

    def __init__(self) -> None:
        self.interactions: dict[str, dict[tuple[str, str], Interaction]] = defaultdict(dict)
        self.catalog: dict[str, dict[str, CatalogItem]] = defaultdict(dict)
        self.config_rows: dict[str, dict[str, Config]] = defaultdict(dict)
        self.models: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        self.summaries: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.claimed: set[tuple[str, str]] = set()
        self.first_recorded_for: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
        self.merged: dict[str, dict[str, str]] = defaultdict(dict)  # merged id -> survivor, per tenant
        self.calls: Counter[str] = Counter()

    async def record(self, tenant: str, interactions: list[Interaction]) -> int:
        self.calls["record"] += 1
        stored = self.interactions[tenant]
        new = 0
        for interaction in interactions:
            key = (interaction.message_id, interaction.item_id)
            survivor = self.merged[tenant].get(interaction.unified_individual_id)
            if survivor is not None and key not in stored:
                self.first_recorded_for[tenant][key] = interaction.unified_individual_id
                interaction = dataclasses.replace(interaction, unified_individual_id=survivor)
            if key not in stored:
                stored[key] = interaction if interaction.event_time else dataclasses.replace(interaction,
                                                                                             event_time=NOW)
                new += 1
        return new

    def item_stats(self, tenant: str) -> dict[str, dict[str, float]]:
        """Units, revenue, views and carts per item, as postgres.py keeps them in item_stats."""
        stats: dict[str, dict[str, float]] = defaultdict(lambda: {"units": 0.0, "revenue": 0.0, "views": 0, "carts": 0})
        for i in self.interactions[tenant].values():
            row = stats[i.item_id]
            if i.kind == PURCHASE:
                row["units"] += i.quantity
                row["revenue"] += i.revenue
            elif i.kind == PRODUCT_VIEW:
                row["views"] += 1
            elif i.kind == ADD_TO_CART:
                row["carts"] += 1
        return dict(stats)

    async def ranking(self, tenant: str, spec: RankingSpec, limit: int | None) -> list[Scored]:
        self.calls["ranking"] += 1
        now = datetime.now(UTC)
        scores: dict[str, float] = defaultdict(float)
        last_view: dict[tuple[str, str], datetime] = {}
        for i in sorted(self.interactions[tenant].values(), key=lambda i: i.event_time):
            if spec.strategy == TRENDING:
                age = (now - i.event_time).total_seconds() / 86400
                if age <= 20 * spec.half_life_days:
                    scores[i.item_id] += math.exp(-math.log(2) * age / spec.half_life_days)
                continue
            if spec.window_days and i.event_time < now - timedelta(days=spec.window_days):
                continue
            if spec.strategy == TOP_SELLERS and i.kind == PURCHASE:
                # Distinct orders net of returns (a return line cancels one), unless units or revenue are asked for.
                scores[i.item_id] += (i.revenue if spec.by_revenue else i.quantity if spec.by_units
                                      else float((i.quantity > 0) - (i.quantity < 0)))
            elif spec.strategy == MOST_VIEWED and i.kind == PRODUCT_VIEW:
                # View sessions: a view more than 30 minutes after the individual's previous view of the item.
                previous = last_view.get((i.unified_individual_id, i.item_id))
                last_view[(i.unified_individual_id, i.item_id)] = i.event_time
                if spec.by_units or previous is None or i.event_time > previous + timedelta(minutes=30):
                    scores[i.item_id] += 1
        ranked = sorted((Scored(k, v) for k, v in scores.items() if v > 0), key=rank_key)
        return ranked if limit is None else ranked[:limit]

    def _owned(self, tenant: str) -> dict[str, dict[str, Owned]]:
        owned: dict[str, dict[str, Owned]] = defaultdict(dict)
        for i in sorted(self.interactions[tenant].values(), key=lambda i: i.event_time):
            if i.kind not in (PURCHASE, PRODUCT_VIEW):
                continue
            o = owned[i.unified_individual_id].get(i.item_id) or Owned(i.item_id, 0.0, False, None)
            if i.kind == PURCHASE:
                o = dataclasses.replace(o, units=o.units + i.quantity, bought=True)
            else:
                o = dataclasses.replace(o, last_viewed_at=i.event_time)
            owned[i.unified_individual_id][i.item_id] = o
        return owned

    async def history(self, tenant: str, unified_individual_id: str) -> list[Owned]:
        self.calls["history"] += 1
        return list(self._owned(tenant).get(unified_individual_id, {}).values())

    async def histories(self, tenant: str, unified_individual_ids: list[str]) -> dict[str, list[Owned]]:
        self.calls["histories"] += 1
        owned = self._owned(tenant)
        return {u: list(owned[u].values()) for u in unified_individual_ids if u in owned}

    async def bought_items(self, tenant: str, unified_individual_ids: list[str]) -> tuple[list[int], list[str]]:
        self.calls["bought_items"] += 1
        owned = self._owned(tenant)
        pairs = [(n, o.item_id) for n, u in enumerate(unified_individual_ids) for o in owned.get(u, {}).values()
                 if o.bought]
        return [n for n, _ in pairs], [item for _, item in pairs]

    async def co_occurring(self, tenant, anchors, kind, session_seconds, min_support, limit) -> list[Scored]:
        self.calls["co_occurring"] += 1
        every = self.interactions[tenant].values()
        rows = [i for i in every if i.kind == kind]
        if kind == PURCHASE:  # bought lines that no return naming their order cancelled
            returned: dict[tuple[str, str], float] = defaultdict(float)
            for i in every:
                if i.order_id:
                    returned[(i.order_id, i.item_id)] -= i.quantity
            rows = [i for i in rows if i.quantity > max(0.0, returned[(i.message_id, i.item_id)])]
        support: dict[str, set] = defaultdict(set)
        for a in rows:
            if a.item_id not in anchors:
                continue
            for b in rows:
                if b.item_id in anchors:
                    continue
                if kind == PURCHASE and b.message_id == a.message_id:
                    support[b.item_id].add(b.message_id)
                elif (kind == PRODUCT_VIEW and b.unified_individual_id == a.unified_individual_id
                      and abs((b.event_time - a.event_time).total_seconds()) <= session_seconds):
                    support[b.item_id].add(b.unified_individual_id)
        ranked = sorted((Scored(k, float(len(v))) for k, v in support.items() if len(v) >= min_support),
                        key=rank_key)
        return ranked if limit is None else ranked[:limit]

    async def upsert_items(self, tenant: str, items: list[CatalogItem]) -> int:
        for item in items:
            old = self.catalog[tenant].get(item.item_id)
            created = item.create_time or (old.create_time if old else datetime.now(UTC))
            self.catalog[tenant][item.item_id] = CatalogItem(item.item_id, item.attributes, created)
        return len(items)

    async def items(self, tenant: str) -> list[CatalogItem]:
        self.calls["items"] += 1
        return list(self.catalog[tenant].values())

    async def catalog_version(self, tenant: str) -> str:
        self.calls["catalog_version"] += 1
        return repr(sorted((i.item_id, i.attributes, i.create_time) for i in self.catalog[tenant].values()))

    async def configs(self, tenant: str) -> list[Config]:
        self.calls["configs"] += 1
        return list(self.config_rows[tenant].values())

    async def put_config(self, tenant: str, config: Config) -> Config:
        stored = dataclasses.replace(config, update_time=datetime.now(UTC))
        self.config_rows[tenant][config.name] = stored
        return stored

    async def delete_config(self, tenant: str, name: str) -> bool:
        self.models.pop((tenant, name), None)
        return self.config_rows[tenant].pop(name, None) is not None

    async def interaction_events(self, tenant: str, *, times: bool = False, revenue: bool = True) -> Events:
        rows = list(self.interactions[tenant].values())
        codes = {PRODUCT_VIEW: 0, ADD_TO_CART: 1, PURCHASE: 2}
        return Events.build([i.unified_individual_id for i in rows], [i.item_id for i in rows],
                            [codes[i.kind] for i in rows], [i.quantity for i in rows],
                            [i.revenue if revenue else 0.0 for i in rows],
                            [i.event_time.timestamp() for i in rows] if times else [])

    async def save_model(self, tenant: str, name: str, payload: bytes, summary: dict) -> int:
        self.models[(tenant, name)].append(payload)
        self.summaries[(tenant, name)].append(summary)
        return len(self.models[(tenant, name)])

    async def latest_model_version(self, tenant: str, name: str) -> int:
        self.calls["latest_model_version"] += 1
        return len(self.models.get((tenant, name), []))

    async def load_model(self, tenant: str, name: str, version: int) -> bytes | None:
        self.calls["load_model"] += 1
        versions = self.models.get((tenant, name), [])
        return versions[version - 1] if 0 < version <= len(versions) else None

    async def reassign(self, tenant: str, from_ids: list[str], to_id: str, only_first_recorded_for: list[str]) -> int:
        merged = self.merged[tenant]
        if only_first_recorded_for:
            merged.pop(to_id, None)
        else:
            to_id = merged.get(to_id, to_id)
            from_ids = [f for f in from_ids if f != to_id]
            for merged_id, survivor in list(merged.items()):
                if survivor in from_ids:
                    merged[merged_id] = to_id
            merged.update(dict.fromkeys(from_ids, to_id))
        moved = 0
        first = self.first_recorded_for[tenant]
        for key, i in list(self.interactions[tenant].items()):
            origin = first.get(key, i.unified_individual_id)
            if i.unified_individual_id in from_ids and (not only_first_recorded_for
                                                        or origin in only_first_recorded_for):
                first[key] = origin
                self.interactions[tenant][key] = dataclasses.replace(i, unified_individual_id=to_id)
                moved += 1
        return moved

    async def due_trainings(self) -> list[tuple[str, str]]:
        return [(t, n) for t, configs in self.config_rows.items() for n, c in configs.items()
                if c.retrain_seconds and (t, n) not in self.claimed]

    async def claim_training(self, tenant: str, name: str) -> bool:
        if (tenant, name) in self.claimed:
            return False
        self.claimed.add((tenant, name))
        return True
