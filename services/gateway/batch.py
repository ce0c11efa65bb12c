"""Batch personalization: every member of a segment decided for one or more points, resumable from checkpoints."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timezone

from croniter import croniter
from google.protobuf import field_mask_pb2, json_format, timestamp_pb2

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from services.gateway.decision_log import DecisionLogWriter
from services.gateway.ingest import NAME
from services.gateway.personalize import (
    PROFILE_EVENTS,
    PROFILE_MASK,
    QUALIFY_CHUNK,
    DecideForIndividuals,
    Individual,
    batch_log_groups,
    batch_personalization_id,
    member_context,
    profile_view,
)
from services.gateway.ports import Stubs
from services.gateway.postgres_batch import BATCH_CHANNEL, Job, OutputRow, PostgresBatch, Schedule, StoredRow
from services.gateway.quotas import period_start
from shared import context as ctx
from shared import db, metrics
from shared.errors import NotFound, Violations, quote
from shared.leader import lead
from shared.log import get_logger

log = get_logger("gateway.batch")

MAX_POINTS = 10
LEADER_LOCK = "tailor-batch-leader"
PROFILE_KEYS = frozenset(PROFILE_MASK.paths)  # what a batch job reads of a profile, at most
BATCH_CHANNEL_NAME = "batch"  # the channel of every batch decision (in rules' context and the decision log)


def validate_job(segment: str, point_names, field_prefix: str = "", context_sources: Sequence[int] = ()) -> None:
    v = Violations()
    for i, source in enumerate(context_sources):
        if source not in pb.BatchContextSource.values() or source == pb.BATCH_CONTEXT_SOURCE_UNSPECIFIED:
            v.add(f"{field_prefix}context_sources[{i}]", "must be LAST_CART, RECENTLY_VIEWED or LAST_PURCHASE")
        elif source in context_sources[:i]:
            v.add(f"{field_prefix}context_sources[{i}]", "must not repeat a source")
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


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _new_job_id() -> str:
    return "job_" + uuid.uuid4().hex[:20]


def _source_names(sources: Sequence[int]) -> tuple[str, ...]:
    return tuple(pb.BatchContextSource.Name(s).removeprefix("BATCH_CONTEXT_SOURCE_") for s in sources)


def _next_run(cron: str, after: datetime) -> datetime:
    """The first time after `after` that the five-field UTC cron expression names."""
    return croniter(cron, after).get_next(datetime)


PROGRESS_STEPS = 20  # a job's progress advances in about this many steps (pages), unless pages would be tiny
PROGRESS_MIN_PAGE = 50


class BatchJobs:
    """Creates, runs, watches and schedules batch jobs. One leader per database runs them, oldest first."""

    def __init__(self, dsn: str, store: PostgresBatch, stubs: Stubs, log_writer: DecisionLogWriter, *,
                 page_size: int = 1000, depth: int = 3, idle_seconds: float = 1.0,
                 now: Callable[[], datetime] = _utcnow):
        self.dsn = dsn
        self.store = store
        self.profile = stubs.profile
        self.decision = stubs.decision
        self.use_case = DecideForIndividuals(stubs)
        self.log_writer = log_writer
        self.page_size = page_size
        self.depth = depth
        self.idle_seconds = idle_seconds
        self.now = now

    # Use cases called by the servicer.
    async def _check_targets(self, segment: str, point_names: Sequence[str], field_prefix: str = "") -> int:
        """NOT_FOUND for an unknown segment or point; returns the segment's member count."""
        segments = await self.profile.ListSegments(profile_pb.ListSegmentsRequest(page_size=1000))
        counts = {s.name: s.member_count for s in segments.segments}
        if segment not in counts:
            raise NotFound(f"segment {quote(segment)} not found", reason="SEGMENT_NOT_FOUND", metadata={"segment": segment})
        points = await self.decision.ListPoints(decision_pb.ListPointsRequest(page_size=1000))
        known = {p.name for p in points.points}
        missing = [(i, n) for i, n in enumerate(point_names) if n not in known]
        if missing:
            i, name = missing[0]
            raise NotFound(f"point {quote(name)} not found ({field_prefix}point_names[{i}])", reason="POINT_NOT_FOUND",
                           metadata={"point": name})
        return counts[segment]

    async def start(self, tenant_id: str, segment: str, point_names: list[str],
                    context_sources: Sequence[int] = ()) -> Job:
        validate_job(segment, point_names, context_sources=context_sources)
        total = await self._check_targets(segment, point_names)
        return await self.store.create_job(tenant_id, _new_job_id(), segment, point_names, "", total,
                                           _source_names(context_sources))

    async def get(self, tenant_id: str, job_id: str) -> Job:
        job = await self.store.job(tenant_id, job_id)
        if job is None:
            raise NotFound(f"batch job {quote(job_id)} not found", reason="BATCH_JOB_NOT_FOUND")
        return job

    async def list_jobs(self, tenant_id: str, limit: int, after: list | None) -> list[Job]:
        key = None if after is None else (after[0], after[1])
        return await self.store.list_jobs(tenant_id, limit, key)

    async def results(self, tenant_id: str, job_id: str, limit: int, after: list | None) -> list[StoredRow]:
        await self.get(tenant_id, job_id)
        return await self.store.results(tenant_id, job_id, limit, None if after is None else (after[0], after[1]))

    async def watch(self, tenant_id: str, job_id: str, include_rows: bool,
                    poll_seconds: float = 0.2) -> AsyncIterator[Job | StoredRow]:
        """Yields the job whenever it changed, and (include_rows) every output row once, in write order, until the
        job has ended and everything was sent."""
        last = None
        seq = 0
        while True:
            job = await self.get(tenant_id, job_id)
            if include_rows:
                while True:
                    rows = await self.store.results_after(tenant_id, job_id, seq, 1000)
                    for row in rows:
                        yield row
                        seq = row.seq
                    if len(rows) < 1000:
                        break
            if job != last:
                yield job
                last = job
            if job.state in ("SUCCEEDED", "FAILED"):
                return
            await asyncio.sleep(poll_seconds)

    async def upsert_schedule(self, tenant_id: str, name: str, segment: str, point_names: list[str], cron: str,
                              enabled: bool, context_sources: Sequence[int] = ()) -> Schedule:
        v = Violations()
        if not NAME.match(name):
            v.add("schedule.name", "must match ^[a-z][a-z0-9_]{0,63}$")
        if not croniter.is_valid(cron) or len(cron.split()) != 5:
            v.add("schedule.cron", "must be a five-field cron expression")
        v.raise_if_any()
        validate_job(segment, point_names, "schedule.", context_sources)
        await self._check_targets(segment, point_names, "schedule.")
        return await self.store.upsert_schedule(Schedule(
            tenant_id, name, segment, tuple(point_names), cron, enabled, _next_run(cron, self.now()),
            _source_names(context_sources)))

    async def list_schedules(self, tenant_id: str, limit: int, after: list | None) -> list[Schedule]:
        return await self.store.list_schedules(tenant_id, limit, after[0] if after else "")

    # The worker.
    async def run(self) -> None:
        """Leader loop: starts due schedules and runs open jobs (resuming RUNNING ones first) until cancelled."""
        async def step() -> bool:
            await self.start_due_schedules()
            job = await self.store.next_open_job()
            if job is None:
                return False
            await self.run_job(job)
            return True

        with db.all_tenants():  # every tenant's schedules and jobs
            await lead(self.dsn, LEADER_LOCK, step, idle_seconds=self.idle_seconds, channel=BATCH_CHANNEL)

    async def start_due_schedules(self) -> list[Job]:
        """Creates a job for every schedule due by the clock, and moves each to its next run."""
        return await self.store.start_due(self.now(), lambda s, now: _next_run(s.cron, now), _new_job_id)

    async def run_job(self, job: Job) -> None:
        """Runs one job from its checkpoint; each page's rows, credits and checkpoint commit together."""
        tenant_id, job_id = job.tenant_id, job.job_id
        ctx.tenant_var.set(tenant_id)
        ctx.request_id_var.set(job_id)
        ctx.deadline_var.set(None)
        await self.store.mark_running(tenant_id, job_id)
        token = job.checkpoint
        # Progress (processed_count) moves one committed page at a time: with pages of page_size members, every job
        # under that size went from 0 to 100% in one step. Pages are cut to about a twentieth of the segment (at
        # least PROGRESS_MIN_PAGE members), so watchers see the job advance; large jobs (and scheduled ones, whose
        # size is not counted) keep full pages.
        total = job.total_count or 0
        metrics.start_batch_job(tenant_id, job_id, job.processed_count, total)
        page_size = min(self.page_size, max(PROGRESS_MIN_PAGE, -(-total // PROGRESS_STEPS))) if total else \
            self.page_size
        # Up to `depth` pages are decided at once (their stages run in different processes, so they overlap);
        # pages commit strictly in order, so the checkpoint always follows every committed row.
        deciding: deque[tuple[profile_pb.ListSegmentMembersResponse, asyncio.Task]] = deque()
        keys = ProfileKeys()
        try:
            while True:
                page = await self.profile.ListSegmentMembers(profile_pb.ListSegmentMembersRequest(
                    segment=job.segment, page_size=page_size, page_token=token, ids_only=True))
                members = list(page.unified_individual_ids)
                deciding.append((page, asyncio.create_task(self.decide_page(members, job, keys))))
                if len(deciding) >= self.depth or not page.next_page_token:
                    await self._commit_oldest(tenant_id, job_id, deciding)
                if not page.next_page_token:
                    break
                token = page.next_page_token
            while deciding:
                await self._commit_oldest(tenant_id, job_id, deciding)
            await self.store.mark_ended(tenant_id, job_id)
        except asyncio.CancelledError:
            for _, task in deciding:
                task.cancel()
            raise
        except Exception as error:
            log.exception("batch_job_failed", job_id=job_id)
            await self.store.mark_ended(tenant_id, job_id, str(error)[:2000])

    async def _commit_oldest(self, tenant_id: str, job_id: str, deciding: deque) -> None:
        page, task = deciding.popleft()
        rows, stage_ms = await task
        members = len(page.unified_individual_ids)
        await self._commit(tenant_id, job_id, rows, page.next_page_token, members, stage_ms)

    async def _commit(self, tenant_id: str, job_id: str, rows: list[OutputRow], checkpoint: str, members: int,
                      stage_ms: dict) -> None:
        """Writes a page's rows, counts their credits and moves the checkpoint, in one transaction."""
        started = time.perf_counter()
        await self.store.commit_page(tenant_id, job_id, rows, checkpoint, members, period_start())
        metrics.add_batch_progress(tenant_id, job_id, members)
        log.info("batch_page", job_id=job_id, members=members,
                 write_ms=round((time.perf_counter() - started) * 1000, 1), **stage_ms)

    async def decide_page(self, members: list[str], job: Job, keys: ProfileKeys | None = None
                          ) -> tuple[list[OutputRow], dict[str, float]]:
        """Decides every member of one page for every point with the decide use case real time uses (profiles,
        then qualify and personalize for the whole page), and logs the decisions, marked with the job, before the
        page commits (their ids are stable, so a redone page logs nothing twice).

        keys: what the job's points read of a profile, as the last page's qualification said; only that is read
        (the whole profile while unknown), and only what qualifying reads is sent to QualifyBatch. A page whose
        points read more than was read or sent (their configuration changed during the job) is read and qualified
        again with what they read now."""
        mark = time.perf_counter()
        stage_ms: dict[str, float] = {}

        def lap(stage: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            stage_ms[f"{stage}_ms"] = round((now - mark) * 1000, 1)
            mark = now

        keys = keys or ProfileKeys()
        learner = False
        if not keys.learned.is_set():
            if keys.learning:  # the first page reads whole profiles to learn the keys: the others wait for it
                await keys.learned.wait()
            else:
                keys.learning = learner = True
        try:
            read = keys.read
            individuals = await self.individuals(members, job.context_sources, read)
            lap("profiles")
            points = [decision_pb.PointSelection(name=name) for name in job.point_names]
            needed: frozenset[str] | None  # what qualifying read, then (keys.needed) what to read of the next pages
            qualified, needed, sent = await self.use_case.qualify(individuals, points, sent_keys=keys.sent)
            needed = keys.needed(needed, sent)
            if read is not None and needed is not None and not needed <= read:
                read = needed
                individuals = await self.individuals(members, job.context_sources, read)
                qualified, needed, sent = await self.use_case.qualify(individuals, points)
                needed = keys.needed(needed, sent)
            elif keys.sent is not None and sent is not None and not sent <= keys.sent:
                qualified, needed, sent = await self.use_case.qualify(individuals, points)  # they read more now
                needed = keys.needed(needed, sent)
            keys.read = needed
            if sent is not None:  # None: one member, qualified with its whole profile
                keys.sent = sent
        finally:
            if learner:
                keys.learned.set()
        lap("qualify")
        ids = [[batch_personalization_id(job.job_id, i.unified_id, name) for name in job.point_names]
               for i in individuals]
        decided = await self.use_case.personalize(individuals, qualified, ids=ids)
        reads_affinities = any(d.reads_affinities for row in decided for d in row)
        if reads_affinities and read is not None and "affinities" not in read:
            # A recommender reads affinities this page was read without (one with boosters served it): the page is
            # read with them and served again, and so are the pages after it.
            keys.affinities_unused = False
            if keys.read is not None:
                keys.read |= {"affinities"}
            individuals = await self.individuals(members, job.context_sources, read | {"affinities"})
            decided = await self.use_case.personalize(individuals, qualified, ids=ids)
        elif not reads_affinities and not keys.affinities_unused:
            keys.affinities_unused = True  # the pages after this one leave them out unless qualifying reads them
            if keys.read is not None and keys.sent is not None and "affinities" not in keys.sent:
                keys.read -= {"affinities"}
        lap("recommend")
        rows = []
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        pairs = [(individual, d) for individual, row in zip(individuals, decided) for d in row]
        for individual, d in pairs:
            q = d.qualification
            rows.append(OutputRow(
                unified_individual_id=individual.unified_id, individual_id=individual.unified_id,
                segment_id=job.segment, point_id=q.point.point_id, point_name=q.point.name,
                decision_id=q.decision.decision_id, personalization_id=d.personalization_id,
                payload={"decision_name": q.decision.name, "data": d.data,
                         "diagnostics": [json_format.MessageToDict(x) for x in d.diagnostics]}))
        groups = batch_log_groups(pairs, request_id=job.job_id, log_time=now, batch_job_id=job.job_id)
        lap("shape")
        await self.log_writer.write(groups)
        lap("log")
        return rows, stage_ms

    async def individuals(self, members: list[str], sources: Sequence[str],
                          keys: frozenset[str] | None = None) -> list[Individual]:
        """Each member as the use case takes them: the profile their rules see (only `keys` of it when given) and
        their context, built from their recent events as the job's context sources say (one GetProfiles call per
        1,000 members)."""
        codes = [pb.BatchContextSource.Value(f"BATCH_CONTEXT_SOURCE_{name}") for name in sources]
        shared = pb.DecisionContext(channel=BATCH_CHANNEL_NAME)
        if keys is not None and not keys and not codes:  # nothing of the profiles is read
            return [Individual(member, {}, shared, own_context=False) for member in members]
        mask = PROFILE_MASK if keys is None else field_mask_pb2.FieldMask(
            paths=sorted(keys | {"events"} if codes else keys))
        out: list[Individual] = []
        for start in range(0, len(members), QUALIFY_CHUNK):
            chunk = members[start:start + QUALIFY_CHUNK]
            reply = await self.profile.GetProfiles(profile_pb.GetProfilesRequest(
                unified_individual_ids=chunk, read_mask=mask, event_limit=PROFILE_EVENTS))
            for member, profile in zip(chunk, reply.profiles):
                context = member_context(profile.events, codes, BATCH_CHANNEL_NAME) if codes else shared
                out.append(Individual(member, profile_view(profile, keys), context, own_context=bool(codes)))
        return out


class ProfileKeys:
    """What a job's points read of a profile (their rules, consents, affinities...), as QualifyBatch last said:
    None (the whole profile) until the first page is qualified, or when the points name no keys. The pages after
    the first wait until it is qualified, so only the first reads whole profiles."""

    def __init__(self) -> None:
        self.read: frozenset[str] | None = None
        self.sent: frozenset[str] | None = None  # what QualifyBatch reads of them (None: unknown, send all read)
        # The recommenders that served the last page read no affinities (no boosters): unless qualifying reads them,
        # they are not read (a page a recommender with boosters serves is read with them and served again).
        self.affinities_unused = False
        self.learning = False
        self.learned = asyncio.Event()

    def needed(self, keys: frozenset[str], sent: frozenset[str] | None) -> frozenset[str] | None:
        """What to read of the next pages' profiles, from a QualifyBatch answer's profile keys (empty: unknown, the
        whole profile: None) and those qualifying reads."""
        keys &= PROFILE_KEYS
        if not keys:
            return None
        if self.affinities_unused and sent is not None and "affinities" not in sent:
            keys -= {"affinities"}
        return keys
