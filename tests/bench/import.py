"""Bench: `tailor import events` of a 50k-row purchases CSV (1% bad rows) through the whole suite as `make run`
starts it, next to a bare COPY of the same file into a scratch table of the suite's database (the floor of
getting these rows into PostgreSQL at all), measured in the same run.

The import is the real command line in a subprocess (interpreter start included), with its default batches and
concurrency; it validates every row, sends them over IngestEvents, reports each rejected row with its column and
keeps a checkpoint. Its events go in the gateway's bulk lane (a backfill: acknowledged as fast as they arrive,
applied behind live events), so rows_per_s is the acknowledgement rate and drained_s says how long after the start
of the import the pipeline had applied them all. A second run of the same command shows what resuming a finished
import costs.
BENCH_IMPORT_ROWS changes the size. The last line is the summary.

Rows per second move with whatever else the machine runs; the CPU seconds each process spends do not as much. So
the bench also prints, per process (the CLI, each service and pipeline worker, PostgreSQL's server and backends),
the CPU seconds spent while the import ran and until the pipeline had drained the inbox, and their sum per row.
"""

from __future__ import annotations

import asyncio
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from tests.bench._common import running_suite
from tests.bench._pyspy import CpuMeter
from tests.integration.cli.purchases import MAPPING, write_purchases

ROWS = int(os.environ.get("BENCH_IMPORT_ROWS", "50000"))


async def bare_copy(dsn: str, path: Path) -> float:
    """Seconds to COPY the file's rows into an unlogged-free, index-free scratch table."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS public.bench_import_copy")
        await conn.execute("CREATE TABLE public.bench_import_copy (order_id text, customer text, email text, "
                           "at text, sku text, qty text, price text, channel text)")
        started = time.perf_counter()
        with path.open("rb") as f:
            await conn.copy_to_table("bench_import_copy", source=f, schema_name="public", format="csv", header=True)
        seconds = time.perf_counter() - started
        copied = await conn.fetchval("SELECT count(*) FROM public.bench_import_copy")
        assert copied == ROWS, copied
        await conn.execute("DROP TABLE public.bench_import_copy")
        return seconds
    finally:
        await conn.close()


async def stored_rows(dsn: str) -> tuple[int, int]:
    """(inbox rows, of them processed) of the bench's tenant."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, count(processed_at) AS done FROM gateway.inbox "
                                  "WHERE tenant_id = 'demo'")
        return row["n"], row["done"]
    finally:
        await conn.close()


async def wait_drained(dsn: str, timeout: float = 600.0) -> None:
    """Until the pipeline has processed every inbox row."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM gateway.inbox WHERE processed_at IS NULL"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the pipeline did not drain the inbox within {timeout:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tailor_import(ready: dict, path: Path) -> tuple[float, subprocess.CompletedProcess]:
    command = [str(Path(sys.executable).parent / "tailor"), "import", "events", "-f", str(path), *MAPPING,
               "--gateway", ready["addresses"]["gateway"], "--api-key", ready["api_key"], "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'protos'}"))
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 2):
        raise SystemExit(f"tailor import failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tailor-bench-import-") as folder:
        path = Path(folder) / "purchases.csv"
        bad = write_purchases(path, ROWS)
        with running_suite() as (ready, _):
            copy_seconds = asyncio.run(bare_copy(ready["dsn"], path))
            before, _ = asyncio.run(stored_rows(ready["dsn"]))
            meter = CpuMeter(ready["pids"], urlparse(ready["dsn"]).port)
            cli_before = children_cpu()
            started = time.perf_counter()
            import_seconds, first = tailor_import(ready, path)
            cli_cpu = children_cpu() - cli_before
            during = meter.used()
            stored, processed = asyncio.run(stored_rows(ready["dsn"]))
            stored -= before
            asyncio.run(wait_drained(ready["dsn"]))
            drained_seconds = time.perf_counter() - started
            drained = meter.used()
            resume_seconds, _ = tailor_import(ready, path)
        with (Path(folder) / "purchases.csv.rejected.csv").open(newline="") as f:
            rejected = len({row["row"] for row in csv.DictReader(f)})
    assert stored == ROWS - len(bad), (stored, first.stdout)
    assert rejected == len(bad), rejected
    copy_per_s = ROWS / copy_seconds
    rows_per_s = ROWS / import_seconds
    print(f"\n{ROWS} purchase rows, {len(bad)} bad (1%): {first.stdout.strip()}")
    print(f"{'path':<62}{'seconds':>9}{'rows/s':>10}{'x COPY':>8}")
    print(f"{'bare COPY of the file into a scratch table (floor)':<62}{copy_seconds:>9.2f}{copy_per_s:>10.0f}"
          f"{1.0:>8.2f}")
    print(f"{'tailor import events (validated, deduplicated, reported)':<62}{import_seconds:>9.2f}"
          f"{rows_per_s:>10.0f}{rows_per_s / copy_per_s:>8.2f}")
    print(f"{'the same command again (checkpoint: nothing left to do)':<62}{resume_seconds:>9.2f}")
    print(f"{'until every row was applied (from the start of the import)':<62}{drained_seconds:>9.2f}"
          f"{ROWS / drained_seconds:>10.0f}")
    during["tailor import (CLI)"] = drained["tailor import (CLI)"] = cli_cpu
    print(f"\nCPU seconds per process for {ROWS} rows: while the import ran (the pipeline had processed {processed} "
          f"events by its end), and until the pipeline had drained the inbox")
    print(f"{'process':<24}{'import':>9}{'drained':>9}")
    for name in sorted(drained, key=lambda n: -drained[n]):
        if drained[name] >= 0.01:
            print(f"{name:<24}{during.get(name, 0.0):>9.2f}{drained[name]:>9.2f}")
    cpu_during, cpu_drained = sum(during.values()), sum(drained.values())
    print(f"{'all':<24}{cpu_during:>9.2f}{cpu_drained:>9.2f}   "
          f"({cpu_during / ROWS * 1e6:.0f} and {cpu_drained / ROWS * 1e6:.0f} us per row)")
    print(f"\ncopy_rows_per_s={copy_per_s:.0f} rows_per_s={rows_per_s:.0f} rejected={rejected} "
          f"cpu_us_per_row={cpu_during / ROWS * 1e6:.0f} drained_cpu_us_per_row={cpu_drained / ROWS * 1e6:.0f} "
          f"drained_s={drained_seconds:.1f}")


if __name__ == "__main__":
    main()
