"""Starts the five services in this process on 127.0.0.1:0, wired to each other, for integration and e2e tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import grpc

from personalization.decision.v1 import decision_service_pb2_grpc as decision_grpc
from personalization.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as profile_grpc
from services.gateway.admin import create_tenant_with_key
from shared import context as ctx
from shared.runtime import start_built, stop_built
from tests.internal_auth import keys


@dataclass
class Suite:
    """Running servers plus a gateway channel; stubs for the public API and the admin passthrough."""

    dsn: str
    ports: dict[str, int] = field(default_factory=dict)
    _running: list = field(default_factory=list)
    channel: grpc.aio.Channel | None = None

    async def start(self, *, domain: bool = True) -> "Suite":
        from services.gateway import server as gateway

        keys()  # the internal keypair the builds read from the environment, as the launcher passes theirs
        addresses = {}
        if domain:
            from services.decision import server as decision
            from services.identity import server as identity
            from services.profile_graph import server as profile_graph
            from services.recommender import server as recommender

            for name, module in (("identity", identity), ("profile_graph", profile_graph),
                                 ("recommender", recommender), ("decision", decision)):
                await self._start(name, await module.build(self.dsn))
                addresses[name] = f"127.0.0.1:{self.ports[name]}"
        else:
            addresses = {n: "127.0.0.1:1" for n in ("identity", "profile_graph", "recommender", "decision")}
        built = await gateway.build(self.dsn, addresses, http_port=0, http_host="127.0.0.1")
        self.ports["http"] = built.ports["http"]
        await self._start("gateway", built)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.ports['gateway']}")
        return self

    async def _start(self, name, built):
        running, tasks = await start_built(built)
        self.ports[name] = running.port
        self._running.append((built, running, tasks))

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        for built, running, tasks in reversed(self._running):
            await stop_built(built, running, tasks, grace=0.5)

    async def new_tenant(self, scopes=("ingest", "decide", "admin")) -> tuple[str, tuple]:
        """A fresh tenant and the metadata that authenticates as it. It also becomes the tenant of the calling test's
        own in-process calls of use cases (as the gateway's auth sets it for every RPC), for row-level security."""
        tenant = f"t-{uuid.uuid4().hex[:12]}"
        _, secret = await create_tenant_with_key(self.dsn, tenant, scopes=scopes)
        ctx.tenant_var.set(tenant)
        return tenant, (("authorization", f"Bearer {secret}"),)

    async def buyers_and_banner(self, md) -> None:
        """A segment `buyers` (a purchase in 30 days) and a manual-content point `banner` whose fallback says Thanks:
        the set-up of the batch tests, over gRPC and HTTP."""
        from google.protobuf import duration_pb2

        from personalization.common.v1 import common_pb2
        from personalization.decision.v1 import decision_service_pb2 as decision_pb
        from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
        from tests.conftest import struct

        await self.profile_admin.UpsertInsight(profile_pb.UpsertInsightRequest(insight=profile_pb.Insight(
            name="purchases_30d", aggregate=profile_pb.AGGREGATE_COUNT, event_type=common_pb2.EVENT_TYPE_PURCHASE,
            window=duration_pb2.Duration(seconds=30 * 86400))), metadata=md)
        await self.profile_admin.UpsertSegment(profile_pb.UpsertSegmentRequest(segment=profile_pb.Segment(
            name="buyers", rule="insights.purchases_30d >= 1.0")), metadata=md)
        await self.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
            name="banner", type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
                fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))),
            metadata=md)
        await self.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
            point_name="banner", name="thanks", fallback=True, content=struct({"headline": "Thanks"}))), metadata=md)

    async def segment_reaches(self, md, name: str, count: int) -> bool:
        """Whether segment `name` reaches `count` members before wait_for's timeout."""
        from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
        from tests.conftest import wait_for

        async def reached():
            segments = await self.profile_admin.ListSegments(profile_pb.ListSegmentsRequest(), metadata=md)
            return any(s.name == name and s.member_count == count for s in segments.segments)

        return bool(await wait_for(reached))

    @property
    def gateway(self):
        return gateway_grpc.GatewayServiceStub(self.channel)

    @property
    def profile_admin(self):
        return profile_grpc.ProfileGraphServiceStub(self.channel)

    @property
    def decision_admin(self):
        return decision_grpc.DecisionServiceStub(self.channel)
