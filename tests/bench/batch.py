"""Bench: a batch job of N individuals (100,000 by default) x 1 point with top-10 learned recommendations over a
10,000-item catalog, through the whole suite as `make run` starts it, next to in-process `implicit` batch
recommendation of the same kind of model on the same interactions, measured in the same run.

The database is vacuumed and analyzed after loading (settle), so the job's window holds the job's work, not
autovacuum's on what loading wrote. BENCH_BATCH_INDIVIDUALS and BENCH_BATCH_ITEMS change the sizes. BENCH_PROFILE_DIR=folder records every service
process with py-spy while the job runs (tests/bench/_pyspy.py: one collapsed-stack file each, and their summary) and
the CPU seconds of every process of the suite, PostgreSQL's included (cpu.txt). The last line is the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice; must precede numpy's import

import grpc
import numpy as np
import scipy.sparse as sp
from google.protobuf import timestamp_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as dpb
from personalization.decision.v1 import decision_service_pb2_grpc as dgrpc
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as ppb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pgrpc
from personalization.recommender.v1 import recommender_service_pb2 as rpb
from personalization.recommender.v1 import recommender_service_pb2_grpc as rgrpc
from tests.bench import _pyspy
from tests.bench._common import running_suite

INDIVIDUALS = int(os.environ.get("BENCH_BATCH_INDIVIDUALS", "100000"))
ITEMS = int(os.environ.get("BENCH_BATCH_ITEMS", "10000"))
LINES = 3
ALS = dict(factors=32, regularization=0.05, iterations=10)


def interactions(seed: int = 7) -> np.ndarray:
    """(individual, item) pairs: LINES purchases per individual, items drawn from a Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, ITEMS + 1) ** 0.8
    items = rng.choice(ITEMS, size=(INDIVIDUALS, LINES), p=weights / weights.sum())
    return items


async def load(gateway: str, md, items: np.ndarray) -> float:
    """Catalog, configuration and one purchase per individual through the public API; returns ingest seconds."""
    async with grpc.aio.insecure_channel(gateway) as channel:
        profile = pgrpc.ProfileGraphServiceStub(channel)
        for start in range(0, ITEMS, 1000):
            await profile.UpsertItems(ppb.UpsertItemsRequest(items=[
                ppb.Item(item_id=f"sku-{i}", name=f"Item {i}") for i in range(start, min(ITEMS, start + 1000))]),
                metadata=md)
        await profile.UpsertInsight(ppb.UpsertInsightRequest(insight=ppb.Insight(
            name="purchases", aggregate=ppb.AGGREGATE_COUNT, event_type=common_pb2.EVENT_TYPE_PURCHASE)), metadata=md)
        await profile.UpsertSegment(ppb.UpsertSegmentRequest(segment=ppb.Segment(
            name="buyers", rule="insights.purchases >= 1.0")), metadata=md)
        decision = dgrpc.DecisionServiceStub(channel)
        await decision.UpsertPoint(dpb.UpsertPointRequest(point=dpb.Point(
            name="email_recs", type=dpb.POINT_TYPE_RECOMMENDATIONS,
            template=dpb.ResponseTemplate(item_attributes=["name"]))), metadata=md)
        await decision.UpsertDecision(dpb.UpsertDecisionRequest(decision=dpb.Decision(
            point_name="email_recs", name="learned_top10", fallback=True,
            recommendations=dpb.RecommendationSpec(recommender="als", count=10))), metadata=md)

        gateway_stub = pb_grpc.GatewayServiceStub(channel)
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        started = time.perf_counter()

        async def messages():
            for start in range(0, INDIVIDUALS, 1000):
                yield pb.StreamIngestEventsRequest(events=[common_pb2.Event(
                    message_id=f"buy-{u}", type=common_pb2.EVENT_TYPE_PURCHASE, event_time=now,
                    identities=[common_pb2.Identity(type="customer_id", value=f"c{u}")],
                    line_items=[common_pb2.LineItem(item_id=f"sku-{i}", quantity=1, unit_price=1.0)
                                for i in items[u]]) for u in range(start, min(INDIVIDUALS, start + 1000))])

        await gateway_stub.StreamIngestEvents(messages(), metadata=md, timeout=600)
        while True:
            listed = await profile.ListSegments(ppb.ListSegmentsRequest(), metadata=md)
            if any(s.name == "buyers" and s.member_count >= INDIVIDUALS for s in listed.segments):
                break
            await asyncio.sleep(0.5)
        processed_s = time.perf_counter() - started

        recommender = rgrpc.RecommenderServiceStub(channel)
        await recommender.PutRecommender(rpb.PutRecommenderRequest(config=rpb.RecommenderConfig(
            name="als", strategy="learned", fallback="top_sellers", parameters=rpb.StrategyParameters(
                algorithm="als", objective=rpb.OBJECTIVE_MAXIMIZE_PURCHASES, factors=ALS["factors"],
                regularization=ALS["regularization"], iterations=ALS["iterations"]))), metadata=md)
        async for _ in recommender.TrainRecommender(rpb.TrainRecommenderRequest(name="als"), metadata=md,
                                                    timeout=600):
            pass
        await asyncio.sleep(6)  # every replica picks the new model version up within 5 s
        return processed_s


