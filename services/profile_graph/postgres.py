"""The asyncpg adapter of the profile graph: every statement filters by tenant and batches use arrays (unnest)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import asyncpg

from services.profile_graph import domain
from services.profile_graph.domain import (
    Affinity, AffinityConfig, AttributeRecon, Condition, Config, ConsentState, InsightDef, Item, Member,
    MembershipChange, NewEvent, Profile, ProfileObjectRow, ReconRule, SegmentDef, StoredEvent, ValueStat,
)

# Every append notifies this channel with the tenant and the individuals it touched; live streams on any replica
# listen to it.
CHANNEL = "profile_graph_events"
NOTIFY_BYTES = 7_000
DEFAULT_HALF_LIFE_S = AffinityConfig().half_life.total_seconds()

# Line items, item ids and identity keys come as flat arrays, each element with the (1-based) index of its event;
# the database groups them back (one array parameter per column instead of thousands of small documents).
_INSERT_EVENTS = """
WITH l AS (
    SELECT e, array_agg(li ORDER BY n) AS ids, array_agg(lq ORDER BY n) AS qs, array_agg(lp ORDER BY n) AS ps
    FROM unnest($13::int4[], $14::text[], $15::float8[], $16::float8[]) WITH ORDINALITY AS x(e, li, lq, lp, n)
    GROUP BY e
), ii AS (
    SELECT e, array_agg(v ORDER BY n) AS ids FROM unnest($17::int4[], $18::text[]) WITH ORDINALITY AS x(e, v, n)
    GROUP BY e
), ik AS (
    SELECT e, array_agg(v ORDER BY n) AS keys FROM unnest($19::int4[], $20::text[]) WITH ORDINALITY AS x(e, v, n)
    GROUP BY e
)
INSERT INTO events (tenant_id, message_id, individual_id, type, event_time, revenue, quantity, item_id,
                    properties, payload, name, source, line_item_ids, line_quantities, line_prices, attributes,
                    consents, objects, item_ids, identity_keys)
SELECT $1, m, i, t, et, r, q, it, p, pl, nm, s, l.ids, l.qs, l.ps, a, c, o, COALESCE(ii.ids, '{}'),
       COALESCE(ik.keys, '{}')
FROM unnest($2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::float8[], $7::float8[], $8::text[],
            $9::jsonb[], $10::bytea[], $11::text[], $12::text[], $21::jsonb[], $22::jsonb[], $23::jsonb[])
    WITH ORDINALITY AS u(m, i, t, et, r, q, it, p, pl, nm, s, a, c, o, k)
LEFT JOIN l ON l.e = u.k LEFT JOIN ii ON ii.e = u.k LEFT JOIN ik ON ik.e = u.k
ORDER BY m
ON CONFLICT (tenant_id, message_id) DO NOTHING
RETURNING message_id, individual_id
"""

# Rows are locked in id order so that concurrent batches touching the same individuals cannot deadlock.
_TOUCH_INDIVIDUALS = """
INSERT INTO individuals (tenant_id, individual_id, update_time)
SELECT $1, i, $3 FROM unnest($2::text[]) AS u(i) ORDER BY i
ON CONFLICT (tenant_id, individual_id) DO UPDATE SET update_time = EXCLUDED.update_time
"""

_CONFIG = """
SELECT (SELECT json_agg(json_build_array(name, description, aggregate, field, event_type, window_us, conditions,
                                         dimension, subject) ORDER BY name)
        FROM insights WHERE tenant_id = $1)::text AS insights,
       (SELECT json_agg(json_build_array(name, description, rule) ORDER BY name)
        FROM segments WHERE tenant_id = $1)::text AS segments,
       (SELECT document FROM graph_config WHERE tenant_id = $1 AND kind = 'affinity')::text AS affinity,
       (SELECT document FROM graph_config WHERE tenant_id = $1 AND kind = 'reconciliation/individual')::text AS recon
"""

_ADD_STATS = """
INSERT INTO attribute_values (tenant_id, individual_id, key, source, value, count, last_at)
SELECT $1, i, k, s, v, c, t FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::timestamptz[])
    AS u(i, k, s, v, c, t)
