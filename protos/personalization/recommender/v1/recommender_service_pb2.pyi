import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from personalization.common.v1 import limits_pb2 as _limits_pb2
from personalization.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATOR_UNSPECIFIED: _ClassVar[Operator]
    OPERATOR_EQUALS: _ClassVar[Operator]
    OPERATOR_NOT_EQUALS: _ClassVar[Operator]
    OPERATOR_IN: _ClassVar[Operator]
    OPERATOR_NOT_IN: _ClassVar[Operator]
    OPERATOR_LESS_THAN: _ClassVar[Operator]
    OPERATOR_LESS_THAN_OR_EQUAL: _ClassVar[Operator]
    OPERATOR_GREATER_THAN: _ClassVar[Operator]
    OPERATOR_GREATER_THAN_OR_EQUAL: _ClassVar[Operator]
    OPERATOR_EXISTS: _ClassVar[Operator]

class Objective(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECTIVE_UNSPECIFIED: _ClassVar[Objective]
    OBJECTIVE_MAXIMIZE_CLICKS: _ClassVar[Objective]
    OBJECTIVE_MAXIMIZE_PURCHASES: _ClassVar[Objective]
    OBJECTIVE_MAXIMIZE_REVENUE: _ClassVar[Objective]

class EvaluationSplit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATION_SPLIT_UNSPECIFIED: _ClassVar[EvaluationSplit]
    EVALUATION_SPLIT_RANDOM: _ClassVar[EvaluationSplit]
    EVALUATION_SPLIT_TIME: _ClassVar[EvaluationSplit]
    EVALUATION_SPLIT_LEAVE_LAST_OUT: _ClassVar[EvaluationSplit]
OPERATOR_UNSPECIFIED: Operator
OPERATOR_EQUALS: Operator
OPERATOR_NOT_EQUALS: Operator
OPERATOR_IN: Operator
OPERATOR_NOT_IN: Operator
OPERATOR_LESS_THAN: Operator
OPERATOR_LESS_THAN_OR_EQUAL: Operator
OPERATOR_GREATER_THAN: Operator
OPERATOR_GREATER_THAN_OR_EQUAL: Operator
OPERATOR_EXISTS: Operator
OBJECTIVE_UNSPECIFIED: Objective
OBJECTIVE_MAXIMIZE_CLICKS: Objective
OBJECTIVE_MAXIMIZE_PURCHASES: Objective
OBJECTIVE_MAXIMIZE_REVENUE: Objective
EVALUATION_SPLIT_UNSPECIFIED: EvaluationSplit
EVALUATION_SPLIT_RANDOM: EvaluationSplit
EVALUATION_SPLIT_TIME: EvaluationSplit
EVALUATION_SPLIT_LEAVE_LAST_OUT: EvaluationSplit

class Interaction(_message.Message):
    __slots__ = ("message_id", "unified_individual_id", "item_id", "type", "quantity", "revenue", "event_time", "order_id")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    unified_individual_id: str
    item_id: str
    type: _common_pb2.EventType
    quantity: float
    revenue: float
    event_time: _timestamp_pb2.Timestamp
    order_id: str
    def __init__(self, message_id: _Optional[str] = ..., unified_individual_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.EventType, str]] = ..., quantity: _Optional[float] = ..., revenue: _Optional[float] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., order_id: _Optional[str] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("interactions",)
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    def __init__(self, interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("recorded_count",)
    RECORDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    recorded_count: int
    def __init__(self, recorded_count: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "attributes", "create_time")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    attributes: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, item_id: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted_count",)
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    upserted_count: int
    def __init__(self, upserted_count: _Optional[int] = ...) -> None: ...

class Affinity(_message.Message):
    __slots__ = ("attribute", "value", "score")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    value: str
    score: float
    def __init__(self, attribute: _Optional[str] = ..., value: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("unified_individual_id", "strategy", "count", "exclude_item_ids", "exclude_purchased", "anchor_item_id", "cart_item_ids", "affinities", "diagnostics", "item_attributes")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PURCHASED_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CART_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    ITEM_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    strategy: str
    count: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_purchased: bool
    anchor_item_id: str
    cart_item_ids: _containers.RepeatedScalarFieldContainer[str]
    affinities: _containers.RepeatedCompositeFieldContainer[Affinity]
    diagnostics: bool
    item_attributes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unified_individual_id: _Optional[str] = ..., strategy: _Optional[str] = ..., count: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_purchased: _Optional[bool] = ..., anchor_item_id: _Optional[str] = ..., cart_item_ids: _Optional[_Iterable[str]] = ..., affinities: _Optional[_Iterable[_Union[Affinity, _Mapping]]] = ..., diagnostics: _Optional[bool] = ..., item_attributes: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "source", "attributes")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    source: str
    attributes: _struct_pb2.Struct
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., source: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class FilterCount(_message.Message):
    __slots__ = ("filter", "removed")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    filter: str
    removed: int
    def __init__(self, filter: _Optional[str] = ..., removed: _Optional[int] = ...) -> None: ...

class RecommendDiagnostics(_message.Message):
    __slots__ = ("recommenders", "filters", "diversity_removed", "model_version")
    RECOMMENDERS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_REMOVED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    recommenders: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.RepeatedCompositeFieldContainer[FilterCount]
    diversity_removed: int
    model_version: int
    def __init__(self, recommenders: _Optional[_Iterable[str]] = ..., filters: _Optional[_Iterable[_Union[FilterCount, _Mapping]]] = ..., diversity_removed: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "diagnostics")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    diagnostics: RecommendDiagnostics
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., diagnostics: _Optional[_Union[RecommendDiagnostics, _Mapping]] = ...) -> None: ...

