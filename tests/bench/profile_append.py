"""Bench: AppendEvents throughput of the profile graph (the Update and Compute stages of the ingest pipeline).

Through the real gRPC server on a fresh embedded PostgreSQL (temporary folder), with 3 insights and 3 segments
configured, batches of 500 events sent one after another:
- purchases: the first 8,000 Online Retail invoices built like tailor_cli/demo.py does (one PURCHASE per invoice,
  about 20 line items each), items upserted first;
- views: synthetic PRODUCT_VIEW events over 5,000 individuals and 1,000 items with a category.
The baseline, measured in the same run, is a bare asyncpg COPY of the same rows (ids, type, time, revenue, quantity,
item, payload) into a scratch table, one COPY per batch: the floor of writing the events at all.
The last line is the summary: append_per_s_purchases=… append_per_s_views=… batch_p50_ms=… (views).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.server import build
from shared.log import configure
from tailor_cli import demo
from tests.bench._common import percentile, scratch_database, served
from tests.internal_auth import tenant_md

DATA = ROOT / ".." / "shared" / "external-data" / "online-retail" / "online_retail.csv.gz"
PURCHASE_EVENTS = 8_000  # the first invoices of the full file (December 2010 alone has only about 2,000)
BATCH = 500
VIEW_INDIVIDUALS = 5_000
VIEW_ITEMS = 1_000
VIEW_EVENTS = 30_000
WARMUP_BATCHES = 2
TENANT = "bench"
MD = tenant_md(TENANT)




def _window(days: int) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(days=days))
    return out


INSIGHTS = [
    pb.Insight(name="spend_30d", aggregate=pb.AGGREGATE_SUM, field="revenue", event_type=4, window=_window(30)),
    pb.Insight(name="purchases_30d", aggregate=pb.AGGREGATE_COUNT, event_type=4, window=_window(30)),
    pb.Insight(name="views_7d", aggregate=pb.AGGREGATE_COUNT, event_type=2, window=_window(7)),
]
SEGMENTS = [
    pb.Segment(name="big_spenders", rule="insights.spend_30d >= 1000.0"),
    pb.Segment(name="frequent_buyers", rule="insights.purchases_30d >= 3.0"),
    pb.Segment(name="browsers", rule="insights.views_7d >= 5.0 && !('big_spenders' in segments)"),
]


def purchase_batches(now: datetime) -> tuple[list[pb.AppendEventsRequest], list[pb.Item]]:
    rows, invoices = [], set()
    for row in demo.read_rows(DATA):  # the file is in time order; keep whole invoices
        if row["InvoiceNo"] not in invoices and len(invoices) == PURCHASE_EVENTS:
            break
        invoices.add(row["InvoiceNo"])
        rows.append(row)
    events = demo.events_from_rows(rows, now)  # the last of them happens now: windows see the recent ones
    individual = [pb.IndividualEvent(unified_individual_id=e.identities[0].value, event=e) for e in events]
    batches = [pb.AppendEventsRequest(events=individual[i:i + BATCH]) for i in range(0, len(individual), BATCH)]
    return batches, demo.items_from_rows(rows)


def view_batches(now: datetime) -> tuple[list[pb.AppendEventsRequest], list[pb.Item]]:
    rng = random.Random(42)
    items = []
    for n in range(VIEW_ITEMS):
        attributes = struct_pb2.Struct()
        attributes.update({"category": f"cat-{n % 40}", "price": float(1 + n % 97)})
        items.append(pb.Item(item_id=f"sku-{n}", name=f"item {n}", attributes=attributes))
    events = []
    for n in range(VIEW_EVENTS):
        t = timestamp_pb2.Timestamp()
        t.FromDatetime(now - timedelta(seconds=rng.uniform(0, 10 * 86_400)))
        who = f"viewer-{rng.randrange(VIEW_INDIVIDUALS)}"
        events.append(pb.IndividualEvent(unified_individual_id=who, event=common_pb2.Event(
            message_id=f"view-{n}", type=common_pb2.EVENT_TYPE_PRODUCT_VIEW, event_time=t, source="web",
            item_id=f"sku-{rng.randrange(VIEW_ITEMS)}", identities=[common_pb2.Identity(type="device_id", value=who)])))
    return [pb.AppendEventsRequest(events=events[i:i + BATCH]) for i in range(0, len(events), BATCH)], items


async def run_append(stub, batches: list[pb.AppendEventsRequest]) -> tuple[float, list[float]]:
    """events/s over the measured batches and ms per batch (the first WARMUP_BATCHES are not measured)."""
    for request in batches[:WARMUP_BATCHES]:
        await stub.AppendEvents(request, metadata=MD, timeout=120)
    times = []
    count = 0
    for request in batches[WARMUP_BATCHES:]:
        start = time.perf_counter()
        await stub.AppendEvents(request, metadata=MD, timeout=120)
        times.append((time.perf_counter() - start) * 1000)
        count += len(request.events)
    return count / (sum(times) / 1000), times


async def run_copy(dsn: str, batches: list[pb.AppendEventsRequest], table: str) -> tuple[float, list[float]]:
    """The baseline: the same rows COPYed into a scratch table, one COPY per batch."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"""CREATE TABLE {table} (tenant_id text, message_id text, individual_id text,
            type int2, event_time timestamptz, revenue float8, quantity float8, item_id text, payload bytea,
            PRIMARY KEY (tenant_id, message_id))""")
        times = []
        count = 0
        for n, request in enumerate(batches):
            start = time.perf_counter()
            records = []
            for ie in request.events:
                e = ie.event
                records.append((TENANT, e.message_id, ie.unified_individual_id, e.type,
                                e.event_time.ToDatetime(tzinfo=timezone.utc),
                                sum(li.quantity * li.unit_price for li in e.line_items),
                                sum(li.quantity for li in e.line_items), e.item_id, e.SerializeToString()))
            await conn.copy_records_to_table(table, records=records)
            if n >= WARMUP_BATCHES:
                times.append((time.perf_counter() - start) * 1000)
                count += len(request.events)
        return count / (sum(times) / 1000), times
    finally:
        await conn.close()


async def main() -> None:
    configure("profile_graph", "WARNING")  # no line per RPC
    now = datetime.now(timezone.utc)
    purchases, retail_items = purchase_batches(now)
    views, view_items = view_batches(now)
    async with scratch_database("tailor-append-bench-") as dsn:
        async with served(await build(dsn), pb_grpc.ProfileGraphServiceStub) as stub:
            for insight in INSIGHTS:
                await stub.UpsertInsight(pb.UpsertInsightRequest(insight=insight), metadata=MD)
            for segment in SEGMENTS:
                await stub.UpsertSegment(pb.UpsertSegmentRequest(segment=segment), metadata=MD)
            for items in (retail_items, view_items):
                for i in range(0, len(items), 1_000):
                    await stub.UpsertItems(pb.UpsertItemsRequest(items=items[i:i + 1_000]), metadata=MD)
            results = {
                "purchases": await run_append(stub, purchases),
                "views": await run_append(stub, views),
            }
        baselines = {
            "purchases": await run_copy(dsn, purchases, "scratch_purchases"),
            "views": await run_copy(dsn, views, "scratch_views"),
        }

    lines = {"purchases": sum(len(e.event.line_items) for b in purchases for e in b.events)
             / sum(len(b.events) for b in purchases), "views": 0.0}
    print(f"AppendEvents, batches of {BATCH}, 3 insights + 3 segments; baseline = bare COPY of the same rows")
    print(f"{'workload':<10} {'events':>7} {'lines/ev':>8} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'COPY ev/s':>10} {'COPY p50':>9} {'ratio':>6}")
    for name, batches in (("purchases", purchases), ("views", views)):
        rate, times = results[name]
        base_rate, base_times = baselines[name]
        print(f"{name:<10} {sum(len(b.events) for b in batches):>7} {lines[name]:>8.1f} {rate:>9.0f} "
              f"{percentile(times, 50):>8.1f} {percentile(times, 99):>8.1f} {base_rate:>10.0f} "
              f"{percentile(base_times, 50):>9.1f} {rate / base_rate:>6.2f}")
    print(f"append_per_s_purchases={results['purchases'][0]:.0f} append_per_s_views={results['views'][0]:.0f} "
          f"batch_p50_ms={percentile(results['views'][1], 50):.1f}")


if __name__ == "__main__":
    asyncio.run(main())
