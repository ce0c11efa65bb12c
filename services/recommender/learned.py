"""Objective-based models: interaction weights per objective, training with `implicit`, the stored model, metrics.

No grpc, no SQL. A model maps individuals and items to dense indexes and scores every item for an individual.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from services.recommender.config import (
    ALS,
    CLICKS,
    ITEM_KNN,
    PURCHASES,
    REVENUE,
    Config,
)

# implicit uses its own thread pool; OpenBLAS threads on top of it only oversubscribe the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

KIND_CODES = {"product_view": 0, "add_to_cart": 1, "purchase": 2}
# Weight of one interaction per objective and kind (view, add to cart, purchase); revenue adds ln(1 + revenue).
WEIGHTS = {
    CLICKS: (1.0, 1.0, 1.0),
    PURCHASES: (0.1, 0.5, 1.0),
    REVENUE: (0.1, 0.5, 1.0),
}
# item_knn keeps this many neighbours per item (BM25-weighted cosine, implicit's BM25Recommender with its
# standard K1 = 1.2, B = 0.75).
KNN_NEIGHBOURS = 300
KNN_K1, KNN_B = 1.2, 0.75
# ALS confidence: BM25 weighting of the interactions (K1 = 100, B = 0.8 tuned on MovieLens-100k), times alpha.
BM25_K1, BM25_B = 100.0, 0.8


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


def _codes(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in order of first appearance (a dict is faster than sorting a million strings)."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return np.array(list(index), dtype=str), codes


def build_matrix(individual: list[str], item: list[str], weight: np.ndarray) -> Matrix:
    """Sums weights per (individual, item); pairs that weigh nothing are left out."""
    individuals, rows = _codes(individual)
    items, cols = _codes(item)
    m = sp.csr_matrix((weight, (rows, cols)), shape=(len(individuals), len(items)), dtype=np.float32)
    m.sum_duplicates()
    m.data[m.data < 0] = 0
    m.eliminate_zeros()
    return Matrix(individuals, items, m)


class Model:
    """A trained model: scores every item for a known individual, and items for an anchor item."""

    def __init__(self, algorithm: str, individuals: np.ndarray, items: np.ndarray, *, user_factors=None,
                 item_factors=None, similarity: sp.csr_matrix | None = None, user_items: sp.csr_matrix | None = None,
                 version: int = 0):
        self.algorithm = algorithm
        self.individuals = individuals
        self.items = items
        self.user_factors = user_factors
        self.item_factors = item_factors
        self.similarity = similarity
        self.user_items = user_items
        self.version = version
        self.row = {str(u): i for i, u in enumerate(individuals.tolist())}
        self.column = {str(t): i for i, t in enumerate(items.tolist())}
        self.item_ids = [str(t) for t in items.tolist()]
        if item_factors is not None:
            norms = np.linalg.norm(item_factors, axis=1, keepdims=True)
            self._unit_items = item_factors / np.where(norms == 0, 1, norms)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Scores of every item for the given individuals' rows (one row of scores per individual)."""
        if self.algorithm == ALS:
            return self.user_factors[rows] @ self.item_factors.T
        return np.asarray((self.user_items[rows] @ self.similarity).todense())

    def similar(self, column: int) -> np.ndarray:
        """Similarity of every item to one item (cosine of item factors, or the kNN similarity row)."""
        if self.algorithm == ALS:
            return self._unit_items @ self._unit_items[column]
        return np.asarray(self.similarity[column].todense()).ravel()

    def to_bytes(self) -> bytes:
        arrays = {"algorithm": np.array(self.algorithm), "individuals": self.individuals, "items": self.items}
        if self.algorithm == ALS:
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
        if algorithm == ALS:
            return cls(algorithm, z["individuals"], z["items"], user_factors=z["user_factors"],
                       item_factors=z["item_factors"], version=version)

        def csr(name):
            return sp.csr_matrix((z[f"{name}_data"], z[f"{name}_indices"], z[f"{name}_indptr"]),
                                 shape=tuple(z[f"{name}_shape"]))
        return cls(algorithm, z["individuals"], z["items"], similarity=csr("similarity"),
                   user_items=csr("user_items"), version=version)


def train(config: Config, matrix: Matrix, progress=None) -> Model:
    """Fits the config's algorithm on the weighted matrix; `progress(fraction)` is called while fitting."""
    from implicit.nearest_neighbours import BM25Recommender, bm25_weight

    if config.algorithm == ITEM_KNN:
        knn = BM25Recommender(K=KNN_NEIGHBOURS, K1=KNN_K1, B=KNN_B)
        knn.fit(matrix.weights, show_progress=False)
        binary = matrix.weights.copy()
        binary.data[:] = 1
        return Model(ITEM_KNN, matrix.individuals, matrix.items, similarity=knn.similarity.tocsr(),
                     user_items=binary.tocsr())
    from implicit.cpu.als import AlternatingLeastSquares

    als = AlternatingLeastSquares(factors=config.factors, regularization=config.regularization,
                                  iterations=config.iterations, alpha=config.alpha, random_state=42,
                                  calculate_training_loss=False)
    weighted = bm25_weight(matrix.weights, K1=BM25_K1, B=BM25_B).tocsr().astype(np.float32)
    callback = None
    if progress is not None:
        def callback(iteration, _elapsed, _loss):
            progress((iteration + 1) / config.iterations)
    als.fit(weighted, show_progress=False, callback=callback)
    return Model(ALS, matrix.individuals, matrix.items, user_factors=np.ascontiguousarray(als.user_factors),
                 item_factors=np.ascontiguousarray(als.item_factors))


@dataclass(frozen=True)
class Metrics:
    """Ranking quality at K over individuals with held-out items."""

    precision: float
    recall: float
    ndcg: float
    map: float
    coverage: float
    individuals: int


def split(matrix: Matrix, test_fraction: float, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """A random split of the (individual, item) pairs: train and test matrices of the same shape."""
    coo = matrix.weights.tocoo()
    order = np.lexsort((coo.col, coo.row))
    rows, cols, data = coo.row[order], coo.col[order], coo.data[order]
    permutation = np.random.default_rng(seed).permutation(len(rows))
    cut = round((1 - test_fraction) * len(rows))
    parts = []
    for chosen in (permutation[:cut], permutation[cut:]):
        parts.append(sp.csr_matrix((data[chosen], (rows[chosen], cols[chosen])), shape=matrix.weights.shape))
    return parts[0], parts[1]


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

    The k best elements of a row lie in the k blocks with the highest maxima (each of them is the maximum of a
    block or below one that is at least as high), so only those blocks are searched.
    """
    rows, n = scores.shape
    # A block size that divides the row avoids copying the matrix to reshape it.
    block = next((b for b in range(32, 65) if n % b == 0), 32)
    blocks = n // block
    if blocks <= k:
        return np.argpartition(scores, -k, axis=1)[:, -k:]
    body = scores[:, :blocks * block].reshape(rows, blocks, block)
    maxima = body.max(axis=2)
    best_blocks = np.argpartition(maxima, -k, axis=1)[:, -k:]
    columns = (best_blocks[:, :, None] * block + np.arange(block)).reshape(rows, -1)
    if blocks * block < n:  # the tail that does not fill a block is always searched
        tail = np.broadcast_to(np.arange(blocks * block, n), (rows, n - blocks * block))
        columns = np.concatenate([columns, tail], axis=1)
    values = np.take_along_axis(scores, columns, axis=1)
    chosen = np.argpartition(values, -k, axis=1)[:, -k:]
    return np.take_along_axis(columns, chosen, axis=1)
