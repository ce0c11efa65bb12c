"""`tailor up` run as a user runs it, in a subprocess, for the launcher and chaos tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.ports import free_port
from tailor_cli.launcher import SERVICES

ROOT = Path(__file__).resolve().parents[3]
TAILOR = Path(sys.executable).parent / "tailor"
READY_TIMEOUT = 120.0


def launcher_env(home: Path, database_url: str | None = None, **settings: str) -> dict[str, str]:
    """The environment of a `tailor up` with its own home, free ports, and the given TAILOR_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_") and k != "DATABASE_URL"}
    if database_url:
        env["DATABASE_URL"] = database_url
    env["TAILOR_HOME"] = str(home)
    env["TAILOR_PG_PORT"] = str(free_port())
    env["TAILOR_HTTP_PORT"] = str(free_port())
    for svc in SERVICES:
        env[f"TAILOR_{svc.upper()}_PORT"] = str(free_port())
    env.update(settings)
    return env


@contextlib.contextmanager
def project_home(prefix: str):
    """A launcher home under the project (removed afterwards), for suites with their own embedded PostgreSQL: as
    root it runs as another user, who cannot enter pytest's temporary folders (private to the user running it)."""
    path = ROOT / ".tailor" / f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Launched:
    """A running `tailor up`: its process, its ready file and the lines it printed so far."""

    proc: subprocess.Popen
    ready_file: Path
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def ready(self) -> dict:
        """The ready file as the launcher last wrote it (process ids change as it restarts processes)."""
        return json.loads(self.ready_file.read_text())

    async def wait_ready(self) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                await asyncio.sleep(0.2)  # let the reader thread take the last lines
                raise AssertionError(f"tailor up exited with {self.proc.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"no ready file after {READY_TIMEOUT} s:\n{self.output}")
            await asyncio.sleep(0.2)
        return self.ready

    async def wait_line(self, text: str, timeout: float, start: int = 0) -> int:
        """Waits until a printed line (from line `start` on) contains text; returns the line's index."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(start, len(self.lines)):
                if text in self.lines[i]:
                    return i
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no line with {text!r} after {timeout} s:\n{self.output}")
            await asyncio.sleep(0.1)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as Ctrl-C would; returns the exit code and everything printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(0.1)
        return self.proc.returncode, self.output


def launch(env: dict[str, str], ready_file: Path, *args: str, demo: bool = False) -> Launched:
    """Starts `tailor up --no-demo --ready-file ready_file` with env (see launcher_env); with demo, loads the demo."""
    no_demo = [] if demo else ["--no-demo"]
    proc = subprocess.Popen([str(TAILOR), "up", *no_demo, "--ready-file", str(ready_file), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return Launched(proc, ready_file)


async def health(address: str, timeout: float = 2.0) -> int | None:
    """The server's overall health status (health_pb2.HealthCheckResponse.SERVING, ...), None when unreachable."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                   timeout=timeout)
        except grpc.aio.AioRpcError:
            return None
    return reply.status
