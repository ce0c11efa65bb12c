"""Affinity scores: their decay and the increments a batch of events adds."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from services.profile_graph.domain import AffinityConfig, NewEvent


def decay(score: float, elapsed_seconds: float, half_life: timedelta) -> float:
    """A score after elapsed_seconds with the given half-life (a negative time counts as none; the exponent is
    capped at 1,000 half-lives, like the SQL reads)."""
    return score * 0.5 ** min(max(elapsed_seconds, 0.0) / half_life.total_seconds(), 1000.0)


def affinity_increments(events: list[NewEvent], items: dict[str, dict], config: AffinityConfig
                        ) -> dict[tuple[str, str, str], tuple[float, datetime]]:
    """(individual, dimension, value) -> (score at as_of, as_of) added by the events; each event adds its type's
    weight once per distinct value of each dimension over its items."""
    out: dict[tuple[str, str, str], tuple[float, datetime]] = {}
    for e in events:
        weight = config.weight(e.type)
        if not weight:
            continue
        at = e.event_time
        assert at is not None, "appended events were validated"
        for dim in config.dimensions:
            values: set[str] = set()
            for item_id in e.item_ids:
                raw = items.get(item_id, {}).get(dim)
                for value in (raw if isinstance(raw, list) else [raw]):
                    if value is not None and not isinstance(value, (dict, list)) and str(value).strip():
                        values.add(value if isinstance(value, str) else json.dumps(value))
            for value in values:
                key = (e.individual_id, dim, value)
                score, as_of = out.get(key, (0.0, at))
                if at >= as_of:
                    score = decay(score, (at - as_of).total_seconds(), config.half_life) + weight
                    as_of = at
                else:
                    score += decay(weight, (as_of - at).total_seconds(), config.half_life)
                out[key] = (score, as_of)
    return out
