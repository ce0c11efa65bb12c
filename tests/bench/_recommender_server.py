"""A recommender served for the benches: an embedded PostgreSQL in a temporary folder and the real gRPC server."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import grpc
from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc

from services.recommender.server import Settings, build
from shared.embedded_pg import EmbeddedPostgres
from shared.runtime import start_built, stop_built
from tests.bench._common import free_port  # noqa: E402



@contextlib.asynccontextmanager
async def served_recommender():
    """Yields (stub, recommender use cases, dsn) of a recommender on a fresh embedded database."""
    folder = Path(tempfile.mkdtemp(prefix="tailor-rec-bench-"))
    server = EmbeddedPostgres(data_dir=folder / "pg", port=free_port())
    server.start()
    try:
        dsn = await server.ensure_database("bench")
        built = await build(dsn, Settings(cache_seconds=60.0, schedule_seconds=0.0, model_check_seconds=60.0))
        running, tasks = await start_built(built, port=0)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}",
                                            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        servicer = built.services[0].servicer
        try:
            yield pb_grpc.RecommenderServiceStub(channel), servicer.recommender, dsn
        finally:
            await channel.close()
            await stop_built(built, running, tasks, grace=0)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
