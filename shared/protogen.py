"""Generates the Python code of every contract under protos/ (python -m shared.protogen OUT_ROOT), and the
descriptor set with source info (comments) that server reflection serves (personalization/descriptors.binpb)."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
DESCRIPTOR_SET = "personalization/descriptors.binpb"
# Served by reflection beside the contracts, so that grpcurl can decode the rich error details every error carries.
ERROR_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_root: Path) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into out_root, plus package __init__ files."""
    out_root.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    import google.rpc.status_pb2  # googleapis-common-protos ships the .proto files beside its generated code

    googleapis = Path(google.rpc.status_pb2.__file__).parents[2]
    descriptor_args = [
        "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"-I{googleapis}",
        f"--descriptor_set_out={out_root / DESCRIPTOR_SET}", "--include_imports", "--include_source_info",
        *files, *ERROR_PROTOS,
    ]
    if protoc.main(descriptor_args) != 0:
        raise SystemExit("protoc failed (descriptor set)")
    for f in files:
        pkg = (out_root / f).parent
        while pkg != out_root:
            (pkg / "__init__.py").touch()
            pkg = pkg.parent


if __name__ == "__main__":
    generate(Path(sys.argv[1] if len(sys.argv) > 1 else PROTO_ROOT))
