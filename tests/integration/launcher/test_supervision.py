"""Supervision and replicas under `tailor up`: a killed service comes back while the rest keeps serving, and
calls to a service with two replicas reach both."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
from tests.integration.launcher.launched import health, launch, launcher_env, running


def _event(message_id: str, email: str) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=ts,
                            identities=[common_pb2.Identity(type="email", value=email)])


async def test_a_killed_service_is_restarted_while_the_gateway_keeps_acknowledging(database_url, tmp_path):
    launcher = launch(launcher_env(tmp_path / "home", database_url, TAILOR_PIPELINE_WORKERS="0"),
                      tmp_path / "ready.json")
    try:
        ready = await launcher.wait_ready()
        md = (("authorization", f"Bearer {ready['api_key']}"),)
        killed = ready["pids"]["profile_graph"]
        os.kill(killed, signal.SIGKILL)
        async with grpc.aio.insecure_channel(ready["addresses"]["gateway"]) as channel:
            gateway = gw_grpc.GatewayServiceStub(channel)
            # Ingest needs only the gateway and the database: it goes on while the profile graph is down.
            run = uuid.uuid4().hex[:8]
            for i in range(10):
                reply = await gateway.IngestEvents(gw.IngestEventsRequest(events=[_event(f"{run}-{i}", f"{run}@x.io")]),
                                                   metadata=md, timeout=10)
                assert [a.status for a in reply.acks] == [gw.ACK_STATUS_STORED]
                await asyncio.sleep(0.05)
            await launcher.wait_line("profile_graph (pid", timeout=10)
            await launcher.wait_line("profile_graph restarted", timeout=15)
            deadline = time.monotonic() + 30
            while launcher.ready["pids"]["profile_graph"] == killed:
                assert time.monotonic() < deadline, launcher.output
                await asyncio.sleep(0.1)
            fresh = launcher.ready["pids"]["profile_graph"]
            while await health(ready["addresses"]["profile_graph"]) != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, launcher.output
                await asyncio.sleep(0.1)
            # The events acknowledged meanwhile reach the profile once it is back.
            while True:
                try:
                    profile = await gateway.GetProfile(gw.GetProfileRequest(
                        individual_id=common_pb2.Identity(type="email", value=f"{run}@x.io"), event_limit=20),
                        metadata=md, timeout=10)
                    if len(profile.events) == 10:
                        break
                except grpc.aio.AioRpcError as error:
                    assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), error
                assert time.monotonic() < deadline, launcher.output
                await asyncio.sleep(0.2)
        assert "was killed by SIGKILL" in launcher.output
        assert running(fresh) and not running(killed)
        assert launcher.ready["restarts"]["profile_graph"] == 1
    finally:
        code, output = launcher.stop()
    assert code == 0, output


async def test_calls_are_balanced_over_two_replicas_of_a_service(database_url, tmp_path):
    home = tmp_path / "home"
    launcher = launch(launcher_env(home, database_url, TAILOR_PIPELINE_WORKERS="0", TAILOR_IDENTITY_REPLICAS="2"),
                      tmp_path / "ready.json")
    try:
        ready = await launcher.wait_ready()
        assert len(ready["replica_addresses"]["identity"]) == 2
        assert {"identity", "identity-2"} <= set(ready["pids"])
        md = (("authorization", f"Bearer {ready['api_key']}"),)
        async with grpc.aio.insecure_channel(ready["addresses"]["gateway"]) as channel:
            # The identity admin RPC, forwarded by the gateway over its round_robin channel.
            stub = identity_grpc.IdentityServiceStub(channel)
            # round_robin spreads calls over the replicas it is connected to: a connection attempt that found a
            # replica not yet listening retries after a backoff of about a second, and calls meanwhile all go to
            # the other one. Another RPC for 3 s first, so the counted calls see both connected.
            warm_until = time.monotonic() + 3.0
            while time.monotonic() < warm_until:
                await stub.ListMergeEvents(identity_pb.ListMergeEventsRequest(), metadata=md, timeout=10)
                await asyncio.sleep(0.05)
            for _ in range(20):
                await stub.ListIdentityTypes(identity_pb.ListIdentityTypesRequest(), metadata=md, timeout=10)
    finally:
        code, output = launcher.stop()
    assert code == 0, output
    calls = {name: (home / "logs" / f"{name}.log").read_text().count("IdentityService/ListIdentityTypes")
             for name in ("identity", "identity-2")}
    assert sum(calls.values()) == 20
    assert min(calls.values()) >= 5, calls
