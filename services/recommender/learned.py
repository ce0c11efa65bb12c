"""Objective-based models: interaction weights per objective, training with `implicit`, the stored model, metrics.

No grpc, no SQL. A model maps individuals and items to dense indexes and scores every item for an individual.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from services.recommender.config import (
    ALS,
    BM25,
    BPR,
    CLICKS,
    EASE,
    ITEM_KNN,
    NONE,
    PURCHASES,
    REVENUE,
    TFIDF,
    Config,
)

# implicit uses its own thread pool; OpenBLAS threads on top of it only oversubscribe the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

KIND_CODES = {"product_view": 0, "add_to_cart": 1, "purchase": 2}
# The kinds each objective is judged on in evaluation: what counts as a hit among held-out interactions.
TARGET_KINDS = {CLICKS: (0, 1, 2), PURCHASES: (2,), REVENUE: (2,)}
# Weight of one interaction per objective and kind (view, add to cart, purchase); revenue adds ln(1 + revenue).
WEIGHTS = {
    CLICKS: (1.0, 1.0, 1.0),
    PURCHASES: (0.1, 0.5, 1.0),
    REVENUE: (0.1, 0.5, 1.0),
}
# Every family's hyperparameters with their defaults; a config's 0 (or "") means the family's default.
# ALS defaults were tuned on MovieLens-100k; the others are the usual starting points of their papers/libraries.
FAMILY_DEFAULTS = {
    ALS: {"weighting": BM25, "factors": 20, "regularization": 10.0, "iterations": 30, "alpha": 0.5,
          "bm25_k1": 100.0, "bm25_b": 0.8},
    BPR: {"weighting": NONE, "factors": 64, "regularization": 0.01, "iterations": 100, "learning_rate": 0.01},
    ITEM_KNN: {"weighting": BM25, "neighbours": 300, "bm25_k1": 1.2, "bm25_b": 0.75},
    EASE: {"weighting": NONE, "regularization": 500.0},
}
# EASE keeps this many of the largest weights per item (its dense item-item matrix would not fit in a row).
EASE_NEIGHBOURS = 500
# EASE inverts a dense items x items matrix: above this many items it is not offered.
EASE_MAX_ITEMS = 20_000
FACTORED = (ALS, BPR)


def parameters(config: Config) -> dict:
    """The config's family and hyperparameters, its defaults filled in for what the config leaves at 0."""
    family = config.algorithm or ALS
    out: dict[str, Any] = {"algorithm": family}
    for name, default in FAMILY_DEFAULTS[family].items():
        value = getattr(config, name)
        out[name] = value if value else default
    return out


def weigh(weights: sp.csr_matrix, p: dict, *, by_item: bool = False) -> sp.csr_matrix:
    """The matrix under the parameters' weighting: none, BM25 (K1, B) or TF-IDF. Factored models and EASE weigh
    each individual's row (an item's idf across individuals); item-kNN weighs each item's column as implicit's
    BM25/TF-IDF/cosine recommenders do (unit-length item vectors for none and TF-IDF)."""
    from implicit.nearest_neighbours import bm25_weight, normalize, tfidf_weight

    x = weights.T.tocsr() if by_item else weights
    if p["weighting"] == BM25:
        x = bm25_weight(x, K1=p["bm25_k1"], B=p["bm25_b"])
    elif p["weighting"] == TFIDF:
        x = tfidf_weight(x)
    if by_item and p["weighting"] != BM25:
        x = normalize(x)
    x = sp.csr_matrix(x.T if by_item else x, dtype=np.float32)
    x.data[~np.isfinite(x.data)] = 0
    x.eliminate_zeros()
    return x


@dataclass
class Matrix:
    """Individual-item weights with the ids behind the rows and columns."""

    individuals: np.ndarray  # str, one per row
    items: np.ndarray  # str, one per column
    weights: sp.csr_matrix


