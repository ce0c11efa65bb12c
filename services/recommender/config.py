"""Recommender configs: the domain shape, its validation, and item-attribute conditions. No grpc, no SQL."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import Violations, quote

TOP_SELLERS = "top_sellers"
MOST_VIEWED = "most_viewed"
BOUGHT_BY_YOU_AGAIN = "bought_by_you_again"
TRENDING = "trending"
RECENTLY_VIEWED = "recently_viewed"
NEW_ARRIVALS = "new_arrivals"
CO_VIEWED = "co_viewed"
CO_BOUGHT = "co_bought"
SIMILAR_ATTRIBUTES = "similar_attributes"
LEARNED = "learned"
# Strategies usable by name without a config (with default parameters).
BUILT_IN = (TOP_SELLERS, MOST_VIEWED, BOUGHT_BY_YOU_AGAIN, TRENDING, RECENTLY_VIEWED, NEW_ARRIVALS, CO_VIEWED,
            CO_BOUGHT, SIMILAR_ATTRIBUTES)
STRATEGIES = BUILT_IN + (LEARNED,)
# Strategies that rank around an anchor item (or the cart).
ANCHORED = (CO_VIEWED, CO_BOUGHT, SIMILAR_ATTRIBUTES)

CLICKS, PURCHASES, REVENUE = "maximize_clicks", "maximize_purchases", "maximize_revenue"
OBJECTIVES = (CLICKS, PURCHASES, REVENUE)
ALS, BPR, ITEM_KNN, EASE = "als", "bpr", "item_knn", "ease"
ALGORITHMS = (ALS, BPR, ITEM_KNN, EASE)
NONE, BM25, TFIDF = "none", "bm25", "tfidf"
WEIGHTINGS = (NONE, BM25, TFIDF)
# Tuning: the largest time budget, and the default share of the latest interactions held out for validation.
MAX_TUNE_SECONDS = 3600.0
DEFAULT_VALIDATION_FRACTION = 0.1

EQUALS, NOT_EQUALS, IN, NOT_IN = "equals", "not_equals", "in", "not_in"
LESS, LESS_EQUAL, GREATER, GREATER_EQUAL, EXISTS = "less_than", "less_than_or_equal", "greater_than", \
    "greater_than_or_equal", "exists"
ORDERED = (LESS, LESS_EQUAL, GREATER, GREATER_EQUAL)
OPERATORS = (EQUALS, NOT_EQUALS, IN, NOT_IN) + ORDERED + (EXISTS,)

DEFAULT_COUNT = 12
MAX_COUNT = 24
MAX_CONDITIONS = 10
MAX_FALLBACK_DEPTH = 5
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Condition:
    """A condition on one item attribute."""

    attribute: str
    operator: str
    values: tuple[Any, ...] = ()

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        present = self.attribute in attributes and attributes[self.attribute] is not None
        value = attributes.get(self.attribute)
        if self.operator == EXISTS:
            return present
        if self.operator in (EQUALS, IN):
            return present and any(_equal(value, v) for v in self.values)
        if self.operator in (NOT_EQUALS, NOT_IN):
            return not (present and any(_equal(value, v) for v in self.values))
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        bound = self.values[0]
        return {LESS: value < bound, LESS_EQUAL: value <= bound, GREATER: value > bound,
                GREATER_EQUAL: value >= bound}[self.operator]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return any(_equal(x, b) for x in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


@dataclass(frozen=True)
class Booster:
    """Multiplies the score by (1 + weight x affinity for the item's value of `attribute`)."""

    attribute: str
    weight: float = 1.0


@dataclass(frozen=True)
class Config:
    """A named recommender: strategy, parameters, filters, boosters, diversity, count and fallback."""

    name: str
    strategy: str
    window_days: float = 0.0
    by_revenue: bool = False
    # top_sellers by units (not distinct orders), most_viewed by every view (not view sessions).
    by_units: bool = False
    half_life_days: float = 7.0
    min_support: int = 1
    session_minutes: float = 30.0
    max_age_days: float = 0.0
    similar_attributes: tuple[str, ...] = ()
    objective: str = ""
    algorithm: str = ALS
    # Learned hyperparameters: 0 (or "") means the family's default (learned.FAMILY_DEFAULTS).
    factors: int = 0
    regularization: float = 0.0
    iterations: int = 0
    alpha: float = 0.0
    weighting: str = ""
    bm25_k1: float = 0.0
    bm25_b: float = 0.0
    neighbours: int = 0
    learning_rate: float = 0.0
    # Tuning: search families, weightings and hyperparameters for this long before each training (0: no tuning).
    tune_seconds: float = 0.0
    validation_fraction: float = 0.0
    recent_days: float = 0.0
    include: tuple[Condition, ...] = ()
    exclude: tuple[Condition, ...] = ()
    exclude_anchor: bool = False
    same_category_as_anchor: bool = False
    exclude_cart: bool = False
    category_attribute: str = "category"
    exclude_purchased: bool = False
    exclude_recently_viewed: bool = False
    boosters: tuple[Booster, ...] = ()
    diversity_attribute: str = ""
    diversity_max: int = 0
    count: int = 0
    fallback: str = ""
    retrain_seconds: float = 0.0
    update_time: Any = field(default=None, compare=False)

    @property
    def attributes_used(self) -> set[str]:
        used = {c.attribute for c in self.include + self.exclude} | {b.attribute for b in self.boosters}
        used |= set(self.similar_attributes)
        if self.diversity_attribute:
            used.add(self.diversity_attribute)
        return used


def built_in(strategy: str) -> Config:
    """The config a built-in strategy name stands for: the strategy with its defaults and no filters."""
    return Config(name=strategy, strategy=strategy)


def validate_config(config: Config, known_attributes: Collection[str], configs: Mapping[str, Config]) -> None:
    """Raises InvalidArgument with one violation per bad field (paths as in the proto, under `config`)."""
    v = Violations()
    if not NAME.match(config.name):
        v.add("config.name", "must be a lowercase identifier (a-z, 0-9, _; starting with a letter; at most 63)")
    elif config.name in BUILT_IN:
        v.add("config.name", f"{quote(config.name)} is a built-in strategy name")
    if config.strategy not in STRATEGIES:
        v.add("config.strategy", f"must be one of {', '.join(STRATEGIES)}; got {quote(config.strategy)}")
    p = "config.parameters"
    for name in ("window_days", "half_life_days", "session_minutes", "max_age_days", "recent_days"):
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0:
            v.add(f"{p}.{name}", "must be a finite number, 0 or more")
    if config.min_support < 1:
        v.add(f"{p}.min_support", "must be at least 1")
    if config.strategy == LEARNED:
        if config.objective not in OBJECTIVES:
            v.add(f"{p}.objective", "is required for the learned strategy")
        if config.algorithm not in ALGORITHMS:
            v.add(f"{p}.algorithm", f"must be one of {', '.join(ALGORITHMS)}; got {quote(config.algorithm)}")
        if not 0 <= config.factors <= 512:
            v.add(f"{p}.factors", "must be between 1 and 512 (0 means the algorithm's default)")
        if not 0 <= config.iterations <= 1000:
            v.add(f"{p}.iterations", "must be between 1 and 1000 (0 means the algorithm's default)")
        if not 0 <= config.neighbours <= 10_000:
            v.add(f"{p}.neighbours", "must be between 1 and 10000 (0 means the algorithm's default)")
        if config.weighting and config.weighting not in WEIGHTINGS:
            v.add(f"{p}.weighting", f"must be one of {', '.join(WEIGHTINGS)} (empty means the algorithm's default); "
                                    f"got {quote(config.weighting)}")
        for name in ("regularization", "alpha", "bm25_k1", "learning_rate"):
            value = getattr(config, name)
            if not math.isfinite(value) or value < 0:
                v.add(f"{p}.{name}", "must be a positive finite number (0 means the algorithm's default)")
        if not (math.isfinite(config.bm25_b) and 0 <= config.bm25_b <= 1):
            v.add(f"{p}.bm25_b", "must be between 0 and 1 (0 means the algorithm's default)")
        if not (math.isfinite(config.tune_seconds) and 0 <= config.tune_seconds <= MAX_TUNE_SECONDS):
            v.add(f"{p}.tuning_budget", f"must be between 0 and {MAX_TUNE_SECONDS:.0f} seconds (0: no tuning)")
        if not (math.isfinite(config.validation_fraction) and 0 <= config.validation_fraction < 1):
            v.add(f"{p}.validation_fraction", "must be at least 0 and below 1 (0 means 0.1)")
    if not math.isfinite(config.retrain_seconds) or config.retrain_seconds < 0:
        v.add("config.retrain_interval", "must not be negative")
    elif config.retrain_seconds and config.strategy != LEARNED:
        v.add("config.retrain_interval", "only a learned recommender is retrained")
    elif config.retrain_seconds and config.retrain_seconds < 60:
        v.add("config.retrain_interval", "must be at least one minute")
    for i, name in enumerate(config.similar_attributes):
        _check_attribute(v, f"{p}.similar_attributes[{i}]", name, known_attributes)
    for kind, conditions in (("include", config.include), ("exclude", config.exclude)):
        if len(conditions) > MAX_CONDITIONS:
            v.add(f"config.{kind}", f"at most {MAX_CONDITIONS} conditions; got {len(conditions)}")
        for i, condition in enumerate(conditions):
            _check_condition(v, f"config.{kind}[{i}]", condition, known_attributes)
    if config.same_category_as_anchor:
        _check_attribute(v, "config.context_filter.category_attribute", config.category_attribute, known_attributes)
    for i, booster in enumerate(config.boosters):
        _check_attribute(v, f"config.boosters[{i}].attribute", booster.attribute, known_attributes)
        if not math.isfinite(booster.weight) or booster.weight <= 0:
            v.add(f"config.boosters[{i}].weight", "must be a positive finite number")
    if config.diversity_attribute or config.diversity_max:
        _check_attribute(v, "config.diversity.attribute", config.diversity_attribute, known_attributes)
        if config.diversity_max < 1:
            v.add("config.diversity.max_per_value", "must be at least 1")
    if not 0 <= config.count <= MAX_COUNT:
        v.add("config.count", f"must be between 0 and {MAX_COUNT} (0 means {DEFAULT_COUNT}); got {config.count}")
    if config.fallback:
        _check_fallback(v, config, configs)
    v.raise_if_any()


def _check_attribute(v: Violations, path: str, name: str, known: Collection[str]) -> None:
    if not name:
        v.add(path, "is required")
    elif name not in known:
        v.add(path, f"no catalog item has the attribute {quote(name)}")


def _check_condition(v: Violations, path: str, c: Condition, known: Collection[str]) -> None:
    _check_attribute(v, f"{path}.attribute", c.attribute, known)
    if c.operator not in OPERATORS:
        v.add(f"{path}.operator", "is required")
        return
    n = len(c.values)
    if c.operator == EXISTS and n:
        v.add(f"{path}.values", "must be empty for EXISTS")
    elif c.operator in (EQUALS, NOT_EQUALS) + ORDERED and n != 1:
        v.add(f"{path}.values", f"takes exactly one value; got {n}")
    elif c.operator in (IN, NOT_IN) and not 1 <= n <= 1000:
        v.add(f"{path}.values", f"takes 1 to 1000 values; got {n}")
    for i, value in enumerate(c.values):
        if c.operator in ORDERED and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            v.add(f"{path}.values[{i}]", "must be a number")
        elif isinstance(value, (dict, list)) or value is None:
            v.add(f"{path}.values[{i}]", "must be a string, number or boolean")


def _check_fallback(v: Violations, config: Config, configs: Mapping[str, Config]) -> None:
    seen = {config.name}
    name = config.fallback
    for _ in range(MAX_FALLBACK_DEPTH + 1):
        if name in seen:
            v.add("config.fallback", f"falling back to {quote(name)} makes a cycle")
            return
        if name in BUILT_IN:
            return
        if name not in configs:
            v.add("config.fallback", f"no recommender named {quote(name)}")
            return
        seen.add(name)
        name = configs[name].fallback
        if not name:
            return
    v.add("config.fallback", f"the fallback chain is longer than {MAX_FALLBACK_DEPTH}")
