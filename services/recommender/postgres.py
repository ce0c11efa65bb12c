"""asyncpg adapter of the recommender's repository: interactions, statistics, histories, catalog, configs, models."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence

import asyncpg
import numpy as np

from services.recommender.config import (
    MOST_VIEWED,
    TOP_SELLERS,
    TRENDING,
    Booster,
    Condition,
    Config,
)
from services.recommender.domain import (
    PRODUCT_VIEW,
    CatalogItem,
    Interaction,
    Owned,
    RankingSpec,
    Scored,
)
from services.recommender.evaluation import Events
from shared.db import lock_following_redirects

# One statement: insert the interactions not seen before, then fold only those (RETURNING) into the item statistics
# and the individuals' purchases. Rows are taken in key order so concurrent batches lock statistics rows in the same
# order. An interaction sent for an individual merged away is stored for the survivor, with first_individual_id the
# one it was sent for (as if it had been recorded before the merge and moved by it).
_RECORD = """
WITH input AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::float8[],
                         $8::timestamptz[], $9::text[], $10::text[])
        AS t(message_id, unified_individual_id, item_id, kind, quantity, revenue, event_time, order_id,
             first_individual_id)
), new AS (
    INSERT INTO interactions (tenant_id, message_id, item_id, unified_individual_id, kind, quantity, revenue,
                              event_time, order_id, first_individual_id)
    SELECT $1, message_id, item_id, unified_individual_id, kind, quantity, revenue, coalesce(event_time, now()),
           nullif(order_id, ''), first_individual_id
    FROM input
    ORDER BY message_id, item_id
    ON CONFLICT (tenant_id, message_id, item_id) DO NOTHING
    RETURNING unified_individual_id, item_id, kind, quantity, revenue, event_time
), view_starts AS (
    -- A view session starts when an individual views an item more than 30 minutes after their last view of it
    -- (individual_items as it was before this statement); at most one new session per individual and item per call.
    SELECT v.item_id, count(*) AS n
    FROM (SELECT unified_individual_id, item_id, min(event_time) AS first_view FROM new
          WHERE kind = 'product_view' GROUP BY unified_individual_id, item_id) v
    LEFT JOIN individual_items b ON b.tenant_id = $1 AND b.unified_individual_id = v.unified_individual_id
        AND b.item_id = v.item_id
    WHERE b.last_viewed_at IS NULL OR v.first_view > b.last_viewed_at + interval '30 minutes'
    GROUP BY v.item_id
), items AS (
    INSERT INTO item_stats AS s (tenant_id, item_id, units_bought, revenue, views, carts, last_interaction_at,
                                 orders, view_sessions)
    SELECT $1, a.item_id, a.units_bought, a.revenue, a.views, a.carts, a.last_interaction_at, a.orders,
           coalesce(v.n, 0)
    FROM (SELECT item_id,
                 coalesce(sum(quantity) FILTER (WHERE kind = 'purchase'), 0) AS units_bought,
                 coalesce(sum(revenue) FILTER (WHERE kind = 'purchase'), 0) AS revenue,
                 count(*) FILTER (WHERE kind = 'product_view') AS views,
                 count(*) FILTER (WHERE kind = 'add_to_cart') AS carts,
                 max(event_time) AS last_interaction_at,
                 coalesce(sum(sign(quantity)) FILTER (WHERE kind = 'purchase'), 0)::bigint AS orders
          FROM new GROUP BY item_id) a
    -- Joined once (a subquery per item would scan all the new rows again for each item: quadratic in the batch).
    LEFT JOIN view_starts v ON v.item_id = a.item_id
    ORDER BY a.item_id
    ON CONFLICT (tenant_id, item_id) DO UPDATE SET
        units_bought = s.units_bought + excluded.units_bought,
        revenue = s.revenue + excluded.revenue,
        views = s.views + excluded.views,
        carts = s.carts + excluded.carts,
        last_interaction_at = greatest(s.last_interaction_at, excluded.last_interaction_at),
        orders = s.orders + excluded.orders,
        view_sessions = s.view_sessions + excluded.view_sessions
), owned AS (
    INSERT INTO individual_items AS b (tenant_id, unified_individual_id, item_id, units, revenue, last_purchased_at,
                                       bought, views, last_viewed_at)
    SELECT $1, unified_individual_id, item_id,
           coalesce(sum(quantity) FILTER (WHERE kind = 'purchase'), 0),
           coalesce(sum(revenue) FILTER (WHERE kind = 'purchase'), 0),
           max(event_time) FILTER (WHERE kind = 'purchase'),
           bool_or(kind = 'purchase'),
           count(*) FILTER (WHERE kind = 'product_view'),
           max(event_time) FILTER (WHERE kind = 'product_view')
    FROM new
    WHERE kind IN ('purchase', 'product_view')
    GROUP BY unified_individual_id, item_id
    ORDER BY unified_individual_id, item_id
    ON CONFLICT (tenant_id, unified_individual_id, item_id) DO UPDATE SET
        units = b.units + excluded.units,
        revenue = b.revenue + excluded.revenue,
        last_purchased_at = greatest(b.last_purchased_at, excluded.last_purchased_at),
        bought = b.bought OR excluded.bought,
        views = b.views + excluded.views,
        last_viewed_at = greatest(b.last_viewed_at, excluded.last_viewed_at)
)
SELECT count(*) FROM new
"""

# Every write of an individual's rows locks the individual for its transaction first: recordings shared (they never
# wait for each other), reassignments and erasure exclusively, so a merge never runs between a recording's read of
# the redirects and its insert. The key is the tenant and one of LOCK_BUCKETS buckets of the id, so a call naming
# 10,000 individuals holds at most LOCK_BUCKETS locks (PostgreSQL's lock table is finite; two ids sharing a bucket
# only make a merge wait for a recording of the other). Buckets are taken in order; survivors found afterwards may
# not be, and a deadlock that causes aborts one transaction, which is run again (_DEADLOCK_ATTEMPTS).
LOCK_BUCKETS = 1024
_LOCK = """
SELECT count({function}(hashtext('recommender/' || $1), b))
FROM (SELECT DISTINCT hashtext(u.id) & {mask} AS b FROM unnest($2::text[]) AS u(id) ORDER BY b) AS s
"""
_REDIRECTS = """
SELECT individual_id, survivor_id FROM merged_individuals WHERE tenant_id = $1 AND individual_id = ANY($2::text[])
"""
# A merge: whatever had merged into the merged ids now lives on as the survivor too (chains stay one step), the
# merged ids point at it (the survivor, followed first, is never merged away itself). An unmerge drops the restored
# individual's redirect (_UNREDIRECT).
_REDIRECT_CHAINS = """
UPDATE merged_individuals SET survivor_id = $3 WHERE tenant_id = $1 AND survivor_id = ANY($2::text[])
"""
_REDIRECT = """
INSERT INTO merged_individuals (tenant_id, individual_id, survivor_id) SELECT $1, u.id, $3 FROM unnest($2::text[]) AS u(id)
ON CONFLICT (tenant_id, individual_id) DO UPDATE SET survivor_id = excluded.survivor_id, merged_at = now()
"""
_UNREDIRECT = "DELETE FROM merged_individuals WHERE tenant_id = $1 AND individual_id = $2"


async def lock_individuals(connection: asyncpg.Connection, tenant: str, ids: list[str], *,
                           exclusive: bool) -> dict[str, str]:
    """Locks the individuals for the connection's transaction, then the survivors of those merged away, until
    stable (shared.db.lock_following_redirects: a redirect changes only under a lock on its individual or on its
    survivor); returns {merged id: survivor} for the ids that were merged."""
    sql = _LOCK.format(function="pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared",
                       mask=LOCK_BUCKETS - 1)

    async def lock(wanted: list[str]) -> None:
        await connection.execute(sql, tenant, wanted)

    async def redirects_of(wanted: Sequence[str]) -> dict[str, str]:
        rows = await connection.fetch(_REDIRECTS, tenant, list(wanted))
        return {r["individual_id"]: r["survivor_id"] for r in rows}

    return await lock_following_redirects(ids, lock, redirects_of)


# All-time rankings read the running totals (top-down on their indexes); windows and trending read interactions.
# Keyed by (strategy, by_revenue, by_units): distinct orders and view sessions unless units or revenue are asked for.
_ALL_TIME = {
    (TOP_SELLERS, False, False): "orders::float8",
    (TOP_SELLERS, False, True): "units_bought",
    (TOP_SELLERS, True, False): "revenue",
    (TOP_SELLERS, True, True): "revenue",
    (MOST_VIEWED, False, False): "view_sessions::float8",
    (MOST_VIEWED, False, True): "views::float8",
}
_WINDOWED = """
SELECT item_id, sum({value})::float8 AS score FROM interactions
WHERE tenant_id = $1 AND kind = '{kind}' AND event_time >= now() - $3 * interval '1 day'
GROUP BY item_id HAVING sum({value}) > 0 ORDER BY score DESC, item_id LIMIT $2
"""
# Most viewed in a window by view sessions: a view more than 30 minutes after the individual's previous view of it.
_WINDOWED_SESSIONS = """
SELECT item_id, count(*)::float8 AS score
FROM (SELECT item_id, event_time,
             lag(event_time) OVER (PARTITION BY unified_individual_id, item_id ORDER BY event_time) AS previous
      FROM interactions
      WHERE tenant_id = $1 AND kind = 'product_view' AND event_time >= now() - $3 * interval '1 day') t
