"""The asyncpg adapter of the profile graph: every statement filters by tenant and batches use arrays (unnest)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg

from services.profile_graph.domain import (
    AttributeUpdate, InsightDef, Item, Member, NewEvent, Profile, SegmentDef,
)

_INSERT_EVENTS = """
INSERT INTO events (tenant_id, message_id, individual_id, type, event_time, revenue, quantity, item_id,
                    properties, payload)
SELECT $1, m, i, t, et, r, q, it, p, pl
FROM unnest($2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::float8[], $7::float8[], $8::text[],
            $9::jsonb[], $10::bytea[]) AS u(m, i, t, et, r, q, it, p, pl)
ORDER BY m
ON CONFLICT (tenant_id, message_id) DO NOTHING
RETURNING message_id
"""

# Rows are locked in id order so that concurrent batches touching the same individuals cannot deadlock.
_TOUCH_INDIVIDUALS = """
INSERT INTO individuals (tenant_id, individual_id)
SELECT $1, i FROM unnest($2::text[]) AS u(i) ORDER BY i
ON CONFLICT (tenant_id, individual_id) DO UPDATE SET update_time = now()
"""

_MERGE_ATTRIBUTES = """
INSERT INTO attributes (tenant_id, individual_id, key, value, updated_at)
SELECT $1, i, k, v, t FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::timestamptz[]) AS u(i, k, v, t)
ON CONFLICT (tenant_id, individual_id, key)
DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
WHERE attributes.updated_at <= EXCLUDED.updated_at
"""

# One statement reads the given individuals' events once (one index range each), computes every insight of
# every individual from them (exact at the window edge: an event counts when it is newer than now() minus the
# window), stores the values that changed and returns them all.
_COMPUTE_INSIGHTS = """
WITH own AS MATERIALIZED (
    SELECT individual_id, message_id, type, event_time, revenue, quantity, properties
    FROM events WHERE tenant_id = $1 AND individual_id = ANY($2::text[])
), computed AS (
    SELECT t.individual_id, d.name,
           COALESCE(sum(CASE WHEN d.aggregate = 1 THEN 1.0
                             WHEN d.field = 'revenue' THEN e.revenue
                             WHEN d.field = 'quantity' THEN e.quantity
                             WHEN jsonb_typeof(e.properties -> substr(d.field, 12)) = 'number'
                                 THEN (e.properties ->> substr(d.field, 12))::float8
                             ELSE 0.0 END) FILTER (WHERE e.message_id IS NOT NULL), 0.0) AS value
    FROM unnest($2::text[]) AS t(individual_id)
    CROSS JOIN insights d
    LEFT JOIN own e
           ON e.individual_id = t.individual_id
          AND (d.event_type = 0 OR e.type = d.event_type)
          AND (d.window_us = 0 OR e.event_time > now() - d.window_us * interval '1 microsecond')
    WHERE d.tenant_id = $1
    GROUP BY t.individual_id, d.name
), stored AS (
    INSERT INTO insight_values (tenant_id, individual_id, name, value)
    SELECT $1, individual_id, name, value FROM computed
    ON CONFLICT (tenant_id, individual_id, name) DO UPDATE SET value = EXCLUDED.value
    WHERE insight_values.value IS DISTINCT FROM EXCLUDED.value
)
SELECT individual_id, name, value FROM computed
"""

_PROFILE_STATES = """
SELECT individual_id, key, value::text AS value, false AS membership
FROM attributes WHERE tenant_id = $1 AND individual_id = ANY($2::text[])
UNION ALL
SELECT individual_id, segment, NULL, true
FROM memberships WHERE tenant_id = $1 AND individual_id = ANY($2::text[])
"""

# Entries and exits that really change a membership are written to the history in the same statement.
_CHANGE_MEMBERSHIPS = """
WITH entered AS (
    INSERT INTO memberships (tenant_id, segment, individual_id)
    SELECT $1, s, i FROM unnest($2::text[], $3::text[]) AS u(i, s)
    ON CONFLICT (tenant_id, segment, individual_id) DO NOTHING
    RETURNING segment, individual_id
), exited AS (
    DELETE FROM memberships m USING unnest($4::text[], $5::text[]) AS u(i, s)
    WHERE m.tenant_id = $1 AND m.individual_id = u.i AND m.segment = u.s
    RETURNING m.segment, m.individual_id
)
INSERT INTO membership_history (tenant_id, segment, individual_id, change)
SELECT $1, segment, individual_id, 'entered' FROM entered
UNION ALL
SELECT $1, segment, individual_id, 'exited' FROM exited
"""

_MOVE_ATTRIBUTES = """
INSERT INTO attributes (tenant_id, individual_id, key, value, updated_at)
SELECT DISTINCT ON (key) $1, $3, key, value, updated_at
FROM attributes WHERE tenant_id = $1 AND individual_id = ANY($2::text[])
ORDER BY key, updated_at DESC
ON CONFLICT (tenant_id, individual_id, key)
DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
WHERE attributes.updated_at < EXCLUDED.updated_at
"""


def _window_us(window: timedelta) -> int:
    return (window.days * 86_400 + window.seconds) * 1_000_000 + window.microseconds


def _insight(row: asyncpg.Record) -> InsightDef:
    return InsightDef(row["name"], row["description"], row["aggregate"], row["field"], row["event_type"],
                      timedelta(microseconds=row["window_us"]))


def _affected(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class PostgresUnit:
    """One transaction on one tenant, on one pooled connection."""

    def __init__(self, conn: asyncpg.Connection, tenant: str):
        self.conn = conn
        self.tenant = tenant

    async def lock_definitions(self, exclusive: bool) -> None:
        # Appends share the lock; saving a definition takes it alone so its full recompute sees no stale writer.
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        await self.conn.execute(f"SELECT {fn}(hashtextextended('profile_graph/' || $1, 0))", self.tenant)

    async def insert_events(self, events: Sequence[NewEvent]) -> set[str]:
        rows = await self.conn.fetch(
            _INSERT_EVENTS,
            self.tenant,
            [e.message_id for e in events],
            [e.individual_id for e in events],
            [e.type for e in events],
            [e.event_time for e in events],
            [e.revenue for e in events],
            [e.quantity for e in events],
            [e.item_id for e in events],
            [json.dumps(e.properties) if e.properties else None for e in events],
            [e.payload for e in events],
        )
        return {r["message_id"] for r in rows}

    async def touch_individuals(self, ids: Sequence[str]) -> None:
        await self.conn.execute(_TOUCH_INDIVIDUALS, self.tenant, list(ids))

    async def individual_exists(self, individual_id: str) -> bool:
        return await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM individuals WHERE tenant_id = $1 AND individual_id = $2)",
            self.tenant, individual_id)

    async def individual_ids(self, after: str, limit: int) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT individual_id FROM individuals WHERE tenant_id = $1 AND individual_id > $2"
            " ORDER BY individual_id LIMIT $3", self.tenant, after, limit)
        return [r["individual_id"] for r in rows]

    async def merge_attributes(self, updates: Sequence[AttributeUpdate]) -> None:
        if not updates:
            return
        await self.conn.execute(
            _MERGE_ATTRIBUTES, self.tenant,
            [u.individual_id for u in updates], [u.key for u in updates],
            [json.dumps(u.value) for u in updates], [u.updated_at for u in updates])

    async def definitions(self) -> tuple[list[InsightDef], list[SegmentDef]]:
        insights = await self.conn.fetch(
            "SELECT name, description, aggregate, field, event_type, window_us FROM insights"
            " WHERE tenant_id = $1 ORDER BY name", self.tenant)
        segments = await self.conn.fetch(
            "SELECT name, description, rule FROM segments WHERE tenant_id = $1 ORDER BY name", self.tenant)
        return [_insight(r) for r in insights], [SegmentDef(r["name"], r["description"], r["rule"]) for r in segments]

    async def compute_insights(self, ids: Sequence[str]) -> dict[str, dict[str, float]]:
        values: dict[str, dict[str, float]] = {}
        for r in await self.conn.fetch(_COMPUTE_INSIGHTS, self.tenant, list(ids)):
            values.setdefault(r["individual_id"], {})[r["name"]] = float(r["value"])
        return values

    async def profile_states(self, ids: Sequence[str]) -> dict[str, tuple[dict, set[str]]]:
        states: dict[str, tuple[dict, set[str]]] = {}
        for r in await self.conn.fetch(_PROFILE_STATES, self.tenant, list(ids)):
            attributes, segments = states.setdefault(r["individual_id"], ({}, set()))
            if r["membership"]:
                segments.add(r["key"])
            else:
                attributes[r["key"]] = json.loads(r["value"])
        return states

    async def change_memberships(self, entered: Sequence[tuple[str, str]], exited: Sequence[tuple[str, str]]) -> None:
        await self.conn.execute(
            _CHANGE_MEMBERSHIPS, self.tenant,
            [i for i, _ in entered], [s for _, s in entered], [i for i, _ in exited], [s for _, s in exited])

    async def move_individuals(self, from_ids: Sequence[str], to_id: str) -> tuple[int, list[tuple[str, str]]]:
        ids = list(from_ids)
        moved = _affected(await self.conn.execute(
            "UPDATE events SET individual_id = $3 WHERE tenant_id = $1 AND individual_id = ANY($2::text[])",
            self.tenant, ids, to_id))
        await self.conn.execute(_MOVE_ATTRIBUTES, self.tenant, ids, to_id)
        for table in ("attributes", "insight_values", "individuals"):
            await self.conn.execute(
                f"DELETE FROM {table} WHERE tenant_id = $1 AND individual_id = ANY($2::text[])", self.tenant, ids)
        rows = await self.conn.fetch(
            "SELECT individual_id, segment FROM memberships WHERE tenant_id = $1 AND individual_id = ANY($2::text[])",
            self.tenant, ids)
        return moved, [(r["individual_id"], r["segment"]) for r in rows]

    async def save_insight(self, d: InsightDef) -> None:
        await self.conn.execute(
            """INSERT INTO insights (tenant_id, name, description, aggregate, field, event_type, window_us)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (tenant_id, name) DO UPDATE SET description = EXCLUDED.description,
                   aggregate = EXCLUDED.aggregate, field = EXCLUDED.field, event_type = EXCLUDED.event_type,
                   window_us = EXCLUDED.window_us, update_time = now()""",
            self.tenant, d.name, d.description, d.aggregate, d.field, d.event_type, _window_us(d.window))

    async def save_segment(self, s: SegmentDef) -> None:
        await self.conn.execute(
            """INSERT INTO segments (tenant_id, name, description, rule) VALUES ($1, $2, $3, $4)
               ON CONFLICT (tenant_id, name) DO UPDATE SET description = EXCLUDED.description,
                   rule = EXCLUDED.rule, update_time = now()""",
            self.tenant, s.name, s.description, s.rule)

    async def member_count(self, segment: str) -> int:
        return await self.conn.fetchval(
            "SELECT count(*) FROM memberships WHERE tenant_id = $1 AND segment = $2", self.tenant, segment)


class PostgresStore:
    """The profile graph's tables in its own schema, reached through one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self._profile_sql: dict[frozenset[str], str] = {}

    @asynccontextmanager
    async def unit(self, tenant: str) -> AsyncIterator[PostgresUnit]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield PostgresUnit(conn, tenant)

    def _profile_query(self, parts: frozenset[str]) -> str:
        sql = self._profile_sql.get(parts)
        if sql is None:
            own = "tenant_id = $1 AND individual_id = $2"
            columns = [f"(SELECT update_time FROM individuals WHERE {own}) AS update_time"]
            if "attributes" in parts:
                columns.append(f"(SELECT jsonb_object_agg(key, value) FROM attributes WHERE {own})::text AS attributes")
            if "events" in parts:
                columns.append(f"ARRAY(SELECT payload FROM events WHERE {own}"
                               " ORDER BY event_time DESC, message_id DESC LIMIT $3) AS events")
            if "insights" in parts:
                columns.append(f"(SELECT jsonb_object_agg(name, value) FROM insight_values WHERE {own})::text AS insights")
            if "segments" in parts:
                columns.append(f"ARRAY(SELECT segment FROM memberships WHERE {own} ORDER BY segment) AS segments")
            sql = self._profile_sql[parts] = "SELECT " + ", ".join(columns)
        return sql

    async def get_profile(self, tenant: str, individual_id: str, parts: set[str], event_limit: int) -> Profile:
        key = frozenset(parts)
        args = [tenant, individual_id] + ([event_limit] if "events" in key else [])
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(self._profile_query(key), *args)
        return Profile(
            individual_id=individual_id,
            attributes=json.loads(row["attributes"]) if "attributes" in key and row["attributes"] else {},
            event_payloads=list(row["events"]) if "events" in key else [],
            insights={k: float(v) for k, v in json.loads(row["insights"]).items()}
            if "insights" in key and row["insights"] else {},
            segments=list(row["segments"]) if "segments" in key else [],
            update_time=row["update_time"],
        )

    async def list_insights(self, tenant: str, after: str, limit: int) -> list[InsightDef]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT name, description, aggregate, field, event_type, window_us FROM insights"
                " WHERE tenant_id = $1 AND name > $2 ORDER BY name LIMIT $3", tenant, after, limit)
        return [_insight(r) for r in rows]

    async def list_segments(self, tenant: str, after: str, limit: int) -> list[SegmentDef]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT s.name, s.description, s.rule,
                          (SELECT count(*) FROM memberships m WHERE m.tenant_id = s.tenant_id AND m.segment = s.name)
                              AS member_count
                   FROM segments s WHERE s.tenant_id = $1 AND s.name > $2 ORDER BY s.name LIMIT $3""",
                tenant, after, limit)
        return [SegmentDef(r["name"], r["description"], r["rule"], r["member_count"]) for r in rows]

    async def segment_exists(self, tenant: str, name: str) -> bool:
        async with self.pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM segments WHERE tenant_id = $1 AND name = $2)", tenant, name)

    async def list_members(self, tenant: str, segment: str, after: str, limit: int) -> list[Member]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT individual_id, enter_time FROM memberships WHERE tenant_id = $1 AND segment = $2"
                " AND individual_id > $3 ORDER BY individual_id LIMIT $4", tenant, segment, after, limit)
        return [Member(r["individual_id"], r["enter_time"]) for r in rows]

    async def tenants_with_windowed_insights(self) -> list[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT DISTINCT tenant_id FROM insights WHERE window_us > 0 ORDER BY tenant_id")
        return [r["tenant_id"] for r in rows]

    async def upsert_items(self, tenant: str, items: Sequence[Item]) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO items (tenant_id, item_id, name, attributes)
                   SELECT $1, i, n, a FROM unnest($2::text[], $3::text[], $4::jsonb[]) AS u(i, n, a)
                   ON CONFLICT (tenant_id, item_id) DO UPDATE SET name = EXCLUDED.name,
                       attributes = EXCLUDED.attributes, update_time = now()""",
                tenant, [i.item_id for i in items], [i.name for i in items],
                [json.dumps(i.attributes) for i in items])

    async def get_items(self, tenant: str, ids: Sequence[str]) -> list[Item]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT item_id, name, attributes::text AS attributes FROM items"
                " WHERE tenant_id = $1 AND item_id = ANY($2::text[])", tenant, list(ids))
        return [Item(r["item_id"], r["name"], json.loads(r["attributes"])) for r in rows]
