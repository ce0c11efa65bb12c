"""Probabilistic (Fellegi-Sunter) match rules: compared fields, agreement levels, trained weights, scores (pure).

A probabilistic rule compares a pair of records field by field. Each field falls into one agreement level (exact,
one or more fuzzy levels, else disagree); a field blank on either side is the null level and weighs nothing. A
trained model holds, per level, m (the share of true matches at that level) and u (the share of random pairs at
it); the level's weight is log2(m / u). The exact level of a TEXT or EXACT field is weighted by the value itself
(a term-frequency adjustment): u is then the share of the training records holding that value (less one person's
duplicates), so agreeing on a common name counts for less than agreeing on a rare one. A pair's score is the prior weight log2(lambda / (1 - lambda)) plus the
weights of its fields, so a score of 0 is a match probability of 0.5. The same level functions are written in
DuckDB SQL for training with Splink (training.py); tests check that both put every pair in the same level.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property, lru_cache

import numpy as np
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler
from rapidfuzz.process import cpdist

# How a field is compared; the levels of each, best first (else is always last, null comes before all).
TEXT, EXACT, DATE, EMAIL = "TEXT", "EXACT", "DATE", "EMAIL"
COMPARISONS = (TEXT, EXACT, DATE, EMAIL)
# Jaro-Winkler levels of TEXT when none are given: Splink's name comparison (one typo, looser spellings, related).
DEFAULT_TEXT_THRESHOLDS = (0.92, 0.88, 0.70)
EMAIL_THRESHOLD = 0.88
# DATE: a typo in the text, then calendar distance in days (a month, a year, ten years) when both parse as dates.
DATE_DAYS = (31, 366, 3653)
NULL = -1
# The threshold when a rule sets none: a match probability of about 0.94. Linking is transitive (a cluster is every
# record reachable through matched pairs), so a looser default chains distinct people through borderline pairs.
DEFAULT_THRESHOLD = 4.0
# Comparisons whose exact level is weighted by how common the value is (term frequencies). Not DATE or EMAIL: one
# person's date of birth or address is as rare as the person, so its count is mostly that person's duplicates.
TERM_FREQUENCY_COMPARISONS = (TEXT, EXACT)
MAX_FIELDS = 20
MAX_BLOCKING_RULES = 10
MAX_LEVELS = 10
# Year, month, day with any separators, or eight digits YYYYMMDD.
_DATE = re.compile(r"(\d{4})\D(\d{1,2})\D(\d{1,2})|(\d{4})(\d{2})(\d{2})")


@dataclass(frozen=True)
class CompareField:
    """One compared field: an identity type or an attribute, and how it is compared."""

    kind: str  # "identity" or "attribute"
    name: str
    comparison: str = TEXT
    thresholds: tuple[float, ...] = ()  # TEXT: Jaro-Winkler levels, highest first; () means the defaults

    def levels(self) -> list[str]:
        """The names of the agreement levels, best first; 'else' (disagree) is last."""
        if self.comparison == TEXT:
            return ["exact"] + [f"jaro_winkler>={t:g}" for t in self.text_thresholds()] + ["else"]
        if self.comparison == DATE:
            return ["exact", "one_edit"] + [f"within_{d}_days" for d in DATE_DAYS] + ["else"]
        if self.comparison == EMAIL:
            return ["exact", "same_local_part", f"jaro_winkler>={EMAIL_THRESHOLD:g}", "else"]
        return ["exact", "else"]

    def text_thresholds(self) -> tuple[float, ...]:
        """The Jaro-Winkler thresholds of a TEXT field."""
        return self.thresholds or DEFAULT_TEXT_THRESHOLDS

    @property
    def label(self) -> str:
        """The field as named in explanations and blocking rules."""
        return self.name


@dataclass(frozen=True)
class Probabilistic:
    """A probabilistic rule's definition: compared fields, blocking rules (names of fields) and the threshold."""

    fields: tuple[CompareField, ...]
    blocking: tuple[tuple[str, ...], ...]
    threshold: float = 0.0  # match weight; 0 is a match probability of 0.5

    def to_dict(self) -> dict:
        """The stored form."""
        return {"fields": [{"kind": f.kind, "name": f.name, "comparison": f.comparison,
                            "thresholds": list(f.thresholds)} for f in self.fields],
                "blocking": [list(b) for b in self.blocking], "threshold": self.threshold}

    @staticmethod
    def from_dict(data: dict) -> Probabilistic:
        """The definition from its stored form."""
        return Probabilistic(
            tuple(CompareField(f["kind"], f["name"], f["comparison"], tuple(f["thresholds"])) for f in data["fields"]),
            tuple(tuple(b) for b in data["blocking"]), float(data["threshold"]))

    def field_index(self) -> dict[str, int]:
        """Field name -> position."""
        return {f.name: i for i, f in enumerate(self.fields)}


