"""How many statements each identity path sends to PostgreSQL (the decide path needs ~1 query per read)."""

from __future__ import annotations

import re

import asyncpg
import pytest

import services.identity.server as server_module
import services.identity.service as service_module
from services.identity import postgres, resolution
from services.identity.postgres import PostgresRepository
from services.identity.server import SCHEMA
from services.identity.service import IdentityService
from shared.runtime import prepare_schema


@pytest.fixture(scope="module")
async def counted(database_url):
    """An identity service on a one-connection pool whose statements are recorded."""
    await (await prepare_schema(database_url, SCHEMA, server_module.__file__)).close()
    statements: list[str] = []

    async def record(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda query: statements.append(query.query))

    async def no_reset(_connection: asyncpg.Connection) -> None:
        return None  # like shared.db.create_pool: no reset statements on release

    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=1, init=record, reset=no_reset,
        server_settings={"search_path": f"{SCHEMA},public"},
    )
    yield IdentityService(PostgresRepository(pool)), statements
    await pool.close()


async def test_lookup_only_is_a_single_select(counted, tenant):
    service, statements = counted
    [known] = await service.resolve(tenant, [[("email", "ada@x.io")]], lookup_only=False)
    statements.clear()
    resolutions = await service.resolve(
        tenant, [[("email", "ada@x.io"), ("device_id", "d1")], [("email", "bob@x.io")]], lookup_only=True
    )
    assert [r.individual_id for r in resolutions] == [known.individual_id, ""]
    assert len(statements) == 1 and statements[0].lstrip().startswith("SELECT")


async def test_a_lookup_reads_creation_times_only_for_subjects_with_two_owners(counted, tenant):
    service, statements = counted
    [older] = await service.resolve(tenant, [[("email", "ada@x.io")]], lookup_only=False)
    [newer] = await service.resolve(tenant, [[("device_id", "d1")]], lookup_only=False)  # (created later)
    statements.clear()
    [found, alone] = await service.resolve(
        tenant, [[("device_id", "d1"), ("email", "ada@x.io")], [("device_id", "d1")]], lookup_only=True)
    assert (found.individual_id, alone.individual_id) == (older.individual_id, newer.individual_id)
    assert len(statements) == 2 and all(s.lstrip().startswith("SELECT") for s in statements)


async def test_resolving_only_known_identities_is_a_single_select(counted, tenant):
    service, statements = counted
    [known] = await service.resolve(tenant, [[("email", "ada@x.io"), ("device_id", "d1")]], lookup_only=False)
    statements.clear()
    [again] = await service.resolve(tenant, [[("device_id", "d1")]], lookup_only=False)
    assert again.individual_id == known.individual_id
    assert len(statements) == 1


