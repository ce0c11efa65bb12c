"""Cost limits of CEL rules, one implementation for decision targeting rules and profile-graph segment rules.

A rule is refused when saved if it is too long, nests brackets or comprehensions too deep, has too many
comprehensions, or costs too much by estimate. The estimate counts steps: a comprehension (all, exists, exists_one,
map, filter) over a list literal takes one step per element and per step of its body; one over data (an attribute,
an insight map, the segments...) is a polynomial in n, the size of the largest collection the rule reads, judged at
save time with n = ASSUMED_SIZE. map and filter also cost the square of their range (the library copies the list
being built at every step: 1,000 elements take ~50 ms, 4,000 ~800 ms), and `x in list` the size of the list. One
step is about 0.1-0.3 us, so a rule at the limit runs in a few milliseconds.

Data can be larger than assumed, so a rule whose cost grows faster than linearly is checked again before each
run against the collections actually present (`fits`) and does not run when over MAX_RUN_COST. (The CEL library
holds the GIL for a whole evaluation, so a run cannot be interrupted: it has to be refused before it starts.)

Refusals name the position in the rule ("column 57", or "line 2, column 5") and quote at most a few dozen
characters of it, never the whole rule.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.errors import shorten

MAX_RULE_CHARS = 4096
MAX_RULE_DEPTH = 32
MAX_COMPREHENSIONS = 8
MAX_COMPREHENSION_NESTING = 2
MAX_RULE_COST = 20_000
ASSUMED_SIZE = 100
MAX_RUN_COST = 50_000
EXCERPT_CHARS = 32
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
ACCUMULATING = frozenset({"map", "filter"})

_RAW = r"(?:[rR][bB]?|[bB][rR])"
_TOKEN = re.compile(
    rf'(?P<string>{_RAW}(?:"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"[^"\n]*"|\'[^\'\n]*\')'
    r'|[bB]?(?:"""(?:\\[\s\S]|[^\\])*?"""|\'\'\'(?:\\[\s\S]|[^\\])*?\'\'\''
    r'|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'))'
    r"|(?P<ident>[A-Za-z_]\w*)|(?P<number>\d[\w.]*)|(?P<space>\s+)|(?P<punct>[\s\S])")
_CLOSE = {")": "(", "]": "[", "}": "{"}
_BOUND_NAME = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_COMPILER_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*([^\n]*)")


class RuleTooCostly(ValueError):
    """A rule refused by a limit; the message names the position (offset is 0-based in the source)."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


Poly = dict[int, int]   # degree in n -> coefficient


@dataclass(frozen=True)
class RuleCost:
    """A rule's estimated steps as a polynomial in n, the size of the largest collection it reads."""

    terms: tuple[tuple[int, int], ...] = ()   # (degree, coefficient)

    def at(self, n: int) -> int:
        return sum(c * n ** d for d, c in self.terms)

    @functools.cached_property
    def superlinear(self) -> bool:
        """Whether the cost grows faster than the data (linear work is bounded by converting the data anyway)."""
        return any(d >= 2 and c for d, c in self.terms)


FREE = RuleCost()


def where(source: str, offset: int) -> str:
    """The 1-based position of offset: "column 57", or "line 2, column 5" in a rule of several lines."""
    line = source.count("\n", 0, offset)
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return f"line {line + 1}, column {column}" if "\n" in source else f"column {column}"


def excerpt(source: str, offset: int, size: int = EXCERPT_CHARS) -> str:
    """At most `size` characters of the rule from offset, quoted, with … when cut."""
    part = source[offset:offset + size]
    return repr(part + "…") if len(source) > offset + size else repr(part)


@dataclass
class _Token:
    kind: str
    text: str
    offset: int


@dataclass
class _Group:
    open: str
    offset: int
    items: list = field(default_factory=list)


def _structure(source: str) -> _Group | None:
    """The rule as nested bracket groups of tokens; raises on depth; None when the brackets do not balance
    (the compiler then refuses the rule with its own message)."""
    root = _Group("", 0)
    stack = [root]
    for m in _TOKEN.finditer(source):
        kind = m.lastgroup
        text = m.group()
        if kind == "space":
            continue
        if kind == "punct" and text in "([{":
            if len(stack) > MAX_RULE_DEPTH:
                raise RuleTooCostly(f"brackets nest more than {MAX_RULE_DEPTH} deep at {where(source, m.start())}; "
                                    f"at most {MAX_RULE_DEPTH} levels are allowed", m.start())
            group = _Group(text, m.start())
            stack[-1].items.append(group)
            stack.append(group)
        elif kind == "punct" and text in _CLOSE:
            if len(stack) == 1 or stack[-1].open != _CLOSE[text]:
                return None
            stack.pop()
        else:
            stack[-1].items.append(_Token(kind or "punct", text, m.start()))
    return root if len(stack) == 1 else None


