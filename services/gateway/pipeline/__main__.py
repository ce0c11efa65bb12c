"""`python -m services.gateway.pipeline`: one pipeline worker process (health on TAILOR_PIPELINE_PORT).

Health follows the database (NOT_SERVING while it does not answer); SIGTERM lets chunks in flight finish and frees
the worker's partitions at once; a worker loop that ends by itself ends the process, for the supervisor to restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from services.gateway.pipeline.apply import MergePropagation, Pipeline
from services.gateway.pipeline.sweeper import MergeSweeper
from services.gateway.pipeline.worker import PartitionWorker, WorkerSettings
from services.gateway.postgres import GatewayStore
from services.gateway.postgres_inbox import InboxStore
from services.gateway.server import SERVICE_NAMES, domain_stubs
from shared import client, log, service_auth
from shared.runtime import database_url, prepare_schema
from shared.server import run_until_signal, start_server
from shared.settings import env_bool, env_float, env_int, env_str, service_address

GATEWAY_PACKAGE = str(Path(__file__).resolve().parents[1] / "__init__.py")


async def main() -> None:
    log.configure("pipeline", env_str("TAILOR_LOG_LEVEL", "INFO"))
    logger = log.get_logger("gateway.pipeline")
    dsn = database_url("gateway")
    grace = env_float("TAILOR_DRAIN_SECONDS", 10.0, minimum=0.0)
    service_auth.use_signer(service_auth.signer_from_env())  # the worker signs its calls as the gateway does
    pool = await prepare_schema(dsn, "gateway", GATEWAY_PACKAGE,
                                max_size=env_int("TAILOR_PIPELINE_POOL_SIZE", 10, minimum=2))
    channels = {name: client.channel(service_address(name)) for name in SERVICE_NAMES}
    stubs = domain_stubs(channels)
    worker = PartitionWorker(dsn, InboxStore(pool), Pipeline(stubs), WorkerSettings.from_env())
    merges = MergePropagation(stubs.profile, stubs.decision, stubs.identity, stubs.recommender)
    sweeper = MergeSweeper(dsn, GatewayStore(pool), merges)
    health = await start_server([], port=env_int("TAILOR_PIPELINE_PORT", 0, minimum=0, maximum=65535),
                                host=env_str("TAILOR_BIND_HOST", "0.0.0.0"), authenticate=None,
                                reuse_port=env_bool("TAILOR_REUSE_PORT", False))
    working = asyncio.create_task(worker.run())
    sweeping = asyncio.create_task(sweeper.run())

    def ended(_task: asyncio.Task) -> None:
        if not worker.stopping:
            logger.error("pipeline_worker_loop_ended")
            os.kill(os.getpid(), signal.SIGTERM)

    working.add_done_callback(ended)
    logger.info("pipeline_worker_started", worker=worker.worker_id, port=health.port)

    async def on_stop() -> None:
        await worker.stop(grace)
        for task in (working, sweeping):
            task.cancel()
        await asyncio.gather(working, sweeping, return_exceptions=True)
        for channel in channels.values():
            await channel.close()
        await pool.close()
        logger.info("pipeline_worker_stopped", worker=worker.worker_id)

    await run_until_signal(health, grace=0.0, on_stop=on_stop, database=dsn,
                           ready_file=env_str("TAILOR_READY_FILE", ""))


if __name__ == "__main__":
    asyncio.run(main())