ON CONFLICT (tenant_id, individual_id, key, source, value)
DO UPDATE SET count = attribute_values.count + EXCLUDED.count,
              last_at = GREATEST(attribute_values.last_at, EXCLUDED.last_at)
"""

_WRITE_ATTRIBUTES = """
WITH gone AS (
    DELETE FROM attributes a USING unnest($6::text[], $7::text[]) AS g(i, k)
    WHERE a.tenant_id = $1 AND a.individual_id = g.i AND a.key = g.k
)
INSERT INTO attributes (tenant_id, individual_id, key, value, updated_at)
SELECT $1, i, k, v, t FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::timestamptz[]) AS u(i, k, v, t)
ON CONFLICT (tenant_id, individual_id, key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
"""

_UPSERT_OBJECTS = """
INSERT INTO profile_objects (tenant_id, type, object_id, individual_id, attributes, updated_at, source)
SELECT $1, t, o, i, a, u, s FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::timestamptz[],
                                        $7::text[]) AS x(t, o, i, a, u, s)
ON CONFLICT (tenant_id, type, object_id) DO UPDATE SET individual_id = EXCLUDED.individual_id,
    attributes = EXCLUDED.attributes, updated_at = EXCLUDED.updated_at, source = EXCLUDED.source
WHERE profile_objects.updated_at <= EXCLUDED.updated_at
"""

_TRIM_OBJECTS = """
DELETE FROM profile_objects p USING (
    SELECT type, object_id, row_number() OVER (PARTITION BY individual_id, type
                                               ORDER BY updated_at DESC, object_id DESC) AS rank
    FROM profile_objects WHERE tenant_id = $1 AND individual_id = ANY($2::text[])
) r
WHERE p.tenant_id = $1 AND p.type = r.type AND p.object_id = r.object_id AND r.rank > $3
"""

_UPSERT_CONSENTS = """
INSERT INTO consents (tenant_id, individual_id, purpose, status, updated_at, source, from_api)
SELECT $1, i, p, s, t, src, $7 FROM unnest($2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::text[])
    AS u(i, p, s, t, src)
ON CONFLICT (tenant_id, individual_id, purpose) DO UPDATE SET status = EXCLUDED.status,
    updated_at = EXCLUDED.updated_at, source = EXCLUDED.source, from_api = EXCLUDED.from_api
WHERE consents.updated_at <= EXCLUDED.updated_at
"""

# Scores are kept valid at as_of; adding a contribution first decays the older side to the newer time.
_ADD_AFFINITIES = """
INSERT INTO affinities AS a (tenant_id, individual_id, dimension, value, score, as_of)
SELECT $1, i, d, v, s, t FROM unnest($2::text[], $3::text[], $4::text[], $5::float8[], $6::timestamptz[])
    AS u(i, d, v, s, t)
ON CONFLICT (tenant_id, individual_id, dimension, value) DO UPDATE SET
    score = CASE WHEN EXCLUDED.as_of >= a.as_of
                 THEN a.score * power(0.5, extract(epoch FROM EXCLUDED.as_of - a.as_of) / $7) + EXCLUDED.score
                 ELSE a.score + EXCLUDED.score * power(0.5, extract(epoch FROM a.as_of - EXCLUDED.as_of) / $7) END,
    as_of = GREATEST(a.as_of, EXCLUDED.as_of)
"""

_STORE_INSIGHTS = """
WITH new AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::float8[]) AS u(i, n, d, v)
), gone AS (
    DELETE FROM insight_values x WHERE x.tenant_id = $1 AND x.individual_id = ANY($6::text[])
      AND NOT EXISTS (SELECT 1 FROM new WHERE new.i = x.individual_id AND new.n = x.name AND new.d = x.dimension)
)
INSERT INTO insight_values (tenant_id, individual_id, name, dimension, value)
SELECT $1, i, n, d, v FROM new
ON CONFLICT (tenant_id, individual_id, name, dimension) DO UPDATE SET value = EXCLUDED.value
WHERE insight_values.value IS DISTINCT FROM EXCLUDED.value
"""

_WRITE_PARTIALS = """
WITH gone AS (
    DELETE FROM insight_partials p USING unnest($7::text[], $8::int8[]) AS g(n, b)
    WHERE p.tenant_id = $1 AND p.individual_id = ANY($9::text[]) AND p.name = g.n AND p.bucket < g.b
)
INSERT INTO insight_partials (tenant_id, individual_id, name, dimension, bucket, n, s, odd, m, last_us, last_id,
                              last_value, d)
