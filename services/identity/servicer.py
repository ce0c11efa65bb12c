"""IdentityService over gRPC: proto <-> domain translation only."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from personalization.common.v1 import common_pb2
from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.match_models import MatchModels
from services.identity.matching import IdentityType, Ruleset
from services.identity.privacy import IdentityPrivacy
from services.identity.probabilistic import DEFAULT_THRESHOLD, Probabilistic
from services.identity.rerun import Progress
from services.identity.service import IdentityService
from services.identity.subjects import validate_subjects
from services.identity.training import TrainingProgress
from shared import contract
from shared.context import current_tenant

_PHASES = {"LOADING": pb.RUN_PHASE_LOADING, "MATCHING": pb.RUN_PHASE_MATCHING, "WRITING": pb.RUN_PHASE_WRITING}
_KINDS = {"MERGE": pb.MERGE_EVENT_KIND_MERGE, "UNMERGE": pb.MERGE_EVENT_KIND_UNMERGE,
          "REFUSED": pb.MERGE_EVENT_KIND_REFUSED}


def _timestamp(value) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _identities(keys) -> list[common_pb2.Identity]:
    return [common_pb2.Identity(type=t, value=v) for t, v in keys]


def _scalar(value: struct_pb2.Value):
    """A Struct value as Python; a list, struct or non-finite number comes back as something validation refuses."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value if math.isfinite(value.number_value) else ()
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value" or kind is None:
        return None
    return MessageToDict(value)


def _attributes(subject: pb.Subject) -> dict:
    """A subject's attributes (most events have none: no conversion then)."""
    fields = subject.attributes.fields
    if not fields:
        return {}
    # Lists and objects are valid attributes of an event (the contract's limits) but no criterion compares them.
    return {name: _scalar(value) for name, value in fields.items()
            if value.WhichOneof("kind") not in ("list_value", "struct_value")}


def _enum_name(enum, value: int, prefix: str) -> str:
    name = enum.Name(value) if value in enum.values() else ""
    return "" if name.endswith("_UNSPECIFIED") else name.removeprefix(prefix)


def _type_to_pb(kind: IdentityType) -> pb.IdentityType:
    return pb.IdentityType(name=kind.name, unique=kind.unique,
                           normalization=pb.Normalization.Value("NORMALIZATION_" + kind.normalization),
                           default_region=kind.default_region, built_in=kind.built_in)


def _ruleset_to_pb(ruleset: Ruleset) -> pb.Ruleset:
    rules = []
    for rule in ruleset.rules:
        criteria = []
        for c in rule.criteria:
            criterion = pb.MatchCriterion(
                method=pb.MatchMethod.Value("MATCH_METHOD_" + c.method),
                precision=pb.FuzzyPrecision.Value("FUZZY_PRECISION_" + c.precision) if c.precision else 0)
            if c.kind == "identity":
                criterion.identity_type = c.name
            else:
                criterion.attribute = c.name
            criteria.append(criterion)
        rules.append(pb.MatchRule(name=rule.name, criteria=criteria,
                                  probabilistic=_probabilistic_to_pb(rule.probabilistic)))
    return pb.Ruleset(version=ruleset.version, rules=rules, custom_attributes=list(ruleset.custom_attributes),
                      create_time=_timestamp(ruleset.created_at))


def _probabilistic_to_pb(spec: Probabilistic | None) -> pb.ProbabilisticMatch | None:
    if spec is None:
        return None
    fields = []
    for f in spec.fields:
        compared = pb.ComparedField(comparison=pb.FieldComparison.Value("FIELD_COMPARISON_" + f.comparison),
                                    fuzzy_thresholds=list(f.thresholds))
        if f.kind == "identity":
            compared.identity_type = f.name
        else:
            compared.attribute = f.name
        fields.append(compared)
    return pb.ProbabilisticMatch(fields=fields, blocking_rules=[pb.BlockingRule(fields=list(b)) for b in spec.blocking],
                                 match_weight_threshold=spec.threshold)


