"""Code health the linters do not check: every RPC method of every servicer is fully typed (its request, its context
and what it returns), so mypy checks the translation between the protos and the use cases."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def untyped_servicer_methods(source: str) -> list[str]:
    """Methods of the *Servicer classes in source with an unannotated argument (other than self) or return."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ClassDef) and node.name.endswith("Servicer")):
            continue
        for method in node.body:
            if not isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = method.args.posonlyargs + method.args.args[1:] + method.args.kwonlyargs
            if method.returns is None or any(a.annotation is None for a in args):
                found.append(f"{node.name}.{method.name}")
    return found


def test_the_finder_flags_a_missing_annotation():
    source = ("class FooServicer:\n    async def Get(self, request: int, context) -> int: ...\n"
              "    async def Put(self, request: int, context: int) -> int: ...\n")
    assert untyped_servicer_methods(source) == ["FooServicer.Get"]


def test_every_servicer_method_is_typed():
    servicers = sorted(ROOT.glob("services/*/servicer.py"))
    assert len(servicers) == 5
    untyped = {str(p.relative_to(ROOT)): untyped_servicer_methods(p.read_text()) for p in servicers}
    assert {path: methods for path, methods in untyped.items() if methods} == {}
