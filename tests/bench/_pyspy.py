"""Profiles of a bench's processes with py-spy, and the CPU they use: record them while the bench saturates, then
summarize. Every bench that profiles (decide.py, batch.py: BENCH_PROFILE_DIR=folder) uses this one module.

`recording(pids, folder, seconds)` runs one `py-spy record --format raw --nonblocking` per process (collapsed
Python stacks, idle threads left out; --native would stop each process at every sample, which cuts a saturated
suite's throughput tenfold); `summary(folder, names)` reads them back as text: per process, the
share of its samples each kind of work takes (serialization, SQL, CEL, Python logic, gRPC and the event loop)
and the functions with the most self time. `CpuMeter` counts the CPU seconds of the same processes and of
PostgreSQL's server and backends.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil

RATE = 100  # samples per second per process
TOP = 8  # functions listed per process

# A sample's kind is that of its innermost frame that names one (checked in this order): asyncio's own frames are
# skipped, so a socket write under asyncpg is SQL; a frame of our code makes it Python logic; a sample with no such
# frame (the loop's select, grpc's callbacks run by Handle._run) is gRPC and the event loop.
KINDS = (
    ("SQL", re.compile(r"asyncpg|/postgres[a-z_]*\.py")),
    ("CEL", re.compile(r"\(cel/|decision/rules\.py|rule_limits\.py")),
    ("serialization", re.compile(
        r"google/protobuf|json_format|translate\.py|json/|"
        r"^(profile_view|context_view|struct|item_rows|_plain|value_to_py|struct_to_dict|to_profile_pb|to_item_pb|"
        r"fit_profile|served|log_entry|personalization|shape_items)[ .(]")),
    ("gRPC and event loop", re.compile(r"grpc|\(threading\.py|socketserver")),
)
# py-spy names files relative to their sys.path entry: gateway/decide.py, shared/server.py.
OURS = re.compile(r"\((gateway|identity|profile_graph|recommender|decision|shared)/|prometheus_client|structlog")
PYTHON = "Python logic"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None or (Path(sys.executable).parent / "py-spy").exists()


def _exe() -> str:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


@contextlib.contextmanager
def recording(pids: dict[str, int], folder: Path, seconds: float | None = None):
    """Records every process from entry: for `seconds` (waited for on exit), or without a set length until exit."""
    folder.mkdir(parents=True, exist_ok=True)
    length = ["--duration", str(max(1, int(seconds)))] if seconds else []
    procs = [subprocess.Popen([_exe(), "record", "--format", "raw", "--nonblocking", "--rate", str(RATE), *length,
                               "--pid", str(pid), "--output", str(folder / f"{name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in pids.items()]
    try:
        yield
    finally:
        for proc in procs:
            if not seconds:
                proc.send_signal(signal.SIGINT)  # py-spy writes what it has and stops
            proc.wait(timeout=(seconds or 0) + 60)


class CpuMeter:
    """CPU seconds the processes of a chain spend (user + system), by name; PostgreSQL's with all its backends.

    CPU per request is far less sensitive than requests per second to what else the machine runs, so benches report
    both."""

    def __init__(self, pids: dict[str, int], postgres_port: int | None = None):
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.postmaster = next((p for p in psutil.process_iter(["cmdline"])
                                if _is_postmaster(p.info["cmdline"] or [], postgres_port)), None) \
            if postgres_port else None
        self.roles: dict[int, str] = {}  # PostgreSQL process -> its role (a backend) or its kind (walwriter...)
        self.start = self._read()

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        try:
            t = proc.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def _read(self) -> dict[tuple[str, int], float]:
        out = {(name, p.pid): self._cpu(p) for name, p in self.procs.items()}
        if self.postmaster is not None:
            for p in [self.postmaster, *self.postmaster.children(recursive=True)]:
                out[("postgres", p.pid)] = self._cpu(p)
                if p.pid not in self.roles:
                    with contextlib.suppress(psutil.Error):
                        title = " ".join(p.cmdline()).removeprefix("postgres: ").split()
                        self.roles[p.pid] = title[0] if title and p != self.postmaster else "postmaster"
        return out

    def used(self) -> dict[str, float]:
        """CPU seconds by process name since the meter was made (postgres: the server and its backends)."""
        end = self._read()
        by_name: dict[str, float] = {}
        for (name, pid), cpu in end.items():
            by_name[name] = by_name.get(name, 0.0) + cpu - self.start.get((name, pid), 0.0)
        return by_name

    def postgres_roles(self) -> dict[str, float]:
        """PostgreSQL's CPU seconds since the meter was made, by backend role (tailor_gateway...) or process kind."""
        end = self._read()
        by_role: dict[str, float] = {}
        for (name, pid), cpu in end.items():
            if name == "postgres":
                role = self.roles.get(pid, "?")
                by_role[role] = by_role.get(role, 0.0) + cpu - self.start.get((name, pid), 0.0)
        return by_role


def _is_postmaster(cmdline: list[str], port: int | None) -> bool:
    return bool(cmdline) and cmdline[0].endswith("/postgres") and "-p" in cmdline[:-1] \
        and cmdline[cmdline.index("-p") + 1] == str(port)


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("site-packages/", "python3.11/", "/work/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m['func']} ({file})" if file else m["func"]


_LOOP = re.compile(r"^(Handle\._run|BaseEventLoop\._run_once|Thread\.run) ")
_SELECT = re.compile(r"^\w*Selector\.select ")
WAIT = "select"  # the loop waiting for I/O: py-spy cannot always tell it from work, so it is shown apart


def _kind(frames: list[str]) -> str:
    if _SELECT.match(frames[-1]):
        return WAIT
    for frame in reversed(frames):
        if _LOOP.match(frame):
            break  # what encloses the loop (serve, runpy) says nothing of this sample
        for kind, pattern in KINDS:
            if pattern.search(frame):
                return kind
        if OURS.search(frame):
            return PYTHON
    return "gRPC and event loop"


def summarize_one(path: Path) -> tuple[int, Counter, Counter]:
    """(samples, samples by kind, self samples by function) of one recording."""
    kinds: Counter = Counter()
    self_time: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        kinds[_kind(frames)] += n
        self_time[_short(frames[-1])] += n
    return total, kinds, self_time


def summary(folder: Path, names: list[str], seconds: float) -> list[str]:
    """The text of the profiles of `names` (recorded into folder), busiest process first."""
    per = {name: summarize_one(folder / f"{name}.txt") for name in names if (folder / f"{name}.txt").exists()}
    lines = []
    order = ["serialization", "SQL", "CEL", PYTHON, "gRPC and event loop"]
    for name, (total, kinds, self_time) in sorted(per.items(), key=lambda kv: -(kv[1][0] - kv[1][1][WAIT])):
        busy = total - kinds[WAIT]
        if not busy:
            continue
        lines.append(f"## {name}: {busy / (RATE * seconds):.0%} of one core busy "
                     f"({busy} samples, and {kinds[WAIT]} in select)")
        lines.append("   " + ", ".join(f"{k} {kinds[k] / busy:.0%}" for k in order))
        for func, n in [(f, n) for f, n in self_time.most_common(TOP + 2) if not _SELECT.match(f)][:TOP]:
            lines.append(f"   {n / busy:6.1%}  {func[:110]}")
    return lines
