"""Offline evaluation splits (time, leave-last-out, random), the seed setting, and tuning on the in-memory
repository: what is held out, what is masked, what a tuned training stores and streams."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.recommender import learned, tuning
from services.recommender.config import CLICKS, LEARNED, PURCHASES, Config
from services.recommender.domain import PRODUCT_VIEW, PURCHASE, Interaction
from services.recommender.evaluation import LEAVE_LAST_OUT, TIME, Events, Split, split
from services.recommender.service import Recommender
from services.recommender.tuning import SEARCH_MARGIN
from shared.errors import FailedPrecondition, InvalidArgument
from tests.conftest import SHARED_DATA
from tests.unit.recommender.fake_repository import FakeRepository

T = "shop"
DAY0 = datetime(2025, 1, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    return DAY0 + timedelta(days=n)


def events_of(rows: list[tuple[str, str, int, float]]) -> Events:
    """(individual, item, kind code, day) rows, one unit each."""
    return Events.build([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [1.0] * len(rows),
                        [0.0] * len(rows), [day(r[3]).timestamp() for r in rows])


def pairs(events: Events, m) -> set[tuple[str, str]]:
    coo = m.tocoo()
    return {(str(events.individuals[r]), str(events.items[c])) for r, c in zip(coo.row, coo.col)}


def test_time_split_holds_out_new_purchases_after_the_cutoff_and_masks_what_was_had_before():
    ev = events_of([("ann", "a", 2, 1), ("ann", "b", 2, 2), ("ann", "a", 2, 11), ("ann", "c", 2, 12),
                    ("bob", "a", 2, 3), ("bob", "d", 0, 13), ("cid", "e", 2, 14)])
    parts = split(ev, PURCHASES, Split(TIME, cutoff=day(10).timestamp()))
    assert pairs(ev, parts.train.weights) == {("ann", "a"), ("ann", "b"), ("bob", "a")}
    # ann's repeat purchase of a is not a hit (she had it), bob's view is not a purchase, cid is new but counts
    # in the held-out part (evaluation skips individuals unknown in training).
    assert pairs(ev, parts.test) == {("ann", "c"), ("cid", "e")}
    assert parts.cutoff == day(10).timestamp()
    assert parts.train_mask.tolist() == [True, True, False, False, True, False, False]


def test_time_split_by_fraction_cuts_at_the_latest_share_of_interactions():
    ev = events_of([("u", f"i{n}", 2, n) for n in range(10)])
    parts = split(ev, PURCHASES, Split(TIME, fraction=0.2))
    assert parts.cutoff == day(8).timestamp()
    assert pairs(ev, parts.test) == {("u", "i8"), ("u", "i9")}


def test_clicks_objective_counts_views_as_hits():
    ev = events_of([("bob", "a", 2, 3), ("bob", "d", 0, 13)])
    assert pairs(ev, split(ev, CLICKS, Split(TIME, cutoff=day(10).timestamp())).test) == {("bob", "d")}


def test_leave_last_out_holds_out_each_individuals_latest_new_item():
    ev = events_of([("ann", "a", 2, 1), ("ann", "b", 2, 5), ("ann", "a", 2, 9), ("bob", "c", 2, 2),
                    ("bob", "a", 2, 3), ("cid", "a", 2, 1)])
    parts = split(ev, PURCHASES, Split(LEAVE_LAST_OUT))
    # ann met b last (buying a again later is not new); cid has one item only and keeps it.
    assert pairs(ev, parts.test) == {("ann", "b"), ("bob", "a")}
    assert pairs(ev, parts.train.weights) == {("ann", "a"), ("bob", "c"), ("cid", "a")}


@pytest.fixture
async def shop():
    """Two taste groups buying in order over 40 days: early items first, the group's later items after."""
    rec = Recommender(FakeRepository(), cache_seconds=0.0, model_check_seconds=0.0)
    rows = []
    for u in range(60):
        group = u % 2
        for n in range(8):
            item = f"g{group}-{(n + u) % 10}"
            rows.append(Interaction(f"o{u}-{n}", f"u{u}", item, PURCHASE, 1.0, 1.0, day(n * 5 + u % 5)))
        rows.append(Interaction(f"v{u}", f"u{u}", f"g{1 - group}-0", PRODUCT_VIEW, event_time=day(39)))
    await rec.record_interactions(T, rows)
    await rec.put_config(T, Config(name="for_you", strategy=LEARNED, objective=PURCHASES, factors=4, iterations=5))
    return rec


async def test_evaluate_on_a_time_split_reports_the_cutoff_and_ranks_only_known_individuals(shop):
    metrics, cutoff = await shop.evaluate(T, "for_you", 5, 0.25, 0, split=TIME)
    assert cutoff is not None and day(20) <= datetime.fromtimestamp(cutoff, UTC) <= day(40)
    assert 0 < metrics.individuals <= 60 and 0 < metrics.precision <= 1 and 0 < metrics.coverage <= 1
    given, given_cutoff = await shop.evaluate(T, "top_sellers", 5, 0, 0, split=TIME, cutoff=day(30))
    assert given_cutoff == day(30).timestamp() and given.individuals > 0
    loo, none = await shop.evaluate(T, "for_you", 5, 0, 0, split=LEAVE_LAST_OUT)
    assert none is None and loo.individuals == 60


