"""Use cases of the recommender: record interactions and items, configs, ranking with filters, boosters,
diversity and fallbacks, batch ranking, similar items, training, evaluation. No grpc, no SQL."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

import numpy as np

from services.recommender import learned
from services.recommender.config import (
    ANCHORED,
    BOUGHT_BY_YOU_AGAIN,
    BUILT_IN,
    CO_BOUGHT,
    CO_VIEWED,
    DEFAULT_COUNT,
    LEARNED,
    MAX_COUNT,
    MAX_FALLBACK_DEPTH,
    MOST_VIEWED,
    NEW_ARRIVALS,
    PURCHASES,
    RECENTLY_VIEWED,
    SIMILAR_ATTRIBUTES,
    TOP_SELLERS,
    TRENDING,
    Config,
    built_in,
    validate_config,
)
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Violations

log = logging.getLogger(__name__)

PRODUCT_VIEW = "product_view"
ADD_TO_CART = "add_to_cart"
PURCHASE = "purchase"
KINDS = (PRODUCT_VIEW, ADD_TO_CART, PURCHASE)
STRATEGIES = BUILT_IN
# The strategies ranked over the whole tenant, served from the in-memory cache.
GLOBAL_STRATEGIES = (TOP_SELLERS, MOST_VIEWED, TRENDING)

MAX_INTERACTIONS = 10_000
MAX_ITEMS = 1_000
MAX_EXCLUDED_ITEMS = 1_000
MAX_BATCH = 100_000
BATCH_CHUNK = 500
MAX_ID_LENGTH = 512
# Tenants (or tenant keys) kept in each in-memory cache; the least recently used one is dropped first.
MAX_CACHED_TENANTS = 1_000


@dataclass(frozen=True)
class Interaction:
    """One interaction of an individual with an item; (message_id, item_id) identifies it."""

    message_id: str
    unified_individual_id: str
    item_id: str
    kind: str
    quantity: float = 0.0
    revenue: float = 0.0
    event_time: datetime | None = None


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


@dataclass(frozen=True)
class TrainingRows:
    """Interaction totals per (individual, item, kind): how many, net units, net revenue (kinds as
    learned.KIND_CODES: 0 view, 1 add to cart, 2 purchase)."""

    individuals: list[str]
    items: list[str]
    kinds: list[int]
    counts: list[float]
    quantities: list[float]
    revenues: list[float]


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


@dataclass
class Diagnostics:
    """What happened while ranking one request."""

    recommenders: list[str] = field(default_factory=list)
    filters: dict[str, int] = field(default_factory=dict)
    diversity_removed: int = 0
    model_version: int = 0


class Repository(Protocol):
    async def record(self, tenant: str, interactions: list[Interaction]) -> int: ...
    async def upsert_items(self, tenant: str, items: list[CatalogItem]) -> int: ...
    async def items(self, tenant: str) -> list[CatalogItem]: ...
    async def ranking(self, tenant: str, spec: RankingSpec, limit: int | None) -> list[Scored]: ...
    async def history(self, tenant: str, unified_individual_id: str) -> list[Owned]: ...
    async def histories(self, tenant: str, unified_individual_ids: list[str]) -> dict[str, list[Owned]]: ...
    async def co_occurring(self, tenant: str, anchors: list[str], kind: str, session_seconds: float,
                           min_support: int, limit: int | None) -> list[Scored]: ...
    async def configs(self, tenant: str) -> list[Config]: ...
    async def put_config(self, tenant: str, config: Config) -> Config: ...
    async def delete_config(self, tenant: str, name: str) -> bool: ...
    async def training_rows(self, tenant: str) -> TrainingRows: ...
    async def save_model(self, tenant: str, name: str, payload: bytes, summary: dict) -> int: ...
    async def latest_model_version(self, tenant: str, name: str) -> int: ...
    async def load_model(self, tenant: str, name: str, version: int) -> bytes | None: ...
    async def due_trainings(self) -> list[tuple[str, str]]: ...
    async def claim_training(self, tenant: str, name: str) -> bool: ...


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
            merged[key] = replace(first, quantity=first.quantity + interaction.quantity,
                                  revenue=first.revenue + interaction.revenue)
    return list(merged.values())


def validate_items(items: list[CatalogItem]) -> None:
    """Raises InvalidArgument with one violation per bad field."""
    violations = Violations()
    if len(items) > MAX_ITEMS:
        violations.add("items", f"at most {MAX_ITEMS} items per call, got {len(items)}")
        violations.raise_if_any()
    for i, item in enumerate(items):
        _check_id(violations, f"items[{i}].item_id", item.item_id)
    violations.raise_if_any()


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


def validate_ask(count: int, exclude_ids: Collection[str], affinities: Iterable[tuple[str, str, float]],
                 prefix: str = "") -> None:
    violations = Violations()
    if not 0 <= count <= MAX_COUNT:
        violations.add(f"{prefix}count", f"must be between 0 and {MAX_COUNT} (0 means the recommender's count, "
                                         f"by default {DEFAULT_COUNT}); got {count}")
    if len(exclude_ids) > MAX_EXCLUDED_ITEMS:
        violations.add(f"{prefix}exclude_item_ids", f"at most {MAX_EXCLUDED_ITEMS} items; got {len(exclude_ids)}")
    for i, (attribute, _value, score) in enumerate(affinities):
        if not attribute:
            violations.add(f"{prefix}affinities[{i}].attribute", "is required")
        if not math.isfinite(score) or score < 0:
            violations.add(f"{prefix}affinities[{i}].score", "must be a finite number, 0 or more")
    violations.raise_if_any()


def _timestamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


class _Ttl:
    """A per-key cache with an age limit, one load per key at a time, least recently used dropped first."""

    def __init__(self, seconds: float, clock: Callable[[], float], size: int = MAX_CACHED_TENANTS):
        self.seconds = seconds
        self.clock = clock
        self.size = size
        self._values: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._locks: dict[Any, asyncio.Lock] = {}

    def fresh(self, key) -> tuple[bool, Any]:
        entry = self._values.get(key)
        if entry is None or self.clock() - entry[0] >= self.seconds:
            return False, None
        self._values.move_to_end(key)
        return True, entry[1]

    async def get(self, key, load: Callable[[], Awaitable[Any]]):
        hit, value = self.fresh(key)
        if hit:
            return value
        async with self._locks.setdefault(key, asyncio.Lock()):
            hit, value = self.fresh(key)
            if hit:
                return value
            value = await load()
            self.put(key, value)
            return value

    def put(self, key, value) -> None:
        self._values[key] = (self.clock(), value)
        self._values.move_to_end(key)
        while len(self._values) > self.size:
            evicted, _ = self._values.popitem(last=False)
            self._locks.pop(evicted, None)

    def drop(self, key) -> None:
        self._values.pop(key, None)


@dataclass
class Catalog:
    """A tenant's items by id, with every attribute name any item has."""

    items: dict[str, CatalogItem]
    attribute_names: set[str]

    def attributes(self, item_id: str) -> dict[str, Any]:
        item = self.items.get(item_id)
        return item.attributes if item is not None else {}


