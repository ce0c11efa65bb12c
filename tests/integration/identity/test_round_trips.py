"""How many statements each identity path sends to PostgreSQL (the decide path needs ~1 query per read)."""

from __future__ import annotations

import asyncpg
import pytest

import services.identity.server as server_module
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
    # lookup, BEGIN, locks, owners, block candidates, one write statement, COMMIT
    assert sizes == [7, 7]
