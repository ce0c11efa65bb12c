"""Composition root of the profile graph: migrate its schema, open the pool, wire store, use cases and servicer."""

from __future__ import annotations

import asyncio

from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.postgres import PostgresStore
from services.profile_graph.service import ProfileGraph
from services.profile_graph.servicer import ProfileGraphServicer
from shared.log import get_logger
from shared.runtime import Built, prepare_schema
from shared.server import Service
from shared.settings import env_int

SCHEMA = "profile_graph"
FULL_NAME = pb.DESCRIPTOR.services_by_name["ProfileGraphService"].full_name

log = get_logger("profile_graph")


async def refresh_loop(graph: ProfileGraph, every_seconds: int) -> None:
    """Periodically lets old events age out of windowed insights and the segments that read them."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            refreshed = await graph.refresh_windowed_insights()
            log.info("windowed_insights_refreshed", individuals=refreshed)
        except Exception:  # noqa: BLE001 - a failed round is retried at the next tick
            log.exception("windowed_insights_refresh_failed")


async def build(dsn: str) -> Built:
    """Builds the profile graph service on the database at dsn."""
    pool_min = env_int("TAILOR_PROFILE_GRAPH_POOL_MIN", 2, minimum=1)
    pool_max = env_int("TAILOR_PROFILE_GRAPH_POOL_MAX", 10, minimum=pool_min)
    refresh_seconds = env_int("TAILOR_PROFILE_GRAPH_REFRESH_SECONDS", 3600, minimum=0)
    pool = await prepare_schema(dsn, SCHEMA, __file__, min_size=pool_min, max_size=pool_max)
    graph = ProfileGraph(PostgresStore(pool))
    return Built(
        services=[Service(pb_grpc.add_ProfileGraphServiceServicer_to_server, ProfileGraphServicer(graph), FULL_NAME)],
        close=pool.close,
        background=[lambda: refresh_loop(graph, refresh_seconds)] if refresh_seconds else [],
    )
