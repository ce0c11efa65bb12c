"""Pure ranking functions: attribute similarity, filters, boosters, diversity, batch heads, held-out evaluation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import numpy as np

from services.recommender import learned
from services.recommender.config import Config
from services.recommender.domain import Ask, Catalog, Scored, rank_key


def learned_head(need: int) -> int:
    """How many of a learned model's best items to look at first: enough for the usual exclusions."""
    return 4 * need + 16


def window_start(days: float) -> datetime:
    if not days:
        return datetime.min.replace(tzinfo=UTC)
    return datetime.now(UTC) - timedelta(days=days)


def timestamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


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


def _fails(condition: Any, attributes: Callable[[str], dict[str, Any]], matching: bool, item: str) -> bool:
    """Whether a filter removes item: an exclude when its condition matches, an include when it does not."""
    return bool(condition.matches(attributes(item))) == matching


def select(config: Config, candidates: list[Scored], ask: Ask, catalog: Catalog | None, taken: set[str], need: int,
           counts: dict[str, int]) -> tuple[list[Scored], int]:
    """Filters (counting what each removed), boosters, diversity, then the cut; returns the chosen and how many
    diversity removed. Without boosters the walk stops as soon as `need` items are chosen."""
    history = ask.history or {}
    anchor_category = None
    if config.same_category_as_anchor and catalog is not None and ask.anchor:
        anchor_category = catalog.attributes(ask.anchor).get(config.category_attribute)
    since = window_start(config.recent_days)
    attributes: Callable[[str], dict[str, Any]] = catalog.attributes if catalog is not None else (lambda _item: {})
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
                       or attributes(i).get(config.category_attribute) != anchor_category))
    if (config.exclude_purchased or ask.exclude_purchased) and history:
        checks.append(("exclude_purchased", lambda i: i in history and history[i].bought))
    if config.exclude_recently_viewed and history:
        checks.append(("exclude_recently_viewed", lambda i: i in history and since is not None
                       and (viewed := history[i].last_viewed_at) is not None and viewed >= since))
    for n, condition in enumerate(config.include):
        checks.append((f"include[{n}]", partial(_fails, condition, attributes, False)))
    for n, condition in enumerate(config.exclude):
        checks.append((f"exclude[{n}]", partial(_fails, condition, attributes, True)))
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
    chosen: list[Scored] = []
    per_value: dict[str, int] = {}
    removed = 0
    for s in kept:
        if len(chosen) >= need:
            break
        value = attributes(s.item_id).get(config.diversity_attribute)
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


def masked_scores(model, rows: np.ndarray, excluded: list[int], bought_rows: np.ndarray,
                  bought_columns: np.ndarray) -> np.ndarray:
    """The model's scores of every item for the given model rows, -inf at the excluded columns (everyone's) and at
    the (row position, column) pairs bought."""
    scores = model.scores(rows)
    if excluded:
        scores[:, excluded] = -np.inf
    scores[bought_rows, bought_columns] = -np.inf
    return scores


def learned_heads(model, rows: np.ndarray, width: int, excluded: list[int], bought_rows: np.ndarray,
                  bought_columns: np.ndarray, block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The best `width` columns of each model row and their scores, best first (ties by column), without the masked
    ones (see masked_scores); padded with column -1 (learned.best_per_row). Rows are scored `block` at a time, so
    the scores stay in the processor's cache between the product and the search."""
    columns, values = [], []
    for start in range(0, len(rows), block):
        pick = (bought_rows >= start) & (bought_rows < start + block)
        scores = masked_scores(model, rows[start:start + block], excluded, bought_rows[pick] - start,
                               bought_columns[pick])
        c, v = learned.best_per_row(scores, width)
        columns.append(c)
        values.append(v)
    if not columns:
        return np.empty((0, width), dtype=np.int64), np.empty((0, width))
    return np.concatenate(columns), np.concatenate(values)