def objective_weights(objective: str, kind: np.ndarray, count: np.ndarray, quantity: np.ndarray,
                      revenue: np.ndarray) -> np.ndarray:
    """The weight of (individual, item, kind) totals under the objective: `count` interactions of one kind.

    Each interaction weighs WEIGHTS[objective][kind]; under MAXIMIZE_REVENUE purchases add ln(1 + net revenue).
    Purchases whose net units are not positive (all returned) weigh nothing.
    """
    view, cart, purchase = WEIGHTS[objective]
    w = np.choose(kind, [view, cart, purchase]).astype(np.float64) * count
    is_purchase = kind == KIND_CODES["purchase"]
    if objective == REVENUE:
        w = np.where(is_purchase, w + np.log1p(np.maximum(revenue, 0.0)), w)
    return np.where(is_purchase & (quantity <= 0), 0.0, w)


def codes(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in order of first appearance (a dict is faster than sorting a million strings)."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return np.array(list(index), dtype=str), codes


class Model:
    """A trained model: scores every item for a known individual, and items for an anchor item.

    Factored families (ALS, BPR) score by user x item factors; item families (item-kNN, EASE) by the individual's
    row of `user_items` times an item-item `similarity`.
    """

    def __init__(self, algorithm: str, individuals: np.ndarray, items: np.ndarray, *, user_factors=None,
                 item_factors=None, similarity: sp.csr_matrix | None = None, user_items: sp.csr_matrix | None = None,
                 version: int = 0):
        self.algorithm = algorithm
        self.individuals = individuals
        self.items = items
        # Factored families set the factors, item families the matrices (`factored` tells which): typed Any, as the
        # code reads each pair only when it is set.
        self.user_factors: Any = user_factors
        self.item_factors: Any = item_factors
        self.similarity: Any = similarity
        self.user_items: Any = user_items
        self.version = version
        self.row = {str(u): i for i, u in enumerate(individuals.tolist())}
        self.column = {str(t): i for i, t in enumerate(items.tolist())}
        self.item_ids = [str(t) for t in items.tolist()]
        if item_factors is not None:
            # Scores multiply by the transposed item factors: contiguous, the product runs about a third faster.
            self._item_factors_t = np.ascontiguousarray(item_factors.T)
            norms = np.linalg.norm(item_factors, axis=1, keepdims=True)
            self._unit_items = item_factors / np.where(norms == 0, 1, norms)

    @property
    def factored(self) -> bool:
        return self.algorithm in FACTORED

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Scores of every item for the given individuals' rows (one row of scores per individual)."""
        if self.factored:
            return self.user_factors[rows] @ self._item_factors_t
        return np.asarray((self.user_items[rows] @ self.similarity).todense())

    def similar(self, column: int) -> np.ndarray:
        """Similarity of every item to one item (cosine of item factors, or the item-item weights row)."""
        if self.factored:
            return self._unit_items @ self._unit_items[column]
        return np.asarray(self.similarity[column].todense()).ravel()

    def to_bytes(self) -> bytes:
        arrays: dict[str, Any] = {"algorithm": np.array(self.algorithm), "individuals": self.individuals,
                                  "items": self.items}
        if self.factored:
            arrays |= {"user_factors": self.user_factors, "item_factors": self.item_factors}
        else:
            for name, m in (("similarity", self.similarity), ("user_items", self.user_items)):
                arrays |= {f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr,
                           f"{name}_shape": np.array(m.shape)}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes, version: int = 0) -> Model:
        z = np.load(io.BytesIO(payload), allow_pickle=False)
        algorithm = str(z["algorithm"])
        if algorithm in FACTORED:
            return cls(algorithm, z["individuals"], z["items"], user_factors=z["user_factors"],
                       item_factors=z["item_factors"], version=version)

        def csr(name):
            return sp.csr_matrix((z[f"{name}_data"], z[f"{name}_indices"], z[f"{name}_indptr"]),
                                 shape=tuple(z[f"{name}_shape"]))
        return cls(algorithm, z["individuals"], z["items"], similarity=csr("similarity"),
                   user_items=csr("user_items"), version=version)


class OverBudget(Exception):
    """A fit was stopped because its deadline passed."""


