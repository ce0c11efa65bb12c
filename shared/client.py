"""The one client factory: every outgoing call carries the request id, the tenant and the caller's remaining deadline."""

from __future__ import annotations

import grpc

from shared import context as ctx

DEFAULT_CAP_SECONDS = 10.0


def _details(details: grpc.aio.ClientCallDetails, cap: float) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    request_id = ctx.request_id_var.get()
    if request_id and ctx.REQUEST_ID_HEADER not in metadata:
        metadata.add(ctx.REQUEST_ID_HEADER, request_id)
    tenant = ctx.tenant_var.get()
    if tenant and ctx.TENANT_HEADER not in metadata:
        metadata.add(ctx.TENANT_HEADER, tenant)
    timeout = details.timeout if details.timeout is not None else cap
    remaining = ctx.remaining_seconds()
    if remaining is not None:
        timeout = min(timeout, max(remaining, 0.001))
    return grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)


class _Propagate(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, cap: float):
        self.cap = cap

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(_details(client_call_details, self.cap), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(_details(client_call_details, self.cap), request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(_details(client_call_details, self.cap), request_iterator)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(_details(client_call_details, self.cap), request_iterator)


# A stream (training progress, a re-run, a watch, a batch of recommendations) may outlast the cap of a unary
# call; the caller's own deadline still bounds it.
STREAM_CAP_SECONDS = 86_400.0


def open_stream(multicallable, request, **kwargs):
    """Starts a server-streaming call with the request id and tenant as explicit metadata and the stream cap.

    grpc.aio may run a stream's client interceptors outside the caller's context, where the contextvars are not
    set, so streams carry the call context themselves.
    """
    pairs = ((ctx.REQUEST_ID_HEADER, ctx.request_id_var.get()), (ctx.TENANT_HEADER, ctx.tenant_var.get()))
    remaining = ctx.remaining_seconds()
    timeout = STREAM_CAP_SECONDS if remaining is None else min(STREAM_CAP_SECONDS, max(remaining, 0.001))
    return multicallable(request, metadata=tuple((k, v) for k, v in pairs if v), timeout=timeout, **kwargs)


def channel(target: str, *, cap_seconds: float = DEFAULT_CAP_SECONDS) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to another Tailor service with context propagation on every call."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=[_Propagate(cap_seconds)],
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 1)],
    )
