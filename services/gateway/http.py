"""The gateway's public API over HTTP: the Connect protocol's unary calls (JSON or binary protobuf bodies) and its
streaming calls (enveloped messages: client streams read whole, server streams written as they come), served in
process by the very handlers the gRPC port runs (the same interceptor authenticates, binds the call's context, logs
and turns errors into google.rpc.Status), with per-tenant CORS; and the web pages (tracker, console) beside.

Why our own adapter rather than connect-python (PyPI `connect-python`, import `connectrpc`, 0.9, beta): it serves
services written against its own generated base classes, so wrapping our grpc.aio servicers and the byte-forwarding
admin passthrough would need hand-made endpoints anyway; it decodes the body before any hook of ours, so a
malformed body or a non-UTF-8 string comes back as UNKNOWN with the parser's text (our rule: INVALID_ARGUMENT
naming the field); it reads Connect-Timeout-Ms but leaves enforcing it to the handler; and it pulls in a Rust HTTP
client the server does not use. The Connect unary protocol is small (a POST per call, the error as a JSON object),
so this module speaks it over uvicorn: Connect clients (connect-web in the browser, connect-go, ...) and curl work.
Its streaming half is small too: each message is an envelope (a flags byte, a 4-byte big-endian length, the
message), and a server's stream ends with an end-stream envelope (flag 0x02) whose JSON carries the error, if any.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import struct
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, nullcontext
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
from shared.wire import Unparsable

log = get_logger("gateway.http")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024 * 1024  # as the gRPC port's grpc.max_receive_message_length
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Streaming calls (connectrpc.com/docs/protocol, "Streaming-Request"): their content types, and the envelope's flags.
STREAM_TYPES = ("application/connect+json", "application/connect+proto")
FLAG_COMPRESSED, FLAG_END_STREAM = 0x01, 0x02
_ENVELOPE = struct.Struct(">BI")
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
                                "connect-timeout-ms", "grpc-timeout", "te", "transfer-encoding",
                                "connect-content-encoding", "connect-accept-encoding"})
ALLOWED_REQUEST_HEADERS = "authorization, content-type, connect-protocol-version, connect-timeout-ms, grpc-timeout, " \
                          "connect-content-encoding, connect-accept-encoding, x-request-id, x-user-agent"
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
    """One RPC as the HTTP port serves it: the handler wrapped by the interceptor, its kind and message classes."""

    name: str
    handler: grpc.RpcMethodHandler
    client_streaming: bool
    server_streaming: bool
    input: type[Message]
    output: type[Message]

    @property
    def streaming(self) -> bool:
        return self.client_streaming or self.server_streaming

    def request(self, data: bytes | Message) -> Any:
        """What the handler takes for a request given as bytes or a message: a message (Unparsable when the bytes
        do not parse, which the interceptor answers as INVALID_ARGUMENT), or bytes for a forwarding handler."""
        deserialize = self.handler.request_deserializer
        if deserialize is None:
            return data.SerializeToString() if isinstance(data, Message) else data
        return deserialize(data) if isinstance(data, bytes) else data


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

            async def continuation(_details):
                return raw

            wrapped = await self._interceptor.intercept_service(continuation, details)
            found = Method(name, wrapped, descriptor.client_streaming, descriptor.server_streaming,
                           message_factory.GetMessageClass(descriptor.input_type),
                           message_factory.GetMessageClass(descriptor.output_type))
        if found is not None or len(self._methods) < 10_000:  # unknown paths are the callers': bounded
            self._methods[path] = found
        return found

    async def call(self, method: Method, request: Any, metadata: tuple, deadline: float | None) -> Any:
        """The reply of a unary call (request: bytes or a message) or of a client stream (request: an async iterator
        of what Method.request gives), as a message or bytes for a forwarded one; raises RpcFailed on an error."""
        handler = method.handler
        if handler.stream_unary is not None:
            call = handler.stream_unary(request, _Context(metadata, deadline))
        else:
            call = handler.unary_unary(method.request(request), _Context(metadata, deadline))
        if deadline is None:
            return await call
        try:
            return await asyncio.wait_for(call, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise _deadline_passed() from None

    def stream(self, method: Method, request: Any, metadata: tuple,
               deadline: float | None) -> AsyncGenerator[Any, None]:
        """The replies of a server-streaming call, as it yields them; iterating raises RpcFailed on an error (the
        caller enforces the deadline: the call only knows it)."""
        return method.handler.unary_stream(method.request(request), _Context(metadata, deadline))


def _deadline_passed() -> RpcFailed:
    status = DeadlineExceeded("the deadline passed before the call completed").to_status()
    return RpcFailed(status.code, status.details, status.trailing_metadata)


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


def error_json(code: grpc.StatusCode, message: str, status_bytes: bytes = b"") -> dict[str, Any]:
    """A Connect error as JSON: code, message and the google.rpc.Status details, each as type, base64 value and a
    readable `debug` copy (a unary call's body, or the `error` of a stream's end-stream message)."""
    body: dict[str, Any] = {"code": CONNECT_CODES.get(code, ("unknown", 500))[0], "message": message}
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
    return body


def connect_error(code: grpc.StatusCode, message: str, status_bytes: bytes = b"") -> tuple[int, bytes]:
    """The HTTP status and JSON body of a unary call's Connect error."""
    body = error_json(code, message, status_bytes)
    return CONNECT_CODES.get(code, ("unknown", 500))[1], json.dumps(body, ensure_ascii=False).encode()


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


