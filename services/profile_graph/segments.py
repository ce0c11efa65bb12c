"""Segment rules in CEL: references, compilation, membership evaluation and the per-tenant program cache."""

from __future__ import annotations

import re

import cel

from services.profile_graph.domain import SegmentDef
from shared.errors import InvalidArgument

RULE_VARIABLES = frozenset({"attributes", "insights", "segments", "affinities", "consents"})
# Segment rules may test membership of other segments; evaluation repeats until memberships settle.
MAX_SEGMENT_PASSES = 5

_INSIGHT_REF = re.compile(r"\binsights\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*[\"']([^\"']*)[\"']\s*\])")
_SEGMENT_REF = re.compile(r"[\"']([^\"']*)[\"']\s+in\s+segments\b")


def rule_references(rule: str) -> tuple[list[str], list[str]]:
    """The insight names and segment names a rule reads (insights.x, insights['x'], 'x' in segments)."""
    insights = [a or b for a, b in _INSIGHT_REF.findall(rule)]
    return insights, _SEGMENT_REF.findall(rule)


def compile_rule(rule: str, insight_names: list[str], segment_names: list[str] | None = None,
                 grouped: frozenset[str] = frozenset()) -> cel.Program:
    """Compiles a segment rule and tries it on a sample profile; refuses it with field segment.rule.

    References to unknown insights or segments are refused. A rule that fails on the sample only because a map key
    is missing is accepted: real profiles have the key.
    """
    insights, segments = rule_references(rule)
    unknown = [n for n in insights if n not in insight_names]
    if unknown:
        raise InvalidArgument([("segment.rule", f"unknown insight {unknown[0]!r}")])
    if segment_names is not None:
        unknown = [n for n in segments if n not in segment_names]
        if unknown:
            raise InvalidArgument([("segment.rule", f"unknown segment {unknown[0]!r}")])
    try:
        program = cel.compile(rule)
    except Exception as error:  # noqa: BLE001 - the library raises ValueError and others with a useful message
        raise InvalidArgument([("segment.rule", str(error))]) from None
    unknown = sorted(set(program.variables()) - RULE_VARIABLES)
    if unknown:
        raise InvalidArgument([(
            "segment.rule",
            f"Undefined variable or function: {unknown[0]!r}; rules see attributes, insights, affinities, "
            "consents and segments",
        )])
    sample = {"attributes": {}, "insights": {n: ({} if n in grouped else 0.0) for n in insight_names},
              "segments": [], "affinities": {}, "consents": {}}
    try:
        result = program.execute(sample)
    except KeyError:
        result = None
    except Exception as error:  # noqa: BLE001
        raise InvalidArgument([("segment.rule", str(error))]) from None
    if result is not None and not isinstance(result, bool):
        raise InvalidArgument([("segment.rule", f"must yield a bool, got {type(result).__name__} {result!r}")])
    return program


def rule_variables(programs: list[tuple[str, cel.Program, bool]]) -> frozenset[str]:
    """The variables (attributes, insights, segments, affinities, consents) that at least one program reads."""
    return frozenset(v for _, program, _ in programs for v in program.variables())


def _is_member(program: cel.Program, context: cel.Context) -> bool:
    try:
        return program.execute(context) is True
    except Exception:  # noqa: BLE001 - a rule that errors on a profile (missing key, bad type) does not match
        return False


def evaluate_memberships(
    programs: list[tuple[str, cel.Program, bool]],
    attributes: dict,
    insights: dict[str, object],
    current: set[str],
    affinities: dict | None = None,
    consents: dict | None = None,
    variables: frozenset[str] | None = None,
    memo: dict | None = None,
) -> set[str]:
    """The segments an individual belongs to; rules that read `segments` see the memberships being computed.
    variables: rule_variables(programs), when the caller evaluates many individuals with the same programs; memo:
    a dict kept while evaluating them, so that individuals with the same insights and segments are evaluated once
    (only when rules read nothing else: rules are pure functions of what they read)."""
    reads_segments = any(uses for _, _, uses in programs)
    members = set(current) & {name for name, _, _ in programs}
    # Only the variables some rule reads are converted: building a Context costs about 2 us per variable.
    used = rule_variables(programs) if variables is None else variables
    key = None
    if memo is not None and used <= {"insights", "segments"}:
        key = (tuple((k, tuple(sorted(v.items())) if isinstance(v, dict) else v) for k, v in insights.items())
               if "insights" in used else (), frozenset(members) if reads_segments else None)
        known = memo.get(key)
        if known is not None:
            return set(known)
    context = cel.Context({name: value for name, value in (
        ("attributes", attributes), ("insights", insights), ("affinities", affinities or {}),
        ("consents", consents or {})) if name in used})
    for _ in range(MAX_SEGMENT_PASSES if reads_segments else 1):
        # One Context for all programs and passes: the library converts the variables once; only segments change.
        if reads_segments:
            context.add_variable("segments", sorted(members))
        result = {name for name, program, _ in programs if _is_member(program, context)}
        if result == members:
            break
        members = result
    if key is not None:
        memo[key] = frozenset(members)
    return members


class RuleCache:
    """Compiled segment programs per tenant, recompiled only when a rule's source changes."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, dict[str, tuple[str, cel.Program, bool]]] = {}

    def programs(self, tenant: str, segments: list[SegmentDef]) -> list[tuple[str, cel.Program, bool]]:
        """(name, program, reads segments) for each segment, in name order."""
        cache = self._by_tenant.setdefault(tenant, {})
        out = []
        for s in sorted(segments, key=lambda s: s.name):
            hit = cache.get(s.name)
            if hit is None or hit[0] != s.rule:
                program = cel.compile(s.rule)
                hit = (s.rule, program, "segments" in program.variables())
                cache[s.name] = hit
            out.append((s.name, hit[1], hit[2]))
        return out

    def put(self, tenant: str, name: str, rule: str, program: cel.Program) -> None:
        """Keeps a program compiled while saving its segment."""
        self._by_tenant.setdefault(tenant, {})[name] = (rule, program, "segments" in program.variables())
