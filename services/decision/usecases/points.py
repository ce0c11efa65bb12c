"""Use case: personalization points (upsert, list, archive)."""

from __future__ import annotations

from dataclasses import replace

from services.decision.cache import PointCache
from services.decision.domain import Point
from services.decision.ports import Repository
from services.decision.usecases.common import new_id
from services.decision.validation import (
    point_not_found,
    raise_violation,
    validate_content,
    validate_point,
)
from shared import paging
from shared.errors import FailedPrecondition, Violations, quote


class Points:
    """Creates, lists and archives a tenant's points."""

    def __init__(self, repo: Repository, cache: PointCache):
        self.repo = repo
        self.cache = cache

    async def upsert(self, tenant: str, point: Point) -> Point:
        """Creates or replaces a point by name (restoring it if archived); its id stays the same across upserts."""
        v = Violations()
        validate_point(point, v)
        v.raise_if_any()
        existing = (await self.repo.load_points(tenant, [point.name])).get(point.name)
        live = [d for d in existing[1] if not d.archived] if existing is not None else []
        if existing is not None and live:
            old = existing[0]
            if old.type != point.type:
                raise FailedPrecondition(
                    f"point {quote(point.name)} has {len(live)} decisions of type {old.type}; "
                    "archive them before changing the point's type",
                    reason="POINT_HAS_DECISIONS",
                    metadata={"point": point.name},
                )
            broken = []
            for d in live:
                if d.content is not None:
                    check = Violations()
                    validate_content(d.content, point.template, check, "content")
                    broken += [f"decision {quote(d.name)} {f}: {m}" for f, m in check.items]
            if broken:
                raise FailedPrecondition(
                    "the new template does not fit existing decisions: " + "; ".join(broken),
                    reason="TEMPLATE_BREAKS_DECISIONS",
                    metadata={"point": point.name},
                )
        stored = await self.repo.upsert_point(tenant, replace(point, point_id=new_id("pt"), archived=False))
        self.cache.invalidate(tenant, point.name)
        return stored

    async def page(
        self, tenant: str, size: int, token: str, include_archived: bool = False
    ) -> tuple[list[Point], str]:
        """One page of points by name, and the next page token."""
        v = Violations()
        limit = paging.page_size(size, 100, 1000, v)
        after = paging.decode_token(token, "points", (str,), v)
        v.raise_if_any()
        points = await self.repo.list_points(tenant, after[0] if after else "", limit + 1, include_archived)
        more = len(points) > limit
        points = points[:limit]
        return points, paging.encode_token("points", [points[-1].name]) if more else ""

    async def archive(self, tenant: str, name: str) -> Point:
        """Archives a point: Qualify refuses it afterwards; upserting it restores it."""
        if not name:
            raise_violation("name", "must name a point")
        if (await self.repo.running_experiments(tenant, [name])).get(name):
            raise FailedPrecondition(f"point {quote(name)} has a running experiment; stop it first",
                                     reason="EXPERIMENT_RUNNING", metadata={"point": name})
        point = await self.repo.archive_point(tenant, name)
        if point is None:
            raise point_not_found(name, "name")
        self.cache.invalidate(tenant, name)
        return point
