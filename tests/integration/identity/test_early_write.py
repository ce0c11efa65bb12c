"""The rows a resolve writes while it plans (record blocks, searchable identities) leave every table as the one
write after the plan leaves it, on a realistic batch (Splink's fake_1000, its ruleset, two calls of 500)."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest

import services.identity.server as server_module
from services.identity import matching, postgres, resolution
from services.identity.matching import IdentityType, Record
from services.identity.ports import SnapshotQuery
from services.identity.postgres import PostgresRepository
from services.identity.server import SCHEMA
from services.identity.service import IdentityService, Settings
from shared import context as ctx
from shared.runtime import prepare_schema
from tests.bench import _identity_data as data

TABLES = {
    "individuals": "SELECT individual_id, merged_into, record_count FROM individuals WHERE tenant_id = $1"
                   " ORDER BY individual_id",
    "identities": "SELECT id_type, id_value, individual_id, origin_individual_id FROM identities WHERE tenant_id = $1"
                  " ORDER BY id_type, id_value",
    "source_records": "SELECT record_id, individual_id, origin_individual_id, identities, attributes"
                      " FROM source_records WHERE tenant_id = $1 ORDER BY record_id",
    "record_blocks": "SELECT block_key, record_id FROM record_blocks WHERE tenant_id = $1 ORDER BY block_key, record_id",
    "shared_identities": "SELECT id_type, id_value, record_id FROM shared_identities WHERE tenant_id = $1"
                         " ORDER BY id_type, id_value, record_id",
    "merge_events": "SELECT survivor_id, merged_id, rule, evidence, kind, reason FROM merge_events"
                    " WHERE tenant_id = $1 ORDER BY event_id",
}


async def _resolve_and_read(pool, tenant: str) -> tuple[list[str], dict[str, list[tuple]]]:
    """fake_1000 resolved in two calls of 500 with individual ids counted from 0; the ids and every table after."""
    token = ctx.tenant_var.set(tenant)
    try:
        counter = itertools.count()
        service = IdentityService(PostgresRepository(pool), new_id=lambda: f"ind_{next(counter):05d}",
                                  settings=Settings(config_ttl_seconds=0))
        await service.upsert_identity_type(tenant, IdentityType("email", False, "EMAIL"))
        await service.create_ruleset(tenant, data.FAKE_RULES, [])
        rows = data.load_fake_1000()
        ids = []
        for start in (0, 500):
            batch = rows[start:start + 500]
            resolved = await service.resolve(tenant, [r.identities for r in batch], lookup_only=False,
                                             attributes=[r.attributes for r in batch])
            ids += [r.individual_id for r in resolved]
        async with pool.acquire() as conn:
            tables = {name: [tuple(r) for r in await conn.fetch(query, tenant)] for name, query in TABLES.items()}
        return ids, tables
    finally:
        ctx.tenant_var.reset(token)


async def test_writing_the_foreseen_rows_while_planning_stores_what_one_write_after_the_plan_stores(
        database_url, tenant, monkeypatch):
    pool = await prepare_schema(database_url, SCHEMA, server_module.__file__)
    early_rows: list[int] = []
    write_early = postgres._write_early

    async def counted(conn, tenant_id, records):
        early_rows.append(sum(len(r.blocks) + len(r.shared) for r in records))
        await write_early(conn, tenant_id, records)

    monkeypatch.setattr(postgres, "_write_early", counted)
    try:
        monkeypatch.setattr(postgres, "EARLY_ROWS", 10**9)  # never early: one write after the plan
        after_ids, after = await _resolve_and_read(pool, f"{tenant}_after")
        assert early_rows == []
        monkeypatch.setattr(postgres, "EARLY_ROWS", 256)
        early_ids, early = await _resolve_and_read(pool, f"{tenant}_early")
        assert len(early_rows) == 2 and min(early_rows) > 1000  # most of both calls' rows went early
        assert early_ids == after_ids
        for name in TABLES:
            assert early[name] == after[name], name
        assert len(early["record_blocks"]) > 3000 and len(early["shared_identities"]) > 500, {k: len(v) for k, v in early.items()}
        assert len(early["merge_events"]) > 20, {k: len(v) for k, v in early.items()}
    finally:
        await pool.close()


@pytest.mark.parametrize("failing", ["planner", "write"])
async def test_a_failure_while_writing_early_stores_nothing(database_url, tenant, monkeypatch, failing):
    pool = await prepare_schema(database_url, SCHEMA, server_module.__file__)
    monkeypatch.setattr(postgres, "EARLY_ROWS", 1)
    try:
        service = IdentityService(PostgresRepository(pool))
        await service.create_ruleset(tenant, [("last", [("attribute", "last_name", "EXACT", "")])], [])
        if failing == "planner":
            def broken(*_args, **_kwargs):
                raise RuntimeError("planner failed")
            monkeypatch.setattr("services.identity.service.plan_parts", broken)
        else:
            async def broken_write(conn, tenant_id, records):
                await conn.execute("SELECT 1/0")
            monkeypatch.setattr(postgres, "_write_early", broken_write)
        with pytest.raises(Exception, match="planner failed|division by zero"):
            await service.resolve(tenant, [[("email", f"{n}@x.io")] for n in range(3)], lookup_only=False,
                                  attributes=[{"last_name": "Ada"}] * 3)
        async with pool.acquire() as conn:
            for table in ("record_blocks", "source_records", "individuals"):
                assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant) == 0
    finally:
        await pool.close()


@pytest.mark.parametrize("part", [7, 163])
async def test_a_plan_written_in_parts_stores_what_one_write_of_the_whole_plan_stores(database_url, tenant,
                                                                                      monkeypatch, part):
    pool = await prepare_schema(database_url, SCHEMA, server_module.__file__)
    applied: list[int] = []
    apply = postgres._apply

    async def counted(conn, tenant_id, now, plan, written):
        applied.append(len(plan.new_records))
        await apply(conn, tenant_id, now, plan, written)

    monkeypatch.setattr(postgres, "_apply", counted)
    later: list[int] = []
    take_later = postgres._take_later

    async def counted_later(conn, tenant_id, snap, read, locked, stack):
        before = len(snap.candidates)
        await take_later(conn, tenant_id, snap, read, locked, stack)
        later.append(len(snap.candidates) - before)

    monkeypatch.setattr(postgres, "_take_later", counted_later)
    try:
        monkeypatch.setattr(resolution, "PART", 1000)  # each call of 500 planned and written whole
        whole_ids, whole = await _resolve_and_read(pool, f"{tenant}_whole")
        assert len(applied) == 2 and later == []
        applied.clear()
        monkeypatch.setattr(resolution, "PART", part)
        parts_ids, parts = await _resolve_and_read(pool, f"{tenant}_parts")
        assert len(applied) == 2 * -(-500 // part), applied
        # The second call's later parts' candidates were read while its first part was planned.
        assert len(later) == 2 and later[1] > 20, later
        assert parts_ids == whole_ids
        for name in TABLES:
            assert parts[name] == whole[name], name
        # Later parts merge individuals earlier parts stored: the redirects, counts and origins are exercised.
        assert sum(1 for row in whole["individuals"] if row[1] is not None) > 20
        assert any(row[2] != row[3] for row in whole["identities"]) \
            or any(r[1] != r[2] for r in whole["source_records"])
    finally:
        await pool.close()


async def _resolve_while_held(database_url: str, tenant: str, service: IdentityService, monkeypatch, hold):
    """Six subjects stored, then six more with their last names in parts of 2 while another connection holds what
    hold(connection, stored resolutions) takes: the second call must wait for it. Returns both calls' resolutions."""
    await service.create_ruleset(tenant, [("last", [("attribute", "last_name", "EXACT", "")])], [])
    names = [f"name{n}" for n in range(6)]
    stored = await service.resolve(tenant, [[("email", f"{n}@x.io")] for n in names], lookup_only=False,
                                   attributes=[{"last_name": n} for n in names])
    monkeypatch.setattr(resolution, "PART", 2)
    other = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        holding = other.transaction()
        await holding.start()
        await hold(other, stored)
        call = asyncio.ensure_future(service.resolve(
            tenant, [[("email", f"again{n}@x.io")] for n in names], lookup_only=False,
            attributes=[{"last_name": n} for n in names]))
        await asyncio.sleep(0.5)
        assert not call.done()  # started over, now waiting in one sorted lock statement
        await holding.commit()
        return stored, await call
    finally:
        await other.close()


