"""asyncpg adapter of the recommender's repository: interactions, item statistics, individuals' purchases."""

from __future__ import annotations

from collections.abc import Collection

import asyncpg

from services.recommender.service import MOST_VIEWED, TOP_SELLERS, Interaction, Scored

# One statement, so one round trip and one transaction: insert the interactions not seen before, then fold
# only those (RETURNING) into the item statistics and the individuals' purchases. Rows are taken in key
# order so concurrent batches lock statistics rows in the same order.
_RECORD = """
WITH input AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::float8[],
                         $8::timestamptz[])
        AS t(message_id, unified_individual_id, item_id, kind, quantity, revenue, event_time)
), new AS (
    INSERT INTO interactions (tenant_id, message_id, item_id, unified_individual_id, kind, quantity, revenue,
                              event_time)
    SELECT $1, message_id, item_id, unified_individual_id, kind, quantity, revenue, coalesce(event_time, now())
    FROM input
    ORDER BY message_id, item_id
    ON CONFLICT (tenant_id, message_id, item_id) DO NOTHING
    RETURNING unified_individual_id, item_id, kind, quantity, revenue, event_time
), items AS (
    INSERT INTO item_stats AS s (tenant_id, item_id, units_bought, revenue, views, carts, last_interaction_at)
    SELECT $1, item_id,
           coalesce(sum(quantity) FILTER (WHERE kind = 'purchase'), 0),
           coalesce(sum(revenue) FILTER (WHERE kind = 'purchase'), 0),
           count(*) FILTER (WHERE kind = 'product_view'),
           count(*) FILTER (WHERE kind = 'add_to_cart'),
           max(event_time)
    FROM new
    GROUP BY item_id
    ORDER BY item_id
    ON CONFLICT (tenant_id, item_id) DO UPDATE SET
        units_bought = s.units_bought + excluded.units_bought,
        revenue = s.revenue + excluded.revenue,
        views = s.views + excluded.views,
        carts = s.carts + excluded.carts,
        last_interaction_at = greatest(s.last_interaction_at, excluded.last_interaction_at)
), bought AS (
    INSERT INTO individual_items AS b (tenant_id, unified_individual_id, item_id, units, revenue, last_purchased_at)
    SELECT $1, unified_individual_id, item_id, sum(quantity), sum(revenue), max(event_time)
    FROM new
    WHERE kind = 'purchase'
    GROUP BY unified_individual_id, item_id
    ORDER BY unified_individual_id, item_id
    ON CONFLICT (tenant_id, unified_individual_id, item_id) DO UPDATE SET
        units = b.units + excluded.units,
        revenue = b.revenue + excluded.revenue,
        last_purchased_at = greatest(b.last_purchased_at, excluded.last_purchased_at)
)
SELECT count(*) FROM new
"""

# The score column of each global strategy (constants, never caller input).
_SCORE_COLUMNS = {TOP_SELLERS: "units_bought", MOST_VIEWED: "views::float8"}
_ORDER_COLUMNS = {TOP_SELLERS: "units_bought", MOST_VIEWED: "views"}


def _ranking_sql(strategy: str, *, with_exclusions: bool) -> str:
    score, order = _SCORE_COLUMNS[strategy], _ORDER_COLUMNS[strategy]
    exclusion = "AND item_id <> ALL($3::text[])" if with_exclusions else ""
    return (
        f"SELECT '{strategy}' AS strategy, item_id, {score} AS score FROM item_stats "
        f"WHERE tenant_id = $1 AND {order} > 0 {exclusion} ORDER BY {order} DESC, item_id LIMIT $2"
    )


_RANKINGS = " UNION ALL ".join(f"({_ranking_sql(s, with_exclusions=False)})" for s in _SCORE_COLUMNS)
_RANKING = {s: _ranking_sql(s, with_exclusions=True) for s in _SCORE_COLUMNS}

_PURCHASES = """
SELECT item_id, units FROM individual_items WHERE tenant_id = $1 AND unified_individual_id = $2
"""

# A deadlock between two concurrent batches aborts one statement entirely; it is safe to run it again.
_DEADLOCK_ATTEMPTS = 3


class PostgresRepository:
    """The recommender's tables in its own schema (the pool's search_path)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(self, tenant: str, interactions: list[Interaction]) -> int:
        args = (
            tenant,
            [i.message_id for i in interactions],
            [i.unified_individual_id for i in interactions],
            [i.item_id for i in interactions],
            [i.kind for i in interactions],
            [i.quantity for i in interactions],
            [i.revenue for i in interactions],
            [i.event_time for i in interactions],
        )
        attempt = 1
        while True:
            try:
                return await self.pool.fetchval(_RECORD, *args)
            except asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_ATTEMPTS:
                    raise
                attempt += 1

    async def rankings(self, tenant: str, limit: int) -> dict[str, list[Scored]]:
        result: dict[str, list[Scored]] = {s: [] for s in _SCORE_COLUMNS}
        for row in await self.pool.fetch(_RANKINGS, tenant, limit):
            result[row["strategy"]].append(Scored(row["item_id"], row["score"]))
        return result

    async def ranking(self, tenant: str, strategy: str, limit: int, exclude: Collection[str]) -> list[Scored]:
        rows = await self.pool.fetch(_RANKING[strategy], tenant, limit, list(exclude))
        return [Scored(row["item_id"], row["score"]) for row in rows]

    async def purchases(self, tenant: str, unified_individual_id: str) -> list[Scored]:
        rows = await self.pool.fetch(_PURCHASES, tenant, unified_individual_id)
        return [Scored(row["item_id"], row["units"]) for row in rows]
