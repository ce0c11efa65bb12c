"""Shared vocabulary of the identity planners: identity keys, tenant config, merge records, stored sources."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.identity.matching import IdentityType, Record, Ruleset

DEFAULT_MAX_CLUSTER = 50_000
# Records sharing one block key beyond this are not all compared (a block that large is not selective).
DEFAULT_MAX_BLOCK = 200

# An identity as stored: (type, normalized value).
Key = tuple[str, str]


def new_individual_id() -> str:
    """A fresh unified individual id: 'ind_' and 32 hex characters."""
    return "ind_" + uuid.uuid4().hex


@dataclass(frozen=True)
class Config:
    """A tenant's identity types (built-ins merged with its overrides) and active ruleset."""

    types: dict[str, IdentityType]
    ruleset: Ruleset


@dataclass(frozen=True)
class MergeRecord:
    """One entry of the merge history: kind MERGE, UNMERGE or REFUSED."""

    survivor_id: str
    merged_id: str
    rule: str
    evidence: tuple[Key, ...]
    kind: str = "MERGE"
    reason: str = ""
    model_version: int = 0  # the probabilistic model that linked the pair; 0 for none


@dataclass(frozen=True)
class StoredSource:
    """A source record as a re-run reads it."""

    record_id: str
    individual_id: str
    record: Record
    created_at: datetime
