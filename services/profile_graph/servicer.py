"""ProfileGraphService over gRPC: translates protos to domain values and back, nothing more."""

from __future__ import annotations

from datetime import timezone

from google.protobuf import json_format, struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from personalization.common.v1 import common_pb2
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pb_grpc
from services.profile_graph.domain import InsightDef, Item, NewEvent, SegmentDef
from services.profile_graph.service import ProfileGraph
from shared.context import current_tenant


def _dict(message: struct_pb2.Struct) -> dict:
    return json_format.MessageToDict(message)


def _struct(values: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def _timestamp(value) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def to_new_event(ie: pb.IndividualEvent) -> NewEvent:
    """The domain view of one request event; the serialized Event is kept for an exact round trip."""
    e = ie.event
    return NewEvent(
        individual_id=ie.unified_individual_id,
        message_id=e.message_id,
        type=e.type,
        event_time=e.event_time.ToDatetime(tzinfo=timezone.utc) if e.HasField("event_time") else None,
        payload=e.SerializeToString(),
        attributes=_dict(e.attributes) if e.attributes.fields else {},
        properties=_dict(e.properties) if e.properties.fields else None,
        revenue=sum(li.quantity * li.unit_price for li in e.line_items),
        quantity=sum(li.quantity for li in e.line_items),
        item_id=e.item_id,
    )


def to_insight_def(i: pb.Insight) -> InsightDef:
    return InsightDef(i.name, i.description, i.aggregate, i.field, i.event_type, i.window.ToTimedelta())


def to_insight_pb(d: InsightDef) -> pb.Insight:
    window = Duration()
    window.FromTimedelta(d.window)
    return pb.Insight(name=d.name, description=d.description, aggregate=d.aggregate, field=d.field,
                      event_type=d.event_type, window=window)


def to_segment_pb(s: SegmentDef) -> pb.Segment:
    return pb.Segment(name=s.name, description=s.description, rule=s.rule, member_count=s.member_count)


class ProfileGraphServicer(pb_grpc.ProfileGraphServiceServicer):
    """The gRPC face of the ProfileGraph use cases."""

    def __init__(self, graph: ProfileGraph):
        self.graph = graph

    async def AppendEvents(self, request, context):
        outcomes = await self.graph.append_events(current_tenant(), [to_new_event(e) for e in request.events])
        return pb.AppendEventsResponse(results=[
            pb.AppendResult(message_id=o.message_id, duplicate=o.duplicate, entered_segments=o.entered,
                            exited_segments=o.exited)
            for o in outcomes
        ])

    async def GetProfile(self, request, context):
        p = await self.graph.get_profile(current_tenant(), request.unified_individual_id,
                                         list(request.read_mask.paths), request.event_limit)
        profile = pb.Profile(
            unified_individual_id=p.individual_id,
            events=[common_pb2.Event.FromString(payload) for payload in p.event_payloads],
            insights=p.insights,
            segments=p.segments,
        )
        if p.attributes:
            profile.attributes.CopyFrom(_struct(p.attributes))
        if p.update_time is not None:
            profile.update_time.CopyFrom(_timestamp(p.update_time))
        return pb.GetProfileResponse(profile=profile)

    async def ReassignIndividual(self, request, context):
        moved = await self.graph.reassign(current_tenant(), list(request.from_individual_ids),
                                          request.to_individual_id)
        return pb.ReassignIndividualResponse(moved_event_count=moved)

    async def UpsertItems(self, request, context):
        items = [Item(i.item_id, i.name, _dict(i.attributes)) for i in request.items]
        return pb.UpsertItemsResponse(upserted_count=await self.graph.upsert_items(current_tenant(), items))

    async def GetItems(self, request, context):
        items = await self.graph.get_items(current_tenant(), list(request.item_ids))
        return pb.GetItemsResponse(items=[
            pb.Item(item_id=i.item_id, name=i.name, attributes=_struct(i.attributes)) for i in items
        ])

    async def UpsertInsight(self, request, context):
        d = to_insight_def(request.insight) if request.HasField("insight") else None
        stored = await self.graph.upsert_insight(current_tenant(), d)
        return pb.UpsertInsightResponse(insight=to_insight_pb(stored))

    async def ListInsights(self, request, context):
        rows, token = await self.graph.list_insights(current_tenant(), request.page_size, request.page_token)
        return pb.ListInsightsResponse(insights=[to_insight_pb(d) for d in rows], next_page_token=token)

    async def UpsertSegment(self, request, context):
        s = request.segment
        d = SegmentDef(s.name, s.description, s.rule) if request.HasField("segment") else None
        stored = await self.graph.upsert_segment(current_tenant(), d)
        return pb.UpsertSegmentResponse(segment=to_segment_pb(stored))

    async def ListSegments(self, request, context):
        rows, token = await self.graph.list_segments(current_tenant(), request.page_size, request.page_token)
        return pb.ListSegmentsResponse(segments=[to_segment_pb(s) for s in rows], next_page_token=token)

    async def ListSegmentMembers(self, request, context):
        rows, token = await self.graph.list_members(current_tenant(), request.segment, request.page_size,
                                                    request.page_token)
        return pb.ListSegmentMembersResponse(
            members=[pb.SegmentMember(unified_individual_id=m.individual_id, enter_time=_timestamp(m.enter_time))
                     for m in rows],
            next_page_token=token,
        )
