"""Composition root of the decision service: settings, schema, repository, use cases, servicer."""

from __future__ import annotations

from personalization.decision.v1 import decision_service_pb2 as pb
from personalization.decision.v1 import decision_service_pb2_grpc as pb_grpc
from services.decision.postgres import PostgresRepository
from services.decision.service import DecisionService
from services.decision.servicer import DecisionServicer
from shared.runtime import Built, prepare_schema
from shared.server import Service
from shared.settings import env_float

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name


async def build(dsn: str) -> Built:
    """Migrates the `decision` schema and wires the service."""
    cache_seconds = env_float("TAILOR_DECISION_CACHE_SECONDS", 2.0, minimum=0.0)
    pool = await prepare_schema(dsn, "decision", __file__)
    service = DecisionService(PostgresRepository(pool), cache_seconds=cache_seconds)
    return Built(
        services=[Service(pb_grpc.add_DecisionServiceServicer_to_server, DecisionServicer(service), SERVICE_NAME)],
        close=pool.close,
    )