async def test_a_batch_of_new_subjects_takes_a_constant_number_of_statements(counted, tenant):
    service, statements = counted
    await service.config(tenant)  # the tenant's types and ruleset are read once, then cached
    sizes = []
    for n in (5, 500):
        statements.clear()
        await service.resolve(tenant, [[("email", f"{n}-{i}@x.io")] for i in range(n)], lookup_only=False)
        sizes.append(len(statements))
    # lookup, BEGIN, locks, owners, block candidates, one write statement, COMMIT; with 500 records' block keys
    # (more than postgres.EARLY_ROWS rows) those are written first, while the plan is made, and the plan is written
    # in parts of resolution.PART subjects
    assert sizes == [7, 7 + -(-500 // resolution.PART)]


async def test_known_subjects_whose_attributes_a_stored_record_holds_are_a_single_select(counted, tenant):
    service, statements = counted
    signup = {"first_name": "Ada", "last_name": "Lovelace"}
    [known] = await service.resolve(tenant, [[("email", "ada@x.io"), ("device_id", "d1")]], lookup_only=False,
                                    attributes=[signup])
    statements.clear()
    again = await service.resolve(tenant, [[("device_id", "d1")], [("device_id", "d1")], [("email", "ada@x.io")]],
                                  lookup_only=False, attributes=[{"first_name": "Ada"}, {}, signup])
    assert [r.individual_id for r in again] == [known.individual_id] * 3
    assert statements == [postgres._SNAPSHOT]
    individual = await service.get_individual(tenant, known.individual_id)
    assert individual.record_count == 1


async def generic_plan(database_url: str, statement: str, literals: str) -> str:
    """EXPLAIN of the statement's generic plan (the one a connection caches after a few runs), on fresh tables."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE checked AS {statement}")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE checked({literals})"))
        assert "$1" in plan, plan  # the generic plan indeed
        return plan
    finally:
        await conn.close()


@pytest.mark.parametrize("statement, literals", [
    (postgres._SURVIVORS, "'t', '{email}', '{a@x.io}'"),
    (postgres._CREATED, "'t', '{i1,i2}'"),
    (postgres._SNAPSHOT, ("'t', '{email}', '{a@x.io}', '{ip}', '{1.2.3.4}', '{rec_1}', '{0}', '{email}', '{a@x.io}',"
                          " ARRAY['{}'::jsonb], ARRAY['{}'::jsonb]")),
    (postgres._CANDIDATES, "'t', '{b1,b2}', 200"),
    (postgres._LOCK_OWNERS, "'t', '{i1,i2}'"),
], ids=["survivors", "created", "snapshot", "candidates", "lock_owners"])
async def test_the_reads_of_a_resolve_go_by_key_in_any_plan(database_url, statement, literals):
    # Plans made while the tables are small and without statistics are cached by each connection: a read planned
    # as a join could go on reading all of the tenant's rows on every call.
    plan = await generic_plan(database_url, statement, literals)
    assert "Seq Scan" not in plan, plan
    # (the lock read's one-row probe whether the tenant has any separation, an EXISTS evaluated once)
    plan = re.sub(r"Index Only Scan using separations_pkey on separations x .*\n\s*Index Cond: \(tenant_id = \$1\)\n",
                  "", plan)
    assert not re.search(r"Cond: \(tenant_id = \$1\)$", plan, re.MULTILINE), plan  # all of a tenant's rows


async def test_the_updates_of_a_write_are_skipped_outright_when_they_have_nothing_to_do(database_url):
    literals = ", ".join(["'t'", "now()", "'{i1}'", "'{i2}'", "'{1}'"] + ["'{x}'"] * 21
                         + ["'{1}'", "'{0}'", "'{x}'", "'{x}'"])
    plan = await generic_plan(database_url, postgres._APPLY, literals)
    assert "Seq Scan" not in plan, plan
    # redirected, redirected_aliases, moved, moved_records (only with merges), counted (only with new records)
    assert plan.count("One-Time Filter: (cardinality(") == 5, plan


async def test_with_an_idle_connection_the_candidates_are_read_beside_the_snapshot_with_the_same_result(
        database_url, tenant):
    await (await prepare_schema(database_url, SCHEMA, server_module.__file__)).close()
    statements: list[tuple[int, str]] = []  # (connection, statement)

    async def record(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda query: statements.append((id(connection), query.query)))

    async def no_reset(_connection: asyncpg.Connection) -> None:
        return None

    pools = [await asyncpg.create_pool(database_url, min_size=size, max_size=size, init=record, reset=no_reset,
                                       server_settings={"search_path": f"{SCHEMA},public"}) for size in (1, 3)]
    try:
        partitions = []
        for pool in pools:
            service = IdentityService(PostgresRepository(pool))
            own = f"{tenant}_{pool.get_max_size()}"
            await service.create_ruleset(own, [("last", [("attribute", "last_name", "EXACT", "")])], [])
            first = await service.resolve(own, [[("email", f"{n}@x.io")] for n in range(4)], lookup_only=False,
                                          attributes=[{"last_name": name} for name in ("Ada", "Bo", "Cy", "Ada")])
            statements.clear()
            second = await service.resolve(own, [[("email", f"{n}@y.io")] for n in range(3)], lookup_only=False,
                                           attributes=[{"last_name": name} for name in ("Bo", "Di", "Ada")])
            snapshot = [c for c, q in statements if q == postgres._SNAPSHOT]
            candidates = [c for c, q in statements if q == postgres._CANDIDATES]
            assert len(snapshot) == 2 and len(candidates) == 1  # the fast read, then under the locks
            assert (candidates[0] != snapshot[1]) == (pool.get_max_size() == 3)
            ids = [r.individual_id for r in first + second]
            partitions.append([ids.index(i) for i in ids])
        assert partitions[0] == partitions[1] == [0, 1, 2, 0, 1, 5, 0]
    finally:
        for pool in pools:
            await pool.close()


@pytest.mark.parametrize("new_at", [0, 9])
async def test_the_fast_read_is_cut_by_a_new_probed_identity_and_the_locks_check_covering_only_for_owned_ones(
        database_url, tenant, new_at, monkeypatch):
    monkeypatch.setattr(service_module, "PROBE_FROM", 10)  # (a call of ten is probed first)
    await (await prepare_schema(database_url, SCHEMA, server_module.__file__)).close()
    covering: list[list[str]] = []  # the positions each snapshot checks for a covering record

    async def record(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(
            lambda query: covering.append(list(query.args[6])) if query.query == postgres._SNAPSHOT else None)

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, init=record,
                                     server_settings={"search_path": f"{SCHEMA},public"})
    try:
        service = IdentityService(PostgresRepository(pool))
        known = await service.resolve(tenant, [[("email", f"{n}@x.io")] for n in range(9)], lookup_only=False,
                                      attributes=[{"first_name": "Ada"}] * 9)
        # Ten subjects with attributes, one of them new: the first eight are probed (service.PROBES).
        subjects = [[("email", f"{n}@x.io")] for n in range(9)]
        subjects.insert(new_at, [("email", "new@x.io")])
        covering.clear()
        again = await service.resolve(tenant, subjects, lookup_only=False, attributes=[{"city": "Rome"}] * 10)
        everyone = [str(n) for n in range(10)]
        # Under the locks, the owners first; then the covering check of the subjects whose identity has one.
        if new_at == 0:  # probed: no fast read
            assert covering == [[], everyone[1:]]
        else:  # not probed: the full fast read first
            assert covering == [everyone, [], everyone[:9]]
        ids = [r.individual_id for r in again]
        assert ids[:new_at] + ids[new_at + 1:] == [r.individual_id for r in known]
        assert ids[new_at] not in ids[:new_at] + ids[new_at + 1:]
    finally:
        await pool.close()


def test_the_locks_of_a_batch_are_the_keys_lock_key_gives_sorted_and_each_once():
    keys = ["email\x1fa@x.io", "b\x1f0a1b2c", "email\x1fa@x.io", "phone\x1f+15550100", "b\x1fff00"]
    assert postgres.lock_keys("t1", keys) == sorted({postgres.lock_key("t1", k) for k in keys})
    assert len(postgres.lock_keys("t1", keys)) == 4
    assert postgres.lock_keys("t1", keys) != postgres.lock_keys("t2", keys)  # per tenant
