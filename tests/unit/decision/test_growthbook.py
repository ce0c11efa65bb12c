"""GrowthBook bucketing reproduced exactly: every hash, getBucketRange and chooseVariation conformance case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.decision import growthbook

CASES = json.loads(
    (Path(__file__).resolve().parents[3] / ".." / "shared" / "external-data" / "growthbook" / "cases.json").read_text()
)


@pytest.mark.parametrize("seed,value,version,expected", CASES["hash"])
def test_hash_matches_growthbook(seed, value, version, expected):
    result = growthbook.gb_hash(seed, value, version)
    assert result == (None if expected is None else pytest.approx(expected, abs=1e-9))


@pytest.mark.parametrize("name,args,expected", CASES["getBucketRange"], ids=[c[0] for c in CASES["getBucketRange"]])
def test_bucket_ranges_match_growthbook(name, args, expected):
    ranges = growthbook.get_bucket_range(*args)
    assert [list(r) for r in ranges] == [[pytest.approx(a, abs=1e-9), pytest.approx(b, abs=1e-9)] for a, b in expected]


@pytest.mark.parametrize("name,n,ranges,expected", CASES["chooseVariation"], ids=[c[0] for c in CASES["chooseVariation"]])
def test_choose_variation_matches_growthbook(name, n, ranges, expected):
    assert growthbook.choose_variation(n, [tuple(r) for r in ranges]) == expected


def test_every_section_has_cases():
    assert len(CASES["hash"]) >= 15 and len(CASES["getBucketRange"]) >= 13 and len(CASES["chooseVariation"]) >= 13


def test_basis_point_weights_become_coverage_and_normalized_weights():
    assert growthbook.ranges_for_bps([2500, 2500]) == [(0.0, 0.25), (0.5, 0.75)]
    assert growthbook.ranges_for_bps([5000, 5000]) == [(0.0, 0.5), (0.5, 1.0)]
    assert growthbook.ranges_for_bps([0, 0]) == [(0.0, 0.0), (0.0, 0.0)]
