"""Use cases of the decision service: points, decisions, qualification and the decision log. No grpc, no SQL."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol

from services.decision import rules
from shared.errors import AlreadyExists, FailedPrecondition, NotFound, Violations

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
POINT_TYPES = ("MANUAL_CONTENT", "RECOMMENDATIONS")
FIELD_TYPES = ("STRING", "NUMBER", "BOOL", "STRING_LIST")
DEFAULT_COUNT = 12
MAX_COUNT = 24
MAX_POINTS_PER_QUALIFY = 50
MAX_LOG_ENTRIES = 1000
MAX_TEXT = 256
MAX_CACHED_POINTS = 100_000


@dataclass(frozen=True)
class TemplateField:
    """One typed field of a response template."""

    name: str
    type: str
    required: bool = False


@dataclass(frozen=True)
class Template:
    """The typed shape of a point's responses."""

    fields: tuple[TemplateField, ...] = ()
    item_attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Point:
    """A named slot where a channel asks for content."""

    point_id: str
    name: str
    description: str
    type: str
    template: Template


@dataclass(frozen=True)
class Decision:
    """One option on a point: a rule, a priority, and either content or a recommender call."""

    decision_id: str
    point_name: str
    name: str
    priority: int = 0
    rule: str = ""
    fallback: bool = False
    content: dict[str, Any] | None = None
    recommender: str = ""
    count: int = 0


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one rule."""

    decision_id: str
    decision_name: str
    matched: bool
    error: str = ""


@dataclass(frozen=True)
class Qualification:
    """The point, the winning decision (or None) and every rule evaluated."""

    point: Point
    decision: Decision | None
    evaluations: list[Evaluation]


@dataclass(frozen=True)
class LogEntry:
    """One personalization served."""

    personalization_id: str
    point_name: str
    request_id: str = ""
    point_id: str = ""
    decision_id: str = ""
    unified_individual_id: str = ""
    channel: str = ""
    correlation_id: str = ""
    anchor_id: str = ""
    served: dict[str, Any] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    log_time: datetime | None = None


class NameTaken(Exception):
    """Raised by a repository when another decision of the point already has the name."""


class Repository(Protocol):
    """The storage port; postgres.py is the adapter, tests use an in-memory fake."""

    async def upsert_point(self, tenant: str, point: Point) -> Point: ...
    async def list_points(self, tenant: str, after_name: str, limit: int) -> list[Point]: ...
    async def load_points(self, tenant: str, names: Sequence[str]) -> dict[str, tuple[Point, list[Decision]]]: ...
    async def get_decision(self, tenant: str, decision_id: str) -> Decision | None: ...
    async def save_decision(self, tenant: str, point_id: str, decision: Decision) -> Decision: ...
    async def list_decisions(
        self, tenant: str, point_id: str, after: tuple[int, str] | None, limit: int
    ) -> list[Decision]: ...
    async def insert_log(self, tenant: str, entries: Sequence[LogEntry]) -> int: ...
    async def list_log(
        self, tenant: str, individual: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[LogEntry]: ...


# ---------------------------------------------------------------------------------------------- validation


def validate_point(point: Point, v: Violations) -> None:
    """Adds a violation per bad field of a point (paths under `point.`)."""
    if not NAME.match(point.name):
        v.add("point.name", "must match ^[a-z][a-z0-9_]{0,63}$")
    if point.type not in POINT_TYPES:
        v.add("point.type", "must be POINT_TYPE_MANUAL_CONTENT or POINT_TYPE_RECOMMENDATIONS")
    if len(point.description) > 1024:
        v.add("point.description", "must be at most 1,024 characters")
    seen: set[str] = set()
    for i, f in enumerate(point.template.fields):
        path = f"point.template.fields[{i}]"
        if point.type == "RECOMMENDATIONS":
            v.add(path, "recommendation points carry items, not content fields; use item_attributes")
            continue
        if not NAME.match(f.name):
            v.add(f"{path}.name", "must match ^[a-z][a-z0-9_]{0,63}$")
        elif f.name in seen:
            v.add(f"{path}.name", f"duplicate field name '{f.name}'")
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
            v.add(path, f"duplicate item attribute '{attribute}'")
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


def validate_decision(decision: Decision, point: Point | None, v: Violations) -> None:
    """Adds a violation per bad field of a decision (paths under `decision.`); point None skips payload checks."""
    if not decision.name.strip():
        v.add("decision.name", "must not be empty")
    elif len(decision.name) > MAX_TEXT:
        v.add("decision.name", f"must be at most {MAX_TEXT} characters")
    try:
        rules.compile_rule(decision.rule)
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


def page_size(value: int, v: Violations, *, default: int = 100, maximum: int = 1000) -> int:
    """The page size to use: 0 means the default, values above the maximum are lowered to it."""
    if value < 0:
        v.add("page_size", "must not be negative")
    return default if value <= 0 else min(value, maximum)


def encode_token(values: list[Any]) -> str:
    """An opaque page token for a keyset position."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_token(token: str, shape: tuple[type, ...], v: Violations) -> list[Any] | None:
    """The keyset position of a page token, or None (with a violation) when it is not one of ours."""
    if not token:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if (
            isinstance(values, list)
            and len(values) == len(shape)
            and all(isinstance(x, t) and not isinstance(x, bool) for x, t in zip(values, shape))
        ):
            return values
    except (ValueError, UnicodeDecodeError):
        pass
    v.add("page_token", "is not a page token this service issued")
    return None


