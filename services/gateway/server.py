"""Composition root of the gateway: store, keys, ingest, pipeline worker, decider, passthrough."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.decision.v1 import decision_service_pb2_grpc as decision_grpc
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as profile_grpc
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from services.gateway.activation import Activations
from services.gateway.auth import IDENTITY, METHOD_SCOPES, PROFILE, KeyService
from services.gateway.batch import BatchJobs
from services.gateway.console import Console
from services.gateway.dead_letters import DeadLetters
from services.gateway.decide import Decider
from services.gateway.decision_log import DecisionLogWriter
from services.gateway.http import ConnectApp, Dispatcher, HttpServer
from services.gateway.ingest import IdentityTypes, Ingest
from services.gateway.pages import pages
from services.gateway.passthrough import Passthrough, served_pool
from services.gateway.pipeline import MergePropagation, MergeSweeper, PartitionWorker, Pipeline, WorkerSettings
from services.gateway.ports import AfterHook, RecommenderPort, Stubs
from services.gateway.postgres import GatewayStore
from services.gateway.postgres_batch import PostgresBatch
from services.gateway.postgres_inbox import InboxStore
from services.gateway.postgres_privacy import PostgresPrivacy
from services.gateway.postgres_quotas import PostgresQuotas
from services.gateway.postgres_tenants import TenantStore
from services.gateway.privacy import Privacy
from services.gateway.quotas import Quotas
from services.gateway.recommend import Recommendations
from services.gateway.records import RecordSync
from services.gateway.servicer import GatewayServicer
from services.gateway.tenants import Tenants, ensure_operator_key
from shared import client, service_auth
from shared.runtime import Built, prepare_schema
from shared.server import Service
from shared.settings import env_bool, env_float, env_int, env_str, service_address

SERVICE_NAMES = {
    "identity": identity_pb.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    "profile_graph": profile_pb.DESCRIPTOR.services_by_name["ProfileGraphService"].full_name,
    "recommender": rec_pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name,
    "decision": decision_pb.DESCRIPTOR.services_by_name["DecisionService"].full_name,
}


@dataclass(frozen=True)
class Settings:
    """Gateway settings, read once from the environment."""

    addresses: dict[str, str]
    auth_cache_seconds: float
    run_worker: bool
    pool_size: int
    resolve_cache_seconds: float
    profile_cache_seconds: float
    operator_key_file: str

    @classmethod
    def from_env(cls, addresses: dict[str, str] | None = None) -> "Settings":
        return cls(
            addresses=addresses or {name: service_address(name) for name in SERVICE_NAMES},
            auth_cache_seconds=env_float("TAILOR_GATEWAY_AUTH_CACHE_SECONDS", 5.0, minimum=0.0),
            run_worker=env_bool("TAILOR_GATEWAY_RUN_WORKER", True),
            pool_size=env_int("TAILOR_GATEWAY_POOL_SIZE", 10, minimum=2),
            resolve_cache_seconds=env_float("TAILOR_GATEWAY_RESOLVE_CACHE_SECONDS", 1.0, minimum=0.0),
            profile_cache_seconds=env_float("TAILOR_GATEWAY_PROFILE_CACHE_SECONDS", 1.0, minimum=0.0),
            operator_key_file=env_str("TAILOR_OPERATOR_KEY_FILE", ""),
        )


def domain_stubs(channels: dict[str, grpc.aio.Channel]) -> Stubs:
    """The gateway's client ports over channels to the four domain services."""
    return Stubs(identity=identity_grpc.IdentityServiceStub(channels["identity"]),
                 profile=profile_grpc.ProfileGraphServiceStub(channels["profile_graph"]),
                 recommender=rec_grpc.RecommenderServiceStub(channels["recommender"]),
                 decision=decision_grpc.DecisionServiceStub(channels["decision"]))


def items_to_recommender(recommender: RecommenderPort) -> AfterHook:
    """After UpsertItems on the profile graph: the recommender keeps the attributes it filters and ranks on (the
    catalog lives in the profile graph)."""
    async def hook(request: bytes, _reply: bytes | float) -> None:
        upsert = profile_pb.UpsertItemsRequest.FromString(request)
        items = []
        for item in upsert.items:
            copy = rec_pb.Item(item_id=item.item_id, attributes=item.attributes)
            if item.name:
                copy.attributes["name"] = item.name  # so recommendations come back with their display name
            items.append(copy)
        await recommender.UpsertItems(rec_pb.UpsertItemsRequest(items=items))

    return hook