SELECT $1, i, nm, dm, b, n, s, odd, m, lu, li, lv, ARRAY(SELECT jsonb_array_elements_text(d))
FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $10::text[], $11::float8[], $12::float8[],
            $13::int8[], $14::text[], $15::float8[], $16::jsonb[]) AS u(i, nm, dm, b, n, s, odd, m, lu, li, lv, d)
ON CONFLICT (tenant_id, individual_id, name, dimension, bucket) DO UPDATE SET n = EXCLUDED.n, s = EXCLUDED.s,
    odd = EXCLUDED.odd, m = EXCLUDED.m, last_us = EXCLUDED.last_us, last_id = EXCLUDED.last_id,
    last_value = EXCLUDED.last_value, d = EXCLUDED.d
"""

_HALF_LIFE = ("COALESCE((SELECT (document->>'half_life_s')::float8 FROM graph_config"
              " WHERE tenant_id = $1 AND kind = 'affinity'), " + repr(DEFAULT_HALF_LIFE_S) + ")")

# The decay factor of a score from as_of to a read time: an as_of in the future counts as now, and the exponent is
# capped so that very old scores read as (almost) zero instead of underflowing.
def _decay(now: str) -> str:
    return f"power(0.5, LEAST(GREATEST(extract(epoch FROM {now}::timestamptz - as_of), 0) / {_HALF_LIFE}, 1000))"


_DECAY3, _DECAY4 = _decay("$3"), _decay("$4")

# What segment rules read besides insights, per rule variable; memberships are always read (entries and exits).
_PROFILE_STATE_PARTS = {
    "segments": "SELECT individual_id, 'm' AS kind, segment AS key, NULL AS value FROM memberships"
                " WHERE tenant_id = $1 AND individual_id = ANY($2::text[])",
    "attributes": "SELECT individual_id, 'a', key, value::text FROM attributes"
                  " WHERE tenant_id = $1 AND individual_id = ANY($2::text[])",
    "consents": "SELECT individual_id, 'c', purpose, status::text FROM consents"
                " WHERE tenant_id = $1 AND individual_id = ANY($2::text[])",
    "affinities": f"SELECT individual_id, 'f', dimension || chr(31) || value, (score * {_DECAY3})::text"
                  " FROM affinities WHERE tenant_id = $1 AND individual_id = ANY($2::text[])",
}


def _profile_states_sql(parts: frozenset[str]) -> str:
    return "\nUNION ALL\n".join(q for name, q in _PROFILE_STATE_PARTS.items() if name == "segments" or name in parts)

# Entries and exits that really change a membership are written to the history in the same statement.
_CHANGE_MEMBERSHIPS = """
WITH entered AS (
    INSERT INTO memberships (tenant_id, segment, individual_id, enter_time)
    SELECT $1, s, i, $6 FROM unnest($2::text[], $3::text[]) AS u(i, s)
    ON CONFLICT (tenant_id, segment, individual_id) DO NOTHING
    RETURNING segment, individual_id
), exited AS (
    DELETE FROM memberships m USING unnest($4::text[], $5::text[]) AS u(i, s)
    WHERE m.tenant_id = $1 AND m.individual_id = u.i AND m.segment = u.s
    RETURNING m.segment, m.individual_id
)
INSERT INTO membership_history (tenant_id, segment, individual_id, change, change_time)
SELECT $1, segment, individual_id, 'entered', $6 FROM entered
UNION ALL
SELECT $1, segment, individual_id, 'exited', $6 FROM exited
"""

_EVENT_COLUMNS = ("individual_id, message_id, type, event_time, revenue, quantity, item_id, name, source, "
                  "{properties} AS properties, {lines}")


def _window_us(window: timedelta | None) -> int:
    if not window:
        return 0
    return (window.days * 86_400 + window.seconds) * 1_000_000 + window.microseconds


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)


def _insight(row: list) -> InsightDef:
    name, description, aggregate, field, event_type, window_us, conditions, dimension, subject = row
    return InsightDef(name, description, aggregate, field, event_type,
                      timedelta(microseconds=window_us) if window_us else None,
                      tuple(Condition(f, op, v) for f, op, v in conditions), dimension, subject)


def affinity_document(c: AffinityConfig) -> str:
    return json.dumps({"dimensions": list(c.dimensions), "weights": [list(w) for w in c.weights],
                       "half_life_s": c.half_life.total_seconds()})


def _affinity(doc: str | None) -> AffinityConfig:
    if not doc:
        return AffinityConfig()
    d = json.loads(doc)
    return AffinityConfig(tuple(d["dimensions"]), tuple((int(t), float(w)) for t, w in d["weights"]),
                          timedelta(seconds=d["half_life_s"]))


def _recon_part(a: AttributeRecon) -> dict:
    return {"policy": a.policy, "sources": list(a.sources), "include_empty": a.include_empty}


def recon_document(r: ReconRule) -> str:
    return json.dumps({"object": r.object, "default": _recon_part(r.default),
                       "overrides": {k: _recon_part(a) for k, a in r.overrides}})


def _recon(doc: str | None) -> ReconRule:
    if not doc:
        return ReconRule()
    d = json.loads(doc)

    def part(p: dict) -> AttributeRecon:
        return AttributeRecon(p["policy"], tuple(p["sources"]), p["include_empty"])

    default = part(d["default"])
    overrides = []
    for key, p in sorted(d["overrides"].items()):
        a = part(p)
        if not a.policy:  # an override without a policy keeps the default's
            a = AttributeRecon(default.policy, a.sources or default.sources, a.include_empty)
        overrides.append((key, a))
    return ReconRule(d["object"], default, tuple(overrides))


def _config(row: asyncpg.Record) -> Config:
    return Config(
        insights=[_insight(r) for r in json.loads(row["insights"] or "[]")],
        segments=[SegmentDef(n, d, r) for n, d, r in json.loads(row["segments"] or "[]")],
        affinity=_affinity(row["affinity"]),
        recon=_recon(row["recon"]),
    )


_LINE_COLUMNS = "line_item_ids, line_quantities, line_prices"
_NO_LINES = "NULL::text[] AS line_item_ids, NULL::float8[] AS line_quantities, NULL::float8[] AS line_prices"


def _lines(r: asyncpg.Record) -> tuple:
    ids = r["line_item_ids"]
    return tuple(zip(ids, r["line_quantities"], r["line_prices"])) if ids else ()


def _stored_event(r: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        r["individual_id"], r["type"], r["event_time"], r["revenue"], r["quantity"],
        json.loads(r["properties"]) if r["properties"] else None, r["message_id"], r["name"], r["source"],
        r["item_id"], _lines(r))


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
    """One transaction on one tenant, on one pooled connection."""

    def __init__(self, conn: asyncpg.Connection, tenant: str):
        self.conn = conn
        self.tenant = tenant

    async def lock_definitions(self, exclusive: bool, large: bool = True) -> None:
        # Appends share the lock; saving a definition takes it alone so its full recompute sees no stale writer.
        # The batch statements take arrays whose size the generic plan of a prepared statement cannot know: after
        # five runs PostgreSQL would switch to it (e.g. nested loops over 1,000-row unnests, 10-20x slower), so
        # large write transactions plan with the real parameters (set in the same round trip as the lock); small
        # ones keep the generic plans, which fit them and save planning every statement.
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        mode = "force_custom_plan" if large else "auto"
        await self.conn.execute(
            f"SELECT set_config('plan_cache_mode', '{mode}', true), {fn}(hashtextextended('profile_graph/' || $1, 0))",
            self.tenant)

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
        individuals = sorted({r["individual_id"] for r in rows})
        if individuals:
            await self.conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS u(p)", CHANNEL,
                                    _notify_payloads(self.tenant, individuals))
        return {r["message_id"] for r in rows}

    async def touch_individuals(self, ids: Sequence[str], now: datetime) -> None:
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
        put = [(k, v) for k, v in values.items() if v[0] is not None]
        gone = [k for k, v in values.items() if v[0] is None]
        await self.conn.execute(
            _WRITE_ATTRIBUTES, self.tenant, [k[0] for k, _ in put], [k[1] for k, _ in put],
            [v[0] for _, v in put], [v[1] for _, v in put], [k[0] for k in gone], [k[1] for k in gone])

    async def upsert_objects(self, rows: Sequence[tuple], keep: int) -> None:
        await self.conn.execute(
            _UPSERT_OBJECTS, self.tenant, [r[1] for r in rows], [r[2] for r in rows], [r[0] for r in rows],
            [json.dumps(r[3]) for r in rows], [r[4] for r in rows], [r[5] for r in rows])
        await self.conn.execute(_TRIM_OBJECTS, self.tenant, sorted({r[0] for r in rows}), keep)

    async def upsert_consents(self, rows: Sequence[tuple], from_api: bool) -> None:
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

    async def read_partials(self, ids: Sequence[str]) -> tuple[dict[tuple[str, str, str, int], domain.Partial],
                                                               dict[tuple[str, str, str], float]]:
        # Partials and current values in one round trip (bucket NULL marks a value row, its value in m).
        rows = await self.conn.fetch(
            "SELECT individual_id, name, dimension, bucket, n, s, odd, m, last_us, last_id, last_value, d"
            " FROM insight_partials WHERE tenant_id = $1 AND individual_id = ANY($2::text[])"
            " UNION ALL SELECT individual_id, name, dimension, NULL, 0, NULL, NULL, value, NULL, NULL, NULL, NULL"
            " FROM insight_values WHERE tenant_id = $1 AND individual_id = ANY($2::text[])", self.tenant, list(ids))
        partials, values = {}, {}
        from_row = domain.Partial.from_row
        for r in rows:
            individual, name, dim, bucket = r[0], r[1], r[2], r[3]
            if bucket is None:
                values[(individual, name, dim)] = r[7]
            else:
                partials[(individual, name, dim, bucket)] = from_row(r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11])
        return partials, values

    async def change_insight_values(self, put: Sequence[tuple[str, str, str, float]],
                                    gone: Sequence[tuple[str, str, str]]) -> None:
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

    async def write_partials(self, ids: Sequence[str], partials: dict[tuple[str, str, str, int], domain.Partial],
                             keep_from: dict[str, int] | None) -> None:
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
        await self.conn.execute(
            _CHANGE_MEMBERSHIPS, self.tenant,
            [i for i, _ in entered], [s for _, s in entered], [i for i, _ in exited], [s for _, s in exited], now)

    async def move_events(self, from_ids: Sequence[str], to_id: str, identity_keys: Sequence[str] | None) -> int:
        keys = list(identity_keys) if identity_keys is not None else None
        return _affected(await self.conn.execute(
            "UPDATE events SET individual_id = $3 WHERE tenant_id = $1 AND individual_id = ANY($2::text[])"
            " AND ($4::text[] IS NULL OR identity_keys && $4::text[])", self.tenant, list(from_ids), to_id, keys))

    async def move_api_consents(self, from_ids: Sequence[str], to_id: str) -> None:
        await self.conn.execute(
            """INSERT INTO consents (tenant_id, individual_id, purpose, status, updated_at, source, from_api)
               SELECT DISTINCT ON (purpose) $1, $3, purpose, status, updated_at, source, true FROM consents
               WHERE tenant_id = $1 AND individual_id = ANY($2::text[]) AND from_api
               ORDER BY purpose, updated_at DESC
               ON CONFLICT (tenant_id, individual_id, purpose) DO UPDATE SET status = EXCLUDED.status,
                   updated_at = EXCLUDED.updated_at, source = EXCLUDED.source, from_api = true
               WHERE consents.updated_at <= EXCLUDED.updated_at""", self.tenant, list(from_ids), to_id)

    async def drop_individuals(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        for table in ("attribute_values", "attributes", "insight_values", "insight_partials", "profile_objects",
                      "consents", "affinities", "individuals"):
            await self.conn.execute(
                f"DELETE FROM {table} WHERE tenant_id = $1 AND individual_id = ANY($2::text[])", self.tenant, list(ids))
        rows = await self.conn.fetch(
            "SELECT individual_id, segment FROM memberships WHERE tenant_id = $1 AND individual_id = ANY($2::text[])",
            self.tenant, list(ids))
        return [(r["individual_id"], r["segment"]) for r in rows]

    async def clear_derived(self, ids: Sequence[str]) -> None:
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
        await self.conn.execute(
            """INSERT INTO segments (tenant_id, name, description, rule) VALUES ($1, $2, $3, $4)
               ON CONFLICT (tenant_id, name) DO UPDATE SET description = EXCLUDED.description,
                   rule = EXCLUDED.rule, update_time = now()""",
            self.tenant, s.name, s.description, s.rule)

    async def _save_document(self, kind: str, document: str) -> None:
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
            f"SELECT {columns} FROM events WHERE tenant_id = $1 AND item_ids && $2::text[]"
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


def _notify_payloads(tenant: str, individuals: list[str]) -> list[str]:
    """NOTIFY payloads (each under the 8,000-byte limit) naming the tenant and the individuals a batch touched."""
    out, chunk, size = [], [], 0
    for i in individuals:
        if chunk and size + len(i) + 4 > NOTIFY_BYTES - len(tenant):
            out.append(json.dumps({"t": tenant, "i": chunk}))
            chunk, size = [], 0
        chunk.append(i)
        size += len(i) + 4
    out.append(json.dumps({"t": tenant, "i": chunk}))
    return out


class EventFeed:
    """One LISTEN connection per process; wakes the live streams of the individuals each notification names."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.conn: asyncpg.Connection | None = None
        self.waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._lock = asyncio.Lock()

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        data = json.loads(payload)
        for individual in data["i"]:
            for wake in self.waiters.get((data["t"], individual), ()):
                wake.set()

    async def _listen(self) -> None:
        async with self._lock:
            if self.conn is None or self.conn.is_closed():
                self.conn = await self.pool.acquire()
                await self.conn.add_listener(CHANNEL, self._on_notify)

    @asynccontextmanager
    async def watch(self, tenant: str, individual_id: str) -> AsyncIterator[asyncio.Event]:
        await self._listen()
        wake = asyncio.Event()
        key = (tenant, individual_id)
        self.waiters.setdefault(key, set()).add(wake)
        try:
            yield wake
        finally:
            self.waiters[key].discard(wake)
            if not self.waiters[key]:
                del self.waiters[key]

    async def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.remove_listener(CHANNEL, self._on_notify)
            await self.pool.release(self.conn)
        self.conn = None


class PostgresStore:
    """The profile graph's tables in its own schema, reached through one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.feed = EventFeed(pool)
        self._profile_sql: dict[tuple[frozenset[str], bool], str] = {}

    @asynccontextmanager
    async def unit(self, tenant: str) -> AsyncIterator[PostgresUnit]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield PostgresUnit(conn, tenant)

    def watch(self, tenant: str, individual_id: str):
        return self.feed.watch(tenant, individual_id)

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

    async def list_changes(self, tenant: str, segment: str, after: int, limit: int) -> list[MembershipChange]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, segment, individual_id, change, change_time FROM membership_history"
                " WHERE tenant_id = $1 AND id > $2 AND ($3 = '' OR segment = $3) ORDER BY id LIMIT $4",
                tenant, after, segment, limit)
        return [MembershipChange(r["id"], r["segment"], r["individual_id"], r["change"] == "entered",
                                 r["change_time"]) for r in rows]

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
                left, right = f"(i.attributes ->> {key})::float8", f"{arg(float(c.value))}::float8"
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