async def test_a_later_owner_held_by_another_call_starts_the_call_over_with_all_candidates_read_at_once(
        database_url, tenant, monkeypatch):
    pool = await prepare_schema(database_url, SCHEMA, server_module.__file__)
    later: list[int] = []
    take_later = postgres._take_later

    async def counted_later(conn, tenant_id, snap, read, locked, stack):
        later.append(1)
        await take_later(conn, tenant_id, snap, read, locked, stack)

    async def hold(other, stored) -> None:
        # Another call holds the row of the individual behind the last subject's block (a later part's).
        await other.execute("SELECT set_config('tailor.tenant', $1, true)", tenant)
        assert await other.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM individuals WHERE tenant_id = $1 AND individual_id = $2"
            " FOR UPDATE) AS held", tenant, stored[5].individual_id) == 1

    monkeypatch.setattr(postgres, "_take_later", counted_later)
    token = ctx.tenant_var.set(tenant)
    try:
        stored, again = await _resolve_while_held(
            database_url, tenant, IdentityService(PostgresRepository(pool)), monkeypatch, hold)
        assert later == [1]  # the first attempt read the later candidates apart; the second read all at once
        assert [r.individual_id for r in again] == [r.individual_id for r in stored]
    finally:
        ctx.tenant_var.reset(token)
        await pool.close()