async def build(dsn: str, addresses: dict[str, str] | None = None, *, http_port: int | None = None,
                http_host: str | None = None) -> Built:
    """The gateway; with http_port (0: any free one), also its HTTP port (services/gateway/http.py)."""
    settings = Settings.from_env(addresses)
    # The gateway signs the internal token of every call it makes to the domain services, for the call's tenant.
    service_auth.use_signer(service_auth.signer_from_env())
    pool = await prepare_schema(dsn, "gateway", __file__, max_size=settings.pool_size)
    store = GatewayStore(pool)
    keys = KeyService(store, settings.auth_cache_seconds)
    if settings.operator_key_file:
        # A deployment step done by the gateway itself at start, so no tool needs the database: the operator key
        # (CreateTenant, ListTenants, SetTenantQuota) stored in this file is kept while it works, else a new one is
        # written there (mode 0600) for `tailor tenant ...` to read.
        await ensure_operator_key(keys, Path(settings.operator_key_file))
    channels = {name: client.channel(settings.addresses[name]) for name in SERVICE_NAMES}
    stubs = domain_stubs(channels)
    identity, profile, recommender, decision = stubs.identity, stubs.profile, stubs.recommender, stubs.decision
    merges = MergePropagation(profile, decision, identity, recommender)
    sweeper = MergeSweeper(dsn, store, merges)
    passthrough = Passthrough({SERVICE_NAMES[name]: ch for name, ch in channels.items()}, after={
        PROFILE + "UpsertItems": items_to_recommender(recommender),
        IDENTITY + "Unmerge": merges.drain,
        IDENTITY + "RunRuleset": merges.drain,
    })
    worker = PartitionWorker(dsn, InboxStore(pool), Pipeline(stubs), WorkerSettings.from_env())
    log_writer = DecisionLogWriter(decision)
    quotas = Quotas(PostgresQuotas(pool))
    batch = BatchJobs(dsn, PostgresBatch(pool), stubs, log_writer)
    activations = Activations(pool, profile)
    decider = Decider(stubs, log_writer, quotas, resolve_cache_seconds=settings.resolve_cache_seconds,
                      profile_cache_seconds=settings.profile_cache_seconds)
    identity_types = IdentityTypes(identity)
    dead_letters = DeadLetters(InboxStore(pool))
    servicer = GatewayServicer(keys, Ingest(store, identity_types), decider, RecordSync(store, identity, identity_types),
                               batch, quotas, activations,
                               dead_letters,
                               Privacy(PostgresPrivacy(pool), identity, profile, recommender, decision, decider,
                                       log_writer),
                               Recommendations(decider), Tenants(keys, TenantStore(pool)))
    gateway_name = pb.DESCRIPTOR.services_by_name["GatewayService"].full_name

    async def close() -> None:
        await log_writer.flush()
        await quotas.flush()
        await activations.close()
        await decider.profiles.close()
        for channel in channels.values():
            await channel.close()
        await pool.close()

    built = Built(
        services=[Service(pb_grpc.add_GatewayServiceServicer_to_server, servicer, gateway_name)],
        close=close,
        authenticate=keys.authenticate,
        generic_handlers=[passthrough],
        extra_reflection_names=passthrough.service_names,
        # Reflection describes exactly what this port serves: the forwarded services with only their forwarded RPCs.
        reflection_pool=served_pool(list(METHOD_SCOPES), [gateway_name, *passthrough.service_names]),
        # Batch jobs, activations and the merge sweeper each elect one leader per database; the pipeline worker is
        # one of N partition workers (off here when `python -m services.gateway.pipeline` processes run instead).
        background=[log_writer.run, quotas.run, batch.run, activations.run, sweeper.run, dead_letters.export_metrics,
                    *([worker.run] if settings.run_worker else [])],
    )
    if http_port is not None:
        dispatcher = Dispatcher(built)
        http = HttpServer(ConnectApp(dispatcher, keys.origins, pages(Console(dispatcher).app())),  # type: ignore[arg-type]
                          http_host or env_str("TAILOR_BIND_HOST", "0.0.0.0"), http_port,
                          reuse_port=env_bool("TAILOR_REUSE_PORT", False))
        built.ports["http"] = http.port
        built.background.append(http.run)
    return built
