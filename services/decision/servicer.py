"""The DecisionService RPCs: each translates its request (translate.py), calls one use case, translates the answer."""

from __future__ import annotations

from typing import Any

import grpc

from personalization.decision.v1 import decision_service_pb2 as pb
from personalization.decision.v1 import decision_service_pb2_grpc as pb_grpc
from services.decision.domain import Qualification
from services.decision.postgres_privacy import PostgresPrivacy
from services.decision.replay import DraftCase, DraftQualifier, ReplayLog
from services.decision.service import DecisionService
from services.decision.translate import (
    MODEL_ENUMS,
    StructView,
    assignment_to_proto,
    choice_to_proto,
    cohort_result_to_proto,
    decision_from_proto,
    decision_to_proto,
    duration_from_proto,
    experiment_from_proto,
    experiment_to_proto,
    holdout_from_proto,
    holdout_to_proto,
    log_groups_from_proto,
    log_to_proto,
    logs_from_proto,
    metric_from_proto,
    outcome_from_proto,
    point_from_proto,
    point_to_proto,
    schema_from_proto,
    schema_to_proto,
    time_from_proto,
)
from services.decision.usecases.common import MAX_LOG_ENTRIES
from services.decision.validation import validate_outcomes
from shared import context as request_context
from shared import contract
from shared.context import current_tenant
from shared.privacy import document, validate_ids

__all__ = ["DecisionServicer", "StructView", "outcome_from_proto"]


