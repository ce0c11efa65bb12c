"""An in-memory repository with the same methods as services/decision/postgres.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from services.decision.service import Decision, LogEntry, NameTaken, Point


class FakeRepository:
    def __init__(self) -> None:
        self.points: dict[tuple[str, str], Point] = {}
        self.decisions: dict[tuple[str, str], tuple[str, Decision]] = {}  # (tenant, id) -> (point_id, decision)
        self.log: dict[tuple[str, str], LogEntry] = {}
        self.queries = 0

    async def upsert_point(self, tenant: str, point: Point) -> Point:
        self.queries += 1
        existing = self.points.get((tenant, point.name))
        stored = replace(point, point_id=existing.point_id if existing else point.point_id)
        self.points[(tenant, point.name)] = stored
        return stored

    async def list_points(self, tenant: str, after_name: str, limit: int) -> list[Point]:
        self.queries += 1
        names = sorted(n for t, n in self.points if t == tenant and n > after_name)
        return [self.points[(tenant, n)] for n in names[:limit]]

    async def load_points(self, tenant: str, names: Sequence[str]) -> dict[str, tuple[Point, list[Decision]]]:
        self.queries += 1
        loaded = {}
        for name in names:
            point = self.points.get((tenant, name))
            if point is not None:
                loaded[name] = (point, [d for (t, _), (pid, d) in self.decisions.items()
                                        if t == tenant and pid == point.point_id])
        return loaded

    async def get_decision(self, tenant: str, decision_id: str) -> Decision | None:
        self.queries += 1
        hit = self.decisions.get((tenant, decision_id))
        return hit[1] if hit else None

    async def save_decision(self, tenant: str, point_id: str, decision: Decision) -> Decision:
        self.queries += 1
        for (t, did), (pid, d) in self.decisions.items():
            if t == tenant and pid == point_id and d.name == decision.name and did != decision.decision_id:
                raise NameTaken(decision.name)
        self.decisions[(tenant, decision.decision_id)] = (point_id, decision)
        return decision

    async def list_decisions(self, tenant, point_id, after, limit) -> list[Decision]:
        self.queries += 1
        rows = sorted((d for (t, _), (pid, d) in self.decisions.items() if t == tenant and pid == point_id),
                      key=lambda d: (-d.priority, d.name))
        if after:
            rows = [d for d in rows if (-d.priority, d.name) > (-after[0], after[1])]
        return rows[:limit]

    async def insert_log(self, tenant: str, entries: Sequence[LogEntry]) -> int:
        self.queries += 1
        written = 0
        for e in entries:
            if (tenant, e.personalization_id) not in self.log:
                self.log[(tenant, e.personalization_id)] = e
                written += 1
        return written

    async def list_log(self, tenant: str, individual: str, after: tuple[datetime, str] | None, limit: int):
        self.queries += 1
        rows = sorted((e for (t, _), e in self.log.items()
                       if t == tenant and (not individual or e.unified_individual_id == individual)),
                      key=lambda e: (e.log_time, e.personalization_id), reverse=True)
        if after:
            rows = [e for e in rows if (e.log_time, e.personalization_id) < after]
        return rows[:limit]