def _probabilistic_in(spec: pb.ProbabilisticMatch) -> dict:
    return {
        "fields": [("identity" if f.WhichOneof("field") == "identity_type" else
                    "attribute" if f.WhichOneof("field") == "attribute" else "", f.identity_type or f.attribute,
                    _enum_name(pb.FieldComparison, f.comparison, "FIELD_COMPARISON_"), list(f.fuzzy_thresholds))
                   for f in spec.fields],
        "blocking": [list(b.fields) for b in spec.blocking_rules],
        "threshold": spec.match_weight_threshold if spec.HasField("match_weight_threshold") else DEFAULT_THRESHOLD,
    }


def _merge_event(e) -> pb.MergeEvent:
    return pb.MergeEvent(event_id=str(e.event_id), kind=_KINDS[e.kind], survivor_individual_id=e.survivor_id,
                         other_individual_id=e.other_id, rule=e.rule, evidence=_identities(e.evidence),
                         reason=e.reason, event_time=_timestamp(e.at), model_version=e.model_version)


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    """Translates IdentityService RPCs to the identity use cases."""

    def __init__(self, service: IdentityService, privacy: IdentityPrivacy, models: MatchModels) -> None:
        self.service = service
        self.privacy = privacy
        self.models = models

    async def ResolveIdentities(self, request: pb.ResolveIdentitiesRequest,
                                context: grpc.aio.ServicerContext) -> pb.ResolveIdentitiesResponse:
        problems = contract.violations(request)
        subjects = [[(i.type, i.value) for i in subject.identities] for subject in request.subjects]
        attributes = [_attributes(s) for s in request.subjects]
        if problems:
            config = await self.service.config(current_tenant())
            contract.raise_merged(problems, lambda: validate_subjects(
                subjects, config, self.service.settings.default_region, attributes))
        resolutions = await self.service.resolve(
            current_tenant(), subjects, lookup_only=request.lookup_only,
            attributes=attributes if any(attributes) else None)
        return pb.ResolveIdentitiesResponse(
            resolutions=[
                pb.Resolution(
                    unified_individual_id=r.individual_id,
                    created=r.created,
                    merged_individual_ids=list(r.merged_ids),
                    suppressed=r.suppressed,
                )
                for r in resolutions
            ]
        )

    async def GetIndividual(self, request: pb.GetIndividualRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetIndividualResponse:
        found = await self.service.get_individual(current_tenant(), request.unified_individual_id)
        return pb.GetIndividualResponse(
            individual=pb.Individual(
                unified_individual_id=found.individual_id,
                identities=_identities(found.identities),
                alias_ids=found.alias_ids,
                create_time=_timestamp(found.created_at),
                source_record_count=found.record_count,
            )
        )

    async def UpsertIdentityType(self, request: pb.UpsertIdentityTypeRequest,
                                 context: grpc.aio.ServicerContext) -> pb.UpsertIdentityTypeResponse:
        t = request.identity_type
        stored = await self.service.upsert_identity_type(current_tenant(), IdentityType(
            t.name, t.unique, _enum_name(pb.Normalization, t.normalization, "NORMALIZATION_"), t.default_region))
        return pb.UpsertIdentityTypeResponse(identity_type=_type_to_pb(stored))

    async def ListIdentityTypes(self, request: pb.ListIdentityTypesRequest,
                                context: grpc.aio.ServicerContext) -> pb.ListIdentityTypesResponse:
        types = await self.service.list_identity_types(current_tenant())
        return pb.ListIdentityTypesResponse(identity_types=[_type_to_pb(t) for t in types],
                                            default_region=self.service.settings.default_region)

    async def CreateRuleset(self, request: pb.CreateRulesetRequest,
                            context: grpc.aio.ServicerContext) -> pb.CreateRulesetResponse:
        rules = []
        for rule in request.ruleset.rules:
            criteria = []
            for c in rule.criteria:
                which = c.WhichOneof("field")
                criteria.append((
                    "identity" if which == "identity_type" else "attribute" if which == "attribute" else "",
                    c.identity_type or c.attribute,
                    _enum_name(pb.MatchMethod, c.method, "MATCH_METHOD_"),
                    _enum_name(pb.FuzzyPrecision, c.precision, "FUZZY_PRECISION_"),
                ))
            rules.append((rule.name, criteria, _probabilistic_in(rule.probabilistic)
                          if rule.HasField("probabilistic") else None))
        stored = await self.service.create_ruleset(current_tenant(), rules, list(request.ruleset.custom_attributes))
        return pb.CreateRulesetResponse(ruleset=_ruleset_to_pb(stored))

    async def GetRuleset(self, request: pb.GetRulesetRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetRulesetResponse:
        return pb.GetRulesetResponse(ruleset=_ruleset_to_pb(
            await self.service.get_ruleset(current_tenant(), request.version)))

    async def RunRuleset(self, request: pb.RunRulesetRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.RunRulesetResponse]:
        tenant = current_tenant()
        version = (await self.service.config(tenant)).ruleset.version
        async for step in self.service.run_ruleset(tenant):
            if isinstance(step, Progress):
                yield pb.RunRulesetResponse(
                    phase=_PHASES.get(step.phase, pb.RUN_PHASE_LOADING), ruleset_version=version,
                    records_processed=step.records_processed, records_total=step.records_total,
                    comparisons=step.comparisons)
            else:
                yield pb.RunRulesetResponse(
                    phase=pb.RUN_PHASE_DONE, ruleset_version=version, records_processed=step.records,
                    records_total=step.records, comparisons=step.comparisons, clusters=step.clusters,
                    kept_ids=step.kept_ids, new_ids=step.new_ids, merged=len(step.redirects),
                    refused=step.refused)

    async def Unmerge(self, request: pb.UnmergeRequest, context: grpc.aio.ServicerContext) -> pb.UnmergeResponse:
        plan = await self.service.unmerge(current_tenant(), request.unified_individual_id)
        return pb.UnmergeResponse(
            unified_individual_id=plan.individual_id, survivor_individual_id=plan.survivor_id,
            identities=_identities(plan.reported), alias_ids=[m for m in plan.members if m != plan.individual_id])

    async def ListMergeEvents(self, request: pb.ListMergeEventsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListMergeEventsResponse:
        events, token = await self.service.list_merge_events(
            current_tenant(), request.unified_individual_id, request.page_size, request.page_token)
        return pb.ListMergeEventsResponse(
            merge_events=[_merge_event(e) for e in events],
            next_page_token=token,
        )

    async def ListUnpropagatedMergeEvents(self, request: pb.ListUnpropagatedMergeEventsRequest,
                                          context: grpc.aio.ServicerContext) -> pb.ListUnpropagatedMergeEventsResponse:
        events = await self.service.unpropagated_merge_events(current_tenant(), request.page_size,
                                                              request.min_age_seconds)
        return pb.ListUnpropagatedMergeEventsResponse(merge_events=[_merge_event(e) for e in events])

    async def MarkMergeEventsPropagated(self, request: pb.MarkMergeEventsPropagatedRequest,
                                        context: grpc.aio.ServicerContext) -> pb.MarkMergeEventsPropagatedResponse:
        marked = await self.service.mark_merge_events_propagated(
            current_tenant(), list(request.event_ids),
            [(m.survivor_individual_id, m.merged_individual_id) for m in request.merges])
        return pb.MarkMergeEventsPropagatedResponse(marked_count=marked)

    async def SuppressIndividual(self, request: pb.SuppressIndividualRequest,
                                 context: grpc.aio.ServicerContext) -> pb.SuppressIndividualResponse:
        identity = (request.identity.type, request.identity.value) if request.HasField("identity") else None
        done = await self.privacy.suppress(current_tenant(), identity, request.unified_individual_id)
        if done.target is None:
            return pb.SuppressIndividualResponse(already_forgotten=True)
        return pb.SuppressIndividualResponse(
            unified_individual_id=done.target.individual_id, alias_ids=done.target.alias_ids,
            identities=_identities(done.target.unique + done.target.shared),
            suppressed_identity_count=done.suppressed_count)

    async def EraseIndividual(self, request: pb.EraseIndividualRequest,
                              context: grpc.aio.ServicerContext) -> pb.EraseIndividualResponse:
        erased = await self.privacy.erase(current_tenant(), list(request.unified_individual_ids))
        return pb.EraseIndividualResponse(erased_rows=erased)

    async def ExportIndividual(self, request: pb.ExportIndividualRequest,
                               context: grpc.aio.ServicerContext) -> pb.ExportIndividualResponse:
        return pb.ExportIndividualResponse(
            json=await self.privacy.export(current_tenant(), list(request.unified_individual_ids)))

    async def LiftSuppression(self, request: pb.LiftSuppressionRequest,
                              context: grpc.aio.ServicerContext) -> pb.LiftSuppressionResponse:
        lifted = await self.privacy.lift(current_tenant(), [(i.type, i.value) for i in request.identities])
        return pb.LiftSuppressionResponse(lifted_count=lifted)

    async def TrainMatchModel(self, request: pb.TrainMatchModelRequest,
                              context: grpc.aio.ServicerContext) -> AsyncIterator[pb.TrainMatchModelResponse]:
        tenant = current_tenant()
        ruleset = (await self.service.config(tenant)).ruleset
        rule = ruleset.probabilistic_rule.name if ruleset.probabilistic_rule else ""
        async for step in self.models.train(tenant):
            if isinstance(step, TrainingProgress):
                yield pb.TrainMatchModelResponse(phase=step.phase, records=step.records,
                                                 blocked_pairs=step.blocked_pairs, ruleset_version=ruleset.version,
                                                 rule=rule)
            else:
                yield pb.TrainMatchModelResponse(
                    phase="DONE", records=step.summary["records"], blocked_pairs=step.summary["blocked_pairs"],
                    model_version=step.version, ruleset_version=step.ruleset_version, rule=step.model.rule,
                    prior=step.model.prior)

    async def ExplainMatch(self, request: pb.ExplainMatchRequest,
                           context: grpc.aio.ServicerContext) -> pb.ExplainMatchResponse:
        found = await self.models.explain(
            current_tenant(), [[(i.type, i.value) for i in s.identities] for s in request.subjects],
            [_attributes(s) for s in request.subjects], request.model_version)
        return pb.ExplainMatchResponse(
            rule=found.rule, model_version=found.model_version, score=found.score, prior_weight=found.prior_weight,
            match_probability=found.probability, match_weight_threshold=found.threshold,
            matched=found.score >= found.threshold,
            fields=[pb.FieldExplanation(field=f.field, level=f.level_name, level_index=f.level, weight=f.weight)
                    for f in found.fields])

    async def GetMatchModel(self, request: pb.GetMatchModelRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetMatchModelResponse:
        view = await self.models.get(current_tenant(), request.version)
        weights = view.model.weights()
        fields = [pb.FieldModel(field=f.name, levels=[
            pb.LevelModel(level=name, m=m, u=u, weight=w)
            for name, m, u, w in zip(f.levels(), view.model.m[i], view.model.u[i], weights[i])])
            for i, f in enumerate(view.fields)]
        return pb.GetMatchModelResponse(model=pb.MatchModel(
            version=view.model.version, ruleset_version=view.ruleset_version, rule=view.model.rule,
            prior=view.model.prior, fields=fields, records=view.summary.get("records", 0),
            blocked_pairs=view.summary.get("blocked_pairs", 0), create_time=_timestamp(view.created_at)))
