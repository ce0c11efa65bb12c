"""GetRecommendations: items for an individual, around an item or for a cart, straight from the recommender.

It follows the decide path's rules (services/gateway/decide.py): the individual is resolved the same way (unknown
ones get a non-personal ranking and a diagnostic), one request counts one decision credit, a tenant over its
credits or request rate gets a non-personal ranking marked QUOTA_EXCEEDED, and the answer is written to the
decision log (point name `recommendations/<recommender>`) unless TEST_MODE.
"""

from __future__ import annotations

import re
import time
import uuid

from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from services.gateway.decide import Decider, served, shape_items
from services.gateway.ingest import IDENTITY_TYPE, MAX_ID_LENGTH
from services.gateway.personalize import affinity_messages, item_rows, profile_view
from shared import context as ctx
from shared.errors import Violations

MAX_COUNT = 24
MAX_CART = 100
MAX_EXCLUDED = 1_000
MAX_ATTRIBUTES = 50
RECOMMENDER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
LOG_POINT_PREFIX = "recommendations/"
AFFINITIES_MASK = field_mask_pb2.FieldMask(paths=["affinities"])
AFFINITY_MESSAGES = ("affinities", "as recommender messages")  # the profile cache's key of what this reads


def _ids(v: Violations, field: str, ids, limit: int) -> None:
    if len(ids) > limit:
        v.add(field, f"at most {limit:,} item ids")
    for i, item_id in enumerate(ids):
        if not item_id.strip():
            v.add(f"{field}[{i}]", "must not be empty")
        elif len(item_id) > MAX_ID_LENGTH:
            v.add(f"{field}[{i}]", f"must be at most {MAX_ID_LENGTH} characters")


def _attributes(row: dict, names: list[str]) -> struct_pb2.Struct:
    attributes = struct_pb2.Struct()
    attributes.update({name: row[name] for name in names})
    return attributes


def validate(request: pb.GetRecommendationsRequest) -> None:
    """One violation per bad field, named as the caller sent it."""
    v = Violations()
    if request.individual_id.value and not IDENTITY_TYPE.match(request.individual_id.type):
        v.add("individual_id.type", "must match ^[a-z][a-z0-9_]{0,63}$")
    if request.recommender and not RECOMMENDER_NAME.match(request.recommender):
        v.add("recommender", "must match ^[a-z][a-z0-9_]{0,62}$ (a configured recommender or a built-in strategy)")
    if not 0 <= request.count <= MAX_COUNT:
        v.add("count", f"must be between 0 and {MAX_COUNT}")
    if len(request.anchor_item_id) > MAX_ID_LENGTH:
        v.add("anchor_item_id", f"must be at most {MAX_ID_LENGTH} characters")
    _ids(v, "cart_item_ids", request.cart_item_ids, MAX_CART)
    _ids(v, "exclude_item_ids", request.exclude_item_ids, MAX_EXCLUDED)
    if len(request.item_attributes) > MAX_ATTRIBUTES:
        v.add("item_attributes", f"at most {MAX_ATTRIBUTES} attributes")
    for i, name in enumerate(request.item_attributes):
        if not name.strip():
            v.add(f"item_attributes[{i}]", "must not be empty")
    v.raise_if_any()


def default_recommender(request: pb.GetRecommendationsRequest) -> str:
    """The recommender asked for, else similar_attributes around an anchor, co_bought for a cart, top_sellers."""
    if request.recommender:
        return request.recommender
    if request.anchor_item_id:
        return "similar_attributes"
    return "co_bought" if request.cart_item_ids else "top_sellers"


