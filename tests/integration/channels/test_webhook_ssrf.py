"""Webhook SSRF corpus through the real gateway: internal targets are refused before any request is made, and only
the networks the operator allows (here 127.0.0.2/32) receive deliveries, without redirects and without bodies."""

from __future__ import annotations

import uuid

import grpc
import pytest

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from shared.errors import status_details
from tests.conftest import wait_for
from tests.integration.channels.receiver import Receiver
from tests.suite import Suite

SECRET = "whsec-" + "s" * 26
ALLOWED = "127.0.0.2"
SETTING = "; only public addresses are allowed, and networks the operator allows in " \
          "TAILOR_GATEWAY_WEBHOOK_ALLOWED_NETWORKS"


@pytest.fixture(scope="module")
async def suite(database_url):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TAILOR_GATEWAY_WEBHOOK_ALLOWED_NETWORKS", f"{ALLOWED}/32")
        env.setenv("TAILOR_GATEWAY_ACTIVATION_INTERVAL_SECONDS", "0.05")
        env.setenv("TAILOR_GATEWAY_DELIVERY_RETRY_MAX_SECONDS", "0.05")
        s = await Suite(database_url).start()
    yield s
    await s.stop()


@pytest.fixture
async def sentinel():
    """A receiver on 127.0.0.1, outside the allowed network: every corpus URL aims at its port; it must stay idle."""
    receiver = await Receiver(SECRET).start()
    yield receiver
    await receiver.stop()


async def refusal(suite, md, url: str) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.UpsertDestination(pb.UpsertDestinationRequest(destination=pb.Destination(
            name="hook", webhook=pb.WebhookDestination(url=url, secret=SECRET))), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return status_details(info.value)[0]


@pytest.mark.parametrize("template, description", [
    ("http://127.1:{port}/x", "host 127.1 is a non-standard spelling of 127.0.0.1; write addresses in dotted form"),
    ("http://2130706433:{port}/x",
     "host 2130706433 is a non-standard spelling of 127.0.0.1; write addresses in dotted form"),
    ("http://0x7f000001:{port}/x",
     "host 0x7f000001 is a non-standard spelling of 127.0.0.1; write addresses in dotted form"),
    ("http://127.0.0.1:{port}/x", "points to a non-public address 127.0.0.1 (loopback)" + SETTING),
    ("http://[::ffff:7f00:1]:{port}/x", "points to a non-public address 127.0.0.1 (loopback)" + SETTING),
    ("http://localhost:{port}/x", "points to a non-public address (loopback; host localhost)" + SETTING),
    ("http://169.254.169.254/latest/meta-data/", "points to a non-public address 169.254.169.254 (link-local)" + SETTING),
    ("https://100.64.0.1/x", "points to a non-public address 100.64.0.1 (shared, CGNAT)" + SETTING),
    ("https://[fd00::1]/x", "points to a non-public address fd00::1 (unique-local)" + SETTING),
    ("https://0.0.0.0:{port}/x", "points to a non-public address 0.0.0.0 (unspecified)" + SETTING),
    ("http://user:pw@127.0.0.2:{port}/x", "must not carry credentials; sign with the destination secret instead"),
])
async def test_internal_targets_are_refused_with_a_precise_violation_and_no_request(
        suite, sentinel, template, description):
    _, md = await suite.new_tenant()
    url = template.format(port=sentinel.port)
    assert await refusal(suite, md, url) == [("destination.webhook.url", description)]
    assert sentinel.calls == 0
    listed = await suite.gateway.ListDestinations(pb.ListDestinationsRequest(), metadata=md)
    assert list(listed.destinations) == []


async def test_the_tenant_flag_opens_nothing_and_is_not_stored(suite, sentinel):
    _, md = await suite.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.UpsertDestination(pb.UpsertDestinationRequest(destination=pb.Destination(
            name="hook", webhook=pb.WebhookDestination(url=sentinel.url, secret=SECRET,
                                                       allow_private_network=True))), metadata=md)
    assert status_details(info.value)[0] == [("destination.webhook.url",
                                              "points to a non-public address 127.0.0.1 (loopback)" + SETTING)]
    receiver = await Receiver(SECRET, host=ALLOWED).start()
    try:
        reply = await suite.gateway.UpsertDestination(pb.UpsertDestinationRequest(destination=pb.Destination(
            name="hook", webhook=pb.WebhookDestination(url=receiver.url, secret=SECRET,
                                                       allow_private_network=True))), metadata=md)
    finally:
        await receiver.stop()
    assert not reply.destination.webhook.allow_private_network
    listed = await suite.gateway.ListDestinations(pb.ListDestinationsRequest(), metadata=md)
    assert [(d.name, d.webhook.allow_private_network) for d in listed.destinations] == [("hook", False)]


async def _one_gold_member(suite, md) -> None:
    await suite.profile_admin.UpsertSegment(profile_pb.UpsertSegmentRequest(segment=profile_pb.Segment(
        name="gold", rule='attributes.tier == "gold"')), metadata=md)
    event = common_pb2.Event(message_id=uuid.uuid4().hex, type=common_pb2.EVENT_TYPE_PAGE_VIEW,
                             identities=[common_pb2.Identity(type="email", value="ada@example.com")])
    event.event_time.GetCurrentTime()
    event.attributes.update({"tier": "gold"})
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[event]), metadata=md)


async def _activate(suite, md, url: str) -> None:
    await suite.gateway.UpsertDestination(pb.UpsertDestinationRequest(destination=pb.Destination(
        name="hook", webhook=pb.WebhookDestination(url=url, secret=SECRET))), metadata=md)
    await suite.gateway.UpsertActivation(pb.UpsertActivationRequest(activation=pb.Activation(
        name="gold", destination="hook", segment_membership=pb.SegmentMembershipSource(segment="gold"))),
        metadata=md)


async def _status(suite, md) -> pb.DeliveryStatus:
    listed = await suite.gateway.ListActivations(pb.ListActivationsRequest(), metadata=md)
    return listed.activations[0].status


async def test_a_receiver_in_the_operators_network_gets_the_signed_post(suite):
    _, md = await suite.new_tenant()
    receiver = await Receiver(SECRET, host=ALLOWED).start()
    try:
        await _one_gold_member(suite, md)
        await _activate(suite, md, receiver.url)

        async def delivered():
            status = await _status(suite, md)
            return status.delivered_rows == 1 and status.pending_rows == 0

        assert await wait_for(delivered), await _status(suite, md)
    finally:
        await receiver.stop()
    assert receiver.bad_signatures == 0 and len(receiver.deliveries) == 1
    assert [row["member"] for row in receiver.table.values()] == [True]


async def test_a_redirect_to_an_internal_address_is_not_followed_and_its_body_is_not_returned(suite, sentinel):
    _, md = await suite.new_tenant()
    redirector = await Receiver(SECRET, host=ALLOWED, redirect_to=sentinel.url).start()
    try:
        await _one_gold_member(suite, md)
        await _activate(suite, md, redirector.url)

        async def halted():
            status = await _status(suite, md)
            return status if status.last_error else None

        status = await wait_for(halted)
    finally:
        await redirector.stop()
    assert status.last_error == "HTTP 302 (Found); redirects are not followed"
    assert status.delivered_rows == 0 and status.pending_rows == 1
    assert redirector.calls == 1 and sentinel.calls == 0
