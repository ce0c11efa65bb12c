"""asyncpg adapter of the identity repository: one transaction per resolve, advisory locks per identity and block."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import orjson

from services.identity.matching import BUILT_IN_TYPES, IdentityType, Record, Ruleset
from services.identity.model import Key, MergeRecord, StoredSource
from services.identity.ports import (
    EarlyRecords,
    IndividualView,
    MergeEventView,
    Planner,
    QueryRest,
    SnapshotQuery,
)
from services.identity.probabilistic import MatchModel
from services.identity.rerun import RerunPlan, TenantData
from services.identity.resolution import NewRecord, Owner, Plan, Snapshot, StoredRecord
from services.identity.unmerge import HistoryEvent, UnmergeData, UnmergePlan
from shared.errors import FailedPrecondition, Unavailable, quote
from shared.log import get_logger

log = get_logger("identity.postgres")
A = TypeVar("A")

# Decoded source records kept per process: a record's content never changes (its id is a hash of it), and a
# batch meets thousands of candidates that earlier batches stored or decoded. Oldest out first beyond this many.
RECORD_CACHE = 50_000

# A resolve whose snapshot went stale (a concurrent merge), or that lost a deadlock, is retried this many times.
MAX_ATTEMPTS = 8

# Every lookup below goes key by key through a primary key: each LATERAL subquery reads one table by its whole key
# and has a LIMIT, so it is never flattened into a join and its plan cannot depend on statistics. As joins, plans
# made while the tables were small (and cached by the connection) went on reading all of the tenant's individuals
# or records per call: over 100 ms for 500 subjects at 5,000 individuals, growing with the tenant.
_INDIVIDUAL = """
CROSS JOIN LATERAL (
    SELECT n.individual_id, n.created_at, n.record_count FROM individuals AS n
    WHERE n.tenant_id = $1 AND n.individual_id = {of}.individual_id LIMIT 1
) AS {alias}"""

# The survivor owning a key ({key}.t, {key}.v), as {key}i.individual_id: an identity row names its current survivor
# (merges move them).
_SURVIVOR_OF = """
CROSS JOIN LATERAL (
    SELECT i.individual_id FROM identities AS i
    WHERE i.tenant_id = $1 AND i.id_type = {key}.t AND i.id_value = {key}.v LIMIT 1
) AS {key}i"""

_OWNER_OF = _SURVIVOR_OF + _INDIVIDUAL.format(of="{key}i", alias="{alias}")

# The survivor owning each key, by the key's position (1-based) in the arrays: neither the texts nor the
# individual's row are read back.
_SURVIVORS = f"""
SELECT k.n, ki.individual_id
FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(t, v, n){_SURVIVOR_OF.format(key="k")}
"""

_CREATED = f"""
SELECT o.individual_id, o.created_at
FROM unnest($2::text[]) AS q(individual_id){_INDIVIDUAL.format(of="q", alias="o")}
"""

# Owners of unique keys ('o'), holders of searchable keys ('s'), known records ('r') and records of the batch that
# a stored record of their first unique identity's owner contains ('c'), in one statement.
_SNAPSHOT = f"""
SELECT 'o' AS kind, k.t AS a, k.v AS b, o.individual_id, o.created_at, o.record_count
FROM unnest($2::text[], $3::text[]) AS k(t, v){_OWNER_OF.format(key="k", alias="o")}
UNION ALL
SELECT DISTINCT 's', k.t, k.v, h.individual_id, NULL::timestamptz, NULL::bigint
FROM unnest($4::text[], $5::text[]) AS k(t, v)
CROSS JOIN LATERAL (
    SELECT s.record_id FROM shared_identities AS s
    WHERE s.tenant_id = $1 AND s.id_type = k.t AND s.id_value = k.v OFFSET 0
) AS s
CROSS JOIN LATERAL (
    SELECT r.individual_id FROM source_records AS r WHERE r.tenant_id = $1 AND r.record_id = s.record_id LIMIT 1
) AS h
UNION ALL
SELECT 'r', q.id, NULL, o.individual_id, o.created_at, o.record_count
FROM unnest($6::text[]) AS q(id)
CROSS JOIN LATERAL (
    SELECT r.individual_id FROM source_records AS r WHERE r.tenant_id = $1 AND r.record_id = q.id LIMIT 1
) AS r{_INDIVIDUAL.format(of="r", alias="o")}
UNION ALL
SELECT 'c', q.id, NULL, o.individual_id, NULL, NULL
FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) AS q(id, t, v, ids, attrs)
CROSS JOIN LATERAL (
    SELECT i.individual_id FROM identities AS i
    WHERE i.tenant_id = $1 AND i.id_type = q.t AND i.id_value = q.v LIMIT 1
) AS o
CROSS JOIN LATERAL (
    -- the contents as jsonb only for subjects whose identity has an owner (new subjects need no parsing)
    SELECT q.ids::jsonb AS ids, q.attrs::jsonb AS attrs OFFSET 0
) AS j
CROSS JOIN LATERAL (
    SELECT 1 FROM source_records AS r
    WHERE r.tenant_id = $1 AND r.individual_id = o.individual_id AND r.identities @> j.ids
      AND r.attributes @> j.attrs
    LIMIT 1
) AS c
"""

# Records sharing a block key with the batch (at most $3 per key), with their survivors; by key, as above. Their
# content is read apart (_CONTENTS), only for records this process has not decoded yet.
# The records under the batch's block keys and their current owners (each record's keys among the batch's); the
# owners' creation times and counts come from their row locks (_LOCK_OWNERS), read once per individual.
_CANDIDATES = """
SELECT h.record_id, r.individual_id, h.keys
FROM (
    SELECT rb.record_id, array_agg(b.k) AS keys
    FROM unnest($2::text[]) AS b(k)
    CROSS JOIN LATERAL (
        SELECT record_id FROM record_blocks WHERE tenant_id = $1 AND block_key = b.k LIMIT $3
    ) AS rb
    GROUP BY rb.record_id
) AS h
CROSS JOIN LATERAL (
    SELECT r.individual_id FROM source_records AS r WHERE r.tenant_id = $1 AND r.record_id = h.record_id LIMIT 1
) AS r
"""

_CONTENTS = """
SELECT q.id, r.identities, r.attributes
FROM unnest($2::text[]) AS q(id)
CROSS JOIN LATERAL (
    SELECT r.identities, r.attributes FROM source_records AS r WHERE r.tenant_id = $1 AND r.record_id = q.id LIMIT 1
) AS r
"""

# The first key is the tenant's lock, taken shared (a re-run or unmerge takes it exclusively); the others are the
# batch's identities and block keys, sorted by the caller, and unnest yields them in order, so every transaction
# takes its locks in the same global order. The clock is read afterwards.
_LOCK = """
SELECT clock_timestamp() FROM (
    SELECT count(CASE WHEN n = 1 THEN pg_advisory_xact_lock_shared(k) ELSE pg_advisory_xact_lock(k) END)
    FROM unnest($1::bigint[]) WITH ORDINALITY AS u(k, n)
) AS locked
"""

# The later parts' lock keys, each taken if no other call holds it: true when all were.
_TRY_LOCK = "SELECT bool_and(pg_try_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS u(k)"

# Row locks on the involved survivors, in id order, with their creation times and counts as they are now, and the
# survivors each was split from by an unmerge (by key, as above: the survivor and its aliases, their separations;
# looked for only when the tenant has any, once per statement).
_LOCK_OWNERS = """
SELECT n.individual_id, n.merged_into, n.created_at, n.record_count,
    CASE WHEN NOT (SELECT EXISTS (SELECT 1 FROM separations AS x WHERE x.tenant_id = $1)) THEN '{}'::text[] ELSE
    ARRAY(SELECT coalesce(o.merged_into, o.individual_id)
          FROM (SELECT n.individual_id AS id
                UNION ALL
                SELECT a.individual_id FROM individuals AS a WHERE a.tenant_id = $1 AND a.merged_into = n.individual_id
          ) AS m
          CROSS JOIN LATERAL (
              SELECT s.other_id FROM separations AS s WHERE s.tenant_id = $1 AND s.individual_id = m.id OFFSET 0
          ) AS s
          CROSS JOIN LATERAL (
              SELECT o.individual_id, o.merged_into FROM individuals AS o
              WHERE o.tenant_id = $1 AND o.individual_id = s.other_id LIMIT 1
          ) AS o
    ) END AS separated
