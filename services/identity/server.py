"""Composition root of the identity service."""

from __future__ import annotations

from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.postgres import PostgresRepository
from services.identity.service import IdentityService
from services.identity.servicer import IdentityServicer
from shared.runtime import Built, prepare_schema
from shared.server import Service

SCHEMA = "identity"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name


async def build(dsn: str) -> Built:
    """Migrates the identity schema, opens its pool and wires repository, use cases and servicer."""
    pool = await prepare_schema(dsn, SCHEMA, __file__)
    servicer = IdentityServicer(IdentityService(PostgresRepository(pool)))
    return Built(
        services=[Service(pb_grpc.add_IdentityServiceServicer_to_server, servicer, SERVICE_NAME)],
        close=pool.close,
    )
