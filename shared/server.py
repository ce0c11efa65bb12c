"""The one gRPC server builder every service uses: grpc.aio, health, reflection, call context, errors, drain."""

from __future__ import annotations

import asyncio
import inspect
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_status import rpc_status

from shared import context as ctx
from shared import metrics, reflection, wire
from shared.db import is_contention, is_database_outage, watch_database
from shared.errors import Aborted, InvalidArgument, TailorError, Unavailable, rich_status_of
from shared.log import get_logger
from shared.settings import env_str

log = get_logger("shared.server")

# Methods that skip authentication and the per-RPC log line.
_INFRA_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# What an answer during a database or downstream outage asks the client to wait before retrying.
RETRY_AFTER_SECONDS = 1.0
# A health service name that stays SERVING while the process runs, even during a database outage (when "" and
# the services are NOT_SERVING): what a liveness probe asks, so an outage takes replicas out of rotation
# without getting them restarted.
LIVENESS_SERVICE = "liveness"

# An authenticator gets the full method name and the invocation metadata and returns the tenant id,
# or raises a TailorError (UNAUTHENTICATED, PERMISSION_DENIED, ...): the gateway's checks API keys, the domain
# services' checks the internal token the gateway signed (shared/service_auth.py: Verifier.authenticate).
Authenticator = Callable[[str, dict[str, str]], Awaitable[str]]


def _contract_violations(request) -> list[tuple[str, str]]:
    """The contract's violations in a request (empty when it has none, or is not a message)."""
    if not isinstance(request, Message):
        return []
    from shared import contract  # the contract module generates code on first use; only failed calls need it

    try:
        return contract.violations(request)
    except Exception:  # noqa: BLE001 - the original error is what gets reported
        return []


class _CallScope:
    """Binds request id, tenant and deadline for one call, and turns errors into rich statuses."""

    def __init__(self, method: str, authenticate: Authenticator | None):
        self.method = method
        self.authenticate = authenticate
        self.infra = method.startswith(_INFRA_PREFIXES)

    async def enter(self, context: grpc.aio.ServicerContext) -> None:
        self.start = time.perf_counter()
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        ctx.request_id_var.set(metadata.get(ctx.REQUEST_ID_HEADER) or ctx.new_request_id())
        remaining = context.time_remaining()
        ctx.deadline_var.set(None if remaining is None else time.monotonic() + remaining)
        ctx.tenant_var.set("")
        ctx.token_var.set("")
        if self.authenticate is not None and not self.infra:
            ctx.tenant_var.set(await self.authenticate(self.method, metadata))

    async def fail(self, context: grpc.aio.ServicerContext, error: BaseException, request=None) -> None:
        if isinstance(error, TailorError):
            status = error.to_status()
        elif isinstance(error, grpc.aio.AioRpcError):
            status = rich_status_of(error)
            if error.code() == grpc.StatusCode.UNAVAILABLE and not rpc_status.from_call(error):
                # A downstream service that could not be reached at all (no rich status of its own).
                log.warning("rpc_downstream_unavailable", method=self.method, details=error.details())
                status = Unavailable("a service this call needs is unavailable; retry shortly",
                                     reason="DOWNSTREAM_UNAVAILABLE",
                                     retry_after_seconds=RETRY_AFTER_SECONDS).to_status()
        elif is_database_outage(error):
            log.warning("rpc_database_unavailable", method=self.method, error=f"{type(error).__name__}: {error}")
            status = Unavailable("the database is unavailable; retry shortly", reason="DATABASE_UNAVAILABLE",
                                 retry_after_seconds=RETRY_AFTER_SECONDS).to_status()
        elif is_contention(error):
            # Retries inside the handler (where it has them) were spent: the caller may repeat the call.
            log.warning("rpc_contention", method=self.method, error=type(error).__name__)
            status = Aborted("a concurrent write of the same records won; nothing was changed, retry").to_status()
        elif (found := _contract_violations(request)):
            # The handler tripped on input the contract refuses for every message (a NUL, a time out of range):
            # the caller's mistake, answered as such and naming the field; the handler wrote nothing it kept.
            log.warning("rpc_refused_late", method=self.method, error=f"{type(error).__name__}: {error}")
            status = InvalidArgument(found).to_status()
        else:
            log.exception("rpc_unexpected_error", method=self.method)
            status = grpc.Status()
            status.code = grpc.StatusCode.INTERNAL
            status.details = f"internal error; request id {ctx.request_id_var.get()}"
            status.trailing_metadata = ()
        self.code = status.code
        await context.abort(status.code, status.details, status.trailing_metadata)

    def done(self, code: grpc.StatusCode) -> None:
        if self.infra:
            return
        seconds = time.perf_counter() - self.start
        name = getattr(self, "code", code).name
        metrics.record_rpc(self.method, name, seconds)
        log.info("rpc", method=self.method, code=name, duration_ms=round(seconds * 1000, 3))


