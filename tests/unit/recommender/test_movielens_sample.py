"""top_sellers on the Spark ALS MovieLens sample (1,501 ratings) loaded as purchases, checked against an
independent count of units per item."""

from __future__ import annotations

from collections import Counter, defaultdict

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


async def test_top_sellers_equals_items_ordered_by_total_quantity():
    totals: Counter[str] = Counter()
    for _user, item, rating in read_ratings():
        totals[item] += rating
    expected = sorted(totals.items(), key=lambda pair: (-pair[1], pair[0]))
    rec = await recorded_recommender()

    # Walk the whole ranking 24 items at a time, excluding what earlier pages returned.
    seen: list[tuple[str, float]] = []
    while True:
        page = await rec.recommend(T, "", "top_sellers", 24, exclude_item_ids=[item for item, _ in seen])
        if not page:
            break
        assert len(page) == min(24, len(expected) - len(seen))
        seen += [(i.item_id, i.score) for i in page]

    assert len(expected) == 100
    assert seen == expected


async def test_bought_by_you_again_equals_one_users_ratings_by_quantity():
    mine: dict[str, float] = defaultdict(float)
    for user, item, rating in read_ratings():
        if user == "7":
            mine[item] += rating
    expected = sorted(mine.items(), key=lambda pair: (-pair[1], pair[0]))[:24]
    rec = await recorded_recommender()
    page = await rec.recommend(T, "7", "bought_by_you_again", 24)
    assert [(i.item_id, i.score) for i in page] == expected