WHERE previous IS NULL OR event_time > previous + interval '30 minutes'
GROUP BY item_id ORDER BY score DESC, item_id LIMIT $2
"""
# Trending: every interaction counts exp(-ln 2 x age / half-life); older than 20 half-lives counts nothing.
_TRENDING = """
SELECT item_id, sum(exp(-ln(2) * extract(epoch FROM now() - event_time) / ($3 * 86400.0)))::float8 AS score
FROM interactions
WHERE tenant_id = $1 AND event_time >= now() - $3 * 20 * interval '1 day'
GROUP BY item_id ORDER BY score DESC, item_id LIMIT $2
"""
# Co-bought: orders sharing a line with an anchor. Only bought lines count (a returned line has negative units), and
# not a line that returns naming its order (order_id) cancelled: their units returned cover the units bought.
_CO_BOUGHT = """
SELECT b.item_id, count(DISTINCT b.message_id)::float8 AS score
FROM interactions a
JOIN interactions b ON b.tenant_id = a.tenant_id AND b.message_id = a.message_id
WHERE a.tenant_id = $1 AND a.item_id = ANY($2::text[]) AND a.kind = 'purchase' AND b.kind = 'purchase'
  AND a.quantity > 0 AND b.quantity > 0 AND b.item_id <> ALL($2::text[])
  AND NOT EXISTS (SELECT FROM interactions r WHERE r.tenant_id = $1 AND r.order_id = a.message_id
                  AND r.item_id = a.item_id HAVING -sum(r.quantity) >= a.quantity)
  AND NOT EXISTS (SELECT FROM interactions r WHERE r.tenant_id = $1 AND r.order_id = b.message_id
                  AND r.item_id = b.item_id HAVING -sum(r.quantity) >= b.quantity)