# ---------------------------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class CompiledPoint:
    """A point ready to qualify: rules compiled, decisions in evaluation order."""

    point: Point
    ordered: tuple[tuple[Decision, rules.CompiledRule], ...]
    fallback: Decision | None
    by_id: Mapping[str, Decision]
    needs: Mapping[str, frozenset[str] | None]


def compile_point(point: Point, decisions: Sequence[Decision]) -> CompiledPoint:
    """Orders a point's decisions (descending priority, ties by name) and compiles their rules."""
    ordered = sorted(decisions, key=lambda d: (-d.priority, d.name))
    regular = []
    for d in ordered:
        if d.fallback:
            continue
        try:
            regular.append((d, rules.compile_rule(d.rule)))
        except rules.RuleError as error:  # saved rules compiled; this one no longer does (a library upgrade)
            regular.append((d, rules.broken_rule(d.rule, str(error))))
    fallbacks = [d for d in ordered if d.fallback]
    return CompiledPoint(
        point=point,
        ordered=tuple(regular),
        fallback=fallbacks[0] if fallbacks else None,
        by_id={d.decision_id: d for d in decisions},
        needs=rules.merge_needs(rule for _, rule in regular),
    )


class PointCache:
    """Compiled points per (tenant, name), reloaded from the repository when older than ttl seconds.

    Upserts in this process invalidate at once; changes made through other replicas show within ttl.
    Unknown points are cached too, so a client asking for one cannot make every request hit the database.
    """

    def __init__(self, repo: Repository, ttl: float, clock=time.monotonic):
        self.repo = repo
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[tuple[str, str], tuple[CompiledPoint | None, float]] = {}
        self._loading: dict[tuple[str, tuple[str, ...]], asyncio.Future] = {}

    def invalidate(self, tenant: str, name: str) -> None:
        self._entries.pop((tenant, name), None)

    async def get_many(self, tenant: str, names: Sequence[str]) -> dict[str, CompiledPoint | None]:
        """The compiled points of the names (None for an unknown name), with one query for all stale ones."""
        now = self.clock()
        found: dict[str, CompiledPoint | None] = {}
        stale: list[str] = []
        for name in names:
            hit = self._entries.get((tenant, name))
            if hit is not None and now - hit[1] < self.ttl:
                found[name] = hit[0]
            elif name not in stale:
                stale.append(name)
        if stale:
            found.update(await self._load(tenant, tuple(sorted(stale))))
        return found

    async def _load(self, tenant: str, names: tuple[str, ...]) -> dict[str, CompiledPoint | None]:
        key = (tenant, names)
        pending = self._loading.get(key)
        if pending is not None:  # concurrent requests for the same stale points share one query
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            loaded = await self.repo.load_points(tenant, names)
            stamp = self.clock()
            result: dict[str, CompiledPoint | None] = {}
            if len(self._entries) > MAX_CACHED_POINTS:  # bounded, even against clients naming random points
                self._entries.clear()
            for name in names:
                entry = compile_point(*loaded[name]) if name in loaded else None
                self._entries[(tenant, name)] = (entry, stamp)
                result[name] = entry
            future.set_result(result)
            return result
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            del self._loading[key]


