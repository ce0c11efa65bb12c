"""PostgresUnit: one transaction on one tenant's profile data (appends, rebuilds, definitions)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from services.profile_graph import domain, insights
from services.profile_graph.domain import (
    AffinityConfig,
    Config,
    InsightDef,
    NewEvent,
    ReconRule,
    SegmentDef,
    StoredEvent,
    ValueStat,
)
from services.profile_graph.postgres_feed import notify
from services.profile_graph.postgres_sql import (
    _ADD_AFFINITIES,
    _ADD_STATS,
    _CHANGE_MEMBERSHIPS,
    _CONFIG,
    _EVENT_COLUMNS,
    _INSERT_EVENTS,
    _LINE_COLUMNS,
    _NO_LINES,
    _STORE_INSIGHTS,
    _TOUCH_INDIVIDUALS,
    _TRIM_OBJECTS,
    _UPSERT_CONSENTS,
    _UPSERT_OBJECTS,
    _WRITE_ATTRIBUTES,
    _WRITE_PARTIALS,
    TENANT_LOCK_KEY,
    _config,
    _lines,
    _profile_states_sql,
    _stored_event,
    _window_us,
    affinity_document,
    recon_document,
)
from shared.db import lock_following_redirects


def _affected(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


def _flat(lists: list) -> tuple[list[int], list]:
    """Many short lists as one flat list and, for each element, the 1-based index of the list it came from."""
    owner: list[int] = []
    flat: list = []
    for n, values in enumerate(lists, start=1):
        owner += [n] * len(values)
        flat += values
    return owner, flat


class PostgresUnit:
    """One transaction on one tenant, on one pooled connection.

    Each write notes the individuals whose profile it changes (or that any may have changed); the change feed is
    notified once, in the transaction, when the unit ends (postgres.py), so it is heard exactly when it commits.
    """

    def __init__(self, conn: asyncpg.Connection, tenant: str):
        self.conn = conn
        self.tenant = tenant
        self.changed: set[str] = set()
        self.changed_all = False

    def _changes(self, ids) -> None:
        self.changed.update(ids)

    async def notify_changes(self) -> None:
        """Tells the change feed what this unit changed (called last, inside the transaction)."""
        if self.changed or self.changed_all:
            await notify(self.conn, self.tenant, self.changed, self.changed_all)

    async def lock_definitions(self, exclusive: bool, large: bool = True) -> None:
        # Appends share the lock; saving a definition takes it alone so its full recompute sees no stale writer.
        # The batch statements take arrays whose size the generic plan of a prepared statement cannot know: after
        # five runs PostgreSQL would switch to it (e.g. nested loops over 1,000-row unnests, 10-20x slower), so
        # large write transactions plan with the real parameters (set in the same round trip as the lock); small
        # ones keep the generic plans, which fit them and save planning every statement.
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        mode = "force_custom_plan" if large else "auto"
        await self.conn.execute(
            f"SELECT set_config('plan_cache_mode', '{mode}', true), {fn}({TENANT_LOCK_KEY})",
            self.tenant)

    async def lock_individuals(self, ids: Sequence[str]) -> dict[str, str]:
        """Locks the individuals for this transaction (in id order, so concurrent writers never deadlock on them),
        then the survivors of those merged away, until stable (shared.db.lock_following_redirects); returns
        {merged id: survivor} for the ids that were merged."""
        async def redirects_of(wanted: Sequence[str]) -> dict[str, str]:
            rows = await self.conn.fetch(
                "SELECT individual_id, survivor_id FROM merged_individuals WHERE tenant_id = $1 "
                "AND individual_id = ANY($2::text[])", self.tenant, list(wanted))
            return {r["individual_id"]: r["survivor_id"] for r in rows}

        return await lock_following_redirects(ids, self._lock, redirects_of)

    async def _lock(self, ids: list[str]) -> None:
        if ids:
            await self.conn.execute(
                "SELECT count(pg_advisory_xact_lock(hashtextextended('profile_graph/' || $1 || '/' || u.id, 0))) "
                "FROM unnest($2::text[]) WITH ORDINALITY AS u(id, n)", self.tenant, ids)

    async def record_merge(self, from_ids: Sequence[str], to_id: str) -> None:
        """Remembers that from_ids now live on as to_id (and so does whatever had merged into them)."""
        self._changes([*from_ids, to_id])
        await self.conn.execute(
            "UPDATE merged_individuals SET survivor_id = $3 WHERE tenant_id = $1 AND survivor_id = ANY($2::text[])",
            self.tenant, list(from_ids), to_id)
        await self.conn.execute(
            "INSERT INTO merged_individuals (tenant_id, individual_id, survivor_id) "
            "SELECT $1, u.id, $3 FROM unnest($2::text[]) AS u(id) "
            "ON CONFLICT (tenant_id, individual_id) DO UPDATE SET survivor_id = excluded.survivor_id, merged_at = now()",
            self.tenant, list(from_ids), to_id)
        await self.conn.execute("DELETE FROM merged_individuals WHERE tenant_id = $1 AND individual_id = $2",
                                self.tenant, to_id)

    async def record_split(self, restored_id: str) -> None:
        """An unmerge brought restored_id back: appends to it stay on it."""
        self._changes([restored_id])
        await self.conn.execute("DELETE FROM merged_individuals WHERE tenant_id = $1 AND individual_id = $2",
                                self.tenant, restored_id)

    async def insert_events(self, events: Sequence[NewEvent]) -> set[str]:
        def js(value):
            return json.dumps(value) if value else None

        line_of, lines = _flat([e.lines for e in events])
        item_of, items = _flat([e.item_ids for e in events])
        key_of, keys = _flat([e.identity_keys for e in events])
        rows = await self.conn.fetch(
            _INSERT_EVENTS, self.tenant,
            [e.message_id for e in events], [e.individual_id for e in events], [e.type for e in events],
            [e.event_time for e in events], [e.revenue for e in events], [e.quantity for e in events],
            [e.item_id for e in events], [js(e.properties) for e in events], [e.payload for e in events],
            [e.name for e in events], [e.source for e in events],
            line_of, [li[0] for li in lines], [li[1] for li in lines], [li[2] for li in lines],
            item_of, items, key_of, keys,
            [js(e.attributes) for e in events], [js([list(c) for c in e.consents]) for e in events],
            [js([list(o) for o in e.objects]) for e in events],
        )
        self._changes(r["individual_id"] for r in rows)
        return {r["message_id"] for r in rows}

    async def touch_individuals(self, ids: Sequence[str], now: datetime) -> None:
        self._changes(ids)
        await self.conn.execute(_TOUCH_INDIVIDUALS, self.tenant, list(ids), now)

    async def individual_exists(self, individual_id: str) -> bool:
        return await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM individuals WHERE tenant_id = $1 AND individual_id = $2)",
            self.tenant, individual_id)

    async def individual_ids(self, after: str, limit: int) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT individual_id FROM individuals WHERE tenant_id = $1 AND individual_id > $2"
            " ORDER BY individual_id LIMIT $3", self.tenant, after, limit)
        return [r["individual_id"] for r in rows]

    async def config(self) -> Config:
        return _config(await self.conn.fetchrow(_CONFIG, self.tenant))

    async def add_attribute_stats(self, stats: dict) -> None:
        keys = list(stats)
        await self.conn.execute(
            _ADD_STATS, self.tenant, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
            [k[3] for k in keys], [stats[k][0] for k in keys], [stats[k][1] for k in keys])

    async def attribute_stats(self, ids: Sequence[str]) -> dict[tuple[str, str], list[ValueStat]]:
        out: dict[tuple[str, str], list[ValueStat]] = {}
        for r in await self.conn.fetch(
                "SELECT individual_id, key, source, value, count, last_at FROM attribute_values"
                " WHERE tenant_id = $1 AND individual_id = ANY($2::text[])", self.tenant, list(ids)):
            out.setdefault((r["individual_id"], r["key"]), []).append(
                ValueStat(r["source"], r["value"], r["count"], r["last_at"]))
        return out

    async def write_attributes(self, ids: Sequence[str], values: dict[tuple[str, str], tuple]) -> None:
        self._changes(k[0] for k in values)  # the individuals written (ids is not used here)
        put = [(k, v) for k, v in values.items() if v[0] is not None]
        gone = [k for k, v in values.items() if v[0] is None]
        await self.conn.execute(
            _WRITE_ATTRIBUTES, self.tenant, [k[0] for k, _ in put], [k[1] for k, _ in put],
            [v[0] for _, v in put], [v[1] for _, v in put], [k[0] for k in gone], [k[1] for k in gone])

    async def upsert_objects(self, rows: Sequence[tuple], keep: int) -> None:
        self._changes(r[0] for r in rows)
        await self.conn.execute(
            _UPSERT_OBJECTS, self.tenant, [r[1] for r in rows], [r[2] for r in rows], [r[0] for r in rows],
            [json.dumps(r[3]) for r in rows], [r[4] for r in rows], [r[5] for r in rows])
        await self.conn.execute(_TRIM_OBJECTS, self.tenant, sorted({r[0] for r in rows}), keep)

    async def upsert_consents(self, rows: Sequence[tuple], from_api: bool) -> None:
        self._changes(r[0] for r in rows)
        await self.conn.execute(
            _UPSERT_CONSENTS, self.tenant, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
            [r[3] for r in rows], [r[4] for r in rows], from_api)

    async def item_attributes(self, ids: Sequence[str], keys: Sequence[str] | None = None) -> dict[str, dict]:
        if not ids:
            return {}
        if keys is None:
            rows = await self.conn.fetch(
                "SELECT item_id, attributes::text AS a FROM items WHERE tenant_id = $1 AND item_id = ANY($2::text[])",
                self.tenant, list(ids))
        else:  # only those attributes, and only items having one of them
            rows = await self.conn.fetch(
                "SELECT item_id, (SELECT jsonb_object_agg(k, attributes -> k) FROM unnest($3::text[]) AS u(k)"
                " WHERE attributes ? k)::text AS a FROM items"
                " WHERE tenant_id = $1 AND item_id = ANY($2::text[]) AND attributes ?| $3::text[]",
                self.tenant, list(ids), list(keys))
        return {r["item_id"]: json.loads(r["a"]) for r in rows}

    async def add_affinities(self, increments: dict, half_life: timedelta) -> None:
        keys = sorted(increments)
        self._changes(k[0] for k in keys)
        await self.conn.execute(
            _ADD_AFFINITIES, self.tenant, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
            [increments[k][0] for k in keys], [increments[k][1] for k in keys], half_life.total_seconds())

    async def event_rows(self, ids: Sequence[str], since: datetime | None, lines: bool, properties: bool
                         ) -> list[StoredEvent]:
        columns = _EVENT_COLUMNS.format(properties="properties::text" if properties else "NULL::text",
                                        lines=_LINE_COLUMNS if lines else _NO_LINES)
        rows = await self.conn.fetch(
            f"SELECT {columns} FROM events WHERE tenant_id = $1 AND individual_id = ANY($2::text[])"
            " AND ($3::timestamptz IS NULL OR event_time > $3)", self.tenant, list(ids), since)
        return [_stored_event(r) for r in rows]

    async def edge_events(self, ids: Sequence[str], ranges: Sequence[tuple[datetime, datetime]], lines: bool,
                          properties: bool) -> list[StoredEvent]:
        columns = _EVENT_COLUMNS.format(properties="properties::text" if properties else "NULL::text",
                                        lines=_LINE_COLUMNS if lines else _NO_LINES)
        rows = await self.conn.fetch(
            f"SELECT {columns} FROM unnest($3::timestamptz[], $4::timestamptz[]) AS r(a, b) JOIN events"
            " ON tenant_id = $1 AND individual_id = ANY($2::text[]) AND event_time > r.a AND event_time < r.b",
            self.tenant, list(ids), [a for a, _ in ranges], [b for _, b in ranges])
        seen: set[str] = set()
        out = []
        for r in rows:  # ranges of different insights may overlap
            if r["message_id"] not in seen:
                seen.add(r["message_id"])
                out.append(_stored_event(r))
        return out

    async def read_partials(self, ids: Sequence[str]) -> tuple[dict[tuple[str, str, str, int], insights.Partial],
                                                               dict[tuple[str, str, str], float]]:
        # Partials and current values in one round trip (bucket NULL marks a value row, its value in m).
        rows = await self.conn.fetch(
            "SELECT individual_id, name, dimension, bucket, n, s, odd, m, last_us, last_id, last_value, d"
            " FROM insight_partials WHERE tenant_id = $1 AND individual_id = ANY($2::text[])"
            " UNION ALL SELECT individual_id, name, dimension, NULL, 0, NULL, NULL, value, NULL, NULL, NULL, NULL"
            " FROM insight_values WHERE tenant_id = $1 AND individual_id = ANY($2::text[])", self.tenant, list(ids))
        partials, values = {}, {}
        from_row = insights.Partial.from_row
        for r in rows:
            individual, name, dim, bucket = r[0], r[1], r[2], r[3]
            if bucket is None:
                values[(individual, name, dim)] = r[7]
            else:
                partials[(individual, name, dim, bucket)] = from_row(r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11])
        return partials, values

    async def change_insight_values(self, put: Sequence[tuple[str, str, str, float]],
                                    gone: Sequence[tuple[str, str, str]]) -> None:
        self._changes(p[0] for p in put)
        self._changes(g[0] for g in gone)
        if gone:
            await self.conn.execute(
                "DELETE FROM insight_values x USING unnest($2::text[], $3::text[], $4::text[]) AS g(i, n, d)"
                " WHERE x.tenant_id = $1 AND x.individual_id = g.i AND x.name = g.n AND x.dimension = g.d",
                self.tenant, [g[0] for g in gone], [g[1] for g in gone], [g[2] for g in gone])
        if put:
            await self.conn.execute(
                """INSERT INTO insight_values (tenant_id, individual_id, name, dimension, value)
                   SELECT $1, i, n, d, v FROM unnest($2::text[], $3::text[], $4::text[], $5::float8[]) AS u(i, n, d, v)
                   ON CONFLICT (tenant_id, individual_id, name, dimension) DO UPDATE SET value = EXCLUDED.value""",
                self.tenant, [p[0] for p in put], [p[1] for p in put], [p[2] for p in put], [p[3] for p in put])

    async def write_partials(self, ids: Sequence[str], partials: dict[tuple[str, str, str, int], insights.Partial],
                             keep_from: dict[str, int] | None) -> None:
        self._changes(ids)  # every individual whose partials are written is among ids (the statement scopes to them)
        if keep_from is None:
            await self.conn.execute("DELETE FROM insight_partials WHERE tenant_id = $1 AND individual_id = ANY($2::text[])",
                                    self.tenant, list(ids))
            keep_from = {}
        keys = list(partials)
        rows = [partials[k].row() for k in keys]
        await self.conn.execute(
            _WRITE_PARTIALS, self.tenant, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
            [k[3] for k in keys], [r[0] for r in rows], list(keep_from), list(keep_from.values()), list(ids),
            [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows],
            [r[5] for r in rows], [r[6] for r in rows], [json.dumps(r[7]) if r[7] else None for r in rows])

    async def store_insight_values(self, ids: Sequence[str], rows: dict[str, list[tuple[str, str, float]]]) -> None:
        self._changes(ids)  # rows holds values of ids only (the statement replaces theirs)
        flat = [(i, n, d, v) for i, values in rows.items() for n, d, v in values]
        await self.conn.execute(_STORE_INSIGHTS, self.tenant, [f[0] for f in flat], [f[1] for f in flat],
                                [f[2] for f in flat], [f[3] for f in flat], list(ids))

    async def profile_states(self, ids: Sequence[str], now: datetime, parts: frozenset[str]) -> dict[str, tuple]:
        states: dict[str, tuple] = {}
        now_arg = [now] if "affinities" in parts else []  # the decay of scores to now ($3)
        for r in await self.conn.fetch(_profile_states_sql(parts), self.tenant, list(ids), *now_arg):
            attributes, segments, affinities, consents = states.setdefault(r["individual_id"], ({}, set(), {}, {}))
            kind = r["kind"]
            if kind == "a":
                attributes[r["key"]] = json.loads(r["value"])
            elif kind == "m":
                segments.add(r["key"])
            elif kind == "c":
                consents[r["key"]] = domain.CONSENT_NAMES.get(int(r["value"]), "")
            else:
                dimension, value = r["key"].split(chr(31), 1)
                affinities.setdefault(dimension, {})[value] = float(r["value"])
        return states

    async def change_memberships(self, entered: Sequence[tuple[str, str]], exited: Sequence[tuple[str, str]],
                                 now: datetime) -> None:
        self._changes(i for i, _ in entered)
        self._changes(i for i, _ in exited)
        await self.conn.execute(
            _CHANGE_MEMBERSHIPS, self.tenant,
            [i for i, _ in entered], [s for _, s in entered], [i for i, _ in exited], [s for _, s in exited], now)

    async def move_events(self, from_ids: Sequence[str], to_id: str, identity_keys: Sequence[str] | None) -> int:
        self._changes([*from_ids, to_id])
        keys = list(identity_keys) if identity_keys is not None else None
        return _affected(await self.conn.execute(
            "UPDATE events SET individual_id = $3 WHERE tenant_id = $1 AND individual_id = ANY($2::text[])"
            " AND ($4::text[] IS NULL OR identity_keys && $4::text[])", self.tenant, list(from_ids), to_id, keys))

    async def move_api_consents(self, from_ids: Sequence[str], to_id: str) -> None:
        self._changes([*from_ids, to_id])
        await self.conn.execute(
            """INSERT INTO consents (tenant_id, individual_id, purpose, status, updated_at, source, from_api)
               SELECT DISTINCT ON (purpose) $1, $3, purpose, status, updated_at, source, true FROM consents
               WHERE tenant_id = $1 AND individual_id = ANY($2::text[]) AND from_api
               ORDER BY purpose, updated_at DESC
               ON CONFLICT (tenant_id, individual_id, purpose) DO UPDATE SET status = EXCLUDED.status,
                   updated_at = EXCLUDED.updated_at, source = EXCLUDED.source, from_api = true
               WHERE consents.updated_at <= EXCLUDED.updated_at""", self.tenant, list(from_ids), to_id)

    async def drop_individuals(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        self._changes(ids)
        for table in ("attribute_values", "attributes", "insight_values", "insight_partials", "profile_objects",
                      "consents", "affinities", "individuals"):
            await self.conn.execute(
                f"DELETE FROM {table} WHERE tenant_id = $1 AND individual_id = ANY($2::text[])", self.tenant, list(ids))
        rows = await self.conn.fetch(
            "SELECT individual_id, segment FROM memberships WHERE tenant_id = $1 AND individual_id = ANY($2::text[])",
            self.tenant, list(ids))
        return [(r["individual_id"], r["segment"]) for r in rows]

    async def clear_derived(self, ids: Sequence[str]) -> None:
        self._changes(ids)
        for table in ("attribute_values", "attributes", "insight_values", "insight_partials", "profile_objects",
                      "affinities"):
            await self.conn.execute(
                f"DELETE FROM {table} WHERE tenant_id = $1 AND individual_id = ANY($2::text[])", self.tenant, list(ids))
        await self.conn.execute(
            "DELETE FROM consents WHERE tenant_id = $1 AND individual_id = ANY($2::text[]) AND NOT from_api",
            self.tenant, list(ids))

    async def replay_events(self, ids: Sequence[str]) -> list[NewEvent]:
        rows = await self.conn.fetch(
            """SELECT individual_id, message_id, type, event_time, revenue, quantity, item_id, name, source,
                      properties::text AS properties, line_item_ids, line_quantities, line_prices,
                      attributes::text AS attributes,
                      consents::text AS consents, objects::text AS objects
               FROM events WHERE tenant_id = $1 AND individual_id = ANY($2::text[])
               ORDER BY event_time, message_id""", self.tenant, list(ids))
        return [NewEvent(
            r["individual_id"], r["message_id"], r["type"], r["event_time"],
            attributes=json.loads(r["attributes"]) if r["attributes"] else {},
            properties=json.loads(r["properties"]) if r["properties"] else None,
            revenue=r["revenue"], quantity=r["quantity"], item_id=r["item_id"], name=r["name"], source=r["source"],
            lines=_lines(r),
            consents=tuple(tuple(x) for x in json.loads(r["consents"])) if r["consents"] else (),
            objects=tuple(tuple(x) for x in json.loads(r["objects"])) if r["objects"] else (),
        ) for r in rows]

    async def save_insight(self, d: InsightDef) -> None:
        self.changed_all = True
        await self.conn.execute(
            """INSERT INTO insights (tenant_id, name, description, aggregate, field, event_type, window_us, conditions,
                                     dimension, subject)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (tenant_id, name) DO UPDATE SET description = EXCLUDED.description,
                   aggregate = EXCLUDED.aggregate, field = EXCLUDED.field, event_type = EXCLUDED.event_type,
                   window_us = EXCLUDED.window_us, conditions = EXCLUDED.conditions, dimension = EXCLUDED.dimension,
                   subject = EXCLUDED.subject, update_time = now()""",
            self.tenant, d.name, d.description, d.aggregate, d.field, d.event_type, _window_us(d.window),
            json.dumps([[c.field, c.op, c.value] for c in d.conditions]), d.dimension, d.subject)
        # An insight that changes subject leaves no stale values behind.
        table = "insight_values" if d.subject == domain.SUBJECT_ITEM else "item_insight_values"
        await self.conn.execute(f"DELETE FROM {table} WHERE tenant_id = $1 AND name = $2", self.tenant, d.name)
        # Partials of the old definition mean nothing under the new one (the full recompute writes new ones).
        await self.conn.execute("DELETE FROM insight_partials WHERE tenant_id = $1 AND name = $2", self.tenant, d.name)

    async def save_segment(self, s: SegmentDef) -> None:
        self.changed_all = True
        await self.conn.execute(
            """INSERT INTO segments (tenant_id, name, description, rule) VALUES ($1, $2, $3, $4)
               ON CONFLICT (tenant_id, name) DO UPDATE SET description = EXCLUDED.description,
                   rule = EXCLUDED.rule, update_time = now()""",
            self.tenant, s.name, s.description, s.rule)

    async def _save_document(self, kind: str, document: str) -> None:
        self.changed_all = True  # the affinity configuration or a reconciliation rule
        await self.conn.execute(
            """INSERT INTO graph_config (tenant_id, kind, document) VALUES ($1, $2, $3)
               ON CONFLICT (tenant_id, kind) DO UPDATE SET document = EXCLUDED.document""",
            self.tenant, kind, document)

    async def save_affinity_config(self, config: AffinityConfig) -> None:
        await self._save_document("affinity", affinity_document(config))

    async def save_recon_rule(self, rule: ReconRule) -> None:
        await self._save_document(f"reconciliation/{rule.object}", recon_document(rule))

    async def member_count(self, segment: str) -> int:
        return await self.conn.fetchval(
            "SELECT count(*) FROM memberships WHERE tenant_id = $1 AND segment = $2", self.tenant, segment)

    async def item_event_rows(self, item_ids: Sequence[str], since: datetime | None) -> list[StoredEvent]:
        columns = _EVENT_COLUMNS.format(properties="properties::text", lines=_LINE_COLUMNS)
        rows = await self.conn.fetch(
            f"SELECT {columns} FROM events WHERE tenant_id = $1 AND message_id IN"
            " (SELECT message_id FROM event_items WHERE tenant_id = $1 AND item_id = ANY($2::text[]))"
            " AND ($3::timestamptz IS NULL OR event_time > $3)", self.tenant, list(item_ids), since)
        return [_stored_event(r) for r in rows]

    async def store_item_insights(self, item_ids: Sequence[str], values: dict[str, dict[str, float]]) -> None:
        flat = [(i, n, v) for i, named in values.items() for n, v in named.items()]
        await self.conn.execute(
            """INSERT INTO item_insight_values (tenant_id, item_id, name, value)
               SELECT $1, i, n, v FROM unnest($2::text[], $3::text[], $4::float8[]) AS u(i, n, v)
               ON CONFLICT (tenant_id, item_id, name) DO UPDATE SET value = EXCLUDED.value""",
            self.tenant, [f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat])

    async def item_ids(self, after: str, limit: int) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT item_id FROM items WHERE tenant_id = $1 AND item_id COLLATE \"C\" > $2"
            " ORDER BY item_id COLLATE \"C\" LIMIT $3",
            self.tenant, after, limit)
        return [r["item_id"] for r in rows]