GROUP BY b.item_id HAVING count(DISTINCT b.message_id) >= $3
ORDER BY score DESC, b.item_id LIMIT $4
"""
# Co-viewed: views by the same individual within the session gap of a view of an anchor; support counts individuals.
_CO_VIEWED = """
SELECT b.item_id, count(DISTINCT b.unified_individual_id)::float8 AS score
FROM interactions a
JOIN interactions b ON b.tenant_id = a.tenant_id AND b.unified_individual_id = a.unified_individual_id
    AND b.event_time BETWEEN a.event_time - $5 * interval '1 second' AND a.event_time + $5 * interval '1 second'
WHERE a.tenant_id = $1 AND a.item_id = ANY($2::text[]) AND a.kind = 'product_view' AND b.kind = 'product_view'
  AND b.item_id <> ALL($2::text[])
GROUP BY b.item_id HAVING count(DISTINCT b.unified_individual_id) >= $3
ORDER BY score DESC, b.item_id LIMIT $4
"""
_HISTORY = """
SELECT unified_individual_id, item_id, units, bought, last_viewed_at FROM individual_items
WHERE tenant_id = $1 AND unified_individual_id = ANY($2::text[])
"""
# The items each individual bought (batch masks them without the whole history): one row of two arrays, the
# position of the individual among those asked and the item, which asyncpg decodes in C.
_BOUGHT = """
SELECT array_agg((t.n - 1)::int4), array_agg(b.item_id)
FROM unnest($2::text[]) WITH ORDINALITY AS t(id, n)
JOIN individual_items b ON b.tenant_id = $1 AND b.unified_individual_id = t.id
WHERE b.bought
"""
# A given create_time replaces the stored one; an unset one keeps it (or is now() for a new item).
_UPSERT_ITEMS = """
INSERT INTO items AS i (tenant_id, item_id, attributes, create_time)
SELECT $1, item_id, attributes::jsonb, coalesce(create_time, now())
FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS t(item_id, attributes, create_time)
ON CONFLICT (tenant_id, item_id) DO UPDATE SET
    attributes = excluded.attributes,
    create_time = CASE WHEN $5 THEN excluded.create_time ELSE i.create_time END,
    update_time = now()
