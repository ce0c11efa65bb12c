"""Forwards the domain services' configuration RPCs, unchanged, for callers whose key has the right scope."""

from __future__ import annotations

import time

import grpc
from google.protobuf import descriptor_pool

from services.gateway.auth import GATEWAY, METHOD_SCOPES
from services.gateway.ports import AfterHook
from shared.client import open_stream
from shared.reflection import Descriptors


def _unary(call, after: AfterHook | None = None):
    async def forward(request: bytes, _context) -> bytes:
        # The shared client factory adds the authenticated tenant, the request id and the remaining deadline.
        reply = await call(request)
        if after is not None:
            await after(request, reply)
        return reply

    return forward


def _server_stream(call, after: AfterHook | None = None):
    async def forward(request: bytes, _context):
        started = time.time()
        async for message in open_stream(call, request):
            yield message
        if after is not None:
            await after(request, started)

    return forward


class Passthrough(grpc.GenericRpcHandler):
    """A generic handler over raw bytes: the gateway neither decodes nor re-encodes forwarded messages.

    Unary and server-streaming methods are forwarded (watching events, training or re-run progress).
    """

    def __init__(self, channels: dict[str, grpc.aio.Channel], after: dict[str, AfterHook] | None = None):
        """after maps a method to a coroutine run once the forwarded call succeeded: with the request and reply
        bytes for a unary method, with the request bytes and the start time (epoch seconds) for a stream."""
        after = after or {}
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        pool = descriptor_pool.Default()
        for method in METHOD_SCOPES:
            if method.startswith(GATEWAY):
                continue
            service, name = method.strip("/").split("/")
            descriptor = pool.FindMethodByName(f"{service}.{name}")
            if descriptor.client_streaming:
                raise ValueError(f"{method}: client-streaming methods are not forwarded")
            channel = channels[service]
            if descriptor.server_streaming:
                handler = grpc.unary_stream_rpc_method_handler(
                    _server_stream(channel.unary_stream(method), after.get(method)))
            else:
                handler = grpc.unary_unary_rpc_method_handler(_unary(channel.unary_unary(method), after.get(method)))
            self.handlers[method] = handler

    def service(self, handler_call_details):
        return self.handlers.get(handler_call_details.method)

    @property
    def service_names(self) -> list[str]:
        return sorted({m.split("/")[1] for m in self.handlers})


def served_pool(methods: list[str], service_names: list[str]) -> Descriptors:
    """The descriptors reflection serves on the gateway: the named services hold only the given methods (their
    comments kept); the gateway forwards a chosen subset of each domain service's RPCs, and reflecting their whole
    services would list methods that answer UNIMPLEMENTED."""
    served: dict[str, set[str]] = {name: set() for name in service_names}
    for method in methods:
        service, name = method.strip("/").split("/")
        if service in served:
            served[service].add(name)
    return Descriptors.load().serving(served)
