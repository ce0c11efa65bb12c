"""IdentityService over gRPC: proto <-> domain translation only."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from personalization.common.v1 import common_pb2
from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.service import IdentityService
from shared.context import current_tenant


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    """Translates IdentityService RPCs to the identity use cases."""

    def __init__(self, service: IdentityService):
        self.service = service

    async def ResolveIdentities(self, request: pb.ResolveIdentitiesRequest, context) -> pb.ResolveIdentitiesResponse:
        subjects = [[(i.type, i.value) for i in subject.identities] for subject in request.subjects]
        resolutions = await self.service.resolve(current_tenant(), subjects, lookup_only=request.lookup_only)
        return pb.ResolveIdentitiesResponse(
            resolutions=[
                pb.Resolution(
                    unified_individual_id=r.individual_id,
                    created=r.created,
                    merged_individual_ids=list(r.merged_ids),
                )
                for r in resolutions
            ]
        )

    async def GetIndividual(self, request: pb.GetIndividualRequest, context) -> pb.GetIndividualResponse:
        found = await self.service.get_individual(current_tenant(), request.unified_individual_id)
        create_time = Timestamp()
        create_time.FromDatetime(found.created_at)
        return pb.GetIndividualResponse(
            individual=pb.Individual(
                unified_individual_id=found.individual_id,
                identities=[common_pb2.Identity(type=t, value=v) for t, v in found.identities],
                alias_ids=found.alias_ids,
                create_time=create_time,
            )
        )
