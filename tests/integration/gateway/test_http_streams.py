"""Streaming RPCs over HTTP (the Connect protocol's enveloped messages) through a real gateway: a client stream
(StreamIngestEvents) and server streams (WatchBatchJob, WatchEvents), with the same keys, deadlines and errors as
gRPC, errors in the end-stream message."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import re
import struct
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import httpx
import pytest
from google.rpc import error_details_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.auth import GATEWAY
from tests.conftest import wait_for

JSON_STREAM = "application/connect+json"
PROTO_STREAM = "application/connect+proto"


@pytest.fixture(scope="module")
async def http(suite):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{suite.ports['http']}", timeout=60) as client:
        yield client


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(md) -> str:
    return md[0][1].split(" ", 1)[1]


def _envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def _json_envelope(message: dict) -> bytes:
    return _envelope(json.dumps(message).encode())


def _unpack(body: bytes) -> list[tuple[int, bytes]]:
    """The envelopes of a streamed answer as (flags, data); fails if the framing is off."""
    found, at = [], 0
    while at < len(body):
        flags, size = struct.unpack_from(">BI", body, at)
        found.append((flags, body[at + 5:at + 5 + size]))
        at += 5 + size
    assert at == len(body), "the answer ends inside an envelope"
    return found


def _headers(key: str | None, content_type: str = JSON_STREAM, **extra) -> dict[str, str]:
    headers = {"content-type": content_type, **extra}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return headers


def _event(message_id: str, device: str = "s-1") -> dict:
    return {"messageId": message_id, "type": "EVENT_TYPE_PAGE_VIEW", "eventTime": _now(),
            "identities": [{"type": "device_id", "value": device}]}


async def _stored(suite, tenant: str) -> set[str]:
    conn = await asyncpg.connect(suite.dsn)
    try:
        rows = await conn.fetch("SELECT message_id FROM gateway.inbox WHERE tenant_id = $1", tenant)
    finally:
        await conn.close()
    return {r["message_id"] for r in rows}


def _end(envelopes: list[tuple[int, bytes]]) -> dict:
    """The end-stream message, which must come last and only once."""
    flags, data = envelopes[-1]
    assert flags & 0x02, envelopes
    assert not any(f & 0x02 for f, _ in envelopes[:-1])
    return json.loads(data)


def _detail(error: dict, type_name: str) -> dict:
    return next(d for d in error.get("details", []) if d["type"] == type_name)


async def test_a_streamed_ingest_over_http_stores_every_message_and_counts_duplicates(suite, http):
    tenant, md = await suite.new_tenant()
    first, second = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    # The repeat is inside one message: two messages are written at once, so of a repeat across them either copy
    # may be the one stored first.
    body = _json_envelope({"events": [_event(first)]}) + _json_envelope({"events": [_event(second), _event(second)]})
    reply = await http.post(GATEWAY + "StreamIngestEvents", content=body, headers=_headers(_key(md)))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == JSON_STREAM
    envelopes = _unpack(reply.content)
    assert len(envelopes) == 2 and envelopes[0][0] == 0
    assert json.loads(envelopes[0][1]) == {"storedCount": "2", "duplicateCount": "1",  # int64: strings
                                           "acks": [{"messageId": second, "status": "ACK_STATUS_DUPLICATE",
                                                     "messageIndex": "1"}]}
    assert _end(envelopes) == {}
    assert await _stored(suite, tenant) == {first, second}

    # Binary protobuf, one envelope gzip-compressed (flag 0x01, Connect-Content-Encoding: gzip).
    third = f"c-{uuid.uuid4().hex}"
    message = pb.StreamIngestEventsRequest(events=[common_pb2.Event(
        message_id=third, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time={"seconds": int(datetime.now().timestamp())},
        identities=[common_pb2.Identity(type="device_id", value="s-2")])])
    body = _envelope(gzip.compress(message.SerializeToString()), flags=0x01)
    reply = await http.post(GATEWAY + "StreamIngestEvents", content=body,
                            headers=_headers(_key(md), PROTO_STREAM, **{"connect-content-encoding": "gzip"}))
    assert reply.status_code == 200 and reply.headers["content-type"] == PROTO_STREAM
    envelopes = _unpack(reply.content)
    assert pb.StreamIngestEventsResponse.FromString(envelopes[0][1]).stored_count == 1
    assert _end(envelopes) == {}
    assert third in await _stored(suite, tenant)


async def test_stream_errors_come_in_the_end_stream_message_with_their_details(suite, http):
    tenant, md = await suite.new_tenant()
    good = f"g-{uuid.uuid4().hex}"
    bad = {"events": [{**_event("x"), "messageId": ""}]}
    body = _json_envelope({"events": [_event(good)]}) + _json_envelope(bad)
    reply = await http.post(GATEWAY + "StreamIngestEvents", content=body, headers=_headers(_key(md)))
    assert reply.status_code == 200  # a stream's status is in its end-stream message
    envelopes = _unpack(reply.content)
    assert len(envelopes) == 1
    error = _end(envelopes)["error"]
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith("stream message 1:")
    violations = _detail(error, "google.rpc.BadRequest")
    assert violations["debug"]["fieldViolations"][0]["field"] == "events[0].message_id"
    packed = error_details_pb2.BadRequest.FromString(base64.b64decode(violations["value"] + "=="))
    assert packed.field_violations[0].field == "events[0].message_id"
    assert _detail(error, "google.rpc.ErrorInfo")["debug"]["metadata"]["message_index"] == "1"
    assert await _stored(suite, tenant) == {good}  # as over gRPC: the message before the bad one is stored

    not_json = await http.post(GATEWAY + "StreamIngestEvents", content=_envelope(b"{nope"), headers=_headers(_key(md)))
    error = _end(_unpack(not_json.content))["error"]
    assert error["code"] == "invalid_argument"
    assert _detail(error, "google.rpc.BadRequest")["debug"]["fieldViolations"][0]["field"] == "body"

    no_key = await http.post(GATEWAY + "StreamIngestEvents", content=_json_envelope({"events": [_event("k")]}),
                             headers=_headers(None))
    error = _end(_unpack(no_key.content))["error"]
    assert error["code"] == "unauthenticated"
    assert _detail(error, "google.rpc.ErrorInfo")["debug"]["reason"] == "API_KEY_MISSING"

    _, decide_only = await suite.new_tenant(scopes=("decide",))
    denied = await http.post(GATEWAY + "StreamIngestEvents", content=_json_envelope({"events": [_event("d")]}),
                             headers=_headers(_key(decide_only)))
    assert _end(_unpack(denied.content))["error"]["code"] == "permission_denied"

    unknown = await http.post(GATEWAY + "StreamNothing", content=b"", headers=_headers(_key(md)))
    assert _end(_unpack(unknown.content))["error"]["code"] == "unimplemented"


async def test_a_bad_envelope_is_refused_and_nothing_of_the_stream_is_stored(suite, http):
    tenant, md = await suite.new_tenant()
    whole = _json_envelope({"events": [_event(f"w-{uuid.uuid4().hex}")]})
    cases = {
        "cut short": whole + _json_envelope({"events": [_event("late")]})[:-3],
        "end-stream flag from the client": whole + _envelope(b"{}", flags=0x02),
        "compressed without an encoding": whole + _envelope(gzip.compress(b"{}"), flags=0x01),
        "a header cut short": whole + b"\x00\x00",
    }
    for name, body in cases.items():
        reply = await http.post(GATEWAY + "StreamIngestEvents", content=body, headers=_headers(_key(md)))
        assert reply.status_code == 200, name
        error = _end(_unpack(reply.content))["error"]
        assert error["code"] == "invalid_argument", name
        [violation] = _detail(error, "google.rpc.BadRequest")["debug"]["fieldViolations"]
        assert violation["field"] == "body" and violation["description"].startswith("envelope 1 "), (name, violation)
    assert await _stored(suite, tenant) == set()

    unknown_encoding = await http.post(GATEWAY + "StreamIngestEvents", content=whole,
                                       headers=_headers(_key(md), **{"connect-content-encoding": "br"}))
    error = _end(_unpack(unknown_encoding.content))["error"]
    assert _detail(error, "google.rpc.BadRequest")["debug"]["fieldViolations"][0]["field"] == \
        "Connect-Content-Encoding"

    # The streaming content types are for streaming RPCs, and the unary ones for unary RPCs.
    unary_as_stream = await http.post(GATEWAY + "IngestEvents", content=whole, headers=_headers(_key(md)))
    assert unary_as_stream.status_code == 415
    stream_as_unary = await http.post(GATEWAY + "StreamIngestEvents", json={"events": []},
                                      headers={"authorization": f"Bearer {_key(md)}"})
    assert stream_as_unary.status_code == 415 and "application/connect+json" in stream_as_unary.text
    two_requests = await http.post(GATEWAY + "WatchBatchJob", content=_json_envelope({}) + _json_envelope({}),
                                   headers=_headers(_key(md)))
    assert _end(_unpack(two_requests.content))["error"]["code"] == "invalid_argument"
    assert await _stored(suite, tenant) == set()


async def _buyers(suite, md, count: int) -> None:
    """A segment `buyers` of count individuals and a manual-content point `banner`."""
    await suite.buyers_and_banner(md)
    events = [{"messageId": f"buy-{i}", "type": "EVENT_TYPE_PURCHASE", "eventTime": _now(),
               "identities": [{"type": "customer_id", "value": f"c{i}"}],
               "lineItems": [{"itemId": "sku", "quantity": 1, "unitPrice": 5}]} for i in range(count)]
    reply = await http_post(suite, md, "IngestEvents", {"events": events})
    assert reply.status_code == 200, reply.text
    assert await suite.segment_reaches(md, "buyers", count), "the purchases never put everyone in the segment"


async def http_post(suite, md, method: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{suite.ports['http']}", timeout=30) as client:
        return await client.post(GATEWAY + method, json=body, headers={"authorization": f"Bearer {_key(md)}"})


class _Reader:
    """Reads a streamed answer envelope by envelope, as the bytes arrive."""

    def __init__(self, response: httpx.Response):
        self.chunks = response.aiter_bytes()
        self.buffer = b""

    async def next(self) -> tuple[int, bytes]:
        while True:
            if len(self.buffer) >= 5:
                flags, size = struct.unpack_from(">BI", self.buffer)
                if len(self.buffer) >= 5 + size:
                    found = (flags, self.buffer[5:5 + size])
                    self.buffer = self.buffer[5 + size:]
                    return found
            self.buffer += await anext(self.chunks)


async def test_watch_batch_job_over_http_sees_the_progress_and_the_end(suite, http):
    _, md = await suite.new_tenant()
    await _buyers(suite, md, 12)
    started = await http.post(GATEWAY + "StartBatchJob", json={"segment": "buyers", "pointNames": ["banner"]},
                              headers={"authorization": f"Bearer {_key(md)}"})
    assert started.status_code == 200, started.text
    job_id = started.json()["job"]["jobId"]
    request = _json_envelope({"jobId": job_id, "includeRows": True})
    rows, jobs = [], []
    async with http.stream("POST", GATEWAY + "WatchBatchJob", content=request,
                           headers=_headers(_key(md), **{"connect-timeout-ms": "60000"})) as response:
        assert response.status_code == 200 and response.headers["content-type"] == JSON_STREAM
        reader = _Reader(response)
        while True:
            flags, data = await reader.next()
            if flags & 0x02:
                assert json.loads(data) == {}
                break
            update = json.loads(data)
            rows.append(update["row"]) if "row" in update else jobs.append(update["job"])
    assert jobs[-1]["state"] == "BATCH_JOB_STATE_SUCCEEDED"
    assert (int(jobs[-1]["processedCount"]), int(jobs[-1]["rowCount"])) == (12, 12)
    assert len({r["unifiedIndividualId"] for r in rows}) == 12
    assert {r["payload"]["data"][0]["headline"] for r in rows} == {"Thanks"}

    other, other_md = await suite.new_tenant()  # another tenant's job is not found
    reply = await http.post(GATEWAY + "WatchBatchJob", content=request, headers=_headers(_key(other_md)))
    assert _end(_unpack(reply.content))["error"]["code"] == "not_found"


async def test_watch_events_over_http_sees_a_new_event_and_ends_at_the_deadline(suite, http):
    _, md = await suite.new_tenant()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    first = await http_post(suite, md, "IngestEvents", {"events": [_event("w-1", device)]})
    assert first.status_code == 200

    async def known():
        reply = await http_post(suite, md, "GetProfile", {"individualId": {"type": "device_id", "value": device}})
        return reply.status_code == 200

    assert await wait_for(known)
    request = _json_envelope({"individualId": {"type": "device_id", "value": device}, "replayCount": 1})
    async with http.stream("POST", GATEWAY + "WatchEvents", content=request,
                           headers=_headers(_key(md), **{"connect-timeout-ms": "30000"})) as response:
        reader = _Reader(response)
        flags, data = await asyncio.wait_for(reader.next(), 20)
        assert flags == 0 and json.loads(data)["event"]["messageId"] == "w-1"  # the replayed one: the stream is open
        await http_post(suite, md, "IngestEvents", {"events": [_event("w-2", device)]})
        flags, data = await asyncio.wait_for(reader.next(), 20)
        assert flags == 0 and json.loads(data)["event"]["messageId"] == "w-2"
    # Leaving the stream early cancels it on the server; a short deadline ends one in the end-stream message.
    reply = await http.post(GATEWAY + "WatchEvents", content=request,
                            headers=_headers(_key(md), **{"connect-timeout-ms": "1500"}))
    envelopes = _unpack(reply.content)
    assert json.loads(envelopes[0][1])["event"]["messageId"] == "w-2"
    assert _end(envelopes)["error"]["code"] == "deadline_exceeded"


def _readme_stream_block() -> str:
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = text[text.index("## Over HTTP"):]
    return next(m.group(1) for m in re.finditer(r"^```bash\n(.*?)^```$", section, re.M | re.S)
                if "connect+json" in m.group(1))


async def test_the_readmes_streaming_curl_call_prints_the_events_then_the_end(suite, http):
    _, md = await suite.new_tenant()
    assert (await http_post(suite, md, "IngestEvents", {"events": [{**_event("ada-1"), "identities": [
        {"type": "email", "value": "ada@example.com"}]}]})).status_code == 200

    async def known():
        reply = await http_post(suite, md, "GetProfile", {"individualId": {"type": "email",
                                                                           "value": "ada@example.com"}})
        return reply.status_code == 200

    assert await wait_for(known)
    script = _readme_stream_block().replace("127.0.0.1:8080", f"127.0.0.1:{suite.ports['http']}") \
        .replace("Connect-Timeout-Ms: 60000", "Connect-Timeout-Ms: 2000")
    done = await asyncio.create_subprocess_exec(
        "bash", "-e", "-o", "pipefail", "-c", script, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "KEY": _key(md)})
    out, err = await asyncio.wait_for(done.communicate(), 30)
    assert done.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert lines[0]["event"]["messageId"] == "ada-1"
    assert lines[-1]["error"]["code"] == "deadline_exceeded"
