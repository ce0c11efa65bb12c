"""Batch personalization: every member of a segment decided for one or more points, resumable from checkpoints."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from datetime import datetime, timezone

import asyncpg
from croniter import croniter
from google.protobuf import json_format

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from services.gateway.decide import (DEFAULT_ITEMS, PROFILE_EVENTS, PROFILE_MASK, _struct, affinity_messages,
                                     item_rows, missing_decision_diagnostics, profile_view)
from shared.client import open_stream
from services.gateway.ingest import NAME
from services.gateway.quotas import count_credits
from shared import context as ctx
from shared.errors import NotFound, Violations
from shared.leader import lead
from shared.log import get_logger

log = get_logger("gateway.batch")

MAX_POINTS = 10
QUALIFY_CHUNK = 1000
LEADER_LOCK = "tailor-batch-leader"
BATCH_CHANNEL = "tailor_batch"
EMPTY_CONTEXT = {"anchor_id": "", "anchor_type": "", "cart_item_ids": [], "channel": "batch", "correlation_id": "",
                 "request_url": "", "attributes": {}}


def validate_job(segment: str, point_names, field_prefix: str = "") -> None:
    v = Violations()
    if not NAME.match(segment):
        v.add(f"{field_prefix}segment", "must name a segment")
    if not point_names:
        v.add(f"{field_prefix}point_names", "at least one point is required")
    elif len(point_names) > MAX_POINTS:
        v.add(f"{field_prefix}point_names", f"at most {MAX_POINTS} points")
    for i, name in enumerate(point_names):
        if not NAME.match(name):
            v.add(f"{field_prefix}point_names[{i}]", "must name a point")
    if len(set(point_names)) != len(point_names):
        v.add(f"{field_prefix}point_names", "must not repeat a point")
    v.raise_if_any()


def job_message(row) -> pb.BatchJob:
    job = pb.BatchJob(job_id=row["job_id"], segment=row["segment"], point_names=row["point_names"],
                      state=pb.BatchJobState.Value(f"BATCH_JOB_STATE_{row['state']}"),
                      processed_count=row["processed_count"], row_count=row["row_count"],
                      total_count=row["total_count"], schedule_name=row["schedule_name"], error=row["error"])
    job.create_time.FromDatetime(row["created_at"])
    if row["ended_at"] is not None:
        job.end_time.FromDatetime(row["ended_at"])
    return job


def result_message(row) -> pb.BatchResultRow:
    message = pb.BatchResultRow(
        individual_id=row["individual_id"], unified_individual_id=row["unified_individual_id"],
        segment_id=row["segment_id"], point_id=row["point_id"], point_name=row["point_name"],
        decision_id=row["decision_id"], batch_job_id=row["job_id"], personalization_id=row["personalization_id"])
    message.payload.update(json.loads(row["payload"]) if isinstance(row["payload"], str) else row["payload"])
    message.update_time.FromDatetime(row["updated_at"])
    return message


class BatchJobs:
    """Creates, runs, watches and schedules batch jobs. One leader per database runs them, oldest first."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, profile, decision, recommender, *, page_size: int = 1000,
                 depth: int = 3, idle_seconds: float = 1.0):
        self.dsn = dsn
        self.pool = pool
        self.profile = profile
        self.decision = decision
        self.recommender = recommender
        self.page_size = page_size
        self.depth = depth
        self.idle_seconds = idle_seconds

    # Use cases called by the servicer.
    async def _check_targets(self, segment: str, point_names, field_prefix: str = "") -> int:
        """NOT_FOUND for an unknown segment or point; returns the segment's member count."""
        segments = await self.profile.ListSegments(profile_pb.ListSegmentsRequest(page_size=1000))
        counts = {s.name: s.member_count for s in segments.segments}
        if segment not in counts:
            raise NotFound(f"segment {segment} not found", reason="SEGMENT_NOT_FOUND", metadata={"segment": segment})
        points = await self.decision.ListPoints(decision_pb.ListPointsRequest(page_size=1000))
        known = {p.name for p in points.points}
        missing = [(i, n) for i, n in enumerate(point_names) if n not in known]
        if missing:
            i, name = missing[0]
            raise NotFound(f"point {name} not found ({field_prefix}point_names[{i}])", reason="POINT_NOT_FOUND",
                           metadata={"point": name})
        return counts[segment]

    async def start(self, tenant_id: str, segment: str, point_names: list[str], schedule_name: str = "") -> pb.BatchJob:
        validate_job(segment, point_names)
        total = await self._check_targets(segment, point_names)
        return await self._create(self.pool, tenant_id, segment, point_names, schedule_name, total)

    async def _create(self, conn, tenant_id, segment, point_names, schedule_name, total) -> pb.BatchJob:
        row = await conn.fetchrow(
            "INSERT INTO batch_jobs (tenant_id, job_id, segment, point_names, schedule_name, total_count) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            tenant_id, "job_" + uuid.uuid4().hex[:20], segment, list(point_names), schedule_name, total)
        await conn.execute("SELECT pg_notify($1, '')", BATCH_CHANNEL)
        return job_message(row)

    async def get(self, tenant_id: str, job_id: str) -> pb.BatchJob:
        row = await self.pool.fetchrow("SELECT * FROM batch_jobs WHERE tenant_id = $1 AND job_id = $2",
                                       tenant_id, job_id)
        if row is None:
            raise NotFound(f"batch job {job_id} not found", reason="BATCH_JOB_NOT_FOUND")
        return job_message(row)

    async def list_jobs(self, tenant_id: str, limit: int, after: list | None):
        if after is None:
            rows = await self.pool.fetch("SELECT * FROM batch_jobs WHERE tenant_id = $1 "
                                         "ORDER BY created_at DESC, job_id DESC LIMIT $2", tenant_id, limit)
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM batch_jobs WHERE tenant_id = $1 AND (created_at, job_id) < ($2, $3) "
                "ORDER BY created_at DESC, job_id DESC LIMIT $4",
                tenant_id, datetime.fromisoformat(after[0]), after[1], limit)
        return rows

    async def results(self, tenant_id: str, job_id: str, limit: int, after: list | None):
        await self.get(tenant_id, job_id)
        rows = await self.pool.fetch(
            "SELECT * FROM batch_results WHERE tenant_id = $1 AND job_id = $2 "
            "AND ($3::text IS NULL OR (unified_individual_id, point_name) > ($3, $4)) "
            "ORDER BY unified_individual_id, point_name LIMIT $5",
            tenant_id, job_id, after[0] if after else None, after[1] if after else "", limit)
        return rows

    async def watch(self, tenant_id: str, job_id: str, include_rows: bool, poll_seconds: float = 0.2):
        """Yields WatchBatchJobResponse messages until the job has ended and everything was sent."""
        last = None
        seq = 0
        while True:
            job = await self.get(tenant_id, job_id)
            if include_rows:
                while True:
                    rows = await self.pool.fetch(
                        "SELECT * FROM batch_results WHERE tenant_id = $1 AND job_id = $2 AND seq > $3 "
                        "ORDER BY seq LIMIT 1000", tenant_id, job_id, seq)
                    for row in rows:
                        yield pb.WatchBatchJobResponse(row=result_message(row))
                        seq = row["seq"]
                    if len(rows) < 1000:
                        break
            if job != last:
                yield pb.WatchBatchJobResponse(job=job)
                last = job
            if job.state in (pb.BATCH_JOB_STATE_SUCCEEDED, pb.BATCH_JOB_STATE_FAILED):
                return
            await asyncio.sleep(poll_seconds)

    async def upsert_schedule(self, tenant_id: str, schedule: pb.BatchSchedule) -> pb.BatchSchedule:
        v = Violations()
        if not NAME.match(schedule.name):
            v.add("schedule.name", "must match ^[a-z][a-z0-9_]{0,63}$")
        if not croniter.is_valid(schedule.cron) or len(schedule.cron.split()) != 5:
            v.add("schedule.cron", "must be a five-field cron expression")
        v.raise_if_any()
        validate_job(schedule.segment, list(schedule.point_names), "schedule.")
        await self._check_targets(schedule.segment, list(schedule.point_names), "schedule.")
        next_run = croniter(schedule.cron, datetime.now(timezone.utc)).get_next(datetime)
        row = await self.pool.fetchrow(
            "INSERT INTO batch_schedules (tenant_id, name, segment, point_names, cron, enabled, next_run_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, name) DO UPDATE SET "
            "segment = excluded.segment, point_names = excluded.point_names, cron = excluded.cron, "
            "enabled = excluded.enabled, next_run_at = excluded.next_run_at RETURNING *",
            tenant_id, schedule.name, schedule.segment, list(schedule.point_names), schedule.cron,
            schedule.enabled, next_run)
        return schedule_message(row)

    async def list_schedules(self, tenant_id: str, limit: int, after: list | None):
        return await self.pool.fetch(
            "SELECT * FROM batch_schedules WHERE tenant_id = $1 AND name > $2 ORDER BY name LIMIT $3",
            tenant_id, after[0] if after else "", limit)

    # The worker.
    async def run(self) -> None:
        """Leader loop: starts due schedules and runs open jobs (resuming RUNNING ones first) until cancelled."""
        async def step() -> bool:
            await self.start_due_schedules()
            job = await self.pool.fetchrow(
                "SELECT * FROM batch_jobs WHERE state IN ('RUNNING', 'PENDING') "
                "ORDER BY state = 'RUNNING' DESC, created_at LIMIT 1")
            if job is None:
                return False
            await self.run_job(job)
            return True

        await lead(self.dsn, LEADER_LOCK, step, idle_seconds=self.idle_seconds, channel=BATCH_CHANNEL)

    async def start_due_schedules(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            due = await conn.fetch("SELECT * FROM batch_schedules WHERE enabled AND next_run_at <= now() "
                                   "FOR UPDATE SKIP LOCKED")
            for row in due:
                next_run = croniter(row["cron"], datetime.now(timezone.utc)).get_next(datetime)
                await conn.execute("UPDATE batch_schedules SET next_run_at = $3 WHERE tenant_id = $1 AND name = $2",
                                   row["tenant_id"], row["name"], next_run)
                await self._create(conn, row["tenant_id"], row["segment"], row["point_names"], row["name"], 0)

    async def run_job(self, job) -> None:
        """Runs one job from its checkpoint; each page's rows, credits and checkpoint commit together."""
        tenant_id, job_id = job["tenant_id"], job["job_id"]
        ctx.tenant_var.set(tenant_id)
        ctx.request_id_var.set(job_id)
        ctx.deadline_var.set(None)
        await self.pool.execute("UPDATE batch_jobs SET state = 'RUNNING' WHERE tenant_id = $1 AND job_id = $2",
                                tenant_id, job_id)
        token = job["checkpoint"]
        # Up to `depth` pages are decided at once (their stages run in different processes, so they overlap);
        # pages commit strictly in order, so the checkpoint always follows every committed row.
        deciding: deque[tuple[object, asyncio.Task]] = deque()
        try:
            while True:
                page = await self.profile.ListSegmentMembers(profile_pb.ListSegmentMembersRequest(
                    segment=job["segment"], page_size=self.page_size, page_token=token))
                members = [m.unified_individual_id for m in page.members]
                deciding.append((page, asyncio.create_task(
                    self.decide_page(members, job["segment"], list(job["point_names"]), job_id))))
                if len(deciding) >= self.depth or not page.next_page_token:
                    await self._commit_oldest(tenant_id, job_id, deciding)
                if not page.next_page_token:
                    break
                token = page.next_page_token
            while deciding:
                await self._commit_oldest(tenant_id, job_id, deciding)
            await self.pool.execute("UPDATE batch_jobs SET state = 'SUCCEEDED', ended_at = now() "
                                    "WHERE tenant_id = $1 AND job_id = $2", tenant_id, job_id)
        except asyncio.CancelledError:
            for _, task in deciding:
                task.cancel()
            raise
        except Exception as error:
            log.exception("batch_job_failed", job_id=job_id)
            await self.pool.execute("UPDATE batch_jobs SET state = 'FAILED', error = $3, ended_at = now() "
                                    "WHERE tenant_id = $1 AND job_id = $2", tenant_id, job_id, str(error)[:2000])

    async def _commit_oldest(self, tenant_id: str, job_id: str, deciding: deque) -> None:
        page, task = deciding.popleft()
        rows, stage_ms = await task
        await self._commit(tenant_id, job_id, rows, page.next_page_token, len(page.members), stage_ms)

    async def _commit(self, tenant_id: str, job_id: str, rows: list[dict], checkpoint: str, members: int,
                      stage_ms: dict) -> None:
        """Writes a page's rows, counts their credits and moves the checkpoint, in one transaction."""
        started = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await write_rows(conn, tenant_id, job_id, rows)
            await count_credits(conn, tenant_id, inserted)
            await conn.execute(
                "UPDATE batch_jobs SET checkpoint = $3, processed_count = processed_count + $4, "
                "row_count = row_count + $5 WHERE tenant_id = $1 AND job_id = $2",
                tenant_id, job_id, checkpoint, members, inserted)
        log.info("batch_page", job_id=job_id, members=members,
                 write_ms=round((time.perf_counter() - started) * 1000, 1), **stage_ms)

    async def decide_page(self, members: list[str], segment: str, point_names: list[str],
                          job_id: str) -> tuple[list[dict], dict[str, float]]:
        """Decides every member of one page for every point: the profiles, one QualifyBatch, then one
        RecommendBatch per (recommender, count) for all members a recommendation decision qualified."""
        mark = time.perf_counter()
        stage_ms: dict[str, float] = {}

        def lap(stage: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            stage_ms[f"{stage}_ms"] = round((now - mark) * 1000, 1)
            mark = now

        profiles = await self.profiles(members)
        lap("profiles")
        qualified = []
        for start in range(0, len(members), QUALIFY_CHUNK):
            chunk = members[start:start + QUALIFY_CHUNK]
            reply = await self.decision.QualifyBatch(decision_pb.QualifyBatchRequest(
                points=point_names, context=_struct(EMPTY_CONTEXT), individuals=[
                    decision_pb.BatchIndividual(unified_individual_id=m, profile=_struct(profiles[m]))
                    for m in chunk]))
            decisions = {d.decision_id: d for d in reply.decisions}
            for result in reply.results:
                qualifications = []
                for point, batch_q in zip(reply.points, result.qualifications):
                    q = decision_pb.Qualification(point=point, evaluations=batch_q.evaluations)
                    if batch_q.decision_id:
                        q.decision.CopyFrom(decisions[batch_q.decision_id])
                    if batch_q.HasField("experiment"):
                        q.experiment.CopyFrom(batch_q.experiment)
                    qualifications.append(q)
                qualified.append((result.unified_individual_id, profiles[result.unified_individual_id],
                                  qualifications))
        results = []
        contents: dict[str, dict] = {}
        wanted: dict[tuple[str, int], list[tuple[str, dict]]] = {}
        for member, profile, qualifications in qualified:
            for q in qualifications:
                result = {"member": member, "q": q, "data": [], "ranked": [],
                          "diagnostics": [json_format.MessageToDict(d) for d in missing_decision_diagnostics(q)]}
                if not result["diagnostics"]:
                    if q.decision.WhichOneof("payload") == "content":
                        if q.decision.decision_id not in contents:
                            contents[q.decision.decision_id] = json_format.MessageToDict(q.decision.content)
                        result["data"] = [contents[q.decision.decision_id]]
                    else:
                        spec = q.decision.recommendations
                        wanted.setdefault((spec.recommender, spec.count or DEFAULT_ITEMS), []).append((member, profile))
                results.append(result)
        lap("qualify")
        attributes = sorted({a for r in results for a in r["q"].point.template.item_attributes})
        ranked = await self.recommend_batches(wanted, attributes)
        lap("recommend")
        for result in results:
            q = result["q"]
            if not result["diagnostics"] and q.decision.WhichOneof("payload") == "recommendations":
                spec = q.decision.recommendations
                result["ranked"] = ranked[(spec.recommender, spec.count or DEFAULT_ITEMS)].get(result["member"], [])
        rows = []
        for result in results:
            q = result["q"]
            data = result["data"]
            if result["ranked"]:
                data = item_rows(result["ranked"], list(q.point.template.item_attributes))
            rows.append({
                "unified_individual_id": result["member"], "individual_id": result["member"], "segment_id": segment,
                "point_id": q.point.point_id, "point_name": q.point.name, "decision_id": q.decision.decision_id,
                "personalization_id": uuid.uuid4().hex,
                "payload": {"decision_name": q.decision.name, "data": data, "diagnostics": result["diagnostics"]},
            })
        lap("shape")
        return rows, stage_ms

    async def profiles(self, members: list[str]) -> dict[str, dict]:
        """The profile each member's rules see, by member (one GetProfiles call per 1,000 members)."""
        out: dict[str, dict] = {}
        for start in range(0, len(members), QUALIFY_CHUNK):
            chunk = members[start:start + QUALIFY_CHUNK]
            reply = await self.profile.GetProfiles(profile_pb.GetProfilesRequest(
                unified_individual_ids=chunk, read_mask=PROFILE_MASK, event_limit=PROFILE_EVENTS))
            out.update({member: profile_view(profile) for member, profile in zip(chunk, reply.profiles)})
        return out

    async def recommend_batches(self, wanted: dict, item_attributes: list[str]) -> dict:
        """One RecommendBatch stream per (recommender, count); returns {key: {member: [RecommendedItem]}}."""
        out = {}
        for (strategy, count), members in wanted.items():
            by_member = {}
            stream = open_stream(self.recommender.RecommendBatch, rec_pb.RecommendBatchRequest(
                strategy=strategy, count=count, item_attributes=item_attributes,
                individuals=[rec_pb.BatchIndividual(unified_individual_id=m, affinities=affinity_messages(p))
                             for m, p in members]))
            async for chunk in stream:
                for result in chunk.results:
                    by_member[result.unified_individual_id] = list(result.items)
            out[(strategy, count)] = by_member
        return out


async def write_rows(conn: asyncpg.Connection, tenant_id: str, job_id: str, rows: list[dict]) -> int:
    """Upserts a page of output rows in one statement (a re-run page replaces its rows); returns rows new to the job."""
    if not rows:
        return 0
    written = await conn.fetch(
        "INSERT INTO batch_results (tenant_id, job_id, unified_individual_id, point_name, individual_id, segment_id, "
        "point_id, decision_id, personalization_id, payload) "
        "SELECT $1, $2, u, p, i, s, pid, d, per, pay::jsonb FROM unnest($3::text[], $4::text[], $5::text[], "
        "$6::text[], $7::text[], $8::text[], $9::text[], $10::text[]) AS t(u, p, i, s, pid, d, per, pay) "
        "ON CONFLICT (tenant_id, job_id, unified_individual_id, point_name) DO UPDATE SET "
        "decision_id = excluded.decision_id, personalization_id = excluded.personalization_id, "
        "payload = excluded.payload, updated_at = now() RETURNING (xmax = 0) AS inserted",
        tenant_id, job_id,
        [r["unified_individual_id"] for r in rows], [r["point_name"] for r in rows],
        [r["individual_id"] for r in rows], [r["segment_id"] for r in rows], [r["point_id"] for r in rows],
        [r["decision_id"] for r in rows], [r["personalization_id"] for r in rows],
        [json.dumps(r["payload"]) for r in rows])
    return sum(1 for r in written if r["inserted"])


def schedule_message(row) -> pb.BatchSchedule:
    schedule = pb.BatchSchedule(name=row["name"], segment=row["segment"], point_names=row["point_names"],
                                cron=row["cron"], enabled=row["enabled"])
    schedule.next_run_time.FromDatetime(row["next_run_at"])
    return schedule

