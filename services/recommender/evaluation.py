"""Offline evaluation: the tenant's interactions as arrays, held-out splits (time, leave-last-out, random) and
ranking metrics of a fitted model or popularity. No grpc, no SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from services.recommender import learned
from services.recommender.config import LEARNED, PURCHASES, Config

TIME, LEAVE_LAST_OUT, RANDOM = "time", "leave_last_out", "random"
SPLITS = (TIME, LEAVE_LAST_OUT, RANDOM)
# Tuning only: each individual's latest `fraction` of their items (by when first met), at least one.
LATEST_PER_INDIVIDUAL = "latest_per_individual"


@dataclass(frozen=True)
class Events:
    """Every interaction of a tenant as parallel arrays: row and column codes into `individuals` and `items`,
    kind (learned.KIND_CODES), units, revenue and event time in seconds since the epoch (empty when not read)."""

    individuals: np.ndarray
    items: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    kinds: np.ndarray
    quantities: np.ndarray
    revenues: np.ndarray
    times: np.ndarray

    @classmethod
    def build(cls, individual: list[str], item: list[str], kind: list[int], quantity: list[float],
              revenue: list[float], time: list[float]) -> Events:
        individuals, rows = learned.codes(individual)
        items, cols = learned.codes(item)
        return cls(individuals, items, rows, cols, np.asarray(kind, dtype=np.int64),
                   np.asarray(quantity, dtype=np.float64), np.asarray(revenue, dtype=np.float64),
                   np.asarray(time, dtype=np.float64))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.individuals), len(self.items)

    def weights(self, objective: str, mask: np.ndarray | None = None) -> sp.csr_matrix:
        """The objective-weighted individual x item matrix of the chosen interactions (all when mask is None),
        totalled per (individual, item, kind) first, as training does."""
        pick = np.ones(len(self.rows), dtype=bool) if mask is None else mask
        n_items = len(self.items)
        key = (self.rows[pick] * n_items + self.cols[pick]) * 3 + self.kinds[pick]
        groups, inverse = np.unique(key, return_inverse=True)
        count = np.bincount(inverse, minlength=len(groups)).astype(np.float64)
        quantity = np.bincount(inverse, weights=self.quantities[pick], minlength=len(groups))
        revenue = np.bincount(inverse, weights=self.revenues[pick], minlength=len(groups))
        w = learned.objective_weights(objective or PURCHASES, groups % 3, count, quantity, revenue)
        pair = groups // 3
        m = sp.csr_matrix((w, (pair // n_items, pair % n_items)), shape=self.shape, dtype=np.float32)
        m.sum_duplicates()
        m.data[m.data < 0] = 0
        m.eliminate_zeros()
        return m

    def matrix(self, objective: str, mask: np.ndarray | None = None) -> learned.Matrix:
        return learned.Matrix(self.individuals, self.items, self.weights(objective, mask))

    def subset(self, mask: np.ndarray) -> Events:
        """The chosen interactions, with the same individual and item codes."""
        return Events(self.individuals, self.items, self.rows[mask], self.cols[mask], self.kinds[mask],
                      self.quantities[mask], self.revenues[mask], self.times[mask])

    def pairs(self) -> np.ndarray:
        return self.rows * len(self.items) + self.cols


@dataclass(frozen=True)
class Split:
    """How to hold interactions out: a time split (a cutoff, or the latest `fraction` of the interactions by
    time), leave-last-out (each individual's latest new item) or a random split of the pairs (`seed`)."""

    kind: str = RANDOM
    fraction: float = 0.2
    cutoff: float | None = None
    seed: int = 42


@dataclass(frozen=True)
class Parts:
    """The training matrix, the held-out hits (never an item the individual had in training), which interactions
    are in training, and the time split's cutoff."""

    train: learned.Matrix
    test: sp.csr_matrix
    train_mask: np.ndarray
    cutoff: float | None = None


def split(events: Events, objective: str, how: Split) -> Parts:
    """Training and held-out parts. Held-out hits are the objective's target kinds (purchases for purchases and
    revenue, any interaction for clicks), and what an individual already had in training is never a hit."""
    objective = objective or PURCHASES
    target = np.isin(events.kinds, learned.TARGET_KINDS[objective])
    cutoff = None
    n_items = len(events.items)
    if how.kind == RANDOM:
        train, test = _random(events.weights(objective), how.fraction, how.seed, events)
        coo = train.tocoo()
        kept = np.isin(events.pairs(), coo.row.astype(np.int64) * n_items + coo.col)
        return Parts(learned.Matrix(events.individuals, events.items, train), test, kept)
    if how.kind == TIME:
        cutoff = how.cutoff if how.cutoff is not None else cutoff_of(events.times, how.fraction)
        kept = events.times < cutoff
        train = events.weights(objective, kept)
        test = events.weights(objective, ~kept & target)
    else:
        pair = events.pairs()
        share = how.fraction if how.kind == LATEST_PER_INDIVIDUAL else 0.0
        held = _latest_new_pairs(pair[target], events.times[target], n_items, share)
        kept = ~np.isin(pair, held)
        train = events.weights(objective, kept)
        test = events.weights(objective, ~kept & target)
    # Mask what each individual already had: those items are excluded from the ranking, so never hits.
    test = test - test.multiply(train.astype(bool))
    test = sp.csr_matrix(test)
    test.eliminate_zeros()
    return Parts(learned.Matrix(events.individuals, events.items, train), test, kept, cutoff)


def cutoff_of(times: np.ndarray, fraction: float) -> float:
    """The time after which the latest `fraction` of the interactions happened."""
    if len(times) == 0:
        return 0.0
    return float(np.quantile(times, 1 - fraction, method="higher"))


def _latest_new_pairs(pair: np.ndarray, times: np.ndarray, n_items: int, share: float = 0.0) -> np.ndarray:
    """Per individual, the (individual, item) pairs first met last: the latest `share` of them, at least one
    (ties: the higher item code). Individuals with a single pair keep it for training."""
    if len(pair) == 0:
        return pair
    pairs, inverse = np.unique(pair, return_inverse=True)
    first = np.full(len(pairs), np.inf)
    np.minimum.at(first, inverse, times)
    row = pairs // n_items
    order = np.lexsort((pairs, first, row))
    row_sorted = row[order]
    starts = np.r_[0, np.flatnonzero(row_sorted[1:] != row_sorted[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(row_sorted)])
    size = np.repeat(sizes, sizes)
    rank = np.arange(len(row_sorted)) - np.repeat(starts, sizes)  # 0 = first met
    held = np.maximum(np.floor(share * size), 1)
    chosen = (rank >= size - held) & (size >= 2)
    return pairs[order[chosen]]


def _random(weights: sp.csr_matrix, test_fraction: float, seed: int,
            events: Events) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """A random split of the (individual, item) pairs: train and test matrices of the same shape. The pairs are
    ordered by their ids before the permutation, so the split depends on the seed, never on storage order."""
    coo = weights.tocoo()
    order = np.lexsort((np.argsort(np.argsort(events.items))[coo.col],
                        np.argsort(np.argsort(events.individuals))[coo.row]))
    rows, cols, data = coo.row[order], coo.col[order], coo.data[order]
    permutation = np.random.default_rng(seed).permutation(len(rows))
    cut = round((1 - test_fraction) * len(rows))
    parts = []
    for chosen in (permutation[:cut], permutation[cut:]):
        parts.append(sp.csr_matrix((data[chosen], (rows[chosen], cols[chosen])), shape=weights.shape))
    return parts[0], parts[1]


def evaluable_rows(parts: Parts) -> np.ndarray:
    """Individuals with held-out hits who are known in training (a model can rank only for them)."""
    test_rows = np.flatnonzero(np.diff(parts.test.indptr))
    known = np.diff(parts.train.weights.indptr) > 0
    return test_rows[known[test_rows]]


def evaluate(config: Config, parts: Parts, k: int, *, seed: int = 42, params: dict | None = None,
             model: learned.Model | None = None, deadline: float | None = None) -> learned.Metrics:
    """Fits on the training part (a learned model, or popularity: how many individuals had each item) and
    ranks every item not in the individual's training part for the evaluable individuals."""
    rows = evaluable_rows(parts)
    train = parts.train.weights
    if model is None and (config.strategy == LEARNED or params is not None):
        model = learned.train(config, parts.train, seed=seed, params=params, deadline=deadline)
    popularity: Any = None
    if model is None:
        popularity = np.diff(train.tocsc().indptr).astype(np.float64)
    recommended = {}
    for start in range(0, len(rows), 1024):
        chunk = rows[start:start + 1024]
        scores = model.scores(chunk) if model is not None else np.tile(popularity, (len(chunk), 1))
        seen = train[chunk].tocoo()
        scores[seen.row, seen.col] = -np.inf
        heads = learned.top_k_rows(scores, min(k, scores.shape[1]))
        values = np.take_along_axis(scores, heads, axis=1)
        order = np.lexsort((heads, -values), axis=1)
        heads = np.take_along_axis(heads, order, axis=1)
        values = np.take_along_axis(values, order, axis=1)
        for i, row in enumerate(chunk.tolist()):
            recommended[row] = heads[i][np.isfinite(values[i])].tolist()
    trained_items = int((np.diff(train.tocsc().indptr) > 0).sum())
    return learned.ranking_metrics(recommended, parts.test, k, trained_items)
