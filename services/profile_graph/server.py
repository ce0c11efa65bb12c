"""Composition root of the profile graph: migrate its schema, open the pool, wire store, use cases and servicer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.as_of import ProfilesAsOf
from services.profile_graph.postgres import PostgresStore
from services.profile_graph.postgres_as_of import PostgresHistory
from services.profile_graph.postgres_privacy import PostgresPrivacy
from services.profile_graph.service import ProfileGraph, _utcnow
from services.profile_graph.servicer import ProfileGraphServicer
from shared import db, service_auth
from shared.log import get_logger
from shared.runtime import Built, prepare_schema
from shared.server import Service
from shared.settings import env_int

SCHEMA = "profile_graph"
FULL_NAME = pb.DESCRIPTOR.services_by_name["ProfileGraphService"].full_name

log = get_logger("profile_graph")


async def refresh_loop(graph: ProfileGraph, every_seconds: int) -> None:
    """The scheduled full recompute: lets old events age out of windowed insights and the segments that read them."""
    with db.all_tenants():  # every tenant's profiles
        await _refresh_loop(graph, every_seconds)


async def _refresh_loop(graph: ProfileGraph, every_seconds: int) -> None:
    while True:
        await asyncio.sleep(every_seconds)
        try:
            refreshed = await graph.recompute.refresh()
            log.info("profiles_refreshed", individuals=refreshed)
        except Exception:  # a failed round is retried at the next tick
            log.exception("profiles_refresh_failed")


async def item_insight_loop(graph: ProfileGraph, every_ms: int) -> None:
    """Keeps item insights current: recomputes the items that events touched since the last round."""
    with db.all_tenants():  # the items of every tenant that had events
        await _item_insight_loop(graph, every_ms)


async def _item_insight_loop(graph: ProfileGraph, every_ms: int) -> None:
    while True:
        await asyncio.sleep(every_ms / 1000)
        try:
            await graph.recompute.flush_item_insights()
        except Exception:  # the items are recomputed again by the next full recompute
            log.exception("item_insights_failed")


async def build(dsn: str, *, clock: Callable[[], datetime] = _utcnow) -> Built:
    """Builds the profile graph service on the database at dsn (clock: for tests that move time on)."""
    verifier = service_auth.verifier_from_env()
    pool_min = env_int("TAILOR_PROFILE_GRAPH_POOL_MIN", 2, minimum=1)
    pool_max = env_int("TAILOR_PROFILE_GRAPH_POOL_MAX", 10, minimum=pool_min)
    refresh_seconds = env_int("TAILOR_PROFILE_GRAPH_REFRESH_SECONDS", 3600, minimum=0)
    objects_per_type = env_int("TAILOR_PROFILE_GRAPH_OBJECTS_PER_TYPE", 100, minimum=1)
    item_flush_ms = env_int("TAILOR_PROFILE_GRAPH_ITEM_FLUSH_MS", 1000, minimum=10)
    pool = await prepare_schema(dsn, SCHEMA, __file__, min_size=pool_min, max_size=pool_max)
    store = PostgresStore(pool)
    graph = ProfileGraph(store, clock=clock, objects_per_type=objects_per_type)
    with db.all_tenants():  # every tenant that had insights before partials existed
        rebuilt = await graph.recompute.rebuild_pending_partials()
    if rebuilt:
        log.info("insight_partials_rebuilt", tenants=rebuilt)

    async def close() -> None:
        await store.feed.close()
        await pool.close()

    background = [lambda: item_insight_loop(graph, item_flush_ms)]
    if refresh_seconds:
        background.append(lambda: refresh_loop(graph, refresh_seconds))
    return Built(
        services=[Service(pb_grpc.add_ProfileGraphServiceServicer_to_server, ProfileGraphServicer(graph, PostgresPrivacy(pool), ProfilesAsOf(store, PostgresHistory(pool))), FULL_NAME)],
        close=close,
        authenticate=verifier.authenticate,
        background=background,
        draining=[store.feed.end_streams],
    )
