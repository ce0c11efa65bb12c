"""ForgetIndividual, ExportIndividual and LiftSuppression: the gateway composes the right to be forgotten.

Forget: the identity service tombstones the individual's unique identities and ids and deletes its identities first
(from then on nothing resolves to it: events carrying them are dropped at identify time and decisions treat them as
unknown), then every domain service erases its rows in one transaction each, then the gateway its own, and last the
identity service its individuals rows. Every step is idempotent and, until the last, the tombstones name the
individual, so a forget that failed half-way is completed by repeating it.
"""

from __future__ import annotations

import asyncio
import json

import grpc
from google.protobuf import json_format

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from services.gateway.postgres_privacy import MESSAGE_TABLES, PostgresPrivacy
from shared.context import current_tenant
from shared.errors import InvalidArgument, status_details
from shared.log import get_logger

log = get_logger("gateway.privacy")

LOOKUP_BATCH = 1000  # subjects per ResolveIdentities call while scanning the inbox
SCAN_PAGE = 4000  # inbox rows read at once (their lookups run concurrently)


def _target(request) -> identity_pb.SuppressIndividualRequest:
    """The identity request naming the individual of a Forget/Export request; INVALID_ARGUMENT when it names none."""
    if request.unified_individual_id:
        return identity_pb.SuppressIndividualRequest(unified_individual_id=request.unified_individual_id)
    if not request.individual_id.value:
        raise InvalidArgument([("individual_id", "an identity or a unified_individual_id is required")])
    return identity_pb.SuppressIndividualRequest(identity=request.individual_id)


