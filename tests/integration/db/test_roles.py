"""Least-privilege database roles and password authentication, on a real PostgreSQL: each service's login role
reaches its own schema's rows and nothing else, the embedded server wants a password, and `tailor up` gives no
process the superuser's URL."""

from __future__ import annotations

import shutil
import stat
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from shared import db, db_roles
from shared.embedded_pg import EmbeddedPostgres, _bin
from shared.ports import free_port
from tailor_cli.launcher import DATABASE, SERVICES
from tests.conftest import ROOT
from tests.integration.launcher.launched import launch, launcher_env

MIGRATIONS = {schema: ROOT / "services" / schema / "migrations" for schema in db_roles.SCHEMAS}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))


@pytest.fixture(scope="module")
async def role_env(database_url, tmp_path_factory):
    """The roles bootstrapped with passwords (as `tailor db bootstrap` does), every schema migrated by its owner's
    login; returns the env file's path and content."""
    path = tmp_path_factory.mktemp("db") / "database.env"
    env = await db_roles.bootstrap_env_file(database_url, path)
    for schema in db_roles.SCHEMAS:
        await db.migrate(env[db_roles.env_name(schema, "migrate")], schema, MIGRATIONS[schema])
    return path, env


async def test_bootstrap_writes_each_services_two_urls_to_a_private_file_and_keeps_passwords(role_env, database_url):
    path, env = role_env
    assert _mode(path) == 0o600
    assert sorted(env) == sorted(f"TAILOR_{s.upper()}_{kind}_URL" for s in db_roles.SCHEMAS
                                 for kind in ("DATABASE", "MIGRATE"))
    assert urlsplit(env["TAILOR_IDENTITY_DATABASE_URL"]).username == "tailor_identity"
    assert urlsplit(env["TAILOR_IDENTITY_MIGRATE_URL"]).username == "tailor_identity_owner"
    again = await db_roles.bootstrap_env_file(database_url, path)  # idempotent, and the passwords stay
    assert again == env
    conn = await asyncpg.connect(env["TAILOR_GATEWAY_DATABASE_URL"])
    await conn.close()


async def test_a_service_role_reads_no_table_of_another_schema(role_env, database_url):
    _, env = role_env
    admin = await asyncpg.connect(database_url)
    try:
        tables = [(r["schemaname"], r["tablename"]) for r in await admin.fetch(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY($1::text[])", list(db_roles.SCHEMAS))]
    finally:
        await admin.close()
    assert ("gateway", "api_keys") in tables
    for schema in db_roles.SCHEMAS:
        for kind in ("database", "migrate"):
            conn = await asyncpg.connect(env[db_roles.env_name(schema, kind)])
            try:
                for other, table in tables:
                    if other == schema:
                        continue
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.fetch(f'SELECT * FROM "{other}"."{table}" LIMIT 1')
            finally:
                await conn.close()


async def test_a_service_role_may_not_create_anything_nor_hold_any_power(role_env):
    _, env = role_env
    for schema in db_roles.SCHEMAS:
        conn = await asyncpg.connect(env[db_roles.env_name(schema, "database")])
        try:
            role = await conn.fetchrow("SELECT * FROM pg_roles WHERE rolname = current_user")
            assert role["rolname"] == f"tailor_{schema}"
            assert not any(role[a] for a in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolbypassrls",
                                             "rolreplication")), dict(role)
            for statement in (f'CREATE TABLE "{schema}".intruder (x int)', "CREATE TABLE public.intruder (x int)",
                              f'CREATE SCHEMA "intruder_{schema}"', f'DROP TABLE "{schema}".schema_migrations',
                              f'ALTER TABLE "{schema}".schema_migrations ADD COLUMN x int'):
                with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.exceptions.InvalidSchemaNameError)):
                    await conn.execute(statement)
            # Its own schema's rows it may read (and, within row-level security, write).
            assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".schema_migrations') == len(
                list(MIGRATIONS[schema].glob("*.sql")))
        finally:
            await conn.close()


