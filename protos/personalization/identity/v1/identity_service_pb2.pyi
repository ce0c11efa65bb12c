import datetime

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

class Normalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMALIZATION_UNSPECIFIED: _ClassVar[Normalization]
    NORMALIZATION_TRIM: _ClassVar[Normalization]
    NORMALIZATION_TRIM_LOWERCASE: _ClassVar[Normalization]
    NORMALIZATION_EMAIL: _ClassVar[Normalization]
    NORMALIZATION_PHONE: _ClassVar[Normalization]

class MatchMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MATCH_METHOD_UNSPECIFIED: _ClassVar[MatchMethod]
    MATCH_METHOD_EXACT: _ClassVar[MatchMethod]
    MATCH_METHOD_EXACT_NORMALIZED: _ClassVar[MatchMethod]
    MATCH_METHOD_FUZZY: _ClassVar[MatchMethod]

class FuzzyPrecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUZZY_PRECISION_UNSPECIFIED: _ClassVar[FuzzyPrecision]
    FUZZY_PRECISION_HIGH: _ClassVar[FuzzyPrecision]
    FUZZY_PRECISION_MEDIUM: _ClassVar[FuzzyPrecision]
    FUZZY_PRECISION_LOW: _ClassVar[FuzzyPrecision]

class RunPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_PHASE_UNSPECIFIED: _ClassVar[RunPhase]
    RUN_PHASE_LOADING: _ClassVar[RunPhase]
    RUN_PHASE_MATCHING: _ClassVar[RunPhase]
    RUN_PHASE_WRITING: _ClassVar[RunPhase]
    RUN_PHASE_DONE: _ClassVar[RunPhase]

class MergeEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MERGE_EVENT_KIND_UNSPECIFIED: _ClassVar[MergeEventKind]
    MERGE_EVENT_KIND_MERGE: _ClassVar[MergeEventKind]
    MERGE_EVENT_KIND_UNMERGE: _ClassVar[MergeEventKind]
    MERGE_EVENT_KIND_REFUSED: _ClassVar[MergeEventKind]

