"""The row-level security matrix: for every table with a tenant column, in every service's schema, a session of that
service's own role for tenant A sees none of tenant B's rows without any tenant filter of its own, and may not
write a row of B's. Tables without a tenant column are listed exactly, so a new tenant table cannot slip by."""

from __future__ import annotations

import re
import uuid

import asyncpg
import pytest

from shared import context as ctx
from shared import db, db_roles
from tests.conftest import ROOT

# Tables that hold no tenant's rows (or, for the pipeline's partitions and workers, rows of no single tenant).
WITHOUT_TENANT = {
    "decision": {"schema_migrations"},
    "gateway": {"schema_migrations", "pipeline_partitions", "pipeline_workers"},
    "identity": {"schema_migrations"},
    "profile_graph": {"schema_migrations"},
    "recommender": {"schema_migrations"},
}


@pytest.fixture(scope="module")
async def tables(database_url):
    """{schema: {table: [(column, type, check constraint or None)] of the columns a row needs}} after every
    service's migrations."""
    for schema in db_roles.SCHEMAS:
        await db.migrate(database_url, schema, ROOT / "services" / schema / "migrations")
    admin = await asyncpg.connect(database_url)
    try:
        rows = await admin.fetch(
            """SELECT n.nspname AS schema, c.relname AS table, a.attname AS column,
                      format_type(a.atttypid, a.atttypmod) AS type,
                      a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '' AS needed,
                      (SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k
                       WHERE k.conrelid = c.oid AND k.contype = 'c' AND a.attnum = ANY(k.conkey) LIMIT 1) AS checked
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
               ORDER BY 1, 2, a.attnum""", list(db_roles.SCHEMAS))
    finally:
        await admin.close()
    out: dict[str, dict[str, list]] = {schema: {} for schema in db_roles.SCHEMAS}
    for r in rows:
        columns = out[r["schema"]].setdefault(r["table"], [])
        if r["needed"] or r["column"] == "tenant_id":
            columns.append((r["column"], r["type"], r["checked"]))
    return out


def _value(column: str, type_: str, checked: str | None, tenant: str, n: int) -> str:
    """A text value PostgreSQL casts to type_, valid for the column's CHECK constraint, distinct per tenant."""
    if column == "tenant_id":
        return tenant
    if checked:
        literal = re.search(r"'([^']*)'", checked)
        if literal:
            return literal.group(1)
    if type_.endswith("[]"):
        return "{}"
    if type_ in ("integer", "bigint", "smallint"):
        return str(n)
    if type_ in ("double precision", "real") or type_.startswith("numeric"):
        return "1.5"
    if type_ == "boolean":
        return "true"
    if type_.startswith("timestamp"):
        return "2026-01-01T00:00:00Z"
    if type_ == "date":
        return "2026-01-01"
    if type_ in ("jsonb", "json"):
        return "{}"
    if type_ == "bytea":
        return "\\x00"
    return f"{tenant}-{column}"


def _insert(schema: str, table: str, columns: list, tenant: str, n: int) -> tuple[str, ...]:
    """(statement, *arguments) inserting one row of tenant's."""
    names = ", ".join(f'"{c}"' for c, _, _ in columns)
    params = ", ".join(f"${i + 1}::text::{t}" for i, (_, t, _) in enumerate(columns))
    return (f'INSERT INTO "{schema}"."{table}" ({names}) VALUES ({params})',
            *[_value(c, t, k, tenant, n) for c, t, k in columns])


def test_every_table_without_a_tenant_column_is_known(tables):
    without = {schema: {t for t, cols in by_table.items() if not any(c == "tenant_id" for c, _, _ in cols)}
               for schema, by_table in tables.items()}
    assert without == WITHOUT_TENANT


async def test_every_tenant_table_has_row_level_security_enabled_forced_and_one_policy(tables, database_url):
    admin = await asyncpg.connect(database_url)
    try:
        rows = await admin.fetch(
            """SELECT n.nspname AS schema, c.relname AS table, c.relrowsecurity, c.relforcerowsecurity,
                      (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p')""", list(db_roles.SCHEMAS))
    finally:
        await admin.close()
    state = {(r["schema"], r["table"]): (r["relrowsecurity"], r["relforcerowsecurity"], r["policies"]) for r in rows}
    tenant_tables = [(s, t) for s, by_table in tables.items() for t in by_table if t not in WITHOUT_TENANT[s]]
    assert len(tenant_tables) > 50
    assert {key: state[key] for key in tenant_tables if state[key] != (True, True, 1)} == {}


async def test_a_tenant_sees_and_writes_no_other_tenants_rows_in_any_table(tables, database_url):
    a, b = f"t_a{uuid.uuid4().hex[:8]}", f"t_b{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    try:
        # Seeded as the superuser, foreign keys off: one row of each tenant in every tenant table.
        await admin.execute("SET session_replication_role = replica")
        for schema, by_table in tables.items():
            for table, columns in by_table.items():
                if table in WITHOUT_TENANT[schema]:
                    continue
                for n, tenant in ((1, a), (2, b)):
                    await admin.execute(*_insert(schema, table, columns, tenant, n))
    finally:
        await admin.close()

    try:
        checked = await _check_every_table(tables, database_url, a, b)
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute("SET session_replication_role = replica")  # foreign keys off, as when seeding
            for schema, by_table in tables.items():
                for table in set(by_table) - WITHOUT_TENANT[schema]:
                    await admin.execute(f'DELETE FROM "{schema}"."{table}" WHERE tenant_id IN ($1, $2)', a, b)
        finally:
            await admin.close()
    assert checked == sum(len(t) - len(WITHOUT_TENANT[s]) for s, t in tables.items())


async def _check_every_table(tables, database_url: str, a: str, b: str) -> int:
    checked = 0
    for schema, by_table in tables.items():
        pool = await db.create_pool(database_url, schema, min_size=1, max_size=1)
        try:
            for table, columns in by_table.items():
                if table in WITHOUT_TENANT[schema]:
                    continue
                name = f'"{schema}"."{table}"'
                token = ctx.tenant_var.set(a)
                try:
                    async with pool.acquire() as conn:
                        assert await conn.fetchval("SELECT current_user") == f"tailor_{schema}"
                        seen = await conn.fetch(f"SELECT tenant_id FROM {name}")  # no tenant filter
                        assert {r["tenant_id"] for r in seen} == {a}, (name, seen[:3])
                        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                            await conn.execute(*_insert(schema, table, columns, b, 3))
                        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                            await conn.execute(f"UPDATE {name} SET tenant_id = $1 WHERE tenant_id = $2", b, a)
                        assert await conn.execute(f"UPDATE {name} SET tenant_id = tenant_id WHERE tenant_id = $1",
                                                  b) == "UPDATE 0", name
                        assert await conn.execute(f"DELETE FROM {name} WHERE tenant_id = $1", b) == "DELETE 0", name
                finally:
                    ctx.tenant_var.reset(token)
                async with pool.acquire() as conn:  # no tenant and no all_tenants(): nothing at all
                    assert await conn.fetchval(f"SELECT count(*) FROM {name}") == 0, name
                with db.all_tenants():
                    async with pool.acquire() as conn:
                        both = await conn.fetchval(f"SELECT count(*) FROM {name} WHERE tenant_id IN ($1, $2)", a, b)
                        assert both == 2, name
                checked += 1
        finally:
            await pool.close()
    return checked
