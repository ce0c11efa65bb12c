"""Channels end to end on the whole suite: activation of segment membership fed by ingested events, and the MCP
agent tools answering through a real MCP client session (stdio, `python -m services.gateway.mcp_server`)."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

import services.gateway.activation as activation_module
from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as profile_grpc
from services.gateway.activation import Activations, ActivationSettings
from services.gateway.destinations import WebhookSender, parse_networks
from shared import client
from shared.runtime import prepare_schema
from tests.conftest import wait_for
from tests.integration.channels.receiver import Receiver
from tests.suite import Suite

ROOT = Path(__file__).resolve().parents[2]
POINT = "home_banner"
SECRET = "whsec-" + "e" * 26


@pytest.fixture(scope="module")
async def suite(database_url):
    # The suite's own activation loop may deliver too: the operator lets it reach the local receiver, as ours.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TAILOR_GATEWAY_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.2/32")
        s = await Suite(database_url).start()
    yield s
    await s.stop()


def _event(message_id, *identities, type_=common_pb2.EVENT_TYPE_PAGE_VIEW, attributes=None, **fields):
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    event = common_pb2.Event(message_id=message_id, type=type_, event_time=ts,
                             identities=[common_pb2.Identity(type=t, value=v) for t, v in identities], **fields)
    if attributes:
        event.attributes.update(attributes)
    return event



async def _gold_segment(suite, md):
    await suite.profile_admin.UpsertSegment(profile_pb.UpsertSegmentRequest(segment=profile_pb.Segment(
        name="gold", rule='attributes.tier == "gold"')), metadata=md)


async def _segments_of(suite, md, email):
    try:
        reply = await suite.gateway.GetProfile(pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type="email", value=email)), metadata=md)
    except Exception:  # noqa: BLE001 - not processed by the pipeline yet
        return None
    return set(reply.segments)


async def test_ingested_events_activate_segment_membership_and_a_segment_exit_flips_the_flag(suite):
    tenant, md = await suite.new_tenant()
    await _gold_segment(suite, md)
    emails = [f"shopper{i}@example.com" for i in range(30)]
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event(f"in-{i}", ("email", e), attributes={"tier": "gold"}) for i, e in enumerate(emails)]), metadata=md)
    assert await wait_for(lambda: _all_in(suite, md, emails, True))

    receiver = await Receiver(SECRET, failure_rate=0.3, host="127.0.0.2").start()
    pool = await prepare_schema(suite.dsn, "gateway", activation_module.__file__)
    channel = client.channel(f"127.0.0.1:{suite.ports['profile_graph']}")
    activations = Activations(pool, profile_grpc.ProfileGraphServiceStub(channel),
                              settings=ActivationSettings(interval_seconds=0.05, retry_max_seconds=0.05,
                                                          webhook_allowed_networks=parse_networks("127.0.0.2/32")),
                              sender=WebhookSender(base_delay=0.01))
    try:
        await activations.upsert_destination(tenant, pb.Destination(
            name="crm", batch_size=7, webhook=pb.WebhookDestination(url=receiver.url, secret=SECRET)))
        await activations.upsert_activation(tenant, pb.Activation(
            name="gold_to_crm", destination="crm", segment_membership=pb.SegmentMembershipSource(segment="gold"),
            primary_key=["unified_individual_id"]))

        async def delivered(total):
            await activations.run_once(tenant)
            listed, _ = await activations.list_activations(tenant, 0, "")
            s = listed[0].status
            return s if s.delivered_rows == total and s.pending_rows == 0 else None

        assert await wait_for(lambda: delivered(30))
        assert len(receiver.table) == 30 and all(r["member"] for r in receiver.table.values())

        await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
            _event(f"out-{i}", ("email", e), attributes={"tier": "bronze"}) for i, e in enumerate(emails[:4])]),
            metadata=md)
        assert await wait_for(lambda: _all_in(suite, md, emails[:4], False))
        assert await wait_for(lambda: delivered(34))
    finally:
        await activations.close()
        await channel.close()
        await pool.close()
        await receiver.stop()

    assert receiver.bad_signatures == 0 and receiver.failures > 0
    assert len(receiver.table) == 30
    assert sum(1 for r in receiver.table.values() if not r["member"]) == 4
    assert all(len(rows) <= 7 for rows in receiver.deliveries.values())


async def _all_in(suite, md, emails, inside: bool) -> bool:
    for email in emails:
        segments = await _segments_of(suite, md, email)
        if segments is None or ("gold" in segments) != inside:
            return False
    return True


async def _configure_point(suite, md):
    content = struct_pb2.Struct()
    content.update({"headline": "Gold members get free shipping"})
    welcome = struct_pb2.Struct()
    welcome.update({"headline": "Welcome!"})
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name=POINT, type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING, required=True)]))),
        metadata=md)
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name=POINT, name="gold_offer", priority=10, rule="'gold' in profile.segments", content=content)),
        metadata=md)
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name=POINT, name="welcome", priority=1, fallback=True, content=welcome)), metadata=md)


async def test_the_mcp_tools_answer_through_a_real_mcp_client_session(suite):
    _, md = await suite.new_tenant()
    api_key = md[0][1].removeprefix("Bearer ")
    await _gold_segment(suite, md)
    await _configure_point(suite, md)
    email = f"agent-{uuid.uuid4().hex[:6]}@example.com"
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("m1", ("email", email), attributes={"tier": "gold", "first_name": "Ada"}),
        _event("m2", ("email", email), type_=common_pb2.EVENT_TYPE_PRODUCT_VIEW, item_id="sku-42"),
    ]), metadata=md)
    assert await wait_for(lambda: _all_in(suite, md, [email], True))

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "services.gateway.mcp_server"], cwd=str(ROOT),
        env={"TAILOR_GATEWAY_ADDR": f"127.0.0.1:{suite.ports['gateway']}", "TAILOR_API_KEY": api_key})
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        names = sorted(t.name for t in (await session.list_tools()).tools)
        assert names == ["get_context", "get_recommendations"]

        decided = await session.call_tool("get_recommendations", {
            "point": POINT, "identity_type": "email", "identity_value": email,
            "anchor_id": "sku-42", "cart_item_ids": ["sku-1"]})
        assert not decided.is_error, decided.content
        served = json.loads(decided.content[0].text)["personalizations"][0]
        assert served["decision_name"] == "gold_offer"
        assert served["data"][0]["headline"] == "Gold members get free shipping"
        assert decided.structured_content["personalizations"][0]["personalization_id"] == served["personalization_id"]

        context = await session.call_tool("get_context", {"identity_type": "email", "identity_value": email})
        assert not context.is_error, context.content
        summary = json.loads(context.content[0].text)
        assert {"type": "email", "value": email} in summary["identities"]
        assert summary["key_attributes"] == {"first_name": "Ada", "tier": "gold"}
        assert summary["segments"] == ["gold"]
        assert [e["type"] for e in summary["recent_events"]] == ["product_view", "page_view"]
        assert summary["recent_events"][0]["item_id"] == "sku-42"
        assert summary["top_affinities"] == [] and summary["consents"] == {}  # none configured or given

        unknown = await session.call_tool("get_recommendations", {
            "point": "nowhere", "identity_type": "email", "identity_value": email})
        assert unknown.is_error and "NOT_FOUND" in unknown.content[0].text
        stranger = await session.call_tool("get_context", {"identity_type": "email", "identity_value": "x@y.z"})
        assert stranger.is_error and "NOT_FOUND" in stranger.content[0].text


async def test_destinations_and_activations_are_configured_through_the_gateway_and_deliver(suite, tmp_path):
    tenant, md = await suite.new_tenant()
    await suite.profile_admin.UpsertSegment(profile_pb.UpsertSegmentRequest(segment=profile_pb.Segment(
        name="vips", rule="has(attributes.tier) && attributes.tier == 'vip'")), metadata=md)
    with pytest.raises(Exception) as refused:
        await suite.gateway.UpsertDestination(pb.UpsertDestinationRequest(destination=pb.Destination(
            name="internal", webhook=pb.WebhookDestination(url="https://127.0.0.1/hook", secret=SECRET))),
            metadata=md)
    assert refused.value.code().name == "INVALID_ARGUMENT"
    await suite.gateway.UpsertDestination(pb.UpsertDestinationRequest(destination=pb.Destination(
        name="crm_export", file=pb.FileDestination(directory="crm", format=pb.FILE_FORMAT_JSONL))), metadata=md)
    await suite.gateway.UpsertActivation(pb.UpsertActivationRequest(activation=pb.Activation(
        name="vip_flags", destination="crm_export",
        segment_membership=pb.SegmentMembershipSource(segment="vips"))), metadata=md)
    gateway_built = suite._running[-1][0]
    activations = next(job.__self__ for job in gateway_built.background
                       if isinstance(getattr(job, "__self__", None), Activations))
    # The suite's export root is shared by every test; set before anything is delivered (the gateway's own pass
    # may deliver as soon as the member shows, before the one asked for below).
    activations.sink.root = tmp_path.resolve()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("a1", ("email", "vip@example.com"), attributes={"tier": "vip"})]), metadata=md)

    async def member():
        page = await suite.profile_admin.ListSegmentMembers(profile_pb.ListSegmentMembersRequest(segment="vips"),
                                                            metadata=md)
        return list(page.members)

    assert await wait_for(member)
    await activations.run_once(tenant)  # after the gateway's own pass, if one is running: never beside it
    listed = await suite.gateway.ListActivations(pb.ListActivationsRequest(), metadata=md)
    assert [(a.name, a.status.delivered_rows) for a in listed.activations] == [("vip_flags", 1)]
    rows = [json.loads(line) for path in (tmp_path / "crm").iterdir() for line in path.read_text().splitlines()]
    assert [(r["segment"], r["member"]) for r in rows] == [("vips", True)]
    destinations = await suite.gateway.ListDestinations(pb.ListDestinationsRequest(), metadata=md)
    assert [d.name for d in destinations.destinations] == ["crm_export"]
