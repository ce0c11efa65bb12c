"""A client in another language: Node.js (@grpc/grpc-js with @grpc/proto-loader reading protos/) calls the gateway."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from tests.suite import Suite

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "node"


@pytest.fixture(scope="module")
def node_client():
    """The Node client's packages, installed from its lock file (npm ci) on first use."""
    assert shutil.which("node") and shutil.which("npm"), "Node.js and npm are needed for this test"
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT, check=True, capture_output=True,
                       timeout=300)
    return CLIENT / "decide.js"


async def _node(script: Path, suite: Suite, key: str, *args: str) -> tuple[int, dict]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"TAILOR_GATEWAY_ADDR": f"127.0.0.1:{suite.ports['gateway']}", "TAILOR_API_KEY": key,
             "PATH": "/usr/local/bin:/usr/bin:/bin"})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert out, err.decode()
    return proc.returncode, json.loads(out)


async def test_a_node_client_gets_decisions_and_precise_errors(suite, node_client):
    _, md = await suite.new_tenant()
    key = md[0][1].split(" ", 1)[1]
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="banner", type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))), metadata=md)
    content = struct_pb2.Struct()
    content.update({"headline": "Hello from Tailor"})
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name="banner", name="hello", fallback=True, content=content)), metadata=md)

    code, reply = await _node(node_client, suite, key, "banner", "device_id", "node-visitor")
    assert code == 0
    [served] = reply["personalizations"]
    assert served["decision_name"] == "hello"
    assert served["data"][0]["fields"]["headline"]["stringValue"] == "Hello from Tailor"
    assert served["diagnostics"][0]["code"] == "DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL"

    code, error = await _node(node_client, suite, key, "nowhere", "device_id", "node-visitor")
    assert (code, error["code"]) == (2, grpc.StatusCode.NOT_FOUND.value[0])
    code, error = await _node(node_client, suite, "tlr_0000000000000000_wrong", "banner", "device_id", "x")
    assert (code, error["code"]) == (2, grpc.StatusCode.UNAUTHENTICATED.value[0])