@dataclass(frozen=True)
class MatchModel:
    """Trained m and u per level of each field of one probabilistic rule, and the prior match probability."""

    version: int
    rule: str
    prior: float  # lambda: the probability that two random records match
    m: tuple[tuple[float, ...], ...]  # per field, per level (null excluded)
    u: tuple[tuple[float, ...], ...]
    # Per field: how many training records hold each value seen at least twice, and the records with a value; a
    # value not counted (rare, or new since training) keeps the exact level's own weight. Empty: no adjustment.
    term_counts: tuple[dict[str, int], ...] = field(default=(), compare=False, repr=False)
    term_totals: tuple[int, ...] = field(default=(), compare=False)

    @cached_property
    def prior_weight(self) -> float:
        """log2(lambda / (1 - lambda))."""
        p = min(max(self.prior, 1e-12), 1 - 1e-12)
        return math.log2(p / (1 - p))

    def weights(self) -> list[list[float]]:
        """Per field, per level: log2(m / u) (computed once per model)."""
        return self._weights

    @cached_property
    def _weights(self) -> list[list[float]]:
        return [[_weight(m, u) for m, u in zip(ms, us)] for ms, us in zip(self.m, self.u)]

    def exact_weight(self, f: int, value: str) -> float:
        """The weight of field f agreeing exactly on value: log2(m / the value's share of records) for a counted value,
        else the exact level's weight."""
        return self._exact_weights[f].get(value, self._weights[f][0]) if f < len(self._exact_weights) else \
            self._weights[f][0]

    @cached_property
    def _exact_weights(self) -> list[dict[str, float]]:
        # Records are deduplicated against each other, so a value's count includes its holder's own duplicates:
        # about 1 + prior * (records - 1) records per person. Only the count beyond one person's share says how
        # many people hold the value; a value held by about one person keeps the level's weight.
        out = []
        for f, counts in enumerate(self.term_counts):
            m, total = self.m[f][0], self.term_totals[f]
            own = 1 + self.prior * (total - 1)
            out.append({v: _weight(m, (n - own) / total) for v, n in counts.items() if n - own >= 1}
                       if m > 0 and total else {})
        return out

    def to_dict(self) -> dict:
        """The stored form."""
        return {"rule": self.rule, "prior": self.prior, "m": [list(x) for x in self.m], "u": [list(x) for x in self.u],
                "term_counts": list(self.term_counts), "term_totals": list(self.term_totals)}

    @staticmethod
    def from_dict(version: int, data: dict) -> MatchModel:
        """The model from its stored form (models stored before term frequencies have none)."""
        return MatchModel(version, data["rule"], float(data["prior"]), tuple(tuple(x) for x in data["m"]),
                          tuple(tuple(x) for x in data["u"]), tuple(data.get("term_counts", ())),
                          tuple(data.get("term_totals", ())))