FROM individuals AS n
WHERE n.tenant_id = $1 AND n.individual_id = ANY($2::text[])
ORDER BY n.individual_id
FOR NO KEY UPDATE OF n
"""

# The same for the individuals of the later parts' candidates, locked after the others: not in one global order with
# them, so a row another call holds is not waited for (it could be waiting for one of ours); the call starts over.
_LOCK_MORE_OWNERS = _LOCK_OWNERS.replace("FOR NO KEY UPDATE OF n", "FOR NO KEY UPDATE OF n NOWAIT")

# All the writes of one plan in one round trip. Each UPDATE names its keys with = ANY too, so that plans find the
# rows through an index rather than among all of the tenant's, and is skipped outright (a one-time filter on the
# array's cardinality) when it has nothing to do: calls without merges never run the merge updates, whatever plan
# a connection cached while the tables were small and had no statistics.
_APPLY = """
WITH new_individuals AS (
    INSERT INTO individuals (tenant_id, individual_id, created_at, merged_into, record_count)
    SELECT $1, u.id, $2, u.merged_into, u.c FROM unnest($3::text[], $4::text[], $5::bigint[]) AS u(id, merged_into, c)
), redirected AS (
    -- its records and count move to the survivor (as a re-run leaves a merged individual)
    UPDATE individuals AS n SET merged_into = r.survivor, record_count = 0
    FROM unnest($6::text[], $7::text[]) AS r(merged, survivor)
    WHERE n.tenant_id = $1 AND n.individual_id = r.merged AND n.individual_id = ANY($6::text[])
      AND cardinality($6::text[]) > 0
), redirected_aliases AS (
    -- no row is in both: a merged individual was a survivor (checked under its row lock)
    UPDATE individuals AS n SET merged_into = r.survivor
    FROM unnest($6::text[], $7::text[]) AS r(merged, survivor)
    WHERE n.tenant_id = $1 AND n.merged_into = r.merged AND n.merged_into = ANY($6::text[])
      AND cardinality($6::text[]) > 0
), moved AS (
    UPDATE identities AS i SET individual_id = r.survivor
    FROM unnest($6::text[], $7::text[]) AS r(merged, survivor)
    WHERE i.tenant_id = $1 AND i.individual_id = r.merged AND i.individual_id = ANY($6::text[])
      AND cardinality($6::text[]) > 0
), moved_records AS (
    UPDATE source_records AS s SET individual_id = r.survivor
    FROM unnest($6::text[], $7::text[]) AS r(merged, survivor)
    WHERE s.tenant_id = $1 AND s.individual_id = r.merged AND s.individual_id = ANY($6::text[])
      AND cardinality($6::text[]) > 0
), new_identities AS (
    INSERT INTO identities (tenant_id, id_type, id_value, individual_id, first_seen_at, origin_individual_id)
    SELECT $1, u.t, u.v, u.owner, $2, u.origin
    FROM unnest($8::text[], $9::text[], $10::text[], $29::text[]) AS u(t, v, owner, origin)
), new_records AS (
    INSERT INTO source_records (tenant_id, record_id, individual_id, origin_individual_id, identities, attributes,
                                created_at)
    SELECT $1, u.id, u.owner, u.origin, u.i::jsonb, u.a::jsonb, $2
    FROM unnest($17::text[], $18::text[], $30::text[], $19::text[], $20::text[]) AS u(id, owner, origin, i, a)
    ON CONFLICT DO NOTHING
), new_blocks AS (
    -- no ON CONFLICT (it doubles the cost of these rows): the records are new under the locks of their keys, and
    -- a record's rows leave the index only with the record
    INSERT INTO record_blocks (tenant_id, block_key, record_id)
    SELECT $1, u.k, u.r FROM unnest($21::text[], $22::text[]) AS u(k, r)
), new_shared AS (
    INSERT INTO shared_identities (tenant_id, id_type, id_value, record_id)
    SELECT $1, u.t, u.v, u.r FROM unnest($23::text[], $24::text[], $25::text[]) AS u(t, v, r)
    ON CONFLICT DO NOTHING
), counted AS (
    UPDATE individuals AS n SET record_count = u.c
    FROM unnest($26::text[], $27::bigint[]) AS u(id, c)
    WHERE n.tenant_id = $1 AND n.individual_id = u.id AND n.individual_id = ANY($26::text[])
      AND cardinality($26::text[]) > 0
)
INSERT INTO merge_events (tenant_id, survivor_id, merged_id, rule, evidence, merged_at, kind, reason, model_version)
SELECT $1, u.s, u.m, u.r, u.e::jsonb, $2, u.k, u.why, u.mv
FROM unnest($11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $28::bigint[])
    AS u(s, m, r, e, k, why, mv)
