"""Reflection serves the contracts with their comments, finds methods by full name, and on the gateway's port
describes only what the gateway serves; read with grpcio-reflection's own client against real servers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

GATEWAY = "personalization.gateway.v1.GatewayService"


def _comment(file: descriptor_pb2.FileDescriptorProto, path: list[int]) -> str:
    return next((loc.leading_comments for loc in file.source_code_info.location if list(loc.path) == path), "")


def _method_comment(port: int, service: str, method: str) -> tuple[str, list[str]]:
    """(the method's leading comment, the service's method names) as a reflection client sees them."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        file = database.FindFileContainingSymbol(f"{service}.{method}")
        names = [s.name for s in file.service]
        index = names.index(service.rsplit(".", 1)[1])
        methods = [m.name for m in file.service[index].method]
        return _comment(file, [6, index, 2, methods.index(method)]), methods


async def test_a_method_found_by_its_full_name_carries_its_proto_comment_on_every_port(suite):
    for port, service, method, words in [
        (suite.ports["gateway"], GATEWAY, "IngestEvents", "Stores a batch of events durably"),
        (suite.ports["identity"], "personalization.identity.v1.IdentityService", "ResolveIdentities",
         "Resolves each subject's identities to one unified individual"),
        (suite.ports["recommender"], "personalization.recommender.v1.RecommenderService", "Recommend", "Rank"),
    ]:
        comment, _ = await asyncio.to_thread(_method_comment, port, service, method)
        assert words.lower() in comment.lower(), (service, method, comment)


async def test_messages_and_fields_carry_their_comments_and_error_details_resolve(suite):
    def read():
        with grpc.insecure_channel(f"127.0.0.1:{suite.ports['gateway']}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            file = database.FindFileContainingSymbol("personalization.gateway.v1.IngestEventsRequest.events")
            errors = database.FindFileContainingSymbol("google.rpc.ErrorInfo")
            return file, errors

    file, errors = await asyncio.to_thread(read)
    index = [m.name for m in file.message_type].index("IngestEventsRequest")
    assert "The events to store" in _comment(file, [4, index, 2, 0])
    assert errors.name == "google/rpc/error_details.proto"
    assert _comment(errors, [4, [m.name for m in errors.message_type].index("ErrorInfo")])


async def test_the_gateway_describes_a_forwarded_service_with_only_its_forwarded_methods_comments_in_place(suite):
    def read():
        with grpc.insecure_channel(f"127.0.0.1:{suite.ports['gateway']}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = database.get_services()
            with pytest.raises(KeyError):
                database.FindFileContainingSymbol("personalization.recommender.v1.RecommenderService.Recommend")
            return services

    services = await asyncio.to_thread(read)
    assert GATEWAY in services and "personalization.recommender.v1.RecommenderService" in services
    comment, methods = await asyncio.to_thread(
        _method_comment, suite.ports["gateway"], "personalization.recommender.v1.RecommenderService", "SimilarItems")
    assert "Recommend" not in methods and "SimilarItems" in methods
    full, all_methods = await asyncio.to_thread(
        _method_comment, suite.ports["recommender"], "personalization.recommender.v1.RecommenderService",
        "SimilarItems")
    assert comment == full and len(all_methods) > len(methods)
