"""Bench: recommenders that tune themselves, through the service (gRPC server, real PostgreSQL).

Two data sets, each measured with EvaluateRecommender, P@10 = hits / 10:
- MovieLens-100k (every rating a one-unit purchase with its timestamp), the project's random 80/20 split, seed 42.
- Online Retail (UCI, all 13 months; customers with an id; one purchase per invoice line, returns as negative
  units), a time split: train on everything before 2011-11-09, predict each customer's new purchases in the last
  month (items they already had are masked).
Rows: popularity (top_sellers), bare `implicit` ALS with its library defaults (fitted in this process on the
same training part, raw purchase counts, no weighting), our ALS with its defaults, and the tuned recommender
(tuned on the training part only, within its budget, validated by the same kind of split). The last line is the
summary. Budgets: TAILOR_BENCH_ML_TUNE_SECONDS (60), TAILOR_BENCH_RETAIL_TUNE_SECONDS (240).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import numpy as np
from google.protobuf import duration_pb2

from personalization.common.v1 import common_pb2
from personalization.recommender.v1 import recommender_service_pb2 as pb
from services.recommender import evaluation, learned
from services.recommender.config import LEARNED, PURCHASES, Config
from shared.context import tenant_var
from tests.bench._recommender_data import Unavailable, movielens_100k
from tests.bench._recommender_server import served_recommender
from tests.internal_auth import tenant_md

RETAIL = ROOT.parent / "shared" / "external-data" / "online-retail" / "online_retail.csv.gz"
CUTOFF = datetime(2011, 11, 9, tzinfo=UTC)
ML_BUDGET = float(os.environ.get("TAILOR_BENCH_ML_TUNE_SECONDS", "60"))
RETAIL_BUDGET = float(os.environ.get("TAILOR_BENCH_RETAIL_TUNE_SECONDS", "240"))


def _purchase(message: str, who: str, item: str, quantity: float, revenue: float, when: datetime) -> pb.Interaction:
    line = pb.Interaction(message_id=message, unified_individual_id=who, item_id=item,
                          type=common_pb2.EVENT_TYPE_PURCHASE, quantity=quantity, revenue=revenue)
    line.event_time.FromDatetime(when)
    return line


def retail_interactions() -> list[pb.Interaction]:
    """Invoice lines of identified customers, in invoice order (lines of one invoice are sent in one call)."""
    out = []
    with gzip.open(RETAIL, "rt", newline="") as f:
        for r in csv.DictReader(f):
            if not r["CustomerID"]:
                continue
            when = datetime.strptime(r["InvoiceDate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            quantity = float(r["Quantity"])
            out.append(_purchase(r["InvoiceNo"], f"c{r['CustomerID']}", r["StockCode"], quantity,
                                 quantity * float(r["UnitPrice"]), when))
    return out


async def record(stub, tenant, interactions) -> None:
    """In calls of at most 10,000, never splitting one message id across calls."""
    md = tenant_md(tenant)
    start = 0
    while start < len(interactions):
        end = min(start + 10_000, len(interactions))
        while end < len(interactions) and interactions[end].message_id == interactions[end - 1].message_id:
            end -= 1
        await stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=interactions[start:end]), metadata=md)
        start = end


async def configure(stub, tenant, budget: float) -> None:
    md = tenant_md(tenant)
    for name, parameters in (("als", pb.StrategyParameters(objective=pb.OBJECTIVE_MAXIMIZE_PURCHASES)),
                             ("tuned", pb.StrategyParameters(objective=pb.OBJECTIVE_MAXIMIZE_PURCHASES,
                                                             tuning_budget=duration_pb2.Duration(seconds=int(budget))))):
        await stub.PutRecommender(pb.PutRecommenderRequest(config=pb.RecommenderConfig(
            name=name, strategy="learned", parameters=parameters)), metadata=md)


def implicit_defaults(events: evaluation.Events, how: evaluation.Split) -> learned.Metrics:
    """Bare implicit ALS (library defaults, random_state 42) on the same training part, same ranking and metrics."""
    from implicit.cpu.als import AlternatingLeastSquares

    parts = evaluation.split(events, PURCHASES, how)
    als = AlternatingLeastSquares(random_state=42)
    als.fit(parts.train.weights.astype(np.float32), show_progress=False)
    model = learned.Model("als", events.individuals, events.items, user_factors=als.user_factors,
                          item_factors=als.item_factors)
    return evaluation.evaluate(Config(name="implicit", strategy=LEARNED), parts, 10, model=model)


async def measure(stub, rec, tenant, request: pb.EvaluateRecommenderRequest, how: evaluation.Split):
    md = tenant_md(tenant)
    results, seconds = {}, {}
    for label, name in (("popularity", "top_sellers"), ("als (ours, defaults)", "als"), ("tuned", "tuned")):
        request.name = name
        started = time.perf_counter()
        results[label] = await stub.EvaluateRecommender(request, metadata=md, timeout=3600)
        seconds[label] = time.perf_counter() - started
    token = tenant_var.set(tenant)  # the tables have row-level security: rows are read in the tenant's scope
    try:
        events = await rec.repository.interaction_events(tenant, times=True)
    finally:
        tenant_var.reset(token)
    m = await asyncio.to_thread(implicit_defaults, events, how)
    results["implicit ALS defaults"] = pb.EvaluateRecommenderResponse(
        precision_at_k=m.precision, recall_at_k=m.recall, ndcg_at_k=m.ndcg, map_at_k=m.map, coverage=m.coverage,
        evaluated_individuals=m.individuals, k=10)
    return results, seconds


def table(title: str, results: dict, seconds: dict) -> None:
    pop = results["popularity"].precision_at_k
    bare = results["implicit ALS defaults"].precision_at_k
    print(title)
    print(f"{'recommender':<22} {'P@10':>7} {'R@10':>7} {'nDCG@10':>8} {'MAP@10':>7} {'coverage':>9} {'users':>6} "
          f"{'x popularity':>13} {'x implicit':>11} {'seconds':>8}")
    for label in ("popularity", "implicit ALS defaults", "als (ours, defaults)", "tuned"):
        m = results[label]
        print(f"{label:<22} {m.precision_at_k:7.4f} {m.recall_at_k:7.4f} {m.ndcg_at_k:8.4f} {m.map_at_k:7.4f} "
              f"{m.coverage:9.3f} {m.evaluated_individuals:6d} {m.precision_at_k / pop:13.2f} "
              f"{m.precision_at_k / bare:11.2f} {seconds.get(label, float('nan')):8.1f}")


async def main() -> None:
    async with served_recommender() as (stub, rec, _):
        ml_p10 = float("nan")
        try:
            ratings = movielens_100k()
        except Unavailable as error:
            print(f"MovieLens-100k skipped: it needs the package registry: {error}")
        else:
            await record(stub, "movielens", [
                _purchase(f"r{n}", f"u{u}", f"i{i}", 1.0, 0.0, datetime.fromtimestamp(stamp, UTC))
                for n, (u, i, _, stamp) in enumerate(ratings)])
            await configure(stub, "movielens", ML_BUDGET)
            results, seconds = await measure(
                stub, rec, "movielens", pb.EvaluateRecommenderRequest(k=10, test_fraction=0.2, seed=42,
                                                                      split=pb.EVALUATION_SPLIT_RANDOM),
                evaluation.Split(evaluation.RANDOM, 0.2, None, 42))
            table(f"MovieLens-100k: {len(ratings)} ratings, random 80/20 split (seed 42), tuning budget "
                  f"{ML_BUDGET:g} s", results, seconds)
            ml_p10 = results["tuned"].precision_at_k
        lines = retail_interactions()
        await record(stub, "retail", lines)
        await configure(stub, "retail", RETAIL_BUDGET)
        request = pb.EvaluateRecommenderRequest(k=10, split=pb.EVALUATION_SPLIT_TIME)
        request.cutoff_time.FromDatetime(CUTOFF)
        results, seconds = await measure(stub, rec, "retail", request,
                                         evaluation.Split(evaluation.TIME, cutoff=CUTOFF.timestamp()))
        print()
        table(f"Online Retail: {len(lines)} invoice lines of identified customers, time split at "
              f"{CUTOFF:%Y-%m-%d} (new purchases of the last month), tuning budget {RETAIL_BUDGET:g} s",
              results, seconds)
    print(f"ml100k_p10={ml_p10:.4f} retail_p10_tuned={results['tuned'].precision_at_k:.4f} "
          f"retail_p10_implicit={results['implicit ALS defaults'].precision_at_k:.4f} "
          f"retail_p10_pop={results['popularity'].precision_at_k:.4f} tune_s={seconds['tuned']:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
