"""The tenant's declared profile schema, and checking a rule's references and types against it when saved.

Without a declared schema rules are checked as before (syntax, variables, a sample run). With one, every
`profile.attributes.x`, `profile.insights.x`, `profile.affinities.x`, `profile.consents.x`,
`context.attributes.x` and `"x" in profile.segments` must name something declared, and the rule is run on
two typed samples built from the schema (zero values, then non-empty values) so operand type errors are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.decision import rules
from shared.errors import quote, shorten

FIELD_TYPES = ("STRING", "NUMBER", "BOOL", "STRING_LIST")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SEGMENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
MAX_ENTRIES = 2000
PROFILE_KEYS = ("attributes", "insights", "segments", "events", "affinities", "consents")

_ZERO = {"STRING": "", "NUMBER": 0.0, "BOOL": False, "STRING_LIST": []}
_FULL = {"STRING": "x", "NUMBER": 1.0, "BOOL": True, "STRING_LIST": ["x"]}


@dataclass(frozen=True)
class ProfileSchema:
    """What a tenant's profiles and request contexts hold."""

    attributes: tuple[tuple[str, str], ...] = ()  # (name, type) pairs
    insights: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    affinities: tuple[str, ...] = ()
    consents: tuple[str, ...] = ()
    context_attributes: tuple[tuple[str, str], ...] = ()


def validate_schema(entries: Mapping[str, Sequence[tuple[str, str | None]]], v) -> None:
    """Adds a violation per bad entry; entries maps a schema section to its (name, type-or-"") pairs."""
    for section, items in entries.items():
        if len(items) > MAX_ENTRIES:
            v.add(f"schema.{section}", f"must hold at most {MAX_ENTRIES} entries")
        seen: set[str] = set()
        for i, (name, type_) in enumerate(items):
            path = f"schema.{section}[{i}]"
            pattern = SEGMENT_NAME if section == "segments" else NAME
            if not pattern.match(name):
                v.add(path + (".name" if type_ is not None else ""), f"must match {pattern.pattern}")
            elif name in seen:
                v.add(path + (".name" if type_ is not None else ""), f"duplicate name {quote(name)}")
            seen.add(name)
            if type_ is not None and type_ not in FIELD_TYPES:
                v.add(f"{path}.type", "must be FIELD_TYPE_STRING, _NUMBER, _BOOL or _STRING_LIST")


def _samples(schema: ProfileSchema) -> list[dict[str, Any]]:
    out = []
    for values, seg, consent, score in ((_ZERO, [], False, 0.0), (_FULL, list(schema.segments), True, 1.0)):
        out.append({
            "profile": {
                "attributes": {k: values.get(t) for k, t in schema.attributes},
                "insights": {k: score for k in schema.insights},
                "segments": seg,
                "events": [] if values is _ZERO else [{"type": "PURCHASE", "name": "", "item_id": "x",
                                                      "event_time": ""}],
                "affinities": {k: ({} if values is _ZERO else {"x": 1.0}) for k in schema.affinities},
                "consents": {k: consent for k in schema.consents},
            },
            "context": dict(rules.CONTEXT_DEFAULTS, attributes={
                k: values.get(t) for k, t in schema.context_attributes}),
        })
    return out


# String literals are blanked (same length) before scanning, so positions stay right and quoted text never matches.
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')
_REF = re.compile(r"(?<![\w.])(profile|context)\s*\.\s*([A-Za-z_]\w*)(?:\s*\.\s*([A-Za-z_]\w*)\b(?!\s*\())?")
_SEGMENT_TEST = re.compile(r'("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')\s+in\s+profile\s*\.\s*segments\b')


def _blank_strings(source: str) -> str:
    return _STRING.sub(lambda m: m.group(0)[0] + " " * (len(m.group(0)) - 2) + m.group(0)[-1], source)


def position(source: str, offset: int) -> str:
    """'line L, column C' (1-based) of an offset in source."""
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def reference_errors(source: str, schema: ProfileSchema) -> list[str]:
    """One message per reference to something the schema does not declare, each with its position."""
    errors: list[str] = []
    blanked = _blank_strings(source)
    sections = {
        ("profile", "attributes"): ({k for k, _ in schema.attributes}, "attribute"),
        ("profile", "insights"): (schema.insights, "insight"),
        ("profile", "affinities"): (schema.affinities, "affinity dimension"),
        ("profile", "consents"): (schema.consents, "consent purpose"),
        ("context", "attributes"): ({k for k, _ in schema.context_attributes}, "context attribute"),
    }
    for m in _REF.finditer(blanked):
        var, key, sub = m.group(1), m.group(2), m.group(3)
        known = PROFILE_KEYS if var == "profile" else tuple(rules.CONTEXT_DEFAULTS)
        if key not in known:
            errors.append(f"{position(source, m.start(2))}: {var}.{key} is not part of the {var}")
            continue
        declared = sections.get((var, key))
        if declared is not None and sub is not None and sub not in declared[0]:
            errors.append(f"{position(source, m.start(3))}: {var}.{key}.{sub} is not a declared {declared[1]}")
    for m in _SEGMENT_TEST.finditer(source):
        name = m.group(1)[1:-1]
        if name not in schema.segments:
            errors.append(f"{position(source, m.start(1))}: segment {quote(name)} is not declared")
    return errors


def check_rule(source: str, schema: ProfileSchema | None) -> None:
    """Raises rules.RuleError when the rule names something undeclared or fails with a type error on typed data."""
    compiled = rules.compile_rule(source)
    if schema is None or compiled.program is None:
        return
    errors = reference_errors(source, schema)
    if errors:
        raise rules.RuleError(shorten("; ".join(errors), 300))
    # CEL's && and || absorb an error when the other side decides, so each top-level operand is run on its own too.
    programs = [compiled.program] + [p for p in (_operand_program(part) for part in _top_level_operands(source)) if p]
    for program in programs:
        _run_typed(program, schema)


def _top_level_operands(source: str) -> list[str]:
    """The operands of a top-level chain of && / || (none when the rule is not such a chain or has a ?:)."""
    blanked = _blank_strings(source)
    parts, depth, start, i = [], 0, 0, 0
    while i < len(blanked):
        ch = blanked[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and ch == "?":
            return []
        elif depth == 0 and blanked[i:i + 2] in ("&&", "||"):
            parts.append(source[start:i])
            start = i + 2
            i += 1
        i += 1
    return parts + [source[start:]] if parts else []


def _operand_program(part: str):
    try:
        return rules.cel.compile(part)
    except Exception:  # noqa: BLE001 - an operand that does not parse alone is simply not checked alone
        return None


def _run_typed(program, schema: ProfileSchema) -> None:
    for sample in _samples(schema):
        try:
            result = program.execute(sample)
        except TypeError as error:
            raise rules.RuleError(shorten(f"type error on the declared schema: {error}")) from None
        except RuntimeError as error:
            if str(error).startswith("Undefined variable or function"):
                raise rules.RuleError(shorten(f"type error on the declared schema: {error}")) from None
            continue
        except (KeyError, IndexError, ZeroDivisionError, ValueError, OverflowError):
            continue
        if program is not None and not isinstance(result, bool):
            raise rules.RuleError(f"rule must yield a bool, but yields {type(result).__name__}")
