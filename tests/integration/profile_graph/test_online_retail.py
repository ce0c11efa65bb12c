"""Incremental insight values agree exactly with a full recompute on the real Online Retail invoices; spend nets out
the cancellation invoices (returns), which purchase counts leave out."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from google.protobuf import duration_pb2

from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.server import build
from tailor_cli import demo
from tests.conftest import schema_connection, serving, tenant_md

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "external-data" / "online-retail" / \
    "online_retail_2010-12.csv.gz"
NOW = datetime(2030, 6, 1, tzinfo=timezone.utc)


def window(days: int) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(days=days))
    return out


@pytest.fixture(scope="module")
def rows():
    return demo.read_rows(DATA)


async def values(conn, tenant) -> dict[tuple[str, str, str], float]:
    return {(r["individual_id"], r["name"], r["dimension"]): r["value"] for r in await conn.fetch(
        "SELECT individual_id, name, dimension, value FROM insight_values WHERE tenant_id = $1", tenant)}


async def test_incremental_values_equal_a_full_recompute_on_online_retail(database_url, tenant, rows):
    clock_at = NOW + timedelta(hours=1)
    events = demo.events_from_rows(rows, NOW)
    md = tenant_md(tenant)
    async with serving(await build(database_url, clock=lambda: clock_at), pb_grpc.ProfileGraphServiceStub) as stub:
        for request in [
            pb.Insight(name="spend", aggregate=pb.AGGREGATE_SUM, field="revenue", event_type=4),
            pb.Insight(name="spend_7d", aggregate=pb.AGGREGATE_SUM, field="revenue", window=window(7)),
            pb.Insight(name="orders_14d", aggregate=pb.AGGREGATE_COUNT, window=window(14)),
            pb.Insight(name="products", aggregate=pb.AGGREGATE_COUNT_DISTINCT, field="item_id"),
            pb.Insight(name="biggest_line", aggregate=pb.AGGREGATE_MAX, field="revenue", dimension="item_id",
                       window=window(20)),
            pb.Insight(name="last_order", aggregate=pb.AGGREGATE_LAST, field="revenue"),
            pb.Insight(name="purchases", aggregate=pb.AGGREGATE_COUNT, event_type=4),
            pb.Insight(name="returns", aggregate=pb.AGGREGATE_COUNT, event_type=8),
        ]:
            await stub.UpsertInsight(pb.UpsertInsightRequest(insight=request), metadata=md)
        # Batches arrive newest first, so every individual's events come out of order across batches.
        owner = [e.identities[0].value for e in events]
        batches = [list(range(i, min(i + 500, len(events)))) for i in range(0, len(events), 500)][::-1]
        for batch in batches:
            await stub.AppendEvents(pb.AppendEventsRequest(events=[
                pb.IndividualEvent(unified_individual_id=owner[i], event=events[i]) for i in batch]), metadata=md)
        async with schema_connection(database_url, "profile_graph") as conn:
            incremental = await values(conn, tenant)
            done = await stub.RecomputeAll(pb.RecomputeAllRequest(), metadata=md)
            full = await values(conn, tenant)
    assert done.individual_count == len(set(owner))
    assert incremental == full
    # And both agree with the spend computed straight from the CSV lines.
    spend: dict[str, float] = defaultdict(float)
    for row in rows:
        customer = row["CustomerID"].strip() or f"anon-{row['InvoiceNo']}"
        spend[customer] += float(row["Quantity"]) * float(row["UnitPrice"] or 0)
    assert {k: round(v, 6) for k, v in spend.items()} == {
        i: round(v, 6) for (i, name, _), v in full.items() if name == "spend"}
    assert sum(1 for (_, name, _) in full if name == "biggest_line") > len(set(owner))  # grouped per item
    # Cancellation invoices are returns: before, they counted as purchases, and 250 of the 948 customers had more
    # purchases counted than they placed. Now a customer's purchases are their invoices that are not cancellations.
    invoices: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["CustomerID"].strip():
            invoices[row["CustomerID"].strip()].add(row["InvoiceNo"])
    placed = {c: float(sum(1 for i in v if not i.startswith("C"))) for c, v in invoices.items()}
    cancelled = {c: float(sum(1 for i in v if i.startswith("C"))) for c, v in invoices.items()}
    assert len(invoices) == 948 and sum(1 for c in invoices if cancelled[c]) == 250
    assert {c: full.get((c, "purchases", ""), 0.0) for c in invoices} == placed
    assert {c: full.get((c, "returns", ""), 0.0) for c in invoices} == cancelled

