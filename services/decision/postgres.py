"""The asyncpg adapter of the decision service's repository port."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from itertools import repeat

import asyncpg
import orjson

from services.decision import bandit
from services.decision.bandit import ArmStats, BanditConfig
from services.decision.domain import (
    AlreadyRunning,
    Decision,
    Holdout,
    LayerTaken,
    LogEntry,
    LogGroup,
    LogStats,
    NameTaken,
    Point,
    Template,
    TemplateField,
)
from services.decision.experiments import Cohort, Experiment, Exposure, Outcome
from services.decision.schema import ProfileSchema

_POINT_COLUMNS = ("p.point_id, p.name, p.description, p.type, p.template, p.archived, p.consent_purpose, "
                  "p.requires_authentication, p.bandit")
_DECISION_COLUMNS = (
    "d.decision_id, d.name AS decision_name, d.priority, d.rule, d.fallback, d.content, d.recommender, d.item_count, "
    "d.archived AS decision_archived, d.consent_purpose AS decision_consent_purpose"
)
_LOG_COLUMNS = (
    "personalization_id, request_id, point_id, point_name, decision_id, unified_individual_id, channel, "
    "correlation_id, anchor_id, served, stage_ms, log_time, experiment_id, cohort_id, exposure_conflict, batch_job_id, "
    "holdout"
)
_EXPERIMENT_COLUMNS = ("experiment_id, name, point_name, state, config, winner_cohort_id, start_time, stop_time, "
                       "layer, layer_start, layer_end")
# Alias changes of one tenant, one at a time (merges are rare next to decisions; reads take no lock).
_ALIAS_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('decision/aliases/' || $1, 0))"
_EXPOSURE_COLUMNS = (
    "personalization_id, unified_individual_id, log_time, point_name, decision_id, experiment_id, cohort_id, "
    "item_ids, exposure_conflict"
)
_OUTCOME_COLUMNS = "outcome_id, unified_individual_id, type, time, item_ids, revenue, personalization_id"


def _template_json(template: Template) -> str:
    return json.dumps({
        "fields": [{"name": f.name, "type": f.type, "required": f.required} for f in template.fields],
        "item_attributes": list(template.item_attributes),
    })


def _bandit_json(config: BanditConfig | None) -> str | None:
    if config is None:
        return None
    return json.dumps({"reward": config.reward, "min_offer_share": config.min_offer_share,
                       "holdout_share": config.holdout_share, "segments": list(config.segments),
                       "window_s": config.attribution_window.total_seconds()})


def _bandit(raw: str | None) -> BanditConfig | None:
    if raw is None:
        return None
    c = json.loads(raw)
    return BanditConfig(reward=c["reward"], min_offer_share=c["min_offer_share"], holdout_share=c["holdout_share"],
                        segments=tuple(c["segments"]), attribution_window=timedelta(seconds=c["window_s"]))


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
        archived=row["archived"],
        consent_purpose=row["consent_purpose"],
        requires_authentication=row["requires_authentication"],
        bandit=_bandit(row["bandit"]),
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
        archived=row["decision_archived"],
        consent_purpose=row["decision_consent_purpose"],
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
        experiment_id=row["experiment_id"],
        cohort_id=row["cohort_id"],
        exposure_conflict=row["exposure_conflict"],
        batch_job_id=row["batch_job_id"],
        served_item_ids=tuple(row.get("item_ids") or ()),
        bandit_trial=row.get("bandit_segment") is not None,
        bandit_segment=row.get("bandit_segment") or "",
        holdout=row["holdout"],
    )


def _experiment_config(e: Experiment) -> str:
    return json.dumps({
        "cohorts": [asdict(c) for c in e.cohorts],
        "targeting_rule": e.targeting_rule,
        "primary_metric": e.primary_metric,
        "secondary_metrics": list(e.secondary_metrics),
        "min_participants": e.min_participants,
        "min_duration_s": e.min_duration.total_seconds(),
        "max_duration_s": e.max_duration.total_seconds(),
        "chance_to_win_threshold": e.chance_to_win_threshold,
        "winner_selection": e.winner_selection,
        "seed": e.seed,
        "attribution_window_s": e.attribution_window.total_seconds(),
        "hash_version": e.hash_version,
    })


def _experiment(row) -> Experiment:
    c = json.loads(row["config"])
    return Experiment(
        experiment_id=row["experiment_id"], name=row["name"], point_name=row["point_name"],
        cohorts=tuple(Cohort(**x) for x in c["cohorts"]), state=row["state"], targeting_rule=c["targeting_rule"],
        primary_metric=c["primary_metric"], secondary_metrics=tuple(c["secondary_metrics"]),
        min_participants=c["min_participants"], min_duration=timedelta(seconds=c["min_duration_s"]),
        max_duration=timedelta(seconds=c["max_duration_s"]), chance_to_win_threshold=c["chance_to_win_threshold"],
        winner_selection=c["winner_selection"], seed=c["seed"],
        attribution_window=timedelta(seconds=c["attribution_window_s"]), winner_cohort_id=row["winner_cohort_id"],
        start_time=row["start_time"], stop_time=row["stop_time"], hash_version=c.get("hash_version", 2),
        layer=row["layer"], layer_start_bps=row["layer_start"], layer_end_bps=row["layer_end"],
    )


def _exposure(row: asyncpg.Record) -> Exposure:
    return Exposure(
        personalization_id=row["personalization_id"], unified_individual_id=row["unified_individual_id"],
        log_time=row["log_time"], point_name=row["point_name"], decision_id=row["decision_id"],
        experiment_id=row["experiment_id"], cohort_id=row["cohort_id"], item_ids=tuple(row["item_ids"]),
        exposure_conflict=row["exposure_conflict"],
    )


def _outcome(row: asyncpg.Record) -> Outcome:
    return Outcome(
        outcome_id=row["outcome_id"], unified_individual_id=row["unified_individual_id"], type=row["type"],
        time=row["time"], item_ids=tuple(row["item_ids"]), revenue=row["revenue"],
        personalization_id=row["personalization_id"],
    )


def _json(value) -> str:
    """JSON text of a log row's value: orjson, about ten times faster than json.dumps (rows are validated finite)."""
    return orjson.dumps(value).decode()