def _names(q) -> dict[str, str]:
    """Decision names of a qualification's offers (a bandit samples only decisions whose rule it evaluated)."""
    return {e.decision_id: e.decision_name for e in q.evaluations}


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

    def __init__(self, service: DecisionService, privacy: PostgresPrivacy,
                 replay: tuple[DraftQualifier, ReplayLog] | None = None) -> None:
        self.service = service
        self.privacy = privacy
        self.replay = replay
        self._point_proto = _ProtoMemo(point_to_proto)
        self._decision_proto = _ProtoMemo(decision_to_proto)

    async def UpsertPoint(self, request: pb.UpsertPointRequest,
                          context: grpc.aio.ServicerContext) -> pb.UpsertPointResponse:
        stored = await self.service.points.upsert(current_tenant(), point_from_proto(request.point))
        return pb.UpsertPointResponse(point=point_to_proto(stored))

    async def ListPoints(self, request: pb.ListPointsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListPointsResponse:
        points, token = await self.service.points.page(
            current_tenant(), request.page_size, request.page_token, request.include_archived)
        return pb.ListPointsResponse(points=[point_to_proto(p) for p in points], next_page_token=token)

    async def UpsertDecision(self, request: pb.UpsertDecisionRequest,
                             context: grpc.aio.ServicerContext) -> pb.UpsertDecisionResponse:
        stored = await self.service.decisions.upsert(current_tenant(), decision_from_proto(request.decision))
        return pb.UpsertDecisionResponse(decision=decision_to_proto(stored))

    async def ListDecisions(self, request: pb.ListDecisionsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListDecisionsResponse:
        decisions, token = await self.service.decisions.page(
            current_tenant(), request.point_name, request.page_size, request.page_token, request.include_archived
        )
        return pb.ListDecisionsResponse(decisions=[decision_to_proto(d) for d in decisions], next_page_token=token)

    async def Qualify(self, request: pb.QualifyRequest, context: grpc.aio.ServicerContext) -> pb.QualifyResponse:
        qualifications = await self.service.qualifier.one(
            current_tenant(),
            [(p.name, p.decision_id) for p in request.points],
            StructView(request.profile),
            StructView(request.context),
            request.unified_individual_id,
            fallback_only=request.fallback_only,
        )
        response = pb.QualifyResponse(profile_keys=sorted(await self.service.qualifier.profile_keys(
            current_tenant(), [p.name for p in request.points])))
        for q in qualifications:
            out = response.qualifications.add()
            out.point.CopyFrom(self._point_proto(q.point))
            if q.assignment is not None:
                out.experiment.CopyFrom(assignment_to_proto(q.assignment))
            if q.decision is not None:
                out.decision.CopyFrom(self._decision_proto(q.decision))
            for e in q.evaluations:
                out.evaluations.add(
                    decision_id=e.decision_id, decision_name=e.decision_name, matched=e.matched, error=e.error
                )
            out.missing_consents.extend(q.missing_consents)
            out.authentication_required = q.authentication_required
            if q.bandit is not None:
                out.bandit.CopyFrom(choice_to_proto(q.bandit, _names(q)))
            out.holdout = q.holdout
        return response

    async def QualifyBatch(self, request: pb.QualifyBatchRequest,
                           context: grpc.aio.ServicerContext) -> pb.QualifyBatchResponse:
        individuals = request.individuals
        points, rows = await self.service.qualifier.batch(
            current_tenant(),
            list(request.points),
            StructView(request.context),
            [(i.unified_individual_id, StructView(i.profile), StructView(i.context) if i.HasField("context") else None)
             for i in individuals],
            fallback_only=request.fallback_only,
        )
        # Points and decisions are identical across individuals: sent once, referred to by position and by id.
        keys = self.service.qualifier.profile_keys
        response = pb.QualifyBatchResponse(
            points=[self._point_proto(p) for p in points],
            profile_keys=sorted(await keys(current_tenant(), list(request.points))),
            qualify_profile_keys=sorted(await keys(current_tenant(), list(request.points), serving=False)))
        won: dict[str, None] = {}
        # Most individuals qualify alike: each distinct qualification is built once, then copied into every result
        # that holds it, or (compact) sent once and named by its position (experiment assignments and bandit
        # choices, which differ per individual, aside).
        alike: dict[tuple, tuple[int, pb.BatchQualification]] = {}
        shared: dict[int, tuple[int, pb.BatchQualification]] = {}  # by id: answers the use case shares (rows hold them)
        distinct = response.qualifications
        results = response.results
        for individual, qualifications in zip(individuals, rows):
            out = results.add(unified_individual_id=individual.unified_individual_id)
            for q in qualifications:
                known = shared.get(id(q))
                if known is None:
                    key = None if q.bandit is not None or q.assignment is not None else (
                        q.decision.decision_id if q.decision is not None else "", tuple(q.evaluations),
                        q.missing_consents, q.holdout)
                    known = alike.get(key) if key is not None else None
                    if known is None:
                        known = (len(distinct), self._batch_qualification(q, response, won))
                        if request.compact:
                            distinct.append(known[1])
                        if key is not None:
                            alike[key] = known
                    if key is not None:
                        shared[id(q)] = known
                if request.compact:
                    out.qualification_indexes.append(known[0])
                else:
                    out.qualifications.append(known[1])
        return response

    def _batch_qualification(self, q: Qualification, response: pb.QualifyBatchResponse, won: dict[str, None]
                             ) -> pb.BatchQualification:
        """One individual's qualification of a point; a decision won for the first time joins response.decisions."""
        decision_id = ""
        if q.decision is not None:
            decision_id = q.decision.decision_id
            if decision_id not in won:
                won[decision_id] = None
                response.decisions.append(self._decision_proto(q.decision))
        return pb.BatchQualification(
            decision_id=decision_id,
            evaluations=[pb.RuleEvaluation(decision_id=e.decision_id, decision_name=e.decision_name,
                                           matched=e.matched, error=e.error) for e in q.evaluations],
            experiment=assignment_to_proto(q.assignment) if q.assignment is not None else None,
            missing_consents=q.missing_consents,
            bandit=choice_to_proto(q.bandit, _names(q)) if q.bandit is not None else None,
            holdout=q.holdout,
        )

    async def LogDecisions(self, request: pb.LogDecisionsRequest,
                           context: grpc.aio.ServicerContext) -> pb.LogDecisionsResponse:
        times: dict = {}
        logged = await self.service.log.append(current_tenant(), logs_from_proto(request.entries, times),
                                               log_groups_from_proto(request.groups, times))
        return pb.LogDecisionsResponse(logged_count=logged)

    async def ListDecisionLog(self, request: pb.ListDecisionLogRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListDecisionLogResponse:
        entries, token = await self.service.log.page(
            current_tenant(), request.unified_individual_id, request.page_size, request.page_token
        )
        return pb.ListDecisionLogResponse(entries=[log_to_proto(e) for e in entries], next_page_token=token)

    async def GetDecisionLogStats(self, request: pb.GetDecisionLogStatsRequest,
                                  context: grpc.aio.ServicerContext) -> pb.GetDecisionLogStatsResponse:
        start = time_from_proto(request.start_time) if request.HasField("start_time") else None
        end = time_from_proto(request.end_time) if request.HasField("end_time") else None
        stats = await self.service.log.stats(current_tenant(), start, end)
        reply = pb.GetDecisionLogStatsResponse()
        for s in stats:
            if s.point_name is None:
                reply.request_count, reply.served_count, reply.unique_individuals = s.requests, s.served, s.individuals
            else:
                reply.points.add(point_name=s.point_name, served_count=s.served, unique_individuals=s.individuals)
        return reply

    async def ArchivePoint(self, request: pb.ArchivePointRequest,
                           context: grpc.aio.ServicerContext) -> pb.ArchivePointResponse:
        point = await self.service.points.archive(current_tenant(), request.name)
        return pb.ArchivePointResponse(point=point_to_proto(point))

    async def ArchiveDecision(self, request: pb.ArchiveDecisionRequest,
                              context: grpc.aio.ServicerContext) -> pb.ArchiveDecisionResponse:
        decision = await self.service.decisions.archive(current_tenant(), request.decision_id)
        return pb.ArchiveDecisionResponse(decision=decision_to_proto(decision))

    async def DeclareProfileSchema(self, request: pb.DeclareProfileSchemaRequest,
                                   context: grpc.aio.ServicerContext) -> pb.DeclareProfileSchemaResponse:
        stored = await self.service.schemas.declare(current_tenant(), schema_from_proto(request.schema))
        return pb.DeclareProfileSchemaResponse(schema=schema_to_proto(stored))

    async def GetProfileSchema(self, request: pb.GetProfileSchemaRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetProfileSchemaResponse:
        schema = await self.service.schemas.get(current_tenant())
        if schema is None:
            return pb.GetProfileSchemaResponse(declared=False)
        return pb.GetProfileSchemaResponse(schema=schema_to_proto(schema), declared=True)

    async def UpsertExperiment(self, request: pb.UpsertExperimentRequest,
                               context: grpc.aio.ServicerContext) -> pb.UpsertExperimentResponse:
        stored = await self.service.experiments.upsert(current_tenant(), experiment_from_proto(request.experiment))
        return pb.UpsertExperimentResponse(experiment=experiment_to_proto(stored))

    async def ListExperiments(self, request: pb.ListExperimentsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListExperimentsResponse:
        rows, token = await self.service.experiments.page(
            current_tenant(), request.point_name, request.page_size, request.page_token, request.include_archived)
        return pb.ListExperimentsResponse(experiments=[experiment_to_proto(e) for e in rows], next_page_token=token)

    async def StartExperiment(self, request: pb.StartExperimentRequest,
                              context: grpc.aio.ServicerContext) -> pb.StartExperimentResponse:
        e = await self.service.experiments.start(current_tenant(), request.name)
        return pb.StartExperimentResponse(experiment=experiment_to_proto(e))

    async def StopExperiment(self, request: pb.StopExperimentRequest,
                             context: grpc.aio.ServicerContext) -> pb.StopExperimentResponse:
        e = await self.service.experiments.stop(current_tenant(), request.name, request.winner_cohort_id)
        return pb.StopExperimentResponse(experiment=experiment_to_proto(e))

    async def ArchiveExperiment(self, request: pb.ArchiveExperimentRequest,
                                context: grpc.aio.ServicerContext) -> pb.ArchiveExperimentResponse:
        e = await self.service.experiments.archive(current_tenant(), request.name)
        return pb.ArchiveExperimentResponse(experiment=experiment_to_proto(e))

    async def AssignExperiments(self, request: pb.AssignExperimentsRequest,
                                context: grpc.aio.ServicerContext) -> pb.AssignExperimentsResponse:
        assignments, holdout = await self.service.assignments.assign(
            current_tenant(), request.unified_individual_id, list(request.point_names), StructView(request.profile),
            StructView(request.context), request.record_exposure, request.channel,
            request_context.request_id_var.get(),
        )
        return pb.AssignExperimentsResponse(assignments=[assignment_to_proto(a) for a in assignments],
                                            holdout=holdout)

    async def ReassignIndividual(self, request: pb.ReassignIndividualRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ReassignIndividualResponse:
        conflicting = await self.service.assignments.reassign(
            current_tenant(), list(request.from_unified_individual_ids), request.to_unified_individual_id,
            unmerge=request.unmerge)
        return pb.ReassignIndividualResponse(conflicting_experiment_ids=conflicting)

    async def RecordOutcomes(self, request: pb.RecordOutcomesRequest,
                             context: grpc.aio.ServicerContext) -> pb.RecordOutcomesResponse:
        problems = contract.violations(request)
        if problems:
            contract.raise_merged(problems, lambda: validate_outcomes(
                [outcome_from_proto(o) for o in request.outcomes], MAX_LOG_ENTRIES))
        recorded = await self.service.outcomes.record(
            current_tenant(), [outcome_from_proto(o) for o in request.outcomes])
        return pb.RecordOutcomesResponse(recorded_count=recorded)

    async def GetExperimentResults(self, request: pb.GetExperimentResultsRequest,
                                   context: grpc.aio.ServicerContext) -> pb.GetExperimentResultsResponse:
        e, results = await self.service.results.compute(current_tenant(), request.name)
        return pb.GetExperimentResultsResponse(
            experiment=experiment_to_proto(e),
            cohorts=[cohort_result_to_proto(r) for r in results.cohorts],
            sample_ratio_p_value=results.srm_p_value, sample_ratio_mismatch=results.srm,
            leading_cohort_id=results.leading_cohort_id, verdict=results.verdict,
        )

    async def SetHoldout(self, request: pb.SetHoldoutRequest,
                         context: grpc.aio.ServicerContext) -> pb.SetHoldoutResponse:
        stored = await self.service.holdouts.set(current_tenant(), holdout_from_proto(request.holdout))
        return pb.SetHoldoutResponse(holdout=holdout_to_proto(stored))

    async def GetHoldout(self, request: pb.GetHoldoutRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetHoldoutResponse:
        return pb.GetHoldoutResponse(holdout=holdout_to_proto(await self.service.holdouts.get(current_tenant())))

    async def GetHoldoutResults(self, request: pb.GetHoldoutResultsRequest,
                                context: grpc.aio.ServicerContext) -> pb.GetHoldoutResultsResponse:
        holdout, results = await self.service.holdouts.results(
            current_tenant(),
            time_from_proto(request.start_time) if request.HasField("start_time") else None,
            time_from_proto(request.end_time) if request.HasField("end_time") else None,
            metric_from_proto(request.metric), duration_from_proto(request.attribution_window))
        return pb.GetHoldoutResultsResponse(
            holdout=holdout_to_proto(holdout), groups=[cohort_result_to_proto(r) for r in results.cohorts],
            sample_ratio_p_value=results.srm_p_value, sample_ratio_mismatch=results.srm)

    async def GetAttribution(self, request: pb.GetAttributionRequest,
                             context: grpc.aio.ServicerContext) -> pb.GetAttributionResponse:
        credit = await self.service.attribution.credit(
            current_tenant(),
            time_from_proto(request.start_time) if request.HasField("start_time") else None,
            time_from_proto(request.end_time) if request.HasField("end_time") else None,
            duration_from_proto(request.window), request.point_name,
        )
        return pb.GetAttributionResponse(rows=[
            pb.AttributionRow(model=MODEL_ENUMS[model], point_name=point, decision_id=decision, item_id=item,
                              conversions=c.conversions, clicks=c.clicks, revenue=c.revenue)
            for (model, point, decision, item), c in sorted(credit.items())
        ])

    async def EraseIndividual(self, request: pb.EraseIndividualRequest,
                              context: grpc.aio.ServicerContext) -> pb.EraseIndividualResponse:
        erased = await self.privacy.erase(current_tenant(), validate_ids(list(request.unified_individual_ids)))
        return pb.EraseIndividualResponse(erased_rows=erased)

    async def ExportIndividual(self, request: pb.ExportIndividualRequest,
                               context: grpc.aio.ServicerContext) -> pb.ExportIndividualResponse:
        tables = await self.privacy.export(current_tenant(), validate_ids(list(request.unified_individual_ids)))
        return pb.ExportIndividualResponse(json=document(tables))

    async def QualifyDraft(self, request: pb.QualifyDraftRequest,
                           context: grpc.aio.ServicerContext) -> pb.QualifyDraftResponse:
        assert self.replay is not None
        contract.check(request)
        answer = await self.replay[0].qualify(
            current_tenant(), [point_from_proto(p) for p in request.points],
            [(decision_from_proto(d), d.archived) for d in request.decisions],
            [DraftCase(c.unified_individual_id, c.point_name, StructView(c.profile), StructView(c.context))
             for c in request.cases])
        return pb.QualifyDraftResponse(
            results=[pb.DraftResult(decision_id=d) for d in answer.decision_ids],
            decisions=[decision_to_proto(d) for d in answer.decisions],
            changed_decision_ids=answer.changed_decision_ids)

    async def ListReplayLog(self, request: pb.ListReplayLogRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListReplayLogResponse:
        assert self.replay is not None
        contract.check(request)
        rows, token = await self.replay[1].page(
            current_tenant(), time_from_proto(request.start_time) if request.HasField("start_time") else None,
            time_from_proto(request.end_time) if request.HasField("end_time") else None,
            duration_from_proto(request.attribution_window), request.page_size, request.page_token)
        return pb.ListReplayLogResponse(next_page_token=token, rows=[pb.ReplayLogRow(
            entry=log_to_proto(r.entry), clicked=r.clicked, converted=r.converted, revenue=r.revenue,
            randomized=r.randomized, propensity=r.propensity, randomized_decision_ids=r.randomized_decision_ids,
            primary_metric=pb.Metric.Value("METRIC_" + r.primary_metric) if r.primary_metric else pb.METRIC_UNSPECIFIED)
            for r in rows])
