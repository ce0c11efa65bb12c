"""GetDecisions: Identify -> Augment -> Qualify -> Personalize -> Log, composed over the domain services."""

from __future__ import annotations

import asyncio
import time

from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from services.gateway.decision_log import DecisionLogWriter
from services.gateway.ingest import IDENTITY_TYPE
from services.gateway.personalize import (
    DEFAULT_ITEMS,
    EMPTY_PROFILE,
    PROFILE_EVENTS,
    PROFILE_MASK,
    Decided,
    DecideForIndividuals,
    Individual,
    context_view,
    item_structs,
    log_entry,
    profile_view,
    recommend_request,
    struct,
)
from services.gateway.ports import Stubs
from services.gateway.profile_cache import ProfileCache
from services.gateway.quotas import Quotas
from shared import context as ctx
from shared.client import open_stream
from shared.errors import InvalidArgument, NotFound, Violations

MAX_POINTS = 50
REMEMBERED_RESOLUTIONS = 10_000  # identity resolutions remembered per tenant (each for resolve_cache_seconds)
REMEMBERED_POINTS = 1_000  # point specs and profile keys remembered per tenant
PROFILE_KEYS = frozenset(PROFILE_MASK.paths)  # what GetDecisions reads of a stored profile, at most


class PerTenant:
    """What the decide path remembers, kept apart per tenant with at most `limit` entries each (the oldest goes
    first), so one tenant's many keys never push another tenant's out."""

    def __init__(self, limit: int):
        self.limit = limit
        self._by_tenant: dict[str, dict] = {}

    def get(self, tenant: str, key):
        entries = self._by_tenant.get(tenant)
        return None if entries is None else entries.get(key)

    def put(self, tenant: str, key, value) -> None:
        entries = self._by_tenant.setdefault(tenant, {})
        if key not in entries and len(entries) >= self.limit:
            del entries[next(iter(entries))]
        entries[key] = value

    def pop(self, tenant: str, key) -> None:
        entries = self._by_tenant.get(tenant)
        if entries is not None:
            entries.pop(key, None)


def validate(request: pb.GetDecisionsRequest) -> None:
    v = Violations()
    points = request.personalization_points
    if not points:
        v.add("personalization_points", "at least one point is required")
    elif len(points) > MAX_POINTS:
        v.add("personalization_points", f"at most {MAX_POINTS} points per request")
    for i, point in enumerate(points):
        if not point.name.strip():
            v.add(f"personalization_points[{i}].name", "must not be empty")
    flags = set(request.execution_flags)
    has_identity = bool(request.unified_individual_id or request.individual_id.value)
    if not has_identity and pb.EXECUTION_FLAG_CONTEXT_ONLY not in flags and not request.HasField("profile"):
        v.add("individual_id", "an identity or a unified_individual_id is required (or the CONTEXT_ONLY flag)")
    if request.individual_id.value and not IDENTITY_TYPE.match(request.individual_id.type):
        v.add("individual_id.type", "must match ^[a-z][a-z0-9_]{0,63}$")
    v.raise_if_any()


