"""Values of the recommender: interaction kinds, interactions, catalog items, scores, requests (the storage port: ports.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from services.recommender.config import BUILT_IN

PRODUCT_VIEW = "product_view"
ADD_TO_CART = "add_to_cart"
PURCHASE = "purchase"
KINDS = (PRODUCT_VIEW, ADD_TO_CART, PURCHASE)
STRATEGIES = BUILT_IN


@dataclass(frozen=True)
class Interaction:
    """One interaction of an individual with an item; (message_id, item_id) identifies it. A returned line is a
    purchase with negative units and revenue; order_id names the purchase whose line of this item it cancels."""

    message_id: str
    unified_individual_id: str
    item_id: str
    kind: str
    quantity: float = 0.0
    revenue: float = 0.0
    event_time: datetime | None = None
    order_id: str = ""


class Scored(NamedTuple):
    """An item and its score (a named tuple: batch ranking builds many of them)."""

    item_id: str
    score: float


class Recommended(NamedTuple):
    """An item returned to the caller, with the recommender that produced it."""

    item_id: str
    score: float
    source: str


@dataclass(frozen=True)
class CatalogItem:
    """A catalog item: its attributes (JSON values) and when it entered the catalog (None: now, on insert)."""

    item_id: str
    attributes: dict[str, Any]
    create_time: datetime | None = None


@dataclass(frozen=True)
class Owned:
    """What one individual did with one item: net units bought, whether bought at all, last view."""

    item_id: str
    units: float
    bought: bool
    last_viewed_at: datetime | None


@dataclass(frozen=True)
class RankingSpec:
    """A global ranking: the strategy and the parameters that shape it."""

    strategy: str
    window_days: float = 0.0
    by_revenue: bool = False
    half_life_days: float = 0.0
    by_units: bool = False


@dataclass(frozen=True)
class Progress:
    """One step of a training run."""

    stage: str
    fraction: float
    message: str
    model_version: int = 0
    individuals: int = 0
    items: int = 0
    interactions: int = 0
    trial: Any = None  # tuning.Trial, on each tuning message
    parameters: dict | None = None  # the fitted family and hyperparameters, on the last message
    trials: tuple = ()  # every tuning.Trial, on the last message


@dataclass
class Diagnostics:
    """What happened while ranking one request."""

    recommenders: list[str] = field(default_factory=list)
    filters: dict[str, int] = field(default_factory=dict)
    diversity_removed: int = 0
    model_version: int = 0


def rank_key(item: Scored) -> tuple[float, str]:
    """Best score first; ties broken by item id (byte order), the same order the database uses."""
    return (-item.score, item.item_id)


@dataclass
class Ask:
    """One individual's request, with what the filters and boosters need."""

    individual: str
    count: int
    exclude_ids: frozenset[str] = frozenset()
    exclude_purchased: bool = False
    anchor: str = ""
    cart: tuple[str, ...] = ()
    affinities: dict[tuple[str, str], float] = field(default_factory=dict)
    history: dict[str, Owned] | None = None
    diagnostics: Diagnostics | None = None
    # Batch only: the learned model's scores for this individual (exclusions masked) and their best few.
    learned_scores: np.ndarray | None = None
    learned_head: list[Scored] | None = None

    @property
    def anchors(self) -> list[str]:
        return [self.anchor] if self.anchor else list(self.cart)


@dataclass
class BatchAnswers:
    """One chunk of batch answers, in request order. A member answered by the learned model's head alone (`head[k]`)
    has its items as model columns with their scores in row k of `columns` and `scores` (`item_ids` names the columns,
    `source` the recommender); every other member's items are in `picked` (none when absent)."""

    ids: list[str]
    head: np.ndarray  # bool, one per member
    columns: np.ndarray  # (members, count) ints, read in the rows of head members only
    scores: np.ndarray  # (members, count), as columns
    picked: dict[int, list[Recommended]]
    item_ids: list[str]
    source: str
    affinities_unused: bool = False  # no recommender of the chain reads affinities (none has boosters)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, list[Recommended]]]:
        """Each member with its items."""
        columns, scores = self.columns.tolist(), self.scores.tolist()
        for k, who in enumerate(self.ids):
            if self.head[k]:
                yield who, [Recommended(self.item_ids[c], v, self.source) for c, v in zip(columns[k], scores[k])]
            else:
                yield who, self.picked.get(k, [])


@dataclass
class Catalog:
    """A tenant's items by id, with every attribute name any item has."""

    items: dict[str, CatalogItem]
    attribute_names: set[str]

    def attributes(self, item_id: str) -> dict[str, Any]:
        item = self.items.get(item_id)
        return item.attributes if item is not None else {}
