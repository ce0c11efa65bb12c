"""Decide for individuals: the one use case behind GetDecisions (one individual) and batch jobs (a page of members).

Qualify every point for every individual (the decision service: experiments, consent, rules, fallbacks), then
personalize each qualification (the decision's content, or the recommender's items), with the diagnostics that say
why something was or was not served, and the decision-log row of each. Online and batch differ only in where the
profiles come from and where the answers go; both go through here.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from services.gateway.ports import Stubs
from shared.client import open_stream
from shared.structs import struct_to_dict, value_to_py

PROFILE_EVENTS = 10
DEFAULT_ITEMS = 12
QUALIFY_CHUNK = 1000  # individuals per QualifyBatch (the decision service's limit)
RECOMMEND_CONCURRENCY = 16  # single Recommend calls in flight for members with an anchor or a cart
PROFILE_MASK = field_mask_pb2.FieldMask(paths=["attributes", "insights", "segments", "events", "affinities",
                                                "consents"])
EVENT_TYPE_NAMES = {v: k.removeprefix("EVENT_TYPE_") for k, v in common_pb2.EventType.items()}
EMPTY_PROFILE: dict = {"attributes": {}, "insights": {}, "segments": [], "events": [], "affinities": {},
                       "consents": {}}


def struct(data: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def _affinities(profile: profile_pb.Profile) -> dict[str, dict[str, float]]:
    affinities: dict[str, dict[str, float]] = {}
    for a in profile.affinities:
        affinities.setdefault(a.dimension, {})[a.value] = a.score
    return affinities


def _events(profile: profile_pb.Profile) -> list[dict]:
    return [{"type": EVENT_TYPE_NAMES.get(e.type, "UNSPECIFIED"), "name": e.name, "item_id": e.item_id,
             "event_time": e.event_time.ToJsonString() if e.HasField("event_time") else ""} for e in profile.events]


_VIEW = {
    "affinities": _affinities,
    "consents": lambda p: {c.purpose: c.status == common_pb2.CONSENT_STATUS_GRANTED for c in p.consents},
    "attributes": lambda p: struct_to_dict(p.attributes),
    "insights": lambda p: dict(p.insights),
    "segments": lambda p: list(p.segments),
    "events": _events,
}


def profile_view(profile: profile_pb.Profile, keys: Collection[str] | None = None) -> dict:
    """The profile data graph as rules see it: attributes, insights, segments, events, affinities, consents (only
    those in keys when given: what the points read, the rest left out, which rules see as empty).

    affinities is {dimension: {value: score}}; consents is {purpose: true when granted}.
    """
    return {key: view(profile) for key, view in _VIEW.items() if keys is None or key in keys}


def context_view(context: pb.DecisionContext) -> dict:
    """The request context as rules see it."""
    return {
        "anchor_id": context.anchor_id,
        "anchor_type": context.anchor_type,
        "cart_item_ids": list(context.cart_item_ids),
        "channel": context.channel,
        "correlation_id": context.correlation_id,
        "request_url": context.request_url,
        "attributes": struct_to_dict(context.attributes),
    }


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))


def member_context(events: Sequence[common_pb2.Event], sources: Sequence[int],
                   channel: str = "batch") -> pb.DecisionContext:
    """A batch member's context from their recent events (most recent first), as the job's sources choose:
    LAST_CART puts the items added to the cart since the last purchase in cart_item_ids, RECENTLY_VIEWED and
    LAST_PURCHASE make the last viewed item or the last purchase's first item the anchor (the first source listed
    that has one wins). Each chosen source's items are also in attributes (last_cart, recently_viewed,
    last_purchase), for rules."""
    context = pb.DecisionContext(channel=channel)
    if not sources:
        return context
    cart: list[str] = []
    viewed: list[str] = []
    purchased: list[str] | None = None
    for event in events:
        if event.type == common_pb2.EVENT_TYPE_PURCHASE and purchased is None:
            purchased = [line.item_id for line in event.line_items] or [event.item_id]
        elif event.type == common_pb2.EVENT_TYPE_ADD_TO_CART and purchased is None:
            cart.append(event.item_id)
        elif event.type == common_pb2.EVENT_TYPE_PRODUCT_VIEW:
            viewed.append(event.item_id)
    attributes: dict[str, list[str]] = {}
    anchors = {pb.BATCH_CONTEXT_SOURCE_RECENTLY_VIEWED: ("recently_viewed", _unique(viewed), "product"),
               pb.BATCH_CONTEXT_SOURCE_LAST_PURCHASE: ("last_purchase", _unique(purchased or []), "purchase")}
    for source in sources:
        if source == pb.BATCH_CONTEXT_SOURCE_LAST_CART:
            attributes["last_cart"] = _unique(cart)
            context.cart_item_ids.extend(attributes["last_cart"])
        elif source in anchors:
            name, items, anchor_type = anchors[source]
            attributes[name] = items
            if items and not context.anchor_id:
                context.anchor_id, context.anchor_type = items[0], anchor_type
    context.attributes.update(attributes)
    return context


@dataclass(slots=True)  # not frozen: a batch page makes one per member, and a frozen one costs 5x as much to make
class Individual:
    """Someone to decide for: the unified id (empty when unknown), the profile rules see, the request context."""

    unified_id: str
    profile: dict
    context: pb.DecisionContext
    known_profile: bool = True  # False: an unknown individual whose rules saw an empty profile
    own_context: bool = True    # False (batch): the context every member shares, sent once


@dataclass(slots=True)
class Decided:
    """One point decided for one individual: what to serve, why, and the experiment it counts for."""

    qualification: decision_pb.Qualification
    personalization_id: str
    data: list[dict] = field(default_factory=list)
    diagnostics: list[pb.Diagnostic] = field(default_factory=list)
    trace: pb.RecommendationTrace | None = None
    count: int = 0  # the items a recommendation decision asked for
    messages: list[struct_pb2.Struct] | None = None  # what data holds, as the Structs an answer sends (online)
    # The recommender that served it may read the individual's affinities (its boosters; unknown counts as yes).
    reads_affinities: bool = False

    @property
    def experiment(self) -> decision_pb.ExperimentAssignment | None:
        q = self.qualification
        return q.experiment if q.HasField("experiment") and q.experiment.in_experiment else None


def missing_decision_diagnostics(q: decision_pb.Qualification) -> list[pb.Diagnostic]:
    """Why a point served nothing, or [] when a decision qualified."""
    if q.HasField("decision"):
        return []
    if q.missing_consents or q.authentication_required:
        return []  # said by the consent and authentication diagnostics
    if q.evaluations:
        return [pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_NO_DECISION_QUALIFIED,
                              message="no decision matched and the point has no fallback")]
    return [pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_POINT_NOT_CONFIGURED, message="the point has no decisions")]


def qualification_diagnostics(q: decision_pb.Qualification, individual: Individual,
                              over_quota: bool) -> list[pb.Diagnostic]:
    """Every diagnostic a qualification carries, before personalization."""
    served = "its fallback was served" if q.HasField("decision") else "nothing was served"
    diagnostics = []
    if over_quota:
        diagnostics.append(pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_QUOTA_EXCEEDED,
                                         message="the tenant is over its quota; the fallback was served"))
    if not individual.known_profile:
        diagnostics.append(pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL,
                                         message="the individual is not known; rules saw an empty profile"))
    if q.holdout:
        diagnostics.append(pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_HOLDOUT,
                                         message=f"the individual is in the tenant's holdout; {served}"))
    if q.authentication_required:
        diagnostics.append(pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_AUTHENTICATION_REQUIRED,
                                          message=f"the point serves only known individuals; {served}"))
    if q.missing_consents:
        diagnostics.append(pb.Diagnostic(
            code=pb.DIAGNOSTIC_CODE_CONSENT_MISSING,
            message=f"consent not granted for {', '.join(q.missing_consents)}; {served}"))
    diagnostics.extend(missing_decision_diagnostics(q))
    return diagnostics


def affinity_messages(profile: dict) -> list[rec_pb.Affinity]:
    """The profile's affinities as the recommender's boosters take them."""
    return [rec_pb.Affinity(attribute=dimension, value=str(value), score=score)
            for dimension, values in (profile.get("affinities") or {}).items() for value, score in values.items()]


def item_structs(ranked, attributes: Sequence[str]) -> list[struct_pb2.Struct]:
    """item_rows as Structs, built from the recommender's messages without a dict in between."""
    rows = []
    for r in ranked:
        row = struct_pb2.Struct()
        fields = row.fields
        fields["item_id"].string_value = r.item_id
        fields["score"].number_value = r.score
        fields["source"].string_value = r.source
        found = r.attributes.fields
        for name in attributes:
            if name in found:
                fields[name].CopyFrom(found[name])
            else:
                fields[name].null_value = struct_pb2.NULL_VALUE
        rows.append(row)
    return rows


