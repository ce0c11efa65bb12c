"""`python -m services.gateway.pipeline`: one pipeline worker process (health on TAILOR_PIPELINE_PORT)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from services.gateway.pipeline.apply import MergePropagation, Pipeline
from services.gateway.pipeline.sweeper import MergeSweeper
from services.gateway.pipeline.worker import PartitionWorker, WorkerSettings
from services.gateway.postgres import GatewayStore
from services.gateway.postgres_inbox import InboxStore
from services.gateway.server import SERVICE_NAMES, domain_stubs
from shared import client, log
from shared.runtime import prepare_schema
from shared.server import start_server
from shared.settings import env_float, env_int, env_str, service_address

GATEWAY_PACKAGE = str(Path(__file__).resolve().parents[1] / "__init__.py")


async def main() -> None:
    log.configure("pipeline", env_str("TAILOR_LOG_LEVEL", "INFO"))
    logger = log.get_logger("gateway.pipeline")
    dsn = env_str("DATABASE_URL")
    port = env_int("TAILOR_PIPELINE_PORT", 0, minimum=0, maximum=65535)
    grace = env_float("TAILOR_DRAIN_SECONDS", 10.0, minimum=0.0)
    settings = WorkerSettings.from_env()
    pool = await prepare_schema(dsn, "gateway", GATEWAY_PACKAGE, max_size=env_int("TAILOR_PIPELINE_POOL_SIZE", 10,
                                                                                   minimum=2))
    channels = {name: client.channel(service_address(name)) for name in SERVICE_NAMES}
    stubs = domain_stubs(channels)
    worker = PartitionWorker(dsn, InboxStore(pool), Pipeline(stubs), settings)
    sweeper = MergeSweeper(dsn, GatewayStore(pool), MergePropagation(stubs.profile, stubs.decision, stubs.identity))
    health = await start_server([], port=port, host=env_str("TAILOR_BIND_HOST", "0.0.0.0"), authenticate=None)
    working = asyncio.create_task(worker.run())
    sweeping = asyncio.create_task(sweeper.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("pipeline_worker_started", worker=worker.worker_id, port=health.port)
    await asyncio.wait([working, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    logger.info("pipeline_worker_draining", grace_s=grace)
    await health.health.enter_graceful_shutdown()
    await worker.stop(grace)
    for task in (working, sweeping):
        task.cancel()
    await asyncio.gather(working, sweeping, return_exceptions=True)
    await health.server.stop(0)
    for channel in channels.values():
        await channel.close()
    await pool.close()
    logger.info("pipeline_worker_stopped", worker=worker.worker_id)


if __name__ == "__main__":
    asyncio.run(main())
