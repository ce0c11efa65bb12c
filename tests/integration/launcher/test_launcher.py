"""`tailor up` as a user runs it: five processes become SERVING, SIGTERM stops them all and exits 0."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from shared import service_auth
from tailor_cli.launcher import SERVICES
from tests.integration.launcher.launched import TAILOR, Launched, free_port, launch, launcher_env, running


def _env(database_url: str, home: Path) -> dict[str, str]:
    # The pipeline stays inside the gateway here; the chaos tests run worker processes.
    return launcher_env(home, database_url, TAILOR_PIPELINE_WORKERS="0")


async def _start(env: dict[str, str], ready_file: Path) -> tuple[Launched, dict]:
    launcher = launch(env, ready_file)
    return launcher, await launcher.wait_ready()


def _stop(launcher: Launched) -> tuple[int, str]:
    return launcher.stop()


async def test_up_serves_all_five_services_and_sigterm_stops_every_process(database_url, tmp_path):
    ready_file = tmp_path / "ready.json"
    launcher, ready = await _start(_env(database_url, tmp_path / "home"), ready_file)
    try:
        assert set(ready["addresses"]) == set(SERVICES)
        assert set(ready["pids"]) == set(SERVICES)
        assert ready["ready_seconds"] > 0
        for svc, address in ready["addresses"].items():
            async with grpc.aio.insecure_channel(address) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                       timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, svc
        async with grpc.aio.insecure_channel(ready["addresses"]["gateway"]) as channel:
            keys = await gw_grpc.GatewayServiceStub(channel).ListApiKeys(
                gw.ListApiKeysRequest(), metadata=(("authorization", f"Bearer {ready['api_key']}"),), timeout=10)
        assert len(keys.api_keys) >= 1
        key_file = tmp_path / "home" / "demo_key"
        assert key_file.read_text().strip() == ready["api_key"]
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        # The gateway wrote the operator key at start; the demo tenant was created with it over CreateTenant.
        operator_file = tmp_path / "home" / "operator_key"
        assert stat.S_IMODE(operator_file.stat().st_mode) == 0o600
        async with grpc.aio.insecure_channel(ready["addresses"]["gateway"]) as channel:
            tenants = await gw_grpc.GatewayServiceStub(channel).ListTenants(
                gw.ListTenantsRequest(), metadata=(("authorization", f"Bearer {operator_file.read_text().strip()}"),),
                timeout=10)
        assert [t.tenant_id for t in tenants.tenants if t.tenant_id == "demo"] == ["demo"]
        assert all(running(pid) for pid in ready["pids"].values())
        # The internal keypair: generated at first start, the private key for the gateway (and workers) alone.
        keys = tmp_path / "home" / "keys"
        assert stat.S_IMODE((keys / service_auth.SIGNING_KEY_FILE).stat().st_mode) == 0o600
        for svc, pid in ready["pids"].items():
            environ = dict(line.split("=", 1) for line in
                           Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in line)
            assert environ[service_auth.VERIFY_KEY_ENV] == str(keys / service_auth.VERIFY_KEY_FILE), svc
            assert (service_auth.SIGNING_KEY_ENV in environ) == (svc == "gateway"), svc
        async with grpc.aio.insecure_channel(ready["addresses"]["profile_graph"]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/personalization.profile_graph.v1.ProfileGraphService/GetProfile")(
                    b"", metadata=(("x-tenant-id", "demo"),), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        code, output = _stop(launcher)

    assert code == 0, output
    assert "ready in" in output
    assert [svc for svc, pid in ready["pids"].items() if running(pid)] == []


async def test_a_second_up_reuses_the_stored_demo_key(database_url, tmp_path):
    home = tmp_path / "home"
    first, ready = await _start(_env(database_url, home), tmp_path / "first.json")
    assert _stop(first)[0] == 0
    second, again = await _start(_env(database_url, home), tmp_path / "second.json")
    code, output = _stop(second)

    assert code == 0, output
    assert again["api_key"] == ready["api_key"]
    assert "tlr_" in (home / "operator_key").read_text()


async def test_a_service_that_cannot_start_stops_the_launcher_with_its_log(tmp_path):
    env = _env(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", tmp_path / "home")
    launcher = subprocess.Popen([str(TAILOR), "up", "--no-demo", "--ready-file", str(tmp_path / "ready.json")],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = launcher.communicate(timeout=90)

    assert launcher.returncode == 1, output
    assert "exited with code" in output
    assert "last lines of" in output
    assert not (tmp_path / "ready.json").exists()