"""

# The block and searchable-identity rows of records every plan stores, sent before planning so that PostgreSQL
# writes them while this process plans (the rest of the write follows in _APPLY, in the same transaction).
_EARLY = """
WITH new_shared AS (
    INSERT INTO shared_identities (tenant_id, id_type, id_value, record_id)
    SELECT $1, u.t, u.v, u.r FROM unnest($4::text[], $5::text[], $6::text[]) AS u(t, v, r)
    ON CONFLICT DO NOTHING
)
INSERT INTO record_blocks (tenant_id, block_key, record_id)
SELECT $1, u.k, u.r FROM unnest($2::text[], $3::text[]) AS u(k, r)
"""

# Below this many rows the early write would cost a round trip more than it hides.
EARLY_ROWS = 256

_GET = """
WITH target AS (
    SELECT coalesce(merged_into, individual_id) AS id FROM individuals WHERE tenant_id = $1 AND individual_id = $2
)
SELECT s.individual_id, s.created_at, s.record_count,
    ARRAY(SELECT a.individual_id FROM individuals AS a
          WHERE a.tenant_id = $1 AND a.merged_into = s.individual_id ORDER BY a.individual_id) AS alias_ids,
    ARRAY(SELECT ARRAY[x.t, x.v] FROM (
              SELECT i.id_type AS t, i.id_value AS v, i.first_seen_at AS f FROM identities AS i
              WHERE i.tenant_id = $1 AND i.individual_id = s.individual_id
              UNION ALL
              SELECT h.id_type, h.id_value, r.created_at FROM source_records AS r
              JOIN shared_identities AS h ON h.tenant_id = $1 AND h.record_id = r.record_id
              WHERE r.tenant_id = $1 AND r.individual_id = s.individual_id
          ) AS x GROUP BY x.t, x.v ORDER BY min(x.f), x.t, x.v) AS identities
FROM target AS t
JOIN individuals AS s ON s.tenant_id = $1 AND s.individual_id = t.id
"""


def lock_key(tenant: str, key: str) -> int:
    """A stable signed 64-bit advisory lock key for one identity or block key of one tenant (lock_keys of one)."""
    return lock_keys(tenant, [key])[0]


def lock_keys(tenant: str, keys: Iterable[str]) -> list[int]:
    """The lock key of each key (blake2b of tenant, unit separator, key), sorted and each once; a batch locks
    thousands, so the tenant's prefix is hashed once."""
    prefix = hashlib.blake2b(f"{tenant}\x1f".encode(), digest_size=8)
    out = set()
    for key in keys:
        digest = prefix.copy()
        digest.update(key.encode())
        out.add(int.from_bytes(digest.digest(), "big", signed=True))
    return sorted(out)


def tenant_lock(tenant: str) -> int:
    """The tenant-wide lock: shared by resolves, exclusive for re-runs and unmerges."""
    return lock_key(tenant, "\x00tenant")


class _Stale(Exception):
    """An owner read before its row lock was merged away meanwhile (or a later owner's row was held by another
    call): the call starts over."""


def _record(identities: Any, attributes: Any) -> Record:
    # orjson: the candidates of a batch are decoded by the thousand, and it builds the same dicts and lists.
    ids = orjson.loads(identities) if isinstance(identities, str) else identities
    attrs = orjson.loads(attributes) if isinstance(attributes, str) else attributes
    return Record(ids, attrs)


def _owner(row) -> Owner:
    return Owner(row["individual_id"], row["created_at"], row["record_count"])