"""
# Reassignment: move the interactions (remembering whom they were first recorded for), then rebuild the per
# individual history of every individual involved from the interactions, as _RECORD keeps it.
_MOVE = """
UPDATE interactions SET first_individual_id = coalesce(first_individual_id, unified_individual_id),
                        unified_individual_id = $3
WHERE tenant_id = $1 AND unified_individual_id = ANY($2::text[])
  AND (cardinality($4::text[]) = 0 OR coalesce(first_individual_id, unified_individual_id) = ANY($4::text[]))
"""
_REBUILD_HISTORY = """
INSERT INTO individual_items (tenant_id, unified_individual_id, item_id, units, revenue, last_purchased_at, bought,
                              views, last_viewed_at)
SELECT $1, unified_individual_id, item_id,
       coalesce(sum(quantity) FILTER (WHERE kind = 'purchase'), 0),
       coalesce(sum(revenue) FILTER (WHERE kind = 'purchase'), 0),
       max(event_time) FILTER (WHERE kind = 'purchase'),
       bool_or(kind = 'purchase'),
       count(*) FILTER (WHERE kind = 'product_view'),
       max(event_time) FILTER (WHERE kind = 'product_view')
FROM interactions
WHERE tenant_id = $1 AND unified_individual_id = ANY($2::text[]) AND kind IN ('purchase', 'product_view')
GROUP BY unified_individual_id, item_id
ORDER BY unified_individual_id, item_id
"""
# A deadlock between two concurrent batches aborts one statement entirely; it is safe to run it again.
_DEADLOCK_ATTEMPTS = 3
# Every interaction of the tenant, for training and evaluation: copied out as CSV and parsed by pyarrow, so
# neither side builds a value per interaction (a query's records or arrays cost about four times as much).
_INTERACTIONS = """
SELECT unified_individual_id, item_id, CASE kind WHEN 'product_view' THEN 0 WHEN 'add_to_cart' THEN 1 ELSE 2 END,
       quantity{revenue}{times}
