"""Bench: `tailor import events` of a 50k-row purchases CSV (1% bad rows) through the whole suite as `make run`
starts it, next to a bare COPY of the same file into a scratch table of the suite's database (the floor of
getting these rows into PostgreSQL at all), measured in the same run.

The import is the real command line in a subprocess (interpreter start included), with its default batches and
concurrency; it validates every row, sends them over IngestEvents, reports each rejected row with its column and
keeps a checkpoint. A second run of the same command shows what resuming a finished import costs.
BENCH_IMPORT_ROWS changes the size. The last line is the summary.
"""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from tests.bench._common import running_suite
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


async def stored_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM gateway.inbox WHERE tenant_id = 'demo'")
    finally:
        await conn.close()


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
            before = asyncio.run(stored_rows(ready["dsn"]))
            import_seconds, first = tailor_import(ready, path)
            stored = asyncio.run(stored_rows(ready["dsn"])) - before
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
    print(f"\ncopy_rows_per_s={copy_per_s:.0f} rows_per_s={rows_per_s:.0f} rejected={rejected}")


if __name__ == "__main__":
    main()
