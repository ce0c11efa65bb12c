"""The one client factory: every outgoing call carries the request id, an internal token naming the tenant, and the
caller's remaining deadline."""

from __future__ import annotations

import json
import socket

import grpc

from shared import context as ctx
from shared import service_auth

DEFAULT_CAP_SECONDS = 10.0


def _details(details: grpc.aio.ClientCallDetails, cap: float) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    request_id = ctx.request_id_var.get()
    if request_id and ctx.REQUEST_ID_HEADER not in metadata:
        metadata.add(ctx.REQUEST_ID_HEADER, request_id)
    if service_auth.AUTHORIZATION_HEADER not in metadata and (authorization := service_auth.outgoing_authorization()):
        metadata.add(service_auth.AUTHORIZATION_HEADER, authorization)
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
    """Starts a server-streaming call with the request id and internal token as explicit metadata and the stream cap.

    grpc.aio may run a stream's client interceptors outside the caller's context, where the contextvars are not
    set, so streams carry the call context themselves.
    """
    pairs = ((ctx.REQUEST_ID_HEADER, ctx.request_id_var.get()),
             (service_auth.AUTHORIZATION_HEADER, service_auth.outgoing_authorization()))
    remaining = ctx.remaining_seconds()
    timeout = STREAM_CAP_SECONDS if remaining is None else min(STREAM_CAP_SECONDS, max(remaining, 0.001))
    return multicallable(request, metadata=tuple((k, v) for k, v in pairs if v), timeout=timeout, **kwargs)


# Every call to a Tailor service is balanced per call over all the addresses its target resolves to, and a call
# that fails with UNAVAILABLE (a replica restarting or draining, a database outage) is retried with backoff, up to
# gRPC's cap of 5 attempts; the caller's deadline still bounds the whole. CANCELLED is retried too: a server that
# begins its graceful stop answers CANCELLED to the calls it had received but not yet started
# (grpc/grpc#41785), which a rolling restart would otherwise turn into client errors; a call the caller itself
# cancels is never retried. Retrying is safe for what the gateway and the pipeline send: ingest deduplicates by
# message id, every pipeline step is idempotent, and configuration writes are upserts by name (a call cut off when
# a server's drain grace expires may run twice; of the admin calls only CreateRuleset would then add a version).
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{}],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2.5,
            "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
        },
    }],
}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A call is retried only while its request is still buffered; pipeline chunks are a few MB.
RETRY_BUFFER_BYTES = 16 * 1024 * 1024


def target_of(address: str) -> str:
    """The gRPC target for TAILOR_<SVC>_ADDR: one address or name as it is, a comma-separated list of replicas
    (`127.0.0.1:50052,127.0.0.1:50062`) as an `ipv4:`/`ipv6:` target of all of them.

    Names in a list are not allowed (gRPC has no target for several names); give one name instead, for example a
    Kubernetes headless service as `dns:///identity:50052`, and every address it resolves to is a replica.
    """
    parts = [p.strip() for p in address.split(",") if p.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else address
    hosts = [p.rsplit(":", 1)[0] for p in parts]
    if all(_is_ip(h, socket.AF_INET) for h in hosts):
        return "ipv4:" + ",".join(parts)
    if all(h.startswith("[") and _is_ip(h[1:-1], socket.AF_INET6) for h in hosts):
        return "ipv6:" + ",".join(parts)
    raise ValueError(f"a list of replica addresses must be IP:port pairs of one family, got {address!r}")


def _is_ip(host: str, family: int) -> bool:
    try:
        socket.inet_pton(family, host)
    except OSError:
        return False
    return True


def channel_options() -> list[tuple[str, object]]:
    """The channel options every Tailor client uses: round_robin, retries on UNAVAILABLE, 64 MB messages."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ]


def channel(target: str, *, cap_seconds: float = DEFAULT_CAP_SECONDS) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to another Tailor service (one address, a name, or a list of replicas; see
    target_of) with context propagation, round_robin balancing and retries of UNAVAILABLE on every call."""
    return grpc.aio.insecure_channel(target_of(target), interceptors=[_Propagate(cap_seconds)],
                                     options=channel_options())
