"""Three immediate stops of the embedded PostgreSQL under ingest: the launcher restarts it, every answer during an
outage is UNAVAILABLE with RetryInfo, health says NOT_SERVING during it and SERVING after, no acked event is lost."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from shared.embedded_pg import EmbeddedPostgres
from shared.errors import retry_delay_of, status_details
from tailor_cli.launcher import DATABASE, SERVICES
from tests.conftest import ROOT
from tests.integration.launcher.launched import health, launch, launcher_env

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OUTAGES = 3


def _event(message_id: str) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=ts,
                            identities=[common_pb2.Identity(type="email", value=f"{message_id}@x.io")])


@pytest.fixture
def home():
    """The launcher's home, under the project like the test database's: PostgreSQL runs as another user when the
    tests run as root, and pytest keeps its own temporary folders private to the user running it."""
    path = ROOT / ".tailor" / f"chaos-pg-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_immediate_database_stops_lose_no_acked_event_and_answer_unavailable(home, tmp_path):
    env = launcher_env(home, TAILOR_PIPELINE_WORKERS="1")  # no DATABASE_URL: the launcher's embedded server
    database = EmbeddedPostgres(home / "pg", int(env["TAILOR_PG_PORT"]))
    launcher = launch(env, tmp_path / "ready.json")
    try:
        ready = await launcher.wait_ready()
        md = (("authorization", f"Bearer {ready['api_key']}"),)
        # No client retries here: the test looks at every answer the gateway gives.
        channel = grpc.aio.insecure_channel(ready["addresses"]["gateway"])
        gateway = gw_grpc.GatewayServiceStub(channel)
        run = uuid.uuid4().hex[:8]
        acked: set[str] = set()
        failures: list[tuple[str, str, float | None]] = []
        statuses: list[int | None] = []  # the gateway's health, every 0.1 s
        stop = asyncio.Event()

        async def ingest() -> None:
            n = 0
            while not stop.is_set():
                ids = [f"{run}-{n}-{i}" for i in range(10)]
                n += 1
                try:
                    reply = await gateway.IngestEvents(gw.IngestEventsRequest(events=[_event(m) for m in ids]),
                                                       metadata=md, timeout=10)
                    acked.update(a.message_id for a in reply.acks)
                except grpc.aio.AioRpcError as error:
                    failures.append((error.code().name, status_details(error)[1], retry_delay_of(error)))
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.01)

        async def watch_health() -> None:
            while not stop.is_set():
                statuses.append(await health(ready["addresses"]["gateway"], timeout=0.5))
                await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(ingest()), asyncio.create_task(watch_health())]
        for outage in range(OUTAGES):
            await asyncio.sleep(1.5)
            start = len(launcher.lines)
            acked_before = len(acked)
            database.stop_immediately()
            await launcher.wait_line("embedded PostgreSQL restarted", timeout=30, start=start)
            deadline = time.monotonic() + 20
            while len(acked) == acked_before or statuses[-1] != SERVING:  # serving and acknowledging again
                assert time.monotonic() < deadline, (outage, statuses[-20:], failures[-5:])
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        await channel.close()

        assert failures, "no ingest call fell into an outage"
        assert {(code, reason) for code, reason, _ in failures} <= {("UNAVAILABLE", "DATABASE_UNAVAILABLE")}, \
            failures
        assert all(delay is not None and delay > 0 for _, _, delay in failures), failures
        # NOT_SERVING during the outages, SERVING between and after. The watcher pings every 0.5 s and the embedded
        # server is often back within a second, so on a quiet machine one outage can pass between two pings: every
        # call that fell into it still answered UNAVAILABLE with RetryInfo (checked above).
        went_down = sum(1 for a, b in zip(statuses, statuses[1:]) if a == SERVING and b == NOT_SERVING)
        assert 1 <= went_down <= OUTAGES, statuses
        assert statuses[-1] == SERVING
        for svc in SERVICES:
            assert await health(ready["addresses"][svc]) == SERVING, svc
        conn = await asyncpg.connect(database.dsn(DATABASE))
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
    assert output.count("embedded PostgreSQL restarted") == OUTAGES
