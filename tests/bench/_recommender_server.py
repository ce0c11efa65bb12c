"""A recommender served for the benches: an embedded PostgreSQL in a temporary folder and the real gRPC server."""

from __future__ import annotations

import contextlib

from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from services.recommender.server import Settings, build
from tests.bench._common import scratch_database, served


@contextlib.asynccontextmanager
async def served_recommender():
    """Yields (stub, recommender use cases, dsn) of a recommender on a fresh embedded database."""
    async with scratch_database("tailor-rec-bench-") as dsn:
        built = await build(dsn, Settings(cache_seconds=60.0, schedule_seconds=0.0, model_check_seconds=60.0))
        async with served(built, pb_grpc.RecommenderServiceStub) as stub:
            yield stub, built.services[0].servicer.recommender, dsn