def term_counts(spec: Probabilistic, values: list[list[list[str]]]) -> tuple[tuple[dict[str, int], ...], tuple[int, ...]]:
    """Per field of the rule: each value held by at least two records, with its count (only TEXT and EXACT fields),
    and how many records hold a value of the field."""
    counts: list = []
    totals: list = []
    for f, compared in enumerate(spec.fields):
        if compared.comparison not in TERM_FREQUENCY_COMPARISONS:
            counts.append({})
            totals.append(0)
            continue
        found = Counter(v for row in values for v in set(row[f]))
        counts.append({v: n for v, n in found.items() if n > 1})
        totals.append(sum(1 for row in values if row[f]))
    return tuple(counts), tuple(totals)


def _weight(m: float, u: float) -> float:
    # A level training never saw (say, a field blank in every record then) is no evidence either way; one seen among
    # matches but not among the million random pairs sampled (u = 0) is bounded at that sample's resolution.
    if m <= 0 and u <= 0:
        return 0.0
    return math.log2(max(m, 1e-6) / max(u, 1e-6))


@lru_cache(maxsize=262_144)
def parse_date(value: str) -> int | None:
    """Days since 0001-01-01 of a date written year, month, day (any separators, or YYYYMMDD), or None."""
    found = _DATE.fullmatch(value)
    if not found:
        return None
    parts = found.groups()[:3] if found[1] else found.groups()[3:]
    try:
        return date(int(parts[0]), int(parts[1]), int(parts[2])).toordinal()
    except ValueError:
        return None


def local_part(value: str) -> str:
    """The part of an email address before the '@' (the whole value without one)."""
    return value.split("@", 1)[0]


def level(compared: CompareField, left: str, right: str) -> int:
    """The agreement level of two non-blank values (0 = exact; the last level = disagree)."""
    if left == right:
        return 0
    comparison = compared.comparison
    if comparison == TEXT:
        thresholds = compared.text_thresholds()
        similarity = JaroWinkler.similarity(left, right)  # (a score_cutoff can drop a similarity equal to it)
        for i, t in enumerate(thresholds):
            if similarity >= t:
                return 1 + i
        return 1 + len(thresholds)
    if comparison == DATE:
        if DamerauLevenshtein.distance(left, right, score_cutoff=1) <= 1:
            return 1
        a, b = parse_date(left), parse_date(right)
        if a is not None and b is not None:
            for i, days in enumerate(DATE_DAYS):
                if abs(a - b) <= days:
                    return 2 + i
        return 2 + len(DATE_DAYS)
    if comparison == EMAIL:
        if local_part(left) == local_part(right):
            return 1
        if JaroWinkler.similarity(left, right) >= EMAIL_THRESHOLD:
            return 2
        return 3
    return 1


def best_level(compared: CompareField, left: list[str], right: list[str]) -> int:
    """The best level over the values of each side (an identity type can have several); NULL when one side is blank."""
    if not left or not right:
        return NULL
    return min(level(compared, a, b) for a in left for b in right)


def _column_levels(compared: CompareField, left: list[str | None], right: list[str | None]) -> np.ndarray:
    """Levels of many pairs of single values at once (None: blank), the same as level() pair by pair."""
    n = len(left)
    null = np.fromiter((a is None or b is None for a, b in zip(left, right)), dtype=bool, count=n)
    lf = [a or "" for a in left]
    rt = [b or "" for b in right]
    exact = np.fromiter((a == b for a, b in zip(lf, rt)), dtype=bool, count=n)
    comparison = compared.comparison
    if comparison == TEXT:
        thresholds = compared.text_thresholds()
        similarity = cpdist(lf, rt, scorer=JaroWinkler.similarity, workers=-1, dtype=np.float64)
        out = np.full(n, 1 + len(thresholds), dtype=np.int8)
        for i, t in reversed(list(enumerate(thresholds))):
            out[similarity >= t] = 1 + i
    elif comparison == DATE:
        out = np.full(n, 2 + len(DATE_DAYS), dtype=np.int8)
        days_l = np.array([parse_date(a) if a else None for a in lf], dtype=object)
        days_r = np.array([parse_date(b) if b else None for b in rt], dtype=object)
        both = np.fromiter((a is not None and b is not None for a, b in zip(days_l, days_r)), dtype=bool, count=n)
        gap = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        gap[both] = np.abs(days_l[both].astype(np.int64) - days_r[both].astype(np.int64))
        for i, days in reversed(list(enumerate(DATE_DAYS))):
            out[gap <= days] = 2 + i
        edits = cpdist(lf, rt, scorer=DamerauLevenshtein.distance, workers=-1, score_cutoff=1)
        out[edits <= 1] = 1
    elif comparison == EMAIL:
        similarity = cpdist(lf, rt, scorer=JaroWinkler.similarity, workers=-1, dtype=np.float64)
        out = np.full(n, 3, dtype=np.int8)
        out[similarity >= EMAIL_THRESHOLD] = 2
        local = np.fromiter((local_part(a) == local_part(b) for a, b in zip(lf, rt)), dtype=bool, count=n)
        out[local] = 1
    else:
        out = np.ones(n, dtype=np.int8)
    out[exact] = 0
    out[null] = NULL
    return out


