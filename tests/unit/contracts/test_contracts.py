"""The contracts: buf lint (STANDARD) is clean, every element is commented, and generated code is fresh."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from shared.protogen import DESCRIPTOR_SET, PROTO_ROOT, generate, proto_files

ROOT = PROTO_ROOT.parent


def _buf() -> str:
    local = Path(sys.executable).parent / "buf"
    return str(local) if local.exists() else (shutil.which("buf") or "buf")


def test_buf_lint_passes_with_the_standard_rules():
    result = subprocess.run([_buf(), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_generated_code_equals_a_fresh_generation(tmp_path):
    generate(tmp_path)
    fresh = {p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*")}
    committed = {p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.py*") if "__pycache__" not in p.parts}
    assert fresh == committed, "run `make protos`"
    fresh.add(Path(DESCRIPTOR_SET))  # what reflection serves: the contracts with their comments
    stale = [str(p) for p in fresh if (tmp_path / p).read_bytes() != (PROTO_ROOT / p).read_bytes()]
    assert stale == [], f"stale generated files {stale}: run `make protos`"


def test_every_service_rpc_message_field_and_enum_value_has_a_comment():
    declaration = re.compile(r"^\s*(service|rpc|message|enum|oneof)\s+\w+|^\s*(repeated\s+|optional\s+)?"
                             r"[\w.<>, ]+\s+\w+\s*=\s*\d+;|^\s*[A-Z][A-Z0-9_]*\s*=\s*\d+;")
    missing = []
    for path in proto_files():
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if declaration.match(line) and not lines[number - 1].strip().startswith("//"):
                missing.append(f"{path.relative_to(ROOT)}:{number + 1}: {line.strip()}")
    assert missing == []