def recommend_request(individual: Individual, strategy: str, count: int, attributes: Sequence[str],
                      explain: bool) -> rec_pb.RecommendRequest:
    """The Recommend call of one individual's recommendation decision, exactly as a real-time request asks."""
    return rec_pb.RecommendRequest(
        unified_individual_id=individual.unified_id, strategy=strategy, count=count,
        anchor_item_id=individual.context.anchor_id, cart_item_ids=individual.context.cart_item_ids,
        affinities=affinity_messages(individual.profile), diagnostics=explain, item_attributes=attributes)


def item_rows(ranked, attributes: Sequence[str]) -> list[dict]:
    """Items shaped by the point's template as plain dicts: item_id, score, source and the template's item
    attributes (null when the catalog has none)."""
    rows = []
    for r in ranked:
        fields = r.attributes.fields
        rows.append({"item_id": r.item_id, "score": r.score, "source": r.source,
                     **{name: value_to_py(fields[name]) if name in fields else None for name in attributes}})
    return rows


def _qualification(point: decision_pb.Point, batch_q: decision_pb.BatchQualification,
                   decisions: dict[str, decision_pb.Decision]) -> decision_pb.Qualification:
    """A QualifyBatch answer as the Qualification a single Qualify returns."""
    q = decision_pb.Qualification(point=point, evaluations=batch_q.evaluations,
                                  missing_consents=batch_q.missing_consents, holdout=batch_q.holdout)
    if batch_q.decision_id:
        q.decision.CopyFrom(decisions[batch_q.decision_id])
    if batch_q.HasField("experiment"):
        q.experiment.CopyFrom(batch_q.experiment)
    if batch_q.HasField("bandit"):
        q.bandit.CopyFrom(batch_q.bandit)
    return q


