"""The composition-root plumbing every service shares: migrate, build, serve until signalled, close."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from shared import db, db_roles, log
from shared.server import Authenticator, RunningServer, Service, run_until_signal, start_server
from shared.settings import env_bool, env_float, env_str, service_port

# Python collects its youngest generation every 700 net container allocations by default. A batch page allocates
# tens of thousands (dicts, rows, messages) that live across awaits, so each young collection promoted the page's live
# objects toward the old generation, which was then scanned again and again: about a fifth of the gateway's CPU
# during a batch job. Every 20,000 it is about 2% (cyclic garbage still goes at the next young collection).
GC_THRESHOLDS = (20_000, 20, 10)


@dataclass
class Built:
    """What a service's build() returns: its servicers and how to release what it holds."""

    services: list[Service]
    close: Callable[[], Awaitable[None]]
    # Checks every call (the domain services: service_auth.verifier_from_env().authenticate); there is no default,
    # so that no service is ever served open by omission.
    authenticate: Authenticator
    generic_handlers: list[grpc.GenericRpcHandler] = field(default_factory=list)
    extra_reflection_names: list[str] = field(default_factory=list)
    # The descriptors reflection serves (shared.reflection.Descriptors; None: every contract).
    reflection_pool: object | None = None
    # Started after the server is up (for example the gateway's pipeline worker); cancelled on stop.
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Other ports the service listens on, by name (the gateway's "http"), bound when built.
    ports: dict[str, int] = field(default_factory=dict)
    # Called when the server starts draining: ends the streams that would otherwise hold the drain for its whole
    # grace (a watch that clients simply open again, elsewhere).
    draining: list[Callable[[], None]] = field(default_factory=list)


def _setting(name: str) -> str:
    # The variable, else the same line of the env file TAILOR_DATABASE_ENV_FILE names (as `tailor db bootstrap`
    # writes it; docker compose shares it between the containers).
    value = env_str(name, "")
    if not value and env_str("TAILOR_DATABASE_ENV_FILE", ""):
        value = db_roles.read_env_file(Path(env_str("TAILOR_DATABASE_ENV_FILE"))).get(name, "")
    return value


def database_url(schema: str) -> str:
    """The runtime URL of the service of `schema`: TAILOR_<SCHEMA>_DATABASE_URL (its own login role, see
    `tailor db bootstrap`), else DATABASE_URL."""
    return _setting(db_roles.env_name(schema, "database")) or env_str("DATABASE_URL")


def migrate_url(schema: str, dsn: str) -> str:
    """The URL migrations of `schema` run with: TAILOR_<SCHEMA>_MIGRATE_URL (the schema owner's role), else dsn."""
    return _setting(db_roles.env_name(schema, "migrate")) or dsn


async def prepare_schema(dsn: str, schema: str, package_file: str, *, min_size: int = 2, max_size: int = 10):
    """Applies the service's migrations (the migrations/ folder beside package_file, as the schema's owner when
    TAILOR_<SCHEMA>_MIGRATE_URL is set) and opens its pool on dsn."""
    await db.migrate(migrate_url(schema, dsn), schema, Path(package_file).resolve().parent / "migrations")
    return await db.create_pool(dsn, schema, min_size=min_size, max_size=max_size)


async def start_built(built: Built, *, port: int = 0, host: str = "127.0.0.1",
                      reuse_port: bool = False) -> tuple[RunningServer, list[asyncio.Task]]:
    """Starts a built service (tests use port 0) and its background tasks."""
    running = await start_server(
        built.services,
        port=port,
        host=host,
        reuse_port=reuse_port,
        authenticate=built.authenticate,
        generic_handlers=built.generic_handlers,
        extra_reflection_names=built.extra_reflection_names,
        reflection_pool=built.reflection_pool,
    )
    running.draining.extend(built.draining)
    tasks = [asyncio.create_task(job()) for job in built.background]
    return running, tasks


async def stop_built(built: Built, running: RunningServer, tasks: list[asyncio.Task], grace: float = 5.0) -> None:
    """Drains the server, cancels background tasks and closes what the service holds."""
    await running.stop(grace)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await built.close()


def serve(name: str, build: Callable[[str], Awaitable[Built]],
          gc_thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Entry point of `python -m services.<name>`: reads settings, builds, serves until SIGTERM, drains. A service
    whose calls keep more objects alive at once than GC_THRESHOLDS allows for passes thresholds of its own."""
    log.configure(name, env_str("TAILOR_LOG_LEVEL", "INFO"))
    dsn = database_url(name)
    port = service_port(name)
    grace = env_float("TAILOR_DRAIN_SECONDS", 10.0, minimum=0.0)
    host = env_str("TAILOR_BIND_HOST", "0.0.0.0")
    reuse_port = env_bool("TAILOR_REUSE_PORT", False)
    ready_file = env_str("TAILOR_READY_FILE", "")  # set by the launcher, which supervises this process
    gc.set_threshold(*gc_thresholds)

    async def main() -> None:
        built = await build(dsn)
        running, tasks = await start_built(built, port=port, host=host, reuse_port=reuse_port)

        async def on_stop() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await built.close()

        await run_until_signal(running, grace=grace, on_stop=on_stop, database=dsn, ready_file=ready_file)

    asyncio.run(main())
