"""Least-privilege database roles: per service schema S, `tailor_S_owner` owns S and runs its migrations, and
`tailor_S` (the service's login) may only read and write the rows of S's tables.

`bootstrap(admin_dsn, ...)` creates or repairs all of it, idempotently; `tailor db bootstrap` and the launcher call
it with an administrator's URL (a superuser, or a role with CREATEROLE that owns the database).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from shared.log import get_logger

log = get_logger("shared.db_roles")

SCHEMAS = ("gateway", "identity", "profile_graph", "recommender", "decision")
_LOCK = "tailor-db-bootstrap"
# Tables, partitioned tables, views, materialized views, foreign tables, sequences.
_RELKINDS = ("r", "p", "v", "m", "f", "S")


def owner_role(schema: str) -> str:
    """The role that owns schema `schema` and its objects, and runs its migrations."""
    return f"tailor_{schema}_owner"


def service_role(schema: str) -> str:
    """The login role of the service of schema `schema`: rows of its own tables only."""
    return f"tailor_{schema}"


def new_password() -> str:
    """A random password (URL-safe characters only, so it goes into a URL as is)."""
    return secrets.token_urlsafe(24)


async def _ensure_role(conn: asyncpg.Connection, role: str, password: str | None) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        try:
            await conn.execute(f'CREATE ROLE "{role}"')
        except asyncpg.DuplicateObjectError:  # another bootstrap of the same cluster created it meanwhile
            pass
    # Whatever an earlier version or a hand made, the role ends up as plain as this.
    await conn.execute(f'ALTER ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
                       "NOINHERIT")
    if password is not None:
        # A utility statement takes no parameters: format() quotes the literal.
        await conn.execute(await conn.fetchval("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
                                               role, password))


async def _bootstrap_schema(conn: asyncpg.Connection, schema: str) -> None:
    owner, service = owner_role(schema), service_role(schema)
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        # An administrator without superuser must be a member of a role to give it ownership.
        await conn.execute(f'GRANT "{owner}" TO CURRENT_USER')
    if await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
        await conn.execute(f'ALTER SCHEMA "{schema}" OWNER TO "{owner}"')
    else:
        await conn.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{owner}"')
    # Objects an earlier version created as the administrator move to the owner (a table takes its indexes and
    # the sequences of its identity columns along; those cannot move on their own).
    rows = await conn.fetch(
        """SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relkind::text = ANY($2::text[])
             AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = $3)
             AND (c.relkind <> 'S' OR NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                                  AND d.objid = c.oid AND d.deptype IN ('a', 'i')))""",
        schema, list(_RELKINDS), owner)
    for row in rows:
        kind = "SEQUENCE" if row["relkind"] == "S" else "TABLE"
        await conn.execute(f'ALTER {kind} "{schema}"."{row["relname"]}" OWNER TO "{owner}"')
    await conn.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC')
    await conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{service}"')
    await conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{service}"')
    await conn.execute(f'GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{service}"')
    await conn.execute(f'ALTER DEFAULT PRIVILEGES FOR ROLE "{owner}" IN SCHEMA "{schema}" '
                       f'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "{service}"')
    await conn.execute(f'ALTER DEFAULT PRIVILEGES FOR ROLE "{owner}" IN SCHEMA "{schema}" '
                       f'GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO "{service}"')


async def bootstrap(admin_dsn: str, schemas: Iterable[str] = SCHEMAS,
                    passwords: Mapping[str, str] | None = None) -> None:
    """Creates, or brings back to what they should be, the two roles and the schema of each of `schemas` in the
    database of admin_dsn. passwords maps role names to the password to (re)set; roles not named keep theirs."""
    passwords = passwords or {}
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", _LOCK)
        try:
            # PostgreSQL 15 and later already keep PUBLIC out of schema public; older ones do not.
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            for schema in schemas:
                for role in (owner_role(schema), service_role(schema)):
                    await _ensure_role(conn, role, passwords.get(role))
                async with conn.transaction():
                    await _bootstrap_schema(conn, schema)
                log.info("database_roles_ready", schema=schema)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _LOCK)
    finally:
        await conn.close()


def role_url(admin_dsn: str, role: str, password: str) -> str:
    """admin_dsn with its user and password replaced by role's (host, port, database and options kept)."""
    parts = urlsplit(admin_dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"))


def env_name(schema: str, kind: str) -> str:
    """TAILOR_<SCHEMA>_DATABASE_URL (kind "database") or TAILOR_<SCHEMA>_MIGRATE_URL (kind "migrate")."""
    return f"TAILOR_{schema.upper()}_{kind.upper()}_URL"


def service_urls(admin_dsn: str, passwords: Mapping[str, str], schemas: Iterable[str] = SCHEMAS) -> dict[str, str]:
    """The environment a deployment passes: each schema's runtime URL (its service role) and migration URL
    (its owner role), by variable name."""
    env = {}
    for schema in schemas:
        for kind, role in (("database", service_role(schema)), ("migrate", owner_role(schema))):
            env[env_name(schema, kind)] = role_url(admin_dsn, role, passwords[role])
    return env


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines (blank lines and # comments skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def write_secret_file(path: Path, text: str) -> None:
    """Writes text to path, readable and writable by its owner only (mode 0600, also when it existed)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def passwords_from_env(env: Mapping[str, str], schemas: Iterable[str] = SCHEMAS) -> dict[str, str]:
    """The role passwords held in the URLs of an env file written before (missing ones left out)."""
    from urllib.parse import unquote

    out = {}
    for schema in schemas:
        for kind in ("database", "migrate"):
            url = env.get(env_name(schema, kind))
            if url:
                parts = urlsplit(url)
                if parts.username and parts.password:
                    out[unquote(parts.username)] = unquote(parts.password)
    return out


async def bootstrap_env_file(admin_dsn: str, path: Path, schemas: Iterable[str] = SCHEMAS, *,
                             rotate: bool = False) -> dict[str, str]:
    """Bootstraps the roles and writes their URLs to the env file at path (mode 0600). Passwords already in that
    file are kept (and set again, so the file and the database agree) unless rotate; missing ones are generated.
    Returns the environment written."""
    schemas = tuple(schemas)
    known = {} if rotate or not path.exists() else passwords_from_env(read_env_file(path), schemas)
    passwords = {role: known.get(role) or new_password()
                 for schema in schemas for role in (owner_role(schema), service_role(schema))}
    await bootstrap(admin_dsn, schemas, passwords)
    env = service_urls(admin_dsn, passwords, schemas)
    lines = ["# Tailor database URLs, one login role per service (runtime) and per schema owner (migrations).",
             "# Written by `tailor db bootstrap`; keep this file secret."]
    lines += [f"{name}={value}" for name, value in env.items()]
    write_secret_file(path, "\n".join(lines) + "\n")
    return env
