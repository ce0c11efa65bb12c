"""An in-memory repository with the same methods and meaning as services/recommender/postgres.py."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection

from services.recommender.service import (
    ADD_TO_CART,
    MOST_VIEWED,
    PRODUCT_VIEW,
    PURCHASE,
    TOP_SELLERS,
    Interaction,
    Scored,
    rank_key,
)


class FakeRepository:
    """Keeps interactions per tenant and derives the statistics; counts calls so tests can see the queries."""

    def __init__(self) -> None:
        self.interactions: dict[str, dict[tuple[str, str], Interaction]] = defaultdict(dict)
        self.calls: Counter[str] = Counter()

    async def record(self, tenant: str, interactions: list[Interaction]) -> int:
        self.calls["record"] += 1
        stored = self.interactions[tenant]
        new = 0
        for interaction in interactions:
            key = (interaction.message_id, interaction.item_id)
            if key not in stored:
                stored[key] = interaction
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

    def _ranked(self, tenant: str, strategy: str) -> list[Scored]:
        column = {TOP_SELLERS: "units", MOST_VIEWED: "views"}[strategy]
        items = [Scored(item, float(row[column])) for item, row in self.item_stats(tenant).items()]
        return sorted((s for s in items if s.score > 0), key=rank_key)

    async def rankings(self, tenant: str, limit: int) -> dict[str, list[Scored]]:
        self.calls["rankings"] += 1
        return {s: self._ranked(tenant, s)[:limit] for s in (TOP_SELLERS, MOST_VIEWED)}

    async def ranking(self, tenant: str, strategy: str, limit: int, exclude: Collection[str]) -> list[Scored]:
        self.calls["ranking"] += 1
        return [s for s in self._ranked(tenant, strategy) if s.item_id not in exclude][:limit]

    async def purchases(self, tenant: str, unified_individual_id: str) -> list[Scored]:
        self.calls["purchases"] += 1
        units: dict[str, float] = defaultdict(float)
        for i in self.interactions[tenant].values():
            if i.kind == PURCHASE and i.unified_individual_id == unified_individual_id:
                units[i.item_id] += i.quantity
        return [Scored(item, total) for item, total in units.items()]