class PostgresRepository:
    """Identity types, rulesets, source records, individuals and merge history in the service's schema."""

    def __init__(self, pool: asyncpg.Pool, *, max_block: int = 200):
        self.pool = pool
        self.max_block = max_block
        # Oldest first out: an OrderedDict pops its first entry at once, where a dict's next(iter()) walks past the
        # slots of every entry deleted since it last resized (13 ms a batch of 1,000 once the cache was full).
        self._records: collections.OrderedDict[tuple[str, str], Record] = collections.OrderedDict()

    def _remember(self, key: tuple[str, str], record: Record) -> Record:
        if len(self._records) >= RECORD_CACHE:
            self._records.popitem(last=False)
        self._records[key] = record
        return record

    async def lookup_survivors(self, tenant: str, keys: list[Key]) -> dict[Key, str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_SURVIVORS, tenant, [k[0] for k in keys], [k[1] for k in keys])
        return {keys[n - 1]: individual_id for n, individual_id in rows}

    async def created_at(self, tenant: str, individual_ids: list[str]) -> dict[str, datetime]:
        async with self.pool.acquire() as conn:
            return dict(await conn.fetch(_CREATED, tenant, individual_ids))

    async def lookup(self, tenant: str, query: SnapshotQuery) -> Snapshot:
        async with self.pool.acquire() as conn:
            return await _snapshot(conn, tenant, query)

    async def resolve(self, tenant: str, query: SnapshotQuery, planner: Planner, early: EarlyRecords | None = None
                      ) -> Plan:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.pool.acquire() as conn, contextlib.AsyncExitStack() as stack, conn.transaction():
                    # The candidates are read beside the snapshot on a second connection when one is idle now (it is
                    # taken before the locks, so a resolve never waits for a connection while holding them). The
                    # locks are held while both run: under READ COMMITTED both see what one connection would.
                    spare = None
                    if (query.blocks or query.rest is not None) and self.pool.get_idle_size() > 0:
                        spare = await stack.enter_async_context(self.pool.acquire())
                    # The later parts' share is made while the first part's reads run, when they run beside each
                    # other; their candidates are then read while the first part is planned. A call that had to
                    # start over takes every lock at once, in order, and reads all its candidates at once.
                    q = query if spare is not None and attempt == 1 else query.whole()
                    now = await conn.fetchval(_LOCK, [tenant_lock(tenant), *lock_keys(tenant, q.lock_keys)])
                    found: list[tuple[str, str, Record, list[str]]] = []
                    later: asyncio.Future | None = None  # the later parts' candidates, read while the first is planned
                    if spare is not None:
                        snap, found, rest = await _first_reads(
                            _locked_snapshot(conn, tenant, q), self._candidates(spare, tenant, q.blocks),
                            q.rest, functools.partial(_take_rest, conn, tenant))
                        if rest is not None and rest.blocks:
                            later = asyncio.ensure_future(self._candidates(spare, tenant, rest.blocks))
                            stack.push_async_callback(_settle, later)  # (before the spare goes back)
                        else:
                            await stack.aclose()  # the spare goes back at once
                    else:
                        snap = await _locked_snapshot(conn, tenant, q)
                        if q.blocks:
                            found = await self._candidates(conn, tenant, q.blocks)
                    locked: set[str] = set()
                    await _lock_owners(conn, tenant, snap, found, locked)
                    first = early(snap) if early is not None else []
                    if sum(len(r.blocks) + len(r.shared) for r in first) < EARLY_ROWS:
                        first = []
                    written = {r.record_id for r in first}
                    plan, stored = await _write_parts(
                        conn, tenant, now, planner(snap, now), _write_early(conn, tenant, first) if first else None,
                        written, None if later is None else functools.partial(
                            _take_later, conn, tenant, snap, later, locked, stack))
                    if not written <= {r.record_id for r in stored}:
                        raise RuntimeError("the plan left out records written before it")  # (rolled back)
                    for new in stored:  # the candidates of later batches
                        self._remember((tenant, new.record_id), new.record)
                    return plan
            except (_Stale, asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as error:
                log.info("identity_resolve_retry", attempt=attempt, cause=type(error).__name__)
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        raise Unavailable(
            "identity resolution kept conflicting with concurrent merges; retry", reason="RESOLVE_CONFLICT"
        )

    async def _candidates(self, conn: asyncpg.Connection, tenant: str, blocks: list[str]
                          ) -> list[tuple[str, str, Record, list[str]]]:
        """(record id, owner id, record, keys) of the stored records sharing a block key, their contents from the
        process's cache or else read (no keys: no read)."""
        if not blocks:
            return []
        # Columns by position: record_id, individual_id, keys (thousands of rows a batch).
        rows = await conn.fetch(_CANDIDATES, tenant, blocks, self.max_block)
        cache = self._records
        found = {r[0]: cache.get((tenant, r[0])) for r in rows}
        missing = [record_id for record_id, record in found.items() if record is None]
        if missing:
            for r in await conn.fetch(_CONTENTS, tenant, missing):
                found[r[0]] = self._remember((tenant, r[0]), _record(r[1], r[2]))
        # A record gone since the first read (erased) is not a candidate.
        return [(r[0], r[1], record, r[2]) for r in rows if (record := found[r[0]]) is not None]

    async def get_individual(self, tenant: str, individual_id: str) -> IndividualView | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_GET, tenant, individual_id)
        if row is None:
            return None
        return IndividualView(
            individual_id=row["individual_id"],
            identities=[(t, v) for t, v in row["identities"]],
            alias_ids=list(row["alias_ids"]),
            created_at=row["created_at"],
            record_count=row["record_count"],
        )

    async def load_config(self, tenant: str) -> tuple[list[IdentityType], Ruleset | None]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT 't' AS kind, name, is_unique, normalization, default_region, NULL::int AS version,"
                " NULL::jsonb AS body, NULL::timestamptz AS created_at FROM identity_types WHERE tenant_id = $1"
                " UNION ALL (SELECT 'r', NULL, NULL, NULL, NULL, version, body, created_at FROM rulesets"
                " WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1)",
                tenant,
            )
        types = [IdentityType(r["name"], r["is_unique"], r["normalization"], r["default_region"],
                              r["name"] in BUILT_IN_TYPES) for r in rows if r["kind"] == "t"]
        rulesets = [Ruleset.from_json(r["version"], r["body"], r["created_at"]) for r in rows if r["kind"] == "r"]
        return types, (rulesets[0] if rulesets else None)

    async def upsert_type(self, tenant: str, kind: IdentityType) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(tenant, "\x00types"))
            current = await conn.fetchval(
                "SELECT is_unique FROM identity_types WHERE tenant_id = $1 AND name = $2", tenant, kind.name)
            if current is None and kind.name in BUILT_IN_TYPES:
                current = BUILT_IN_TYPES[kind.name].unique
            if current is not None and current != kind.unique:
                in_use = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM identities WHERE tenant_id = $1 AND id_type = $2)"
                    " OR EXISTS (SELECT 1 FROM shared_identities WHERE tenant_id = $1 AND id_type = $2)",
                    tenant, kind.name)
                if in_use:
                    raise FailedPrecondition(
                        f"identities of type {quote(kind.name)} exist; its uniqueness cannot change",
                        reason="IDENTITY_TYPE_IN_USE", metadata={"identity_type": kind.name})
            await conn.execute(
                "INSERT INTO identity_types (tenant_id, name, is_unique, normalization, default_region)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, name) DO UPDATE SET is_unique = $3,"
                " normalization = $4, default_region = $5",
                tenant, kind.name, kind.unique, kind.normalization, kind.default_region)

    async def create_ruleset(self, tenant: str, ruleset: Ruleset) -> Ruleset:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(tenant, "\x00rulesets"))
            row = await conn.fetchrow(
                "INSERT INTO rulesets (tenant_id, version, body, created_at)"
                " SELECT $1, coalesce(max(version), 0) + 1, $2::jsonb, now() FROM rulesets WHERE tenant_id = $1"
                " RETURNING version, created_at",
                tenant, ruleset.to_json())
        return Ruleset(row["version"], ruleset.rules, ruleset.custom_attributes, row["created_at"],
                       ruleset.shared_blocks)

    async def get_ruleset(self, tenant: str, version: int) -> Ruleset | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT version, body, created_at FROM rulesets WHERE tenant_id = $1 AND version = $2",
                tenant, version)
        return None if row is None else Ruleset.from_json(row["version"], row["body"], row["created_at"])

    async def load_match_model(self, tenant: str, ruleset_version: int, rule: str) -> MatchModel | None:
        row = await self.pool.fetchrow(
            "SELECT version, body FROM match_models WHERE tenant_id = $1 AND ruleset_version = $2 AND rule = $3"
            " ORDER BY version DESC LIMIT 1", tenant, ruleset_version, rule)
        return None if row is None else MatchModel.from_dict(row["version"], json.loads(row["body"]))

    async def get_match_model(self, tenant: str, version: int) -> tuple[MatchModel, int, dict, datetime] | None:
        row = await self.pool.fetchrow(
            "SELECT version, ruleset_version, body, summary, created_at FROM match_models"
            " WHERE tenant_id = $1 AND version = $2", tenant, version)
        if row is None:
            return None
        return (MatchModel.from_dict(row["version"], json.loads(row["body"])), row["ruleset_version"],
                json.loads(row["summary"]), row["created_at"])

    async def store_match_model(self, tenant: str, ruleset_version: int, model: MatchModel, summary: dict) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(tenant, "\x00match_models"))
            return await conn.fetchval(
                "INSERT INTO match_models (tenant_id, version, ruleset_version, rule, body, summary)"
                " SELECT $1, coalesce(max(version), 0) + 1, $2, $3, $4::jsonb, $5::jsonb FROM match_models"
                " WHERE tenant_id = $1 RETURNING version",
                tenant, ruleset_version, model.rule, json.dumps(model.to_dict()), json.dumps(summary))

    async def source_records(self, tenant: str) -> list[Record]:
        rows = await self.pool.fetch(
            "SELECT identities, attributes FROM source_records WHERE tenant_id = $1 ORDER BY created_at, record_id",
            tenant)
        return [_record(r["identities"], r["attributes"]) for r in rows]

    async def rerun(self, tenant: str, compute: Callable[[TenantData], Any]) -> RerunPlan:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", tenant_lock(tenant))
            records = await conn.fetch(
                "SELECT record_id, individual_id, identities, attributes, created_at FROM source_records"
                " WHERE tenant_id = $1", tenant)
            individuals = await conn.fetch(
                "SELECT individual_id, created_at, merged_into FROM individuals WHERE tenant_id = $1", tenant)
            separations = await conn.fetch(
                "SELECT coalesce(a.merged_into, a.individual_id) AS x, coalesce(b.merged_into, b.individual_id) AS y"
                " FROM separations AS s"
                " JOIN individuals AS a ON a.tenant_id = $1 AND a.individual_id = s.individual_id"
                " JOIN individuals AS b ON b.tenant_id = $1 AND b.individual_id = s.other_id"
                " WHERE s.tenant_id = $1", tenant)
            owners = await conn.fetch(
                "SELECT id_type, id_value, individual_id FROM identities WHERE tenant_id = $1", tenant)
            data = TenantData(
                records=[StoredSource(r["record_id"], r["individual_id"], _record(r["identities"], r["attributes"]),
                                      r["created_at"]) for r in records],
                survivors={r["individual_id"]: r["created_at"] for r in individuals if r["merged_into"] is None},
                aliases={r["individual_id"]: r["merged_into"] for r in individuals if r["merged_into"] is not None},
                separated={frozenset((r["x"], r["y"])) for r in separations if r["x"] != r["y"]},
                identity_owners={(r["id_type"], r["id_value"]): r["individual_id"] for r in owners},
            )
            plan = await compute(data)
            now = await conn.fetchval("SELECT clock_timestamp()")
            await conn.execute(
                "INSERT INTO individuals (tenant_id, individual_id, created_at, record_count)"
                " SELECT $1, u.id, $2, u.c FROM unnest($3::text[], $4::bigint[]) AS u(id, c)",
                tenant, now, [i for i, _ in plan.new_individuals], [c for _, c in plan.new_individuals])
            await conn.execute(
                "UPDATE individuals AS n SET merged_into = NULL, record_count = u.c"
                " FROM unnest($2::text[], $3::bigint[]) AS u(id, c) WHERE n.tenant_id = $1 AND n.individual_id = u.id",
                tenant, list(plan.survivor_counts), list(plan.survivor_counts.values()))
            await conn.execute(
                "UPDATE individuals AS n SET merged_into = u.s, record_count = 0"
                " FROM unnest($2::text[], $3::text[]) AS u(id, s) WHERE n.tenant_id = $1 AND n.individual_id = u.id",
                tenant, list(plan.redirects), list(plan.redirects.values()))
            await conn.execute(
                "UPDATE source_records AS r SET individual_id = u.s"
                " FROM unnest($2::text[], $3::text[]) AS u(id, s) WHERE r.tenant_id = $1 AND r.record_id = u.id",
                tenant, list(plan.record_owner), list(plan.record_owner.values()))
            await conn.execute(
                "UPDATE identities AS i SET individual_id = u.s"
                " FROM unnest($2::text[], $3::text[], $4::text[]) AS u(t, v, s)"
                " WHERE i.tenant_id = $1 AND i.id_type = u.t AND i.id_value = u.v",
                tenant, [k[0] for k in plan.identity_owner], [k[1] for k in plan.identity_owner],
                list(plan.identity_owner.values()))
            await conn.execute("DELETE FROM record_blocks WHERE tenant_id = $1", tenant)
            # INSERT from arrays, not COPY: COPY FROM refuses tables with row-level security.
            blocks = sorted(set(plan.blocks))
            await conn.execute(
                "INSERT INTO record_blocks (tenant_id, block_key, record_id)"
                " SELECT $1, k, r FROM unnest($2::text[], $3::text[]) AS u(k, r)",
                tenant, [k for k, _ in blocks], [r for _, r in blocks])
            await _insert_events(conn, tenant, now, plan.merges)
            return plan

    async def unmerge(self, tenant: str, individual_id: str, planner: Callable[[UnmergeData], UnmergePlan]
                      ) -> UnmergePlan | None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", tenant_lock(tenant))
            row = await conn.fetchrow(
                "SELECT merged_into FROM individuals WHERE tenant_id = $1 AND individual_id = $2",
                tenant, individual_id)
            if row is None:
                return None
            survivor = row["merged_into"]
            aliases, history, records, identities = [], [], [], []
            if survivor is not None:
                aliases = await conn.fetch(
                    "SELECT individual_id, merged_into FROM individuals WHERE tenant_id = $1 AND merged_into = $2",
                    tenant, survivor)
                group = [survivor] + [a["individual_id"] for a in aliases]
                history = await conn.fetch(
                    "SELECT event_id, kind, survivor_id, merged_id FROM merge_events WHERE tenant_id = $1"
                    " AND kind IN ('MERGE', 'UNMERGE') AND (survivor_id = ANY($2::text[]) OR merged_id = ANY($2::text[]))",
                    tenant, group)
                records = await conn.fetch(
                    "SELECT record_id, individual_id, origin_individual_id, identities, attributes, created_at"
                    " FROM source_records WHERE tenant_id = $1 AND individual_id = $2", tenant, survivor)
                identities = await conn.fetch(
                    "SELECT id_type, id_value, origin_individual_id FROM identities"
                    " WHERE tenant_id = $1 AND individual_id = $2", tenant, survivor)
            plan = planner(UnmergeData(
                individual_id=individual_id,
                merged_into=survivor,
                aliases={a["individual_id"]: a["merged_into"] for a in aliases},
                history=[HistoryEvent(h["event_id"], h["kind"], h["survivor_id"], h["merged_id"]) for h in history],
                records=[StoredSource(r["record_id"], r["individual_id"], _record(r["identities"], r["attributes"]),
                                      r["created_at"]) for r in records],
                origins={r["record_id"]: r["origin_individual_id"] for r in records},
                identities={(i["id_type"], i["id_value"]): i["origin_individual_id"] for i in identities},
            ))
            now = await conn.fetchval("SELECT clock_timestamp()")
            others = [m for m in plan.members if m != plan.individual_id]
            await conn.execute(
                "UPDATE individuals SET merged_into = CASE WHEN individual_id = $2 THEN NULL ELSE $2 END"
                " WHERE tenant_id = $1 AND individual_id = ANY($3::text[])",
                tenant, plan.individual_id, [plan.individual_id] + others)
            await conn.execute(
                "UPDATE source_records SET individual_id = $2 WHERE tenant_id = $1 AND record_id = ANY($3::text[])",
                tenant, plan.individual_id, plan.records)
            await conn.execute(
                "UPDATE identities AS i SET individual_id = $2 FROM unnest($3::text[], $4::text[]) AS u(t, v)"
                " WHERE i.tenant_id = $1 AND i.id_type = u.t AND i.id_value = u.v",
                tenant, plan.individual_id, [k[0] for k in plan.identities], [k[1] for k in plan.identities])
            await conn.execute(
                "UPDATE individuals AS n SET record_count = (SELECT count(*) FROM source_records AS r"
                " WHERE r.tenant_id = $1 AND r.individual_id = n.individual_id)"
                " WHERE n.tenant_id = $1 AND n.individual_id = ANY($2::text[])",
                tenant, [plan.individual_id, plan.survivor_id])
            await conn.execute(
                "INSERT INTO separations (tenant_id, individual_id, other_id) VALUES ($1, $2, $3), ($1, $3, $2)"
                " ON CONFLICT DO NOTHING", tenant, plan.individual_id, plan.survivor_id)
            await _insert_events(conn, tenant, now, [plan.event])
            return plan

    async def list_merge_events(self, tenant: str, individual_id: str, before: int | None, limit: int
                                ) -> list[MergeEventView]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT event_id, kind, survivor_id, merged_id, rule, evidence, reason, merged_at, model_version"
                " FROM merge_events"
                " WHERE tenant_id = $1 AND ($2 = '' OR survivor_id = $2 OR merged_id = $2)"
                " AND ($3::bigint IS NULL OR event_id < $3) ORDER BY event_id DESC LIMIT $4",
                tenant, individual_id, before, limit)
        return [
            MergeEventView(r["event_id"], r["kind"], r["survivor_id"], r["merged_id"], r["rule"],
                           [(e["type"], e["value"]) for e in json.loads(r["evidence"])], r["reason"], r["merged_at"],
                           r["model_version"])
            for r in rows
        ]


    async def unpropagated_merge_events(self, tenant: str, min_age_seconds: float, limit: int) -> list[MergeEventView]:
        rows = await self.pool.fetch(
            "SELECT event_id, kind, survivor_id, merged_id, rule, evidence, reason, merged_at, model_version"
            " FROM merge_events"
            " WHERE tenant_id = $1 AND propagated_at IS NULL AND kind IN ('MERGE', 'UNMERGE')"
            " AND merged_at <= now() - make_interval(secs => $2) ORDER BY event_id LIMIT $3",
            tenant, min_age_seconds, limit)
        return [
            MergeEventView(r["event_id"], r["kind"], r["survivor_id"], r["merged_id"], r["rule"],
                           [(e["type"], e["value"]) for e in json.loads(r["evidence"])], r["reason"], r["merged_at"],
                           r["model_version"])
            for r in rows
        ]

    async def mark_merge_events_propagated(self, tenant: str, event_ids: list[int]) -> int:
        status = await self.pool.execute(
            "UPDATE merge_events SET propagated_at = now() WHERE tenant_id = $1 AND event_id = ANY($2::bigint[])"
            " AND propagated_at IS NULL", tenant, event_ids)
        return int(status.split()[-1])

    async def mark_merges_propagated(self, tenant: str, merges: list[tuple[str, str]]) -> int:
        status = await self.pool.execute(
            "UPDATE merge_events AS e SET propagated_at = now() FROM unnest($2::text[], $3::text[]) AS u(s, m)"
            " WHERE e.tenant_id = $1 AND e.merged_id = u.m AND e.survivor_id = u.s AND e.kind = 'MERGE'"
            " AND e.propagated_at IS NULL", tenant, [s for s, _ in merges], [m for _, m in merges])
        return int(status.split()[-1])


