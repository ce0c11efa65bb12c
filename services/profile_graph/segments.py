"""Segment rules in CEL: references, compilation, membership evaluation and the per-tenant program cache.

Rules are held to the limits of shared.rule_limits (length, nesting, comprehensions, an estimated cost) when saved,
and a rule whose cost grows faster than the data is not run on a profile whose collections would take it over its
evaluation budget: it does not match there, and the caller is told which rules were skipped.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import cel

from services.profile_graph.domain import SegmentDef
from shared import rule_limits
from shared.errors import InvalidArgument, quote, shorten
from shared.rule_limits import RuleCost

RULE_VARIABLES = frozenset({"attributes", "insights", "segments", "affinities", "consents"})
# Segment rules may test membership of other segments; evaluation repeats until memberships settle.
MAX_SEGMENT_PASSES = 5

_INSIGHT_REF = re.compile(r"\binsights\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*[\"']([^\"']*)[\"']\s*\])")
_SEGMENT_REF = re.compile(r"[\"']([^\"']*)[\"']\s+in\s+segments\b")


def rule_references(rule: str) -> tuple[list[str], list[str]]:
    """The insight names and segment names a rule reads (insights.x, insights['x'], 'x' in segments)."""
    insights = [a or b for a, b in _INSIGHT_REF.findall(rule)]
    return insights, _SEGMENT_REF.findall(rule)


class SegmentProgram(NamedTuple):
    """A segment's compiled rule as evaluation needs it."""

    name: str
    program: cel.Program | None        # None: a stored rule past today's limits; it never matches
    reads_segments: bool
    cost: RuleCost


def compile_rule(rule: str, insight_names: list[str], segment_names: list[str] | None = None,
                 grouped: frozenset[str] = frozenset()) -> cel.Program:
    """Compiles a segment rule and tries it on a sample profile; refuses it with field segment.rule.

    Rules past the cost limits are refused with the position in the rule. References to unknown insights or
    segments are refused. A rule that fails on the sample only because a map key is missing is accepted: real
    profiles have the key. No message quotes more than a few dozen characters of the rule.
    """
    try:
        rule_limits.check(rule)
    except rule_limits.RuleTooCostly as error:
        raise InvalidArgument([("segment.rule", str(error))]) from None
    insights, segments = rule_references(rule)
    unknown = [n for n in insights if n not in insight_names]
    if unknown:
        raise InvalidArgument([("segment.rule", f"unknown insight {quote(unknown[0])}")])
    if segment_names is not None:
        unknown = [n for n in segments if n not in segment_names]
        if unknown:
            raise InvalidArgument([("segment.rule", f"unknown segment {quote(unknown[0])}")])
    try:
        program = cel.compile(rule)
    except Exception as error:  # noqa: BLE001 - the library raises ValueError and others
        raise InvalidArgument([("segment.rule", rule_limits.compiler_message(error, rule))]) from None
    unknown = sorted(set(program.variables()) - RULE_VARIABLES - rule_limits.bound_names(rule))
    if unknown:
        raise InvalidArgument([(
            "segment.rule",
            f"Undefined variable or function: {quote(unknown[0])}; rules see attributes, insights, "
            "affinities, consents and segments",
        )])
    sample = {"attributes": {}, "insights": {n: ({} if n in grouped else 0.0) for n in insight_names},
              "segments": [], "affinities": {}, "consents": {}}
    try:
        result = program.execute(sample)
    except KeyError:
        result = None
    except Exception as error:  # noqa: BLE001
        raise InvalidArgument([("segment.rule", shorten(str(error)))]) from None
    if result is not None and not isinstance(result, bool):
        raise InvalidArgument([("segment.rule", f"must yield a bool, got {type(result).__name__} "
                                                f"{shorten(repr(result), 40)}")])
    return program


def rule_variables(programs: list[SegmentProgram]) -> frozenset[str]:
    """The variables (attributes, insights, segments, affinities, consents) that at least one program reads."""
    return frozenset(v for p in programs if p.program is not None for v in p.program.variables())


