"""The public API over HTTP (Connect protocol, JSON and binary protobuf) through a real gateway: the same answers and
errors as gRPC, deadlines from headers, CORS per tenant and browser keys."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
import uuid
from datetime import datetime, timezone
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import json_format, message_factory, struct_pb2
from google.rpc import error_details_pb2

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.auth import GATEWAY, METHOD_SCOPES

GATEWAY_SERVICE = pb.DESCRIPTOR.services_by_name["GatewayService"]
SHOP = "https://shop.example.com"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
async def http(suite):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{suite.ports['http']}", timeout=30) as client:
        yield client


async def _call(http, method: str, body: dict, key: str | None = None, service: str = GATEWAY, **headers):
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return await http.post(service + method, json=body, headers=headers)


def _secret(md) -> str:
    return md[0][1].split(" ", 1)[1]


async def _tenant_with_point(suite):
    tenant, md = await suite.new_tenant()
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="banner", type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))), metadata=md)
    content = struct_pb2.Struct()
    content.update({"headline": "Hello over HTTP"})
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name="banner", name="hello", fallback=True, content=content)), metadata=md)
    return tenant, md


def _detail(body: dict, type_name: str) -> dict:
    return next(d for d in body.get("details", []) if d["type"] == type_name)


async def test_ingest_and_decisions_over_json_answer_as_over_grpc(suite, http):
    _, md = await _tenant_with_point(suite)
    key = _secret(md)
    event = {"messageId": f"h-{uuid.uuid4().hex}", "type": "EVENT_TYPE_PAGE_VIEW", "eventTime": _now(),
             "identities": [{"type": "device_id", "value": "web-1"}]}
    reply = await _call(http, "IngestEvents", {"events": [event]}, key)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"acks": [{"messageId": event["messageId"], "status": "ACK_STATUS_STORED"}]}
    again = await _call(http, "IngestEvents", {"events": [event]}, key)
    assert again.json()["acks"][0]["status"] == "ACK_STATUS_DUPLICATE"

    request = {"individualId": {"type": "device_id", "value": "web-1"}, "personalizationPoints": [{"name": "banner"}]}
    decided = await _call(http, "GetDecisions", request, key)
    assert decided.status_code == 200, decided.text
    [served] = decided.json()["personalizations"]
    assert served["decisionName"] == "hello"
    assert served["data"][0]["headline"] == "Hello over HTTP"
    assert served["personalizationId"]

    # The same call with a binary protobuf body, and over gRPC: the same decision.
    message = json_format.ParseDict(request, pb.GetDecisionsRequest())
    binary = await http.post(GATEWAY + "GetDecisions", content=message.SerializeToString(),
                             headers={"content-type": "application/proto", "authorization": f"Bearer {key}"})
    assert binary.status_code == 200 and binary.headers["content-type"] == "application/proto"
    assert pb.GetDecisionsResponse.FromString(binary.content).personalizations[0].decision_name == "hello"
    over_grpc = await suite.gateway.GetDecisions(message, metadata=md)
    assert over_grpc.personalizations[0].decision_name == "hello"


async def test_errors_carry_the_google_rpc_status_details_as_json(suite, http):
    _, md = await suite.new_tenant()
    bad = {"events": [{"messageId": "", "type": "EVENT_TYPE_PAGE_VIEW", "eventTime": _now(),
                       "identities": [{"type": "device_id", "value": "x"}]}]}
    reply = await _call(http, "IngestEvents", bad, _secret(md))
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == "invalid_argument"
    violations = _detail(body, "google.rpc.BadRequest")
    assert violations["debug"]["fieldViolations"][0]["field"] == "events[0].message_id"
    # The value is the packed detail itself, as Connect clients decode it.
    packed = error_details_pb2.BadRequest.FromString(base64.b64decode(violations["value"] + "=="))
    assert packed.field_violations[0].field == "events[0].message_id"
    assert _detail(body, "google.rpc.ErrorInfo")["debug"]["reason"] == "INVALID_ARGUMENT"

    missing = await _call(http, "GetDecisions", {})
    assert missing.status_code == 401
    assert _detail(missing.json(), "google.rpc.ErrorInfo")["debug"]["reason"] == "API_KEY_MISSING"

    not_json = await http.post(GATEWAY + "IngestEvents", content=b"{nope",
                               headers={"content-type": "application/json", "authorization": f"Bearer {_secret(md)}"})
    assert not_json.status_code == 400
    assert _detail(not_json.json(), "google.rpc.BadRequest")["debug"]["fieldViolations"][0]["field"] == "body"

    wrong_field = await _call(http, "GetDecisions", {"nope": 1}, _secret(md))
    assert wrong_field.status_code == 400 and wrong_field.json()["code"] == "invalid_argument"

    unknown_point = await _call(http, "GetDecisions", {"individualId": {"type": "device_id", "value": "x"},
                                                       "personalizationPoints": [{"name": "nowhere"}]}, _secret(md))
    assert unknown_point.status_code == 404 and unknown_point.json()["code"] == "not_found"

    unknown_method = await _call(http, "NoSuchMethod", {}, _secret(md))
    assert unknown_method.status_code == 501 and unknown_method.json()["code"] == "unimplemented"
    streaming = await _call(http, "StreamIngestEvents", {}, _secret(md))  # streams take enveloped messages
    assert streaming.status_code == 415 and "application/connect+json" in streaming.text
    text = await http.post(GATEWAY + "GetDecisions", content=b"x", headers={"content-type": "text/plain"})
    assert text.status_code == 415


async def test_the_deadline_comes_from_connect_timeout_ms_or_grpc_timeout(suite, http):
    _, md = await _tenant_with_point(suite)
    request = {"individualId": {"type": "device_id", "value": "late"}, "personalizationPoints": [{"name": "banner"}]}
    late = await _call(http, "GetDecisions", request, _secret(md), **{"connect-timeout-ms": "0"})
    assert late.status_code == 504 and late.json()["code"] == "deadline_exceeded"
    late = await _call(http, "GetDecisions", request, _secret(md), **{"grpc-timeout": "1n"})
    assert late.json()["code"] == "deadline_exceeded"
    in_time = await _call(http, "GetDecisions", request, _secret(md), **{"connect-timeout-ms": "20000"})
    assert in_time.status_code == 200
    bad = await _call(http, "GetDecisions", request, _secret(md), **{"connect-timeout-ms": "soon"})
    assert bad.status_code == 400
    assert _detail(bad.json(), "google.rpc.BadRequest")["debug"]["fieldViolations"][0]["field"] == \
        "Connect-Timeout-Ms"


@pytest.mark.parametrize("method", [m.name for m in GATEWAY_SERVICE.methods])
async def test_every_public_rpc_answers_over_http_with_the_grpc_status(suite, http, method):
    """An empty request to every RPC: over HTTP the same status code as over gRPC (a streaming RPC's in its
    end-stream message)."""
    descriptor = GATEWAY_SERVICE.methods_by_name[method]
    scopes = METHOD_SCOPES[GATEWAY + method]
    if "operator" in scopes:
        key = await _operator_key(suite)
        md = (("authorization", f"Bearer {key}"),)
    else:
        _, md = await suite.new_tenant()
        key = _secret(md)
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    if descriptor.client_streaming or descriptor.server_streaming:
        await _compare_stream(suite, http, method, key, md, request_class, response_class,
                              descriptor.client_streaming)
        return
    reply = await _call(http, method, {}, key)
    call = suite.channel.unary_unary(GATEWAY + method, request_serializer=request_class.SerializeToString,
                                     response_deserializer=response_class.FromString)
    try:
        await call(request_class(), metadata=md)
        expected = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as error:
        expected = error.code()
    if expected == grpc.StatusCode.OK:
        assert reply.status_code == 200, reply.text
        json_format.Parse(reply.content, response_class())  # the answer is the response message as JSON
    else:
        assert reply.json()["code"] == expected.name.lower(), reply.text
    assert reply.json().get("code") not in ("internal", "unknown")


async def _compare_stream(suite, http, method, key, md, request_class, response_class, client_streaming) -> None:
    """A streaming RPC with one empty request message: the end-stream message says what gRPC's status says."""
    body = struct.pack(">BI", 0, 2) + b"{}"
    reply = await http.post(GATEWAY + method, content=body, headers={"authorization": f"Bearer {key}",
                                                                     "content-type": "application/connect+json",
                                                                     "connect-timeout-ms": "3000"})
    assert reply.status_code == 200, reply.text
    envelopes, at = [], 0
    while at < len(reply.content):
        flags, size = struct.unpack_from(">BI", reply.content, at)
        envelopes.append((flags, reply.content[at + 5:at + 5 + size]))
        at += 5 + size
    assert envelopes[-1][0] == 2  # the end-stream message, last
    end = json.loads(envelopes[-1][1])
    if client_streaming:
        call = suite.channel.stream_unary(GATEWAY + method, request_serializer=request_class.SerializeToString,
                                          response_deserializer=response_class.FromString)
        requests = iter([request_class()])
    else:
        call = suite.channel.unary_stream(GATEWAY + method, request_serializer=request_class.SerializeToString,
                                          response_deserializer=response_class.FromString)
        requests = request_class()
    try:
        answer = call(requests, metadata=md, timeout=3)
        if client_streaming:
            await answer
        else:
            async for _ in answer:
                pass
        expected = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as error:
        expected = error.code()
    assert end.get("error", {}).get("code", "ok") == expected.name.lower(), end
    assert end.get("error", {}).get("code") not in ("internal", "unknown")


