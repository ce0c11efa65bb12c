"""Use cases of the recommender: record interactions idempotently, rank items by a strategy. No grpc, no SQL."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from shared.errors import Violations

PRODUCT_VIEW = "product_view"
ADD_TO_CART = "add_to_cart"
PURCHASE = "purchase"
KINDS = (PRODUCT_VIEW, ADD_TO_CART, PURCHASE)

TOP_SELLERS = "top_sellers"
MOST_VIEWED = "most_viewed"
BOUGHT_BY_YOU_AGAIN = "bought_by_you_again"
STRATEGIES = (TOP_SELLERS, MOST_VIEWED, BOUGHT_BY_YOU_AGAIN)
# The strategies ranked over the whole tenant, served from the in-memory cache.
GLOBAL_STRATEGIES = (TOP_SELLERS, MOST_VIEWED)

MAX_INTERACTIONS = 10_000
DEFAULT_COUNT = 12
MAX_COUNT = 24
MAX_EXCLUDED_ITEMS = 1_000
MAX_ID_LENGTH = 512
# Tenants whose rankings are kept in memory at once; the least recently used one is dropped first.
MAX_CACHED_TENANTS = 1_000


@dataclass(frozen=True)
class Interaction:
    """One interaction of an individual with an item; (message_id, item_id) identifies it."""

    message_id: str
    unified_individual_id: str
    item_id: str
    kind: str  # one of KINDS, or "" when the caller sent another type
    quantity: float = 0.0
    revenue: float = 0.0
    event_time: datetime | None = None  # None: the time it is recorded


@dataclass(frozen=True)
class Scored:
    """An item and its score under some ranking."""

    item_id: str
    score: float


@dataclass(frozen=True)
class Recommended:
    """One recommended item: its score and the strategy that produced it."""

    item_id: str
    score: float
    source: str


class Repository(Protocol):
    """What the recommender needs from storage (postgres.py, and an in-memory fake in unit tests)."""

    async def record(self, tenant: str, interactions: list[Interaction]) -> int:
        """Stores the interactions not seen before and adds them to the statistics, atomically; returns how many."""

    async def rankings(self, tenant: str, limit: int) -> dict[str, list[Scored]]:
        """The top `limit` items of each global strategy with a positive score, best first."""

    async def ranking(self, tenant: str, strategy: str, limit: int, exclude: Collection[str]) -> list[Scored]:
        """The top `limit` items of one global strategy with a positive score, leaving out `exclude`."""

    async def purchases(self, tenant: str, unified_individual_id: str) -> list[Scored]:
        """Every item the individual bought (or returned), scored by net units."""


def rank_key(item: Scored) -> tuple[float, str]:
    """Best score first; ties broken by item id (byte order), the same order the database uses."""
    return (-item.score, item.item_id)


def _check_id(violations: Violations, path: str, value: str) -> None:
    if not value:
        violations.add(path, "is required")
    elif len(value) > MAX_ID_LENGTH:
        violations.add(path, f"must be at most {MAX_ID_LENGTH} characters")


def validate_interactions(interactions: list[Interaction]) -> None:
    """Raises InvalidArgument with one violation per bad field."""
    violations = Violations()
    if len(interactions) > MAX_INTERACTIONS:
        violations.add("interactions", f"at most {MAX_INTERACTIONS} interactions per call, got {len(interactions)}")
        violations.raise_if_any()
    for i, interaction in enumerate(interactions):
        _check_id(violations, f"interactions[{i}].message_id", interaction.message_id)
        _check_id(violations, f"interactions[{i}].unified_individual_id", interaction.unified_individual_id)
        _check_id(violations, f"interactions[{i}].item_id", interaction.item_id)
        if interaction.kind not in KINDS:
            violations.add(f"interactions[{i}].type", "must be PRODUCT_VIEW, ADD_TO_CART or PURCHASE")
        if not math.isfinite(interaction.quantity):
            violations.add(f"interactions[{i}].quantity", "must be a finite number")
        if not math.isfinite(interaction.revenue):
            violations.add(f"interactions[{i}].revenue", "must be a finite number")
    violations.raise_if_any()


def merge_same_key(interactions: Iterable[Interaction]) -> list[Interaction]:
    """One interaction per (message_id, item_id).

    Two purchase lines of the same item in one event share the key, so their units and revenue are summed;
    any other repeat of a key within a call is the same interaction sent twice, and the first one is kept.
    """
    merged: dict[tuple[str, str], Interaction] = {}
    for interaction in interactions:
        key = (interaction.message_id, interaction.item_id)
        first = merged.get(key)
        if first is None:
            merged[key] = interaction
        elif first.kind == PURCHASE and interaction.kind == PURCHASE:
            merged[key] = Interaction(
                message_id=first.message_id,
                unified_individual_id=first.unified_individual_id,
                item_id=first.item_id,
                kind=PURCHASE,
                quantity=first.quantity + interaction.quantity,
                revenue=first.revenue + interaction.revenue,
                event_time=first.event_time,
            )
    return list(merged.values())


def validate_recommend(strategy: str, count: int, exclude_item_ids: Collection[str]) -> None:
    """Raises InvalidArgument with one violation per bad field."""
    violations = Violations()
    if strategy not in STRATEGIES:
        violations.add("strategy", f"must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if not 0 <= count <= MAX_COUNT:
        violations.add("count", f"must be between 0 and {MAX_COUNT} (0 means {DEFAULT_COUNT}); got {count}")
    if len(exclude_item_ids) > MAX_EXCLUDED_ITEMS:
        violations.add("exclude_item_ids", f"at most {MAX_EXCLUDED_ITEMS} items; got {len(exclude_item_ids)}")
    violations.raise_if_any()


def pick(candidates: Iterable[Scored], excluded: Collection[str], count: int) -> list[Scored]:
    """The first `count` candidates with a positive score that are not excluded (candidates come ranked)."""
    picked: list[Scored] = []
    for item in candidates:
        if len(picked) == count:
            break
        if item.score > 0 and item.item_id not in excluded:
            picked.append(item)
    return picked


@dataclass
class _CachedRankings:
    loaded_at: float
    rankings: dict[str, list[Scored]]


class Recommender:
    """Records interactions and answers Recommend, serving the global rankings from a per-tenant cache."""

    def __init__(
        self,
        repository: Repository,
        *,
        cache_seconds: float = 1.0,
        cache_items: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.cache_seconds = cache_seconds
        self.cache_items = cache_items
        self.clock = clock
        self._cache: OrderedDict[str, _CachedRankings] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    async def record_interactions(self, tenant: str, interactions: list[Interaction]) -> int:
        """Validates, then stores the interactions not seen before; returns how many were new."""
        validate_interactions(interactions)
        if not interactions:
            return 0
        return await self.repository.record(tenant, merge_same_key(interactions))

    async def recommend(
        self,
        tenant: str,
        unified_individual_id: str,
        strategy: str,
        count: int,
        exclude_item_ids: Collection[str] = (),
        exclude_purchased: bool = False,
    ) -> list[Recommended]:
        """Up to `count` (0 means 12) items by descending score; filters apply before the count is cut."""
        validate_recommend(strategy, count, exclude_item_ids)
        count = count or DEFAULT_COUNT
        excluded = set(exclude_item_ids)
        purchases: list[Scored] = []
        if unified_individual_id and (exclude_purchased or strategy == BOUGHT_BY_YOU_AGAIN):
            purchases = await self.repository.purchases(tenant, unified_individual_id)
        if exclude_purchased:
            excluded.update(p.item_id for p in purchases)

        if strategy == BOUGHT_BY_YOU_AGAIN:
            picked = pick(sorted(purchases, key=rank_key), excluded, count)
        else:
            ranked = (await self._rankings(tenant))[strategy]
            picked = pick(ranked, excluded, count)
            if len(picked) < count and len(ranked) >= self.cache_items:
                # The cached head ran out under the filters but the ranking goes on: ask the database.
                picked = await self.repository.ranking(tenant, strategy, count, excluded)
        return [Recommended(item_id=p.item_id, score=p.score, source=strategy) for p in picked]

    async def _rankings(self, tenant: str) -> dict[str, list[Scored]]:
        cached = self._fresh(tenant)
        if cached is not None:
            return cached
        # One load per tenant at a time; callers that waited find the fresh result.
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            cached = self._fresh(tenant)
            if cached is not None:
                return cached
            rankings = await self.repository.rankings(tenant, self.cache_items)
            self._cache[tenant] = _CachedRankings(loaded_at=self.clock(), rankings=rankings)
            self._cache.move_to_end(tenant)
            while len(self._cache) > MAX_CACHED_TENANTS:
                evicted, _ = self._cache.popitem(last=False)
                self._locks.pop(evicted, None)
            return rankings

    def _fresh(self, tenant: str) -> dict[str, list[Scored]] | None:
        cached = self._cache.get(tenant)
        if cached is None or self.clock() - cached.loaded_at >= self.cache_seconds:
            return None
        self._cache.move_to_end(tenant)
        return cached.rankings
