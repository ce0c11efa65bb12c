"""Experiment layers, several experiments per point, and the tenant's holdout, on the in-memory repository."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.decision.domain import Decision, Holdout, LogEntry, Point, Template, TemplateField
from services.decision.experiments import Cohort, Experiment, Outcome
from services.decision.service import DecisionService
from shared.errors import FailedPrecondition, InvalidArgument
from tests.unit.decision.fakes import FakeRepository

T = "tenant_a"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
POINTS = ("home_banner", "checkout_banner", "footer")
IDS = [f"ind_{i}" for i in range(2000)]


@pytest.fixture
async def world():
    repo = FakeRepository()
    service = DecisionService(repo, cache_seconds=60.0, now=lambda: T0)
    ids = {}
    for point in POINTS:
        await service.points.upsert(T, Point("", point, "", "MANUAL_CONTENT",
                                             Template(fields=(TemplateField("headline", "STRING", True),))))
        for name, priority, rule, fallback in (("vip", 10, '"vip" in profile.segments', False),
                                               ("default", 0, "", True), ("a", -1, "false", False),
                                               ("b", -2, "false", False)):
            d = await service.decisions.upsert(T, Decision("", point, name, priority, rule, fallback,
                                                          content={"headline": name}))
            ids[(point, name)] = d.decision_id
    return service, repo, ids


def experiment(ids, name, point, layer="", start=0, end=0) -> Experiment:
    return Experiment("", name, point, (Cohort("a", 5000, decision_id=ids[(point, "a")]),
                                        Cohort("b", 5000, decision_id=ids[(point, "b")])),
                      layer=layer, layer_start_bps=start, layer_end_bps=end)


async def start(service, e: Experiment) -> None:
    await service.experiments.upsert(T, e)
    await service.experiments.start(T, e.name)


async def participants(service, points) -> dict[str, set[str]]:
    """Per experiment name, the individuals qualified into one of its cohorts."""
    seen: dict[str, set[str]] = {}
    for uid in IDS:
        for q in await service.qualifier.one(T, [(p, "") for p in points], {}, {}, uid):
            if q.assignment is not None and q.assignment.in_experiment:
                seen.setdefault(q.assignment.experiment.name, set()).add(uid)
    return seen


async def test_experiments_in_one_layer_never_share_an_individual_and_across_layers_they_do(world):
    service, _, ids = world
    await start(service, experiment(ids, "hero_copy", "home_banner", "checkout", 0, 5000))
    await start(service, experiment(ids, "cta_color", "checkout_banner", "checkout", 5000, 10_000))
    await start(service, experiment(ids, "footer_test", "footer", "footer_layer", 0, 10_000))
    seen = await participants(service, POINTS)
    assert not seen["hero_copy"] & seen["cta_color"]
    assert 800 < len(seen["hero_copy"]) < 1200 and 800 < len(seen["cta_color"]) < 1200
    assert len(seen["footer_test"]) == 2000
    assert len(seen["hero_copy"] & seen["footer_test"]) == len(seen["hero_copy"])  # other layer: overlaps fully


async def test_overlapping_slices_of_a_layer_are_refused_and_a_second_unlayered_experiment_on_a_point_too(world):
    service, _, ids = world
    await start(service, experiment(ids, "first", "home_banner", "checkout", 0, 5000))
    await service.experiments.upsert(T, experiment(ids, "overlaps", "footer", "checkout", 4999, 6000))
    with pytest.raises(FailedPrecondition) as err:
        await service.experiments.start(T, "overlaps")
    assert err.value.reason == "LAYER_RANGE_TAKEN" and err.value.metadata["other"] == "first"
    await start(service, experiment(ids, "plain", "footer"))
    await service.experiments.upsert(T, experiment(ids, "plain_too", "footer"))
    with pytest.raises(FailedPrecondition) as err:
        await service.experiments.start(T, "plain_too")
    assert err.value.reason == "EXPERIMENT_ALREADY_RUNNING"


async def test_a_point_runs_several_experiments_across_layers_and_each_individual_sees_one(world):
    service, _, ids = world
    await start(service, experiment(ids, "in_layer_one", "home_banner", "one", 0, 5000))
    await start(service, experiment(ids, "in_layer_two", "home_banner", "two", 0, 10_000))
    seen = await participants(service, ["home_banner"])
    assert not seen["in_layer_one"] & seen["in_layer_two"]
    # "one" comes first: it takes its half of the layer; "two" gets everyone else.
    assert 800 < len(seen["in_layer_one"]) < 1200
    assert len(seen["in_layer_one"]) + len(seen["in_layer_two"]) == 2000
    assignments, holdout = await service.assignments.assign(T, next(iter(seen["in_layer_one"])), [], {}, {})
    assert [(a.experiment.name, a.in_experiment, a.layer) for a in assignments] == [
        ("in_layer_one", True, "one"), ("in_layer_two", False, "two")] and not holdout


async def test_bad_layers_are_refused_field_by_field(world):
    service, repo, ids = world
    with pytest.raises(InvalidArgument) as err:
        await service.experiments.upsert(T, experiment(ids, "bad", "home_banner", "Bad Layer", 6000, 5000))
    assert {p for p, _ in err.value.violations} == {"experiment.layer.name", "experiment.layer.end_bps"}
    with pytest.raises(InvalidArgument) as err:
        await service.experiments.upsert(T, experiment(ids, "bad", "home_banner", "", 0, 5000))
    assert [p for p, _ in err.value.violations] == ["experiment.layer.name"]
    assert not repo.experiments


async def test_holdout_individuals_get_only_defaults_and_no_experiment(world):
    service, _, ids = world
    await start(service, experiment(ids, "hero_copy", "home_banner"))
    stored = await service.holdouts.set(T, Holdout(fraction_bps=2000))
    assert stored.update_time == T0
    held = {uid for uid in IDS if stored.holds(uid)}
    assert 300 < len(held) < 500
    for uid in IDS:
        [q] = await service.qualifier.one(T, [("home_banner", "")], {"segments": ["vip"]}, {}, uid)
        if uid in held:
            assert (q.holdout, q.decision.name, q.assignment, q.evaluations) == (True, "default", None, [])
        else:
            assert not q.holdout and q.assignment.in_experiment and q.decision.name in ("a", "b")
    uid = next(iter(held))
    [forced] = await service.qualifier.one(T, [("home_banner", ids[("home_banner", "vip")])], {}, {}, uid)
    assert forced.decision.name == "vip"  # forcing a decision (testing) is not held out
    assert await service.assignments.assign(T, uid, [], {}, {}) == ([], True)
    _, batch = await service.qualifier.batch(T, ["home_banner"], {}, [(u, {}) for u in IDS[:300]])
    assert [row[0].holdout for row in batch] == [u in held for u in IDS[:300]]


async def test_holdout_fraction_is_bounded_and_named_when_refused(world):
    service, repo, _ = world
    with pytest.raises(InvalidArgument) as err:
        await service.holdouts.set(T, Holdout(fraction_bps=5001, seed="x" * 257))
    assert {p for p, _ in err.value.violations} == {"holdout.fraction_bps", "holdout.seed"}
    assert not repo.holdouts


async def test_holdout_results_compare_the_holdout_with_everyone_else(world):
    service, repo, _ = world
    await service.holdouts.set(T, Holdout(fraction_bps=1000))
    held = {uid for uid in IDS if Holdout(fraction_bps=1000).holds(uid)}
    entries, outcomes = [], []
    for i, uid in enumerate(IDS):
        entries.append(LogEntry(f"pz_{i}", "home_banner", unified_individual_id=uid, log_time=T0 - timedelta(days=2),
                                holdout=uid in held))
        if i % (20 if uid in held else 5) == 0:
            outcomes.append(Outcome(f"o_{i}", uid, "PURCHASE", T0 - timedelta(days=1), ("sku",), 10.0))
    for k in range(0, len(entries), 1000):
        await service.log.append(T, entries[k:k + 1000])
    await service.outcomes.record(T, outcomes)
    holdout, results = await service.holdouts.results(T, T0 - timedelta(days=7), T0, "", timedelta(0))
    by = {r.cohort_id: r for r in results.cohorts}
    assert holdout.fraction_bps == 1000
    assert (by["holdout"].participants, by["personalized"].participants) == (len(held), 2000 - len(held))
    assert by["holdout"].converters == sum(1 for i, u in enumerate(IDS) if u in held and i % 20 == 0)
    assert by["personalized"].converters == sum(1 for i, u in enumerate(IDS) if u not in held and i % 5 == 0)
    assert by["personalized"].chance_to_beat_control > 0.99 and not results.srm
