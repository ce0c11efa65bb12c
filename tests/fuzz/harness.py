"""Runs drawn requests against real servers and judges each answer.

Targets are every method the gateway serves to the public (its own and the admin RPCs it forwards, called with an
API key) and every method of the four domain services (called on their own ports as the gateway calls them). A case
passes when the call succeeds or ends in a precise client error; it fails on INTERNAL, UNKNOWN, an unexpected code,
a RESOURCE_EXHAUSTED without RetryInfo, a refused credential, an error text that echoes a long string of the request,
a refused write that changed the tenant's rows, or a server that stops answering.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from dataclasses import dataclass, field

import asyncpg
import grpc
from google.protobuf import descriptor_pool

from personalization.common.v1 import common_pb2  # noqa: F401 - registers the descriptors
from personalization.decision.v1 import decision_service_pb2  # noqa: F401
from personalization.gateway.v1 import gateway_service_pb2  # noqa: F401
from personalization.identity.v1 import identity_service_pb2  # noqa: F401
from personalization.profile_graph.v1 import profile_graph_service_pb2  # noqa: F401
from personalization.recommender.v1 import recommender_service_pb2  # noqa: F401
from services.gateway.auth import METHOD_SCOPES
from shared.errors import retry_delay_of, status_details
from tests.internal_auth import tenant_md

DOMAIN_SERVICES = {
    "identity": "personalization.identity.v1.IdentityService",
    "profile_graph": "personalization.profile_graph.v1.ProfileGraphService",
    "recommender": "personalization.recommender.v1.RecommenderService",
    "decision": "personalization.decision.v1.DecisionService",
}
SCHEMAS = ("gateway", "identity", "profile_graph", "recommender", "decision")
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED,
}
# Method names that only read: a refused call of any other method must leave the tenant's rows as they were.
READ_PREFIXES = ("Get", "List", "Watch", "Export", "Search", "Evaluate", "Explain", "Recommend", "Check", "Preview",
                 "Validate", "Assign", "Describe", "Count")
ECHO_LIMIT = 40  # characters of a request string an error text may repeat
CALL_TIMEOUT = 20.0
WATCH_TIMEOUT = 2.0
# Tables written in the background (usage metering flushed every few seconds), not by the call being judged.
BACKGROUND_TABLES = {"gateway.credit_usage"}
# Methods whose success leaves writes to finish after the answer (the decision log is written off the request path;
# batch jobs, ruleset runs and trainings run on): the next refused write is judged once the rows stop moving.
BACKGROUND_WRITERS = ("GetDecisions", "GetRecommendations", "StartBatchJob", "RunRuleset", "TrainRecommender",
                      "RecomputeAll")
SETTLE_SECONDS = 10.0
STREAM_MESSAGES = 3  # responses read from a server stream before the call is cancelled


@dataclass(frozen=True)
class Target:
    """One method to fuzz: where it is served and how it is authenticated."""

    kind: str  # "public" or "internal"
    path: str  # /package.Service/Method
    address: str
    metadata: tuple  # an API key's (public targets)
    signed_for: str = ""  # internal targets: the tenant of the token each call carries, minted when it is sent

    @property
    def descriptor(self):
        service, name = self.path.strip("/").split("/")
        return descriptor_pool.Default().FindMethodByName(f"{service}.{name}")

    @property
    def writes(self) -> bool:
        return not self.path.rsplit("/", 1)[1].startswith(READ_PREFIXES)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.path.rsplit('.', 1)[1]}"


def targets(gateway: str, domain: dict[str, str], api_md: tuple, tenant: str) -> list[Target]:
    """Every public method (API key) and every internal method (the token the gateway signs for the tenant)."""
    out = [Target("public", path, gateway, api_md) for path in METHOD_SCOPES]
    for svc, full in DOMAIN_SERVICES.items():
        for method in descriptor_pool.Default().FindServiceByName(full).methods:
            out.append(Target("internal", f"/{full}/{method.name}", domain[svc], (), signed_for=tenant))
    return out


@dataclass
class Failure:
    target: str
    problem: str
    request_bytes: int


@dataclass
class Tally:
    """What a fuzz run found."""

    cases: int = 0
    internal_errors: int = 0
    crashes: int = 0
    codes: collections.Counter = field(default_factory=collections.Counter)
    per_target: dict[str, collections.Counter] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def fail(self, target: Target, problem: str, size: int) -> None:
        self.failures.append(Failure(target.name, problem, size))


class LoopThread:
    """An asyncio loop in a thread of its own: Hypothesis drives calls synchronously from the test's thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Fuzzer:
    """Sends raw request bytes to targets and judges the outcomes (call from the LoopThread's loop)."""

    def __init__(self, dsn: str, tenant: str, other_tenant: str):
        self.dsn = dsn
        self.tenant = tenant
        self.other_tenant = other_tenant
        self.tally = Tally()
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.db: asyncpg.Connection | None = None
        self.tables: dict[str, list[str]] = {}
        self.unsettled = False  # a background writer succeeded since the rows were last seen still

    async def open(self) -> None:
        self.db = await asyncpg.connect(self.dsn)
        rows = await self.db.fetch(
            "SELECT c.table_schema, c.table_name FROM information_schema.columns c"
            " JOIN information_schema.tables t USING (table_schema, table_name)"
            " WHERE c.column_name = 'tenant_id' AND t.table_type = 'BASE TABLE' AND c.table_schema = ANY($1)",
            list(SCHEMAS))
        for r in rows:
            self.tables.setdefault(r["table_schema"], []).append(r["table_name"])
        parts = [f"SELECT '{s}.{t}' AS t, count(*) AS n FROM \"{s}\".\"{t}\" WHERE tenant_id = $1"
                 for s, ts in self.tables.items() for t in ts if f"{s}.{t}" not in BACKGROUND_TABLES]
        self.count_sql = " UNION ALL ".join(parts)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        if self.db is not None:
            await self.db.close()

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self.channels:
            self.channels[address] = grpc.aio.insecure_channel(
                address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        return self.channels[address]

    async def row_counts(self, tenant: str) -> dict[str, int]:
        return {r["t"]: r["n"] for r in await self.db.fetch(self.count_sql, tenant)}

    async def settled_counts(self) -> dict[str, int]:
        """The tenant's row counts, once background writes left by earlier cases have stopped moving them."""
        counts = await self.row_counts(self.tenant)
        waited = 0.0
        while self.unsettled and waited < SETTLE_SECONDS:
            await asyncio.sleep(0.1)
            waited += 0.1
            again = await self.row_counts(self.tenant)
            if again == counts:
                self.unsettled = False
            counts = again
        return counts

    async def call(self, target: Target, data: bytes) -> tuple[grpc.StatusCode, grpc.aio.AioRpcError | None]:
        method = target.descriptor
        channel = self.channel(target.address)
        kwargs = dict(request_serializer=None, response_deserializer=None)
        # A gateway's token lives 120 s: one is taken per call (the signer reuses it until half its life is left).
        metadata = tenant_md(target.signed_for) if target.signed_for else target.metadata
        try:
            if method.client_streaming:
                async def requests():
                    yield data
                    yield data
                await channel.stream_unary(target.path, **kwargs)(requests(), metadata=metadata,
                                                                   timeout=CALL_TIMEOUT)
            elif method.server_streaming:
                # A watch waits for events that may never come: its deadline ending the call is success.
                watch = target.path.rsplit("/", 1)[1].startswith("Watch")
                call = channel.unary_stream(target.path, **kwargs)(data, metadata=metadata,
                                                                   timeout=WATCH_TIMEOUT if watch else CALL_TIMEOUT)
                read = 0
                async for _ in call:
                    read += 1
                    if read >= STREAM_MESSAGES:
                        call.cancel()
                        break
            else:
                await channel.unary_unary(target.path, **kwargs)(data, metadata=metadata,
                                                                 timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming \
                    and target.path.rsplit("/", 1)[1].startswith("Watch"):
                return grpc.StatusCode.OK, None
            return error.code(), error
        return grpc.StatusCode.OK, None

    async def case(self, target: Target, data: bytes, strings: list[str], check_rows: bool) -> None:
        """One drawn request: call, then judge."""
        t = self.tally
        t.cases += 1
        before = await self.settled_counts() if check_rows and target.writes else None
        code, error = await self.call(target, data)
        if code == grpc.StatusCode.OK and target.path.rsplit("/", 1)[1].startswith(BACKGROUND_WRITERS):
            self.unsettled = True
        t.codes[code.name] += 1
        t.per_target.setdefault(target.name, collections.Counter())[code.name] += 1
        if code == grpc.StatusCode.OK or code == grpc.StatusCode.CANCELLED:
            return
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            t.internal_errors += 1
            t.fail(target, f"{code.name}: {(error.details() or '')[:300]}", len(data))
            return
        if code == grpc.StatusCode.UNAVAILABLE:
            if not await self.alive(target.address):
                t.crashes += 1
                t.fail(target, f"server at {target.address} stopped answering", len(data))
                return
        if code == grpc.StatusCode.UNAUTHENTICATED:  # every case carries a valid credential: the judgement is void
            t.fail(target, f"the credential was refused: {(error.details() or '')[:200]}", len(data))
            return
        if code not in CLIENT_ERRORS:
            t.fail(target, f"{code.name} is not a client error: {(error.details() or '')[:300]}", len(data))
            return
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _retry_delay(error) is None:
            t.fail(target, f"RESOURCE_EXHAUSTED without RetryInfo: {(error.details() or '')[:300]}", len(data))
        echoed = self.echo(error, strings)
        if echoed:
            t.fail(target, f"{code.name} echoes {len(echoed)} characters of the request: {echoed[:60]!r}... in "
                           f"{(error.details() or '')[:200]!r}", len(data))
        if before is not None:
            after = await self.row_counts(self.tenant)
            changed = {k: (before.get(k, 0), v) for k, v in after.items() if before.get(k, 0) != v}
            if changed:
                t.fail(target, f"refused with {code.name} but rows changed: {changed}", len(data))

    @staticmethod
    def echo(error: grpc.aio.AioRpcError, strings: list[str]) -> str:
        """The longest piece (over ECHO_LIMIT characters) of a request string found in the error's texts."""
        long = [s for s in strings if len(s) > ECHO_LIMIT]
        if not long:
            return ""
        try:
            violations, _ = status_details(error)
        except ValueError:  # the rich status names another code than the call ended with
            violations = []
        texts = [d for _, d in violations]
        message = error.details() or ""
        for f, _ in violations:  # the field path names what the caller sent (map keys); that is not an echo
            if f:
                message = message.replace(f, "")
        texts.append(message)
        for text in texts:
            for i in range(0, max(0, len(text) - ECHO_LIMIT)):
                window = text[i:i + ECHO_LIMIT + 1]
                if any(window in s for s in long):
                    return window
        return ""

    async def alive(self, address: str) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        for _ in range(20):
            try:
                await health_pb2_grpc.HealthStub(self.channel(address)).Check(
                    health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
                return True
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.25)
        return False

    def report(self) -> str:
        lines = [f"cases={self.tally.cases} internal_errors={self.tally.internal_errors} crashes={self.tally.crashes}"
                 f" failures={len(self.tally.failures)}"]
        seen = set()
        for f in self.tally.failures:
            key = (f.target, f.problem[:80])
            if key not in seen:
                seen.add(key)
                lines.append(f"  {f.target} ({f.request_bytes} B): {f.problem}")
        return "\n".join(lines)


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    try:
        return retry_delay_of(error)
    except ValueError:  # the rich status names another code than the call ended with
        return None
