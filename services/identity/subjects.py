"""Validation and normalization of ResolveIdentities subjects into SubjectIn (pure, no grpc, no SQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from services.identity import matching
from services.identity.matching import Record, Ruleset
from services.identity.model import Config, Key
from shared.errors import Violations, quote

MAX_SUBJECTS = 1000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY = 64


@dataclass(frozen=True)
class SubjectIn:
    """A validated subject: its unique and searchable identities and its record (id and block keys on demand)."""

    unique: list[Key]
    shared: list[Key]
    record: Record
    ruleset: Ruleset = field(repr=False, compare=False)

    @cached_property
    def record_id(self) -> str:
        """The record's id (a hash of its content); a known subject with unique identities only needs none."""
        return matching.fingerprint(self.record)

    @cached_property
    def blocks(self) -> list[tuple[int, str]]:
        """(rule index, block key) pairs of the record, computed only for subjects that reach the rules."""
        return matching.block_keys(self.ruleset, self.record)

    @cached_property
    def distinct_blocks(self) -> tuple[str, ...]:
        """The record's block keys once each, in order: the rows of the blocking index it stores."""
        return tuple(dict.fromkeys(k for _, k in self.blocks))

    @property
    def plain(self) -> bool:
        """Unique identities only: known when they all belong to one individual, whatever its records."""
        return not self.record.attributes and not self.shared


def _attribute_value(value: Any) -> str | None:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (int, str)):
        return str(value).strip()
    return None


def validate_subjects(
    subjects: list[list[tuple[str, str]]],
    config: Config,
    default_region: str,
    attributes: list[dict[str, Any]] | None = None,
) -> list[SubjectIn]:
    """Normalizes every identity and attribute; raises InvalidArgument with one violation per bad field."""
    v = Violations()
    if not subjects:
        v.add("subjects", "at least one subject is required")
    elif len(subjects) > MAX_SUBJECTS:
        v.add("subjects", f"at most {MAX_SUBJECTS} subjects per call, got {len(subjects)}")
    out: list[SubjectIn] = []
    types = config.types
    for s, identities in enumerate(subjects):
        if not identities:
            v.add(f"subjects[{s}].identities", "at least one identity is required")
        unique: list[Key] = []
        shared: list[Key] = []
        by_type: dict[str, list[str]] = {}
        for i, (id_type, value) in enumerate(identities):
            kind = types.get(id_type)
            if kind is None:
                path = f"subjects[{s}].identities[{i}].type"
                if not matching.TYPE_PATTERN.fullmatch(id_type):
                    v.add(path, "must match ^[a-z][a-z0-9_]{0,63}$ (for example email or device_id)")
                else:
                    v.add(path, f"unknown identity type {quote(id_type)}: create it with UpsertIdentityType")
                continue
            try:
                norm = matching.normalize_value(kind, value, default_region)
            except ValueError as problem:
                v.add(f"subjects[{s}].identities[{i}].value", str(problem))
                continue
            key = (id_type, norm)
            target = unique if kind.unique else shared
            if key not in target:
                target.append(key)
                values = by_type.get(id_type)
                if values is None:
                    by_type[id_type] = [norm]
                else:
                    values.append(norm)
        raw = (attributes[s] if attributes and s < len(attributes) else None) or {}
        attrs = _checked_attributes(v, s, raw) if raw else {}
        record = Record({t: sorted(vs) for t, vs in sorted(by_type.items())}, dict(sorted(attrs.items())))
        out.append(SubjectIn(unique, shared, record, config.ruleset))
    v.raise_if_any()
    return out


def _checked_attributes(v: Violations, s: int, raw: dict[str, Any]) -> dict[str, str]:
    """The attributes trimmed, blanks left out; a violation for each one that breaks a limit."""
    attrs: dict[str, str] = {}
    if len(raw) > MAX_ATTRIBUTES:
        v.add(f"subjects[{s}].attributes", f"at most {MAX_ATTRIBUTES} attributes, got {len(raw)}")
    for name, value in raw.items():
        if type(value) is str and 0 < len(name) <= MAX_ATTRIBUTE_KEY:  # the common case, checked at once
            stripped = value.strip()
            if len(stripped) <= matching.MAX_VALUE_LENGTH and "\x00" not in stripped:
                if stripped:
                    attrs[name] = stripped
                continue
        path = f"subjects[{s}].attributes.{name}"
        text = _attribute_value(value)
        if not name or len(name) > MAX_ATTRIBUTE_KEY:
            v.add(f"subjects[{s}].attributes", f"attribute names must be 1-{MAX_ATTRIBUTE_KEY} characters")
        elif text is None:
            v.add(path, "must be a string, number, boolean or null")
        elif len(text) > matching.MAX_VALUE_LENGTH:
            v.add(path, f"must be at most {matching.MAX_VALUE_LENGTH} characters, got {len(text)}")
        elif "\x00" in text:
            v.add(path, "must not contain NUL characters")
        elif text:
            attrs[name] = text
    return attrs