async def run_job(gateway: str, md) -> tuple[float, int]:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        started = time.perf_counter()
        job = (await stub.StartBatchJob(pb.StartBatchJobRequest(segment="buyers", point_names=["email_recs"]),
                                        metadata=md)).job
        async for update in stub.WatchBatchJob(pb.WatchBatchJobRequest(job_id=job.job_id), metadata=md,
                                               timeout=3600):
            job = update.job
        elapsed = time.perf_counter() - started
        if job.state != pb.BATCH_JOB_STATE_SUCCEEDED:
            raise SystemExit(f"batch job failed: {job.error}")
        return elapsed, job.row_count


async def settle(dsn: str) -> float:
    """VACUUM (ANALYZE) of the whole database after loading, so autovacuum's work on what the load wrote (the
    ingest's and training's tables: a run started at once spent 1.5 of its PostgreSQL CPU seconds there, none on the
    job's own tables) is not counted as the job's. Returns its seconds."""
    import asyncpg

    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()
    return time.perf_counter() - started


@contextlib.contextmanager
def profiled(pids: dict[str, int], postgres_port: int):
    """With BENCH_PROFILE_DIR set: py-spy on every service process while the job runs, then the summary and the CPU
    seconds of every process, PostgreSQL's server and backends included (also written to cpu.txt)."""
    folder = os.environ.get("BENCH_PROFILE_DIR")
    if not folder:
        yield
        return
    meter = _pyspy.CpuMeter(pids, postgres_port)
    started = time.perf_counter()
    with _pyspy.recording(pids, Path(folder)):
        yield
    wall = time.perf_counter() - started
    print("\n".join(_pyspy.summary(Path(folder), list(pids), wall)))
    cpu = "\n".join(f"{name:<24}{seconds:8.2f}" for name, seconds in sorted(meter.used().items()) if seconds >= 0.05)
    cpu += "\n" + "\n".join(f"  postgres {role:<15}{seconds:8.2f}" for role, seconds
                             in sorted(meter.postgres_roles().items()) if seconds >= 0.05)
    text = f"job wall seconds {wall:.1f}; CPU seconds per process\n{cpu}\n"
    (Path(folder) / "cpu.txt").write_text(text)
    print(text)


def implicit_baseline(items: np.ndarray) -> float:
    """Individuals/s of implicit's own batch recommend (top 10) on an ALS model of the same interactions."""
    from implicit.als import AlternatingLeastSquares

    rows = np.repeat(np.arange(INDIVIDUALS), LINES)
    matrix = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, items.ravel())),
                           shape=(INDIVIDUALS, ITEMS))
    model = AlternatingLeastSquares(factors=ALS["factors"], regularization=ALS["regularization"],
                                    iterations=ALS["iterations"], random_state=7)
    model.fit(matrix, show_progress=False)
    users = np.arange(INDIVIDUALS)
    started = time.perf_counter()
    model.recommend(users, matrix[users], N=10, filter_already_liked_items=False)
    return INDIVIDUALS / (time.perf_counter() - started)


def main() -> None:
    items = interactions()
    with running_suite() as (ready, _):
        gateway = ready["addresses"]["gateway"]
        md = (("authorization", f"Bearer {ready['api_key']}"),)
        processed_s = asyncio.run(load(gateway, md, items))
        settled_s = asyncio.run(settle(ready["dsn"]))
        with profiled(ready["pids"], urlparse(ready["dsn"]).port):
            elapsed, rows = asyncio.run(run_job(gateway, md))
    ours = INDIVIDUALS / elapsed
    theirs = implicit_baseline(items)
    print(f"\n{INDIVIDUALS} individuals x 1 point, top-10 learned recommendations over {ITEMS} items")
    print(f"ingest + pipeline of {INDIVIDUALS} purchase events: {processed_s:.1f} s "
          f"({INDIVIDUALS / processed_s:.0f} events/s); VACUUM (ANALYZE) before the job: {settled_s:.1f} s")
    print(f"{'path':<44}{'individuals/s':>15}{'ratio':>8}")
    print(f"{'tailor batch job (5 processes, rows written)':<44}{ours:>15.0f}{ours / theirs:>8.2f}")
    print(f"{'implicit model.recommend in process':<44}{theirs:>15.0f}{1.0:>8.2f}")
    print(f"rows written: {rows}")
    print(f"\nper_s={ours:.0f} implicit_per_s={theirs:.0f} ratio={ours / theirs:.3f}")


if __name__ == "__main__":
    main()