class Recommendations:
    """The public recommendations use case, composed over the decider's resolution, quotas and decision log."""

    def __init__(self, decider: Decider):
        self.decider = decider

    async def recommend(self, request: pb.GetRecommendationsRequest) -> pb.GetRecommendationsResponse:
        validate(request)
        flags = set(request.execution_flags)
        recommender = default_recommender(request)
        started = time.perf_counter()
        diagnostics: list[pb.Diagnostic] = []

        unified_id = ""
        if request.unified_individual_id or request.individual_id.value:
            unified_id = await self.decider.resolve(request.individual_id, request.unified_individual_id)
            if not unified_id:
                diagnostics.append(pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL,
                                                 message="the individual is not known; the ranking is not personal"))
        if await self.decider.quotas.over_quota(ctx.current_tenant(), 1):
            unified_id = ""
            diagnostics.insert(0, pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_QUOTA_EXCEEDED,
                                                message="the tenant is over its quota; the ranking is not personal"))
        identify_ms = (time.perf_counter() - started) * 1000

        affinities: list[rec_pb.Affinity] = []
        if unified_id and pb.EXECUTION_FLAG_CONTEXT_ONLY not in flags:
            async def load() -> list[rec_pb.Affinity]:
                reply = await self.decider.profile.GetProfile(profile_pb.GetProfileRequest(
                    unified_individual_id=unified_id, read_mask=AFFINITIES_MASK))
                return affinity_messages(profile_view(reply.profile))

            # Kept like the decide path's profiles (profile_cache.py); the copy is only read (extend copies it).
            affinities = await self.decider.profiles.read(ctx.current_tenant(), unified_id, AFFINITY_MESSAGES, load)
        augment_ms = (time.perf_counter() - started) * 1000 - identify_ms

        explain = pb.EXECUTION_FLAG_DIAGNOSTICS in flags
        ranked = await self.decider.recommender.Recommend(rec_pb.RecommendRequest(
            unified_individual_id=unified_id, strategy=recommender, count=request.count,
            exclude_item_ids=request.exclude_item_ids, exclude_purchased=request.exclude_purchased,
            anchor_item_id=request.anchor_item_id, cart_item_ids=request.cart_item_ids, affinities=affinities,
            diagnostics=explain, item_attributes=request.item_attributes))
        attributes = list(request.item_attributes)
        rows = item_rows(ranked.items, attributes)
        items = [pb.RecommendedItem(item_id=r.item_id, score=r.score, source=r.source,
                                    attributes=_attributes(row, attributes))
                 for r, row in zip(ranked.items, rows)]
        if request.count and len(items) < request.count:
            diagnostics.append(pb.Diagnostic(code=pb.DIAGNOSTIC_CODE_FEWER_ITEMS_THAN_REQUESTED,
                                             message=f"{len(items)} of {request.count} items available"))

        reply = pb.GetRecommendationsResponse(
            request_id=ctx.request_id_var.get(), personalization_id=uuid.uuid4().hex, recommender=recommender,
            items=items, diagnostics=diagnostics, unified_individual_id=unified_id)
        if explain:
            d = ranked.diagnostics
            reply.trace.CopyFrom(pb.RecommendationTrace(
                recommenders=d.recommenders, diversity_removed=d.diversity_removed, model_version=d.model_version,
                filters=[pb.FilterTrace(filter=f.filter, removed=f.removed) for f in d.filters]))
        if pb.EXECUTION_FLAG_TEST_MODE not in flags:
            now = timestamp_pb2.Timestamp()
            now.GetCurrentTime()
            personalize_ms = (time.perf_counter() - started) * 1000 - identify_ms - augment_ms
            await self.decider.log_writer.submit([decision_pb.DecisionLogEntry(
                personalization_id=reply.personalization_id, request_id=reply.request_id,
                point_name=LOG_POINT_PREFIX + recommender, unified_individual_id=unified_id,
                channel=request.channel, correlation_id=request.correlation_id, anchor_id=request.anchor_item_id,
                served=served(shape_items(ranked.items, attributes)), log_time=now,
                stage_ms={"identify": round(identify_ms, 3), "augment": round(augment_ms, 3),
                          "personalize": round(personalize_ms, 3)})])
        return reply