class BatchIndividual(_message.Message):
    __slots__ = ("unified_individual_id", "affinities")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    affinities: _containers.RepeatedCompositeFieldContainer[Affinity]
    def __init__(self, unified_individual_id: _Optional[str] = ..., affinities: _Optional[_Iterable[_Union[Affinity, _Mapping]]] = ...) -> None: ...

class RecommendBatchRequest(_message.Message):
    __slots__ = ("strategy", "count", "individuals", "exclude_item_ids", "exclude_purchased", "item_attributes", "compact")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    INDIVIDUALS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PURCHASED_FIELD_NUMBER: _ClassVar[int]
    ITEM_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    COMPACT_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    count: int
    individuals: _containers.RepeatedCompositeFieldContainer[BatchIndividual]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_purchased: bool
    item_attributes: _containers.RepeatedScalarFieldContainer[str]
    compact: bool
    def __init__(self, strategy: _Optional[str] = ..., count: _Optional[int] = ..., individuals: _Optional[_Iterable[_Union[BatchIndividual, _Mapping]]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_purchased: _Optional[bool] = ..., item_attributes: _Optional[_Iterable[str]] = ..., compact: _Optional[bool] = ...) -> None: ...

class IndividualRecommendations(_message.Message):
    __slots__ = ("unified_individual_id", "items", "item_indexes", "scores")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ITEM_INDEXES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    item_indexes: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, unified_individual_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., item_indexes: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ...) -> None: ...

