"""Bench: recommender quality on MovieLens-100k through the service (gRPC server, real PostgreSQL).

Every rating is an implicit-feedback interaction (a purchase of one unit). EvaluateRecommender splits the
(individual, item) pairs 80/20 at random with seed 42 and ranks the held-out part with training items excluded:
P@10 = hits / 10, Recall@10, nDCG@10, MAP@10, coverage. Rows: popularity (top_sellers, the baseline), item-kNN
(BM25-weighted cosine, `implicit`) and our learned model (ALS on BM25-weighted interactions). The data comes from
the recbole==1.2.1 wheel, downloaded at run time into a cache outside the repository. The last line is the summary.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from personalization.recommender.v1 import recommender_service_pb2 as pb
from tests.bench._recommender_data import Unavailable, movielens_100k
from tests.bench._recommender_server import served_recommender
from tests.internal_auth import tenant_md

TENANT = tenant_md("movielens")
ANCHORS = {"popularity": 0.19, "item_knn": 0.33, "learned": 0.366}


async def main() -> None:
    try:
        rows = movielens_100k()
    except Unavailable as error:
        print(f"skipped: MovieLens-100k needs the package registry: {error}")
        print("p10_pop=nan p10_knn=nan p10_model=nan recall10_model=nan ndcg10_model=nan")
        return
    async with served_recommender() as (stub, _, _):
        interactions = [pb.Interaction(message_id=f"r{n}", unified_individual_id=f"u{u}", item_id=f"i{i}",
                                       type=common_pb2.EVENT_TYPE_PURCHASE, quantity=1.0)
                        for n, (u, i, _, _) in enumerate(rows)]
        for start in range(0, len(interactions), 10_000):
            await stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=interactions[start:start + 10_000]),
                                          metadata=TENANT)
        for name, algorithm in (("item_knn", "item_knn"), ("learned", "als")):
            await stub.PutRecommender(pb.PutRecommenderRequest(config=pb.RecommenderConfig(
                name=name, strategy="learned", parameters=pb.StrategyParameters(
                    objective=pb.OBJECTIVE_MAXIMIZE_PURCHASES, algorithm=algorithm))), metadata=TENANT)
        results = {}
        for label, name in (("popularity", "top_sellers"), ("item_knn", "item_knn"), ("learned", "learned")):
            results[label] = await stub.EvaluateRecommender(pb.EvaluateRecommenderRequest(
                name=name, k=10, test_fraction=0.2, seed=42), metadata=TENANT)
    base = results["popularity"].precision_at_k
    print(f"MovieLens-100k: {len(rows)} ratings, random 80/20 split (seed 42), "
          f"{results['learned'].evaluated_individuals} individuals evaluated")
    print(f"{'recommender':<12} {'P@10':>7} {'R@10':>7} {'nDCG@10':>8} {'MAP@10':>7} {'coverage':>9} "
          f"{'x popularity':>13} {'anchor P@10':>12}")
    for label, m in results.items():
        print(f"{label:<12} {m.precision_at_k:7.4f} {m.recall_at_k:7.4f} {m.ndcg_at_k:8.4f} {m.map_at_k:7.4f} "
              f"{m.coverage:9.3f} {m.precision_at_k / base:13.2f} {ANCHORS[label]:12.3f}")
    m = results["learned"]
    print(f"p10_pop={base:.4f} p10_knn={results['item_knn'].precision_at_k:.4f} p10_model={m.precision_at_k:.4f} "
          f"recall10_model={m.recall_at_k:.4f} ndcg10_model={m.ndcg_at_k:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