# ---------------------------------------------------------------------------------------------- use cases


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def point_not_found(name: str, field_path: str) -> NotFound:
    return NotFound(f"{field_path}: point '{name}' does not exist", reason="POINT_NOT_FOUND", metadata={"point": name})


class DecisionService:
    """Points, decisions, qualification and the decision log of every tenant."""

    def __init__(self, repo: Repository, *, cache_seconds: float = 2.0, clock=time.monotonic):
        self.repo = repo
        self.cache = PointCache(repo, cache_seconds, clock)

    async def upsert_point(self, tenant: str, point: Point) -> Point:
        """Creates or replaces a point by name; its id stays the same across upserts."""
        v = Violations()
        validate_point(point, v)
        v.raise_if_any()
        existing = (await self.repo.load_points(tenant, [point.name])).get(point.name)
        if existing is not None and existing[1]:
            old, decisions = existing
            if old.type != point.type:
                raise FailedPrecondition(
                    f"point '{point.name}' has {len(decisions)} decisions of type {old.type}; "
                    "delete them before changing the point's type",
                    reason="POINT_HAS_DECISIONS",
                    metadata={"point": point.name},
                )
            broken = []
            for d in decisions:
                if d.content is not None:
                    check = Violations()
                    validate_content(d.content, point.template, check, "content")
                    broken += [f"decision '{d.name}' {f}: {m}" for f, m in check.items]
            if broken:
                raise FailedPrecondition(
                    "the new template does not fit existing decisions: " + "; ".join(broken),
                    reason="TEMPLATE_BREAKS_DECISIONS",
                    metadata={"point": point.name},
                )
        stored = await self.repo.upsert_point(tenant, replace(point, point_id=_new_id("pt")))
        self.cache.invalidate(tenant, point.name)
        return stored

    async def list_points(self, tenant: str, size: int, token: str) -> tuple[list[Point], str]:
        """One page of points by name, and the next page token."""
        v = Violations()
        limit = page_size(size, v)
        after = decode_token(token, (str,), v)
        v.raise_if_any()
        points = await self.repo.list_points(tenant, after[0] if after else "", limit + 1)
        more = len(points) > limit
        points = points[:limit]
        return points, encode_token([points[-1].name]) if more else ""

    async def upsert_decision(self, tenant: str, decision: Decision) -> Decision:
        """Creates or replaces a decision (by id, or by name on its point) after checking it fully."""
        v = Violations()
        point = None
        if not decision.point_name:
            v.add("decision.point_name", "must name a point")
        else:
            loaded = (await self.repo.load_points(tenant, [decision.point_name])).get(decision.point_name)
            if loaded is None:
                raise point_not_found(decision.point_name, "decision.point_name")
            point, siblings = loaded
        validate_decision(decision, point, v)
        v.raise_if_any()
        assert point is not None
        if decision.decision_id:
            current = await self.repo.get_decision(tenant, decision.decision_id)
            if current is None or current.point_name != point.name:
                raise NotFound(
                    f"decision.decision_id: decision '{decision.decision_id}' does not exist on point '{point.name}'",
                    reason="DECISION_NOT_FOUND",
                    metadata={"point": point.name, "decision_id": decision.decision_id},
                )
            decision_id = decision.decision_id
        else:
            same_name = [d for d in siblings if d.name == decision.name]
            decision_id = same_name[0].decision_id if same_name else _new_id("dec")
        count = decision.count or (DEFAULT_COUNT if point.type == "RECOMMENDATIONS" else 0)
        to_store = replace(decision, decision_id=decision_id, count=count)
        try:
            stored = await self.repo.save_decision(tenant, point.point_id, to_store)
        except NameTaken:
            raise AlreadyExists(
                f"decision.name: point '{point.name}' already has a decision named '{decision.name}'",
                reason="DECISION_NAME_TAKEN",
                metadata={"point": point.name, "name": decision.name},
            ) from None
        self.cache.invalidate(tenant, point.name)
        return stored

    async def list_decisions(self, tenant: str, point_name: str, size: int, token: str) -> tuple[list[Decision], str]:
        """One page of a point's decisions by descending priority (ties by name), and the next page token."""
        v = Violations()
        if not point_name:
            v.add("point_name", "must name a point")
        limit = page_size(size, v)
        after = decode_token(token, (int, str), v)
        v.raise_if_any()
        loaded = (await self.repo.load_points(tenant, [point_name])).get(point_name)
        if loaded is None:
            raise point_not_found(point_name, "point_name")
        rows = await self.repo.list_decisions(tenant, loaded[0].point_id, tuple(after) if after else None, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_token([rows[-1].priority, rows[-1].name]) if more else ""

    async def qualify(
        self,
        tenant: str,
        selections: Sequence[tuple[str, str]],
        profile: Mapping[str, Any],
        context: Mapping[str, Any],
    ) -> list[Qualification]:
        """For each (point name, forced decision id or ""), the winning decision and the rules evaluated."""
        v = Violations()
        if not selections:
            v.add("points", "must name at least one point")
        elif len(selections) > MAX_POINTS_PER_QUALIFY:
            v.add("points", f"must name at most {MAX_POINTS_PER_QUALIFY} points")
        for i, (name, _) in enumerate(selections):
            if not name:
                v.add(f"points[{i}].name", "must name a point")
        v.raise_if_any()
        compiled = await self.cache.get_many(tenant, [name for name, _ in selections])
        entries: list[CompiledPoint] = []
        for i, (name, forced) in enumerate(selections):
            entry = compiled[name]
            if entry is None:
                raise point_not_found(name, f"points[{i}].name")
            if forced and forced not in entry.by_id:
                raise NotFound(
                    f"points[{i}].decision_id: decision '{forced}' does not exist on point '{name}'",
                    reason="DECISION_NOT_FOUND",
                    metadata={"point": name, "decision_id": forced},
                )
            entries.append(entry)
        needs = rules.merge_needs(
            rule for entry, (_, forced) in zip(entries, selections) if not forced for _, rule in entry.ordered
        )
        ctx = rules.activation(needs, {"profile": profile, "context": context})
        results = []
        for entry, (_, forced) in zip(entries, selections):
            if forced:
                results.append(Qualification(entry.point, entry.by_id[forced], []))
                continue
            winner = None
            evaluations = []
            for decision, rule in entry.ordered:
                matched, error = rules.evaluate(rule, ctx)
                evaluations.append(Evaluation(decision.decision_id, decision.name, matched, error))
                if matched:
                    winner = decision
                    break
            results.append(Qualification(entry.point, winner or entry.fallback, evaluations))
        return results

    async def log_decisions(self, tenant: str, entries: Sequence[LogEntry]) -> int:
        """Appends log rows in one round trip; a re-sent personalization id is written once."""
        v = Violations()
        if len(entries) > MAX_LOG_ENTRIES:
            v.add("entries", f"must hold at most {MAX_LOG_ENTRIES} rows")
        for i, e in enumerate(entries):
            if not e.personalization_id:
                v.add(f"entries[{i}].personalization_id", "must not be empty")
            elif len(e.personalization_id) > MAX_TEXT:
                v.add(f"entries[{i}].personalization_id", f"must be at most {MAX_TEXT} characters")
            if not e.point_name:
                v.add(f"entries[{i}].point_name", "must name the point served")
        v.raise_if_any()
        if not entries:
            return 0
        now = datetime.now(timezone.utc)
        return await self.repo.insert_log(tenant, [e if e.log_time else replace(e, log_time=now) for e in entries])

    async def list_log(self, tenant: str, individual: str, size: int, token: str) -> tuple[list[LogEntry], str]:
        """One page of log rows, newest first, optionally of one individual, and the next page token."""
        v = Violations()
        limit = page_size(size, v)
        after = decode_token(token, (str, str), v)
        position = None
        if after:
            try:
                position = (datetime.fromisoformat(after[0]), after[1])
            except ValueError:
                v.add("page_token", "is not a page token this service issued")
        v.raise_if_any()
        rows = await self.repo.list_log(tenant, individual, position, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows else None
        token_out = encode_token([last.log_time.isoformat(), last.personalization_id]) if more and last else ""
        return rows, token_out