def _check_encoding(encoding: str, header: str) -> str:
    if encoding in ("", "identity", "gzip"):
        return encoding
    raise InvalidArgument([(header, "must be gzip or identity")], reason="UNSUPPORTED_ENCODING")


def _gunzip(data: bytes, what: str, limit: int = MAX_BODY_BYTES) -> bytes:
    """data decompressed, at most limit bytes of it (a small body must not unpack into gigabytes)."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(data, limit + 1)
    except zlib.error:
        raise InvalidArgument([("body", f"{what} not valid gzip")]) from None
    if len(out) > limit:
        raise ResourceExhausted(f"the request body is larger than {limit} bytes unpacked", reason="BODY_TOO_LARGE")
    if not inflate.eof:
        raise InvalidArgument([("body", f"{what} not valid gzip (it is cut short)")])
    return out


def _envelopes(body: bytes, encoding: str) -> list[bytes]:
    """The messages of a streaming call's body, each unpacked from its envelope (a flags byte, a 4-byte big-endian
    length); framing that is not Connect's refuses the whole call, before any message is handled."""
    messages: list[bytes] = []
    at = 0
    while at < len(body):
        index = len(messages)
        if len(body) - at < _ENVELOPE.size:
            raise InvalidArgument([("body", f"envelope {index} is cut short: {len(body) - at} of the 5 bytes "
                                            "that give its flags and length")])
        flags, size = _ENVELOPE.unpack_from(body, at)
        at += _ENVELOPE.size
        if flags & ~FLAG_COMPRESSED:
            raise InvalidArgument([("body", f"envelope {index} has flags {flags:#04x}: a request's envelopes may "
                                            "only be flagged compressed (0x01)")])
        if size > len(body) - at:
            raise InvalidArgument([("body", f"envelope {index} is cut short: {len(body) - at} of its {size} "
                                            "bytes")])
        data = body[at:at + size]
        at += size
        if flags & FLAG_COMPRESSED:
            if encoding != "gzip":
                raise InvalidArgument([("body", f"envelope {index} is flagged compressed without "
                                                "Connect-Content-Encoding: gzip")])
            data = _gunzip(data, f"envelope {index} is")
        messages.append(data)
    return messages


def envelope(flags: int, data: bytes) -> bytes:
    """One enveloped message of a streaming call."""
    return _ENVELOPE.pack(flags, len(data)) + data


def _decode(method: Method, data: bytes, as_json: bool) -> Any:
    """A request as its handler takes it; JSON that is not the request message becomes an Unparsable (answered as
    INVALID_ARGUMENT naming `body` once the call is authenticated, as undecodable bytes are over gRPC)."""
    if not as_json:
        return method.request(data)
    try:
        return method.request(protojson.parse(data, method.input))
    except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError, DecodeError) as error:
        return Unparsable(InvalidArgument([("body", f"is not a JSON {method.input.DESCRIPTOR.name}: "
                                                    f"{shorten(str(error), 160)}")]))


def _encode(method: Method, reply: Any, as_json: bool) -> bytes:
    if as_json:
        return protojson.dump(reply if isinstance(reply, Message) else method.output.FromString(reply))
    return reply.SerializeToString() if isinstance(reply, Message) else reply


async def _requests(method: Method, payloads: list[bytes], as_json: bool) -> AsyncIterator[Any]:
    for data in payloads:
        yield _decode(method, data, as_json)


