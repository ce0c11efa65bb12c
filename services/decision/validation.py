"""Input checks of the decision service: points, decisions, content; the not-found errors (paging is shared.paging)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from services.decision import bandit, rules
from services.decision.domain import Decision, Point, Template
from services.decision.schema import ProfileSchema, check_rule
from shared.errors import NotFound, Violations, quote

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
POINT_TYPES = ("MANUAL_CONTENT", "RECOMMENDATIONS")
FIELD_TYPES = ("STRING", "NUMBER", "BOOL", "STRING_LIST")
MAX_COUNT = 24
MAX_TEXT = 256


def validate_point(point: Point, v: Violations) -> None:
    """Adds a violation per bad field of a point (paths under `point.`)."""
    if not NAME.match(point.name):
        v.add("point.name", "must match ^[a-z][a-z0-9_]{0,63}$")
    if point.type not in POINT_TYPES:
        v.add("point.type", "must be POINT_TYPE_MANUAL_CONTENT or POINT_TYPE_RECOMMENDATIONS")
    if len(point.description) > 1024:
        v.add("point.description", "must be at most 1,024 characters")
    if point.consent_purpose and not NAME.match(point.consent_purpose):
        v.add("point.consent_purpose", "must match ^[a-z][a-z0-9_]{0,63}$")
    if point.bandit is not None:
        bandit.validate_config(point.bandit, v)
    seen: set[str] = set()
    for i, f in enumerate(point.template.fields):
        path = f"point.template.fields[{i}]"
        if point.type == "RECOMMENDATIONS":
            v.add(path, "recommendation points carry items, not content fields; use item_attributes")
            continue
        if not NAME.match(f.name):
            v.add(f"{path}.name", "must match ^[a-z][a-z0-9_]{0,63}$")
        elif f.name in seen:
            v.add(f"{path}.name", f"duplicate field name {quote(f.name)}")
        seen.add(f.name)
        if f.type not in FIELD_TYPES:
            v.add(f"{path}.type", "must be FIELD_TYPE_STRING, _NUMBER, _BOOL or _STRING_LIST")
    seen = set()
    for i, attribute in enumerate(point.template.item_attributes):
        path = f"point.template.item_attributes[{i}]"
        if point.type == "MANUAL_CONTENT":
            v.add(path, "only recommendation points return item attributes")
        elif not NAME.match(attribute):
            v.add(path, "must match ^[a-z][a-z0-9_]{0,63}$")
        elif attribute in seen:
            v.add(path, f"duplicate item attribute {quote(attribute)}")
        seen.add(attribute)


_TYPE_WORDS = {"STRING": "a string", "NUMBER": "a number", "BOOL": "a bool", "STRING_LIST": "a list of strings"}


def _has_type(value: Any, field_type: str) -> bool:
    if field_type == "STRING":
        return isinstance(value, str)
    if field_type == "NUMBER":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if field_type == "BOOL":
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def validate_content(content: Mapping[str, Any], template: Template, v: Violations, path: str) -> None:
    """Adds one violation per field of content that breaks the template: missing, mistyped or unknown."""
    declared = {f.name: f for f in template.fields}
    for f in template.fields:
        if f.name not in content:
            if f.required:
                v.add(f"{path}.{f.name}", "is required by the point's template")
        elif not _has_type(content[f.name], f.type):
            v.add(f"{path}.{f.name}", f"must be {_TYPE_WORDS[f.type]}")
    for key in content:
        if key not in declared:
            v.add(f"{path}.{key}", "is not a field of the point's template")


def validate_decision(
    decision: Decision, point: Point | None, v: Violations, schema: ProfileSchema | None = None
) -> None:
    """Adds a violation per bad field of a decision (paths under `decision.`); point None skips payload checks."""
    if not decision.name.strip():
        v.add("decision.name", "must not be empty")
    elif len(decision.name) > MAX_TEXT:
        v.add("decision.name", f"must be at most {MAX_TEXT} characters")
    if decision.consent_purpose and not NAME.match(decision.consent_purpose):
        v.add("decision.consent_purpose", "must match ^[a-z][a-z0-9_]{0,63}$")
    try:
        check_rule(decision.rule, schema)
    except rules.RuleError as error:
        v.add("decision.rule", str(error))
    if point is None:
        return
    if point.type == "MANUAL_CONTENT":
        if decision.recommender or decision.count:
            v.add("decision.recommendations", "a manual content point's decisions carry content, not recommendations")
        elif decision.content is None:
            v.add("decision.content", "is required on a manual content point")
        else:
            validate_content(decision.content, point.template, v, "decision.content")
    else:
        if decision.content is not None:
            v.add("decision.content", "a recommendations point's decisions carry recommendations, not content")
            return
        if not decision.recommender.strip():
            v.add("decision.recommendations.recommender", "must name a recommender")
        elif len(decision.recommender) > MAX_TEXT:
            v.add("decision.recommendations.recommender", f"must be at most {MAX_TEXT} characters")
        if not 0 <= decision.count <= MAX_COUNT:
            v.add("decision.recommendations.count", f"must be between 0 and {MAX_COUNT}")


def validate_window(start: datetime | None, end: datetime | None, maximum: timedelta, v: Violations) -> None:
    """A log window [start_time, end_time): both required, end after start, at most `maximum` long."""
    if start is None:
        v.add("start_time", "is required")
    if end is None:
        v.add("end_time", "is required")
    if start is not None and end is not None:
        if end <= start:
            v.add("end_time", "must be after start_time")
        elif end - start > maximum:
            v.add("end_time", f"must be at most {maximum.days} days after start_time")


def raise_violation(path: str, message: str) -> None:
    v = Violations()
    v.add(path, message)
    v.raise_if_any()


def decision_not_found(point: str, decision_id: str, field_path: str) -> NotFound:
    return NotFound(
        f"{field_path}: decision {quote(decision_id)} does not exist on point {quote(point)}",
        reason="DECISION_NOT_FOUND",
        metadata={"point": point, "decision_id": decision_id},
    )


def point_not_found(name: str, field_path: str) -> NotFound:
    return NotFound(f"{field_path}: point {quote(name)} does not exist", reason="POINT_NOT_FOUND",
                    metadata={"point": name})


def experiment_not_found(name: str, field_path: str = "name") -> NotFound:
    return NotFound(f"{field_path}: experiment {quote(name)} does not exist", reason="EXPERIMENT_NOT_FOUND",
                    metadata={"experiment": name})


def validate_outcomes(outcomes, max_entries: int) -> None:
    """Refuses outcomes beyond max_entries, or with an empty id or individual, an unknown type, no time, or a
    negative revenue (or any on a click); one violation per bad field."""
    v = Violations()
    if len(outcomes) > max_entries:
        v.add("outcomes", f"must hold at most {max_entries} outcomes")
    for i, o in enumerate(outcomes):
        p = f"outcomes[{i}]"
        if not o.outcome_id:
            v.add(f"{p}.outcome_id", "must not be empty")
        elif len(o.outcome_id) > MAX_TEXT:
            v.add(f"{p}.outcome_id", f"must be at most {MAX_TEXT} characters")
        if not o.unified_individual_id:
            v.add(f"{p}.unified_individual_id", "must name the individual")
        if o.type not in ("CLICK", "PURCHASE"):
            v.add(f"{p}.type", "must be OUTCOME_TYPE_CLICK or OUTCOME_TYPE_PURCHASE")
        if o.time is None:
            v.add(f"{p}.time", "is required")
        if o.revenue < 0 or o.revenue != o.revenue:
            v.add(f"{p}.revenue", "must be a non-negative number")
        elif o.type == "CLICK" and o.revenue:
            v.add(f"{p}.revenue", "clicks carry no revenue")
    v.raise_if_any()
