"""The gateway's public API over HTTP: the Connect protocol's unary calls (JSON or binary protobuf bodies), served
in process by the very handlers the gRPC port runs (the same interceptor authenticates, binds the call's context,
logs and turns errors into google.rpc.Status), with per-tenant CORS; and the web pages (tracker, console) beside.

Why our own adapter rather than connect-python (PyPI `connect-python`, import `connectrpc`, 0.9, beta): it serves
services written against its own generated base classes, so wrapping our grpc.aio servicers and the byte-forwarding
admin passthrough would need hand-made endpoints anyway; it decodes the body before any hook of ours, so a
malformed body or a non-UTF-8 string comes back as UNKNOWN with the parser's text (our rule: INVALID_ARGUMENT
naming the field); it reads Connect-Timeout-Ms but leaves enforcing it to the handler; and it pulls in a Rust HTTP
client the server does not use. The Connect unary protocol is small (a POST per call, the error as a JSON object),
so this module speaks it over uvicorn: Connect clients (connect-web in the browser, connect-go, ...) and curl work.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import grpc
import uvicorn
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from services.gateway import protojson
from services.gateway.browser import Origins, normalize_origin
from shared.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, TailorError, shorten
from shared.log import get_logger
from shared.runtime import Built
from shared.server import CallContextInterceptor

log = get_logger("gateway.http")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024 * 1024  # as the gRPC port's grpc.max_receive_message_length
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# The Connect protocol's code names and HTTP statuses (connectrpc.com/docs/protocol, "Error Codes").
CONNECT_CODES: dict[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.CANCELLED: ("canceled", 499),
    grpc.StatusCode.UNKNOWN: ("unknown", 500),
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_argument", 400),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    grpc.StatusCode.NOT_FOUND: ("not_found", 404),
    grpc.StatusCode.ALREADY_EXISTS: ("already_exists", 409),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_denied", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    grpc.StatusCode.FAILED_PRECONDITION: ("failed_precondition", 400),
    grpc.StatusCode.ABORTED: ("aborted", 409),
    grpc.StatusCode.OUT_OF_RANGE: ("out_of_range", 400),
    grpc.StatusCode.UNIMPLEMENTED: ("unimplemented", 501),
    grpc.StatusCode.INTERNAL: ("internal", 500),
    grpc.StatusCode.UNAVAILABLE: ("unavailable", 503),
    grpc.StatusCode.DATA_LOSS: ("data_loss", 500),
    grpc.StatusCode.UNAUTHENTICATED: ("unauthenticated", 401),
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# Request headers that describe the HTTP exchange itself, not the call: never passed on as call metadata.
_TRANSPORT_HEADERS = frozenset({"host", "content-type", "content-length", "content-encoding", "accept",
                                "accept-encoding", "connection", "user-agent", "connect-protocol-version",
                                "connect-timeout-ms", "grpc-timeout", "te", "transfer-encoding"})
ALLOWED_REQUEST_HEADERS = "authorization, content-type, connect-protocol-version, connect-timeout-ms, grpc-timeout, " \
                          "x-request-id, x-user-agent"
_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class RpcFailed(grpc.aio.AbortError):
    """How an in-process call ends in error: the status the interceptor chose (code, message, rich details)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any):
        super().__init__(details)
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata or ()
        self.message = details


class _Context:
    """The part of grpc.aio.ServicerContext the interceptor and our servicers use, for an in-process call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], deadline: float | None):
        self._metadata = metadata
        self._deadline = deadline

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise RpcFailed(code, details, trailing_metadata)


class _Details:
    """grpc.HandlerCallDetails for a lookup."""

    def __init__(self, method: str, metadata: tuple):
        self.method = method
        self.invocation_metadata = metadata


class _Collector:
    """Stands in for grpc.aio.Server while the services add themselves, to keep their handlers."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers) -> None:
        pass  # the generic handler added alongside serves the same methods


@dataclass(frozen=True)
class Method:
    """One RPC as the HTTP port serves it: the wrapped unary handler and its message classes."""

    name: str
    handler: grpc.RpcMethodHandler | None  # None: a streaming RPC (served over gRPC only)
    input: type[Message]
    output: type[Message]