class Decider:
    """Composes the decide path; each stage's time is measured and logged with the decision."""

    def __init__(self, stubs: Stubs, log_writer: DecisionLogWriter, quotas: Quotas, *,
                 resolve_cache_seconds: float = 1.0, profile_cache_seconds: float = 1.0):
        self.resolve_cache_seconds = resolve_cache_seconds
        # Stored profiles as read, per tenant, dropped as the profile graph's change feed says (profile_cache.py).
        self.profiles = ProfileCache(
            lambda: open_stream(stubs.profile.WatchProfileChanges, profile_pb.WatchProfileChangesRequest()),
            seconds=profile_cache_seconds)
        self._resolved = PerTenant(REMEMBERED_RESOLUTIONS)  # (type, value, unified id) -> (found, until)
        self.identity = stubs.identity
        self.profile = stubs.profile
        self.decision = stubs.decision
        self.recommender = stubs.recommender
        self.use_case = DecideForIndividuals(stubs)
        self.log_writer = log_writer
        self.quotas = quotas
        # Per tenant, point names -> the profile keys their last Qualify said they read: the next request reads only
        # those (profile_graph's query and every conversion shrink); an answer naming a key not read is asked again.
        self._profile_keys = PerTenant(REMEMBERED_POINTS)
        # Per tenant, point name -> (recommender, count, item attributes) of the point's last recommendation decision:
        # its Recommend call starts while the point qualifies, and is used when the same decision spec wins.
        self._recommends = PerTenant(REMEMBERED_POINTS)

    async def resolve(self, identity: common_pb2.Identity, unified_id: str, *, cached: bool = True) -> str:
        """The surviving unified id of an identity or id; empty for an identity never seen.

        Found answers are cached for resolve_cache_seconds: a visitor asks for several points in a row, and the
        lookup is a full round trip. After a merge, a merged-away id may be served for that long (its profile
        then looks empty); identities not found are never cached, so a new visitor is seen once processed.
        """
        tenant, key = ctx.current_tenant(), (identity.type, identity.value, unified_id)
        now = time.monotonic()
        hit = self._resolved.get(tenant, key) if cached else None
        if hit is not None and hit[1] > now:
            return hit[0]
        if unified_id:
            reply = await self.identity.GetIndividual(
                identity_pb.GetIndividualRequest(unified_individual_id=unified_id))
            found = reply.individual.unified_individual_id
        else:
            reply = await self.identity.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(
                subjects=[identity_pb.Subject(identities=[identity])], lookup_only=True))
            found = reply.resolutions[0].unified_individual_id
        if found and self.resolve_cache_seconds > 0:
            self._resolved.put(tenant, key, (found, now + self.resolve_cache_seconds))
        return found

    async def resolve_known(self, request, *, cached: bool = True) -> str:
        """The unified id a request's individual_id or unified_individual_id names; INVALID_ARGUMENT when it names
        neither, NOT_FOUND when no individual has the identity."""
        if not request.unified_individual_id and not request.individual_id.value:
            raise InvalidArgument([("individual_id", "an identity or a unified_individual_id is required")])
        unified_id = await self.resolve(request.individual_id, request.unified_individual_id, cached=cached)
        if not unified_id:
            raise NotFound("no individual has this identity", reason="INDIVIDUAL_NOT_FOUND")
        return unified_id

    async def decide(self, request: pb.GetDecisionsRequest) -> pb.GetDecisionsResponse:
        validate(request)
        flags = set(request.execution_flags)
        stage_ms: dict[str, float] = {}
        mark = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            stage_ms[stage] = round((now - mark) * 1000, 3)
            mark = now

        unified_id = ""
        if request.unified_individual_id or request.individual_id.value:
            unified_id = await self.resolve(request.individual_id, request.unified_individual_id)
        lap("identify")

        tenant = ctx.current_tenant()
        over_quota = await self.quotas.over_quota(tenant, len(request.personalization_points))
        names = tuple(p.name for p in request.personalization_points)
        keys = self._profile_keys.get(tenant, names)
        profile = await self.augment(request, unified_id, skip=over_quota, keys=keys)
        lap("augment")

        individual = Individual(unified_id, profile, request.context,
                                known_profile=bool(unified_id) or request.HasField("profile"))
        points = [decision_pb.PointSelection(name=p.name, decision_id=p.decision_id)
                  for p in request.personalization_points]
        explain = pb.EXECUTION_FLAG_DIAGNOSTICS in flags
        prefetched = {} if over_quota else self._prefetch(tenant, individual, request, explain)
        try:
            qualifications, needed = await self.use_case.qualify_one(individual, points, fallback_only=over_quota)
            if keys is not None and not over_quota and self.reads_store(request, unified_id) \
                    and not needed & PROFILE_KEYS <= keys:
                # The points read more than last time (their configuration changed): read that and ask again; what
                # was prefetched with the profile read before is not used.
                _drop(prefetched)
                prefetched = {}
                profile = await self.augment(request, unified_id, keys=needed & PROFILE_KEYS)
                individual = Individual(unified_id, profile, request.context)
                qualifications, needed = await self.use_case.qualify_one(individual, points)
            self._remember_keys(tenant, names, needed & PROFILE_KEYS)
            lap("qualify")
            self._remember(tenant, qualifications)
            [decided] = await self.use_case.personalize([individual], [qualifications], over_quota=over_quota,
                                                        explain=explain, messages=True, prefetched=prefetched)
        finally:
            _drop(prefetched)
        lap("personalize")

        request_id = ctx.request_id_var.get()
        personalizations = [personalization(d, unified_id, stage_ms, explain) for d in decided]
        if pb.EXECUTION_FLAG_TEST_MODE not in flags:
            now = timestamp_pb2.Timestamp()
            now.GetCurrentTime()
            await self.log_writer.submit([
                log_entry(individual, d, served(p.data), request_id=request_id, stage_ms=stage_ms, log_time=now)
                for d, p in zip(decided, personalizations)])
        return pb.GetDecisionsResponse(request_id=request_id, personalizations=personalizations)

    def _prefetch(self, tenant: str, individual: Individual, request: pb.GetDecisionsRequest,
                  explain: bool) -> dict[tuple[str, int, tuple[str, ...]], asyncio.Future]:
        """Starts the Recommend call of each asked point whose last recommendation decision is known, so it runs
        while the points qualify (the personalize stage then waits only for what is not done yet)."""
        tasks: dict[tuple[str, int, tuple[str, ...]], asyncio.Future] = {}
        for p in request.personalization_points:
            spec = self._recommends.get(tenant, p.name)
            if spec is not None and spec not in tasks:
                strategy, count, attributes = spec
                # ensure_future: a grpc.aio call is awaitable but not a coroutine.
                tasks[spec] = asyncio.ensure_future(self.recommender.Recommend(
                    recommend_request(individual, strategy, count, attributes, explain)))
        return tasks

    def _remember_keys(self, tenant: str, names: tuple[str, ...], keys: frozenset[str]) -> None:
        """Notes the profile keys these points read (none known: the next request reads the whole profile)."""
        if keys:
            self._profile_keys.put(tenant, names, keys)
        else:
            self._profile_keys.pop(tenant, names)

    def _remember(self, tenant: str, qualifications) -> None:
        """Notes each point's recommendation spec (or forgets it when the point served something else)."""
        for q in qualifications:
            if q.decision.WhichOneof("payload") == "recommendations":
                spec = q.decision.recommendations
                self._recommends.put(tenant, q.point.name, (spec.recommender, spec.count or DEFAULT_ITEMS,
                                                            tuple(q.point.template.item_attributes)))
            else:
                self._recommends.pop(tenant, q.point.name)

    @staticmethod
    def reads_store(request, unified_id: str) -> bool:
        """Whether augment reads the stored profile (not the caller's, not an empty one)."""
        return (not request.HasField("profile") and bool(unified_id)
                and pb.EXECUTION_FLAG_CONTEXT_ONLY not in getattr(request, "execution_flags", ()))

    async def augment(self, request, unified_id: str, *, skip: bool = False,
                      keys: frozenset[str] | None = None) -> dict:
        """The profile rules see: the caller's, an empty one (CONTEXT_ONLY, unknown, over quota), or the stored one
        (only its keys in `keys` when given; the others are empty)."""
        if request.HasField("profile"):
            return json_format.MessageToDict(request.profile)
        if skip or not self.reads_store(request, unified_id):
            return dict(EMPTY_PROFILE)
        mask = PROFILE_MASK if keys is None else field_mask_pb2.FieldMask(paths=sorted(keys))

        async def load() -> dict:
            reply = await self.profile.GetProfile(profile_pb.GetProfileRequest(
                unified_individual_id=unified_id, read_mask=mask, event_limit=PROFILE_EVENTS))
            return profile_view(reply.profile)

        return await self.profiles.read(ctx.current_tenant(), unified_id, keys, load)

    async def assign(self, request: pb.AssignExperimentsRequest) -> pb.AssignExperimentsResponse:
        """Experiment cohorts of one individual (resolved like GetDecisions), optionally recording exposures."""
        unified_id = await self.resolve_known(request)
        profile = await self.augment(request, unified_id)
        reply = await self.decision.AssignExperiments(decision_pb.AssignExperimentsRequest(
            unified_individual_id=unified_id, point_names=request.point_names, profile=struct(profile),
            context=struct(context_view(request.context)), record_exposure=request.record_exposure,
            channel=request.context.channel))
        return pb.AssignExperimentsResponse(assignments=[assignment_message(a) for a in reply.assignments],
                                            holdout=reply.holdout)


