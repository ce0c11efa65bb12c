"""Composition root of the recommender: settings, schema and pool, repository, use cases, servicer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from personalization.recommender.v1 import recommender_service_pb2 as pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from services.recommender.config import MAX_COUNT
from services.recommender.postgres import PostgresRepository
from services.recommender.postgres_privacy import PostgresPrivacy
from services.recommender.service import Recommender
from services.recommender.servicer import RecommenderServicer
from shared import db, service_auth
from shared.runtime import Built, prepare_schema
from shared.server import Service
from shared.settings import env_float, env_int

SCHEMA = "recommender"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name


@dataclass(frozen=True)
class Settings:
    """The recommender's settings, read once from the environment."""

    # Longest age of a tenant's cached global rankings, in seconds (0 reads them on every Recommend).
    cache_seconds: float = 1.0
    # How many items of each global ranking the cache keeps, so filters still leave enough to return.
    cache_items: int = 500
    # Longest age of a tenant's cached catalog (attributes for filters, similar items, new arrivals), in seconds.
    catalog_seconds: float = 10.0
    # How often a replica checks for a newer model version of a learned recommender, in seconds.
    model_check_seconds: float = 5.0
    # How often the scheduler looks for learned recommenders due for retraining, in seconds (0: never).
    schedule_seconds: float = 60.0
    # The seed of every random start in training and tuning (the same data and seed give the same model).
    seed: int = 42

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            cache_seconds=env_float("TAILOR_RECOMMENDER_CACHE_SECONDS", 1.0, minimum=0.0),
            cache_items=env_int("TAILOR_RECOMMENDER_CACHE_ITEMS", 500, minimum=MAX_COUNT, maximum=100_000),
            catalog_seconds=env_float("TAILOR_RECOMMENDER_CATALOG_SECONDS", 10.0, minimum=0.0),
            model_check_seconds=env_float("TAILOR_RECOMMENDER_MODEL_CHECK_SECONDS", 5.0, minimum=0.0),
            schedule_seconds=env_float("TAILOR_RECOMMENDER_SCHEDULE_SECONDS", 60.0, minimum=0.0),
            seed=env_int("TAILOR_RECOMMENDER_SEED", 42, minimum=0, maximum=2**31 - 1),
        )


async def build(dsn: str, settings: Settings | None = None) -> Built:
    """Migrates the recommender schema and wires the service (tests may pass their own settings)."""
    settings = settings or Settings.from_env()
    verifier = service_auth.verifier_from_env()
    pool = await prepare_schema(dsn, SCHEMA, __file__)
    recommender = Recommender(
        PostgresRepository(pool), cache_seconds=settings.cache_seconds, cache_items=settings.cache_items,
        catalog_seconds=settings.catalog_seconds, model_check_seconds=settings.model_check_seconds,
        seed=settings.seed,
    )
    servicer = RecommenderServicer(recommender, PostgresPrivacy(pool))

    async def schedule() -> None:
        with db.all_tenants():  # every tenant's learned recommenders
            await scheduled()

    async def scheduled() -> None:
        while settings.schedule_seconds:
            await asyncio.sleep(settings.schedule_seconds)
            try:
                await recommender.run_schedule()
            except Exception:  # the database may be briefly away; try again at the next tick
                logging.getLogger(__name__).exception("schedule_failed")

    return Built(
        services=[Service(pb_grpc.add_RecommenderServiceServicer_to_server, servicer, SERVICE_NAME)],
        close=pool.close,
        authenticate=verifier.authenticate,
        background=[schedule],
    )