async def _operator_key(suite) -> str:
    import tempfile

    from services.gateway.admin import write_operator_key

    with tempfile.TemporaryDirectory() as folder:
        return await write_operator_key(suite.dsn, Path(folder) / "operator_key")


async def test_admin_passthrough_rpcs_are_served_over_http(suite, http):
    _, md = await _tenant_with_point(suite)
    reply = await _call(http, "ListPoints", {}, _secret(md), service="/personalization.decision.v1.DecisionService/")
    assert reply.status_code == 200, reply.text
    assert [p["name"] for p in reply.json()["points"]] == ["banner"]


async def _browser_tenant(suite, http, scopes=("SCOPE_INGEST",)):
    tenant, md = await _tenant_with_point(suite)
    admin = _secret(md)
    settings = await _call(http, "UpdateBrowserSettings",
                           {"settings": {"allowedOrigins": [SHOP + "/", "HTTP://Localhost:8000"]}}, admin)
    assert settings.status_code == 200, settings.text
    assert settings.json()["settings"]["allowedOrigins"] == ["http://localhost:8000", SHOP]  # sorted
    created = await _call(http, "CreateApiKey", {"displayName": "site", "scopes": list(scopes), "browser": True},
                          admin)
    assert created.status_code == 200, created.text
    assert created.json()["apiKey"]["browser"] is True
    return admin, created.json()["secret"]


