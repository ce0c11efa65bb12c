"""RecommenderService over gRPC: proto <-> domain translation only."""

from __future__ import annotations

from datetime import timezone

from personalization.common.v1 import common_pb2
from personalization.recommender.v1 import recommender_service_pb2 as pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from services.recommender.service import ADD_TO_CART, PRODUCT_VIEW, PURCHASE, Interaction, Recommender
from shared.context import current_tenant

# Other event types map to "" and are refused by validation.
_KINDS = {
    common_pb2.EVENT_TYPE_PRODUCT_VIEW: PRODUCT_VIEW,
    common_pb2.EVENT_TYPE_ADD_TO_CART: ADD_TO_CART,
    common_pb2.EVENT_TYPE_PURCHASE: PURCHASE,
}


def _interaction(message: pb.Interaction) -> Interaction:
    return Interaction(
        message_id=message.message_id,
        unified_individual_id=message.unified_individual_id,
        item_id=message.item_id,
        kind=_KINDS.get(message.type, ""),
        quantity=message.quantity,
        revenue=message.revenue,
        event_time=message.event_time.ToDatetime(tzinfo=timezone.utc) if message.HasField("event_time") else None,
    )


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """Translates RecommenderService calls to the Recommender use cases."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    async def RecordInteractions(self, request: pb.RecordInteractionsRequest, context) -> pb.RecordInteractionsResponse:
        interactions = [_interaction(m) for m in request.interactions]
        recorded = await self.recommender.record_interactions(current_tenant(), interactions)
        return pb.RecordInteractionsResponse(recorded_count=recorded)

    async def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendResponse:
        items = await self.recommender.recommend(
            current_tenant(),
            request.unified_individual_id,
            request.strategy,
            request.count,
            exclude_item_ids=list(request.exclude_item_ids),
            exclude_purchased=request.exclude_purchased,
        )
        return pb.RecommendResponse(
            items=[pb.RecommendedItem(item_id=i.item_id, score=i.score, source=i.source) for i in items]
        )
