"""`tailor status` and `tailor down` from another terminal, a PostgreSQL left by a killed launcher, and a demo
configuration that a restart leaves as the operator changed it. Each suite runs its own embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest

from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as profile_grpc
from tailor_cli.launcher import SERVICES, running_embedded_port
from tests.integration.launcher.launched import TAILOR, launch, launcher_env, project_home, running


@pytest.fixture
def home():
    with project_home("lifecycle") as path:
        yield path


def _tailor(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([str(TAILOR), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _status_rows(output: str) -> dict[str, list[str]]:
    """process name -> [pid, port, health...] from `tailor status`."""
    rows = {}
    for line in output.splitlines()[2:]:
        parts = line.split()
        if len(parts) >= 4 and not line.startswith("pipeline"):
            rows[parts[0]] = parts[1:]
    return rows


async def test_status_lists_every_process_and_down_from_another_terminal_stops_them_and_postgresql(home, tmp_path):
    env = launcher_env(home, TAILOR_PIPELINE_WORKERS="1")
    launcher = launch(env, tmp_path / "ready.json")
    try:
        ready = await launcher.wait_ready()
        status = _tailor(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        rows = _status_rows(status.stdout)
        assert set(rows) == {*SERVICES, "pipeline-1", "postgresql"}, status.stdout
        for svc in SERVICES:
            port = ready["addresses"][svc].rsplit(":", 1)[1]
            assert rows[svc] == [str(ready["pids"][svc]), port, str(ready["metrics_ports"][svc]), "SERVING"]
        assert rows["postgresql"][1:] == [env["TAILOR_PG_PORT"], "-", "SERVING"]
        assert "pipeline (the key's tenant): 0 pending" in status.stdout
        # Each process serves its metrics; the gateway's count the GetPipelineStatus call `tailor status` made.
        scraped = {}
        async with httpx.AsyncClient() as http:
            for name, port in ready["metrics_ports"].items():
                scraped[name] = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
        assert all("tailor_rpc_duration_seconds" in text for text in scraped.values())
        assert ('tailor_rpc_requests_total{code="OK",method="/personalization.gateway.v1.GatewayService/'
                'GetPipelineStatus"} 1.0') in scraped["gateway"]

        down = _tailor(env, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert launcher.proc.wait(timeout=30) == 0, launcher.output
    finally:
        launcher.stop()

    assert [name for name, pid in ready["pids"].items() if running(pid)] == []
    assert running_embedded_port(home / "pg") is None
    again = _tailor(env, "status")
    assert again.returncode == 3 and "no tailor up is running" in again.stdout
    assert "nothing was running" in _tailor(env, "down").stdout


async def _segment_rule(gateway: str, key: str) -> str:
    async with grpc.aio.insecure_channel(gateway) as channel:
        reply = await profile_grpc.ProfileGraphServiceStub(channel).ListSegments(
            profile_pb.ListSegmentsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10)
    return next(s.rule for s in reply.segments if s.name == "big_spenders")


async def test_a_killed_launchers_postgresql_is_adopted_then_stopped_and_the_demo_is_never_applied_again(home, tmp_path):
    env = launcher_env(home, TAILOR_PIPELINE_WORKERS="0")
    first = launch(env, tmp_path / "first.json", demo=True)
    ready = await first.wait_ready()
    md = (("authorization", f"Bearer {ready['api_key']}"),)
    async with grpc.aio.insecure_channel(ready["addresses"]["gateway"]) as channel:
        await profile_grpc.ProfileGraphServiceStub(channel).UpsertSegment(profile_pb.UpsertSegmentRequest(
            segment=profile_pb.Segment(name="big_spenders", rule="insights.spend_30d >= 5000.0")), metadata=md,
            timeout=10)
    first.proc.send_signal(signal.SIGKILL)  # a crash: the services follow it (parent-death signal), PostgreSQL stays
    first.proc.wait()
    for _ in range(600):  # they drain first (TAILOR_DRAIN_SECONDS), slower on a busy machine
        if not any(running(pid) for pid in ready["pids"].values()):
            break
        await asyncio.sleep(0.1)
    assert not any(running(pid) for pid in ready["pids"].values()), "the services outlived their launcher"
    stale_port = running_embedded_port(home / "pg")
    assert stale_port == int(env["TAILOR_PG_PORT"])
    stale = _tailor(env, "status")
    assert stale.returncode == 3 and "no launcher: stale" in stale.stdout, stale.stdout

    second = launch(env, tmp_path / "second.json", demo=True)
    try:
        again = await second.wait_ready()
        assert "adopting the embedded PostgreSQL" in second.output
        assert "demo tenant found" in second.output and "insight spend_30d applied" not in second.output
        assert await _segment_rule(again["addresses"]["gateway"], again["api_key"]) == "insights.spend_30d >= 5000.0"
    finally:
        code, output = second.stop()
    assert code == 0, output
    assert running_embedded_port(home / "pg") is None  # a clean stop stops the PostgreSQL it adopted


async def test_down_after_a_launcher_crash_stops_the_postgresql_it_left(home, tmp_path):
    env = launcher_env(home, TAILOR_PIPELINE_WORKERS="0")
    launcher = launch(env, tmp_path / "ready.json")
    await launcher.wait_ready()
    os.kill(launcher.proc.pid, signal.SIGKILL)
    launcher.proc.wait()
    assert running_embedded_port(home / "pg") is not None

    down = _tailor(env, "down")

    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopping the embedded PostgreSQL" in down.stdout
    assert running_embedded_port(home / "pg") is None
    assert not Path(home / "suite.json").exists()