def batch_personalization_id(job_id: str, unified_id: str, point_name: str) -> str:
    """The same id each time a batch job decides a member and point, so a redone page logs nothing twice."""
    return hashlib.blake2b(f"{job_id}\x00{unified_id}\x00{point_name}".encode(), digest_size=16).hexdigest()


class DecideForIndividuals:
    """The use case: qualify, then personalize, then log rows, for one individual or many."""

    def __init__(self, stubs: Stubs):
        self.decision = stubs.decision
        self.recommender = stubs.recommender

    async def qualify_one(self, individual: Individual, points: Sequence[decision_pb.PointSelection], *,
                          fallback_only: bool = False) -> tuple[list[decision_pb.Qualification], frozenset[str]]:
        """One individual's qualifications (one Qualify), and the profile keys the points read (empty: unknown)."""
        reply = await self.decision.Qualify(decision_pb.QualifyRequest(
            points=points, profile=struct(individual.profile), context=struct(context_view(individual.context)),
            unified_individual_id=individual.unified_id, fallback_only=fallback_only))
        return list(reply.qualifications), frozenset(reply.profile_keys)

    async def qualify(self, individuals: Sequence[Individual], points: Sequence[decision_pb.PointSelection], *,
                      fallback_only: bool = False, sent_keys: Collection[str] | None = None
                      ) -> tuple[list[list[decision_pb.Qualification]], frozenset[str], frozenset[str] | None]:
        """Per individual, per point: the decision service's qualification (one Qualify for one individual,
        QualifyBatch per 1,000 for many); the profile keys the points read (empty: unknown); and those qualifying
        alone reads (None: unknown). sent_keys: the profile keys to send to QualifyBatch (an earlier answer's third
        value), the whole profile when None."""
        if len(individuals) == 1:
            qualifications, one_keys = await self.qualify_one(individuals[0], points, fallback_only=fallback_only)
            return [qualifications], one_keys, None
        shared = next((i.context for i in individuals if not i.own_context), pb.DecisionContext(channel="batch"))
        shared_struct = struct(context_view(shared))
        names = [p.name for p in points]
        out: list[list[decision_pb.Qualification]] = []
        keys: set[str] = set()
        qualify_keys: set[str] = set()
        for start in range(0, len(individuals), QUALIFY_CHUNK):
            request = decision_pb.QualifyBatchRequest(points=names, context=shared_struct, fallback_only=fallback_only,
                                                      compact=True)
            for i in individuals[start:start + QUALIFY_CHUNK]:  # built in place: nested lists would copy each twice
                sent = request.individuals.add(unified_individual_id=i.unified_id)
                if sent_keys is None:
                    sent.profile.update(i.profile)
                elif sent_keys:
                    sent.profile.update({k: v for k, v in i.profile.items() if k in sent_keys})
                if i.own_context:
                    sent.context.update(context_view(i.context))
            reply = await self.decision.QualifyBatch(request)
            keys.update(reply.profile_keys)
            qualify_keys.update(reply.qualify_profile_keys)
            decisions = {d.decision_id: d for d in reply.decisions}
            # The compact answer names each distinct qualification once: members who qualify alike share one
            # Qualification per point, which nobody changes afterwards.
            alike: dict[tuple[int, int], decision_pb.Qualification] = {}
            for result in reply.results:
                row = []
                for j, index in enumerate(result.qualification_indexes):
                    q = alike.get((j, index))
                    if q is None:
                        q = alike[j, index] = _qualification(reply.points[j], reply.qualifications[index], decisions)
                    row.append(q)
                out.append(row)
        return out, frozenset(keys), frozenset(qualify_keys)

    async def personalize(self, individuals: Sequence[Individual],
                          qualified: Sequence[Sequence[decision_pb.Qualification]], *, over_quota: bool = False,
                          explain: bool = False, ids: Sequence[Sequence[str]] | None = None, messages: bool = False,
                          prefetched: Mapping[tuple[str, int, tuple[str, ...]], Awaitable] | None = None,
                          ) -> list[list[Decided]]:
        """Per individual and point: the content, or the recommender's items, with every diagnostic. ids gives
        the personalization ids (batch: stable ones); a new random id each otherwise. With messages, Decided.messages
        holds the answer's Structs instead of dicts in data (real time). prefetched: Recommend calls already made
        for the (only) individual, by (recommender, count, item attributes)."""
        decided: list[list[Decided]] = []
        contents: dict[str, list[dict]] = {}
        wanted: dict[tuple[str, int], list[tuple[Individual, Decided]]] = {}
        # What a qualification serves and its diagnostics, worked out once per (qualification, known profile):
        # a batch page's members share a few qualifications (QualifyBatch answers alike members alike).
        plans: dict[tuple[int, bool], tuple[list[pb.Diagnostic], str, tuple[str, int] | None]] = {}
        for n, (individual, qualifications) in enumerate(zip(individuals, qualified)):
            row = []
            for j, q in enumerate(qualifications):
                plan = plans.get((id(q), individual.known_profile))
                if plan is None:
                    plan = plans[id(q), individual.known_profile] = self._plan(q, individual, over_quota)
                diagnostics, payload, recommend = plan
                d = Decided(q, ids[n][j] if ids else uuid.uuid4().hex, diagnostics=list(diagnostics))
                if payload == "content":
                    if messages:
                        d.messages = [q.decision.content]
                    else:
                        if q.decision.decision_id not in contents:
                            contents[q.decision.decision_id] = [json_format.MessageToDict(q.decision.content)]
                        d.data = contents[q.decision.decision_id]
                elif recommend is not None:
                    d.count = recommend[1]
                    wanted.setdefault(recommend, []).append((individual, d))
                row.append(d)
            decided.append(row)
        await asyncio.gather(*(self._recommend(strategy, count, group, explain, messages, prefetched or {})
                               for (strategy, count), group in wanted.items()))
        return decided

    @staticmethod
    def _plan(q: decision_pb.Qualification, individual: Individual, over_quota: bool
              ) -> tuple[list[pb.Diagnostic], str, tuple[str, int] | None]:
        """A qualification's diagnostics, its decision's payload kind ("" when none qualified) and, for
        recommendations, (recommender, count)."""
        diagnostics = qualification_diagnostics(q, individual, over_quota)
        if not q.HasField("decision"):
            return diagnostics, "", None
        payload = q.decision.WhichOneof("payload") or ""
        if payload == "content":
            return diagnostics, payload, None
        spec = q.decision.recommendations
        return diagnostics, payload, (spec.recommender, spec.count or DEFAULT_ITEMS)

    async def _recommend(self, strategy: str, count: int, group: list[tuple[Individual, Decided]],
                         explain: bool, messages: bool = False,
                         prefetched: Mapping[tuple[str, int, tuple[str, ...]], Awaitable] | None = None) -> None:
        """Fills the recommendation decisions of one (recommender, count): one RecommendBatch stream for members
        without an anchor or cart, one Recommend each for the others (and for a single individual, with its
        trace), exactly as a real-time request asks."""
        points = {id(d.qualification): d.qualification.point for _, d in group}  # a page's members share a few
        attributes = sorted({a for point in points.values() for a in point.template.item_attributes})
        plain = [(i, d) for i, d in group if not i.context.anchor_id and not i.context.cart_item_ids]
        single = [(i, d) for i, d in group if i.context.anchor_id or i.context.cart_item_ids]
        if len(plain) == 1 and not single:
            single, plain = plain, []
        if plain:
            # A compact stream: each item comes once, in the stream's item table; answers are indexes and scores.
            request = rec_pb.RecommendBatchRequest(strategy=strategy, count=count, item_attributes=attributes,
                                                   compact=True)
            for i, _ in plain:  # built in place: nested lists would copy each message twice
                sent = request.individuals.add(unified_individual_id=i.unified_id)
                if i.profile.get("affinities"):
                    sent.affinities.extend(affinity_messages(i.profile))
            table: list[rec_pb.RecommendedItem] = []
            by_member: dict[str, tuple] = {}
            reads_affinities = False
            async for chunk in open_stream(self.recommender.RecommendBatch, request):
                reads_affinities |= not chunk.affinities_unused
                table.extend(chunk.items)
                for result in chunk.results:
                    by_member[result.unified_individual_id] = (result.item_indexes, result.scores)
            # Each item is shaped once per template's attribute names (a row without its score), not once per member.
            shaped: dict[tuple[str, ...], list] = {}
            for individual, d in plain:
                names = tuple(d.qualification.point.template.item_attributes)
                rows = shaped.get(names)
                if rows is None:
                    rows = shaped[names] = [None] * len(table)
                indexes, scores = by_member.get(individual.unified_id, ((), ()))
                self._fill_indexed(d, table, rows, indexes, scores, messages)
                d.reads_affinities = reads_affinities
        limit = asyncio.Semaphore(RECOMMEND_CONCURRENCY)

        async def one(individual: Individual, d: Decided) -> None:
            attributes = tuple(d.qualification.point.template.item_attributes)
            ready = prefetched.get((strategy, count, attributes)) if prefetched else None
            async with limit:
                ranked = await ready if ready is not None else await self.recommender.Recommend(
                    recommend_request(individual, strategy, count, attributes, explain))
            self._fill(d, ranked.items, messages)
            d.reads_affinities = True  # Recommend does not say
            if explain:
                t = ranked.diagnostics
                d.trace = pb.RecommendationTrace(
                    recommenders=t.recommenders, diversity_removed=t.diversity_removed, model_version=t.model_version,
                    filters=[pb.FilterTrace(filter=f.filter, removed=f.removed) for f in t.filters])

        await asyncio.gather(*(one(i, d) for i, d in single))

    @staticmethod
    def _fill(d: Decided, ranked, messages: bool = False) -> None:
        attributes = d.qualification.point.template.item_attributes
        if messages:
            d.messages = item_structs(ranked, attributes)
        else:
            d.data = item_rows(ranked, attributes)
        DecideForIndividuals._count(d, len(ranked))

    @staticmethod
    def _fill_indexed(d: Decided, table: Sequence[rec_pb.RecommendedItem], rows: list, indexes: Sequence[int],
                      scores: Sequence[float], messages: bool = False) -> None:
        """_fill from a compact answer: item indexes into the stream's table, and their scores. rows keeps each
        table item shaped by the point's template (without its score), for the members after."""
        if messages:
            ranked = []
            for index, score in zip(indexes, scores):
                item = rec_pb.RecommendedItem()
                item.CopyFrom(table[index])
                item.score = score
                ranked.append(item)
            d.messages = item_structs(ranked, d.qualification.point.template.item_attributes)
        else:
            data = []
            for index, score in zip(indexes, scores):
                row = rows[index]
                if row is None:
                    row = rows[index] = item_rows([table[index]], d.qualification.point.template.item_attributes)[0]
                data.append({**row, "score": score})
            d.data = data
        DecideForIndividuals._count(d, len(indexes))

    @staticmethod
    def _count(d: Decided, found: int) -> None:
        if found < d.count:
            d.diagnostics.append(pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_FEWER_ITEMS_THAN_REQUESTED,
                                               message=f"{found} of {d.count} items available"))


