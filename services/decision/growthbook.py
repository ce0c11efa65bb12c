"""GrowthBook's deterministic bucketing (hash, getBucketRange, chooseVariation), so assignments match its SDKs.

Given the same seed and hash attribute (the unified individual id), an individual lands in the same cohort here
as in any GrowthBook SDK. Proven against the SDK conformance cases in tests/unit/decision/test_growthbook.py.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_UTF16_NATIVE = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"  # memoryview.cast("H") reads native order


def fnv32a(text: str) -> int:
    """32-bit FNV-1a over the UTF-16 code units of text, as GrowthBook's SDKs do (JavaScript's `charCodeAt`).

    A character outside the Basic Multilingual Plane (an emoji) is two code units, a surrogate pair, not one code
    point; ASCII text is one unit per byte.
    """
    h = _FNV_OFFSET
    if text.isascii():
        for unit in text.encode():
            h = ((h ^ unit) * _FNV_PRIME) & 0xFFFFFFFF
        return h
    data = text.encode(_UTF16_NATIVE, "surrogatepass")
    for unit in memoryview(data).cast("H"):
        h = ((h ^ unit) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def gb_hash(seed: str, value: str, version: int) -> float | None:
    """A number in [0, 1) for (seed, value); None for an unknown hash version."""
    if version == 2:
        return (fnv32a(str(fnv32a(seed + value))) % 10000) / 10000
    if version == 1:
        return (fnv32a(value + seed) % 1000) / 1000
    return None


def get_bucket_range(
    num_variations: int, coverage: float, weights: Sequence[float] | None = None
) -> list[tuple[float, float]]:
    """The [start, end) range of each variation: weights laid end to end, each shrunk to its coverage share.

    Edges keep full precision, as the SDKs' do (rounding them moved a few individuals in 10,000 to another cohort).
    """
    coverage = min(max(coverage, 0.0), 1.0)
    equal = [1.0 / num_variations] * num_variations if num_variations > 0 else []
    if weights is None or len(weights) != num_variations or not 0.99 <= sum(weights) <= 1.01:
        weights = equal
    ranges = []
    cumulative = 0.0
    for weight in weights:
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def choose_variation(n: float, ranges: Sequence[tuple[float, float]]) -> int:
    """The index of the range holding n, or -1 when n falls outside every range."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def ranges_for_bps(weights_bps: Sequence[int]) -> list[tuple[float, float]]:
    """Bucket ranges of cohorts weighted in basis points: coverage is their sum over 10,000 (the rest is out)."""
    total = sum(weights_bps)
    if total <= 0:
        return [(0.0, 0.0)] * len(weights_bps)
    return get_bucket_range(len(weights_bps), total / 10000, [w / total for w in weights_bps])