async def _disconnected(receive) -> None:
    """Returns when the client goes away (the request body already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class ConnectApp:
    """An ASGI app: Connect calls (unary and streaming) under /<package.Service>/<Method>, CORS preflights; other
    paths go to `pages` (the tracker, the example page, the console)."""

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
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in STREAM_TYPES:
            await self._stream(scope, receive, send, headers, content_type, cors)
            return
        status, body, answer_type = await self._call(scope, receive, headers, content_type)
        await _send(send, status, body, [(b"content-type", answer_type), *cors])

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

    async def _call(self, scope, receive, headers: dict[str, str], content_type: str) -> tuple[int, bytes, bytes]:
        as_json = content_type == "application/json"
        try:
            if scope["method"] != "POST":
                raise _Unsupported(405, "Connect calls are POST requests")
            if content_type not in ("application/json", "application/proto"):
                raise _Unsupported(415, "Content-Type must be application/json or application/proto (a unary "
                                        "call), or application/connect+json or application/connect+proto (a "
                                        "streaming call)")
            method = await self.dispatcher.method(scope["path"])
            if method is None:
                return (*connect_error(grpc.StatusCode.UNIMPLEMENTED, f"no method {shorten(scope['path'], 120)}"),
                        b"application/json")
            if method.streaming:
                raise _Unsupported(415, f"{method.name} streams: call it with Content-Type application/connect+json "
                                        "or application/connect+proto (enveloped messages)")
            deadline = _deadline(headers)
            encoding = _check_encoding(headers.get("content-encoding", "").lower(), "Content-Encoding")
            body = await _read_body(receive)
            if encoding == "gzip":
                body = _gunzip(body, "is")
            metadata = tuple((k, v) for k, v in headers.items() if k not in _TRANSPORT_HEADERS)
            reply = await self.dispatcher.call(method, _decode(method, body, as_json), metadata, deadline)
        except _Unsupported as error:
            return error.status, error.message.encode(), b"text/plain"
        except (RpcFailed, TailorError) as error:
            return (*connect_error(*_status_of(error)), b"application/json")
        except ConnectionError:
            return 499, b"", b"text/plain"
        return 200, _encode(method, reply, as_json), b"application/json" if as_json else b"application/proto"

    async def _stream(self, scope, receive, send, headers: dict[str, str], content_type: str,
                      cors: list[tuple[bytes, bytes]]) -> None:
        """A streaming call: 200 and the replies as envelopes, then the end-stream message (its error, if any)."""
        method = await self.dispatcher.method(scope["path"])
        if scope["method"] != "POST":
            await _send(send, 405, b"Connect calls are POST requests", [(b"content-type", b"text/plain"), *cors])
            return
        if method is not None and not (method.client_streaming ^ method.server_streaming):
            reason = (b"it streams both ways, which needs HTTP/2: it is served over gRPC only" if method.streaming
                      else b"it is a unary call: Content-Type application/json or application/proto")
            await _send(send, 415, method.name.encode() + b": " + reason, [(b"content-type", b"text/plain"), *cors])
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode()), *cors]})
        as_json = content_type == "application/connect+json"
        end: dict[str, Any] = {}
        try:
            if method is None:
                raise RpcFailed(grpc.StatusCode.UNIMPLEMENTED, f"no method {shorten(scope['path'], 120)}", ())
            deadline = _deadline(headers)
            encoding = _check_encoding(headers.get("connect-content-encoding", "").lower(), "Connect-Content-Encoding")
            payloads = _envelopes(await _read_body(receive), encoding)
            metadata = tuple((k, v) for k, v in headers.items() if k not in _TRANSPORT_HEADERS)
            if method.client_streaming:
                reply = await self.dispatcher.call(method, _requests(method, payloads, as_json), metadata, deadline)
                await send({"type": "http.response.body", "body": envelope(0, _encode(method, reply, as_json)),
                            "more_body": True})
            else:
                if len(payloads) != 1:
                    raise InvalidArgument([("body", f"must be one request message for {method.name}, not "
                                                    f"{len(payloads)}")])
                await self._serve(send, receive, method, _decode(method, payloads[0], as_json), metadata, deadline,
                                  as_json)
        except (RpcFailed, TailorError) as error:
            end["error"] = error_json(*_status_of(error))
        except ConnectionError:
            return  # the client went away: nobody to tell
        await send({"type": "http.response.body", "more_body": False,
                    "body": envelope(FLAG_END_STREAM, json.dumps(end, ensure_ascii=False).encode())})

    async def _serve(self, send, receive, method: Method, request: Any, metadata: tuple, deadline: float | None,
                     as_json: bool) -> None:
        """Writes a server stream's replies as they come, until it ends, fails, passes its deadline or the client
        goes away (then the stream is cancelled, as over gRPC)."""
        async def pump() -> None:
            async with aclosing(self.dispatcher.stream(method, request, metadata, deadline)) as replies:
                async for reply in replies:
                    await send({"type": "http.response.body", "body": envelope(0, _encode(method, reply, as_json)),
                                "more_body": True})

        async def bounded() -> None:
            if deadline is None:
                return await pump()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await pump()
            except TimeoutError:
                raise _deadline_passed() from None

        pumping, gone = asyncio.ensure_future(bounded()), asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait([pumping, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, gone):
                task.cancel()
            await asyncio.gather(pumping, gone, return_exceptions=True)
        if not pumping.cancelled() and pumping.exception() is not None:
            raise pumping.exception()  # type: ignore[misc]
        if pumping.cancelled():
            raise ConnectionError("client disconnected")


class _Unsupported(Exception):
    """A request that is not a Connect call at all: answered with a plain HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


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
