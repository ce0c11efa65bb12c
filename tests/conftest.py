"""Shared fixtures: a real PostgreSQL (embedded by default, or TAILOR_TEST_DATABASE_URL) and a fresh database per run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest

from shared.ports import free_port
from shared.runtime import start_built, stop_built
from tests.internal_auth import keys, tenant_md  # noqa: F401 - tenant_md: the metadata internal callers send

# The test keypair, before anything is built: in-process builds and `tailor up` read it from the environment.
keys()

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "external-data"


@pytest.fixture(scope="session")
def pg_server_dsn():
    """DSN of a database server's admin database: TAILOR_TEST_DATABASE_URL, or an embedded server started here."""
    url = os.environ.get("TAILOR_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from shared.embedded_pg import EmbeddedPostgres

    data_dir = ROOT / ".tailor" / f"test-pg-{os.getpid()}"
    server = EmbeddedPostgres(data_dir=data_dir, port=free_port())
    server.start()
    try:
        yield server.admin_dsn
    finally:
        server.stop()
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
        server.password_file.unlink(missing_ok=True)


@pytest.fixture(scope="session")
async def database_url(pg_server_dsn):
    """A fresh database for this test session, dropped afterwards. Its URL is a superuser's: services built with it
    SET ROLE to their own least-privilege roles (shared.db), so a missing grant fails here as in production."""
    name = f"tailor_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base, _, _ = pg_server_dsn.rpartition("/")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="module")
async def suite(database_url):
    """The five services and the gateway in this process (tests/suite.py), started once per test module; a module
    that needs other settings defines its own."""
    from tests.suite import Suite

    s = await Suite(database_url).start()
    yield s
    await s.stop()


@pytest.fixture
def tenant():
    """A fresh tenant id per test, so tests never see each other's rows. It is also the tenant of the test's own
    in-process calls of use cases (as a server's auth sets it for every RPC), which row-level security needs."""
    from shared import context as ctx

    tenant_id = f"t_{uuid.uuid4().hex[:12]}"
    token = ctx.tenant_var.set(tenant_id)
    yield tenant_id
    ctx.tenant_var.reset(token)




@contextlib.asynccontextmanager
async def serving(built, stub_class):
    """Serves a built service on 127.0.0.1:0 and yields a stub on a real channel to it; stops it afterwards."""
    running, tasks = await start_built(built)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield stub_class(channel)
    finally:
        await channel.close()
        await stop_built(built, running, tasks, grace=0)


@contextlib.asynccontextmanager
async def schema_connection(database_url: str, schema: str):
    """A direct connection with the service's schema on its search path, to check rows afterwards."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        yield conn
    finally:
        await conn.close()


async def wait_for(check, timeout: float = 20.0):
    """Polls the coroutine function `check` until it returns something truthy (returned) or timeout (its last)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


def struct(value: dict):
    """A google.protobuf.Struct holding value."""
    from google.protobuf import struct_pb2

    out = struct_pb2.Struct()
    out.update(value)
    return out
