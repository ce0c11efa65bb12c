"""What every bench shares: free ports, percentiles, and the whole suite started as `make run` does (its own
embedded PostgreSQL under a temporary TAILOR_HOME, five service processes) and stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Benches build services in-process and start `tailor up` with the environment they have: both use this keypair
# (shared/service_auth.py), and tenant_md (tests/internal_auth.py) signs internal calls with it.
from shared.ports import free_port
from tests.internal_auth import keys

keys()
SERVICES = ("gateway", "identity", "profile_graph", "recommender", "decision")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@contextmanager
def running_suite(*, demo: bool = False, extra_env: dict | None = None):
    """Yields (ready-file contents, seconds until ready) of a fresh suite; SIGTERM and wait afterwards.

    The ready contents also carry `dsn`, the suite's embedded database, for benches that look at rows, and `home`,
    its TAILOR_HOME."""
    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as home:
        env = dict(os.environ, TAILOR_HOME=home, TAILOR_PG_PORT=str(free_port()))
        # This checkout's code, not the one the shared venv installed (a worktree's bench measured main's services).
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "protos"), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("TAILOR_LOG_LEVEL", "WARNING")
        env.pop("DATABASE_URL", None)
        for svc in SERVICES:
            env[f"TAILOR_{svc.upper()}_PORT"] = str(free_port())
        env["TAILOR_HTTP_PORT"] = str(free_port())  # the gateway's HTTP port too, so benches never take 8080
        env.update(extra_env or {})
        ready_file = Path(home) / "ready.json"
        args = [str(Path(sys.executable).parent / "tailor"), "up", "--ready-file", str(ready_file)]
        if not demo:
            args.append("--no-demo")
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while not ready_file.exists():
                if proc.poll() is not None:
                    raise SystemExit(f"tailor up exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
                if time.perf_counter() - started > 300:
                    raise SystemExit("tailor up was not ready within 300 s")
                time.sleep(0.05)
            ready = json.loads(ready_file.read_text())
            from shared.embedded_pg import EmbeddedPostgres
            from tailor_cli.launcher import DATABASE

            ready["dsn"] = EmbeddedPostgres(Path(home) / "pg", int(env["TAILOR_PG_PORT"])).dsn(DATABASE)
            ready["home"] = home
            yield ready, time.perf_counter() - started
            if os.environ.get("BENCH_KEEP_LOGS"):
                import shutil

                shutil.copytree(Path(home) / "logs", os.environ["BENCH_KEEP_LOGS"], dirs_exist_ok=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


@contextlib.asynccontextmanager
async def scratch_database(prefix: str):
    """A fresh embedded PostgreSQL in a temporary folder; yields the DSN of its `bench` database."""
    import shutil

    from shared.embedded_pg import EmbeddedPostgres

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    server = EmbeddedPostgres(data_dir=folder / "pg", port=free_port())
    server.start()
    try:
        yield await server.ensure_database("bench")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def served(built, stub_class):
    """Serves one built service on 127.0.0.1:0 and yields a stub on a channel to it (64 MB messages)."""
    import grpc

    from shared.runtime import start_built, stop_built

    running, tasks = await start_built(built, port=0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}",
                                        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    try:
        yield stub_class(channel)
    finally:
        await channel.close()
        await stop_built(built, running, tasks, grace=0)
