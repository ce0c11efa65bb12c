"""Proto <-> domain translation of the DecisionService; the rules live in service.py."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timezone
from typing import Any

from google.protobuf import struct_pb2

from personalization.decision.v1 import decision_service_pb2 as pb
from personalization.decision.v1 import decision_service_pb2_grpc as pb_grpc
from services.decision.service import Decision, DecisionService, LogEntry, Point, Template, TemplateField
from shared.context import current_tenant

_POINT_TYPES = {pb.POINT_TYPE_MANUAL_CONTENT: "MANUAL_CONTENT", pb.POINT_TYPE_RECOMMENDATIONS: "RECOMMENDATIONS"}
_POINT_TYPES_BACK = {v: k for k, v in _POINT_TYPES.items()}
_FIELD_TYPES = {
    pb.FIELD_TYPE_STRING: "STRING",
    pb.FIELD_TYPE_NUMBER: "NUMBER",
    pb.FIELD_TYPE_BOOL: "BOOL",
    pb.FIELD_TYPE_STRING_LIST: "STRING_LIST",
}
_FIELD_TYPES_BACK = {v: k for k, v in _FIELD_TYPES.items()}


def value_to_py(value: struct_pb2.Value) -> Any:
    """A google.protobuf.Value as a plain Python value (numbers are floats, as in JSON)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_py(item) for item in value.list_value.values]
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A google.protobuf.Struct as a plain dict."""
    return {key: value_to_py(value) for key, value in struct.fields.items()}


class StructView(Mapping):
    """A read-only dict view of a Struct that converts each top-level key once, on first read.

    Qualify hands rules only the keys they read, so a profile's 200 events are never converted for a
    rule that looks only at segments.
    """

    def __init__(self, struct: struct_pb2.Struct):
        self._fields = struct.fields
        self._converted: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._converted[key]
        except KeyError:
            if key not in self._fields:
                raise
            value = self._converted[key] = value_to_py(self._fields[key])
            return value

    def __contains__(self, key: object) -> bool:
        return key in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def point_from_proto(message: pb.Point) -> Point:
    return Point(
        point_id=message.point_id,
        name=message.name,
        description=message.description,
        type=_POINT_TYPES.get(message.type, "UNSPECIFIED"),
        template=Template(
            fields=tuple(
                TemplateField(f.name, _FIELD_TYPES.get(f.type, "UNSPECIFIED"), f.required)
                for f in message.template.fields
            ),
            item_attributes=tuple(message.template.item_attributes),
        ),
    )


def point_to_proto(point: Point) -> pb.Point:
    return pb.Point(
        point_id=point.point_id,
        name=point.name,
        description=point.description,
        type=_POINT_TYPES_BACK[point.type],
        template=pb.ResponseTemplate(
            fields=[
                pb.TemplateField(name=f.name, type=_FIELD_TYPES_BACK[f.type], required=f.required)
                for f in point.template.fields
            ],
            item_attributes=point.template.item_attributes,
        ),
    )


def decision_from_proto(message: pb.Decision) -> Decision:
    payload = message.WhichOneof("payload")
    return Decision(
        decision_id=message.decision_id,
        point_name=message.point_name,
        name=message.name,
        priority=message.priority,
        rule=message.rule,
        fallback=message.fallback,
        content=struct_to_dict(message.content) if payload == "content" else None,
        recommender=message.recommendations.recommender if payload == "recommendations" else "",
        count=message.recommendations.count if payload == "recommendations" else 0,
    )


def decision_to_proto(decision: Decision) -> pb.Decision:
    message = pb.Decision(
        decision_id=decision.decision_id,
        point_name=decision.point_name,
        name=decision.name,
        priority=decision.priority,
        rule=decision.rule,
        fallback=decision.fallback,
    )
    if decision.content is not None:
        message.content.update(decision.content)
        if not decision.content:
            message.content.SetInParent()
    else:
        message.recommendations.recommender = decision.recommender
        message.recommendations.count = decision.count
    return message


def log_from_proto(message: pb.DecisionLogEntry) -> LogEntry:
    return LogEntry(
        personalization_id=message.personalization_id,
        request_id=message.request_id,
        point_id=message.point_id,
        point_name=message.point_name,
        decision_id=message.decision_id,
        unified_individual_id=message.unified_individual_id,
        channel=message.channel,
        correlation_id=message.correlation_id,
        anchor_id=message.anchor_id,
        served=struct_to_dict(message.served),
        stage_ms=dict(message.stage_ms),
        log_time=message.log_time.ToDatetime(tzinfo=timezone.utc) if message.HasField("log_time") else None,
    )


def log_to_proto(entry: LogEntry) -> pb.DecisionLogEntry:
    message = pb.DecisionLogEntry(
        personalization_id=entry.personalization_id,
        request_id=entry.request_id,
        point_id=entry.point_id,
        point_name=entry.point_name,
        decision_id=entry.decision_id,
        unified_individual_id=entry.unified_individual_id,
        channel=entry.channel,
        correlation_id=entry.correlation_id,
        anchor_id=entry.anchor_id,
        stage_ms=entry.stage_ms,
    )
    message.served.update(entry.served)
    if entry.log_time is not None:
        message.log_time.FromDatetime(entry.log_time)
    return message


class _ProtoMemo:
    """Proto messages of the immutable cached points and decisions, built once instead of on every Qualify."""

    def __init__(self, build, limit: int = 20_000):
        self.build = build
        self.limit = limit
        self._items: dict[int, tuple[object, Any]] = {}

    def __call__(self, obj: object) -> Any:
        hit = self._items.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        if len(self._items) >= self.limit:
            self._items.clear()
        message = self.build(obj)
        self._items[id(obj)] = (obj, message)  # holding obj keeps its id from being reused while cached
        return message


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    """Translates DecisionService RPCs to the use cases."""

    def __init__(self, service: DecisionService):
        self.service = service
        self._point_proto = _ProtoMemo(point_to_proto)
        self._decision_proto = _ProtoMemo(decision_to_proto)

    async def UpsertPoint(self, request: pb.UpsertPointRequest, context) -> pb.UpsertPointResponse:
        stored = await self.service.upsert_point(current_tenant(), point_from_proto(request.point))
        return pb.UpsertPointResponse(point=point_to_proto(stored))

    async def ListPoints(self, request: pb.ListPointsRequest, context) -> pb.ListPointsResponse:
        points, token = await self.service.list_points(current_tenant(), request.page_size, request.page_token)
        return pb.ListPointsResponse(points=[point_to_proto(p) for p in points], next_page_token=token)

    async def UpsertDecision(self, request: pb.UpsertDecisionRequest, context) -> pb.UpsertDecisionResponse:
        stored = await self.service.upsert_decision(current_tenant(), decision_from_proto(request.decision))
        return pb.UpsertDecisionResponse(decision=decision_to_proto(stored))

    async def ListDecisions(self, request: pb.ListDecisionsRequest, context) -> pb.ListDecisionsResponse:
        decisions, token = await self.service.list_decisions(
            current_tenant(), request.point_name, request.page_size, request.page_token
        )
        return pb.ListDecisionsResponse(decisions=[decision_to_proto(d) for d in decisions], next_page_token=token)

    async def Qualify(self, request: pb.QualifyRequest, context) -> pb.QualifyResponse:
        qualifications = await self.service.qualify(
            current_tenant(),
            [(p.name, p.decision_id) for p in request.points],
            StructView(request.profile),
            StructView(request.context),
        )
        response = pb.QualifyResponse()
        for q in qualifications:
            out = response.qualifications.add()
            out.point.CopyFrom(self._point_proto(q.point))
            if q.decision is not None:
                out.decision.CopyFrom(self._decision_proto(q.decision))
            for e in q.evaluations:
                out.evaluations.add(
                    decision_id=e.decision_id, decision_name=e.decision_name, matched=e.matched, error=e.error
                )
        return response

    async def LogDecisions(self, request: pb.LogDecisionsRequest, context) -> pb.LogDecisionsResponse:
        logged = await self.service.log_decisions(current_tenant(), [log_from_proto(e) for e in request.entries])
        return pb.LogDecisionsResponse(logged_count=logged)

    async def ListDecisionLog(self, request: pb.ListDecisionLogRequest, context) -> pb.ListDecisionLogResponse:
        entries, token = await self.service.list_log(
            current_tenant(), request.unified_individual_id, request.page_size, request.page_token
        )
        return pb.ListDecisionLogResponse(entries=[log_to_proto(e) for e in entries], next_page_token=token)