@dataclass
class _LoadedModel:
    model: learned.Model | None
    checked_at: float
    refreshing: bool = False


class Recommender:
    """The recommender's use cases over a repository, with per-tenant caches of rankings, catalog, configs, models."""

    def __init__(
        self,
        repository: Repository,
        *,
        cache_seconds: float = 1.0,
        cache_items: int = 500,
        catalog_seconds: float = 10.0,
        model_check_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.cache_items = cache_items
        self.model_check_seconds = model_check_seconds
        self.clock = clock
        self._rankings = _Ttl(cache_seconds, clock)
        self._configs = _Ttl(cache_seconds, clock)
        self._catalogs = _Ttl(catalog_seconds, clock)
        self._models: dict[tuple[str, str], _LoadedModel] = {}
        self._model_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # ---- writes fed by the gateway ----

    async def record_interactions(self, tenant: str, interactions: list[Interaction]) -> int:
        """Validates, then stores the interactions not seen before; returns how many were new."""
        validate_interactions(interactions)
        if not interactions:
            return 0
        return await self.repository.record(tenant, merge_same_key(interactions))

    async def upsert_items(self, tenant: str, items: list[CatalogItem]) -> int:
        """Validates, then inserts or replaces the items (the last of repeated ids wins)."""
        validate_items(items)
        if not items:
            return 0
        unique = list({item.item_id: item for item in items}.values())
        written = await self.repository.upsert_items(tenant, unique)
        self._catalogs.drop(tenant)
        return written

    # ---- configs ----

    async def put_config(self, tenant: str, config: Config) -> Config:
        """Validates against the catalog and the other configs, then stores the config."""
        configs = await self._all_configs(tenant, fresh=True)
        catalog = await self._catalog(tenant)
        validate_config(config, catalog.attribute_names, {n: c for n, c in configs.items() if n != config.name})
        stored = await self.repository.put_config(tenant, config)
        self._configs.drop(tenant)
        return stored

    async def get_config(self, tenant: str, name: str) -> Config:
        config = (await self._all_configs(tenant, fresh=True)).get(name)
        if config is None:
            raise NotFound(f"no recommender named {name!r}", reason="RECOMMENDER_NOT_FOUND", metadata={"name": name})
        return config

    async def list_configs(self, tenant: str, page_size: int, page_token: str) -> tuple[list[Config], str]:
        violations = Violations()
        if not 0 <= page_size <= 1000:
            violations.add("page_size", "must be between 0 and 1000")
        violations.raise_if_any()
        size = page_size or 100
        names = sorted(n for n in (await self._all_configs(tenant, fresh=True)) if n > page_token)
        configs = await self._all_configs(tenant)
        page = [configs[n] for n in names[:size]]
        return page, (page[-1].name if len(names) > size else "")

    async def delete_config(self, tenant: str, name: str) -> None:
        configs = await self._all_configs(tenant, fresh=True)
        if name not in configs:
            raise NotFound(f"no recommender named {name!r}", reason="RECOMMENDER_NOT_FOUND", metadata={"name": name})
        users = sorted(c.name for c in configs.values() if c.fallback == name)
        if users:
            raise FailedPrecondition(f"recommenders {', '.join(users)} fall back to {name!r}",
                                     reason="RECOMMENDER_IN_USE", metadata={"name": name})
        await self.repository.delete_config(tenant, name)
        self._configs.drop(tenant)
        self._models.pop((tenant, name), None)

    async def _all_configs(self, tenant: str, fresh: bool = False) -> dict[str, Config]:
        async def load():
            return {c.name: c for c in await self.repository.configs(tenant)}
        if fresh:
            self._configs.drop(tenant)
        return await self._configs.get(tenant, load)

    async def resolve(self, tenant: str, name: str, path: str = "strategy") -> Config:
        """A configured recommender by name, else a built-in strategy; NOT_FOUND otherwise."""
        if not name:
            raise InvalidArgument([(path, "is required: a recommender name or a built-in strategy")])
        config = (await self._all_configs(tenant)).get(name)
        if config is not None:
            return config
        if name in BUILT_IN:
            return built_in(name)
        raise NotFound(f"no recommender or built-in strategy named {name!r}", reason="RECOMMENDER_NOT_FOUND",
                       metadata={"name": name, "field": path})

    async def _chain(self, tenant: str, config: Config) -> list[Config]:
        chain = [config]
        while chain[-1].fallback and len(chain) <= MAX_FALLBACK_DEPTH:
            nxt = await self.resolve(tenant, chain[-1].fallback)
            if any(c.name == nxt.name for c in chain):
                break
            chain.append(nxt)
        return chain

    # ---- serving ----

    async def recommend(self, tenant: str, unified_individual_id: str, strategy: str, count: int,
                        exclude_item_ids: Collection[str] = (), exclude_purchased: bool = False,
                        **context) -> list[Recommended]:
        """Up to `count` items (see `explain`), without diagnostics."""
        items, _ = await self.explain(tenant, unified_individual_id, strategy, count, exclude_item_ids,
                                      exclude_purchased, **context)
        return items

    async def explain(
        self,
        tenant: str,
        unified_individual_id: str,
        strategy: str,
        count: int,
        exclude_item_ids: Collection[str] = (),
        exclude_purchased: bool = False,
        *,
        anchor_item_id: str = "",
        cart_item_ids: Collection[str] = (),
        affinities: Iterable[tuple[str, str, float]] = (),
        diagnostics: bool = False,
    ) -> tuple[list[Recommended], Diagnostics | None]:
        """Up to `count` items by descending score; filters apply before the count is cut; fallbacks fill up."""
        affinities = list(affinities)
        validate_ask(count, exclude_item_ids, affinities)
        config = await self.resolve(tenant, strategy)
        chain = await self._chain(tenant, config)
        ask = Ask(
            individual=unified_individual_id,
            count=count or config.count or DEFAULT_COUNT,
            exclude_ids=frozenset(exclude_item_ids),
            exclude_purchased=exclude_purchased,
            anchor=anchor_item_id,
            cart=tuple(cart_item_ids),
            affinities={(a, v): s for a, v, s in affinities},
            diagnostics=Diagnostics() if diagnostics else None,
        )
        if unified_individual_id and any(self._needs_history(c, ask) for c in chain):
            ask.history = {o.item_id: o for o in await self.repository.history(tenant, unified_individual_id)}
        picked: list[Recommended] = []
        for cfg in chain:
            if len(picked) >= ask.count:
                break
            picked += await self._run(tenant, cfg, ask, {p.item_id for p in picked}, ask.count - len(picked))
        return picked, ask.diagnostics

    @staticmethod
    def _needs_history(config: Config, ask: Ask) -> bool:
        return (ask.exclude_purchased or config.exclude_purchased or config.exclude_recently_viewed
                or config.strategy in (BOUGHT_BY_YOU_AGAIN, RECENTLY_VIEWED))

    async def _run(self, tenant: str, config: Config, ask: Ask, taken: set[str], need: int,
                   model: learned.Model | None = None) -> list[Recommended]:
        if ask.diagnostics is not None:
            ask.diagnostics.recommenders.append(config.name)
        catalog = await self._catalog(tenant) if self._needs_catalog(config) else None
        # A learned model scores every item: start from a small head, widen only if the filters eat it.
        limits = ((learned_head(need), self.cache_items, None) if config.strategy == LEARNED
                  else (self.cache_items, None))
        for limit in limits:
            candidates, truncated = await self._candidates(tenant, config, ask, catalog, limit, model)
            counts: dict[str, int] = {}
            chosen, removed = select(config, candidates, ask, catalog, taken, need, counts)
            if len(chosen) >= need or not truncated:
                break  # otherwise the head ran out under the filters but the ranking goes on: widen it
        if ask.diagnostics is not None:
            for name, n in counts.items():
                ask.diagnostics.filters[name] = ask.diagnostics.filters.get(name, 0) + n
            ask.diagnostics.diversity_removed += removed
        return [Recommended(s.item_id, s.score, config.name) for s in chosen]

    @staticmethod
    def _needs_catalog(config: Config) -> bool:
        return bool(config.attributes_used or config.same_category_as_anchor
                    or config.strategy in (NEW_ARRIVALS, SIMILAR_ATTRIBUTES))

    async def item_attributes(self, tenant: str, item_ids: list[str], names: list[str]) -> dict[str, dict]:
        """The named catalog attributes of each item (from the cached catalog; absent attributes left out)."""
        if not names or not item_ids:
            return {}
        catalog = await self._catalog(tenant)
        out = {}
        for item_id in item_ids:
            values = catalog.attributes(item_id)
            out[item_id] = {name: values[name] for name in names if name in values}
        return out

    async def _catalog(self, tenant: str) -> Catalog:
        async def load():
            items = await self.repository.items(tenant)
            names = {name for item in items for name in item.attributes}
            return Catalog({item.item_id: item for item in items}, names)
        return await self._catalogs.get(tenant, load)

    async def _ranking(self, tenant: str, spec: RankingSpec, limit: int | None) -> tuple[list[Scored], bool]:
        if limit is None:
            return await self.repository.ranking(tenant, spec, None), False
        ranked = await self._rankings.get((tenant, spec), lambda: self.repository.ranking(tenant, spec, limit))
        return ranked, len(ranked) >= limit

    async def _candidates(self, tenant: str, config: Config, ask: Ask, catalog: Catalog | None, limit: int | None,
                          model: learned.Model | None) -> tuple[list[Scored], bool]:
        """The strategy's ranked candidates (at most `limit`) and whether more exist beyond them."""
        s = config.strategy
        if s == TOP_SELLERS:
            return await self._ranking(tenant, RankingSpec(s, config.window_days, config.by_revenue), limit)
        if s == MOST_VIEWED:
            return await self._ranking(tenant, RankingSpec(s, config.window_days), limit)
        if s == TRENDING:
            return await self._ranking(tenant, RankingSpec(s, half_life_days=config.half_life_days or 7.0), limit)
        if s == BOUGHT_BY_YOU_AGAIN:
            owned = (ask.history or {}).values() if ask.individual else ()
            return sorted((Scored(o.item_id, o.units) for o in owned if o.units > 0), key=rank_key), False
        if s == RECENTLY_VIEWED:
            since = _since(config.recent_days)
            owned = (ask.history or {}).values() if ask.individual else ()
            return sorted((Scored(o.item_id, _timestamp(o.last_viewed_at)) for o in owned
                           if o.last_viewed_at is not None and o.last_viewed_at >= since), key=rank_key), False
        if s == NEW_ARRIVALS:
            since = _since(config.max_age_days)
            return sorted((Scored(i.item_id, _timestamp(i.create_time)) for i in catalog.items.values()
                           if i.create_time is not None and i.create_time >= since), key=rank_key), False
        if s in (CO_VIEWED, CO_BOUGHT):
            if not ask.anchors:
                return [], False
            kind = PRODUCT_VIEW if s == CO_VIEWED else PURCHASE
            ranked = await self.repository.co_occurring(tenant, ask.anchors, kind, config.session_minutes * 60,
                                                        config.min_support, limit)
            return ranked, limit is not None and len(ranked) >= limit
        if s == SIMILAR_ATTRIBUTES:
            return similar_by_attributes(catalog, ask.anchors, config.similar_attributes), False
        if s == LEARNED:
            return await self._learned_candidates(tenant, config, ask, limit, model)
        return [], False

    async def _learned_candidates(self, tenant, config, ask, limit, model) -> tuple[list[Scored], bool]:
        scores = ask.learned_scores
        if ask.learned_head is not None and limit is not None and limit < self.cache_items:
            return ask.learned_head, True  # the chunk's precomputed head stands for the first, small head
        if model is None:
            model = await self.model(tenant, config.name)
        if model is None:
            return [], False
        if ask.diagnostics is not None:
            ask.diagnostics.model_version = model.version
        if scores is None:
            if ask.anchors and not ask.individual:
                columns = [model.column[a] for a in ask.anchors if a in model.column]
                if not columns:
                    return [], False
                scores = sum(model.similar(c) for c in columns)
                scores[columns] = -np.inf
            else:
                row = model.row.get(ask.individual)
                if row is None:
                    return [], False  # unknown to the model: the fallback chain takes over
                scores = model.scores(np.array([row]))[0]
        n = len(scores) if limit is None else min(limit, len(scores))
        top = learned.top_k(scores, n)
        ids = model.item_ids
        return [Scored(ids[i], float(scores[i])) for i in top.tolist()], n < len(scores)

    # ---- models ----

    async def model(self, tenant: str, name: str) -> learned.Model | None:
        """The newest stored model of a recommender; checked at most every model_check_seconds, swapped in
        the background while the loaded one keeps serving (the first load waits)."""
        key = (tenant, name)
        loaded = self._models.get(key)
        if loaded is None:
            async with self._model_locks.setdefault(key, asyncio.Lock()):
                loaded = self._models.get(key)
                if loaded is None:
                    model = await self._load_newest(tenant, name, None)
                    loaded = self._models[key] = _LoadedModel(model, self.clock())
            return loaded.model
        if self.clock() - loaded.checked_at >= self.model_check_seconds and not loaded.refreshing:
            loaded.refreshing = True
            asyncio.get_running_loop().create_task(self._refresh(key, loaded))
        return loaded.model

    async def _refresh(self, key: tuple[str, str], loaded: _LoadedModel) -> None:
        try:
            model = await self._load_newest(key[0], key[1], loaded.model)
            self._models[key] = _LoadedModel(model, self.clock())
        except Exception:  # a failed refresh keeps serving the loaded model and tries again later
            log.exception("model_refresh_failed")
            loaded.refreshing = False
            loaded.checked_at = self.clock()

    async def _load_newest(self, tenant: str, name: str, current: learned.Model | None) -> learned.Model | None:
        version = await self.repository.latest_model_version(tenant, name)
        if not version:
            return None
        if current is not None and current.version == version:
            return current
        payload = await self.repository.load_model(tenant, name, version)
        if payload is None:
            return current
        return await asyncio.to_thread(learned.Model.from_bytes, payload, version)

    async def train(self, tenant: str, name: str) -> AsyncIterator[Progress]:
        """Trains a new version of a learned recommender and stores it; yields progress, the last has the version."""
        config = await self.get_config(tenant, name)
        if config.strategy != LEARNED:
            raise FailedPrecondition(f"{name!r} is a {config.strategy} recommender; only learned ones are trained",
                                     reason="NOT_LEARNED", metadata={"name": name})
        yield Progress("loading", 0.0, "reading interactions")
        matrix = await self._matrix(tenant, config.objective)
        if matrix.weights.nnz == 0:
            raise FailedPrecondition("the tenant has no interactions to train on", reason="NO_INTERACTIONS")
        sizes = {"individuals": len(matrix.individuals), "items": len(matrix.items),
                 "interactions": matrix.weights.nnz}
        yield Progress("fitting", 0.1, f"fitting {config.algorithm} on {matrix.weights.nnz} pairs", **sizes)
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def progress(fraction: float) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, fraction)

        fitting = asyncio.ensure_future(asyncio.to_thread(learned.train, config, matrix, progress))
        while not fitting.done():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({fitting, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield Progress("fitting", 0.1 + 0.8 * getter.result(), "fitting", **sizes)
            else:
                getter.cancel()
        model = fitting.result()
        yield Progress("storing", 0.9, "storing the model", **sizes)
        payload = await asyncio.to_thread(model.to_bytes)
        version = await self.repository.save_model(tenant, name, payload, {
            "algorithm": config.algorithm, "objective": config.objective, **sizes})
        model.version = version
        self._models[(tenant, name)] = _LoadedModel(model, self.clock())
        yield Progress("done", 1.0, f"model version {version} stored", model_version=version, **sizes)

    async def _matrix(self, tenant: str, objective: str) -> learned.Matrix:
        rows = await self.repository.training_rows(tenant)
        codes = np.array(rows.kinds, dtype=np.int64)
        weights = learned.objective_weights(objective or PURCHASES, codes, np.array(rows.counts, dtype=np.float64),
                                            np.array(rows.quantities, dtype=np.float64),
                                            np.array(rows.revenues, dtype=np.float64))
        return learned.build_matrix(rows.individuals, rows.items, weights)

    async def run_schedule(self) -> int:
        """Trains every learned recommender whose retrain interval has passed (one replica claims each)."""
        trained = 0
        for tenant, name in await self.repository.due_trainings():
            if not await self.repository.claim_training(tenant, name):
                continue
            try:
                async for _ in self.train(tenant, name):
                    pass
                trained += 1
            except Exception:  # one tenant's failure must not stop the others; retried at the next interval
                log.exception("scheduled_training_failed")
        return trained

    # ---- batch, similar items, evaluation ----

    async def recommend_batch(
        self,
        tenant: str,
        strategy: str,
        count: int,
        individuals: list[tuple[str, list[tuple[str, str, float]]]],
        exclude_item_ids: Collection[str] = (),
        exclude_purchased: bool = False,
    ) -> AsyncIterator[list[tuple[str, list[Recommended]]]]:
        """Recommendations for many individuals, in chunks; learned scores are computed per chunk at once."""
        violations = Violations()
        if not individuals:
            violations.add("individuals", "at least one individual is required")
        elif len(individuals) > MAX_BATCH:
            violations.add("individuals", f"at most {MAX_BATCH} individuals; got {len(individuals)}")
        for i, (individual, _) in enumerate(individuals[:MAX_BATCH]):
            _check_id(violations, f"individuals[{i}].unified_individual_id", individual)
        violations.raise_if_any()
        validate_ask(count, exclude_item_ids, ())
        for i, (_, affinities) in enumerate(individuals):
            validate_ask(0, (), affinities, prefix=f"individuals[{i}].")
        config = await self.resolve(tenant, strategy)
        chain = await self._chain(tenant, config)
        excluded = frozenset(exclude_item_ids)
        n = count or config.count or DEFAULT_COUNT
        model = await self.model(tenant, config.name) if config.strategy == LEARNED else None
        plain = not (config.attributes_used or config.exclude_recently_viewed or config.same_category_as_anchor)
        for start in range(0, len(individuals), BATCH_CHUNK):
            chunk = individuals[start:start + BATCH_CHUNK]
            ids = [individual for individual, _ in chunk]
            probe = Ask(individual="x", count=n, exclude_purchased=exclude_purchased)
            histories = {}
            if any(self._needs_history(c, probe) for c in chain):
                histories = await self.repository.histories(tenant, ids)
            scored = self._chunk_scores(model, ids, n + 4 if plain else 2 * n + 8, excluded, histories,
                                        exclude_purchased or config.exclude_purchased)
            results = []
            for individual, affinities in chunk:
                head = scored.get(individual, (None, None))[1]
                if plain and head is not None and len(head) >= n:
                    # Exclusions are masked in the scores and nothing else filters: the head is the answer.
                    results.append((individual, [Recommended(h.item_id, h.score, config.name) for h in head[:n]]))
                    continue
                ask = Ask(individual=individual, count=n, exclude_ids=excluded, exclude_purchased=exclude_purchased,
                          affinities={(a, v): s for a, v, s in affinities},
                          history={o.item_id: o for o in histories.get(individual, ())})
                picked: list[Recommended] = []
                for i, cfg in enumerate(chain):
                    if len(picked) >= n:
                        break
                    if i == 0 and individual in scored:
                        ask.learned_scores, ask.learned_head = scored[individual]
                    else:
                        ask.learned_scores = ask.learned_head = None
                    picked += await self._run(tenant, cfg, ask, {p.item_id for p in picked}, n - len(picked),
                                              model=model if i == 0 else None)
                results.append((individual, picked))
            yield results

    @staticmethod
    def _chunk_scores(model, ids, width, excluded, histories, exclude_purchased) -> dict[str, tuple]:
        """Learned scores of a chunk's known individuals in one matrix product, exclusions already masked,
        with each one's best few items found for the whole chunk at once."""
        if model is None:
            return {}
        known = [(i, model.row[u]) for i, u in enumerate(ids) if u in model.row]
        if not known:
            return {}
        scores = model.scores(np.array([r for _, r in known]))
        masked = [model.column[x] for x in excluded if x in model.column]
        if masked:
            scores[:, masked] = -np.inf
        if exclude_purchased:
            for k, (i, _) in enumerate(known):
                bought = [model.column[o.item_id] for o in histories.get(ids[i], ()) if o.bought
                          and o.item_id in model.column]
                scores[k, bought] = -np.inf
        # Exclusions are masked already, so a short head is usually enough (the ranking widens if not).
        width = min(width, scores.shape[1] - 1)
        if width <= 0:
            return {ids[i]: (scores[k], None) for k, (i, _) in enumerate(known)}
        heads = learned.top_k_rows(scores, width)
        values = np.take_along_axis(scores, heads, axis=1)
        order = np.lexsort((heads, -values), axis=1)
        heads = np.take_along_axis(heads, order, axis=1).tolist()
        values = np.take_along_axis(values, order, axis=1).tolist()
        item_ids = model.item_ids
        out = {}
        for k, (i, _) in enumerate(known):
            out[ids[i]] = (scores[k], [Scored(item_ids[c], v) for c, v in zip(heads[k], values[k]) if v > -math.inf])
        return out

    async def similar_items(self, tenant: str, item_id: str, count: int, strategy: str) -> list[Recommended]:
        """Items like one item, by the named anchor-based or learned recommender (default similar_attributes)."""
        violations = Violations()
        _check_id(violations, "item_id", item_id)
        if not 0 <= count <= MAX_COUNT:
            violations.add("count", f"must be between 0 and {MAX_COUNT} (0 means {DEFAULT_COUNT}); got {count}")
        violations.raise_if_any()
        config = await self.resolve(tenant, strategy or SIMILAR_ATTRIBUTES)
        if config.strategy not in ANCHORED + (LEARNED,):
            message = f"{config.name!r} ranks without an anchor item; use {', '.join(ANCHORED)} or a learned recommender"
            raise InvalidArgument([("strategy", message)])
        ask = Ask(individual="", count=count or config.count or DEFAULT_COUNT, anchor=item_id,
                  exclude_ids=frozenset([item_id]))
        return await self._run(tenant, config, ask, set(), ask.count)

    async def evaluate(self, tenant: str, name: str, k: int, test_fraction: float, seed: int) -> learned.Metrics:
        """Ranking quality on a random held-out split of the (individual, item) pairs; training items excluded."""
        violations = Violations()
        if not 0 <= k <= 100:
            violations.add("k", "must be between 1 and 100 (0 means 10)")
        if not (math.isfinite(test_fraction) and 0 <= test_fraction < 1):
            violations.add("test_fraction", "must be above 0 and below 1 (0 means 0.2)")
        violations.raise_if_any()
        k, test_fraction = k or 10, test_fraction or 0.2
        config = await self.resolve(tenant, name, path="name")
        if config.strategy not in (TOP_SELLERS, MOST_VIEWED, TRENDING, LEARNED):
            raise FailedPrecondition(f"evaluation ranks by popularity or a learned model; {config.strategy} is "
                                     f"neither", reason="NOT_EVALUABLE", metadata={"name": name})
        matrix = await self._matrix(tenant, config.objective)
        if matrix.weights.nnz < 10:
            raise FailedPrecondition("too few interactions to split", reason="NO_INTERACTIONS")
        return await asyncio.to_thread(evaluate_split, config, matrix, k, test_fraction, seed)


def learned_head(need: int) -> int:
    """How many of a learned model's best items to look at first: enough for the usual exclusions."""
    return 4 * need + 16


def evaluate_split(config: Config, matrix: learned.Matrix, k: int, test_fraction: float, seed: int) -> learned.Metrics:
    """Fits on the training part (a learned model, or popularity) and ranks the held-out part."""
    train_m, test_m = learned.split(matrix, test_fraction, seed)
    rows = np.unique(test_m.tocoo().row)
    if config.strategy == LEARNED:
        model = learned.train(config, learned.Matrix(matrix.individuals, matrix.items, train_m))
    else:
        model = None
        binary = train_m.copy()
        binary.data[:] = 1
        popularity = np.asarray(binary.sum(axis=0)).ravel().astype(np.float64)
    recommended = {}
    for start in range(0, len(rows), 1024):
        chunk = rows[start:start + 1024]
        scores = model.scores(chunk) if model is not None else np.tile(popularity, (len(chunk), 1))
        seen = train_m[chunk].tocoo()
        scores[seen.row, seen.col] = -np.inf
        for i, row in enumerate(chunk.tolist()):
            recommended[row] = learned.top_k(scores[i], k).tolist()
    return learned.ranking_metrics(recommended, test_m, k, len(matrix.items))


def _since(days: float) -> datetime:
    if not days:
        return datetime.min.replace(tzinfo=UTC)
    return datetime.now(UTC) - timedelta(days=days)


def similar_by_attributes(catalog: Catalog, anchors: list[str], names: tuple[str, ...]) -> list[Scored]:
    """Items sharing attribute values with the anchors: score = share of the compared attributes that match."""
    anchor_items = [catalog.items[a] for a in anchors if a in catalog.items]
    if not anchor_items:
        return []
    wanted = [(n, item.attributes[n]) for item in anchor_items for n in (names or sorted(item.attributes))
              if n in item.attributes]
    if not wanted:
        return []
    skip = set(anchors)
    ranked = []
    for item in catalog.items.values():
        if item.item_id in skip:
            continue
        matched = sum(1 for n, value in wanted if n in item.attributes and item.attributes[n] == value)
        if matched:
            ranked.append(Scored(item.item_id, matched / len(wanted)))
    return sorted(ranked, key=rank_key)


def select(config: Config, candidates: list[Scored], ask: Ask, catalog: Catalog | None, taken: set[str], need: int,
           counts: dict[str, int]) -> tuple[list[Scored], int]:
    """Filters (counting what each removed), boosters, diversity, then the cut; returns the chosen and how many
    diversity removed. Without boosters the walk stops as soon as `need` items are chosen."""
    history = ask.history or {}
    anchor_category = None
    if config.same_category_as_anchor and catalog is not None and ask.anchor:
        anchor_category = catalog.attributes(ask.anchor).get(config.category_attribute)
    since = _since(config.recent_days)
    checks: list[tuple[str, Callable[[str], bool]]] = []
    if ask.exclude_ids:
        checks.append(("exclude_item_ids", ask.exclude_ids.__contains__))
    if config.exclude_anchor and ask.anchor:
        checks.append(("exclude_anchor", ask.anchor.__eq__))
    if config.exclude_cart and ask.cart:
        checks.append(("exclude_cart", frozenset(ask.cart).__contains__))
    if config.same_category_as_anchor and ask.anchor:
        checks.append(("same_category_as_anchor",
                       lambda i: anchor_category is None
                       or catalog.attributes(i).get(config.category_attribute) != anchor_category))
    if (config.exclude_purchased or ask.exclude_purchased) and history:
        checks.append(("exclude_purchased", lambda i: i in history and history[i].bought))
    if config.exclude_recently_viewed and history:
        checks.append(("exclude_recently_viewed", lambda i: i in history and history[i].last_viewed_at is not None
                       and history[i].last_viewed_at >= since))
    for n, condition in enumerate(config.include):
        checks.append((f"include[{n}]", lambda i, c=condition: not c.matches(catalog.attributes(i))))
    for n, condition in enumerate(config.exclude):
        checks.append((f"exclude[{n}]", lambda i, c=condition: c.matches(catalog.attributes(i))))
    boosting = bool(config.boosters and ask.affinities)
    kept: list[Scored] = []
    for candidate in candidates:
        if not boosting and len(kept) >= need and not config.diversity_attribute:
            break
        item = candidate.item_id
        if item in taken:
            continue
        for name, rejects in checks:
            if rejects(item):
                counts[name] = counts.get(name, 0) + 1
                break
        else:
            kept.append(candidate)
    if boosting:
        kept = sorted((Scored(s.item_id, s.score * boost(config, ask, catalog, s.item_id)) for s in kept),
                      key=rank_key)
    if not config.diversity_attribute:
        return kept[:need], 0
    chosen, per_value, removed = [], {}, 0
    for s in kept:
        if len(chosen) >= need:
            break
        value = catalog.attributes(s.item_id).get(config.diversity_attribute)
        key = str(value)
        if value is not None and per_value.get(key, 0) >= config.diversity_max:
            removed += 1
            continue
        per_value[key] = per_value.get(key, 0) + 1
        chosen.append(s)
    return chosen, removed


def boost(config: Config, ask: Ask, catalog: Catalog | None, item_id: str) -> float:
    """The product of (1 + weight x affinity) over the config's boosters; 1 when no affinity applies."""
    factor = 1.0
    attributes = catalog.attributes(item_id) if catalog is not None else {}
    for booster in config.boosters:
        value = attributes.get(booster.attribute)
        if value is None:
            continue
        factor *= 1.0 + booster.weight * ask.affinities.get((booster.attribute, _text(value)), 0.0)
    return factor


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