def train(config: Config, matrix: Matrix, progress=None, *, seed: int = 42, params: dict | None = None,
          deadline: float | None = None) -> Model:
    """Fits the config's family (or the given resolved `params`) on the objective-weighted matrix.

    `progress(fraction)` is called while fitting; `seed` fixes every random start, so a fit is reproducible.
    Iterative families stop with OverBudget between iterations once time.monotonic() passes `deadline`."""
    p = params or parameters(config)
    family = p["algorithm"]
    weighted = weigh(matrix.weights, p, by_item=family == ITEM_KNN)
    if family == ITEM_KNN:
        from implicit.nearest_neighbours import ItemItemRecommender

        knn = ItemItemRecommender(K=int(p["neighbours"]))
        knn.fit(weighted.astype(np.float64), show_progress=False)
        binary = matrix.weights.copy()
        binary.data[:] = 1
        return Model(ITEM_KNN, matrix.individuals, matrix.items, similarity=knn.similarity.tocsr(),
                     user_items=binary.tocsr())
    if family == EASE:
        return Model(EASE, matrix.individuals, matrix.items, similarity=ease_weights(weighted, p["regularization"]),
                     user_items=weighted)
    iterations = int(p["iterations"])
    def callback(iteration, *_):
        if progress is not None:
            progress((iteration + 1) / iterations)
        if deadline is not None and time.monotonic() > deadline:
            raise OverBudget()
    if family == BPR:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        bpr = BayesianPersonalizedRanking(factors=int(p["factors"]), learning_rate=p["learning_rate"],
                                          regularization=p["regularization"], iterations=iterations,
                                          random_state=seed)
        bpr.fit(weighted, show_progress=False, callback=callback)
        return Model(BPR, matrix.individuals, matrix.items, user_factors=np.ascontiguousarray(bpr.user_factors),
                     item_factors=np.ascontiguousarray(bpr.item_factors))
    from implicit.cpu.als import AlternatingLeastSquares

    als = AlternatingLeastSquares(factors=int(p["factors"]), regularization=p["regularization"],
                                  iterations=iterations, alpha=p["alpha"], random_state=seed,
                                  calculate_training_loss=False)
    # Fitted with the individuals of most items first, then the factors put back in the matrix's order: the same
    # fit (up to its random start), 5-8% faster on 100k+ individuals (measured on the speed bench's matrix and on
    # a heavy-tailed one; no difference on small ones), the cost of one row gather.
    order = np.argsort(-np.diff(weighted.indptr), kind="stable")
    als.fit(weighted[order], show_progress=False, callback=callback)
    user_factors = np.empty_like(als.user_factors)
    user_factors[order] = als.user_factors
    return Model(ALS, matrix.individuals, matrix.items, user_factors=user_factors,
                 item_factors=np.ascontiguousarray(als.item_factors))


def ease_weights(weighted: sp.csr_matrix, regularization: float) -> sp.csr_matrix:
    """EASE (Steck 2019): B = I - P diagMat(1 / diag(P)) with P = (X'X + lambda I)^-1, diagonal zero; each item
    keeps its EASE_NEIGHBOURS weights of largest magnitude (negative weights matter too)."""
    gram = (weighted.T @ weighted).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += regularization
    b = np.linalg.inv(gram)
    del gram
    b /= -np.diag(b)
    b[np.diag_indices_from(b)] = 0
    n = b.shape[0]
    keep = min(EASE_NEIGHBOURS, n - 1)
    if keep <= 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    columns = np.argpartition(-np.abs(b), keep - 1, axis=1)[:, :keep]
    values = np.take_along_axis(b, columns, axis=1)
    rows = np.repeat(np.arange(n), keep)
    out = sp.csr_matrix((values.ravel().astype(np.float32), (rows, columns.ravel())), shape=(n, n))
    out.eliminate_zeros()
    return out


@dataclass(frozen=True)
class Metrics:
    """Ranking quality at K over individuals with held-out items."""

    precision: float
    recall: float
    ndcg: float
    map: float
    coverage: float
    individuals: int


