"""Bench: fuzzed requests for every public and internal RPC (tests/fuzz), 2,000 cases per RPC by default.

The five services run in this process on a scratch embedded PostgreSQL (tests/suite.py, no background pipeline
worker). Each case is judged as in tests/fuzz/test_fuzz_rpcs.py: success or a precise client error, never INTERNAL
or UNKNOWN, no server stops answering, a refused write changes no row of the tenant, no error text repeats more
than 40 characters of a request string; another tenant's rows stay as they were. The table gives, per service, the
cases, their outcomes and the time per case against a health check round trip measured in the same run.
Usage: python tests/bench/fuzz.py [CASES_PER_RPC] [METHOD_SUBSTRING]
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import log
from tests.bench._common import scratch_database
from tests.fuzz.setup import FuzzSession

CASES = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ONLY = sys.argv[2] if len(sys.argv) > 2 else ""


async def _health_ms(address: str, rounds: int = 200) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest())
        started = time.perf_counter()
        for _ in range(rounds):
            await stub.Check(health_pb2.HealthCheckRequest())
        return (time.perf_counter() - started) * 1000 / rounds


def main() -> None:
    log.configure("bench", "WARNING")

    async def database():
        cm = scratch_database("tailor-bench-fuzz-")
        return cm, await cm.__aenter__()

    holder = asyncio.new_event_loop()
    cm, dsn = holder.run_until_complete(database())
    try:
        with FuzzSession(dsn) as session:
            baseline = session.loop.run(_health_ms(session.addresses["gateway"]))
            chosen = [t for t in session.targets if ONLY in t.path]
            spent: dict[str, float] = collections.defaultdict(float)
            last = [time.perf_counter()]

            def progress(target):
                now = time.perf_counter()
                spent[target.name] += now - last[0]
                last[0] = now

            session.run(CASES, chosen, progress=progress)
            tally = session.fuzzer.tally
            others_ok = session.others_unchanged()
            groups: dict[str, list] = collections.defaultdict(list)
            for t in chosen:
                groups[f"{t.kind}:{t.path.split('/')[1].rsplit('.', 1)[1]}"].append(t)
            print(f"{'service':<36}{'rpcs':>6}{'cases':>9}{'ok':>8}{'client err':>12}{'internal':>10}"
                  f"{'ms/case':>10}{'x health':>10}")
            for name, ts in groups.items():
                counts = collections.Counter()
                for t in ts:
                    counts.update(tally.per_target.get(t.name, {}))
                cases = sum(counts.values())
                internal = counts["INTERNAL"] + counts["UNKNOWN"]
                ms = sum(spent[t.name] for t in ts) * 1000 / max(1, cases)
                print(f"{name:<36}{len(ts):>6}{cases:>9}{counts['OK']:>8}{cases - counts['OK'] - internal:>12}"
                      f"{internal:>10}{ms:>10.2f}{ms / baseline:>10.1f}")
            print(f"{'health check (baseline)':<36}{'':>6}{'':>9}{'':>8}{'':>12}{'':>10}{baseline:>10.2f}{1.0:>10.1f}")
            print(session.fuzzer.report())
            print(f"other tenant's rows unchanged: {others_ok}")
            print(f"cases={tally.cases} internal_errors={tally.internal_errors} crashes={tally.crashes} "
                  f"failures={len(tally.failures)} rpcs={len(chosen)}")
    finally:
        holder.run_until_complete(cm.__aexit__(None, None, None))


if __name__ == "__main__":
    main()