async def _snapshot(conn: asyncpg.Connection, tenant: str, query: SnapshotQuery) -> Snapshot:
    covering = query.covering
    rows = await conn.fetch(
        _SNAPSHOT, tenant, [k[0] for k in query.unique], [k[1] for k in query.unique],
        [k[0] for k in query.shared], [k[1] for k in query.shared], query.record_ids,
        [str(c[0]) for c in covering], [c[1][0] for c in covering], [c[1][1] for c in covering],
        *_contents([c[2] for c in covering]))
    snap = Snapshot()
    for r in rows:
        kind = r["kind"]
        if kind == "o":
            snap.owners[(r["a"], r["b"])] = _owner(r)
        elif kind == "s":
            snap.shared.setdefault((r["a"], r["b"]), set()).add(r["individual_id"])
        elif kind == "r":
            snap.known_records[r["a"]] = _owner(r)
        else:
            snap.covered[int(r["a"])] = r["individual_id"]
    return snap


async def _lock_owners(conn: asyncpg.Connection, tenant: str, snap: Snapshot,
                       found: list[tuple[str, str, Record, list[str]]], locked: set[str]) -> None:
    """Locks the rows of the individuals the snapshot (the first time) and the candidates found name that are not
    locked yet, appends the candidates to the snapshot, and takes the owners' creation times and counts as locked (a
    concurrent call may have counted records since the snapshot) and their separations; raises _Stale when one of
    them was merged away meanwhile."""
    first = not locked
    ids = sorted((snap.individuals().keys() if first else set()) | {f[1] for f in found} - locked)
    owners = {} if first else snap.individuals()  # (locked already: the snapshot's and the first candidates')
    if ids:
        rows = await conn.fetch(_LOCK_OWNERS if first else _LOCK_MORE_OWNERS, tenant, ids)
        if len(rows) != len(ids) or any(r[1] is not None for r in rows):
            raise _Stale()
        owners.update({r[0]: Owner(r[0], r[2], r[3]) for r in rows})
        locked.update(ids)
        snap.separated |= {frozenset((r[0], o)) for r in rows for o in r[4] if o != r[0]}
    if first:
        snap.owners = {key: owners[o.individual_id] for key, o in snap.owners.items()}
        snap.known_records = {record_id: owners[o.individual_id] for record_id, o in snap.known_records.items()}
    snap.candidates += [StoredRecord(record_id, owners[owner], record, keys)
                        for record_id, owner, record, keys in found]


