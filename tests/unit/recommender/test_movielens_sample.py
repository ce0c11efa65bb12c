"""top_sellers on the Spark ALS MovieLens sample (1,501 ratings) loaded as purchases, checked against an
independent count of orders and of units per item."""

from __future__ import annotations

from collections import Counter, defaultdict

from services.recommender.config import Config
from services.recommender.domain import PURCHASE, Interaction
from services.recommender.service import Recommender
from tests.conftest import SHARED_DATA
from tests.unit.recommender.fake_repository import FakeRepository

SAMPLE = SHARED_DATA / "spark-als-sample" / "sample_movielens_ratings.txt"
T = "movielens"


def read_ratings() -> list[tuple[str, str, float]]:
    """(user, item, rating) per line of user::item::rating::timestamp."""
    rows = []
    for line in SAMPLE.read_text().splitlines():
        if line.strip():
            user, item, rating, _timestamp = line.split("::")
            rows.append((user, item, float(rating)))
    return rows


async def recorded_recommender() -> Recommender:
    rec = Recommender(FakeRepository(), cache_seconds=60.0)
    purchases = [
        Interaction(f"rating-{user}-{item}", user, item, PURCHASE, quantity=rating)
        for user, item, rating in read_ratings()
    ]
    assert await rec.record_interactions(T, purchases) == len(purchases) == 1501
    return rec


async def walk(rec: Recommender, strategy: str) -> list[tuple[str, float]]:
    """The whole ranking, 24 items at a time, excluding what earlier pages returned."""
    seen: list[tuple[str, float]] = []
    while True:
        page = await rec.recommend(T, "", strategy, 24, exclude_item_ids=[item for item, _ in seen])
        if not page:
            return seen
        seen += [(i.item_id, i.score) for i in page]


async def test_top_sellers_by_units_equals_items_ordered_by_total_quantity():
    totals: Counter[str] = Counter()
    for _user, item, rating in read_ratings():
        totals[item] += rating
    expected = sorted(totals.items(), key=lambda pair: (-pair[1], pair[0]))
    rec = await recorded_recommender()
    await rec.put_config(T, Config(name="units", strategy="top_sellers", by_units=True))
    assert len(expected) == 100
    assert await walk(rec, "units") == expected


async def test_top_sellers_equals_items_ordered_by_how_many_orders_had_them():
    orders: Counter[str] = Counter()
    for _user, item, rating in read_ratings():
        orders[item] += rating > 0
    expected = sorted(((i, float(n)) for i, n in orders.items() if n > 0), key=lambda pair: (-pair[1], pair[0]))
    assert await walk(await recorded_recommender(), "top_sellers") == expected


async def test_bought_by_you_again_equals_one_users_ratings_by_quantity():
    mine: dict[str, float] = defaultdict(float)
    for user, item, rating in read_ratings():
        if user == "7":
            mine[item] += rating
    expected = sorted(mine.items(), key=lambda pair: (-pair[1], pair[0]))[:24]
    rec = await recorded_recommender()
    page = await rec.recommend(T, "7", "bought_by_you_again", 24)
    assert [(i.item_id, i.score) for i in page] == expected
