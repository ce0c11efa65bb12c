"""Composition root of the decision service: settings, schema, repository, use cases, servicer."""

from __future__ import annotations

from personalization.decision.v1 import decision_service_pb2 as pb
from personalization.decision.v1 import decision_service_pb2_grpc as pb_grpc
from services.decision.postgres import PostgresRepository
from services.decision.postgres_privacy import PostgresPrivacy
from services.decision.postgres_replay import PostgresReplayLog
from services.decision.replay import DraftQualifier, ReplayLog
from services.decision.service import DecisionService
from services.decision.servicer import DecisionServicer
from shared import db, service_auth
from shared.runtime import Built, prepare_schema
from shared.server import Service
from shared.settings import env_bool, env_float

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name


async def build(dsn: str) -> Built:
    """Migrates the `decision` schema and wires the service."""
    verifier = service_auth.verifier_from_env()
    cache_seconds = env_float("TAILOR_DECISION_CACHE_SECONDS", 2.0, minimum=0.0)
    durable_log = env_bool("TAILOR_DECISION_LOG_DURABLE", False)
    pool = await prepare_schema(dsn, "decision", __file__)
    # The decision log and outcomes are written on their own pool, by default without waiting for the WAL flush
    # (synchronous_commit off): a commit costs ~0.1 ms instead of an fsync (~3 ms on the decide path). Only a
    # crash of PostgreSQL itself can lose the last ~0.6 s of log rows; nothing is ever corrupted.
    log_pool = await db.create_pool(dsn, "decision", min_size=1, max_size=4, application_name="tailor-decision-log",
                                    server_settings={"synchronous_commit": "on" if durable_log else "off"})
    repo = PostgresRepository(pool, log_pool)
    service = DecisionService(repo, cache_seconds=cache_seconds)
    replay = (DraftQualifier(repo), ReplayLog(repo, PostgresReplayLog(pool)))

    async def close() -> None:
        await log_pool.close()
        await pool.close()

    return Built(
        services=[Service(pb_grpc.add_DecisionServiceServicer_to_server, DecisionServicer(service, PostgresPrivacy(pool), replay), SERVICE_NAME)],
        close=close,
        authenticate=verifier.authenticate,
    )