class RecommendBatchResponse(_message.Message):
    __slots__ = ("results", "items", "affinities_unused")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    AFFINITIES_UNUSED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[IndividualRecommendations]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    affinities_unused: bool
    def __init__(self, results: _Optional[_Iterable[_Union[IndividualRecommendations, _Mapping]]] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., affinities_unused: _Optional[bool] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "count", "strategy")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    count: int
    strategy: str
    def __init__(self, item_id: _Optional[str] = ..., count: _Optional[int] = ..., strategy: _Optional[str] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("attribute", "operator", "values")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    operator: Operator
    values: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    def __init__(self, attribute: _Optional[str] = ..., operator: _Optional[_Union[Operator, str]] = ..., values: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ...) -> None: ...

class StrategyParameters(_message.Message):
    __slots__ = ("window_days", "by_revenue", "half_life_days", "min_support", "session_minutes", "max_age_days", "similar_attributes", "objective", "algorithm", "factors", "regularization", "iterations", "alpha", "recent_days", "weighting", "bm25_k1", "bm25_b", "neighbours", "learning_rate", "tuning_budget", "validation_fraction", "by_units")
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    BY_REVENUE_FIELD_NUMBER: _ClassVar[int]
    HALF_LIFE_DAYS_FIELD_NUMBER: _ClassVar[int]
    MIN_SUPPORT_FIELD_NUMBER: _ClassVar[int]
    SESSION_MINUTES_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_DAYS_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    REGULARIZATION_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    RECENT_DAYS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTING_FIELD_NUMBER: _ClassVar[int]
    BM25_K1_FIELD_NUMBER: _ClassVar[int]
    BM25_B_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    TUNING_BUDGET_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    BY_UNITS_FIELD_NUMBER: _ClassVar[int]
    window_days: float
    by_revenue: bool
    half_life_days: float
    min_support: int
    session_minutes: float
    max_age_days: float
    similar_attributes: _containers.RepeatedScalarFieldContainer[str]
    objective: Objective
    algorithm: str
    factors: int
    regularization: float
    iterations: int
    alpha: float
    recent_days: float
    weighting: str
    bm25_k1: float
    bm25_b: float
    neighbours: int
    learning_rate: float
    tuning_budget: _duration_pb2.Duration
    validation_fraction: float
    by_units: bool
    def __init__(self, window_days: _Optional[float] = ..., by_revenue: _Optional[bool] = ..., half_life_days: _Optional[float] = ..., min_support: _Optional[int] = ..., session_minutes: _Optional[float] = ..., max_age_days: _Optional[float] = ..., similar_attributes: _Optional[_Iterable[str]] = ..., objective: _Optional[_Union[Objective, str]] = ..., algorithm: _Optional[str] = ..., factors: _Optional[int] = ..., regularization: _Optional[float] = ..., iterations: _Optional[int] = ..., alpha: _Optional[float] = ..., recent_days: _Optional[float] = ..., weighting: _Optional[str] = ..., bm25_k1: _Optional[float] = ..., bm25_b: _Optional[float] = ..., neighbours: _Optional[int] = ..., learning_rate: _Optional[float] = ..., tuning_budget: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., validation_fraction: _Optional[float] = ..., by_units: _Optional[bool] = ...) -> None: ...

class ContextFilter(_message.Message):
    __slots__ = ("exclude_anchor", "same_category_as_anchor", "exclude_cart", "category_attribute")
    EXCLUDE_ANCHOR_FIELD_NUMBER: _ClassVar[int]
    SAME_CATEGORY_AS_ANCHOR_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CART_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    exclude_anchor: bool
    same_category_as_anchor: bool
    exclude_cart: bool
    category_attribute: str
    def __init__(self, exclude_anchor: _Optional[bool] = ..., same_category_as_anchor: _Optional[bool] = ..., exclude_cart: _Optional[bool] = ..., category_attribute: _Optional[str] = ...) -> None: ...

class ProfileFilter(_message.Message):
    __slots__ = ("exclude_purchased", "exclude_recently_viewed")
    EXCLUDE_PURCHASED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_RECENTLY_VIEWED_FIELD_NUMBER: _ClassVar[int]
    exclude_purchased: bool
    exclude_recently_viewed: bool
    def __init__(self, exclude_purchased: _Optional[bool] = ..., exclude_recently_viewed: _Optional[bool] = ...) -> None: ...

class Booster(_message.Message):
    __slots__ = ("attribute", "weight")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    weight: float
    def __init__(self, attribute: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class Diversity(_message.Message):
    __slots__ = ("attribute", "max_per_value")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_VALUE_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    max_per_value: int
    def __init__(self, attribute: _Optional[str] = ..., max_per_value: _Optional[int] = ...) -> None: ...

class RecommenderConfig(_message.Message):
    __slots__ = ("name", "strategy", "parameters", "include", "exclude", "context_filter", "profile_filter", "boosters", "diversity", "count", "fallback", "retrain_interval", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FILTER_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FILTER_FIELD_NUMBER: _ClassVar[int]
    BOOSTERS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    strategy: str
    parameters: StrategyParameters
    include: _containers.RepeatedCompositeFieldContainer[Condition]
    exclude: _containers.RepeatedCompositeFieldContainer[Condition]
    context_filter: ContextFilter
    profile_filter: ProfileFilter
    boosters: _containers.RepeatedCompositeFieldContainer[Booster]
    diversity: Diversity
    count: int
    fallback: str
    retrain_interval: _duration_pb2.Duration
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., strategy: _Optional[str] = ..., parameters: _Optional[_Union[StrategyParameters, _Mapping]] = ..., include: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., exclude: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., context_filter: _Optional[_Union[ContextFilter, _Mapping]] = ..., profile_filter: _Optional[_Union[ProfileFilter, _Mapping]] = ..., boosters: _Optional[_Iterable[_Union[Booster, _Mapping]]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ..., count: _Optional[int] = ..., fallback: _Optional[str] = ..., retrain_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PutRecommenderRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: RecommenderConfig
    def __init__(self, config: _Optional[_Union[RecommenderConfig, _Mapping]] = ...) -> None: ...

class PutRecommenderResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: RecommenderConfig
    def __init__(self, config: _Optional[_Union[RecommenderConfig, _Mapping]] = ...) -> None: ...

class GetRecommenderRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRecommenderResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: RecommenderConfig
    def __init__(self, config: _Optional[_Union[RecommenderConfig, _Mapping]] = ...) -> None: ...

class ListRecommendersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRecommendersResponse(_message.Message):
    __slots__ = ("recommenders", "next_page_token")
    RECOMMENDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    recommenders: _containers.RepeatedCompositeFieldContainer[RecommenderConfig]
    next_page_token: str
    def __init__(self, recommenders: _Optional[_Iterable[_Union[RecommenderConfig, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteRecommenderRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteRecommenderResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainRecommenderRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class TrainRecommenderResponse(_message.Message):
    __slots__ = ("stage", "fraction", "message", "model_version", "individuals", "items", "interactions", "trial", "parameters", "trials")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDIVIDUALS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    fraction: float
    message: str
    model_version: int
    individuals: int
    items: int
    interactions: int
    trial: TuningTrial
    parameters: StrategyParameters
    trials: _containers.RepeatedCompositeFieldContainer[TuningTrial]
    def __init__(self, stage: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ..., model_version: _Optional[int] = ..., individuals: _Optional[int] = ..., items: _Optional[int] = ..., interactions: _Optional[int] = ..., trial: _Optional[_Union[TuningTrial, _Mapping]] = ..., parameters: _Optional[_Union[StrategyParameters, _Mapping]] = ..., trials: _Optional[_Iterable[_Union[TuningTrial, _Mapping]]] = ...) -> None: ...

class TuningTrial(_message.Message):
    __slots__ = ("number", "parameters", "precision_at_k", "ndcg_at_k", "seconds", "error")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_AT_K_FIELD_NUMBER: _ClassVar[int]
    NDCG_AT_K_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    number: int
    parameters: StrategyParameters
    precision_at_k: float
    ndcg_at_k: float
    seconds: float
    error: str
    def __init__(self, number: _Optional[int] = ..., parameters: _Optional[_Union[StrategyParameters, _Mapping]] = ..., precision_at_k: _Optional[float] = ..., ndcg_at_k: _Optional[float] = ..., seconds: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class EvaluateRecommenderRequest(_message.Message):
    __slots__ = ("name", "k", "test_fraction", "seed", "split", "cutoff_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    TEST_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    k: int
    test_fraction: float
    seed: int
    split: EvaluationSplit
    cutoff_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., k: _Optional[int] = ..., test_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., split: _Optional[_Union[EvaluationSplit, str]] = ..., cutoff_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EvaluateRecommenderResponse(_message.Message):
    __slots__ = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "coverage", "evaluated_individuals", "k", "cutoff_time")
    PRECISION_AT_K_FIELD_NUMBER: _ClassVar[int]
    RECALL_AT_K_FIELD_NUMBER: _ClassVar[int]
    NDCG_AT_K_FIELD_NUMBER: _ClassVar[int]
    MAP_AT_K_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_INDIVIDUALS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_TIME_FIELD_NUMBER: _ClassVar[int]
    precision_at_k: float
    recall_at_k: float
    ndcg_at_k: float
    map_at_k: float
    coverage: float
    evaluated_individuals: int
    k: int
    cutoff_time: _timestamp_pb2.Timestamp
    def __init__(self, precision_at_k: _Optional[float] = ..., recall_at_k: _Optional[float] = ..., ndcg_at_k: _Optional[float] = ..., map_at_k: _Optional[float] = ..., coverage: _Optional[float] = ..., evaluated_individuals: _Optional[int] = ..., k: _Optional[int] = ..., cutoff_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EraseIndividualRequest(_message.Message):
    __slots__ = ("unified_individual_ids",)
    UNIFIED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    unified_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unified_individual_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class EraseIndividualResponse(_message.Message):
    __slots__ = ("erased_rows",)
    ERASED_ROWS_FIELD_NUMBER: _ClassVar[int]
    erased_rows: int
    def __init__(self, erased_rows: _Optional[int] = ...) -> None: ...

class ExportIndividualRequest(_message.Message):
    __slots__ = ("unified_individual_ids",)
    UNIFIED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    unified_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unified_individual_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportIndividualResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class ReassignInteractionsRequest(_message.Message):
    __slots__ = ("from_individual_ids", "to_individual_id", "only_first_recorded_for")
    FROM_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    TO_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ONLY_FIRST_RECORDED_FOR_FIELD_NUMBER: _ClassVar[int]
    from_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    to_individual_id: str
    only_first_recorded_for: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, from_individual_ids: _Optional[_Iterable[str]] = ..., to_individual_id: _Optional[str] = ..., only_first_recorded_for: _Optional[_Iterable[str]] = ...) -> None: ...

class ReassignInteractionsResponse(_message.Message):
    __slots__ = ("moved_count",)
    MOVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    moved_count: int
    def __init__(self, moved_count: _Optional[int] = ...) -> None: ...
