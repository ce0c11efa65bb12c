"""Targeting rules: CEL compiled once when saved, checked against a sample activation, evaluated per request.

A rule sees two variables, `profile` and `context`, both maps. Converting a Python value to CEL costs about
10 microseconds per nested map (a profile with 200 events costs 2 ms), so each rule also records which
top-level keys of `profile` and `context` it reads, and a request hands CEL only those keys.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cel

from shared import rule_limits
from shared.errors import quote, shorten
from shared.rule_limits import RuleCost

VARIABLES = ("profile", "context")

# What a key missing from the caller's input defaults to, so `"vip" in profile.segments` is simply false for
# a profile without segments. The same shapes form the sample activation a rule is checked against when saved.
PROFILE_DEFAULTS: dict[str, Any] = {
    "attributes": {}, "insights": {}, "segments": [], "events": [], "affinities": {}, "consents": {},
}
CONTEXT_DEFAULTS: dict[str, Any] = {
    "anchor_id": "",
    "anchor_type": "",
    "cart_item_ids": [],
    "channel": "",
    "correlation_id": "",
    "request_url": "",
    "attributes": {},
}
DEFAULTS = {"profile": PROFILE_DEFAULTS, "context": CONTEXT_DEFAULTS}
SAMPLE_ACTIVATION = {"profile": dict(PROFILE_DEFAULTS), "context": dict(CONTEXT_DEFAULTS)}

# Marks a variable a rule uses as a whole (size(profile), profile[k], ...): every key must be present.
ALL = None

_UNDEFINED = "Undefined variable or function"
_USE = re.compile(r"\b(profile|context)\b")
_DOT_KEY = re.compile(r"\s*\.\s*([A-Za-z_]\w*)(?!\w)(\s*\()?")
_INDEX_KEY = re.compile(r"""\s*\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\]""")


class RuleError(ValueError):
    """A rule refused when saved; the message says why and where, quoting at most a few dozen characters."""


@dataclass(frozen=True)
class CompiledRule:
    """A saved rule: its source, its program (None for the empty rule) and the input keys it reads."""

    source: str
    program: Any
    # Variable -> top-level keys read, or ALL; a variable the rule never mentions is absent.
    needs: Mapping[str, frozenset[str] | None]
    # Estimated steps by the size of the data it reads (shared.rule_limits).
    cost: RuleCost = rule_limits.FREE


def _needs(source: str) -> dict[str, frozenset[str] | None]:
    """Which top-level keys of profile and context the source can read (an over-approximation, never less)."""
    found: dict[str, set[str] | None] = {}
    for use in _USE.finditer(source):
        var = use.group(1)
        if found.get(var, set()) is ALL:
            continue
        rest = source[use.end():]
        dot = _DOT_KEY.match(rest)
        index = _INDEX_KEY.match(rest)
        if dot and not dot.group(2):
            key = dot.group(1)
        elif index:
            key = index.group(1) if index.group(1) is not None else index.group(2)
        else:
            found[var] = ALL
            continue
        found.setdefault(var, set()).add(key)  # type: ignore[union-attr]
    return {var: (ALL if keys is ALL else frozenset(keys)) for var, keys in found.items()}


@functools.lru_cache(maxsize=8192)
def compile_rule(source: str) -> CompiledRule:
    """Compiles and checks a rule; raises RuleError when it cannot be saved. Memoized by source."""
    if not source.strip():
        return CompiledRule(source=source, program=None, needs={})
    try:
        cost = rule_limits.check(source)
    except rule_limits.RuleTooCostly as error:
        raise RuleError(str(error)) from None
    try:
        program = cel.compile(source)
    except Exception as error:  # noqa: BLE001 - the library raises ValueError and friends on bad syntax
        raise RuleError(rule_limits.compiler_message(error, source)) from None
    bound = rule_limits.bound_names(source)
    strangers = sorted(set(program.variables()) - set(VARIABLES) - bound)
    if strangers:
        raise RuleError(f"undeclared reference to {quote(strangers[0])}: rules see only "
                        "profile and context")
    try:
        result = program.execute(SAMPLE_ACTIVATION)
    except RuntimeError as error:
        if str(error).startswith(_UNDEFINED):
            raise RuleError(shorten(str(error))) from None
        result = True  # a failing function call on empty sample data (int("")) may well work on real data
    except TypeError as error:
        # Every value of the sample has its real type and every map is empty, so a type error here is not
        # data-dependent (a data-dependent read fails first with a missing key): it would fail on every request.
        raise RuleError(str(error)) from None
    except (KeyError, IndexError, ZeroDivisionError, ValueError, OverflowError):
        result = True  # missing keys and empty lists are the sample's emptiness, not the rule's fault
    if not isinstance(result, bool):
        raise RuleError(f"rule must yield a bool, but yields {_cel_type(result)} on an empty profile")
    return CompiledRule(source=source, program=program, needs=_needs(source), cost=cost)


class _Broken:
    """Stands in for the program of a stored rule that no longer compiles: every run fails with the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def execute(self, _context: Any) -> Any:
        raise RuntimeError(f"rule no longer compiles: {self.reason}")


