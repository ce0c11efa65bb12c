"""The asyncpg adapter of the decision service's repository port."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.decision.service import Decision, LogEntry, NameTaken, Point, Template, TemplateField

_POINT_COLUMNS = "p.point_id, p.name, p.description, p.type, p.template"
_DECISION_COLUMNS = (
    "d.decision_id, d.name AS decision_name, d.priority, d.rule, d.fallback, d.content, d.recommender, d.item_count"
)
_LOG_COLUMNS = (
    "personalization_id, request_id, point_id, point_name, decision_id, unified_individual_id, channel, "
    "correlation_id, anchor_id, served, stage_ms, log_time"
)


def _template_json(template: Template) -> str:
    return json.dumps({
        "fields": [{"name": f.name, "type": f.type, "required": f.required} for f in template.fields],
        "item_attributes": list(template.item_attributes),
    })


def _point(row: asyncpg.Record) -> Point:
    template = json.loads(row["template"])
    return Point(
        point_id=row["point_id"],
        name=row["name"],
        description=row["description"],
        type=row["type"],
        template=Template(
            fields=tuple(TemplateField(f["name"], f["type"], f["required"]) for f in template["fields"]),
            item_attributes=tuple(template["item_attributes"]),
        ),
    )


def _decision(row: asyncpg.Record, point_name: str) -> Decision:
    return Decision(
        decision_id=row["decision_id"],
        point_name=point_name,
        name=row["decision_name"],
        priority=row["priority"],
        rule=row["rule"],
        fallback=row["fallback"],
        content=None if row["content"] is None else json.loads(row["content"]),
        recommender=row["recommender"],
        count=row["item_count"],
    )


def _log_entry(row: asyncpg.Record) -> LogEntry:
    return LogEntry(
        personalization_id=row["personalization_id"],
        request_id=row["request_id"],
        point_id=row["point_id"],
        point_name=row["point_name"],
        decision_id=row["decision_id"],
        unified_individual_id=row["unified_individual_id"],
        channel=row["channel"],
        correlation_id=row["correlation_id"],
        anchor_id=row["anchor_id"],
        served=json.loads(row["served"]),
        stage_ms=json.loads(row["stage_ms"]),
        log_time=row["log_time"],
    )


class PostgresRepository:
    """Points, decisions and the decision log in the service's own schema; every query filters by tenant."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def upsert_point(self, tenant: str, point: Point) -> Point:
        row = await self.pool.fetchrow(
            "INSERT INTO points AS p (tenant_id, point_id, name, description, type, template) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb) "
            "ON CONFLICT (tenant_id, name) DO UPDATE SET description = EXCLUDED.description, type = EXCLUDED.type, "
            "template = EXCLUDED.template, updated_at = now() "
            f"RETURNING {_POINT_COLUMNS}",
            tenant, point.point_id, point.name, point.description, point.type, _template_json(point.template),
        )
        return _point(row)

    async def list_points(self, tenant: str, after_name: str, limit: int) -> list[Point]:
        rows = await self.pool.fetch(
            f"SELECT {_POINT_COLUMNS} FROM points p WHERE p.tenant_id = $1 AND p.name > $2 ORDER BY p.name LIMIT $3",
            tenant, after_name, limit,
        )
        return [_point(r) for r in rows]

    async def load_points(self, tenant: str, names: Sequence[str]) -> dict[str, tuple[Point, list[Decision]]]:
        rows = await self.pool.fetch(
            f"SELECT {_POINT_COLUMNS}, {_DECISION_COLUMNS} FROM points p "
            "LEFT JOIN decisions d ON d.tenant_id = p.tenant_id AND d.point_id = p.point_id "
            "WHERE p.tenant_id = $1 AND p.name = ANY($2::text[])",
            tenant, list(names),
        )
        loaded: dict[str, tuple[Point, list[Decision]]] = {}
        for row in rows:
            name = row["name"]
            if name not in loaded:
                loaded[name] = (_point(row), [])
            if row["decision_id"] is not None:
                loaded[name][1].append(_decision(row, name))
        return loaded

    async def get_decision(self, tenant: str, decision_id: str) -> Decision | None:
        row = await self.pool.fetchrow(
            f"SELECT p.name AS point_name, {_DECISION_COLUMNS} FROM decisions d "
            "JOIN points p ON p.tenant_id = d.tenant_id AND p.point_id = d.point_id "
            "WHERE d.tenant_id = $1 AND d.decision_id = $2",
            tenant, decision_id,
        )
        return None if row is None else _decision(row, row["point_name"])

    async def save_decision(self, tenant: str, point_id: str, decision: Decision) -> Decision:
        try:
            await self.pool.execute(
                "INSERT INTO decisions (tenant_id, decision_id, point_id, name, priority, rule, fallback, content, "
                "recommender, item_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10) "
                "ON CONFLICT (tenant_id, decision_id) DO UPDATE SET name = EXCLUDED.name, "
                "priority = EXCLUDED.priority, rule = EXCLUDED.rule, fallback = EXCLUDED.fallback, "
                "content = EXCLUDED.content, recommender = EXCLUDED.recommender, item_count = EXCLUDED.item_count, "
                "updated_at = now()",
                tenant, decision.decision_id, point_id, decision.name, decision.priority, decision.rule,
                decision.fallback, None if decision.content is None else json.dumps(decision.content),
                decision.recommender, decision.count,
            )
        except asyncpg.UniqueViolationError:
            raise NameTaken(decision.name) from None
        return decision

    async def list_decisions(
        self, tenant: str, point_id: str, after: tuple[int, str] | None, limit: int
    ) -> list[Decision]:
        priority, name = after if after else (2**31, "")
        rows = await self.pool.fetch(
            f"SELECT p.name AS point_name, {_DECISION_COLUMNS} FROM decisions d "
            "JOIN points p ON p.tenant_id = d.tenant_id AND p.point_id = d.point_id "
            "WHERE d.tenant_id = $1 AND d.point_id = $2 "
            "AND (d.priority < $3::bigint OR (d.priority = $3::bigint AND d.name > $4)) "
            "ORDER BY d.priority DESC, d.name LIMIT $5",
            tenant, point_id, priority, name, limit,
        )
        return [_decision(r, r["point_name"]) for r in rows]

    async def insert_log(self, tenant: str, entries: Sequence[LogEntry]) -> int:
        columns = list(zip(*[
            (e.personalization_id, e.request_id, e.point_id, e.point_name, e.decision_id, e.unified_individual_id,
             e.channel, e.correlation_id, e.anchor_id, json.dumps(e.served), json.dumps(e.stage_ms), e.log_time)
            for e in entries
        ]))
        status = await self.pool.execute(
            f"INSERT INTO decision_log (tenant_id, {_LOG_COLUMNS}) "
            "SELECT $1, u.pid, u.rid, u.ptid, u.pname, u.did, u.uid, u.ch, u.cid, u.aid, u.served::jsonb, "
            "u.stage::jsonb, u.t FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
            "$8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::timestamptz[]) "
            "AS u(pid, rid, ptid, pname, did, uid, ch, cid, aid, served, stage, t) "
            "ON CONFLICT (tenant_id, personalization_id) DO NOTHING",
            tenant, *[list(c) for c in columns],
        )
        return int(status.rsplit(" ", 1)[-1])

    async def list_log(
        self, tenant: str, individual: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[LogEntry]:
        conditions = ["tenant_id = $1"]
        args: list[object] = [tenant]
        if individual:
            args.append(individual)
            conditions.append(f"unified_individual_id = ${len(args)}")
        if after:
            args += [after[0], after[1]]
            conditions.append(f"(log_time, personalization_id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        rows = await self.pool.fetch(
            f"SELECT {_LOG_COLUMNS} FROM decision_log WHERE {' AND '.join(conditions)} "
            f"ORDER BY log_time DESC, personalization_id DESC LIMIT ${len(args)}",
            *args,
        )
        return [_log_entry(r) for r in rows]
