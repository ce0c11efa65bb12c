"""The CLI, the launcher and the demo loader are clients of the public gRPC API: no module of theirs imports a
service's code (services.*), at any depth of the module (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

import tailor_cli

PACKAGE = Path(tailor_cli.__file__).resolve().parent


def service_imports(source: str) -> list[str]:
    """The imported module names of source that are services or inside services."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [n for n in names if n == "services" or n.startswith("services.")]
    return found


def test_the_finder_sees_imports_at_module_level_and_inside_functions():
    source = "import services.gateway\ndef f():\n    from services.decision.report import x\nimport servicesx\n"
    assert service_imports(source) == ["services.gateway", "services.decision.report"]


def test_no_module_of_the_clients_imports_a_service():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 5
    offenders = {str(m.relative_to(PACKAGE)): service_imports(m.read_text()) for m in modules}
    assert {name: found for name, found in offenders.items() if found} == {}