def evaluate_memberships(
    programs: list[SegmentProgram],
    attributes: dict,
    insights: dict[str, object],
    current: set[str],
    affinities: dict | None = None,
    consents: dict | None = None,
    variables: frozenset[str] | None = None,
    memo: dict | None = None,
    over_budget: set[str] | None = None,
) -> set[str]:
    """The segments an individual belongs to; rules that read `segments` see the memberships being computed.
    variables: rule_variables(programs), when the caller evaluates many individuals with the same programs; memo:
    a dict kept while evaluating them, so that individuals with the same insights and segments are evaluated once
    (only when rules read nothing else: rules are pure functions of what they read); over_budget: gets the names
    of the rules that were not run on this individual because its data would take them over their budget."""
    reads_segments = any(p.reads_segments for p in programs)
    members = set(current) & {p.name for p in programs}
    # Only the variables some rule reads are converted: building a Context costs about 2 us per variable.
    used = rule_variables(programs) if variables is None else variables
    key = None
    if memo is not None and used <= {"insights", "segments"}:
        key = (tuple((k, tuple(sorted(v.items())) if isinstance(v, dict) else v) for k, v in insights.items())
               if "insights" in used else (), frozenset(members) if reads_segments else None)
        known = memo.get(key)
        if known is not None:
            return set(known)
    values = {name: value for name, value in (
        ("attributes", attributes), ("insights", insights), ("affinities", affinities or {}),
        ("consents", consents or {})) if name in used}
    runnable = _runnable(programs, values, len(programs), over_budget)
    context = cel.Context(values)
    for _ in range(MAX_SEGMENT_PASSES if reads_segments else 1):
        # One Context for all programs and passes: the library converts the variables once; only segments change.
        if reads_segments:
            context.add_variable("segments", sorted(members))
        result = {p.name for p in runnable if _is_member(p.program, context)}
        if result == members:
            break
        members = result
    if key is not None and memo is not None:
        memo[key] = frozenset(members)
    return members


def _is_member(program: cel.Program | None, context: cel.Context) -> bool:
    if program is None:  # never runnable (see _runnable)
        return False
    try:
        return program.execute(context) is True
    except Exception:  # noqa: BLE001 - a rule that errors on a profile (missing key, bad type) does not match
        return False


def _runnable(programs: list[SegmentProgram], values: dict, segment_count: int,
              over_budget: set[str] | None) -> list[SegmentProgram]:
    """The programs that may run on these values; the others are named in over_budget."""
    if all(p.program is not None and not p.cost.superlinear for p in programs):
        return programs
    largest = max(rule_limits.largest_collection(values.values()), segment_count)
    out = []
    for p in programs:
        if p.program is None or (p.cost.superlinear and p.cost.at(largest) > rule_limits.MAX_RUN_COST):
            if over_budget is not None:
                over_budget.add(p.name)
        else:
            out.append(p)
    return out


class RuleCache:
    """Compiled segment programs per tenant, recompiled only when a rule's source changes."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, dict[str, tuple[str, SegmentProgram]]] = {}

    def programs(self, tenant: str, segments: list[SegmentDef]) -> list[SegmentProgram]:
        """The program of each segment, in name order."""
        cache = self._by_tenant.setdefault(tenant, {})
        out = []
        for s in sorted(segments, key=lambda s: s.name):
            hit = cache.get(s.name)
            if hit is None or hit[0] != s.rule:
                hit = (s.rule, _program(s.name, s.rule, None))
                cache[s.name] = hit
            out.append(hit[1])
        return out

    def put(self, tenant: str, name: str, rule: str, program: cel.Program) -> None:
        """Keeps a program compiled while saving its segment."""
        self._by_tenant.setdefault(tenant, {})[name] = (rule, _program(name, rule, program))


def _program(name: str, rule: str, program: cel.Program | None) -> SegmentProgram:
    try:
        cost = rule_limits.check(rule)
    except rule_limits.RuleTooCostly:
        return SegmentProgram(name, None, False, rule_limits.FREE)   # saved before the limits: never run
    if program is None:
        program = cel.compile(rule)
    return SegmentProgram(name, program, "segments" in program.variables(), cost)