def assignment_message(a: decision_pb.ExperimentAssignment) -> pb.ExperimentAssignment:
    return pb.ExperimentAssignment(
        experiment_id=a.experiment_id, experiment_name=a.experiment_name, point_name=a.point_name,
        cohort_id=a.cohort_id, control=a.control, fall_through=a.fall_through, decision_id=a.decision_id,
        bucket=a.bucket, in_experiment=a.in_experiment, layer=a.layer)


def bandit_trace(b: decision_pb.BanditChoice) -> pb.BanditTrace:
    """How a bandit point chose, as GetDecisions explains it (the decision service's message, field for field)."""
    return pb.BanditTrace(segment=b.segment, holdout=b.holdout, explored=b.explored, arms=[pb.BanditArmTrace(
        decision_id=a.decision_id, decision_name=a.decision_name, trials=a.trials, successes=a.successes,
        revenue=a.revenue, alpha=a.alpha, beta=a.beta, value_mean=a.value_mean, value_kappa=a.value_kappa,
        value_shape=a.value_shape, value_rate=a.value_rate, sampled=a.sampled) for a in b.arms])


def personalization(d: Decided, unified_id: str, stage_ms: dict[str, float], explain: bool) -> pb.Personalization:
    """A decided point as GetDecisions answers it (with the explanation when DIAGNOSTICS is set)."""
    q = d.qualification
    experiment = d.experiment
    p = pb.Personalization(
        personalization_id=d.personalization_id, personalization_point_id=q.point.point_id,
        personalization_point_name=q.point.name, decision_id=q.decision.decision_id, decision_name=q.decision.name,
        data=d.messages if d.messages is not None else [struct(r) for r in d.data],
        diagnostics=d.diagnostics, experiment_id=experiment.experiment_id if experiment else "",
        cohort_id=experiment.cohort_id if experiment else "")
    if explain:
        p.explanation.CopyFrom(pb.Explanation(
            rules=[pb.RuleTrace(decision_id=e.decision_id, decision_name=e.decision_name, matched=e.matched,
                                error=e.error) for e in q.evaluations],
            unified_individual_id=unified_id, stage_ms=stage_ms, holdout=q.holdout))
        if q.HasField("experiment"):
            p.explanation.experiment.CopyFrom(assignment_message(q.experiment))
        if q.HasField("bandit"):
            p.explanation.bandit.CopyFrom(bandit_trace(q.bandit))
        if d.trace is not None:
            p.explanation.recommendations.CopyFrom(d.trace)
    return p


def _drop(prefetched: dict[tuple[str, int, tuple[str, ...]], asyncio.Future]) -> None:
    """Cancels the prefetches not done (a prefetch is used by awaiting it before this runs)."""
    for task in prefetched.values():
        if not task.done():
            task.cancel()
        task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future) -> None:
    """Marks an unused prefetch's failure as seen (the call it stood for was not needed)."""
    if not task.cancelled():
        task.exception()


def shape_items(ranked, attributes: list[str]) -> list[struct_pb2.Struct]:
    """item_rows as Structs, for responses."""
    return item_structs(ranked, attributes)


def served(data) -> struct_pb2.Struct:
    """What a decision-log row records as served: {"data": [the items or content, as sent]}."""
    result = struct_pb2.Struct()
    values = result.get_or_create_list("data")
    for item in data:  # copied as messages: no round trip through Python dicts
        values.values.add().struct_value.CopyFrom(item)
    return result