FROM interactions WHERE tenant_id = $1
"""
_REVENUE = ", revenue"
_TIMES = ", extract(epoch FROM event_time)::float8"
_LIMIT_ALL = 2**62
# Training reads the interactions in this many page ranges at once once the table has READ_SPLIT_PAGES pages
# (~8 MB): PostgreSQL formatting the CSV is most of a read's time, and one backend uses one core.
READ_PARTS = 2
READ_SPLIT_PAGES = 1024


def config_to_json(config: Config) -> str:
    data = dataclasses.asdict(config)
    data.pop("update_time")
    return json.dumps(data)


def config_from_json(text: str, update_time=None) -> Config:
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(Config)}
    data = {k: v for k, v in data.items() if k in known}
    data["include"] = tuple(Condition(c["attribute"], c["operator"], tuple(c["values"])) for c in data["include"])
    data["exclude"] = tuple(Condition(c["attribute"], c["operator"], tuple(c["values"])) for c in data["exclude"])
    data["boosters"] = tuple(Booster(**b) for b in data["boosters"])
    data["similar_attributes"] = tuple(data["similar_attributes"])
    return Config(**data, update_time=update_time)


class PostgresRepository:
    """The recommender's tables in its own schema (the pool's search_path)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(self, tenant: str, interactions: list[Interaction]) -> int:
        ids = sorted({i.unified_individual_id for i in interactions})
        attempt = 1
        while True:
            try:
                async with self.pool.acquire() as connection, connection.transaction():
                    redirects = await lock_individuals(connection, tenant, ids, exclusive=False)
                    return await connection.fetchval(
                        _RECORD,
                        tenant,
                        [i.message_id for i in interactions],
                        [redirects.get(i.unified_individual_id, i.unified_individual_id) for i in interactions],
                        [i.item_id for i in interactions],
                        [i.kind for i in interactions],
                        [i.quantity for i in interactions],
                        [i.revenue for i in interactions],
                        [i.event_time for i in interactions],
                        [i.order_id for i in interactions],
                        [i.unified_individual_id if i.unified_individual_id in redirects else None
                         for i in interactions],
                    )
            except asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_ATTEMPTS:
                    raise
                attempt += 1

    async def upsert_items(self, tenant: str, items: list[CatalogItem]) -> int:
        async with self.pool.acquire() as connection, connection.transaction():
            for given in (True, False):
                rows = [i for i in items if (i.create_time is not None) == given]
                if rows:
                    await connection.execute(_UPSERT_ITEMS, tenant, [i.item_id for i in rows],
                                             [json.dumps(i.attributes) for i in rows],
                                             [i.create_time for i in rows], given)
        return len(items)

    async def items(self, tenant: str) -> list[CatalogItem]:
        rows = await self.pool.fetch(
            "SELECT item_id, attributes::text AS attributes, create_time FROM items WHERE tenant_id = $1", tenant)
        return [CatalogItem(r["item_id"], json.loads(r["attributes"]), r["create_time"]) for r in rows]

    async def catalog_version(self, tenant: str) -> str:
        """Changes whenever an item is added or changed (every write sets its update_time): the number of items and
        the sum of a hash of each one's id and update time, computed in the database without sending a row."""
        return await self.pool.fetchval(
            "SELECT count(*) || ':' || coalesce(sum(hashtextextended(item_id || update_time::text, 0)), 0) "
            "FROM items WHERE tenant_id = $1", tenant)

    async def ranking(self, tenant: str, spec: RankingSpec, limit: int | None) -> list[Scored]:
        limit = _LIMIT_ALL if limit is None else limit
        if spec.strategy == TRENDING:
            rows = await self.pool.fetch(_TRENDING, tenant, limit, spec.half_life_days)
        elif spec.window_days and spec.strategy == MOST_VIEWED and not spec.by_units:
            rows = await self.pool.fetch(_WINDOWED_SESSIONS, tenant, limit, spec.window_days)
        elif spec.window_days:
            if spec.strategy == MOST_VIEWED:
                value, kind = "1", "product_view"
            else:
                value = "revenue" if spec.by_revenue else "quantity" if spec.by_units else "sign(quantity)"
                kind = "purchase"
            rows = await self.pool.fetch(_WINDOWED.format(value=value, kind=kind), tenant, limit, spec.window_days)
        else:
            column = _ALL_TIME[(spec.strategy, spec.by_revenue and spec.strategy == TOP_SELLERS, spec.by_units)]
            order = column.split("::")[0]
            rows = await self.pool.fetch(
                f"SELECT item_id, {column} AS score FROM item_stats WHERE tenant_id = $1 AND {order} > 0 "
                f"ORDER BY {order} DESC, item_id LIMIT $2", tenant, limit)
        return [Scored(r["item_id"], r["score"]) for r in rows if r["score"] > 0]

    async def history(self, tenant: str, unified_individual_id: str) -> list[Owned]:
        return (await self.histories(tenant, [unified_individual_id])).get(unified_individual_id, [])

    async def histories(self, tenant: str, unified_individual_ids: list[str]) -> dict[str, list[Owned]]:
        result: dict[str, list[Owned]] = {}
        for r in await self.pool.fetch(_HISTORY, tenant, unified_individual_ids):
            result.setdefault(r["unified_individual_id"], []).append(
                Owned(r["item_id"], r["units"], r["bought"], r["last_viewed_at"]))
        return result

    async def bought_items(self, tenant: str, unified_individual_ids: list[str]) -> tuple[list[int], list[str]]:
        positions, items = await self.pool.fetchrow(_BOUGHT, tenant, unified_individual_ids)
        return positions or [], items or []

    async def co_occurring(self, tenant: str, anchors: list[str], kind: str, session_seconds: float,
                           min_support: int, limit: int | None) -> list[Scored]:
        limit = _LIMIT_ALL if limit is None else limit
        if kind == PRODUCT_VIEW:
            rows = await self.pool.fetch(_CO_VIEWED, tenant, anchors, min_support, limit, session_seconds)
        else:
            rows = await self.pool.fetch(_CO_BOUGHT, tenant, anchors, min_support, limit)
        return [Scored(r["item_id"], r["score"]) for r in rows]

    async def configs(self, tenant: str) -> list[Config]:
        rows = await self.pool.fetch(
            "SELECT config::text AS config, update_time FROM recommenders WHERE tenant_id = $1", tenant)
        return [config_from_json(r["config"], r["update_time"]) for r in rows]

    async def put_config(self, tenant: str, config: Config) -> Config:
        update_time = await self.pool.fetchval(
            """INSERT INTO recommenders (tenant_id, name, config, retrain_seconds) VALUES ($1, $2, $3::jsonb, $4)
               ON CONFLICT (tenant_id, name) DO UPDATE SET config = excluded.config,
                   retrain_seconds = excluded.retrain_seconds, update_time = now()
               RETURNING update_time""",
            tenant, config.name, config_to_json(config), config.retrain_seconds)
        return dataclasses.replace(config, update_time=update_time)

    async def delete_config(self, tenant: str, name: str) -> bool:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("DELETE FROM models WHERE tenant_id = $1 AND recommender = $2", tenant, name)
            status = await connection.execute(
                "DELETE FROM recommenders WHERE tenant_id = $1 AND name = $2", tenant, name)
        return status != "DELETE 0"

    async def reassign(self, tenant: str, from_ids: list[str], to_id: str, only_first_recorded_for: list[str]) -> int:
        unmerge = bool(only_first_recorded_for)
        attempt = 1
        while True:
            try:
                async with self.pool.acquire() as connection, connection.transaction():
                    return await self._reassign(connection, tenant, from_ids, to_id, only_first_recorded_for, unmerge)
            except asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_ATTEMPTS:
                    raise
                attempt += 1

    async def _reassign(self, connection: asyncpg.Connection, tenant: str, from_ids: list[str], to_id: str,
                        only_first_recorded_for: list[str], unmerge: bool) -> int:
        redirects = await lock_individuals(connection, tenant, [*from_ids, to_id], exclusive=True)
        if unmerge:
            # The restored individual is itself again: what is recorded for it from now on stays on it.
            await connection.execute(_UNREDIRECT, tenant, to_id)
        else:
            if to_id in redirects:
                # A merge applied late (workers and the merge sweeper apply merges in any order) onto an individual
                # merged away since: what it moves goes on to that individual's survivor, as a recording would.
                to_id = redirects[to_id]
                from_ids = [f for f in from_ids if f != to_id]
                if not from_ids:
                    return 0
            await connection.execute(_REDIRECT_CHAINS, tenant, from_ids, to_id)
            await connection.execute(_REDIRECT, tenant, from_ids, to_id)
        # Every write of these individuals' histories holds their locks, so nothing changes them meanwhile.
        status = await connection.execute(_MOVE, tenant, from_ids, to_id, only_first_recorded_for)
        involved = sorted({*from_ids, to_id})
        await connection.execute(
            "DELETE FROM individual_items WHERE tenant_id = $1 AND unified_individual_id = ANY($2::text[])",
            tenant, involved)
        await connection.execute(_REBUILD_HISTORY, tenant, involved)
        return int(status.split()[-1])

    async def interaction_events(self, tenant: str, *, times: bool = False, revenue: bool = True) -> Events:
        """Every interaction of the tenant as Events (event times only when asked, empty otherwise; revenue unless
        told it is not needed, zeros then: only MAXIMIZE_REVENUE weighs it, and it is about a tenth of a read's CPU).

        A large table is read in READ_PARTS ranges of its pages at once, on as many connections sharing one
        snapshot (as pg_dump's parallel jobs do), so PostgreSQL formats the rows on several cores; the parts are
        joined in page order, which is the order one scan would give."""
        query = _INTERACTIONS.format(revenue=_REVENUE if revenue else "", times=_TIMES if times else "")
        async with self.pool.acquire() as first, first.transaction(isolation="repeatable_read", readonly=True):
            pages = await first.fetchval("SELECT pg_relation_size('interactions') / current_setting('block_size')::int")
            parts = READ_PARTS if pages >= READ_SPLIT_PAGES else 1
            if parts == 1:
                data = await _copy_out(first, query, tenant)
            else:
                snapshot = await first.fetchval("SELECT pg_export_snapshot()")
                edges = [pages * k // parts for k in range(parts)]

                async def part(k: int) -> bytes:
                    # Pages edges[k] up to the next part's first; the last part also takes rows added since.
                    bounds = [(edges[k], 0)] + ([(edges[k + 1], 0)] if k + 1 < parts else [])
                    ranged = query + " AND ctid >= $2::tid" + (" AND ctid < $3::tid" if len(bounds) == 2 else "")
                    if k == 0:
                        return await _copy_out(first, ranged, tenant, *bounds)
                    async with self.pool.acquire() as other, other.transaction(isolation="repeatable_read",
                                                                              readonly=True):
                        await other.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                        return await _copy_out(other, ranged, tenant, *bounds)

                data = b"".join(await asyncio.gather(*(part(k) for k in range(parts))))
        return await asyncio.to_thread(_events_from_csv, data, times, revenue)

    async def save_model(self, tenant: str, name: str, payload: bytes, summary: dict) -> int:
        # The (tenant, recommender, version) key makes two concurrent saves pick different versions or fail.
        return await self.pool.fetchval(
            """INSERT INTO models (tenant_id, recommender, version, payload, summary)
               SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4::jsonb FROM models
               WHERE tenant_id = $1 AND recommender = $2
               RETURNING version""",
            tenant, name, payload, json.dumps(summary))

    async def latest_model_version(self, tenant: str, name: str) -> int:
        return await self.pool.fetchval(
            "SELECT coalesce(max(version), 0) FROM models WHERE tenant_id = $1 AND recommender = $2", tenant, name)

    async def load_model(self, tenant: str, name: str, version: int) -> bytes | None:
        return await self.pool.fetchval(
            "SELECT payload FROM models WHERE tenant_id = $1 AND recommender = $2 AND version = $3",
            tenant, name, version)

    async def due_trainings(self) -> list[tuple[str, str]]:
        # The scheduler's one cross-tenant read: which learned recommenders are due, in any tenant.
        rows = await self.pool.fetch(
            """SELECT tenant_id, name FROM recommenders WHERE retrain_seconds > 0 AND (training_claimed_at IS NULL
               OR training_claimed_at < now() - retrain_seconds * interval '1 second')""")
        return [(r["tenant_id"], r["name"]) for r in rows]

    async def claim_training(self, tenant: str, name: str) -> bool:
        # A conditional update: of several replicas seeing the same due recommender, exactly one claims it.
        status = await self.pool.execute(
            """UPDATE recommenders SET training_claimed_at = now() WHERE tenant_id = $1 AND name = $2
               AND (training_claimed_at IS NULL OR training_claimed_at < now() - retrain_seconds * interval '1 second')""",
            tenant, name)
        return status == "UPDATE 1"


async def _copy_out(connection, query: str, *args) -> bytes:
    """The CSV a COPY of the query's rows sends."""
    chunks: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        chunks.append(chunk)

    await connection.copy_from_query(query, *args, output=keep, format="csv")
    return b"".join(chunks)


def _events_from_csv(data: bytes, times: bool, revenue: bool = True) -> Events:
    """Events from _INTERACTIONS' CSV. pyarrow parses it and codes the ids in order of first appearance (as
    Events.build does), in C; ids may hold any character (COPY quotes them, newlines too)."""
    import pyarrow as pa  # imported here: only training and evaluation read this, and it takes a while to load
    from pyarrow import csv

    if not data:
        return Events.build([], [], [], [], [], [])
    names = ["individual", "item", "kind", "quantity"] + (["revenue"] if revenue else []) + (["time"] if times else [])
    types = {name: pa.float64() for name in names} | {"individual": pa.string(), "item": pa.string(),
                                                      "kind": pa.int64()}
    table = csv.read_csv(pa.py_buffer(data), read_options=csv.ReadOptions(column_names=names),
                         parse_options=csv.ParseOptions(newlines_in_values=True),
                         convert_options=csv.ConvertOptions(column_types=types, strings_can_be_null=False))
    individuals = table["individual"].combine_chunks().dictionary_encode()
    items = table["item"].combine_chunks().dictionary_encode()
    return Events(np.array(individuals.dictionary.to_pylist(), dtype=str),
                  np.array(items.dictionary.to_pylist(), dtype=str),
                  individuals.indices.to_numpy().astype(np.int64), items.indices.to_numpy().astype(np.int64),
                  table["kind"].to_numpy(), table["quantity"].to_numpy(),
                  table["revenue"].to_numpy() if revenue else np.zeros(table.num_rows),
                  table["time"].to_numpy() if times else np.empty(0))
