"""RecommenderService over gRPC: proto <-> domain translation only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2

from personalization.common.v1 import common_pb2
from personalization.recommender.v1 import recommender_service_pb2 as pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from services.recommender.config import (
    ALS,
    CLICKS,
    PURCHASES,
    REVENUE,
    Booster,
    Condition,
    Config,
)
from services.recommender.domain import (
    ADD_TO_CART,
    PRODUCT_VIEW,
    PURCHASE,
    BatchAnswers,
    CatalogItem,
    Interaction,
    Recommended,
)
from services.recommender.evaluation import LEAVE_LAST_OUT, RANDOM, TIME
from services.recommender.postgres_privacy import PostgresPrivacy
from services.recommender.service import Recommender
from services.recommender.validation import validate_interactions
from shared import contract
from shared.context import current_tenant
from shared.errors import InvalidArgument
from shared.privacy import document, validate_ids

# Other event types map to "" and are refused by validation.
_KINDS = {
    common_pb2.EVENT_TYPE_PRODUCT_VIEW: PRODUCT_VIEW,
    common_pb2.EVENT_TYPE_ADD_TO_CART: ADD_TO_CART,
    common_pb2.EVENT_TYPE_PURCHASE: PURCHASE,
}
_OBJECTIVES = {pb.OBJECTIVE_MAXIMIZE_CLICKS: CLICKS, pb.OBJECTIVE_MAXIMIZE_PURCHASES: PURCHASES,
               pb.OBJECTIVE_MAXIMIZE_REVENUE: REVENUE}
_OBJECTIVES_PB = {v: k for k, v in _OBJECTIVES.items()}
# Operator enum names without the prefix, lowercased: OPERATOR_LESS_THAN -> less_than; unspecified -> "".
_OPERATORS = {v: ("" if v == 0 else n.removeprefix("OPERATOR_").lower()) for n, v in pb.Operator.items()}
_OPERATORS_PB = {v: k for k, v in _OPERATORS.items()}
_DEFAULTS = Config(name="", strategy="")
_SPLITS = {pb.EVALUATION_SPLIT_UNSPECIFIED: RANDOM, pb.EVALUATION_SPLIT_RANDOM: RANDOM,
           pb.EVALUATION_SPLIT_TIME: TIME, pb.EVALUATION_SPLIT_LEAVE_LAST_OUT: LEAVE_LAST_OUT}


def _time(message, name):
    return getattr(message, name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None


def _interaction(message: pb.Interaction) -> Interaction:
    if message.type == common_pb2.EVENT_TYPE_RETURN:
        # The units returned and the amount refunded are kept as a purchase line's negative units and revenue, so
        # every statistic nets them out as it did returns sent as negative purchase lines.
        return Interaction(message.message_id, message.unified_individual_id, message.item_id, PURCHASE,
                           -abs(message.quantity), -abs(message.revenue), _time(message, "event_time"),
                           message.order_id)
    return Interaction(
        message_id=message.message_id,
        unified_individual_id=message.unified_individual_id,
        item_id=message.item_id,
        kind=_KINDS.get(message.type, ""),
        quantity=message.quantity,
        revenue=message.revenue,
        event_time=_time(message, "event_time"),
    )


def _values(values, path: str) -> tuple:
    """A condition's operands as JSON values; a NaN or infinity anywhere in one is the caller's mistake."""
    out = []
    for j, v in enumerate(values):
        try:
            out.append(json_format.MessageToDict(v) if v.WhichOneof("kind") else None)
        except ValueError:  # json_format refuses non-finite numbers (they have no JSON form)
            raise InvalidArgument([(f"{path}[{j}]", "must hold finite numbers only (no NaN nor infinity)")]) from None
    return tuple(out)


def config_from_pb(c: pb.RecommenderConfig) -> Config:
    p = c.parameters
    return Config(
        name=c.name,
        strategy=c.strategy,
        window_days=p.window_days,
        by_revenue=p.by_revenue,
        by_units=p.by_units,
        half_life_days=p.half_life_days or _DEFAULTS.half_life_days,
        min_support=p.min_support or _DEFAULTS.min_support,
        session_minutes=p.session_minutes or _DEFAULTS.session_minutes,
        max_age_days=p.max_age_days,
        similar_attributes=tuple(p.similar_attributes),
        objective=_OBJECTIVES.get(p.objective, ""),
        algorithm=p.algorithm or ALS,
        factors=p.factors,
        regularization=p.regularization,
        iterations=p.iterations,
        alpha=p.alpha,
        weighting=p.weighting,
        bm25_k1=p.bm25_k1,
        bm25_b=p.bm25_b,
        neighbours=p.neighbours,
        learning_rate=p.learning_rate,
        tune_seconds=p.tuning_budget.ToTimedelta().total_seconds(),
        validation_fraction=p.validation_fraction,
        recent_days=p.recent_days,
        include=tuple(Condition(x.attribute, _OPERATORS.get(x.operator, ""),
                              _values(x.values, f"config.include[{i}].values")) for i, x in enumerate(c.include)),
        exclude=tuple(Condition(x.attribute, _OPERATORS.get(x.operator, ""),
                              _values(x.values, f"config.exclude[{i}].values")) for i, x in enumerate(c.exclude)),
        exclude_anchor=c.context_filter.exclude_anchor,
        same_category_as_anchor=c.context_filter.same_category_as_anchor,
        exclude_cart=c.context_filter.exclude_cart,
        category_attribute=c.context_filter.category_attribute or _DEFAULTS.category_attribute,
        exclude_purchased=c.profile_filter.exclude_purchased,
        exclude_recently_viewed=c.profile_filter.exclude_recently_viewed,
        boosters=tuple(Booster(b.attribute, b.weight or 1.0) for b in c.boosters),
        diversity_attribute=c.diversity.attribute,
        diversity_max=c.diversity.max_per_value,
        count=c.count,
        fallback=c.fallback,
        retrain_seconds=c.retrain_interval.ToTimedelta().total_seconds(),
    )


def _condition_pb(c: Condition) -> pb.Condition:
    values = []
    for value in c.values:
        v = struct_pb2.Value()
        json_format.ParseDict(value, v)
        values.append(v)
    return pb.Condition(attribute=c.attribute, operator=_OPERATORS_PB.get(c.operator, 0), values=values)


def config_to_pb(c: Config) -> pb.RecommenderConfig:
    message = pb.RecommenderConfig(
        name=c.name,
        strategy=c.strategy,
        parameters=pb.StrategyParameters(
            window_days=c.window_days, by_revenue=c.by_revenue, by_units=c.by_units, half_life_days=c.half_life_days,
            min_support=c.min_support, session_minutes=c.session_minutes, max_age_days=c.max_age_days,
            similar_attributes=c.similar_attributes, objective=_OBJECTIVES_PB.get(c.objective, 0),
            algorithm=c.algorithm, factors=c.factors, regularization=c.regularization, iterations=c.iterations,
            alpha=c.alpha, recent_days=c.recent_days, weighting=c.weighting, bm25_k1=c.bm25_k1, bm25_b=c.bm25_b,
            neighbours=c.neighbours, learning_rate=c.learning_rate, validation_fraction=c.validation_fraction),
        include=[_condition_pb(x) for x in c.include],
        exclude=[_condition_pb(x) for x in c.exclude],
        context_filter=pb.ContextFilter(exclude_anchor=c.exclude_anchor,
                                        same_category_as_anchor=c.same_category_as_anchor,
                                        exclude_cart=c.exclude_cart, category_attribute=c.category_attribute),
        profile_filter=pb.ProfileFilter(exclude_purchased=c.exclude_purchased,
                                        exclude_recently_viewed=c.exclude_recently_viewed),
        boosters=[pb.Booster(attribute=b.attribute, weight=b.weight) for b in c.boosters],
        count=c.count,
        fallback=c.fallback,
    )
    if c.diversity_attribute:
        message.diversity.CopyFrom(pb.Diversity(attribute=c.diversity_attribute, max_per_value=c.diversity_max))
    if c.retrain_seconds:
        message.retrain_interval.FromSeconds(int(c.retrain_seconds))
    if c.tune_seconds:
        message.parameters.tuning_budget.FromTimedelta(timedelta(seconds=c.tune_seconds))
    if c.update_time is not None:
        message.update_time.FromDatetime(c.update_time)
    return message


def parameters_pb(p: dict) -> pb.StrategyParameters:
    """A model's resolved family and hyperparameters (learned.parameters) as StrategyParameters."""
    return pb.StrategyParameters(**{k: v for k, v in p.items() if k in pb.StrategyParameters.DESCRIPTOR.fields_by_name})


