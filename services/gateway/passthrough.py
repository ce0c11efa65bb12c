"""Forwards the domain services' configuration RPCs, unchanged, for callers whose key has the right scope."""

from __future__ import annotations

import grpc

from services.gateway.auth import GATEWAY, METHOD_SCOPES


def _forwarder(call):
    async def forward(request: bytes, _context) -> bytes:
        # The shared client factory adds the authenticated tenant, the request id and the remaining deadline.
        return await call(request)

    return forward


class Passthrough(grpc.GenericRpcHandler):
    """A generic handler over raw bytes: the gateway neither decodes nor re-encodes forwarded messages."""

    def __init__(self, channels: dict[str, grpc.aio.Channel]):
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in METHOD_SCOPES:
            if method.startswith(GATEWAY):
                continue
            service = method.split("/")[1]
            call = channels[service].unary_unary(method)
            self.handlers[method] = grpc.unary_unary_rpc_method_handler(_forwarder(call))

    def service(self, handler_call_details):
        return self.handlers.get(handler_call_details.method)

    @property
    def service_names(self) -> list[str]:
        return sorted({m.split("/")[1] for m in self.handlers})