class Privacy:
    """The public privacy RPCs, composed from one internal erase/export RPC per service."""

    def __init__(self, store: PostgresPrivacy, identity, profile, recommender, decision, decider, log_writer):
        self.store = store
        self.identity = identity
        self.profile = profile
        self.recommender = recommender
        self.decision = decision
        self.decider = decider
        self.log_writer = log_writer

    async def forget(self, request: pb.ForgetIndividualRequest) -> pb.ForgetIndividualResponse:
        try:
            target = await self.identity.SuppressIndividual(_target(request))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # The identity service names its own field; the caller sent individual_id.
            violations, reason = status_details(error)
            raise InvalidArgument([(f.replace("identity", "individual_id", 1), d) for f, d in violations],
                                  reason=reason or None) from None
        if target.already_forgotten and not request.unified_individual_id:
            return pb.ForgetIndividualResponse(already_forgotten=True)
        # Forgotten before and named by its id: the erasure runs again, which removes whatever a pipeline chunk in
        # flight at the first forget may have left behind (every step is idempotent).
        ids = [request.unified_individual_id] if target.already_forgotten else [target.unified_individual_id,
                                                                                *target.alias_ids]
        erased = await self._erase(ids)
        log.info("individual_forgotten", aliases=len(ids) - 1, again=target.already_forgotten,
                 suppressed_identities=target.suppressed_identity_count)
        return pb.ForgetIndividualResponse(already_forgotten=target.already_forgotten, erased_rows=erased,
                                           suppressed_identity_count=target.suppressed_identity_count)

    async def _erase(self, ids: list[str]) -> dict[str, int]:
        """Erases the individual in every service, identity last; rows erased per service."""
        await self.log_writer.flush()  # decision-log rows still buffered here must reach the decision service first
        profile, recommender, decision = await asyncio.gather(
            self.profile.EraseIndividual(profile_pb.EraseIndividualRequest(unified_individual_ids=ids)),
            self.recommender.EraseIndividual(rec_pb.EraseIndividualRequest(unified_individual_ids=ids)),
            self.decision.EraseIndividual(decision_pb.EraseIndividualRequest(unified_individual_ids=ids)))
        message_ids = set(profile.message_ids)
        message_ids.update(await self._inbox_rows(set(ids), forgotten=True))
        gateway = await self.store.erase(current_tenant(), ids, sorted(message_ids))
        identity = await self.identity.EraseIndividual(identity_pb.EraseIndividualRequest(unified_individual_ids=ids))
        return {"identity": identity.erased_rows, "profile_graph": profile.erased_rows,
                "recommender": recommender.erased_rows, "decision": decision.erased_rows, "gateway": gateway}

    async def export(self, request: pb.ExportIndividualRequest) -> pb.ExportIndividualResponse:
        _target(request)
        unified_id = await self.decider.resolve_known(request, cached=False)
        individual = await self.identity.GetIndividual(
            identity_pb.GetIndividualRequest(unified_individual_id=unified_id))
        ids = [unified_id, *individual.individual.alias_ids]
        identity, profile, recommender, decision = await asyncio.gather(
            self.identity.ExportIndividual(identity_pb.ExportIndividualRequest(unified_individual_ids=ids)),
            self.profile.ExportIndividual(profile_pb.ExportIndividualRequest(unified_individual_ids=ids)),
            self.recommender.ExportIndividual(rec_pb.ExportIndividualRequest(unified_individual_ids=ids)),
            self.decision.ExportIndividual(decision_pb.ExportIndividualRequest(unified_individual_ids=ids)))
        tenant = current_tenant()
        gateway = await self.store.export(tenant, ids)
        pending = await self._inbox_rows(set(ids), forgotten=False)
        for table in MESSAGE_TABLES:
            rows = await self.store.messages(tenant, table, sorted(pending))
            gateway[table] = [{"message_id": m, "event": json_format.MessageToDict(common_pb2.Event.FromString(p))}
                              for m, p in rows]
        document = {"unified_individual_id": unified_id,
                    "identity": json.loads(identity.json), "profile_graph": json.loads(profile.json),
                    "recommender": json.loads(recommender.json), "decision": json.loads(decision.json),
                    "gateway": {k: v for k, v in gateway.items() if v}}
        return pb.ExportIndividualResponse(unified_individual_id=unified_id,
                                           json=json.dumps(document, sort_keys=True, separators=(",", ":")))

    async def lift(self, request: pb.LiftSuppressionRequest) -> pb.LiftSuppressionResponse:
        reply = await self.identity.LiftSuppression(identity_pb.LiftSuppressionRequest(identities=request.identities))
        return pb.LiftSuppressionResponse(lifted_count=reply.lifted_count)

    async def _inbox_rows(self, ids: set[str], *, forgotten: bool) -> set[str]:
        """Message ids of inbox rows and dead letters whose event belongs to one of ids (by the identity service's
        lookup of its identities), or, with forgotten, carries a suppressed identity. A page's lookups run at once."""
        found: set[str] = set()
        for table in MESSAGE_TABLES:
            async for page in self.store.message_pages(current_tenant(), table, SCAN_PAGE):
                events = [(m, common_pb2.Event.FromString(p)) for m, p in page]
                events = [(m, e) for m, e in events if e.identities]
                chunks = [events[i:i + LOOKUP_BATCH] for i in range(0, len(events), LOOKUP_BATCH)]
                answers = await asyncio.gather(*(self._lookup([e for _, e in chunk]) for chunk in chunks))
                for chunk, resolutions in zip(chunks, answers):
                    for (message_id, _), resolution in zip(chunk, resolutions):
                        if resolution is not None and (resolution.unified_individual_id in ids
                                                       or (forgotten and resolution.suppressed)):
                            found.add(message_id)
        return found

    async def _lookup(self, events: list[common_pb2.Event]) -> list:
        """lookup_only resolutions of the events' identities; an event the identity service refuses (a type unknown
        to it, say: such events end as dead letters) gets None instead of failing the others."""
        try:
            reply = await self.identity.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(
                lookup_only=True, subjects=[identity_pb.Subject(identities=e.identities) for e in events]))
            return list(reply.resolutions)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
        if len(events) == 1:
            return [None]
        half = len(events) // 2  # find the refused events by halving
        return await self._lookup(events[:half]) + await self._lookup(events[half:])