async def _take_later(conn: asyncpg.Connection, tenant: str, snap: Snapshot, later: asyncio.Future, locked: set[str],
                      stack: contextlib.AsyncExitStack) -> None:
    """The later parts' candidates into the snapshot, their individuals locked; then the spare connection goes back."""
    try:
        await _lock_owners(conn, tenant, snap, await later, locked)
    except asyncpg.LockNotAvailableError:
        raise _Stale() from None
    await stack.aclose()


async def _settle(task: asyncio.Future) -> None:
    """Cancels a read still running and waits for it (a connection never goes back with a statement running)."""
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _locked_snapshot(conn: asyncpg.Connection, tenant: str, query: SnapshotQuery) -> Snapshot:
    """The snapshot under the locks; the covering check (every subject's contents) only for the subjects whose
    identity has an owner, in a second read when there are any (a batch of new subjects sends no contents)."""
    snap = await _snapshot(conn, tenant, dataclasses.replace(query, covering=[]))
    owned = [c for c in query.covering if c[1] in snap.owners]
    if owned:
        snap.covered = (await _snapshot(conn, tenant, SnapshotQuery([], [], [], covering=owned))).covered
    return snap


async def _first_reads(snapshot: Awaitable[Snapshot], candidates: Awaitable[A],
                       make: Callable[[], QueryRest] | None = None,
                       then: Callable[[Snapshot, QueryRest], Awaitable[None]] | None = None
                       ) -> tuple[Snapshot, A, QueryRest | None]:
    """The snapshot and the first candidates, read beside each other (on two connections); meanwhile this process
    makes the later parts' share (make, if any), and once the snapshot is in, then(snapshot, share) runs on its
    connection while the candidates may still be read. The first failure comes back at once; if anything fails or the
    caller is cancelled, both reads are cancelled and awaited (a connection is never released with a statement
    running)."""
    made: asyncio.Future[QueryRest | None] = asyncio.get_running_loop().create_future()

    async def first() -> Snapshot:
        snap = await snapshot
        rest = await made
        if rest is not None and then is not None:
            await then(snap, rest)
        return snap

    one, two = asyncio.ensure_future(first()), asyncio.ensure_future(candidates)
    try:
        if make is not None:
            await asyncio.sleep(0)  # both statements go out
        made.set_result(make() if make is not None else None)
        done, _ = await asyncio.wait((one, two), return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # the first failure, before waiting for the other
        return one.result(), two.result(), made.result()
    finally:
        for task in (one, two):
            if not task.done():
                task.cancel()
        await asyncio.gather(one, two, return_exceptions=True)


async def _take_rest(conn: asyncpg.Connection, tenant: str, snap: Snapshot, rest: QueryRest) -> None:
    """The later parts' locks, taken without waiting (raises _Stale if another call holds one: the call starts over
    and then takes every lock in one order), and the stored records with their record ids, into the snapshot."""
    if rest.lock_keys and not await conn.fetchval(_TRY_LOCK, lock_keys(tenant, rest.lock_keys)):
        raise _Stale()
    if rest.record_ids:
        known = await _snapshot(conn, tenant, SnapshotQuery([], [], rest.record_ids))
        snap.known_records.update(known.known_records)


async def _write_parts(conn: asyncpg.Connection, tenant: str, now: datetime, parts: Iterator[Plan],
                       early: Awaitable[Any] | None, written: set[str],
                       later: Callable[[], Awaitable[None]] | None = None) -> tuple[Plan, list[NewRecord]]:
    """Applies a plan's parts in order, each sent before the next one is planned (and the early rows before the
    first): PostgreSQL writes while this process plans. later() (the later parts' candidates, read meanwhile) runs
    once the first part is planned, before its write. Returns the last part and every record stored. If planning
    fails or the caller is cancelled, the statement in flight is cancelled and awaited (a connection is never left
    with a statement running)."""
    task = asyncio.ensure_future(early) if early is not None else None
    last, records = Plan([]), list[NewRecord]()
    try:
        if task is not None:
            await asyncio.sleep(0)  # the task sends its statement (a prepared one at once), then waits for the answer
        for part in parts:  # planned while the statement in flight runs
            if task is not None:
                await task
                task = None
            if later is not None:
                await later()
                later = None
            records += part.new_records
            if part.writes:
                task = asyncio.ensure_future(_apply(conn, tenant, now, part, written))
                await asyncio.sleep(0)
            last = part
        if task is not None:
            await task
        return last, records
    finally:
        if task is not None:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _write_early(conn: asyncpg.Connection, tenant: str, records: list[NewRecord]) -> None:
    blocks = [(k, r.record_id) for r in records for k in r.blocks]
    shared = [(t, v, r.record_id) for r in records for t, v in r.shared]
    await conn.execute(_EARLY, tenant, [k for k, _ in blocks], [r for _, r in blocks], [t for t, _, _ in shared],
                       [v for _, v, _ in shared], [r for _, _, r in shared])


def _contents(records: list[Record]) -> tuple[list[str], list[str]]:
    """The records' identities and attributes as JSON text, encoded once per record (the fast read, the read under
    the locks and the write all send them)."""
    ids, attrs = [], []
    for record in records:
        encoded = record.encoded
        if encoded is None:
            encoded = record.encoded = (orjson.dumps(record.identities).decode(),
                                        orjson.dumps(record.attributes).decode())
        ids.append(encoded[0])
        attrs.append(encoded[1])
    return ids, attrs


def _evidence(keys) -> str:
    return json.dumps([{"type": t, "value": v} for t, v in keys])


async def _insert_events(conn: asyncpg.Connection, tenant: str, now: datetime, events: list[MergeRecord]) -> None:
    await conn.execute(
        "INSERT INTO merge_events (tenant_id, survivor_id, merged_id, rule, evidence, merged_at, kind, reason,"
        " model_version) SELECT $1, u.s, u.m, u.r, u.e::jsonb, $2, u.k, u.why, u.mv FROM unnest($3::text[], $4::text[],"
        " $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[]) AS u(s, m, r, e, k, why, mv)",
        tenant, now, [m.survivor_id for m in events], [m.merged_id for m in events], [m.rule for m in events],
        [_evidence(m.evidence) for m in events], [m.kind for m in events], [m.reason for m in events],
        [m.model_version for m in events])


async def _apply(conn: asyncpg.Connection, tenant: str, now, plan: Plan, written: set[str]) -> None:
    """The plan's writes in one statement; the block and searchable-identity rows of records in written are in."""
    records = plan.new_records
    rest = [r for r in records if r.record_id not in written] if written else records
    shared = [(t, v, r.record_id) for r in rest for t, v in r.shared]
    blocks = [(k, r.record_id) for r in rest for k in r.blocks]
    await conn.execute(
        _APPLY,
        tenant,
        now,
        [n.individual_id for n in plan.new_individuals],
        [n.merged_into for n in plan.new_individuals],
        [n.record_count for n in plan.new_individuals],
        list(plan.redirects),
        list(plan.redirects.values()),
        [key[0] for key, _, _ in plan.new_identities],
        [key[1] for key, _, _ in plan.new_identities],
        [owner for _, owner, _ in plan.new_identities],
        [m.survivor_id for m in plan.merges],
        [m.merged_id for m in plan.merges],
        [m.rule for m in plan.merges],
        [_evidence(m.evidence) for m in plan.merges],
        [m.kind for m in plan.merges],
        [m.reason for m in plan.merges],
        [r.record_id for r in records],
        [r.individual_id for r in records],
        *_contents([r.record for r in records]),
        [k for k, _ in blocks],
        [r for _, r in blocks],
        [t for t, _, _ in shared],
        [v for _, v, _ in shared],
        [r for _, _, r in shared],
        list(plan.counts),
        list(plan.counts.values()),
        [m.model_version for m in plan.merges],
        [origin for _, _, origin in plan.new_identities],
        [r.origin for r in records],
    )
