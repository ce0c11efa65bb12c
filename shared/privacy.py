"""Plumbing the erase and export RPCs of every service share: the id list they take and the JSON they return."""

from __future__ import annotations

import json
from typing import Any

from shared.errors import Violations

MAX_IDS = 1000
MAX_ID_LENGTH = 200


def validate_ids(ids: list[str], field: str = "unified_individual_ids") -> list[str]:
    """The individual's ids (survivor and aliases), deduplicated; INVALID_ARGUMENT per bad id."""
    v = Violations()
    if not ids:
        v.add(field, "must name at least one individual")
    elif len(ids) > MAX_IDS:
        v.add(field, f"at most {MAX_IDS} ids, got {len(ids)}")
    for i, value in enumerate(ids[:MAX_IDS]):
        if not value:
            v.add(f"{field}[{i}]", "must not be empty")
        elif len(value) > MAX_ID_LENGTH or "\x00" in value:
            v.add(f"{field}[{i}]", f"must be at most {MAX_ID_LENGTH} characters without NUL")
    v.raise_if_any()
    return list(dict.fromkeys(ids))


def table_rows(records: list[Any]) -> list[Any]:
    """The rows of `SELECT to_jsonb(t) - 'tenant_id' AS row ...` as Python values (asyncpg returns jsonb as text)."""
    return [json.loads(r["row"]) if isinstance(r["row"], str) else r["row"] for r in records]


def document(tables: dict[str, list[Any]]) -> str:
    """The JSON an ExportIndividual returns: tables with rows only, keys sorted, compact."""
    return json.dumps({name: rows for name, rows in tables.items() if rows}, sort_keys=True, separators=(",", ":"),
                      default=str)


async def erase_rows(conn: Any, statements: list[str], *args: Any) -> int:
    """Runs DELETE/UPDATE statements in order on one connection (inside the caller's transaction); rows touched."""
    total = 0
    for sql in statements:
        status = await conn.execute(sql, *args)
        total += int(status.split()[-1])
    return total


async def export_rows(conn: Any, queries: dict[str, str], *args: Any) -> dict[str, list[Any]]:
    """Runs `SELECT to_jsonb(t) - 'tenant_id' AS row ...` queries on one connection; rows by table name."""
    return {name: table_rows(await conn.fetch(sql, *args)) for name, sql in queries.items()}
