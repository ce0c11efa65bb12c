"""Server reflection that serves the contracts as written: with their comments, and every symbol findable.

grpcio-reflection serves descriptors copied out of the runtime's descriptor pool, which drops source info (so
`grpcurl describe` shows no comments) and does not find a method by its full name (`Symbol not found` for
`describe pkg.Service.Method`). This servicer answers from the descriptor set `make protos` writes with
`--include_source_info` (personalization/descriptors.binpb), indexed by every symbol a client may ask for.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from grpc_reflection.v1alpha import reflection_pb2_grpc as rpb_grpc

DESCRIPTOR_SET = Path(__file__).resolve().parent.parent / "protos" / "personalization" / "descriptors.binpb"
SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["ServerReflection"].full_name
# FileDescriptorProto field numbers: service = 6; ServiceDescriptorProto.method = 2.
_SERVICE, _METHOD = 6, 2


def _index(f: descriptor_pb2.FileDescriptorProto, symbols: dict[str, str],
           extensions: dict[tuple[str, int], str]) -> None:
    """Adds every fully qualified name declared in f (types, fields, enum values, services, methods)."""
    prefix = f"{f.package}." if f.package else ""

    def extension(ext, scope: str) -> None:
        symbols[scope + ext.name] = f.name
        extensions[(ext.extendee.lstrip("."), ext.number)] = f.name

    def enum(e, scope: str) -> None:
        symbols[scope + e.name] = f.name
        for value in e.value:  # enum values are siblings of their enum, as in C++ scoping
            symbols[scope + value.name] = f.name

    def message(m, scope: str) -> None:
        name = scope + m.name
        symbols[name] = f.name
        for part in (*m.field, *m.oneof_decl):
            symbols[f"{name}.{part.name}"] = f.name
        for nested in m.nested_type:
            message(nested, name + ".")
        for e in m.enum_type:
            enum(e, name + ".")
        for ext in m.extension:
            extension(ext, name + ".")

    for m in f.message_type:
        message(m, prefix)
    for e in f.enum_type:
        enum(e, prefix)
    for ext in f.extension:
        extension(ext, prefix)
    for service in f.service:
        symbols[prefix + service.name] = f.name
        for method in service.method:
            symbols[f"{prefix}{service.name}.{method.name}"] = f.name


class Descriptors:
    """Files (FileDescriptorProto with source info) and where each symbol and extension is declared."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]):
        self.files = {f.name: f for f in files}
        self.symbols: dict[str, str] = {}
        self.extensions: dict[tuple[str, int], str] = {}
        for f in self.files.values():
            _index(f, self.symbols, self.extensions)

    @staticmethod
    @cache
    def load() -> Descriptors:
        """The contracts' descriptor set, plus health and reflection (from the runtime; they have no comments)."""
        files = list(descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file)
        from grpc_health.v1 import health_pb2

        for module in (health_pb2, rpb):
            proto = descriptor_pb2.FileDescriptorProto()
            module.DESCRIPTOR.CopyToProto(proto)
            files.append(proto)
        return Descriptors(files)

    def serving(self, methods: Mapping[str, Iterable[str]]) -> Descriptors:
        """A copy in which each named service (full name) keeps only the named methods, comments kept in place."""
        keep = {service: set(names) for service, names in methods.items()}
        files = []
        for f in self.files.values():
            prefix = f"{f.package}." if f.package else ""
            if not any(prefix + s.name in keep for s in f.service):
                files.append(f)
                continue
            f = copy.deepcopy(f)
            renumber: dict[tuple[int, int], int | None] = {}  # (service, old method index) -> new index or None
            for s_index, service in enumerate(f.service):
                kept = keep.get(prefix + service.name)
                if kept is None:
                    continue
                new_methods: list = []
                for m_index, method in enumerate(service.method):
                    renumber[(s_index, m_index)] = len(new_methods) if method.name in kept else None
                    if method.name in kept:
                        new_methods.append(method)
                del service.method[:]
                service.method.extend(new_methods)
            locations = []
            for location in f.source_code_info.location:
                path = list(location.path)
                if len(path) >= 4 and path[0] == _SERVICE and path[2] == _METHOD and (path[1], path[3]) in renumber:
                    new_index = renumber[(path[1], path[3])]
                    if new_index is None:
                        continue
                    location = copy.deepcopy(location)
                    location.path[3] = new_index
                locations.append(location)
            del f.source_code_info.location[:]
            f.source_code_info.location.extend(locations)
            files.append(f)
        return Descriptors(files)

    def with_closure(self, name: str) -> list[bytes]:
        """The file and every file it imports, transitively, serialized (the file first)."""
        seen: dict[str, bytes] = {}

        def add(file_name: str) -> None:
            if file_name in seen or file_name not in self.files:
                return
            f = self.files[file_name]
            seen[file_name] = f.SerializeToString()
            for dependency in f.dependency:
                add(dependency)

        add(name)
        return list(seen.values())


class ReflectionServicer(rpb_grpc.ServerReflectionServicer):
    """grpc.reflection.v1alpha.ServerReflection over a Descriptors: lists the given services, answers files by
    name, by symbol (a method's full name included) and by extension."""

    def __init__(self, service_names: Iterable[str], descriptors: Descriptors):
        self.service_names = sorted(set(service_names))
        self.descriptors = descriptors

    def _answer(self, request: rpb.ServerReflectionRequest) -> rpb.ServerReflectionResponse:
        d = self.descriptors
        found: str | None = None
        which = request.WhichOneof("message_request")
        if which == "list_services":
            return rpb.ServerReflectionResponse(original_request=request, list_services_response=rpb.ListServiceResponse(
                service=[rpb.ServiceResponse(name=n) for n in self.service_names]))
        if which == "file_by_filename":
            found = request.file_by_filename if request.file_by_filename in d.files else None
        elif which == "file_containing_symbol":
            found = d.symbols.get(request.file_containing_symbol.lstrip("."))
        elif which == "file_containing_extension":
            ask = request.file_containing_extension
            found = d.extensions.get((ask.containing_type.lstrip("."), ask.extension_number))
        elif which == "all_extension_numbers_of_type":
            base = request.all_extension_numbers_of_type.lstrip(".")
            if base in d.symbols:
                numbers = sorted(n for (t, n) in d.extensions if t == base)
                return rpb.ServerReflectionResponse(
                    original_request=request, all_extension_numbers_response=rpb.ExtensionNumberResponse(
                        base_type_name=base, extension_number=numbers))
        else:
            return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "unknown reflection request")
        if found is None:
            return _error(request, grpc.StatusCode.NOT_FOUND, f"{getattr(request, which)!s:.200} not found")
        return rpb.ServerReflectionResponse(original_request=request, file_descriptor_response=rpb.FileDescriptorResponse(
            file_descriptor_proto=d.with_closure(found)))

    async def ServerReflectionInfo(self, request_iterator, context):
        async for request in request_iterator:
            yield self._answer(request)


def _error(request, code: grpc.StatusCode, message: str) -> rpb.ServerReflectionResponse:
    return rpb.ServerReflectionResponse(original_request=request, error_response=rpb.ErrorResponse(
        error_code=code.value[0], error_message=message))


def enable(server: grpc.aio.Server, service_names: Iterable[str], descriptors: Descriptors | None = None) -> None:
    """Adds reflection to server: the given services listed (reflection's own added), the contracts served with
    their comments."""
    names = [*service_names, SERVICE_NAME]
    rpb_grpc.add_ServerReflectionServicer_to_server(ReflectionServicer(names, descriptors or Descriptors.load()),
                                                    server)
