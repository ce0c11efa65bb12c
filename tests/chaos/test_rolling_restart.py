"""A rolling restart of every process of `tailor up` (SIGHUP) under load: a client with gRPC retries enabled sees
no error, and every event it was acknowledged is stored."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.decision.v1 import decision_service_pb2_grpc as decision_grpc
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as profile_grpc
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from shared import client
from tests.integration.launcher.launched import launch, launcher_env, running

CALL_TIMEOUT = 30.0


def _event(message_id: str, email: str) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=ts,
                            identities=[common_pb2.Identity(type="email", value=email)])


async def test_a_rolling_restart_under_load_costs_no_error_and_no_acknowledged_event(database_url, tmp_path):
    launcher = launch(launcher_env(tmp_path / "home", database_url), tmp_path / "ready.json")
    try:
        ready = await launcher.wait_ready()
        before = dict(ready["pids"])
        md = (("authorization", f"Bearer {ready['api_key']}"),)
        # What a user's client does: the standard retry policy for UNAVAILABLE, as in the gateway's own channels.
        channel = grpc.aio.insecure_channel(ready["addresses"]["gateway"], options=client.channel_options())
        gateway = gw_grpc.GatewayServiceStub(channel)
        run = uuid.uuid4().hex[:8]
        known = common_pb2.Identity(type="email", value=f"known-{run}@x.io")
        await gateway.IngestEvents(gw.IngestEventsRequest(events=[_event(f"{run}-known", known.value)]),
                                   metadata=md, timeout=CALL_TIMEOUT)
        deadline = time.monotonic() + 30
        while True:  # the known individual is processed before the restart begins
            try:
                await gateway.GetProfile(gw.GetProfileRequest(individual_id=known), metadata=md, timeout=5)
                break
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline, error
                await asyncio.sleep(0.1)

        # One call per service, each through the gateway: its own work, and its forwarding to the other four.
        calls = {
            "ingest": None,
            "profile": lambda: gateway.GetProfile(gw.GetProfileRequest(individual_id=known), metadata=md,
                                                  timeout=CALL_TIMEOUT),
            "identity": lambda: identity_grpc.IdentityServiceStub(channel).ListIdentityTypes(
                identity_pb.ListIdentityTypesRequest(), metadata=md, timeout=CALL_TIMEOUT),
            "profile_graph": lambda: profile_grpc.ProfileGraphServiceStub(channel).ListInsights(
                profile_pb.ListInsightsRequest(), metadata=md, timeout=CALL_TIMEOUT),
            "decision": lambda: decision_grpc.DecisionServiceStub(channel).ListPoints(
                decision_pb.ListPointsRequest(), metadata=md, timeout=CALL_TIMEOUT),
            "recommender": lambda: rec_grpc.RecommenderServiceStub(channel).ListRecommenders(
                rec_pb.ListRecommendersRequest(), metadata=md, timeout=CALL_TIMEOUT),
        }
        acked: set[str] = set()
        errors: list[str] = []
        done: dict[str, int] = {name: 0 for name in calls}
        stop = asyncio.Event()

        async def load(name: str) -> None:
            n = 0
            while not stop.is_set():
                try:
                    if name == "ingest":
                        ids = [f"{run}-{n}-{i}" for i in range(20)]
                        n += 1
                        reply = await gateway.IngestEvents(gw.IngestEventsRequest(
                            events=[_event(m, f"{m}@x.io") for m in ids]), metadata=md, timeout=CALL_TIMEOUT)
                        acked.update(a.message_id for a in reply.acks)
                    else:
                        await calls[name]()
                    done[name] += 1
                except grpc.aio.AioRpcError as error:
                    errors.append(f"{name}: {error.code().name}: {error.details()}")
                await asyncio.sleep(0.02)

        loads = [asyncio.create_task(load(name)) for name in calls]
        await asyncio.sleep(1.0)
        start = len(launcher.lines)
        launcher.proc.send_signal(1)  # SIGHUP: the rolling restart
        # About 15 s on an idle 2-core machine; far longer when other test runs share its cores.
        await launcher.wait_line("rolling restart done", timeout=180, start=start)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*loads)
        await channel.close()
        after = launcher.ready

        assert errors == [], errors[:10]
        assert min(done.values()) > 10, done
        # Every process was replaced, and every predecessor has exited.
        assert set(after["pids"]) == set(before)
        assert all(after["pids"][name] != pid for name, pid in before.items())
        assert not [name for name, pid in before.items() if running(pid)]
        conn = await asyncpg.connect(database_url)
        try:
            stored = {r["message_id"] for r in await conn.fetch(
                "SELECT message_id FROM gateway.inbox WHERE message_id LIKE $1", f"{run}-%")}
        finally:
            await conn.close()
        assert len(acked) > 100
        assert acked - stored == set()
    finally:
        code, output = launcher.stop()
    assert code == 0, output