async def test_every_object_of_a_schema_belongs_to_its_owner_role(role_env, database_url):
    admin = await asyncpg.connect(database_url)
    try:
        rows = await admin.fetch(
            """SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1::text[])""",
            list(db_roles.SCHEMAS))
        schemas = await admin.fetch("SELECT nspname, pg_get_userbyid(nspowner) AS owner FROM pg_namespace "
                                    "WHERE nspname = ANY($1::text[])", list(db_roles.SCHEMAS))
    finally:
        await admin.close()
    assert rows
    assert [dict(r) for r in rows if r["owner"] != f"tailor_{r['nspname']}_owner"] == []
    assert {r["nspname"]: r["owner"] for r in schemas} == {s: f"tailor_{s}_owner" for s in db_roles.SCHEMAS}


async def test_a_new_embedded_server_requires_the_password_it_generated():
    folder = ROOT / ".tailor" / f"new-pg-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(folder / "pg", free_port())
    try:
        server.start()
        assert _mode(server.password_file) == 0o600
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(_without_password(server.admin_dsn))
        conn = await asyncpg.connect(server.admin_dsn)
        assert await conn.fetchval("SHOW password_encryption") == "scram-sha-256"
        assert await conn.fetchval(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'")
        await conn.close()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def old_data_dir():
    """A data folder made as earlier versions made it (initdb --auth=trust), under the project (the server runs
    as another user when the tests run as root)."""
    folder = ROOT / ".tailor" / f"trust-pg-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(folder / "pg", free_port())
    server.data_dir.mkdir(parents=True)
    from shared.embedded_pg import _prepare_for_root

    user = _prepare_for_root(server.data_dir)
    server._run([str(_bin("initdb")), "-D", str(server.data_dir), "--auth=trust", "-U", "postgres",
                 "--encoding=UTF8", "--no-sync"], user)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


async def test_a_trust_mode_data_folder_of_an_earlier_version_requires_passwords_after_its_next_start(old_data_dir):
    server = old_data_dir
    assert not server.password_file.exists()
    server.start()
    assert _mode(server.password_file) == 0o600
    assert _mode(server.password_file.parent) == 0o700
    hba = (server.data_dir / "pg_hba.conf").read_text()
    assert "scram-sha-256" in hba
    assert all(" trust" not in line for line in hba.splitlines() if not line.lstrip().startswith("#"))
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        await asyncpg.connect(_without_password(server.admin_dsn))
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(server.admin_dsn.replace(server._password(), "wrong"))
    conn = await asyncpg.connect(server.admin_dsn)
    await conn.close()
    server.stop()
    server.start()  # a restart keeps the password
    conn = await asyncpg.connect(server.admin_dsn)
    await conn.close()


@pytest.fixture
def home():
    path = ROOT / ".tailor" / f"roles-up-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_up_gives_every_process_its_own_role_and_none_the_superusers_url(home, tmp_path):
    env = launcher_env(home, TAILOR_PIPELINE_WORKERS="1")  # no DATABASE_URL: the embedded server
    launcher = launch(env, tmp_path / "ready.json")
    try:
        ready = await launcher.wait_ready()
        secrets = home / "secrets"
        for name in ("pg.password", "database.env"):
            assert _mode(secrets / name) == 0o600, name
        superuser_password = (secrets / "pg.password").read_text().strip()
        assert len(superuser_password) >= 24
        for name, pid in ready["pids"].items():
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)
            assert "DATABASE_URL" not in environ, name
            assert superuser_password not in "\0".join(environ.values()), name
            kind = "gateway" if name.startswith("pipeline") else name.split("-")[0]
            assert urlsplit(environ[db_roles.env_name(kind, "database")]).username == f"tailor_{kind}", name
        server = EmbeddedPostgres(home / "pg", int(env["TAILOR_PG_PORT"]))
        conn = await asyncpg.connect(server.dsn(DATABASE))
        try:
            sessions = await conn.fetch("SELECT DISTINCT usename, application_name FROM pg_stat_activity "
                                        "WHERE datname = $1 AND pid <> pg_backend_pid()", DATABASE)
        finally:
            await conn.close()
        users = {r["usename"] for r in sessions}
        assert users <= {f"tailor_{s}" for s in SERVICES}, sessions
        assert {f"tailor_{s}" for s in SERVICES} <= users, sessions
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(_without_password(server.dsn(DATABASE)))
    finally:
        code, output = launcher.stop()
    assert code == 0, output
