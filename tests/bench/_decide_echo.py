"""The floor of the decide bench: the five-process topology of GetDecisions with empty handlers.

`python tests/bench/_decide_echo.py gateway PORT IDENTITY PROFILE RECOMMENDER DECISION` runs a gateway whose
GetDecisions makes the same sequence of calls as the real one (identify, augment, qualify, personalize with
the recommender and the item lookup, log), each to an empty handler; `python _decide_echo.py leaf PORT` runs one
of the four leaves. Messages are passed as raw bytes: nothing is decoded, so this is the cost of the topology
(gRPC, HTTP/2, loopback, asyncio) alone.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

GATEWAY_METHOD = "/personalization.gateway.v1.GatewayService/GetDecisions"
CALLS = (  # (leaf, method) in the order the real gateway makes them for one manual and one recommendations point
    ("identity", "/personalization.identity.v1.IdentityService/ResolveIdentities"),
    ("profile", "/personalization.profile_graph.v1.ProfileGraphService/GetProfile"),
    ("decision", "/personalization.decision.v1.DecisionService/Qualify"),
    ("recommender", "/personalization.recommender.v1.RecommenderService/Recommend"),
    ("profile", "/personalization.profile_graph.v1.ProfileGraphService/GetItems"),
    ("decision", "/personalization.decision.v1.DecisionService/LogDecisions"),
)


def _raw(handler):
    return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=None, response_serializer=None)


class _Leaf(grpc.GenericRpcHandler):
    def service(self, details):
        async def empty(request: bytes, context) -> bytes:
            return b""

        return _raw(empty)


class _Gateway(grpc.GenericRpcHandler):
    def __init__(self, targets: dict[str, str]):
        self.channels = {leaf: grpc.aio.insecure_channel(address) for leaf, address in targets.items()}
        self.calls = [self.channels[leaf].unary_unary(method) for leaf, method in CALLS]

    def service(self, details):
        if details.method != GATEWAY_METHOD:
            return None

        async def get_decisions(request: bytes, context) -> bytes:
            for call in self.calls:
                await call(b"", timeout=5)
            return b""

        return _raw(get_decisions)


async def main(argv: list[str]) -> None:
    role, port = argv[0], int(argv[1])
    server = grpc.aio.server()
    if role == "gateway":
        identity, profile, recommender, decision = argv[2:6]
        handler = _Gateway({"identity": identity, "profile": profile, "recommender": recommender,
                            "decision": decision})
    else:
        handler = _Leaf()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