class Dispatcher:
    """Finds and runs a built server's handlers in process, wrapped by the same CallContextInterceptor."""

    def __init__(self, built: Built):
        collector = _Collector()
        for service in built.services:
            service.add_to_server(service.servicer, collector)
        self._generic = [*collector.generic, *built.generic_handlers]
        self._interceptor = CallContextInterceptor(built.authenticate)
        self._methods: dict[str, Method | None] = {}

    async def method(self, path: str) -> Method | None:
        if path in self._methods:
            return self._methods[path]
        found = None
        details = _Details(path, ())
        raw = next((h for g in self._generic if (h := g.service(details)) is not None), None)
        if raw is not None:
            _, service, name = path.split("/")
            descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
            unary = raw.unary_unary is not None

            async def continuation(_details):
                return raw

            wrapped = await self._interceptor.intercept_service(continuation, details) if unary else None
            found = Method(name, wrapped, message_factory.GetMessageClass(descriptor.input_type),
                           message_factory.GetMessageClass(descriptor.output_type))
        if found is not None or len(self._methods) < 10_000:  # unknown paths are the callers': bounded
            self._methods[path] = found
        return found

    async def call(self, method: Method, body: bytes, metadata: tuple, deadline: float | None) -> Any:
        """The reply of one unary call (a message, or bytes for a forwarded one); raises RpcFailed on an error."""
        assert method.handler is not None
        request = method.handler.request_deserializer(body) if method.handler.request_deserializer else body
        call = method.handler.unary_unary(request, _Context(metadata, deadline))
        if deadline is None:
            return await call
        try:
            return await asyncio.wait_for(call, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            status = DeadlineExceeded("the deadline passed before the call completed").to_status()
            raise RpcFailed(status.code, status.details, status.trailing_metadata) from None


def _deadline(headers: dict[str, str]) -> float | None:
    """The call's deadline from Connect-Timeout-Ms (or gRPC's grpc-timeout), as time.monotonic()."""
    connect = headers.get("connect-timeout-ms")
    if connect is not None:
        if not connect.isdigit() or len(connect) > 10:
            raise InvalidArgument([("Connect-Timeout-Ms", "must be a whole number of milliseconds (1 to 10 digits)")])
        return time.monotonic() + int(connect) / 1000
    grpc_timeout = headers.get("grpc-timeout")
    if grpc_timeout is not None:
        match = _GRPC_TIMEOUT.match(grpc_timeout)
        if match is None:
            raise InvalidArgument([("grpc-timeout", "must be up to 8 digits and a unit (H, M, S, m, u, n)")])
        return time.monotonic() + int(match.group(1)) * _GRPC_UNITS[match.group(2)]
    return None


def _status_of(error: BaseException) -> tuple[grpc.StatusCode, str, bytes]:
    """(code, message, serialized google.rpc.Status) of an error raised while serving a call."""
    if isinstance(error, RpcFailed):
        raw = next((v for k, v in error.trailing_metadata if k == STATUS_DETAILS_KEY), b"")
        return error.code, error.details or "", raw if isinstance(raw, bytes) else b""
    assert isinstance(error, TailorError)
    status = error.to_status()
    return status.code, status.details, dict(status.trailing_metadata).get(STATUS_DETAILS_KEY, b"")


def connect_error(code: grpc.StatusCode, message: str, status_bytes: bytes = b"") -> tuple[int, bytes]:
    """The HTTP status and JSON body of a Connect error: code, message and the google.rpc.Status details, each as
    type, base64 value and a readable `debug` copy."""
    name, http_status = CONNECT_CODES.get(code, ("unknown", 500))
    body: dict[str, Any] = {"code": name, "message": message}
    details = []
    if status_bytes:
        status = status_pb2.Status.FromString(status_bytes)
        for detail in status.details:
            entry: dict[str, Any] = {"type": detail.TypeName(),
                                     "value": base64.b64encode(detail.value).decode().rstrip("=")}
            try:
                unpacked = message_factory.GetMessageClass(
                    descriptor_pool.Default().FindMessageTypeByName(detail.TypeName()))()
                detail.Unpack(unpacked)
                entry["debug"] = json_format.MessageToDict(unpacked)
            except (KeyError, TypeError):
                pass
            details.append(entry)
    if details:
        body["details"] = details
    return http_status, json.dumps(body, ensure_ascii=False).encode()


async def _read_body(receive, limit: int = MAX_BODY_BYTES) -> bytes:
    chunks, size = [], 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ResourceExhausted(f"the request body is larger than {limit} bytes", reason="BODY_TOO_LARGE")
        chunks.append(chunk)
        if not event.get("more_body"):
            return b"".join(chunks)


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise InvalidArgument([("Content-Encoding", "must be gzip or identity")], reason="UNSUPPORTED_ENCODING")
    try:
        return gzip.decompress(body)
    except (OSError, EOFError, zlib.error):
        raise InvalidArgument([("body", "is not valid gzip")]) from None


class ConnectApp:
    """An ASGI app: Connect unary calls under /<package.Service>/<Method>, CORS preflights; other paths go to
    `pages` (the tracker, the example page, the console)."""

    def __init__(self, dispatcher: Dispatcher, origins: Origins, pages: ASGIApp | None = None):
        self.dispatcher = dispatcher
        self.origins = origins
        self.pages = pages

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # uvicorn runs with lifespan off; no websockets here
            return
        path = scope["path"]
        is_rpc = path.count("/") == 2 and "." in path.split("/")[1]
        if not is_rpc:
            if self.pages is not None:
                await self.pages(scope, receive, send)
            else:
                await _send(send, 404, b"not found", [(b"content-type", b"text/plain")])
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cors = await self._cors_headers(headers.get("origin", ""))
        if scope["method"] == "OPTIONS":
            await self._preflight(send, cors)
            return
        status, body, content_type = await self._call(scope, receive, headers)
        await _send(send, status, body, [(b"content-type", content_type), *cors])

    async def _cors_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        """CORS answer headers when some tenant allows the origin; the call itself is checked against its key's
        tenant (services/gateway/auth.py), so this only decides whether a browser may read the answer."""
        normalized = normalize_origin(origin) if origin else None
        if normalized is None or not await self.origins.known(normalized):
            return []
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

    async def _preflight(self, send, cors: list[tuple[bytes, bytes]]) -> None:
        if not cors:
            await _send(send, 403, b"origin not allowed", [(b"content-type", b"text/plain"), (b"vary", b"Origin")])
            return
        await _send(send, 204, b"", [*cors, (b"access-control-allow-methods", b"POST"),
                                     (b"access-control-allow-headers", ALLOWED_REQUEST_HEADERS.encode()),
                                     (b"access-control-max-age", b"600")])

    async def _call(self, scope, receive, headers: dict[str, str]) -> tuple[int, bytes, bytes]:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        as_json = content_type == "application/json"
        try:
            if scope["method"] != "POST":
                raise _Unsupported(405, "Connect unary calls are POST requests")
            if content_type not in ("application/json", "application/proto"):
                raise _Unsupported(415, "Content-Type must be application/json or application/proto")
            method = await self.dispatcher.method(scope["path"])
            if method is None:
                return (*connect_error(grpc.StatusCode.UNIMPLEMENTED, f"no method {shorten(scope['path'], 120)}"),
                        b"application/json")
            if method.handler is None:
                return (*connect_error(grpc.StatusCode.UNIMPLEMENTED,
                                       f"{method.name} streams: it is served over gRPC only (IngestEvents takes "
                                       "batches over HTTP)"), b"application/json")
            deadline = _deadline(headers)
            body = _decompress(await _read_body(receive), headers.get("content-encoding", "").lower())
            if as_json:
                body = _json_to_proto(body, method.input)
            metadata = tuple((k, v) for k, v in headers.items() if k not in _TRANSPORT_HEADERS)
            reply = await self.dispatcher.call(method, body, metadata, deadline)
        except _Unsupported as error:
            return error.status, error.message.encode(), b"text/plain"
        except (RpcFailed, TailorError) as error:
            return (*connect_error(*_status_of(error)), b"application/json")
        except ConnectionError:
            return 499, b"", b"text/plain"
        if as_json:
            message = reply if isinstance(reply, Message) else method.output.FromString(reply)
            return 200, json_format.MessageToJson(message, indent=None).encode(), b"application/json"
        return 200, reply.SerializeToString() if isinstance(reply, Message) else reply, b"application/proto"


class _Unsupported(Exception):
    """A request that is not a Connect unary call at all: answered with a plain HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _json_to_proto(body: bytes, message_class: type[Message]) -> bytes:
    """The JSON body as the request message's binary form; a body that is not that message is INVALID_ARGUMENT."""
    try:
        message = protojson.parse(body, message_class)
    except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError, DecodeError) as error:
        raise InvalidArgument([("body", f"is not a JSON {message_class.DESCRIPTOR.name}: "
                                        f"{shorten(str(error), 160)}")]) from None
    return message.SerializeToString()


async def _send(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Uvicorn(uvicorn.Server):
    """uvicorn inside the gateway's own event loop: the gateway handles SIGTERM (drain) itself."""

    def capture_signals(self):
        return nullcontext()


class HttpServer:
    """The HTTP port: bound when built (so its port is known at once, 0 picking a free one), served by run()."""

    def __init__(self, app: ASGIApp, host: str, port: int, reuse_port: bool = False, grace: float = 5.0):
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it
        # Nagle's algorithm holds a response's body behind its headers until the client's delayed ACK (40 ms).
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                                  socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None, server_header=False,
                                     timeout_graceful_shutdown=int(grace) or 1)

    async def run(self) -> None:
        server = _Uvicorn(self.config)
        serving = asyncio.ensure_future(server.serve(sockets=[self.sock]))
        log.info("http_started", port=self.port)
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            server.should_exit = True
            await asyncio.wait([serving], timeout=(self.config.timeout_graceful_shutdown or 0) + 1)
            raise
        finally:
            self.sock.close()