def _wrap(handler: grpc.RpcMethodHandler, method: str, authenticate: Authenticator | None):
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary
        streaming = handler.unary_unary is None

        async def unary_response(request_or_iterator, context):
            scope = _CallScope(method, authenticate)
            code = grpc.StatusCode.OK
            try:
                await scope.enter(context)
                request_or_iterator = wire.checked(request_or_iterator, streaming)
                return await inner(request_or_iterator, context)
            except grpc.aio.AbortError:
                code = grpc.StatusCode.UNKNOWN
                raise
            except BaseException as error:  # every error must become a status
                if isinstance(error, asyncio.CancelledError):
                    code = grpc.StatusCode.CANCELLED
                    raise
                await scope.fail(context, error, None if streaming else request_or_iterator)
            finally:
                scope.done(code)

        factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return factory(
            unary_response,
            request_deserializer=wire.tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    inner = handler.unary_stream or handler.stream_stream
    streaming = handler.unary_stream is None

    async def stream_response(request_or_iterator, context):
        scope = _CallScope(method, authenticate)
        code = grpc.StatusCode.OK
        try:
            await scope.enter(context)
            request_or_iterator = wire.checked(request_or_iterator, streaming)
            async for item in inner(request_or_iterator, context):
                yield item
        except grpc.aio.AbortError:
            code = grpc.StatusCode.UNKNOWN
            raise
        except BaseException as error:
            if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
                code = grpc.StatusCode.CANCELLED
                raise
            await scope.fail(context, error, None if streaming else request_or_iterator)
        finally:
            scope.done(code)

    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return factory(
        stream_response,
        request_deserializer=wire.tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class CallContextInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler so each call has its context bound, is authenticated, logged, and fails with a rich status."""

    def __init__(self, authenticate: Authenticator | None):
        self.authenticate = authenticate
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._cache.get(method)
        if wrapped is None or getattr(wrapped, "_inner", None) is not handler:
            wrapped = _wrap(handler, method, self.authenticate)
            wrapped._inner = handler
            self._cache[method] = wrapped
        return wrapped


@dataclass
class Service:
    """A servicer and how to add it to a server."""

    add_to_server: Callable[[object, grpc.aio.Server], None]
    servicer: object
    full_name: str


@dataclass
class RunningServer:
    """A started server, its bound port and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service_names: list[str] = field(default_factory=list)
    # Run when draining starts, before in-flight calls are waited for (Built.draining).
    draining: list[Callable[[], None]] = field(default_factory=list)

    async def set_serving(self, serving: bool) -> None:
        """Reports every service (and the server as a whole, "") SERVING or NOT_SERVING on the health service."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Marks every service NOT_SERVING, then drains in-flight calls for up to grace seconds."""
        await self.health.enter_graceful_shutdown()
        for end in self.draining:
            end()
        await self.server.stop(grace)


async def start_server(
    services: Iterable[Service],
    *,
    port: int,
    host: str = "0.0.0.0",
    authenticate: Authenticator | None,
    generic_handlers: Iterable[grpc.GenericRpcHandler] = (),
    extra_reflection_names: Iterable[str] = (),
    reuse_port: bool = False,
    reflection_pool=None,
) -> RunningServer:
    """Starts a grpc.aio server with the services, health, reflection and the call-context interceptor.

    authenticate checks every call but health and reflection (None: none is checked, for a server of health alone).

    reuse_port lets several processes listen on one port (SO_REUSEPORT; the kernel spreads new connections over
    them): replicas of the gateway share its public port, and a successor can start before its predecessor stops.
    """
    server = grpc.aio.server(
        interceptors=[CallContextInterceptor(authenticate)],
        options=[("grpc.so_reuseport", int(reuse_port)), ("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    services = list(services)
    for service in services:
        service.add_to_server(service.servicer, server)
    if generic_handlers:
        server.add_generic_rpc_handlers(tuple(generic_handlers))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [s.full_name for s in services]
    reflection.enable(
        server,
        [*names, *extra_reflection_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
        reflection_pool,  # None: every contract; the gateway's holds only the methods it serves
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for name in ["", LIVENESS_SERVICE, *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=bound, health=health, service_names=names)


async def run_until_signal(
    running: RunningServer,
    *,
    grace: float = 10.0,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    database: str | None = None,
    ready_file: str | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then drains gracefully and runs on_stop.

    With a database DSN, health follows the database: NOT_SERVING while it does not answer, SERVING again after.
    With a ready_file, the bound port is written there once serving (how a supervisor tells this process apart
    from another one listening on the same port).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(watch_database(database, running.set_serving)) if database else None
    exporter = asyncio.create_task(metrics.serve(metrics.metrics_port(running.port),
                                                 env_str("TAILOR_BIND_HOST", "0.0.0.0")))
    log.info("server_started", port=running.port, services=running.service_names)
    if ready_file:
        Path(ready_file).write_text(str(running.port))
    await stop.wait()
    log.info("server_draining", grace_s=grace)
    for task in (watch, exporter):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await running.stop(grace)
    if on_stop is not None:
        result = on_stop()
        if inspect.isawaitable(result):
            await result
    log.info("server_stopped")
