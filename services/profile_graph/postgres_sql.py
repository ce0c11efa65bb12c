"""SQL text of the profile graph's batch statements, and conversions between its rows and domain values."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import asyncpg

from services.profile_graph.domain import (
    AffinityConfig,
    AttributeRecon,
    Condition,
    Config,
    InsightDef,
    ReconRule,
    SegmentDef,
    StoredEvent,
)

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
), ins AS (
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
    RETURNING message_id, individual_id, item_ids
), items AS (
    INSERT INTO event_items (tenant_id, item_id, message_id)
    SELECT $1, unnest(item_ids), message_id FROM ins
    ON CONFLICT DO NOTHING
)
SELECT message_id, individual_id FROM ins
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
# The advisory lock key of a tenant ($1): every writer of the tenant's profile data takes it before writing anything
# (shared by appends, exclusive for definition saves and erasures), and the membership feed's horizon reads who holds it.
TENANT_LOCK_KEY = "hashtextextended('profile_graph/' || $1, 0)"

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
