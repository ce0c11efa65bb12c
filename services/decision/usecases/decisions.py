"""Use case: the decisions of a point (upsert, list, archive)."""

from __future__ import annotations

from dataclasses import replace

from services.decision.cache import PointCache
from services.decision.domain import Decision, NameTaken
from services.decision.ports import Repository
from services.decision.usecases.common import new_id
from services.decision.validation import (
    decision_not_found,
    point_not_found,
    raise_violation,
    validate_decision,
)
from shared import paging
from shared.errors import AlreadyExists, FailedPrecondition, NotFound, Violations, quote

DEFAULT_COUNT = 12


class Decisions:
    """Creates, lists and archives the decisions of a tenant's points."""

    def __init__(self, repo: Repository, cache: PointCache):
        self.repo = repo
        self.cache = cache

    async def upsert(self, tenant: str, decision: Decision) -> Decision:
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
        validate_decision(decision, point, v, await self.repo.get_schema(tenant))
        v.raise_if_any()
        assert point is not None
        if decision.decision_id:
            current = await self.repo.get_decision(tenant, decision.decision_id)
            if current is None or current.point_name != point.name:
                raise decision_not_found(point.name, decision.decision_id, "decision.decision_id")
            decision_id = decision.decision_id
        else:
            same_name = [d for d in siblings if d.name == decision.name]
            decision_id = same_name[0].decision_id if same_name else new_id("dec")
        count = decision.count or (DEFAULT_COUNT if point.type == "RECOMMENDATIONS" else 0)
        to_store = replace(decision, decision_id=decision_id, count=count, archived=False)
        try:
            stored = await self.repo.save_decision(tenant, point.point_id, to_store)
        except NameTaken:
            raise AlreadyExists(
                f"decision.name: point {quote(point.name)} already has a decision named {quote(decision.name)}",
                reason="DECISION_NAME_TAKEN",
                metadata={"point": point.name, "name": decision.name},
            ) from None
        self.cache.invalidate(tenant, point.name)
        return stored

    async def page(
        self, tenant: str, point_name: str, size: int, token: str, include_archived: bool = False
    ) -> tuple[list[Decision], str]:
        """One page of a point's decisions by descending priority (ties by name), and the next page token."""
        v = Violations()
        if not point_name:
            v.add("point_name", "must name a point")
        listing = f"decisions/{point_name}"
        limit = paging.page_size(size, 100, 1000, v)
        after = paging.decode_token(token, listing, (int, str), v)
        v.raise_if_any()
        loaded = (await self.repo.load_points(tenant, [point_name])).get(point_name)
        if loaded is None:
            raise point_not_found(point_name, "point_name")
        rows = await self.repo.list_decisions(tenant, loaded[0].point_id, tuple(after) if after else None, limit + 1)
        if not include_archived:
            rows = [d for d in rows if not d.archived]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, paging.encode_token(listing, [rows[-1].priority, rows[-1].name]) if more else ""

    async def archive(self, tenant: str, decision_id: str) -> Decision:
        """Archives a decision: it is no longer evaluated or forced; upserting it restores it."""
        if not decision_id:
            raise_violation("decision_id", "must name a decision")
        current = await self.repo.get_decision(tenant, decision_id)
        if current is None:
            raise NotFound(f"decision_id: decision {quote(decision_id)} does not exist", reason="DECISION_NOT_FOUND",
                           metadata={"decision_id": decision_id})
        running = next((e for e in (await self.repo.running_experiments(tenant, [current.point_name])).get(
            current.point_name, []) if any(c.decision_id == decision_id for c in e.cohorts)), None)
        if running is not None:
            raise FailedPrecondition(
                f"decision {quote(decision_id)} is served by a cohort of running experiment {quote(running.name)}",
                reason="EXPERIMENT_RUNNING", metadata={"experiment": running.name, "decision_id": decision_id})
        archived = await self.repo.archive_decision(tenant, decision_id)
        assert archived is not None
        self.cache.invalidate(tenant, current.point_name)
        return archived
