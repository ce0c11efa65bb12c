"""Assignment checked against GrowthBook's own Python SDK (the `growthbook` package): random configurations, layers
as GrowthBook namespaces, 0 differences."""

from __future__ import annotations

import random
import uuid

import pytest
from growthbook import Experiment as GbExperiment
from growthbook import GrowthBook

from services.decision import growthbook
from services.decision.experiments import Cohort, Experiment, hashed_cohort

ALPHABETS = ("abcdefghijklmnopqrstuvwxyz0123456789-_@.", "éüßøñ中文字日本語한국어", "😀🎉🚀👍🏽𝔘𝕟𝕚🀄")


def random_id(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if kind == 1:
        return str(rng.randrange(10**9))
    alphabet = "".join(ALPHABETS[: kind])  # kind 2: ASCII and BMP letters; kind 3: emoji and other astral ones too
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 24)))


def random_experiment(rng: random.Random, index: int) -> Experiment:
    """2-4 cohorts with unequal weights in basis points summing below 10,000 (coverage < 1), a seed, v1 or v2, and
    half the time a slice of a layer."""
    count = rng.randrange(2, 5)
    total = rng.randrange(count * 100, 10_000)
    cuts = sorted(rng.sample(range(1, total), count - 1))
    weights = [b - a for a, b in zip([0] + cuts, cuts + [total])]
    seed = rng.choice(["", f"seed-{rng.getrandbits(32):x}", "ünïcødé-🌱"])
    layer = {}
    if rng.random() < 0.5:  # a slice of a layer: GrowthBook's namespace
        start, end = sorted(rng.sample(range(0, 10_001), 2))
        layer = {"layer": rng.choice(["checkout", "home_page"]), "layer_start_bps": start, "layer_end_bps": end}
    return Experiment(experiment_id=f"exp_{index}", name=f"test_{index}", point_name="home_banner", seed=seed,
                      cohorts=tuple(Cohort(f"c{i}", w) for i, w in enumerate(weights)),
                      hash_version=rng.choice([1, 2]), **layer)


def sdk_cohort(gb: GrowthBook, e: Experiment, unified_id: str) -> str:
    total = sum(c.weight_bps for c in e.cohorts)
    gb.set_attributes({"id": unified_id})
    result = gb.run(GbExperiment(
        key=e.name, variations=list(range(len(e.cohorts))), weights=[c.weight_bps / total for c in e.cohorts],
        coverage=total / 10_000, seed=e.hash_seed, hashVersion=e.hash_version,
        namespace=(e.layer, e.layer_start_bps / 10_000, e.layer_end_bps / 10_000) if e.layer else None))
    return e.cohorts[result.variationId].cohort_id if result.inExperiment else ""


@pytest.mark.parametrize("run", range(2))
def test_cohorts_equal_the_growthbook_sdk_for_random_configurations_and_ids(run):
    rng = random.Random(1000 + run)
    gb = GrowthBook()
    compared = differences = astral = 0
    for index in range(20):
        e = random_experiment(rng, index)
        for _ in range(600):
            unified_id = random_id(rng)
            astral += any(ord(ch) > 0xFFFF for ch in unified_id)
            compared += 1
            differences += hashed_cohort(e, unified_id) != sdk_cohort(gb, e, unified_id)
    assert compared == 12_000 and astral > 1000
    assert differences == 0


def test_both_hash_versions_and_partial_coverage_are_drawn():
    rng = random.Random(1000)
    drawn = [random_experiment(rng, i) for i in range(60)]
    assert {e.hash_version for e in drawn} == {1, 2}
    assert all(sum(c.weight_bps for c in e.cohorts) < 10_000 for e in drawn)
    assert {len(e.cohorts) for e in drawn} == {2, 3, 4}
    assert 10 < sum(bool(e.layer) for e in drawn) < 50


def test_fnv_runs_over_utf16_code_units_so_an_emoji_is_its_surrogate_pair():
    units = [0xD83D, 0xDE00]  # "😀" in UTF-16
    h = 0x811C9DC5
    for unit in units:
        h = ((h ^ unit) * 0x01000193) & 0xFFFFFFFF
    assert growthbook.fnv32a("😀") == h


def test_bucket_range_edges_keep_full_precision():
    ranges = growthbook.ranges_for_bps([3333, 3334, 1])
    assert ranges[0][1] == pytest.approx(3333 / 6668 * 0.6668, abs=1e-15)
    assert ranges[1][0] == 3333 / 6668  # not rounded to 0.4999