def batch_log_groups(decided: Sequence[tuple[Individual, Decided]], *, request_id: str,
                     log_time: timestamp_pb2.Timestamp, batch_job_id: str) -> list[decision_pb.DecisionLogGroup]:
    """The log rows of a batch page's decided points, grouped: members who share a qualification and a context
    share every field of log_entry's row but their personalization id, individual and items, which the group sends
    once (most members of a page qualify alike)."""
    groups: dict[tuple[int, int], decision_pb.DecisionLogGroup] = {}
    for individual, d in decided:
        key = (id(d.qualification), id(individual.context))  # both outlive the loop, so ids stay theirs
        group = groups.get(key)
        if group is None:
            group = groups[key] = decision_pb.DecisionLogGroup(shared=log_entry(
                individual, d, struct_pb2.Struct(), request_id=request_id, stage_ms={}, log_time=log_time,
                batch_job_id=batch_job_id))
            group.shared.ClearField("personalization_id")
            group.shared.ClearField("unified_individual_id")
            group.shared.ClearField("item_ids")
        group.rows.add(personalization_id=d.personalization_id, unified_individual_id=individual.unified_id,
                       item_ids=[row["item_id"] for row in d.data if "item_id" in row])
    return list(groups.values())


def log_entry(individual: Individual, d: Decided, served: struct_pb2.Struct, *, request_id: str,
              stage_ms: dict[str, float], log_time: timestamp_pb2.Timestamp,
              batch_job_id: str = "") -> decision_pb.DecisionLogEntry:
    """The decision-log row of one decided point (real time, or a batch job's when batch_job_id is set: then
    served is left empty and the item ids are sent instead, since the job's output row holds what was served)."""
    q = d.qualification
    experiment = d.experiment
    context = individual.context
    return decision_pb.DecisionLogEntry(
        personalization_id=d.personalization_id, request_id=request_id, point_id=q.point.point_id,
        point_name=q.point.name, decision_id=q.decision.decision_id, unified_individual_id=individual.unified_id,
        channel=context.channel, correlation_id=context.correlation_id, anchor_id=context.anchor_id, served=served,
        stage_ms=stage_ms, log_time=log_time, experiment_id=experiment.experiment_id if experiment else "",
        cohort_id=experiment.cohort_id if experiment else "", batch_job_id=batch_job_id, holdout=q.holdout,
        item_ids=[row["item_id"] for row in d.data if "item_id" in row] if batch_job_id else (),
        # An offer the point's bandit chose is a trial of it (the holdout's default is not).
        bandit_trial=q.HasField("bandit") and not q.bandit.holdout, bandit_segment=q.bandit.segment)
