"""The gateway's client ports: typed stubs of the four domain services, and the passthrough's after-hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

from personalization.decision.v1 import decision_service_pb2_grpc as decision_grpc
from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as profile_grpc
from personalization.recommender.v1 import recommender_service_pb2_grpc as rec_grpc

IdentityPort: TypeAlias = identity_grpc.IdentityServiceStub
ProfilePort: TypeAlias = profile_grpc.ProfileGraphServiceStub
RecommenderPort: TypeAlias = rec_grpc.RecommenderServiceStub
DecisionPort: TypeAlias = decision_grpc.DecisionServiceStub

# Run once a forwarded call succeeded: (request bytes, reply bytes) for a unary method, (request bytes, start time
# in epoch seconds) for a server-streaming one.
AfterHook = Callable[[bytes, bytes | float], Awaitable[None]]


@dataclass(frozen=True)
class Stubs:
    """The gateway's client ports: the four domain services' stubs, built once by the composition root."""

    identity: IdentityPort
    profile: ProfilePort
    recommender: RecommenderPort
    decision: DecisionPort
