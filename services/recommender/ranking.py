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


def chunk_scores(model, ids, width, excluded, bought, exclude_purchased) -> dict[str, tuple]:
    """Learned scores of a chunk's known individuals in one matrix product, exclusions already masked,
    with each one's best few items found for the whole chunk at once: {id: (scores, head columns, head scores)},
    the head best first (ties by column) and without masked items. head_items() turns a head into Scored items
    when they are needed (the plain batch path reads the columns directly)."""
    if model is None:
        return {}
    known = [(i, model.row[u]) for i, u in enumerate(ids) if u in model.row]
    if not known:
        return {}
    scores = model.scores(np.array([r for _, r in known]))
    masked = [model.column[x] for x in excluded if x in model.column]
    if masked:
        scores[:, masked] = -np.inf
    if exclude_purchased:  # bought: {id: item ids bought}, masked in one assignment
        column = model.column
        rows, columns = [], []
        for k, (i, _) in enumerate(known):
            for item_id in bought.get(ids[i], ()):
                c = column.get(item_id)
                if c is not None:
                    rows.append(k)
                    columns.append(c)
        scores[rows, columns] = -np.inf
    # Exclusions are masked already, so a short head is usually enough (the ranking widens if not).
    width = min(width, scores.shape[1] - 1)
    if width <= 0:
        return {ids[i]: (scores[k], None, None) for k, (i, _) in enumerate(known)}
    heads = learned.top_k_rows(scores, width)
    values = np.take_along_axis(scores, heads, axis=1)
    order = np.lexsort((heads, -values), axis=1)
    heads = np.take_along_axis(heads, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    # Masked items sort last: each row's head ends before its first -inf.
    lengths = (values > -np.inf).sum(axis=1).tolist()
    heads_l, values_l = heads.tolist(), values.tolist()
    return {ids[i]: (scores[k], heads_l[k][:lengths[k]], values_l[k][:lengths[k]]) for k, (i, _) in enumerate(known)}


def head_items(model, columns: list[int] | None, values: list[float] | None) -> list[Scored] | None:
    """A chunk_scores head as Scored items."""
    if columns is None or values is None:
        return None
    item_ids = model.item_ids
    return [Scored(item_ids[c], v) for c, v in zip(columns, values)]