class FieldComparison(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_COMPARISON_UNSPECIFIED: _ClassVar[FieldComparison]
    FIELD_COMPARISON_TEXT: _ClassVar[FieldComparison]
    FIELD_COMPARISON_EXACT: _ClassVar[FieldComparison]
    FIELD_COMPARISON_DATE: _ClassVar[FieldComparison]
    FIELD_COMPARISON_EMAIL: _ClassVar[FieldComparison]
NORMALIZATION_UNSPECIFIED: Normalization
NORMALIZATION_TRIM: Normalization
NORMALIZATION_TRIM_LOWERCASE: Normalization
NORMALIZATION_EMAIL: Normalization
NORMALIZATION_PHONE: Normalization
MATCH_METHOD_UNSPECIFIED: MatchMethod
MATCH_METHOD_EXACT: MatchMethod
MATCH_METHOD_EXACT_NORMALIZED: MatchMethod
MATCH_METHOD_FUZZY: MatchMethod
FUZZY_PRECISION_UNSPECIFIED: FuzzyPrecision
FUZZY_PRECISION_HIGH: FuzzyPrecision
FUZZY_PRECISION_MEDIUM: FuzzyPrecision
FUZZY_PRECISION_LOW: FuzzyPrecision
RUN_PHASE_UNSPECIFIED: RunPhase
RUN_PHASE_LOADING: RunPhase
RUN_PHASE_MATCHING: RunPhase
RUN_PHASE_WRITING: RunPhase
RUN_PHASE_DONE: RunPhase
MERGE_EVENT_KIND_UNSPECIFIED: MergeEventKind
MERGE_EVENT_KIND_MERGE: MergeEventKind
MERGE_EVENT_KIND_UNMERGE: MergeEventKind
MERGE_EVENT_KIND_REFUSED: MergeEventKind
FIELD_COMPARISON_UNSPECIFIED: FieldComparison
FIELD_COMPARISON_TEXT: FieldComparison
FIELD_COMPARISON_EXACT: FieldComparison
FIELD_COMPARISON_DATE: FieldComparison
FIELD_COMPARISON_EMAIL: FieldComparison

class ListUnpropagatedMergeEventsRequest(_message.Message):
    __slots__ = ("page_size", "min_age_seconds")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    min_age_seconds: float
    def __init__(self, page_size: _Optional[int] = ..., min_age_seconds: _Optional[float] = ...) -> None: ...

class ListUnpropagatedMergeEventsResponse(_message.Message):
    __slots__ = ("merge_events",)
    MERGE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    merge_events: _containers.RepeatedCompositeFieldContainer[MergeEvent]
    def __init__(self, merge_events: _Optional[_Iterable[_Union[MergeEvent, _Mapping]]] = ...) -> None: ...

class MarkMergeEventsPropagatedRequest(_message.Message):
    __slots__ = ("event_ids", "merges")
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    MERGES_FIELD_NUMBER: _ClassVar[int]
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    merges: _containers.RepeatedCompositeFieldContainer[MergedPair]
    def __init__(self, event_ids: _Optional[_Iterable[str]] = ..., merges: _Optional[_Iterable[_Union[MergedPair, _Mapping]]] = ...) -> None: ...

class MergedPair(_message.Message):
    __slots__ = ("survivor_individual_id", "merged_individual_id")
    SURVIVOR_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    MERGED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    survivor_individual_id: str
    merged_individual_id: str
    def __init__(self, survivor_individual_id: _Optional[str] = ..., merged_individual_id: _Optional[str] = ...) -> None: ...

class MarkMergeEventsPropagatedResponse(_message.Message):
    __slots__ = ("marked_count",)
    MARKED_COUNT_FIELD_NUMBER: _ClassVar[int]
    marked_count: int
    def __init__(self, marked_count: _Optional[int] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("identities", "attributes")
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    attributes: _struct_pb2.Struct
    def __init__(self, identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ResolveIdentitiesRequest(_message.Message):
    __slots__ = ("subjects", "lookup_only")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_ONLY_FIELD_NUMBER: _ClassVar[int]
    subjects: _containers.RepeatedCompositeFieldContainer[Subject]
    lookup_only: bool
    def __init__(self, subjects: _Optional[_Iterable[_Union[Subject, _Mapping]]] = ..., lookup_only: _Optional[bool] = ...) -> None: ...

class Resolution(_message.Message):
    __slots__ = ("unified_individual_id", "created", "merged_individual_ids", "suppressed")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MERGED_INDIVIDUAL_IDS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    created: bool
    merged_individual_ids: _containers.RepeatedScalarFieldContainer[str]
    suppressed: bool
    def __init__(self, unified_individual_id: _Optional[str] = ..., created: _Optional[bool] = ..., merged_individual_ids: _Optional[_Iterable[str]] = ..., suppressed: _Optional[bool] = ...) -> None: ...

class ResolveIdentitiesResponse(_message.Message):
    __slots__ = ("resolutions",)
    RESOLUTIONS_FIELD_NUMBER: _ClassVar[int]
    resolutions: _containers.RepeatedCompositeFieldContainer[Resolution]
    def __init__(self, resolutions: _Optional[_Iterable[_Union[Resolution, _Mapping]]] = ...) -> None: ...

class GetIndividualRequest(_message.Message):
    __slots__ = ("unified_individual_id",)
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    def __init__(self, unified_individual_id: _Optional[str] = ...) -> None: ...

class Individual(_message.Message):
    __slots__ = ("unified_individual_id", "identities", "alias_ids", "create_time", "source_record_count")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ALIAS_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    alias_ids: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    source_record_count: int
    def __init__(self, unified_individual_id: _Optional[str] = ..., identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ..., alias_ids: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_record_count: _Optional[int] = ...) -> None: ...

class GetIndividualResponse(_message.Message):
    __slots__ = ("individual",)
    INDIVIDUAL_FIELD_NUMBER: _ClassVar[int]
    individual: Individual
    def __init__(self, individual: _Optional[_Union[Individual, _Mapping]] = ...) -> None: ...

class IdentityType(_message.Message):
    __slots__ = ("name", "unique", "normalization", "default_region", "built_in")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REGION_FIELD_NUMBER: _ClassVar[int]
    BUILT_IN_FIELD_NUMBER: _ClassVar[int]
    name: str
    unique: bool
    normalization: Normalization
    default_region: str
    built_in: bool
    def __init__(self, name: _Optional[str] = ..., unique: _Optional[bool] = ..., normalization: _Optional[_Union[Normalization, str]] = ..., default_region: _Optional[str] = ..., built_in: _Optional[bool] = ...) -> None: ...

class UpsertIdentityTypeRequest(_message.Message):
    __slots__ = ("identity_type",)
    IDENTITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    identity_type: IdentityType
    def __init__(self, identity_type: _Optional[_Union[IdentityType, _Mapping]] = ...) -> None: ...

class UpsertIdentityTypeResponse(_message.Message):
    __slots__ = ("identity_type",)
    IDENTITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    identity_type: IdentityType
    def __init__(self, identity_type: _Optional[_Union[IdentityType, _Mapping]] = ...) -> None: ...

class ListIdentityTypesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListIdentityTypesResponse(_message.Message):
    __slots__ = ("identity_types", "default_region")
    IDENTITY_TYPES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REGION_FIELD_NUMBER: _ClassVar[int]
    identity_types: _containers.RepeatedCompositeFieldContainer[IdentityType]
    default_region: str
    def __init__(self, identity_types: _Optional[_Iterable[_Union[IdentityType, _Mapping]]] = ..., default_region: _Optional[str] = ...) -> None: ...

class MatchCriterion(_message.Message):
    __slots__ = ("identity_type", "attribute", "method", "precision")
    IDENTITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    identity_type: str
    attribute: str
    method: MatchMethod
    precision: FuzzyPrecision
    def __init__(self, identity_type: _Optional[str] = ..., attribute: _Optional[str] = ..., method: _Optional[_Union[MatchMethod, str]] = ..., precision: _Optional[_Union[FuzzyPrecision, str]] = ...) -> None: ...

class MatchRule(_message.Message):
    __slots__ = ("name", "criteria", "probabilistic")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    PROBABILISTIC_FIELD_NUMBER: _ClassVar[int]
    name: str
    criteria: _containers.RepeatedCompositeFieldContainer[MatchCriterion]
    probabilistic: ProbabilisticMatch
    def __init__(self, name: _Optional[str] = ..., criteria: _Optional[_Iterable[_Union[MatchCriterion, _Mapping]]] = ..., probabilistic: _Optional[_Union[ProbabilisticMatch, _Mapping]] = ...) -> None: ...

class Ruleset(_message.Message):
    __slots__ = ("version", "rules", "custom_attributes", "create_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    rules: _containers.RepeatedCompositeFieldContainer[MatchRule]
    custom_attributes: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., rules: _Optional[_Iterable[_Union[MatchRule, _Mapping]]] = ..., custom_attributes: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateRulesetRequest(_message.Message):
    __slots__ = ("ruleset",)
    RULESET_FIELD_NUMBER: _ClassVar[int]
    ruleset: Ruleset
    def __init__(self, ruleset: _Optional[_Union[Ruleset, _Mapping]] = ...) -> None: ...

class CreateRulesetResponse(_message.Message):
    __slots__ = ("ruleset",)
    RULESET_FIELD_NUMBER: _ClassVar[int]
    ruleset: Ruleset
    def __init__(self, ruleset: _Optional[_Union[Ruleset, _Mapping]] = ...) -> None: ...

class GetRulesetRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class GetRulesetResponse(_message.Message):
    __slots__ = ("ruleset",)
    RULESET_FIELD_NUMBER: _ClassVar[int]
    ruleset: Ruleset
    def __init__(self, ruleset: _Optional[_Union[Ruleset, _Mapping]] = ...) -> None: ...

class RunRulesetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunRulesetResponse(_message.Message):
    __slots__ = ("phase", "ruleset_version", "records_processed", "records_total", "comparisons", "clusters", "kept_ids", "new_ids", "merged", "refused")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RULESET_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    KEPT_IDS_FIELD_NUMBER: _ClassVar[int]
    NEW_IDS_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    phase: RunPhase
    ruleset_version: int
    records_processed: int
    records_total: int
    comparisons: int
    clusters: int
    kept_ids: int
    new_ids: int
    merged: int
    refused: int
    def __init__(self, phase: _Optional[_Union[RunPhase, str]] = ..., ruleset_version: _Optional[int] = ..., records_processed: _Optional[int] = ..., records_total: _Optional[int] = ..., comparisons: _Optional[int] = ..., clusters: _Optional[int] = ..., kept_ids: _Optional[int] = ..., new_ids: _Optional[int] = ..., merged: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...

class UnmergeRequest(_message.Message):
    __slots__ = ("unified_individual_id",)
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    def __init__(self, unified_individual_id: _Optional[str] = ...) -> None: ...

class UnmergeResponse(_message.Message):
    __slots__ = ("unified_individual_id", "survivor_individual_id", "identities", "alias_ids")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVOR_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ALIAS_IDS_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    survivor_individual_id: str
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    alias_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unified_individual_id: _Optional[str] = ..., survivor_individual_id: _Optional[str] = ..., identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ..., alias_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MergeEvent(_message.Message):
    __slots__ = ("event_id", "kind", "survivor_individual_id", "other_individual_id", "rule", "evidence", "reason", "event_time", "model_version")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SURVIVOR_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    OTHER_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    kind: MergeEventKind
    survivor_individual_id: str
    other_individual_id: str
    rule: str
    evidence: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    reason: str
    event_time: _timestamp_pb2.Timestamp
    model_version: int
    def __init__(self, event_id: _Optional[str] = ..., kind: _Optional[_Union[MergeEventKind, str]] = ..., survivor_individual_id: _Optional[str] = ..., other_individual_id: _Optional[str] = ..., rule: _Optional[str] = ..., evidence: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ..., reason: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class ListMergeEventsRequest(_message.Message):
    __slots__ = ("unified_individual_id", "page_size", "page_token")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    page_size: int
    page_token: str
    def __init__(self, unified_individual_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMergeEventsResponse(_message.Message):
    __slots__ = ("merge_events", "next_page_token")
    MERGE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    merge_events: _containers.RepeatedCompositeFieldContainer[MergeEvent]
    next_page_token: str
    def __init__(self, merge_events: _Optional[_Iterable[_Union[MergeEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SuppressIndividualRequest(_message.Message):
    __slots__ = ("identity", "unified_individual_id")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    identity: _common_pb2.Identity
    unified_individual_id: str
    def __init__(self, identity: _Optional[_Union[_common_pb2.Identity, _Mapping]] = ..., unified_individual_id: _Optional[str] = ...) -> None: ...

class SuppressIndividualResponse(_message.Message):
    __slots__ = ("unified_individual_id", "alias_ids", "identities", "already_forgotten", "suppressed_identity_count")
    UNIFIED_INDIVIDUAL_ID_FIELD_NUMBER: _ClassVar[int]
    ALIAS_IDS_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_IDENTITY_COUNT_FIELD_NUMBER: _ClassVar[int]
    unified_individual_id: str
    alias_ids: _containers.RepeatedScalarFieldContainer[str]
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    already_forgotten: bool
    suppressed_identity_count: int
    def __init__(self, unified_individual_id: _Optional[str] = ..., alias_ids: _Optional[_Iterable[str]] = ..., identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ..., already_forgotten: _Optional[bool] = ..., suppressed_identity_count: _Optional[int] = ...) -> None: ...

class LiftSuppressionRequest(_message.Message):
    __slots__ = ("identities",)
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    identities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Identity]
    def __init__(self, identities: _Optional[_Iterable[_Union[_common_pb2.Identity, _Mapping]]] = ...) -> None: ...

class LiftSuppressionResponse(_message.Message):
    __slots__ = ("lifted_count",)
    LIFTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    lifted_count: int
    def __init__(self, lifted_count: _Optional[int] = ...) -> None: ...

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

class ComparedField(_message.Message):
    __slots__ = ("identity_type", "attribute", "comparison", "fuzzy_thresholds")
    IDENTITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    FUZZY_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    identity_type: str
    attribute: str
    comparison: FieldComparison
    fuzzy_thresholds: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, identity_type: _Optional[str] = ..., attribute: _Optional[str] = ..., comparison: _Optional[_Union[FieldComparison, str]] = ..., fuzzy_thresholds: _Optional[_Iterable[float]] = ...) -> None: ...

class BlockingRule(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fields: _Optional[_Iterable[str]] = ...) -> None: ...

class ProbabilisticMatch(_message.Message):
    __slots__ = ("fields", "blocking_rules", "match_weight_threshold")
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_RULES_FIELD_NUMBER: _ClassVar[int]
    MATCH_WEIGHT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedCompositeFieldContainer[ComparedField]
    blocking_rules: _containers.RepeatedCompositeFieldContainer[BlockingRule]
    match_weight_threshold: float
    def __init__(self, fields: _Optional[_Iterable[_Union[ComparedField, _Mapping]]] = ..., blocking_rules: _Optional[_Iterable[_Union[BlockingRule, _Mapping]]] = ..., match_weight_threshold: _Optional[float] = ...) -> None: ...

class TrainMatchModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainMatchModelResponse(_message.Message):
    __slots__ = ("phase", "records", "blocked_pairs", "model_version", "ruleset_version", "rule", "prior")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_PAIRS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULESET_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    phase: str
    records: int
    blocked_pairs: int
    model_version: int
    ruleset_version: int
    rule: str
    prior: float
    def __init__(self, phase: _Optional[str] = ..., records: _Optional[int] = ..., blocked_pairs: _Optional[int] = ..., model_version: _Optional[int] = ..., ruleset_version: _Optional[int] = ..., rule: _Optional[str] = ..., prior: _Optional[float] = ...) -> None: ...

class ExplainMatchRequest(_message.Message):
    __slots__ = ("subjects", "model_version")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    subjects: _containers.RepeatedCompositeFieldContainer[Subject]
    model_version: int
    def __init__(self, subjects: _Optional[_Iterable[_Union[Subject, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...

class FieldExplanation(_message.Message):
    __slots__ = ("field", "level", "level_index", "weight")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LEVEL_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    field: str
    level: str
    level_index: int
    weight: float
    def __init__(self, field: _Optional[str] = ..., level: _Optional[str] = ..., level_index: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class ExplainMatchResponse(_message.Message):
    __slots__ = ("rule", "model_version", "score", "prior_weight", "match_probability", "match_weight_threshold", "matched", "fields")
    RULE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PRIOR_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MATCH_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MATCH_WEIGHT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    rule: str
    model_version: int
    score: float
    prior_weight: float
    match_probability: float
    match_weight_threshold: float
    matched: bool
    fields: _containers.RepeatedCompositeFieldContainer[FieldExplanation]
    def __init__(self, rule: _Optional[str] = ..., model_version: _Optional[int] = ..., score: _Optional[float] = ..., prior_weight: _Optional[float] = ..., match_probability: _Optional[float] = ..., match_weight_threshold: _Optional[float] = ..., matched: _Optional[bool] = ..., fields: _Optional[_Iterable[_Union[FieldExplanation, _Mapping]]] = ...) -> None: ...

class GetMatchModelRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class LevelModel(_message.Message):
    __slots__ = ("level", "m", "u", "weight")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    U_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    level: str
    m: float
    u: float
    weight: float
    def __init__(self, level: _Optional[str] = ..., m: _Optional[float] = ..., u: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class FieldModel(_message.Message):
    __slots__ = ("field", "levels")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    field: str
    levels: _containers.RepeatedCompositeFieldContainer[LevelModel]
    def __init__(self, field: _Optional[str] = ..., levels: _Optional[_Iterable[_Union[LevelModel, _Mapping]]] = ...) -> None: ...

class MatchModel(_message.Message):
    __slots__ = ("version", "ruleset_version", "rule", "prior", "fields", "records", "blocked_pairs", "create_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RULESET_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_PAIRS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    ruleset_version: int
    rule: str
    prior: float
    fields: _containers.RepeatedCompositeFieldContainer[FieldModel]
    records: int
    blocked_pairs: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., ruleset_version: _Optional[int] = ..., rule: _Optional[str] = ..., prior: _Optional[float] = ..., fields: _Optional[_Iterable[_Union[FieldModel, _Mapping]]] = ..., records: _Optional[int] = ..., blocked_pairs: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetMatchModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: MatchModel
    def __init__(self, model: _Optional[_Union[MatchModel, _Mapping]] = ...) -> None: ...
