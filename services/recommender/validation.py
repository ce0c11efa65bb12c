"""Checks of the recommender's input (one violation per bad field) and the merge of repeated interactions."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import replace

from services.recommender.config import DEFAULT_COUNT, MAX_COUNT
from services.recommender.domain import KINDS, PURCHASE, CatalogItem, Interaction
from shared.errors import Violations

MAX_INTERACTIONS = 10_000
MAX_ITEMS = 1_000
MAX_EXCLUDED_ITEMS = 1_000
MAX_ID_LENGTH = 512


def check_id(violations: Violations, path: str, value: str) -> None:
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
        check_id(violations, f"interactions[{i}].message_id", interaction.message_id)
        check_id(violations, f"interactions[{i}].unified_individual_id", interaction.unified_individual_id)
        check_id(violations, f"interactions[{i}].item_id", interaction.item_id)
        if interaction.kind not in KINDS:
            violations.add(f"interactions[{i}].type", "must be PRODUCT_VIEW, ADD_TO_CART, PURCHASE or RETURN")
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
        check_id(violations, f"items[{i}].item_id", item.item_id)
    violations.raise_if_any()


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