def broken_rule(source: str, reason: str) -> CompiledRule:
    """A rule that never matches and reports why; used for stored rules a newer library refuses."""
    return CompiledRule(source=source, program=_Broken(reason), needs={})


def merge_needs(rules: Iterable[CompiledRule]) -> dict[str, frozenset[str] | None]:
    """The union of what several rules read."""
    merged: dict[str, frozenset[str] | None] = {}
    for rule in rules:
        for var, keys in rule.needs.items():
            if keys is ALL or (var in merged and merged[var] is ALL):
                merged[var] = ALL
            else:
                merged[var] = merged.get(var, frozenset()) | keys  # type: ignore[operator]
    return merged


def _variable(var: str, keys: frozenset[str] | None, source: Mapping[str, Any]) -> dict[str, Any]:
    """The value of one variable: only the keys the rules read, documented keys defaulted when missing."""
    defaults = DEFAULTS[var]
    if keys is ALL:
        value = dict(defaults)
        value.update((k, source[k]) for k in source)
        return value
    value = {}
    for key in keys:
        if key in source:
            value[key] = source[key]
        elif key in defaults:
            value[key] = defaults[key]
    return value


class Run:
    """What one evaluation sees: the CEL context, and the values in it (to size them for costly rules)."""

    __slots__ = ("ctx", "_values", "_largest")

    def __init__(self, ctx: cel.Context, values: list):
        self.ctx = ctx
        self._values = values
        self._largest: int | None = None

    def largest(self) -> int:
        if self._largest is None:
            self._largest = rule_limits.largest_collection(self._values)
        return self._largest


def activation(needs: Mapping[str, frozenset[str] | None], inputs: Mapping[str, Mapping[str, Any]]) -> Run:
    """One CEL context per request holding only what the rules read; missing documented keys get defaults."""
    variables = {var: _variable(var, keys, inputs.get(var) or {}) for var, keys in needs.items()}
    return Run(cel.Context(variables=variables), list(variables.values()))


class BatchActivation:
    """One CEL context for many individuals sharing a request context (QualifyBatch).

    The context is converted to CEL once; per individual only the profile is replaced. Replacing a variable
    keeps the other's converted value, which is several times cheaper than a new Context per individual.
    The context returned by with_profile is reused: use it before asking for the next individual's.
    """

    def __init__(self, needs: Mapping[str, frozenset[str] | None], context: Mapping[str, Any]):
        self._reads_profile = "profile" in needs
        self._profile_keys = needs.get("profile")
        shared = {var: _variable(var, keys, context or {}) for var, keys in needs.items() if var == "context"}
        self._shared = list(shared.values())
        self._ctx = cel.Context(variables=shared)

    def with_profile(self, profile: Mapping[str, Any]) -> Run:
        """The shared context with this individual's profile (only the keys the rules read)."""
        if not self._reads_profile:
            return Run(self._ctx, self._shared)
        value = _variable("profile", self._profile_keys, profile or {})
        self._ctx.add_variable("profile", value)
        return Run(self._ctx, [*self._shared, value])


def evaluate(rule: CompiledRule, run: Run) -> tuple[bool, str]:
    """Runs a rule: (matched, error). A rule that fails, yields a non-bool or would pass its evaluation budget
    on this data (rule_limits.MAX_RUN_COST) does not match."""
    if rule.program is None:
        return True, ""
    if rule.cost.superlinear and rule.cost.at(run.largest()) > rule_limits.MAX_RUN_COST:
        return False, (f"not run: over the evaluation budget on a collection of {run.largest()} elements "
                       f"(estimated {rule.cost.at(run.largest()):,} steps, at most {rule_limits.MAX_RUN_COST:,})")
    try:
        result = rule.program.execute(run.ctx)
    except KeyError as error:
        return False, shorten(f"no such key: {error.args[0] if error.args else error}")
    except Exception as error:  # noqa: BLE001 - any run-time failure means "does not match"
        return False, shorten(str(error) or type(error).__name__)
    if not isinstance(result, bool):
        return False, f"rule yielded {_cel_type(result)}, not a bool"
    return result, ""


def _cel_type(value: Any) -> str:
    names = {bool: "bool", int: "int", float: "double", str: "string", bytes: "bytes", list: "list", dict: "map"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