def ranking_metrics(recommended: dict[int, list[int]], test: sp.csr_matrix, k: int, n_items: int) -> Metrics:
    """P@K (hits / K), recall@K, nDCG@K (binary), MAP@K and catalogue coverage for rows with held-out items."""
    p = r = n = ap = 0.0
    users = 0
    shown: set[int] = set()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for row, items in recommended.items():
        truth = set(test.indices[test.indptr[row]:test.indptr[row + 1]].tolist())
        if not truth:
            continue
        users += 1
        top = items[:k]
        shown.update(top)
        hits = [1.0 if item in truth else 0.0 for item in top]
        found = sum(hits)
        p += found / k
        r += found / len(truth)
        ideal = discounts[:min(len(truth), k)].sum()
        n += float(np.dot(hits, discounts[:len(hits)])) / ideal
        running, total = 0, 0.0
        for i, hit in enumerate(hits):
            if hit:
                running += 1
                total += running / (i + 1)
        ap += total / min(len(truth), k)
    if users == 0:
        return Metrics(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    return Metrics(p / users, r / users, n / users, ap / users, len(shown) / max(n_items, 1), users)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k best finite scores, best first (ties by index)."""
    k = min(k, len(scores))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    head = np.argpartition(-scores, k - 1)[:k]
    head = head[np.lexsort((head, -scores[head]))]
    return head[np.isfinite(scores[head]) & (scores[head] > -math.inf)]


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indexes of the k best scores of every row (unordered), exactly, touching few elements twice.

    The columns are cut into interleaved groups (group g holds columns g, g + groups, g + 2 groups, ...): the k
    best elements of a row lie in the k groups with the highest maxima (each is the maximum of a group or below
    one that is at least as high), so only those groups are searched. Interleaved groups let the maxima be taken
    over contiguous rows of memory, several times faster than over short contiguous blocks.
    """
    rows, n = scores.shape
    # A group size that divides the row avoids copying the matrix to reshape it.
    size = next((b for b in range(32, 65) if n % b == 0), 32)
    groups = n // size
    if groups <= k:
        return np.argpartition(scores, -k, axis=1)[:, -k:]
    body = scores[:, :groups * size].reshape(rows, size, groups)
    maxima = body.max(axis=1)
    best_groups = np.argpartition(maxima, -k, axis=1)[:, -k:]
    columns = (best_groups[:, None, :] + groups * np.arange(size)[None, :, None]).reshape(rows, -1)
    if groups * size < n:  # the tail that does not fill a group is always searched
        tail = np.broadcast_to(np.arange(groups * size, n), (rows, n - groups * size))
        columns = np.concatenate([columns, tail], axis=1)
    values = np.take_along_axis(scores, columns, axis=1)
    chosen = np.argpartition(values, -k, axis=1)[:, -k:]
    return np.take_along_axis(columns, chosen, axis=1)


def best_per_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best finite scores, best first (ties by column): (columns, scores), each of shape (rows, k),
    padded with column -1 and score -inf where a row has fewer than k finite scores. The scores are not changed.

    The k-th highest of the maxima of k or more disjoint groups of columns is at most a row's k-th best score, so
    only the scores at or above it are candidates: one pass over the row to find them, and a sort of a few.
    Interleaved groups (group g holds columns g, g + groups, ...) let the maxima be taken over contiguous memory.
    """
    rows, n = scores.shape
    size = next((b for b in range(32, 65) if n % b == 0), 32)
    groups = n // size
    if groups >= k:
        maxima = scores[:, :groups * size].reshape(rows, size, groups).max(axis=1)
        threshold = np.partition(maxima, groups - k, axis=1)[:, groups - k]
    else:  # too few groups: every finite score is a candidate
        threshold = np.full(rows, -np.inf, dtype=scores.dtype)
    flat = np.flatnonzero(scores >= threshold[:, None])
    values = scores.ravel()[flat]
    finite = np.isfinite(values)
    flat, values = flat[finite], values[finite]
    row = flat // n
    order = np.lexsort((-values, row))  # stable: within a row, equal scores stay in column order
    flat, values, row = flat[order], values[order], row[order]
    counts = np.bincount(row, minlength=rows)
    rank = np.arange(len(row)) - (np.cumsum(counts) - counts)[row]
    keep = rank < k
    columns = np.full((rows, k), -1, dtype=np.int64)
    best = np.full((rows, k), -np.inf, dtype=scores.dtype)
    columns[row[keep], rank[keep]] = flat[keep] - row[keep] * n
    best[row[keep], rank[keep]] = values[keep]
    return columns, best