async def test_a_later_candidate_of_an_individual_the_snapshot_already_locked_joins_it(database_url, tenant,
                                                                                       monkeypatch):
    pool = await prepare_schema(database_url, SCHEMA, server_module.__file__)
    token = ctx.tenant_var.set(tenant)
    try:
        service = IdentityService(PostgresRepository(pool))
        await service.create_ruleset(tenant, [("last", [("attribute", "last_name", "EXACT", "")])], [])
        [ada] = await service.resolve(tenant, [[("email", "ada@x.io")]], lookup_only=False,
                                      attributes=[{"last_name": "Lovelace"}])
        monkeypatch.setattr(resolution, "PART", 1)
        # The first subject's identity is Ada's (locked with the snapshot's owners); the second reaches her record
        # through a block key of the later part.
        found = await service.resolve(tenant, [[("email", "ada@x.io")], [("email", "other@x.io")]],
                                      lookup_only=False, attributes=[{"first_name": "Ada"}, {"last_name": "Lovelace"}])
        assert [r.individual_id for r in found] == [ada.individual_id] * 2
    finally:
        ctx.tenant_var.reset(token)
        await pool.close()


async def test_a_later_block_key_locked_by_another_call_starts_the_call_over_with_every_lock_in_order(
        database_url, tenant, monkeypatch):
    pool = await prepare_schema(database_url, SCHEMA, server_module.__file__)
    shares: list[int] = []
    take_rest = postgres._take_rest

    async def counted_rest(conn, tenant_id, snap, rest):
        shares.append(len(rest.blocks))
        await take_rest(conn, tenant_id, snap, rest)

    wholes: list[int] = []
    whole = SnapshotQuery.whole

    def counted_whole(query):
        if query.rest is not None:
            wholes.append(1)
        return whole(query)

    service = IdentityService(PostgresRepository(pool))

    async def hold(other, stored) -> None:
        # Another call holds the lock of the last subject's block key (a later part's: taken without waiting).
        ruleset = (await service.config(tenant)).ruleset
        [(_, key)] = matching.block_keys(ruleset, Record({"email": ["again5@x.io"]}, {"last_name": "name5"}))
        await other.execute("SELECT pg_advisory_xact_lock($1)", postgres.lock_key(tenant, f"b\x1f{key}"))

    monkeypatch.setattr(postgres, "_take_rest", counted_rest)
    monkeypatch.setattr(SnapshotQuery, "whole", counted_whole)
    token = ctx.tenant_var.set(tenant)
    try:
        stored, again = await _resolve_while_held(database_url, tenant, service, monkeypatch, hold)
        # The first attempt took the later parts' 4 keys apart and did not wait; the second took all at once.
        assert shares == [4] and wholes == [1]
        assert [r.individual_id for r in again] == [r.individual_id for r in stored]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('tailor.tenant', $1, true)", tenant)
            assert await conn.fetchval("SELECT count(*) FROM source_records WHERE tenant_id = $1", tenant) == 12
    finally:
        ctx.tenant_var.reset(token)
        await pool.close()
