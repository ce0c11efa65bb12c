"""Agent tools over MCP: `get_recommendations` and `get_context`, answered by the gateway over gRPC with an API key.

Run it with `python -m services.gateway.mcp_server` (stdio transport); settings: TAILOR_GATEWAY_ADDR (default
127.0.0.1:50051) and TAILOR_API_KEY (a key with the decide scope).
"""

from __future__ import annotations

from typing import Annotated, Any

import grpc
from google.protobuf import json_format
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from shared import log
from shared.errors import status_details
from shared.settings import env_float, env_str, service_address

KEY_ATTRIBUTES = ("first_name", "last_name", "name", "email", "phone", "city", "region", "country", "tier",
                  "loyalty_tier", "customer_type", "gender", "age", "language")
MAX_ATTRIBUTES = 25
INSTRUCTIONS = ("Tailor personalization tools. get_recommendations decides what a personalization point serves "
                "to one person; get_context summarizes who the person is (identities, key attributes, insights, "
                "segments, recent events). Identify the person by an identity type (email, phone, customer_id, "
                "device_id, ...) and its value.")


def _dict(message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def key_attributes(attributes: dict[str, Any], limit: int = MAX_ATTRIBUTES) -> dict[str, Any]:
    """At most `limit` attributes: the well-known descriptive ones first, then the rest by name."""
    ordered = [k for k in KEY_ATTRIBUTES if k in attributes] + sorted(k for k in attributes if k not in KEY_ATTRIBUTES)
    return {k: attributes[k] for k in ordered[:limit]}


def compact_event(event: common_pb2.Event) -> dict[str, Any]:
    out: dict[str, Any] = {"type": common_pb2.EventType.Name(event.type).removeprefix("EVENT_TYPE_").lower(),
                           "time": event.event_time.ToDatetime().isoformat() + "Z"}
    if event.name:
        out["name"] = event.name
    if event.item_id:
        out["item_id"] = event.item_id
    if event.line_items:
        out["items"] = [{"item_id": li.item_id, "quantity": li.quantity} for li in event.line_items]
        out["revenue"] = round(sum(li.quantity * li.unit_price for li in event.line_items), 2)
    return out


TOP_AFFINITIES = 5


def context_summary(profile: pb.GetProfileResponse) -> dict[str, Any]:
    """The compact summary get_context answers with."""
    attributes = json_format.MessageToDict(profile.attributes)
    summary: dict[str, Any] = {
        "unified_individual_id": profile.unified_individual_id,
        "identities": [{"type": i.type, "value": i.value} for i in profile.identities],
        "key_attributes": key_attributes(attributes),
        "segments": sorted(profile.segments),
        "insights": {k: round(v, 4) for k, v in sorted(profile.insights.items())},
        "top_affinities": [{"dimension": a.dimension, "value": a.value, "score": round(a.score, 4)}
                           for a in profile.affinities[:TOP_AFFINITIES]],
        "consents": {c.purpose: common_pb2.ConsentStatus.Name(c.status).removeprefix("CONSENT_STATUS_")
                     for c in profile.consents},
        "recent_events": [compact_event(e) for e in profile.events],
    }
    if len(attributes) > MAX_ATTRIBUTES:
        summary["attribute_count"] = len(attributes)
    return summary


class GatewayTools:
    """The tools' calls to the gateway; the channel is opened on first use, inside the server's event loop."""

    def __init__(self, address: str, api_key: str, timeout: float = 10.0):
        self.address = address
        self.metadata = (("authorization", f"Bearer {api_key}"),)
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    @property
    def stub(self) -> pb_grpc.GatewayServiceStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        return pb_grpc.GatewayServiceStub(self._channel)

    async def call(self, method: str, request):
        try:
            return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            violations, reason = status_details(error)
            detail = "; ".join(f"{f}: {d}" for f, d in violations) or error.details()
            raise ToolError(f"{error.code().name}{f' ({reason})' if reason else ''}: {detail}") from None

    async def get_recommendations(
        self,
        point: Annotated[str, Field(description="The personalization point name, for example home_banner.")],
        identity_type: Annotated[str, Field(description="The identity type: email, phone, customer_id, "
                                                        "device_id, crm_contact_key or a custom type.")],
        identity_value: Annotated[str, Field(description="The identity value.")],
        anchor_id: Annotated[str, Field(description="The item the conversation is about, if any.")] = "",
        anchor_type: Annotated[str, Field(description="The anchor's type (product, article, ...).")] = "",
        cart_item_ids: Annotated[list[str] | None, Field(description="Item ids in the cart.")] = None,
        channel: Annotated[str, Field(description="The channel asking.")] = "agent",
    ) -> dict[str, Any]:
        """A personalization decision for one point and one individual: content or recommended items, as JSON."""
        reply = await self.call("GetDecisions", pb.GetDecisionsRequest(
            individual_id=common_pb2.Identity(type=identity_type, value=identity_value),
            personalization_points=[pb.PointRequest(name=point)],
            context=pb.DecisionContext(anchor_id=anchor_id, anchor_type=anchor_type,
                                       cart_item_ids=list(cart_item_ids or []), channel=channel)))
        return _dict(reply)

    async def get_context(
        self,
        identity_type: Annotated[str, Field(description="The identity type: email, phone, customer_id, "
                                                        "device_id, crm_contact_key or a custom type.")],
        identity_value: Annotated[str, Field(description="The identity value.")],
        event_limit: Annotated[int, Field(ge=1, le=100, description="How many recent events to include.")] = 10,
    ) -> dict[str, Any]:
        """A compact profile summary: identities, key attributes, insights, segments, top affinities, consents and
        recent events."""
        reply = await self.call("GetProfile", pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type=identity_type, value=identity_value), event_limit=event_limit))
        return context_summary(reply)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def build_server(tools: GatewayTools) -> MCPServer:
    server = MCPServer(name="tailor", instructions=INSTRUCTIONS, log_level="WARNING")
    server.add_tool(tools.get_recommendations, name="get_recommendations", structured_output=True)
    server.add_tool(tools.get_context, name="get_context", structured_output=True)
    return server


def main() -> None:
    # stdout carries the protocol: logs go to stderr only.
    log.configure("mcp_server", env_str("TAILOR_LOG_LEVEL", "WARNING"))
    tools = GatewayTools(env_str("TAILOR_GATEWAY_ADDR", service_address("gateway")), env_str("TAILOR_API_KEY"),
                         env_float("TAILOR_MCP_TIMEOUT_SECONDS", 10.0, minimum=0.1))
    build_server(tools).run("stdio")


if __name__ == "__main__":
    main()