async def test_evaluate_refuses_a_cutoff_without_the_time_split_and_an_empty_side(shop):
    with pytest.raises(InvalidArgument) as error:
        await shop.evaluate(T, "for_you", 5, 0, 0, split="random", cutoff=day(30))
    assert [v[0] for v in error.value.violations] == ["cutoff_time"]
    with pytest.raises(InvalidArgument) as error:
        await shop.evaluate(T, "for_you", 5, 0, 0, split="sideways")
    assert [v[0] for v in error.value.violations] == ["split"]
    with pytest.raises(FailedPrecondition) as error:
        await shop.evaluate(T, "for_you", 5, 0, 0, split=TIME, cutoff=day(-1))
    assert error.value.reason == "EMPTY_SPLIT"


async def test_the_seed_setting_makes_training_reproducible_and_changes_the_model():
    async def factors(seed: int) -> np.ndarray:
        rec = Recommender(FakeRepository(), cache_seconds=0.0, model_check_seconds=0.0, seed=seed)
        rows = [line.split("::") for line in (SHARED_DATA / "spark-als-sample" / "sample_movielens_ratings.txt")
                .read_text().splitlines() if line.strip()][:600]
        await rec.record_interactions("s", [Interaction(f"r{n}", u, i, PURCHASE, 1) for n, (u, i, _, _) in
                                            enumerate(rows)])
        await rec.put_config("s", Config(name="als", strategy=LEARNED, objective=PURCHASES, iterations=3))
        [_ async for _ in rec.train("s", "als")]
        return (await rec.model("s", "als")).item_factors
    first, again, other = await factors(7), await factors(7), await factors(8)
    assert np.array_equal(first, again) and not np.allclose(first, other)


async def test_tuned_training_streams_trials_records_them_with_the_version_and_refits_the_best(shop):
    repo = shop.repository
    await shop.put_config(T, Config(name="tuned", strategy=LEARNED, objective=PURCHASES, factors=4, iterations=5,
                                    tune_seconds=3.0, validation_fraction=0.25))
    messages = [p async for p in shop.train(T, "tuned")]
    trials = [m.trial for m in messages if m.stage == "tuning" and m.trial is not None]
    done = messages[-1]
    assert done.stage == "done" and done.model_version == 1 and len(trials) >= 2
    assert list(done.trials) == trials
    # The first trial is the config's own parameters; the stored model is the chosen trial's: the best, or a
    # known starting point within SEARCH_MARGIN of it.
    assert trials[0].parameters == learned.parameters(await shop.get_config(T, "tuned")) | {"factors": 8}
    best = max((t for t in trials if not t.error), key=lambda t: (t.precision, t.ndcg, -t.number))
    chosen = next(t for t in trials if t.parameters == done.parameters)
    assert chosen.precision >= trials[0].precision and chosen.precision >= best.precision / (1 + SEARCH_MARGIN)
    assert (await shop.model(T, "tuned")).algorithm == chosen.parameters["algorithm"]
    summary = repo.summaries[(T, "tuned")][-1]
    assert summary["parameters"] == chosen.parameters and summary["seed"] == 42
    assert len(summary["tuning"]["trials"]) == len(trials) and summary["tuning"]["individuals"] >= 20


async def test_tuning_budget_and_validation_fraction_are_validated():
    rec = Recommender(FakeRepository(), cache_seconds=0.0)
    with pytest.raises(InvalidArgument) as error:
        await rec.put_config(T, Config(name="x", strategy=LEARNED, objective=PURCHASES, tune_seconds=7200,
                                       validation_fraction=1.0, weighting="log", algorithm="svd"))
    assert sorted(v[0] for v in error.value.violations) == [
        "config.parameters.algorithm", "config.parameters.tuning_budget", "config.parameters.validation_fraction",
        "config.parameters.weighting"]


def test_tuning_inside_a_time_split_validates_on_the_same_span_of_time_before_the_cutoff():
    from services.recommender.evaluation import RANDOM
    from services.recommender.tuning import validation_split

    times = np.array([day(n).timestamp() for n in range(0, 121)])
    cutoff = day(90).timestamp()
    # The test holds out 30 days after the cutoff: the validation holds out the 30 days before it.
    assert validation_split(Split(TIME, 0.2, cutoff), cutoff, times) == Split(TIME, 0.2, day(60).timestamp())
    # A span longer than half the training time falls back to the latest fraction of the training part.
    late = day(40).timestamp()
    assert validation_split(Split(TIME, 0.2, late), late, times) == Split(TIME, 0.2, None)
    # Other splits validate on the same kind of split of the training part.
    assert validation_split(Split(RANDOM, 0.2, None, 7), None, times) == Split(RANDOM, 0.2, None, 7)


def test_the_regularization_ladder_tries_the_best_factored_start_at_every_inner_decade_of_its_range():
    als = {"algorithm": "als", "weighting": "none", "factors": 100, "regularization": 0.01, "alpha": 1.0,
           "iterations": 15}
    trials = [tuning.Trial(0, {"algorithm": "item_knn", "weighting": "none", "neighbours": 50}, 0.09, 0.1, 0.1),
              tuning.Trial(1, als, 0.05, 0.06, 0.1),
              tuning.Trial(2, als | {"factors": 8}, 0.04, 0.05, 0.1),
              tuning.Trial(3, als | {"regularization": 1.0}, 0.0, 0.0, 0.1, "over budget")]
    ladder = tuning.regularization_ladder(trials)
    # ALS's range is 1e-3..1e3: the inner decades 1e-2..1e2, without the best's own 0.01 and the tried 1.0.
    assert [p["regularization"] for p in ladder] == [0.1, 10.0, 100.0]
    assert all(p | {"regularization": 0.01} == als for p in ladder)
    assert tuning.regularization_ladder(trials[:1]) == []