def _text_array(values: Sequence[str]) -> str:
    """A text[] literal of values: PostgreSQL reads it about twice as fast as a JSON array it then unpacks."""
    if not values:
        return "{}"
    joined = '","'.join(values)
    if "\\" in joined or joined.count('"') != 2 * (len(values) - 1):  # a value holds a quote or a backslash
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return '{"' + joined + '"}'


def _shared_columns(e: LogEntry) -> tuple:
    """A log row's values other than its personalization id, individual and items, in the insert's order."""
    return (e.request_id, e.point_id, e.point_name, e.decision_id, e.channel, e.correlation_id, e.anchor_id,
            _json(e.served), _json(e.stage_ms), e.log_time, e.experiment_id, e.cohort_id, e.batch_job_id, e.holdout,
            e.bandit_segment if e.bandit_trial and e.decision_id else None)


class PostgresRepository:
    """Points, decisions and the decision log in the service's own schema; every query filters by tenant."""

    def __init__(self, pool: asyncpg.Pool, log_pool: asyncpg.Pool | None = None):
        self.pool = pool
        self.log_pool = log_pool or pool  # writes of the decision log and outcomes (see server.py)

    async def upsert_point(self, tenant: str, point: Point) -> Point:
        row = await self.pool.fetchrow(
            "INSERT INTO points AS p (tenant_id, point_id, name, description, type, template, consent_purpose, "
            "requires_authentication, bandit) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::jsonb) "
            "ON CONFLICT (tenant_id, name) DO UPDATE SET description = EXCLUDED.description, type = EXCLUDED.type, "
            "template = EXCLUDED.template, consent_purpose = EXCLUDED.consent_purpose, "
            "requires_authentication = EXCLUDED.requires_authentication, bandit = EXCLUDED.bandit, archived = false, "
            f"updated_at = now() RETURNING {_POINT_COLUMNS}",
            tenant, point.point_id, point.name, point.description, point.type, _template_json(point.template),
            point.consent_purpose, point.requires_authentication, _bandit_json(point.bandit),
        )
        return _point(row)

    async def list_points(self, tenant: str, after_name: str, limit: int, archived: bool = False) -> list[Point]:
        rows = await self.pool.fetch(
            f"SELECT {_POINT_COLUMNS} FROM points p WHERE p.tenant_id = $1 AND p.name > $2 "
            "AND (NOT p.archived OR $4) ORDER BY p.name LIMIT $3",
            tenant, after_name, limit, archived,
        )
        return [_point(r) for r in rows]

    async def archive_point(self, tenant: str, name: str) -> Point | None:
        row = await self.pool.fetchrow(
            "UPDATE points AS p SET archived = true, updated_at = now() WHERE p.tenant_id = $1 AND p.name = $2 "
            f"RETURNING {_POINT_COLUMNS}", tenant, name)
        return None if row is None else _point(row)

    async def archive_decision(self, tenant: str, decision_id: str) -> Decision | None:
        await self.pool.execute(
            "UPDATE decisions SET archived = true, updated_at = now() WHERE tenant_id = $1 AND decision_id = $2",
            tenant, decision_id)
        return await self.get_decision(tenant, decision_id)

    async def get_schema(self, tenant: str) -> ProfileSchema | None:
        raw = await self.pool.fetchval("SELECT schema FROM profile_schemas WHERE tenant_id = $1", tenant)
        if raw is None:
            return None
        data = json.loads(raw)
        return ProfileSchema(
            attributes=tuple(map(tuple, data["attributes"])), insights=tuple(data["insights"]),
            segments=tuple(data["segments"]), affinities=tuple(data["affinities"]), consents=tuple(data["consents"]),
            context_attributes=tuple(map(tuple, data["context_attributes"])),
        )

    async def save_schema(self, tenant: str, schema: ProfileSchema) -> None:
        await self.pool.execute(
            "INSERT INTO profile_schemas (tenant_id, schema) VALUES ($1, $2::jsonb) "
            "ON CONFLICT (tenant_id) DO UPDATE SET schema = EXCLUDED.schema, updated_at = now()",
            tenant, json.dumps(asdict(schema)))

    async def all_rules(self, tenant: str) -> list[tuple[str, str]]:
        rows = await self.pool.fetch(
            "SELECT 'decision ' || decision_id AS label, rule FROM decisions "
            "WHERE tenant_id = $1 AND NOT archived AND NOT fallback AND rule <> '' "
            "UNION ALL SELECT 'experiment ' || name, config->>'targeting_rule' FROM experiments "
            "WHERE tenant_id = $1 AND state <> 'ARCHIVED' AND config->>'targeting_rule' <> ''", tenant)
        return [(r["label"], r["rule"]) for r in rows]

    async def get_experiment(self, tenant: str, name: str) -> Experiment | None:
        row = await self.pool.fetchrow(
            f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE tenant_id = $1 AND name = $2", tenant, name)
        return None if row is None else _experiment(row)

    async def save_experiment(self, tenant: str, e: Experiment) -> Experiment:
        row = await self.pool.fetchrow(
            "INSERT INTO experiments (tenant_id, experiment_id, name, point_name, state, config, layer, layer_start, "
            "layer_end) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9) ON CONFLICT (tenant_id, experiment_id) "
            "DO UPDATE SET point_name = EXCLUDED.point_name, config = EXCLUDED.config, layer = EXCLUDED.layer, "
            "layer_start = EXCLUDED.layer_start, layer_end = EXCLUDED.layer_end, updated_at = now() "
            f"RETURNING {_EXPERIMENT_COLUMNS}",
            tenant, e.experiment_id, e.name, e.point_name, e.state, _experiment_config(e), e.layer,
            e.layer_start_bps, e.layer_end_bps)
        return _experiment(row)

    async def list_experiments(
        self, tenant: str, point_name: str, after_name: str, limit: int, archived: bool
    ) -> list[Experiment]:
        rows = await self.pool.fetch(
            f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE tenant_id = $1 AND name > $2 "
            "AND ($3 = '' OR point_name = $3) AND (state <> 'ARCHIVED' OR $4) ORDER BY name LIMIT $5",
            tenant, after_name, point_name, archived, limit)
        return [_experiment(r) for r in rows]

    async def set_experiment_state(self, tenant: str, e: Experiment) -> Experiment:
        async with self.pool.acquire() as conn, conn.transaction():
            if e.state == "RUNNING" and e.layer:
                # Starts in one layer are serialized, so two overlapping slices can never both be running.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                                   f"tailor-decision-layer/{tenant}/{e.layer}")
                other = await conn.fetchval(
                    "SELECT name FROM experiments WHERE tenant_id = $1 AND layer = $2 AND state = 'RUNNING' "
                    "AND experiment_id <> $3 AND layer_start < $5 AND $4 < layer_end ORDER BY name LIMIT 1",
                    tenant, e.layer, e.experiment_id, e.layer_start_bps, e.layer_end_bps)
                if other is not None:
                    raise LayerTaken(other)
            try:
                row = await conn.fetchrow(
                    "UPDATE experiments SET state = $3, winner_cohort_id = $4, start_time = $5, stop_time = $6, "
                    f"updated_at = now() WHERE tenant_id = $1 AND experiment_id = $2 RETURNING {_EXPERIMENT_COLUMNS}",
                    tenant, e.experiment_id, e.state, e.winner_cohort_id, e.start_time, e.stop_time)
            except asyncpg.UniqueViolationError:
                raise AlreadyRunning(e.point_name) from None
        return _experiment(row)

    async def running_experiments(
        self, tenant: str, point_names: Sequence[str] | None
    ) -> dict[str, list[Experiment]]:
        rows = await self.pool.fetch(
            f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE tenant_id = $1 AND state = 'RUNNING' "
            "AND ($2::text[] IS NULL OR point_name = ANY($2::text[])) ORDER BY point_name, layer, name",
            tenant, None if point_names is None else list(point_names))
        running: dict[str, list[Experiment]] = {}
        for r in rows:
            running.setdefault(r["point_name"], []).append(_experiment(r))
        return running

    async def merge(self, tenant: str, from_ids: Sequence[str], to_id: str
                    ) -> tuple[list[tuple[str, str, str]], str]:
        """Records from_ids as aliases of to_id (and what had merged into them); returns the exposures of the merged
        group and the survivor. One alias change of a tenant at a time, so aliases always name a survivor: a merge
        applied late (the pipeline's workers and its merge sweeper apply merges in any order) onto an id merged away
        since goes on to that id's survivor."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_ALIAS_LOCK, tenant)
            to_id = await conn.fetchval(
                "SELECT survivor_id FROM individual_aliases WHERE tenant_id = $1 AND alias_id = $2", tenant, to_id
            ) or to_id
            from_ids = [f for f in from_ids if f != to_id]
            if not from_ids:
                return [], to_id
            await conn.execute(
                "UPDATE individual_aliases SET survivor_id = $2 WHERE tenant_id = $1 AND survivor_id = ANY($3::text[])",
                tenant, to_id, list(from_ids))
            await conn.execute(
                "INSERT INTO individual_aliases (tenant_id, alias_id, survivor_id) "
                "SELECT $1, a, $2 FROM unnest($3::text[]) AS a "
                "ON CONFLICT (tenant_id, alias_id) DO UPDATE SET survivor_id = EXCLUDED.survivor_id, merged_at = now()",
                tenant, to_id, list(from_ids))
            await conn.execute(
                "INSERT INTO experiment_conflicts (tenant_id, experiment_id, unified_individual_id) "
                "SELECT tenant_id, experiment_id, $2 FROM experiment_conflicts "
                "WHERE tenant_id = $1 AND unified_individual_id = ANY($3::text[]) ON CONFLICT DO NOTHING",
                tenant, to_id, list(from_ids))
            rows = await conn.fetch(
                "SELECT DISTINCT experiment_id, unified_individual_id, cohort_id FROM decision_log "
                "WHERE tenant_id = $1 AND experiment_id <> '' AND cohort_id <> '' AND (unified_individual_id = $2 "
                "OR unified_individual_id IN (SELECT alias_id FROM individual_aliases "
                "WHERE tenant_id = $1 AND survivor_id = $2))",
                tenant, to_id)
        return [(r["experiment_id"], r["unified_individual_id"], r["cohort_id"]) for r in rows], to_id

    async def unmerge(self, tenant: str, restored_id: str) -> None:
        """restored_id is its own individual again (whichever survivor it had merged into)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_ALIAS_LOCK, tenant)
            await conn.execute("DELETE FROM individual_aliases WHERE tenant_id = $1 AND alias_id = $2",
                               tenant, restored_id)

    async def add_conflicts(self, tenant: str, pairs: Sequence[tuple[str, str]]) -> None:
        await self.pool.execute(
            "INSERT INTO experiment_conflicts (tenant_id, experiment_id, unified_individual_id) "
            "SELECT $1, e, u FROM unnest($2::text[], $3::text[]) AS x(e, u) ON CONFLICT DO NOTHING",
            tenant, [p[0] for p in pairs], [p[1] for p in pairs])

    async def experiments_by_id(self, tenant: str, ids: Sequence[str]) -> list[Experiment]:
        rows = await self.pool.fetch(
            f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE tenant_id = $1 AND experiment_id = ANY($2::text[])",
            tenant, list(ids))
        return [_experiment(r) for r in rows]

    async def experiment_exposures(self, tenant: str, experiment_id: str) -> list[Exposure]:
        rows = await self.pool.fetch(
            f"SELECT {_EXPOSURE_COLUMNS} FROM decision_log WHERE tenant_id = $1 AND experiment_id = $2 "
            "AND cohort_id <> ''", tenant, experiment_id)
        return [_exposure(r) for r in rows]

    async def conflicts(self, tenant: str, experiment_id: str) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT unified_individual_id FROM experiment_conflicts WHERE tenant_id = $1 AND experiment_id = $2",
            tenant, experiment_id)
        return {r[0] for r in rows}

    async def survivors(self, tenant: str, ids: Sequence[str]) -> dict[str, str]:
        rows = await self.pool.fetch(
            "SELECT alias_id, survivor_id FROM individual_aliases WHERE tenant_id = $1 "
            "AND (alias_id = ANY($2::text[]) OR survivor_id = ANY($2::text[]))", tenant, list(ids))
        return {r["alias_id"]: r["survivor_id"] for r in rows}

    async def insert_outcomes(self, tenant: str, outcomes: Sequence[Outcome]) -> int:
        # The new outcomes and the bandit credit they bring are written in one transaction, so an outcome stored is
        # credited exactly once (a re-sent one is neither stored nor credited again).
        async with self.log_pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "INSERT INTO outcomes (tenant_id, outcome_id, unified_individual_id, type, time, item_ids, revenue, "
                "personalization_id) SELECT $1, u.oid, u.uid, u.typ, u.t, "
                "COALESCE((SELECT array_agg(x) FROM jsonb_array_elements_text(u.items::jsonb) AS x), '{}'), u.rev, "
                "u.pid FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::float8[], "
                "$8::text[]) AS u(oid, uid, typ, t, items, rev, pid) ON CONFLICT (tenant_id, outcome_id) DO NOTHING "
                "RETURNING unified_individual_id, type, time, revenue, personalization_id",
                tenant, [o.outcome_id for o in outcomes], [o.unified_individual_id for o in outcomes],
                [o.type for o in outcomes], [o.time for o in outcomes],
                [json.dumps(list(o.item_ids)) for o in outcomes], [o.revenue for o in outcomes],
                [o.personalization_id for o in outcomes])
            if rows:
                await self._credit_bandits(conn, tenant, [bandit.NewOutcome(
                    r["unified_individual_id"], r["type"], r["time"], r["revenue"], r["personalization_id"])
                    for r in rows])
        return len(rows)

    async def _credit_bandits(self, conn, tenant: str, outcomes: list[bandit.NewOutcome]) -> None:
        """Credits the bandit trials the new outcomes reward: per trial once for its first click and purchase, and
        its revenue; each offer's counters grow by the same amounts, in place."""
        ids = sorted({o.unified_individual_id for o in outcomes})
        # Every alias of the outcomes' survivors: an outcome recorded for an individual merged away since (the
        # pipeline identified it before the merge) rewards the survivor's trials and those of its other aliases.
        aliases = await conn.fetch(
            "SELECT alias_id, survivor_id FROM individual_aliases WHERE tenant_id = $1 AND survivor_id IN ("
            "SELECT coalesce(a.survivor_id, u.id) FROM unnest($2::text[]) AS u(id) LEFT JOIN individual_aliases AS a "
            "ON a.tenant_id = $1 AND a.alias_id = u.id)", tenant, ids)
        survivors = {r["alias_id"]: r["survivor_id"] for r in aliases}
        ids = sorted({*ids, *survivors, *survivors.values()})
        times = [o.time for o in outcomes]
        served = await conn.fetch(
            "SELECT l.personalization_id, l.unified_individual_id, l.point_name, l.log_time, "
            "COALESCE((p.bandit->>'window_s')::float8, 0) AS window_s FROM decision_log l "
            "LEFT JOIN points p ON p.tenant_id = l.tenant_id AND p.name = l.point_name "
            "WHERE l.tenant_id = $1 AND l.bandit_segment IS NOT NULL AND (l.personalization_id = ANY($2::text[]) "
            "OR (l.unified_individual_id = ANY($3::text[]) AND l.log_time >= $4 AND l.log_time <= $5))",
            tenant, [o.personalization_id for o in outcomes if o.personalization_id], ids,
            min(times) - bandit.MAX_WINDOW, max(times))
        credits = bandit.plan_credits(outcomes, [
            bandit.Served(r["personalization_id"], r["unified_individual_id"], r["point_name"], r["log_time"],
                          timedelta(seconds=r["window_s"]) or bandit.DEFAULT_WINDOW) for r in served], survivors)
        if not credits:
            return
        pids = sorted(credits)
        # A trial's first click (and first purchase) is told by its counter having been 0 before this statement's
        # increment; the increment is re-applied to the latest row version under concurrency, so that holds.
        await conn.execute(
            "WITH c AS (SELECT * FROM unnest($2::text[], $3::int[], $4::int[], $5::float8[]) AS c(pid, clicks, conv, "
            "rev)), upd AS (UPDATE decision_log d SET bandit_clicks = d.bandit_clicks + c.clicks, "
            "bandit_conversions = d.bandit_conversions + c.conv, bandit_revenue = d.bandit_revenue + c.rev FROM c "
            "WHERE d.tenant_id = $1 AND d.personalization_id = c.pid AND d.bandit_segment IS NOT NULL "
            "RETURNING d.point_name, d.bandit_segment, d.decision_id, "
            "(d.bandit_clicks = c.clicks AND c.clicks > 0)::int AS first_click, "
            "(d.bandit_conversions = c.conv AND c.conv > 0)::int AS first_conversion, c.rev, "
            "d.bandit_revenue * d.bandit_revenue - (d.bandit_revenue - c.rev) * (d.bandit_revenue - c.rev) AS sq) "
            "INSERT INTO bandit_arms AS a (tenant_id, point_name, segment, decision_id, clicks, conversions, revenue, "
            "revenue_sq) SELECT $1, point_name, bandit_segment, decision_id, sum(first_click), sum(first_conversion), "
            "sum(rev), sum(sq) FROM upd GROUP BY point_name, bandit_segment, decision_id "
            "ORDER BY point_name, bandit_segment, decision_id "
            "ON CONFLICT (tenant_id, point_name, segment, decision_id) DO UPDATE SET clicks = a.clicks + EXCLUDED.clicks, "
            "conversions = a.conversions + EXCLUDED.conversions, revenue = a.revenue + EXCLUDED.revenue, "
            "revenue_sq = a.revenue_sq + EXCLUDED.revenue_sq, updated_at = now()",
            tenant, pids, [credits[p].clicks for p in pids], [credits[p].conversions for p in pids],
            [credits[p].revenue for p in pids])

    async def arm_stats(self, tenant: str, point_names: Sequence[str]) -> dict[str, dict[tuple[str, str], ArmStats]]:
        rows = await self.pool.fetch(
            "SELECT point_name, segment, decision_id, trials, clicks, conversions, revenue, revenue_sq "
            "FROM bandit_arms WHERE tenant_id = $1 AND point_name = ANY($2::text[])", tenant, list(point_names))
        stats: dict[str, dict[tuple[str, str], ArmStats]] = {name: {} for name in point_names}
        for r in rows:
            stats[r["point_name"]][(r["segment"], r["decision_id"])] = ArmStats(
                r["trials"], r["clicks"], r["conversions"], r["revenue"], r["revenue_sq"])
        return stats

    async def outcomes_of(self, tenant: str, ids: Sequence[str], since: datetime) -> list[Outcome]:
        rows = await self.pool.fetch(
            f"SELECT {_OUTCOME_COLUMNS} FROM outcomes WHERE tenant_id = $1 AND unified_individual_id = ANY($2::text[]) "
            "AND time >= $3", tenant, list(ids), since)
        return [_outcome(r) for r in rows]

    async def outcomes_between(self, tenant: str, start: datetime, end: datetime) -> list[Outcome]:
        rows = await self.pool.fetch(
            f"SELECT {_OUTCOME_COLUMNS} FROM outcomes WHERE tenant_id = $1 AND time >= $2 AND time < $3",
            tenant, start, end)
        return [_outcome(r) for r in rows]

    async def exposures_of(
        self, tenant: str, ids: Sequence[str], start: datetime, end: datetime, point_name: str
    ) -> list[Exposure]:
        rows = await self.pool.fetch(
            f"SELECT {_EXPOSURE_COLUMNS} FROM decision_log WHERE tenant_id = $1 "
            "AND unified_individual_id = ANY($2::text[]) AND log_time >= $3 AND log_time < $4 "
            "AND ($5 = '' OR point_name = $5)", tenant, list(ids), start, end, point_name)
        return [_exposure(r) for r in rows]

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

    async def load_points_with_experiments(
        self, tenant: str, names: Sequence[str]
    ) -> dict[str, tuple[Point, list[Decision], list[Experiment]]]:
        # One round trip: the running experiments ride along as a json column (repeated per decision row).
        rows = await self.pool.fetch(
            f"SELECT {_POINT_COLUMNS}, {_DECISION_COLUMNS}, (SELECT json_agg(x) FROM (SELECT "
            f"{_EXPERIMENT_COLUMNS} FROM experiments e WHERE e.tenant_id = p.tenant_id AND e.point_name = p.name "
            "AND e.state = 'RUNNING') x) AS running FROM points p "
            "LEFT JOIN decisions d ON d.tenant_id = p.tenant_id AND d.point_id = p.point_id "
            "WHERE p.tenant_id = $1 AND p.name = ANY($2::text[])",
            tenant, list(names),
        )
        loaded: dict[str, tuple[Point, list[Decision], list[Experiment]]] = {}
        for row in rows:
            name = row["name"]
            if name not in loaded:
                running = []
                for raw in json.loads(row["running"]) if row["running"] is not None else ():
                    raw["config"] = json.dumps(raw["config"])
                    for key in ("start_time", "stop_time"):
                        raw[key] = datetime.fromisoformat(raw[key]) if raw[key] else None
                    running.append(_experiment(raw))
                loaded[name] = (_point(row), [], running)
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
                "recommender, item_count, consent_purpose) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, "
                "$11) ON CONFLICT (tenant_id, decision_id) DO UPDATE SET name = EXCLUDED.name, "
                "priority = EXCLUDED.priority, rule = EXCLUDED.rule, fallback = EXCLUDED.fallback, "
                "content = EXCLUDED.content, recommender = EXCLUDED.recommender, item_count = EXCLUDED.item_count, "
                "consent_purpose = EXCLUDED.consent_purpose, updated_at = now()",
                tenant, decision.decision_id, point_id, decision.name, decision.priority, decision.rule,
                decision.fallback, None if decision.content is None else json.dumps(decision.content),
                decision.recommender, decision.count, decision.consent_purpose,
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

    async def insert_log(self, tenant: str, entries: Sequence[LogEntry], groups: Sequence[LogGroup] = ()) -> int:
        # Per row what sets it apart and the position of its shared fields (an entry's own, or its group's), which
        # are sent once: asyncpg encodes an array of 500 equal values about as slowly as one of 500 distinct ones.
        personalization_ids = [e.personalization_id for e in entries]
        individuals = [e.unified_individual_id for e in entries]
        items = [_text_array(e.item_ids) for e in entries]
        positions = list(range(1, len(entries) + 1))
        for n, g in enumerate(groups, start=len(entries) + 1):
            personalization_ids.extend(g.personalization_ids)
            individuals.extend(g.unified_individual_ids)
            items.extend(map(_text_array, g.item_ids))
            positions.extend(repeat(n, len(g)))
        shared = [list(c) for c in zip(*map(_shared_columns, [*entries, *(g.shared for g in groups)]))]
        # The conflict flag is decided here, in the same statement, so Qualify never has to look it up. Each new row
        # the bandit chose adds a trial to its offer's counters in the same statement (in place, in key order).
        return await self.log_pool.fetchval(
            f"WITH ins AS (INSERT INTO decision_log (tenant_id, {_LOG_COLUMNS}, item_ids, bandit_segment) "
            "SELECT $1, r.pid, u.rid, u.ptid, u.pname, u.did, r.uid, u.ch, u.cid, u.aid, u.served::jsonb, "
            "u.stage::jsonb, u.t, u.eid, u.coh, "
            "u.eid <> '' AND EXISTS (SELECT 1 FROM experiment_conflicts c WHERE c.tenant_id = $1 "
            "AND c.experiment_id = u.eid AND c.unified_individual_id = r.uid), "
            "u.job, u.hold, r.items::text[], u.seg "
            "FROM unnest($2::text[], $3::text[], $4::text[], $5::int[]) AS r(pid, uid, items, n) "
            "JOIN unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], "
            "$13::text[], $14::text[], $15::timestamptz[], $16::text[], $17::text[], $18::text[], $19::boolean[], "
            "$20::text[]) WITH ORDINALITY "
            "AS u(rid, ptid, pname, did, ch, cid, aid, served, stage, t, eid, coh, job, hold, seg, n) USING (n) "
            "ON CONFLICT (tenant_id, personalization_id) DO NOTHING RETURNING point_name, bandit_segment, decision_id), "
            "trials AS (INSERT INTO bandit_arms AS a (tenant_id, point_name, segment, decision_id, trials) "
            "SELECT $1, point_name, bandit_segment, decision_id, count(*) FROM ins WHERE bandit_segment IS NOT NULL "
            "GROUP BY point_name, bandit_segment, decision_id ORDER BY point_name, bandit_segment, decision_id "
            "ON CONFLICT (tenant_id, point_name, segment, decision_id) DO UPDATE SET trials = a.trials + "
            "EXCLUDED.trials, updated_at = now()) "
            "SELECT count(*) FROM ins",
            tenant, personalization_ids, individuals, items, positions, *shared,
        )

    async def log_stats(self, tenant: str, start: datetime, end: datetime) -> list[LogStats]:
        rows = await self.pool.fetch(
            "SELECT grouping(point_name) = 1 AS total, point_name, count(DISTINCT nullif(request_id, '')) AS requests, "
            "count(*) AS served, count(DISTINCT nullif(unified_individual_id, '')) AS individuals "
            "FROM decision_log WHERE tenant_id = $1 AND log_time >= $2 AND log_time < $3 "
            "GROUP BY GROUPING SETS ((point_name), ()) ORDER BY total DESC, point_name",
            tenant, start, end,
        )
        return [LogStats(None if r["total"] else r["point_name"], r["requests"], r["served"], r["individuals"])
                for r in rows]

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
            f"SELECT {_LOG_COLUMNS}, item_ids, bandit_segment FROM decision_log WHERE {' AND '.join(conditions)} "
            f"ORDER BY log_time DESC, personalization_id DESC LIMIT ${len(args)}",
            *args,
        )
        return [_log_entry(r) for r in rows]

    async def get_holdout(self, tenant: str) -> Holdout:
        row = await self.pool.fetchrow(
            "SELECT fraction_bps, seed, updated_at FROM holdouts WHERE tenant_id = $1", tenant)
        return Holdout() if row is None else Holdout(row["fraction_bps"], row["seed"], row["updated_at"])

    async def save_holdout(self, tenant: str, holdout: Holdout) -> Holdout:
        row = await self.pool.fetchrow(
            "INSERT INTO holdouts (tenant_id, fraction_bps, seed, updated_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (tenant_id) DO UPDATE SET fraction_bps = EXCLUDED.fraction_bps, seed = EXCLUDED.seed, "
            "updated_at = EXCLUDED.updated_at RETURNING fraction_bps, seed, updated_at",
            tenant, holdout.fraction_bps, holdout.seed, holdout.update_time or datetime.now(UTC))
        return Holdout(row["fraction_bps"], row["seed"], row["updated_at"])

    async def holdout_exposures(self, tenant: str, start: datetime, end: datetime) -> list[Exposure]:
        """Every row served to a known individual in [start, end), as exposures of the cohort `holdout` or
        `personalized`."""
        rows = await self.pool.fetch(
            "SELECT personalization_id, unified_individual_id, log_time, point_name, decision_id, '' AS experiment_id, "
            "CASE WHEN holdout THEN 'holdout' ELSE 'personalized' END AS cohort_id, item_ids, "
            "false AS exposure_conflict FROM decision_log WHERE tenant_id = $1 AND log_time >= $2 AND log_time < $3 "
            "AND unified_individual_id <> ''", tenant, start, end)
        return [_exposure(r) for r in rows]