def _add(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    for d, c in b.items():
        out[d] = out.get(d, 0) + c
    return out


def _mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for da, ca in a.items():
        for db, cb in b.items():
            out[da + db] = out.get(da + db, 0) + ca * cb
    return out


def _at(p: Poly, n: int) -> int:
    return sum(c * n ** d for d, c in p.items())


def _is_operand(item) -> bool:
    return isinstance(item, _Group) or (isinstance(item, _Token) and item.kind in ("ident", "number", "string")
                                        and item.text != "in")


def _literal_size(group: _Group) -> int:
    commas = sum(1 for t in group.items if isinstance(t, _Token) and t.text == ",")
    if not group.items:
        return 0
    trailing = isinstance(group.items[-1], _Token) and group.items[-1].text == ","
    return commas + (0 if trailing else 1)


def _size_of(span: list) -> Poly:
    """How many elements an operand (a span of items) holds: a literal's count, else n (data)."""
    if span and isinstance(span[0], _Group) and span[0].open in "[{":
        return {0: _literal_size(span[0])}
    return {1: 1}


def _receiver(items: list, dot: int) -> list:
    """The postfix expression ending just before items[dot] (the receiver of a method or macro)."""
    j = dot - 1
    while j >= 0:
        item = items[j]
        before = items[j - 1] if j > 0 else None
        if isinstance(item, _Group) and item.open in "([" and before is not None and _is_operand(before):
            j -= 1          # a call's arguments or an index: the chain goes on
        elif isinstance(before, _Token) and before.text == ".":
            j -= 2          # a member: the chain goes on before the dot
        else:
            break
    return items[max(j, 0):dot]


@dataclass
class _Walk:
    source: str
    comprehensions: int = 0
    outer: list = field(default_factory=list)   # (cost at ASSUMED_SIZE, offset) of each outermost comprehension


def _cost(items: list, nesting: int, walk: _Walk) -> Poly:
    total: Poly = {}
    i = 0
    while i < len(items):
        item = items[i]
        macro = (isinstance(item, _Token) and item.text == "." and i + 2 < len(items)
                 and isinstance(items[i + 1], _Token) and items[i + 1].text in MACROS
                 and isinstance(items[i + 2], _Group) and items[i + 2].open == "(")
        if macro:
            name, args = items[i + 1], items[i + 2]
            walk.comprehensions += 1
            if walk.comprehensions > MAX_COMPREHENSIONS:
                raise RuleTooCostly(f"comprehension number {walk.comprehensions} at {where(walk.source, name.offset)}; "
                                    f"at most {MAX_COMPREHENSIONS} are allowed", name.offset)
            if nesting + 1 > MAX_COMPREHENSION_NESTING:
                raise RuleTooCostly(f"comprehensions nest {nesting + 1} deep at {where(walk.source, name.offset)}; "
                                    f"at most {MAX_COMPREHENSION_NESTING} levels are allowed", name.offset)
            size = _size_of(_receiver(items, i))
            commas = [k for k, t in enumerate(args.items) if isinstance(t, _Token) and t.text == ","]
            body = _cost(args.items[commas[0] + 1:] if commas else args.items, nesting + 1, walk)
            step = _add(body, {0: 1})
            if name.text in ACCUMULATING:
                step = _add(step, size)
            cost = _mul(size, step)
            if nesting == 0:
                walk.outer.append((_at(cost, ASSUMED_SIZE), name.offset))
            total = _add(total, cost)
            i += 3
            continue
        if isinstance(item, _Group):
            total = _add(total, _cost(item.items, nesting, walk))
        elif isinstance(item, _Token) and item.kind == "ident" and item.text == "in":
            total = _add(total, _size_of(items[i + 1:i + 2]))
        i += 1
    return total


def check(source: str) -> RuleCost:
    """The rule's estimated cost; raises RuleTooCostly when a limit is passed (the message names the position)."""
    if len(source) > MAX_RULE_CHARS:
        raise RuleTooCostly(f"rule is {len(source)} characters long, past the limit at "
                            f"{where(source, MAX_RULE_CHARS)}; at most {MAX_RULE_CHARS} are allowed", MAX_RULE_CHARS)
    root = _structure(source)
    if root is None:
        return FREE
    walk = _Walk(source)
    poly = _cost(root.items, 0, walk)
    estimate = _at(poly, ASSUMED_SIZE)
    if estimate > MAX_RULE_COST:
        offset = max(walk.outer)[1] if walk.outer else 0
        raise RuleTooCostly(
            f"estimated cost {estimate:,} steps (collections of {ASSUMED_SIZE} elements assumed) exceeds "
            f"{MAX_RULE_COST:,}; the costliest part is at {where(source, offset)}: {excerpt(source, offset)}", offset)
    return RuleCost(tuple(sorted((d, c) for d, c in poly.items() if c)))


def bound_names(source: str) -> set[str]:
    """The names comprehensions bind (the x of `list.all(x, ...)`); the compiler lists them among the variables."""
    return set(_BOUND_NAME.findall(source))


def largest_collection(values: Iterable, limit: int = 6) -> int:
    """The size of the largest list or map in the values, looked for `limit` levels deep."""
    largest = 0
    stack = [(v, 0) for v in values]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, tuple, dict)):
            largest = max(largest, len(value))
            if depth < limit:
                children = value.values() if isinstance(value, dict) else value
                stack.extend((c, depth + 1) for c in children if isinstance(c, (list, tuple, dict)))
    return largest


def fits(cost: RuleCost, values: Iterable) -> bool:
    """Whether a rule may run on these values: linear rules always, others when their cost on the largest
    collection present stays within MAX_RUN_COST."""
    return not cost.superlinear or cost.at(largest_collection(values)) <= MAX_RUN_COST


def compiler_message(error: Exception, source: str) -> str:
    """The CEL compiler's complaint, reduced to its position and reason (its own text quotes the whole rule)."""
    text = str(error)
    found = _COMPILER_POSITION.search(text)
    if found is None:
        return shorten(text.replace(source, excerpt(source, 0)) if source and len(source) > EXCERPT_CHARS else text)
    line, column, reason = int(found.group(1)), int(found.group(2)), found.group(3)
    lines = source.split("\n")
    offset = sum(len(x) + 1 for x in lines[:line - 1]) + column - 1
    position = f"line {line}, column {column}" if len(lines) > 1 else f"column {column}"
    near = source[offset:offset + 1] and f" (near {excerpt(source, offset)})"
    return f"does not parse at {position}: {shorten(reason, 160)}{near}"