def _trial_pb(t) -> pb.TuningTrial:
    return pb.TuningTrial(number=t.number, parameters=parameters_pb(t.parameters), precision_at_k=t.precision,
                          ndcg_at_k=t.ndcg, seconds=t.seconds, error=t.error)


def _items(items: list[Recommended], attributes: dict[str, dict] | None = None) -> list[pb.RecommendedItem]:
    out = []
    for i in items:
        message = pb.RecommendedItem(item_id=i.item_id, score=i.score, source=i.source)
        if attributes and attributes.get(i.item_id):
            message.attributes.update(attributes[i.item_id])
        out.append(message)
    return out


def _affinities(affinities) -> list[tuple[str, str, float]]:
    return [(a.attribute, a.value, a.score) for a in affinities]


# Field numbers of the full form's encoding (_Replies._full_results).
_RESULTS = pb.RecommendBatchResponse.DESCRIPTOR.fields_by_name["results"].number
_RESULT_ID = pb.IndividualRecommendations.DESCRIPTOR.fields_by_name["unified_individual_id"].number
_ITEMS = pb.IndividualRecommendations.DESCRIPTOR.fields_by_name["items"].number
_SCORE = pb.RecommendedItem.DESCRIPTOR.fields_by_name["score"].number
_BYTES = [bytes((n,)) for n in range(256)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _BYTES[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int = 2) -> bytes:
    """A field's tag: its number and wire type (2: length-delimited, 1: 64-bit)."""
    return _varint(number << 3 | wire_type)


def _field(number: int, data: bytes) -> bytes:
    return _tag(number) + _varint(len(data)) + data


class _Replies:
    """The responses of one RecommendBatch stream. Each (item, source) is shaped once per stream, with its attributes:
    in the full form as a message encoded once, whose encoding goes into every answer that holds it; in the compact
    form as an entry of the stream's item table, sent in the first response that names it, answers being indexes
    into the table."""

    def __init__(self, recommender: Recommender, names: list[str], compact: bool) -> None:
        self.recommender, self.names, self.compact = recommender, names, compact
        self.table: dict[tuple[str, str], int] = {}  # compact: (item, source) -> index in the stream's table
        self.shaped: dict[tuple[str, str], pb.RecommendedItem] = {}  # full: (item, source) -> its message
        self.by_column: np.ndarray | None = None  # compact: the table index of each model column (head's source)
        self.parts: dict[tuple[str, str], tuple[bytes, bytes]] = {}  # full: (item, source) -> _parts

    async def response(self, answers: BatchAnswers) -> pb.RecommendBatchResponse:
        head = answers.head
        keys = dict.fromkeys((i.item_id, i.source) for items in answers.picked.values() for i in items)
        columns = np.unique(answers.columns[head]) if head.any() else np.empty(0, dtype=np.int64)
        keys.update(dict.fromkeys((answers.item_ids[c], answers.source) for c in columns.tolist()))
        known = self.table if self.compact else self.shaped
        new = [key for key in keys if key not in known]
        attributes = await self.recommender.item_attributes(
            current_tenant(), list({item_id for item_id, _ in new}), self.names) if self.names and new else {}
        shaped = _items([Recommended(item_id, 0.0, source) for item_id, source in new], attributes)
        if not self.compact:
            self.shaped.update(zip(new, shaped))
            response = pb.RecommendBatchResponse.FromString(self._full_results(answers, columns))
            response.affinities_unused = answers.affinities_unused
            return response
        response = pb.RecommendBatchResponse(affinities_unused=answers.affinities_unused)
        for key in new:
            self.table[key] = len(self.table)
        response.items.extend(shaped)
        self._compact_results(answers, response)
        return response

    def _compact_results(self, answers: BatchAnswers, response: pb.RecommendBatchResponse) -> None:
        table, head = self.table, answers.head
        indexes: list[list[int]] = []
        scores: list[list[float]] = []
        if head.any():
            if self.by_column is None:
                self.by_column = np.full(len(answers.item_ids), -1, dtype=np.int64)
            chosen = answers.columns[head]
            for c in np.unique(chosen[self.by_column[chosen] < 0]).tolist():
                self.by_column[c] = table[answers.item_ids[c], answers.source]
            indexes = self.by_column[chosen].tolist()
            scores = answers.scores[head].tolist()
        add = response.results.add
        if not answers.picked:
            for who, ix, sc in zip(answers.ids, indexes, scores):
                add(unified_individual_id=who, item_indexes=ix, scores=sc)
            return
        j = 0
        for k, who in enumerate(answers.ids):
            if head[k]:
                add(unified_individual_id=who, item_indexes=indexes[j], scores=scores[j])
                j += 1
            else:
                items = answers.picked.get(k, [])
                add(unified_individual_id=who, item_indexes=[table[i.item_id, i.source] for i in items],
                    scores=[i.score for i in items])

    def _full_results(self, answers: BatchAnswers, columns: np.ndarray) -> bytes:
        """The chunk's results, encoded: each member answered by the head as its id followed, per item, by the item's
        encoded message (made once per stream) with the score put in; the others as their encoded message. A
        message per item, filled and copied, costs several times more."""
        head, ids = answers.head, answers.ids
        m, n = answers.columns.shape
        parts = [self._parts(answers.item_ids[c], answers.source) for c in columns.tolist()]
        pool = b"".join(before + after for before, after in parts)
        before_len = np.array([len(b) for b, _ in parts] or [0], dtype=np.int64)
        after_len = np.array([len(a) for _, a in parts] or [0], dtype=np.int64)
        before_at = np.cumsum(before_len + after_len) - before_len - after_len
        local = np.searchsorted(columns, answers.columns) if len(columns) else np.zeros((m, n), dtype=np.int64)
        local = np.where(head[:, None], local, 0)
        item_len = (before_len[local] + 8 + after_len[local]).sum(axis=1).tolist()
        heads = []
        result_tag, id_tag = _tag(_RESULTS), _tag(_RESULT_ID)
        for k, who in enumerate(ids):
            if head[k]:
                encoded = who.encode()
                identity = id_tag + _varint(len(encoded)) + encoded
                heads.append(result_tag + _varint(len(identity) + item_len[k]) + identity)
            else:
                items = [self.shaped[i.item_id, i.source] for i in answers.picked.get(k, [])]
                result = pb.IndividualRecommendations(unified_individual_id=who, items=items)
                for message, i in zip(result.items, answers.picked.get(k, [])):
                    message.score = i.score
                heads.append(_field(_RESULTS, result.SerializeToString()))
        blob = b"".join(heads)
        source = np.frombuffer(blob + pool + answers.scores.astype("<f8").tobytes(), dtype=np.uint8)
        # Every member's pieces in order: its head, then per item (before the score, the score, after it); the
        # pieces of members not answered by the head are empty after the first.
        start = np.empty((m, 1 + 3 * n), dtype=np.int64)
        length = np.zeros((m, 1 + 3 * n), dtype=np.int64)
        head_len = np.array([len(h) for h in heads], dtype=np.int64)
        start[:, 0] = np.cumsum(head_len) - head_len
        length[:, 0] = head_len
        on = head[:, None]
        start[:, 1::3] = len(blob) + before_at[local]
        length[:, 1::3] = np.where(on, before_len[local], 0)
        start[:, 2::3] = len(blob) + len(pool) + 8 * np.arange(m * n).reshape(m, n)
        length[:, 2::3] = np.where(on, 8, 0)
        start[:, 3::3] = len(blob) + before_at[local] + before_len[local]
        length[:, 3::3] = np.where(on, after_len[local], 0)
        start, length = start.ravel(), length.ravel()
        at = np.cumsum(length) - length
        return source[np.repeat(start - at, length) + np.arange(int(length.sum()))].tobytes()

    def _parts(self, item_id: str, source: str) -> tuple[bytes, bytes]:
        """An item's encoded entry in a result, split where its score goes: (the entry's tag and length, the item
        id and the score's tag; the source and attributes)."""
        key = (item_id, source)
        parts = self.parts.get(key)
        if parts is None:
            whole = self.shaped[key].SerializeToString()  # score 0 is not encoded: item id, source, attributes
            identity = pb.RecommendedItem(item_id=item_id).SerializeToString()
            before = _tag(_ITEMS) + _varint(len(whole) + 9) + identity + _tag(_SCORE, 1)
            parts = self.parts[key] = (before, whole[len(identity):])
        return parts


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """Translates RecommenderService calls to the Recommender use cases."""

    def __init__(self, recommender: Recommender, privacy: PostgresPrivacy) -> None:
        self.recommender = recommender
        self.privacy = privacy

    async def RecordInteractions(self, request: pb.RecordInteractionsRequest,
                                 context: grpc.aio.ServicerContext) -> pb.RecordInteractionsResponse:
        problems = contract.violations(request)
        interactions = [_interaction(m) for m in request.interactions]
        if problems:
            contract.raise_merged(problems, lambda: validate_interactions(interactions))
        recorded = await self.recommender.record_interactions(current_tenant(), interactions)
        return pb.RecordInteractionsResponse(recorded_count=recorded)

    async def UpsertItems(self, request: pb.UpsertItemsRequest,
                          context: grpc.aio.ServicerContext) -> pb.UpsertItemsResponse:
        items = [CatalogItem(i.item_id, json_format.MessageToDict(i.attributes), _time(i, "create_time"))
                 for i in request.items]
        return pb.UpsertItemsResponse(upserted_count=await self.recommender.upsert_items(current_tenant(), items))

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        items, diagnostics = await self.recommender.explain(
            current_tenant(),
            request.unified_individual_id,
            request.strategy,
            request.count,
            exclude_item_ids=list(request.exclude_item_ids),
            exclude_purchased=request.exclude_purchased,
            anchor_item_id=request.anchor_item_id,
            cart_item_ids=list(request.cart_item_ids),
            affinities=_affinities(request.affinities),
            diagnostics=request.diagnostics,
        )
        attributes = await self.recommender.item_attributes(
            current_tenant(), [i.item_id for i in items], list(request.item_attributes))
        response = pb.RecommendResponse(items=_items(items, attributes))
        if diagnostics is not None:
            response.diagnostics.CopyFrom(pb.RecommendDiagnostics(
                recommenders=diagnostics.recommenders,
                filters=[pb.FilterCount(filter=f, removed=n) for f, n in diagnostics.filters.items()],
                diversity_removed=diagnostics.diversity_removed,
                model_version=diagnostics.model_version))
        return response

    async def RecommendBatch(self, request: pb.RecommendBatchRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.RecommendBatchResponse]:
        individuals = [(i.unified_individual_id, _affinities(i.affinities) if i.affinities else [])
                       for i in request.individuals]
        replies = _Replies(self.recommender, list(request.item_attributes), request.compact)
        async for answers in self.recommender.recommend_batch(
                current_tenant(), request.strategy, request.count, individuals,
                exclude_item_ids=list(request.exclude_item_ids), exclude_purchased=request.exclude_purchased):
            yield await replies.response(answers)

    async def SimilarItems(self, request: pb.SimilarItemsRequest,
                           context: grpc.aio.ServicerContext) -> pb.SimilarItemsResponse:
        items = await self.recommender.similar_items(current_tenant(), request.item_id, request.count,
                                                     request.strategy)
        return pb.SimilarItemsResponse(items=_items(items))

    async def PutRecommender(self, request: pb.PutRecommenderRequest,
                             context: grpc.aio.ServicerContext) -> pb.PutRecommenderResponse:
        stored = await self.recommender.put_config(current_tenant(), config_from_pb(request.config))
        return pb.PutRecommenderResponse(config=config_to_pb(stored))

    async def GetRecommender(self, request: pb.GetRecommenderRequest,
                             context: grpc.aio.ServicerContext) -> pb.GetRecommenderResponse:
        return pb.GetRecommenderResponse(
            config=config_to_pb(await self.recommender.get_config(current_tenant(), request.name)))

    async def ListRecommenders(self, request: pb.ListRecommendersRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListRecommendersResponse:
        page, token = await self.recommender.list_configs(current_tenant(), request.page_size, request.page_token)
        return pb.ListRecommendersResponse(recommenders=[config_to_pb(c) for c in page], next_page_token=token)

    async def DeleteRecommender(self, request: pb.DeleteRecommenderRequest,
                                context: grpc.aio.ServicerContext) -> pb.DeleteRecommenderResponse:
        await self.recommender.delete_config(current_tenant(), request.name)
        return pb.DeleteRecommenderResponse()

    async def TrainRecommender(self, request: pb.TrainRecommenderRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.TrainRecommenderResponse]:
        async for p in self.recommender.train(current_tenant(), request.name):
            message = pb.TrainRecommenderResponse(
                stage=p.stage, fraction=p.fraction, message=p.message, model_version=p.model_version,
                individuals=p.individuals, items=p.items, interactions=p.interactions,
                trials=[_trial_pb(t) for t in p.trials])
            if p.trial is not None:
                message.trial.CopyFrom(_trial_pb(p.trial))
            if p.parameters is not None:
                message.parameters.CopyFrom(parameters_pb(p.parameters))
            yield message

    async def EvaluateRecommender(self, request: pb.EvaluateRecommenderRequest,
                                  context: grpc.aio.ServicerContext) -> pb.EvaluateRecommenderResponse:
        m, cutoff = await self.recommender.evaluate(
            current_tenant(), request.name, request.k, request.test_fraction, request.seed,
            split=_SPLITS.get(request.split, ""), cutoff=_time(request, "cutoff_time"))
        response = pb.EvaluateRecommenderResponse(
            precision_at_k=m.precision, recall_at_k=m.recall, ndcg_at_k=m.ndcg, map_at_k=m.map,
            coverage=m.coverage, evaluated_individuals=m.individuals, k=request.k or 10)
        if cutoff is not None:
            response.cutoff_time.FromDatetime(datetime.fromtimestamp(cutoff, UTC))
        return response

    async def ReassignInteractions(self, request: pb.ReassignInteractionsRequest,
                                   context: grpc.aio.ServicerContext) -> pb.ReassignInteractionsResponse:
        moved = await self.recommender.reassign_interactions(
            current_tenant(), list(request.from_individual_ids), request.to_individual_id,
            list(request.only_first_recorded_for))
        return pb.ReassignInteractionsResponse(moved_count=moved)

    async def EraseIndividual(self, request: pb.EraseIndividualRequest,
                              context: grpc.aio.ServicerContext) -> pb.EraseIndividualResponse:
        erased = await self.privacy.erase(current_tenant(), validate_ids(list(request.unified_individual_ids)))
        return pb.EraseIndividualResponse(erased_rows=erased)

    async def ExportIndividual(self, request: pb.ExportIndividualRequest,
                               context: grpc.aio.ServicerContext) -> pb.ExportIndividualResponse:
        tables = await self.privacy.export(current_tenant(), validate_ids(list(request.unified_individual_ids)))
        return pb.ExportIndividualResponse(json=document(tables))