async def test_cors_preflight_answers_only_origins_a_tenant_allows(suite, http):
    await _browser_tenant(suite, http)
    allowed = await http.options(GATEWAY + "IngestEvents", headers={
        "origin": SHOP, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == SHOP
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    assert "POST" in allowed.headers["access-control-allow-methods"]
    refused = await http.options(GATEWAY + "IngestEvents", headers={
        "origin": "https://evil.example.net", "access-control-request-method": "POST"})
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers


async def test_an_ingest_browser_key_sends_events_from_its_origins_only_and_reads_nothing(suite, http):
    admin, browser = await _browser_tenant(suite, http)
    event = {"messageId": f"b-{uuid.uuid4().hex}", "type": "EVENT_TYPE_PAGE_VIEW", "eventTime": _now(),
             "identities": [{"type": "device_id", "value": "browser-1"}]}
    sent = await _call(http, "IngestEvents", {"events": [event]}, browser, origin=SHOP)
    assert sent.status_code == 200, sent.text
    assert sent.headers["access-control-allow-origin"] == SHOP

    elsewhere = await _call(http, "IngestEvents", {"events": [event]}, browser, origin="https://evil.example.net")
    assert elsewhere.status_code == 403
    assert _detail(elsewhere.json(), "google.rpc.ErrorInfo")["debug"]["reason"] == "ORIGIN_NOT_ALLOWED"
    no_origin = await _call(http, "IngestEvents", {"events": [event]}, browser)
    assert _detail(no_origin.json(), "google.rpc.ErrorInfo")["debug"]["reason"] == "ORIGIN_NOT_ALLOWED"

    profile = await _call(http, "GetProfile", {"individualId": {"type": "device_id", "value": "browser-1"}}, browser,
                          origin=SHOP)
    assert profile.status_code == 403
    assert _detail(profile.json(), "google.rpc.ErrorInfo")["debug"]["reason"] == "BROWSER_KEY_NOT_ALLOWED"
    for service, method in ((GATEWAY, "ListApiKeys"), ("/personalization.decision.v1.DecisionService/", "ListPoints"),
                            (GATEWAY, "GetBrowserSettings")):
        admin_call = await _call(http, method, {}, browser, service=service, origin=SHOP)
        assert admin_call.status_code == 403, method
    decide = await _call(http, "GetDecisions", {"individualId": {"type": "device_id", "value": "browser-1"},
                                                "personalizationPoints": [{"name": "banner"}]}, browser, origin=SHOP)
    assert _detail(decide.json(), "google.rpc.ErrorInfo")["debug"]["reason"] == "SCOPE_MISSING"

    # An admin key from a page on a foreign origin is refused too; over gRPC a browser key is refused (no origin).
    foreign = await _call(http, "ListApiKeys", {}, admin, origin="https://evil.example.net")
    assert foreign.status_code == 403
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await suite.gateway.IngestEvents(json_format.ParseDict({"events": [event]}, pb.IngestEventsRequest()),
                                         metadata=(("authorization", f"Bearer {browser}"),))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_browser_settings_and_keys_are_validated(suite, http):
    _, md = await suite.new_tenant()
    admin = _secret(md)
    bad = await _call(http, "UpdateBrowserSettings",
                      {"settings": {"allowedOrigins": [SHOP, "https://shop.example.com/cart", "*"]}}, admin)
    assert bad.status_code == 400
    fields = [v["field"] for v in _detail(bad.json(), "google.rpc.BadRequest")["debug"]["fieldViolations"]]
    assert fields == ["settings.allowed_origins[1]", "settings.allowed_origins[2]"]
    kept = await _call(http, "GetBrowserSettings", {}, admin)
    assert kept.json() == {"settings": {}}  # nothing changed

    admin_browser = await _call(http, "CreateApiKey", {"scopes": ["SCOPE_DECIDE", "SCOPE_ADMIN"], "browser": True},
                                admin)
    assert admin_browser.status_code == 400
    assert _detail(admin_browser.json(), "google.rpc.BadRequest")["debug"]["fieldViolations"][0]["field"] == \
        "scopes[1]"



def _readme_curl_block() -> str:
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = text[text.index("## Over HTTP"):]
    return re.search(r"^```bash\n(.*?)^```$", section, re.M | re.S).group(1)


async def test_the_readmes_curl_calls_ingest_and_decide(suite, http):
    tenant, md = await suite.new_tenant()
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="home_banner", type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))), metadata=md)
    content = struct_pb2.Struct()
    content.update({"headline": "Welcome"})
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name="home_banner", name="welcome", fallback=True, content=content)), metadata=md)
    script = _readme_curl_block().replace("127.0.0.1:8080", f"127.0.0.1:{suite.ports['http']}")
    done = await asyncio.create_subprocess_exec(
        "bash", "-e", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KEY": _secret(md), "NOW": _now()})
    out, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, err.decode()
    ingested, decided = [json.loads(line) for line in out.decode().replace("}{", "}\n{").splitlines()]
    assert ingested == {"acks": [{"messageId": "web-1", "status": "ACK_STATUS_STORED"}]}
    assert decided["personalizations"][0]["data"] == [{"headline": "Welcome"}]


async def test_pipeline_status_counts_the_last_hour_per_minute(suite, http):
    _, md = await suite.new_tenant()
    events = [{"messageId": f"p-{i}", "type": "EVENT_TYPE_PAGE_VIEW", "eventTime": _now(),
               "identities": [{"type": "device_id", "value": f"minute-{i}"}]} for i in range(3)]
    assert (await _call(http, "IngestEvents", {"events": events}, _secret(md))).status_code == 200
    for _ in range(300):  # up to 30 s: a loaded test machine drains slowly (quiet, well under a second)
        status = (await _call(http, "GetPipelineStatus", {}, _secret(md))).json()
        minutes = status["minutes"]
        if sum(int(m.get("processedCount", 0)) for m in minutes) == 3:
            break
        await asyncio.sleep(0.1)
    assert len(minutes) == 60 and minutes[0]["startTime"] < minutes[-1]["startTime"]
    assert sum(int(m.get("receivedCount", 0)) for m in minutes) == 3
    assert sum(int(m.get("processedCount", 0)) for m in minutes) == 3
    assert int(minutes[-1].get("backlogCount", 0)) == int(status.get("pendingCount", 0)) == 0


async def test_the_operator_reads_any_tenants_pipeline_status_and_a_tenant_only_its_own(suite, http):
    tenant, md = await suite.new_tenant()
    events = [{"messageId": f"o-{i}", "type": "EVENT_TYPE_PAGE_VIEW", "eventTime": _now(),
               "identities": [{"type": "device_id", "value": f"o-{i}"}]} for i in range(2)]
    assert (await _call(http, "IngestEvents", {"events": events}, _secret(md))).status_code == 200
    operator = await _operator_key(suite)
    theirs = await _call(http, "GetPipelineStatus", {"tenantId": tenant}, operator)
    assert theirs.status_code == 200, theirs.text
    assert sum(int(m.get("receivedCount", 0)) for m in theirs.json()["minutes"]) == 2
    unnamed = await _call(http, "GetPipelineStatus", {}, operator)
    assert unnamed.status_code == 400
    assert _detail(unnamed.json(), "google.rpc.BadRequest")["debug"]["fieldViolations"][0]["field"] == "tenant_id"
    unknown = await _call(http, "GetPipelineStatus", {"tenantId": "t-nobody"}, operator)
    assert unknown.status_code == 404
    assert _detail(unknown.json(), "google.rpc.ErrorInfo")["debug"]["reason"] == "TENANT_NOT_FOUND"

    other, other_md = await suite.new_tenant()
    refused = await _call(http, "GetPipelineStatus", {"tenantId": tenant}, _secret(other_md))
    assert refused.status_code == 403
    assert _detail(refused.json(), "google.rpc.ErrorInfo")["debug"]["reason"] == "OPERATOR_ONLY"
    own = await _call(http, "GetPipelineStatus", {"tenantId": other}, _secret(other_md))
    assert own.status_code == 200 and sum(int(m.get("receivedCount", 0)) for m in own.json()["minutes"]) == 0
