"""ProfileGraphService over gRPC: translates protos to domain values and back, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from personalization.common.v1 import common_pb2
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph import domain, reconciliation
from services.profile_graph.as_of import ProfilesAsOf
from services.profile_graph.domain import (
    EVENT_RETURN,
    AffinityConfig,
    AttributeRecon,
    Condition,
    ConsentState,
    InsightDef,
    Item,
    NewEvent,
    Profile,
    ReconRule,
    SegmentDef,
)
from services.profile_graph.postgres_privacy import PostgresPrivacy
from services.profile_graph.service import ProfileGraph
from shared import contract
from shared.context import current_tenant
from shared.privacy import document, validate_ids
from shared.structs import struct_to_dict


def _dict(message: struct_pb2.Struct) -> dict:
    return struct_to_dict(message)


def _struct(values: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _timestamp(value: datetime) -> Timestamp:
    """A datetime (naive ones are UTC) as a Timestamp: by its difference from the epoch, several times faster than
    Timestamp.FromDatetime (a batch's profiles and segment pages carry one or more each)."""
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)) - _EPOCH
    return Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def _duration(value: timedelta) -> Duration:
    out = Duration()
    out.FromTimedelta(value)
    return out


def _value(v: struct_pb2.Value) -> object:
    """A condition's operand: a scalar as it is; a Struct or list as an empty one (conditions compare scalars, and
    validation refuses both without converting them, which a NaN inside would make fail)."""
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return {}
    if kind == "list_value":
        return []
    return getattr(v, kind) if kind and kind != "null_value" else None


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_new_event(ie: pb.IndividualEvent) -> NewEvent:
    """The domain view of one request event; the serialized Event is kept for an exact round trip."""
    e = ie.event
    # One pass over each repeated field, empty ones skipped: reading protobuf fields is what costs here (this runs
    # for every appended event).
    lines = tuple((li.item_id, li.quantity, li.unit_price) for li in e.line_items) if e.line_items else ()
    if lines and e.type == EVENT_RETURN:
        # What a return gives back counts negative: its revenue and quantity (and each line's) net out purchases.
        lines = tuple((item_id, -abs(q), p) for item_id, q, p in lines)
    when = None
    if e.HasField("event_time"):
        t = e.event_time  # as Timestamp.ToDatetime does (nanos truncated to microseconds), without its overhead
        when = _EPOCH + timedelta(seconds=t.seconds, microseconds=t.nanos // 1000)
    return NewEvent(
        ie.unified_individual_id, e.message_id, e.type, when, e.SerializeToString(),
        _dict(e.attributes) if e.attributes.fields else {},
        _dict(e.properties) if e.properties.fields else None,
        sum(q * p for _, q, p in lines) if lines else 0.0,
        sum(q for _, q, _ in lines) if lines else 0.0,
        e.item_id, e.name, e.source, lines,
        tuple((c.purpose, c.status) for c in e.consents) if e.consents else (),
        tuple((o.type, o.object_id, _dict(o.attributes)) for o in e.profile_objects) if e.profile_objects else (),
        tuple(reconciliation.identity_key(i.type, i.value) for i in e.identities),
    )


def to_conditions(conditions) -> tuple[Condition, ...]:
    return tuple(Condition(c.field, c.operator, _value(c.value)) for c in conditions)


def to_condition_pbs(conditions) -> list[pb.Condition]:
    out = []
    for c in conditions:
        value = struct_pb2.Value()
        json_format.ParseDict(c.value, value)
        out.append(pb.Condition(field=c.field, operator=c.op, value=value))
    return out


def to_insight_def(i: pb.Insight) -> InsightDef:
    return InsightDef(i.name, i.description, i.aggregate, i.field, i.event_type,
                      i.window.ToTimedelta() if i.HasField("window") else None,
                      to_conditions(i.conditions), i.dimension, i.subject or domain.SUBJECT_INDIVIDUAL)


def to_insight_pb(d: InsightDef) -> pb.Insight:
    out = pb.Insight(name=d.name, description=d.description, aggregate=d.aggregate, field=d.field,
                     event_type=d.event_type, conditions=to_condition_pbs(d.conditions), dimension=d.dimension,
                     subject=d.subject)
    if d.window:
        out.window.CopyFrom(_duration(d.window))
    return out


def to_segment_pb(s: SegmentDef) -> pb.Segment:
    return pb.Segment(name=s.name, description=s.description, rule=s.rule, member_count=s.member_count)


def to_item_pb(i: Item) -> pb.Item:
    return pb.Item(item_id=i.item_id, name=i.name, attributes=_struct(i.attributes), insights=i.insights)


def to_consent_pb(c: ConsentState) -> pb.ConsentState:
    return pb.ConsentState(purpose=c.purpose, status=c.status, update_time=_timestamp(c.updated_at), source=c.source)


def to_affinity_config(c: pb.AffinityConfig) -> AffinityConfig:
    return AffinityConfig(tuple(c.dimensions), tuple((w.event_type, w.weight) for w in c.weights),
                          c.half_life.ToTimedelta())


def to_affinity_config_pb(c: AffinityConfig) -> pb.AffinityConfig:
    return pb.AffinityConfig(dimensions=list(c.dimensions),
                             weights=[pb.EventWeight(event_type=t, weight=w) for t, w in c.weights],
                             half_life=_duration(c.half_life))


def _recon_part(a: pb.AttributeReconciliation) -> AttributeRecon:
    return AttributeRecon(a.policy, tuple(a.source_priority), a.include_empty_values)


def _recon_part_pb(a: AttributeRecon) -> pb.AttributeReconciliation:
    return pb.AttributeReconciliation(policy=a.policy, source_priority=list(a.sources),
                                      include_empty_values=a.include_empty)


def to_recon_rule(r: pb.ReconciliationRule) -> ReconRule:
    return ReconRule(r.object or "individual", _recon_part(r.default_reconciliation),
                     tuple(sorted((k, _recon_part(a)) for k, a in r.attribute_overrides.items())))


def to_recon_rule_pb(r: ReconRule) -> pb.ReconciliationRule:
    return pb.ReconciliationRule(object=r.object, default_reconciliation=_recon_part_pb(r.default),
                                 attribute_overrides={k: _recon_part_pb(a) for k, a in r.overrides})


def to_profile_pb(p: Profile) -> pb.Profile:
    # Only the parts read are set: a batch job reads one or two parts of each profile, and handing the constructor
    # empty lists and maps cost more than the message itself.
    profile = pb.Profile(unified_individual_id=p.individual_id)
    if p.event_payloads:
        profile.events.extend([common_pb2.Event.FromString(payload) for payload in p.event_payloads])
    if p.insights:
        profile.insights.update(p.insights)
    if p.segments:
        profile.segments.extend(p.segments)
    for name, values in p.grouped_insights.items():
        profile.grouped_insights[name].values.update(values)
    if p.objects:
        profile.profile_objects.extend([pb.StoredProfileObject(
            object=common_pb2.ProfileObject(type=o.type, object_id=o.object_id, attributes=_struct(o.attributes)),
            update_time=_timestamp(o.updated_at), source=o.source) for o in p.objects])
    if p.affinities:
        profile.affinities.extend([pb.Affinity(dimension=a.dimension, value=a.value, score=a.score)
                                   for a in p.affinities])
    if p.consents:
        profile.consents.extend([to_consent_pb(c) for c in p.consents])
    if p.attributes:
        profile.attributes.CopyFrom(_struct(p.attributes))
    if p.update_time is not None:
        profile.update_time.CopyFrom(_timestamp(p.update_time))
    return profile


class ProfileGraphServicer(pb_grpc.ProfileGraphServiceServicer):
    """The gRPC face of the ProfileGraph use cases."""

    def __init__(self, graph: ProfileGraph, privacy: PostgresPrivacy,
                 as_of: ProfilesAsOf | None = None) -> None:
        self.graph = graph
        self.privacy = privacy
        self.as_of = as_of

    async def AppendEvents(self, request: pb.AppendEventsRequest,
                           context: grpc.aio.ServicerContext) -> pb.AppendEventsResponse:
        problems = contract.violations(request)
        if problems:
            contract.raise_merged(problems, lambda: domain.validate_events([to_new_event(e) for e in request.events]))
        outcomes = await self.graph.appends.append_events(current_tenant(), [to_new_event(e) for e in request.events])
        return pb.AppendEventsResponse(results=[
            pb.AppendResult(message_id=o.message_id, duplicate=o.duplicate, entered_segments=o.entered,
                            exited_segments=o.exited)
            for o in outcomes
        ])

    async def GetProfile(self, request: pb.GetProfileRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetProfileResponse:
        p = await self.graph.reads.get_profile(current_tenant(), request.unified_individual_id,
                                         list(request.read_mask.paths), request.event_limit, request.affinity_limit)
        reply = pb.GetProfileResponse(profile=to_profile_pb(p))
        contract.fit_profile(reply.profile)
        return reply

    async def GetProfiles(self, request: pb.GetProfilesRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetProfilesResponse:
        profiles = await self.graph.reads.get_profiles(current_tenant(), list(request.unified_individual_ids),
                                                 list(request.read_mask.paths), request.event_limit,
                                                 request.affinity_limit)
        reply = pb.GetProfilesResponse(profiles=[to_profile_pb(p) for p in profiles])
        if reply.profiles:
            contract.fit_profiles(reply.profiles)
        return reply


    async def ReassignIndividual(self, request: pb.ReassignIndividualRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ReassignIndividualResponse:
        contract.check(request)
        moved = await self.graph.reassignment.reassign(
            current_tenant(), list(request.from_individual_ids), request.to_individual_id,
            [(i.type, i.value) for i in request.only_events_with_identities] or None)
        return pb.ReassignIndividualResponse(moved_event_count=moved)

    async def UpsertItems(self, request: pb.UpsertItemsRequest,
                          context: grpc.aio.ServicerContext) -> pb.UpsertItemsResponse:
        contract.check(request)
        items = [Item(i.item_id, i.name, _dict(i.attributes)) for i in request.items]
        return pb.UpsertItemsResponse(upserted_count=await self.graph.catalog.upsert_items(current_tenant(), items))

    async def GetItems(self, request: pb.GetItemsRequest, context: grpc.aio.ServicerContext) -> pb.GetItemsResponse:
        items = await self.graph.catalog.get_items(current_tenant(), list(request.item_ids))
        return pb.GetItemsResponse(items=[to_item_pb(i) for i in items])

    async def ListItems(self, request: pb.ListItemsRequest, context: grpc.aio.ServicerContext) -> pb.ListItemsResponse:
        rows, token = await self.graph.catalog.list_items(current_tenant(), list(to_conditions(request.filters)),
                                                  request.page_size, request.page_token)
        return pb.ListItemsResponse(items=[to_item_pb(i) for i in rows], next_page_token=token)

    async def UpsertInsight(self, request: pb.UpsertInsightRequest,
                            context: grpc.aio.ServicerContext) -> pb.UpsertInsightResponse:
        d = to_insight_def(request.insight) if request.HasField("insight") else None
        stored = await self.graph.insights.upsert_insight(current_tenant(), d)
        return pb.UpsertInsightResponse(insight=to_insight_pb(stored))

    async def ListInsights(self, request: pb.ListInsightsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListInsightsResponse:
        rows, token = await self.graph.insights.list_insights(current_tenant(), request.page_size, request.page_token)
        return pb.ListInsightsResponse(insights=[to_insight_pb(d) for d in rows], next_page_token=token)

    async def UpsertSegment(self, request: pb.UpsertSegmentRequest,
                            context: grpc.aio.ServicerContext) -> pb.UpsertSegmentResponse:
        s = request.segment
        d = SegmentDef(s.name, s.description, s.rule) if request.HasField("segment") else None
        stored = await self.graph.segments.upsert_segment(current_tenant(), d)
        return pb.UpsertSegmentResponse(segment=to_segment_pb(stored))

    async def ListSegments(self, request: pb.ListSegmentsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListSegmentsResponse:
        rows, token = await self.graph.segments.list_segments(current_tenant(), request.page_size, request.page_token)
        return pb.ListSegmentsResponse(segments=[to_segment_pb(s) for s in rows], next_page_token=token)

    async def ListSegmentMembers(self, request: pb.ListSegmentMembersRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ListSegmentMembersResponse:
        rows, token = await self.graph.segments.list_members(current_tenant(), request.segment, request.page_size,
                                                    request.page_token)
        if request.ids_only:
            return pb.ListSegmentMembersResponse(unified_individual_ids=[m.individual_id for m in rows],
                                                 next_page_token=token)
        return pb.ListSegmentMembersResponse(
            members=[pb.SegmentMember(unified_individual_id=m.individual_id, enter_time=_timestamp(m.enter_time))
                     for m in rows],
            next_page_token=token,
        )

    async def ListMembershipChanges(self, request: pb.ListMembershipChangesRequest,
                                    context: grpc.aio.ServicerContext) -> pb.ListMembershipChangesResponse:
        rows, token = await self.graph.segments.list_changes(current_tenant(), request.segment, request.page_size,
                                                    request.page_token)
        return pb.ListMembershipChangesResponse(
            changes=[pb.MembershipChange(segment=c.segment, unified_individual_id=c.individual_id, entered=c.entered,
                                         change_time=_timestamp(c.change_time)) for c in rows],
            next_page_token=token)

    async def RecomputeAll(self, request: pb.RecomputeAllRequest,
                           context: grpc.aio.ServicerContext) -> pb.RecomputeAllResponse:
        individuals, items = await self.graph.recompute.recompute_all(current_tenant())
        return pb.RecomputeAllResponse(individual_count=individuals, item_count=items)

    async def GetAffinities(self, request: pb.GetAffinitiesRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetAffinitiesResponse:
        rows = await self.graph.reads.get_affinities(current_tenant(), request.unified_individual_id, request.limit,
                                               request.dimension)
        return pb.GetAffinitiesResponse(affinities=[
            pb.Affinity(dimension=a.dimension, value=a.value, score=a.score) for a in rows])

    async def SetAffinityConfig(self, request: pb.SetAffinityConfigRequest,
                                context: grpc.aio.ServicerContext) -> pb.SetAffinityConfigResponse:
        c = to_affinity_config(request.config) if request.HasField("config") else None
        return pb.SetAffinityConfigResponse(
            config=to_affinity_config_pb(await self.graph.configuration.set_affinity_config(current_tenant(), c)))

    async def GetAffinityConfig(self, request: pb.GetAffinityConfigRequest,
                                context: grpc.aio.ServicerContext) -> pb.GetAffinityConfigResponse:
        return pb.GetAffinityConfigResponse(
            config=to_affinity_config_pb(await self.graph.configuration.get_affinity_config(current_tenant())))

    async def SetConsents(self, request: pb.SetConsentsRequest,
                          context: grpc.aio.ServicerContext) -> pb.SetConsentsResponse:
        rows = await self.graph.configuration.set_consents(current_tenant(), request.unified_individual_id,
                                             [(c.purpose, c.status) for c in request.consents])
        return pb.SetConsentsResponse(consents=[to_consent_pb(c) for c in rows])

    async def SetReconciliationRule(self, request: pb.SetReconciliationRuleRequest,
                                    context: grpc.aio.ServicerContext) -> pb.SetReconciliationRuleResponse:
        r = to_recon_rule(request.rule) if request.HasField("rule") else None
        return pb.SetReconciliationRuleResponse(
            rule=to_recon_rule_pb(await self.graph.configuration.set_recon_rule(current_tenant(), r)))

    async def GetReconciliationRule(self, request: pb.GetReconciliationRuleRequest,
                                    context: grpc.aio.ServicerContext) -> pb.GetReconciliationRuleResponse:
        return pb.GetReconciliationRuleResponse(
            rule=to_recon_rule_pb(await self.graph.configuration.get_recon_rule(current_tenant(), request.object)))

    async def WatchEvents(self, request: pb.WatchEventsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchEventsResponse]:
        stream = self.graph.stream.watch_events(current_tenant(), request.unified_individual_id, request.replay_count)
        async for payload, at in stream:
            yield pb.WatchEventsResponse(event=common_pb2.Event.FromString(payload), append_time=_timestamp(at))

    async def WatchProfileChanges(self, request: pb.WatchProfileChangesRequest, context: grpc.aio.ServicerContext
                                  ) -> AsyncIterator[pb.WatchProfileChangesResponse]:
        async for live, ids, everything in self.graph.stream.watch_changes(current_tenant()):
            yield pb.WatchProfileChangesResponse(live=live, unified_individual_ids=ids, all_changed=everything)

    async def EraseIndividual(self, request: pb.EraseIndividualRequest,
                              context: grpc.aio.ServicerContext) -> pb.EraseIndividualResponse:
        erased, message_ids = await self.privacy.erase(current_tenant(),
                                                       validate_ids(list(request.unified_individual_ids)))
        return pb.EraseIndividualResponse(erased_rows=erased, message_ids=message_ids)

    async def ExportIndividual(self, request: pb.ExportIndividualRequest,
                               context: grpc.aio.ServicerContext) -> pb.ExportIndividualResponse:
        tables = await self.privacy.export(current_tenant(), validate_ids(list(request.unified_individual_ids)))
        return pb.ExportIndividualResponse(json=document(tables))

    async def GetProfilesAsOf(self, request: pb.GetProfilesAsOfRequest,
                              context: grpc.aio.ServicerContext) -> pb.GetProfilesAsOfResponse:
        assert self.as_of is not None
        contract.check(request)
        profiles = await self.as_of.read(current_tenant(), [
            (e.unified_individual_id, e.as_of.ToDatetime(tzinfo=timezone.utc) if e.HasField("as_of") else None)
            for e in request.entries], request.event_limit)
        reply = pb.GetProfilesAsOfResponse(profiles=[to_profile_pb(p) for p in profiles])
        contract.fit_profiles(reply.profiles)
        return reply
