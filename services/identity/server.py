"""Composition root of the identity service."""

from __future__ import annotations

from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.match_models import MatchModels
from services.identity.postgres import PostgresRepository
from services.identity.postgres_privacy import PostgresPrivacy
from services.identity.privacy import IdentityPrivacy
from services.identity.service import IdentityService, Settings
from services.identity.servicer import IdentityServicer
from shared import service_auth
from shared.runtime import Built, prepare_schema
from shared.server import Service
from shared.settings import env_float, env_int, env_str

SCHEMA = "identity"

# A real-time batch of 1,000 subjects holds about 20,000 new container objects at its peak (subjects, records,
# candidates), so with the services' 20,000 (shared.runtime.GC_THRESHOLDS) a young collection ran in the middle of
# every batch and walked them all: 4-7 ms a batch plus the middle generation's, 0.3-0.5 s of a 50,000-record run
# (tests/bench/profiles/identity.txt). At 100,000 a batch's objects are gone before the count gets there (several
# concurrent batches too); the records the repository keeps (RECORD_CACHE) still count toward it as they grow.
GC_THRESHOLDS = (100_000, 20, 10)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name


def settings_from_env() -> Settings:
    """The identity settings, read once (TAILOR_IDENTITY_*)."""
    return Settings(
        default_region=env_str("TAILOR_IDENTITY_DEFAULT_REGION", "US"),
        max_cluster=env_int("TAILOR_IDENTITY_MAX_CLUSTER", 50_000, minimum=1),
        max_block=env_int("TAILOR_IDENTITY_MAX_BLOCK", 200, minimum=2),
        config_ttl_seconds=env_float("TAILOR_IDENTITY_CONFIG_TTL_SECONDS", 5.0, minimum=0.0),
    )


async def build(dsn: str, settings: Settings | None = None) -> Built:
    """Migrates the identity schema, opens its pool and wires repository, use cases and servicer."""
    settings = settings or settings_from_env()
    verifier = service_auth.verifier_from_env()
    pool = await prepare_schema(dsn, SCHEMA, __file__)
    repository = PostgresRepository(pool, max_block=settings.max_block)
    service = IdentityService(repository, settings=settings)
    privacy = IdentityPrivacy(PostgresPrivacy(pool), service)
    service.blocked = privacy.blocked
    servicer = IdentityServicer(service, privacy, MatchModels(repository, service))
    return Built(
        services=[Service(pb_grpc.add_IdentityServiceServicer_to_server, servicer, SERVICE_NAME)],
        close=pool.close,
        authenticate=verifier.authenticate,
    )
