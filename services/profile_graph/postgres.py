"""PostgresStore, the asyncpg adapter of the profile graph: its pool, profile reads, listings and items."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import cast

import asyncpg

from services.profile_graph import domain
from services.profile_graph.domain import (
    Affinity,
    Condition,
    Config,
    ConsentState,
    Contention,
    InsightDef,
    Item,
    Member,
    MembershipChange,
    Profile,
    ProfileObjectRow,
    SegmentDef,
)
from services.profile_graph.postgres_feed import EventFeed
from services.profile_graph.postgres_sql import _CONFIG, _DECAY3, _DECAY4, TENANT_LOCK_KEY, _config, _from_us, _insight
from services.profile_graph.postgres_unit import PostgresUnit
from shared.db import CONTENTION_ERRORS

# The membership feed's horizon of one tenant: every transaction that may still add rows below it has finished.
# Rows are written only by transactions that took the tenant's advisory lock (lock_definitions) before writing
# anything, so before they had a transaction id. So a transaction still running either holds that lock now (its
# id, if it has one, bounds the horizon; one without an id yet gets one above the next id, which bounds it too) or
# will never write this tenant's rows. pg_locks lists each holder's own transactionid lock beside its advisory one
# in one consistent view; the 32-bit xid is widened to the 64-bit ids the rows carry (pg_current_xact_id) against
# the next id. Holders waiting for the lock have written nothing.
_TENANT_HORIZON = """
WITH next AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS id),
holders AS (
    SELECT x.transactionid::text::bigint AS xid FROM pg_locks a
    JOIN pg_locks x ON x.virtualtransaction = a.virtualtransaction AND x.locktype = 'transactionid'
        AND x.mode = 'ExclusiveLock' AND x.granted
    WHERE a.locktype = 'advisory' AND a.granted AND a.objsubid = 1
      AND a.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((a.classid::bigint << 32) | a.objid::bigint) = """ + TENANT_LOCK_KEY + """
)
SELECT least(next.id, min(next.id - ((next.id - holders.xid) & 4294967295)))
FROM next LEFT JOIN holders ON true GROUP BY next.id
"""


class PostgresStore:
    """The profile graph's tables in its own schema, reached through one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.feed = EventFeed(pool)
        self._profile_sql: dict[tuple[frozenset[str], bool], str] = {}

    @asynccontextmanager
    async def unit(self, tenant: str) -> AsyncIterator[PostgresUnit]:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                unit = PostgresUnit(conn, tenant)
                yield unit
                await unit.notify_changes()
        except CONTENTION_ERRORS as error:
            raise Contention(str(error)) from error

    def watch(self, tenant: str, individual_id: str):
        return self.feed.watch(tenant, individual_id)

    def watch_changes(self, tenant: str):
        return self.feed.watch_tenant(tenant)

    def _profile_query(self, parts: frozenset[str], batch: bool) -> str:
        """One statement reading the asked parts: of individual $2 (one row), or of each id of the array $2 (one row
        per id, in array order). Further parameters: $3 event limit, $4 now, $5 affinity limit, renumbered to those
        the parts use."""
        key = (parts, batch)
        sql = self._profile_sql.get(key)
        if sql is None:
            who = "u.id" if batch else "$2"
            own = f"tenant_id = $1 AND individual_id = {who}"
            columns = [f"(SELECT update_time FROM individuals WHERE {own}) AS update_time"]
            if "attributes" in parts:
                columns.append(f"(SELECT jsonb_object_agg(key, value) FROM attributes WHERE {own})::text AS attributes")
            if "events" in parts:
                columns.append(f"ARRAY(SELECT payload FROM events WHERE {own}"
                               " ORDER BY event_time DESC, message_id DESC LIMIT $3) AS events")
            if "insights" in parts:
                columns.append("(SELECT json_agg(json_build_array(name, dimension, value)) FROM insight_values"
                               f" WHERE {own})::text AS insights")
            if "segments" in parts:
                columns.append(f"ARRAY(SELECT segment FROM memberships WHERE {own} ORDER BY segment) AS segments")
            if "profile_objects" in parts:
                columns.append(
                    "(SELECT json_agg(json_build_array(type, object_id, attributes,"
                    " (extract(epoch FROM updated_at) * 1000000)::int8, source) ORDER BY type, updated_at DESC,"
                    f" object_id DESC) FROM profile_objects WHERE {own})::text AS objects")
            if "consents" in parts:
                columns.append(
                    "(SELECT json_agg(json_build_array(purpose, status, (extract(epoch FROM updated_at) * 1000000)::int8,"
                    f" source) ORDER BY purpose) FROM consents WHERE {own})::text AS consents")
            if "affinities" in parts:
                columns.append(
                    "(SELECT json_agg(json_build_array(dimension, value, s) ORDER BY s DESC, dimension, value) FROM"
                    f" (SELECT dimension, value, score * {_DECAY4} AS s FROM affinities WHERE {own}"
                    " ORDER BY s DESC, dimension, value"
                    " LIMIT $5) t)::text AS affinities")
            sql = "SELECT " + ", ".join(columns)
            if batch:
                sql += " FROM unnest($2::text[]) WITH ORDINALITY AS u(id, n) ORDER BY u.n"
            # Number the parameters the query really uses, in order.
            used = [n for n in (3, 4, 5) if f"${n}" in sql]
            for new, old in enumerate(used, start=3):
                sql = sql.replace(f"${old}", f"${new}")
            self._profile_sql[key] = sql
        return sql

    @staticmethod
    def _profile_args(parts: frozenset[str], event_limit: int, affinity_limit: int, now: datetime) -> list:
        return ([event_limit] if "events" in parts else []) + ([now, affinity_limit] if "affinities" in parts else [])

    @staticmethod
    def _profile(individual_id: str, parts: frozenset[str], row: asyncpg.Record) -> Profile:
        profile = Profile(individual_id=individual_id, update_time=row["update_time"])
        if "attributes" in parts and row["attributes"]:
            profile.attributes = json.loads(row["attributes"])
        if "events" in parts:
            profile.event_payloads = list(row["events"])
        if "insights" in parts and row["insights"]:
            for name, dim, value in json.loads(row["insights"]):
                if dim:
                    profile.grouped_insights.setdefault(name, {})[dim] = float(value)
                else:
                    profile.insights[name] = float(value)
        if "segments" in parts:
            profile.segments = list(row["segments"])
        if "profile_objects" in parts and row["objects"]:
            profile.objects = [ProfileObjectRow(t, o, a, _from_us(us), s) for t, o, a, us, s in json.loads(row["objects"])]
        if "consents" in parts and row["consents"]:
            profile.consents = [ConsentState(p, st, _from_us(us), s) for p, st, us, s in json.loads(row["consents"])]
        if "affinities" in parts and row["affinities"]:
            profile.affinities = [Affinity(d, v, float(s)) for d, v, s in json.loads(row["affinities"])]
        return profile

    async def get_profile(self, tenant: str, individual_id: str, parts: set[str], event_limit: int,
                          affinity_limit: int, now: datetime) -> Profile:
        key = frozenset(parts)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(self._profile_query(key, batch=False), tenant, individual_id,
                                      *self._profile_args(key, event_limit, affinity_limit, now))
        return self._profile(individual_id, key, row)

    async def get_profiles(self, tenant: str, individual_ids: Sequence[str], parts: set[str], event_limit: int,
                           affinity_limit: int, now: datetime) -> list[Profile]:
        key = frozenset(parts)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._profile_query(key, batch=True), tenant, list(individual_ids),
                                    *self._profile_args(key, event_limit, affinity_limit, now))
        return [self._profile(i, key, row) for i, row in zip(individual_ids, rows)]

    async def get_affinities(self, tenant: str, individual_id: str, dimension: str, limit: int,
                             now: datetime) -> list[Affinity]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT dimension, value, score * {_DECAY3} AS s
                    FROM affinities WHERE tenant_id = $1 AND individual_id = $2 AND ($4 = '' OR dimension = $4)
                    ORDER BY s DESC, dimension, value LIMIT $5""", tenant, individual_id, now, dimension, limit)
        return [Affinity(r["dimension"], r["value"], r["s"]) for r in rows]

    async def get_consents(self, tenant: str, individual_id: str) -> list[ConsentState]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT purpose, status, updated_at, source FROM consents WHERE tenant_id = $1 AND individual_id = $2"
                " ORDER BY purpose", tenant, individual_id)
        return [ConsentState(r["purpose"], r["status"], r["updated_at"], r["source"]) for r in rows]

    async def read_config(self, tenant: str) -> Config:
        async with self.pool.acquire() as conn:
            return _config(await conn.fetchrow(_CONFIG, tenant))

    async def list_insights(self, tenant: str, after: str, limit: int) -> list[InsightDef]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT name, description, aggregate, field, event_type, window_us, conditions::text AS c, dimension,"
                " subject FROM insights WHERE tenant_id = $1 AND name > $2 ORDER BY name LIMIT $3", tenant, after, limit)
        return [_insight([r["name"], r["description"], r["aggregate"], r["field"], r["event_type"], r["window_us"],
                          json.loads(r["c"]), r["dimension"], r["subject"]]) for r in rows]

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

    async def list_changes(self, tenant: str, segment: str, after: tuple[int, int], limit: int
                           ) -> list[MembershipChange]:
        """Changes after the (txid, id) cursor, written by transactions of this tenant that have all finished
        (below the tenant's horizon, _TENANT_HORIZON), so a later read never finds one that sorts before what this
        one returned; another tenant's long transaction never holds this tenant's feed back."""
        async with self.pool.acquire() as conn:
            horizon = await conn.fetchval(_TENANT_HORIZON, tenant)
            # A new statement, so a new snapshot: taken after the horizon was, it sees every transaction below it.
            rows = await conn.fetch(
                "SELECT txid, id, segment, individual_id, change, change_time FROM membership_history"
                " WHERE tenant_id = $1 AND (txid, id) > ($2, $3) AND txid < $6"
                " AND ($4 = '' OR segment = $4) ORDER BY txid, id LIMIT $5",
                tenant, after[0], after[1], segment, limit, horizon)
        return [MembershipChange(r["id"], r["segment"], r["individual_id"], r["change"] == "entered",
                                 r["change_time"], r["txid"]) for r in rows]

    async def tenants_pending_partials(self) -> list[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT tenant_id FROM graph_config WHERE kind = 'insight_partials_pending' ORDER BY tenant_id")
        return [r["tenant_id"] for r in rows]

    async def clear_pending_partials(self, tenant: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("DELETE FROM graph_config WHERE tenant_id = $1 AND kind = 'insight_partials_pending'",
                               tenant)

    async def tenants_with_definitions(self) -> list[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT tenant_id FROM insights UNION SELECT tenant_id FROM segments ORDER BY tenant_id")
        return [r["tenant_id"] for r in rows]

    async def item_types(self, tenant: str) -> dict[str, str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT name, type FROM item_attribute_types WHERE tenant_id = $1", tenant)
        return {r["name"]: r["type"] for r in rows}

    async def upsert_items(self, tenant: str, items: Sequence[Item], new_types: dict[str, str]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if new_types:
                await conn.execute(
                    """INSERT INTO item_attribute_types (tenant_id, name, type)
                       SELECT $1, n, t FROM unnest($2::text[], $3::text[]) AS u(n, t) ON CONFLICT DO NOTHING""",
                    tenant, list(new_types), list(new_types.values()))
            await conn.execute(
                """INSERT INTO items (tenant_id, item_id, name, attributes)
                   SELECT $1, i, n, a FROM unnest($2::text[], $3::text[], $4::jsonb[]) AS u(i, n, a)
                   ON CONFLICT (tenant_id, item_id) DO UPDATE SET name = EXCLUDED.name,
                       attributes = EXCLUDED.attributes, update_time = now()
                   WHERE items.name IS DISTINCT FROM EXCLUDED.name OR items.attributes IS DISTINCT FROM EXCLUDED.attributes""",
                tenant, [i.item_id for i in items], [i.name for i in items],
                [json.dumps(i.attributes) for i in items])

    _ITEM_COLUMNS = """i.item_id, i.name, i.attributes::text AS attributes,
        (SELECT jsonb_object_agg(v.name, v.value) FROM item_insight_values v
         WHERE v.tenant_id = i.tenant_id AND v.item_id = i.item_id)::text AS insights"""

    @staticmethod
    def _item(r: asyncpg.Record) -> Item:
        return Item(r["item_id"], r["name"], json.loads(r["attributes"]),
                    json.loads(r["insights"]) if r["insights"] else {})

    async def get_items(self, tenant: str, ids: Sequence[str]) -> list[Item]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {self._ITEM_COLUMNS} FROM items i WHERE i.tenant_id = $1 AND i.item_id = ANY($2::text[])",
                tenant, list(ids))
        return [self._item(r) for r in rows]

    async def list_items(self, tenant: str, filters: Sequence[Condition], types: dict[str, str], after: str,
                         limit: int) -> list[Item]:
        args: list = [tenant, after, limit]
        where = []

        def arg(value) -> str:
            args.append(value)
            return f"${len(args)}"

        ops = {domain.OP_GT: ">", domain.OP_GE: ">=", domain.OP_LT: "<", domain.OP_LE: "<=", domain.OP_EQ: "="}
        for c in filters:
            kind = types[c.field]
            key = arg(c.field)
            if c.op == domain.OP_CONTAINS:
                where.append(f"i.attributes -> {key} ? {arg(c.value)}")
                continue
            if kind == "number":
                left, right = f"(i.attributes ->> {key})::float8", f"{arg(float(cast(float, c.value)))}::float8"
            elif kind == "timestamp":
                left, right = f"(i.attributes ->> {key})::timestamptz", f"{arg(c.value)}::timestamptz"
            elif kind == "bool":
                left, right = f"(i.attributes -> {key})", f"{arg(json.dumps(c.value))}::jsonb"
            else:
                left, right = f"(i.attributes ->> {key})", f"{arg(c.value)}::text"
            where.append(f"{left} IS DISTINCT FROM {right}" if c.op == domain.OP_NE else f"{left} {ops[c.op]} {right}")
        extra = "".join(f" AND {w}" for w in where)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {self._ITEM_COLUMNS} FROM items i WHERE i.tenant_id = $1 AND i.item_id COLLATE \"C\" > $2"
                f"{extra} ORDER BY i.item_id COLLATE \"C\" LIMIT $3", *args)
        return [self._item(r) for r in rows]

    async def recent_events(self, tenant: str, individual_id: str, count: int) -> list[tuple[int, bytes, datetime]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT seq, payload, append_time FROM (SELECT seq, payload, append_time FROM events"
                " WHERE tenant_id = $1 AND individual_id = $2 ORDER BY seq DESC LIMIT $3) t ORDER BY seq",
                tenant, individual_id, count)
        return [(r["seq"], r["payload"], r["append_time"]) for r in rows]

    async def events_after(self, tenant: str, individual_id: str, after: int) -> list[tuple[int, bytes, datetime]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT seq, payload, append_time FROM events WHERE tenant_id = $1 AND individual_id = $2"
                " AND seq > $3 ORDER BY seq LIMIT 1000", tenant, individual_id, after)
        return [(r["seq"], r["payload"], r["append_time"]) for r in rows]