def pair_scores(spec: Probabilistic, model: MatchModel, values: list[list[list[str]]], a: np.ndarray, b: np.ndarray
                ) -> np.ndarray:
    """Scores of the pairs (a[k], b[k]) of records given as values[record][field] (lists of values), at once."""
    weights = model.weights()
    total = np.full(len(a), model.prior_weight, dtype=np.float64)
    left, right = a.tolist(), b.tolist()
    for f, compared in enumerate(spec.fields):
        column = [vs[f] for vs in values]
        first = [vs[0] if vs else None for vs in column]
        levels = _column_levels(compared, [first[i] for i in left], [first[j] for j in right])
        multi = np.fromiter((len(vs) > 1 for vs in column), dtype=bool, count=len(column))
        for k in np.nonzero(multi[a] | multi[b])[0]:
            levels[k] = best_level(compared, column[a[k]], column[b[k]])
        table = np.array(weights[f] + [0.0], dtype=np.float64)  # index -1 (null) weighs nothing
        total += table[levels.astype(np.int64)]
        if f < len(model.term_counts) and model.term_counts[f]:
            for j in np.nonzero(levels == 0)[0].tolist():
                total[j] += exact_value_weight(model, f, column[a[j]], column[b[j]]) - table[0]
    return total


def exact_value_weight(model: MatchModel, f: int, left: list[str], right: list[str]) -> float:
    """The weight of two value lists agreeing exactly on field f: that of the rarest value they share."""
    if len(left) == 1 and len(right) == 1:
        return model.exact_weight(f, left[0])
    return max(model.exact_weight(f, v) for v in set(left) & set(right))


def estimate_prior(scores: np.ndarray, prior_weight: float, total_pairs: float) -> float:
    """The probability that two random records match, from the scores of the blocked pairs (expectation-maximisation
    of the prior alone, m and u fixed): the expected matches among the blocked pairs over all pairs of records.

    Blocked pairs hold nearly all matches, so this does not depend on how loose the blocking rules are.
    """
    evidence = scores - prior_weight
    prior = max(min(len(scores) / max(total_pairs, 1.0) / 2, 0.5), 1e-12)
    for _ in range(200):
        weight = math.log2(prior / (1 - prior))
        estimate = float((1.0 / (1.0 + np.exp2(-(evidence + weight)))).sum()) / max(total_pairs, 1.0)
        estimate = min(max(estimate, 1e-12), 0.5)
        if abs(estimate - prior) <= 1e-12 + 1e-6 * prior:
            return estimate
        prior = estimate
    return prior


def candidate_pairs(groups, max_block: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs (a < b) of records sharing a group (a block), each group cut to its first max_block records."""
    keys: list[int] = []
    for members in groups:
        if len(members) < 2:
            continue
        ids = sorted(set(members))[:max_block]
        for x in range(1, len(ids)):
            high = ids[x]
            keys.extend(low << 32 | high for low in ids[:x])
    found = np.unique(np.array(keys, dtype=np.int64))
    return found >> 32, found & 0xFFFFFFFF
