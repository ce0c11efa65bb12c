"""Match rules: identity types and their normalization, rulesets, criteria, blocking keys. Pure functions only."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from itertools import product

import phonenumbers
from rapidfuzz.distance import JaroWinkler

from shared.errors import Violations

TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
ATTRIBUTE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_VALUE_LENGTH = 512

# Normalizations (the proto enum's names without the prefix).
TRIM, TRIM_LOWERCASE, EMAIL, PHONE = "TRIM", "TRIM_LOWERCASE", "EMAIL", "PHONE"
NORMALIZATIONS = (TRIM, TRIM_LOWERCASE, EMAIL, PHONE)

# Methods and fuzzy precisions.
EXACT, EXACT_NORMALIZED, FUZZY = "EXACT", "EXACT_NORMALIZED", "FUZZY"
# Jaro-Winkler similarity (rapidfuzz, prefix weight 0.1) at least this. HIGH takes one typo or transposition
# (jonathan/jonathon 0.95, robert/rboert 0.95, alen/allen 0.947, sarah/sara 0.96); MEDIUM also looser spellings
# (smith/smyth 0.893); LOW also nicknames sharing a prefix (kate/katherine 0.87). john/jane (0.667) never matches.
THRESHOLDS = {"HIGH": 0.94, "MEDIUM": 0.88, "LOW": 0.80}

# Attributes every tenant may match on; a ruleset can declare more in custom_attributes.
BUILT_IN_ATTRIBUTES = frozenset({
    "first_name", "middle_name", "last_name", "full_name", "date_of_birth", "gender",
    "street", "city", "postal_code", "region", "country", "birth_place", "company", "job_title",
})

# A fuzzy-only rule blocks on this many leading characters of each fuzzy value.
FUZZY_BLOCK_PREFIX = 3

# A string as json.dumps writes it (ASCII, quoted): stored hashes are of json.dumps text, written out directly.
_quote = json.encoder.encode_basestring_ascii


@dataclass(frozen=True)
class IdentityType:
    """An identity type of a tenant."""

    name: str
    unique: bool
    normalization: str
    default_region: str = ""
    built_in: bool = False


BUILT_IN_TYPES: dict[str, IdentityType] = {
    t.name: t
    for t in (
        IdentityType("email", True, EMAIL, built_in=True),
        IdentityType("phone", True, PHONE, built_in=True),
        IdentityType("customer_id", True, TRIM, built_in=True),
        IdentityType("crm_contact_key", True, TRIM, built_in=True),
        IdentityType("device_id", True, TRIM, built_in=True),
    )
}


def normalize_value(kind: IdentityType, value: str, default_region: str) -> str:
    """The identity value as stored and matched; raises ValueError naming the problem."""
    stripped = value.strip()
    if kind.normalization in (EMAIL, TRIM_LOWERCASE):
        norm = stripped.lower()
    elif kind.normalization == PHONE:
        norm = normalize_phone(stripped, kind.default_region or default_region)
    else:
        norm = stripped
    if not norm:
        raise ValueError("must not be empty (after normalization)")
    # The length as sent (the contract's limit): lowercasing can lengthen a few letters (İ), never past 4 bytes each.
    if len(stripped) > MAX_VALUE_LENGTH:
        raise ValueError(f"must be at most {MAX_VALUE_LENGTH} characters, got {len(stripped)}")
    if "\x00" in norm:
        raise ValueError("must not contain NUL characters")
    return norm


def normalize_phone(value: str, region: str) -> str:
    """E.164 ('+' and digits); a national number takes the region's country code."""
    if not value:
        return ""
    try:
        number = phonenumbers.parse(value, region or None)
    except phonenumbers.NumberParseException:
        raise ValueError(f"is not a phone number (region {region or 'none'})") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError("is not a possible phone number (wrong length)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=262_144)
def normalize_text(value: str) -> str:
    """Attribute values for EXACT_NORMALIZED and FUZZY: accents and punctuation removed, lowercased, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", value)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", plain).split())


@dataclass(frozen=True)
class Criterion:
    """One condition: a field of both records compared by a method."""

    kind: str  # "identity" or "attribute"
    name: str
    method: str
    precision: str = ""


@dataclass(frozen=True)
class Rule:
    """Criteria AND-ed."""

    name: str
    criteria: tuple[Criterion, ...]


@dataclass(frozen=True)
class Ruleset:
    """Rules OR-ed; version 0 is the default."""

    version: int
    rules: tuple[Rule, ...]
    custom_attributes: tuple[str, ...] = ()
    created_at: datetime | None = None

    def to_json(self) -> str:
        """The stored body."""
        return json.dumps({
            "rules": [{"name": r.name, "criteria": [c.__dict__ for c in r.criteria]} for r in self.rules],
            "custom_attributes": list(self.custom_attributes),
        })

    @staticmethod
    def from_json(version: int, body: str | dict, created_at: datetime | None) -> Ruleset:
        """The ruleset from its stored body."""
        data = json.loads(body) if isinstance(body, str) else body
        rules = tuple(Rule(r["name"], tuple(Criterion(**c) for c in r["criteria"])) for r in data["rules"])
        return Ruleset(version, rules, tuple(data["custom_attributes"]), created_at)


DEFAULT_RULESET = Ruleset(0, (
    Rule("email", (Criterion("identity", "email", EXACT_NORMALIZED),)),
    Rule("phone_and_name", (
        Criterion("identity", "phone", EXACT_NORMALIZED),
        Criterion("attribute", "first_name", FUZZY, "HIGH"),
        Criterion("attribute", "last_name", EXACT),
    )),
    Rule("customer_id", (Criterion("identity", "customer_id", EXACT),)),
))


def validate_ruleset(
    rules: list[tuple[str, list[tuple[str, str, str, str]]]],
    custom_attributes: list[str],
    types: dict[str, IdentityType],
) -> Ruleset:
    """Builds a ruleset from (name, [(kind, name, method, precision)]) or raises with one violation per bad field."""
    v = Violations()
    for i, attribute in enumerate(custom_attributes):
        if not ATTRIBUTE_PATTERN.fullmatch(attribute):
            v.add(f"ruleset.custom_attributes[{i}]", "must match ^[a-z][a-z0-9_]{0,63}$")
    attributes = BUILT_IN_ATTRIBUTES | set(custom_attributes)
    if not rules:
        v.add("ruleset.rules", "at least one rule is required")
    built: list[Rule] = []
    names: set[str] = set()
    for r, (name, criteria) in enumerate(rules):
        path = f"ruleset.rules[{r}]"
        name = name or f"rule_{r}"
        if not ATTRIBUTE_PATTERN.fullmatch(name):
            v.add(f"{path}.name", "must match ^[a-z][a-z0-9_]{0,63}$")
        elif name in names:
            v.add(f"{path}.name", f"duplicate rule name {name!r}")
        names.add(name)
        if not criteria:
            v.add(f"{path}.criteria", "at least one criterion is required")
        built_criteria = []
        for c, (kind, field_name, method, precision) in enumerate(criteria):
            cpath = f"{path}.criteria[{c}]"
            if kind == "identity":
                if field_name not in types:
                    v.add(f"{cpath}.identity_type", f"unknown identity type {field_name!r}")
            elif kind == "attribute":
                if field_name not in attributes:
                    v.add(f"{cpath}.attribute",
                          f"unknown attribute {field_name!r}: not built in and not in ruleset.custom_attributes")
            else:
                v.add(f"{cpath}.field", "an identity_type or an attribute is required")
            if method not in (EXACT, EXACT_NORMALIZED, FUZZY):
                v.add(f"{cpath}.method", "must be EXACT, EXACT_NORMALIZED or FUZZY")
            elif method == FUZZY and precision not in THRESHOLDS:
                v.add(f"{cpath}.precision", "FUZZY needs HIGH, MEDIUM or LOW")
            elif method != FUZZY and precision:
                v.add(f"{cpath}.precision", "only FUZZY takes a precision")
            built_criteria.append(Criterion(kind, field_name, method, precision if method == FUZZY else ""))
        built.append(Rule(name, tuple(built_criteria)))
    v.raise_if_any()
    return Ruleset(0, tuple(built), tuple(custom_attributes))


@dataclass
class Record:
    """A source record (one distinct subject seen): normalized identities by type and trimmed attributes."""

    identities: dict[str, list[str]]
    attributes: dict[str, str] = field(default_factory=dict)
    # Comparable values per criterion object (by id: records live within one call, which holds its ruleset),
    # computed once per record since matching compares a record many times.
    values: dict[int, list[str]] = field(default_factory=dict, compare=False, repr=False)


def record_values(record: Record, criterion: Criterion) -> list[str]:
    """The record's comparable values for a criterion; blanks are left out, so they never match."""
    cached = record.values.get(id(criterion))
    if cached is not None:
        return cached
    if criterion.kind == "identity":
        values = record.identities.get(criterion.name, [])
    else:
        raw = record.attributes.get(criterion.name, "")
        values = [raw] if raw else []
    if criterion.kind == "attribute" and criterion.method != EXACT:
        values = [normalize_text(x) for x in values]
    record.values[id(criterion)] = found = [x for x in values if x]
    return found


def criterion_holds(criterion: Criterion, left: list[str], right: list[str]) -> bool:
    """True when some value of each side matches by the criterion's method."""
    if criterion.method != FUZZY:
        return not set(left).isdisjoint(right)
    threshold = THRESHOLDS[criterion.precision]
    return any(
        JaroWinkler.normalized_similarity(a, b, score_cutoff=threshold) >= threshold for a in left for b in right
    )


@lru_cache(maxsize=1024)
def _cheap_first(rule: Rule) -> tuple[Criterion, ...]:
    return tuple(sorted(rule.criteria, key=lambda c: c.method == FUZZY))


def rule_holds(rule: Rule, left: Record, right: Record) -> bool:
    """True when every criterion of the rule holds between the two records (exact criteria are checked first)."""
    return all(criterion_holds(c, record_values(left, c), record_values(right, c)) for c in _cheap_first(rule))


def evidence(rule: Rule, left: Record, right: Record) -> list[tuple[str, str]]:
    """What a rule matched on, as (field, value of the left record) pairs; attributes are named attribute:<name>."""
    found = []
    for c in rule.criteria:
        values = record_values(left, c)
        if values:
            label = c.name if c.kind == "identity" else f"attribute:{c.name}"
            found.append((label, values[0]))
    return found


def block_keys(ruleset: Ruleset, record: Record) -> list[tuple[int, str]]:
    """(rule index, block key) pairs: only records sharing a key are compared, so matching never compares all pairs.

    A rule blocks on the values of its exact criteria; a rule with fuzzy criteria only blocks on the first
    FUZZY_BLOCK_PREFIX characters of each fuzzy value. A record blank in a blocking field gets no key for that rule.
    """
    keys: list[tuple[int, str]] = []
    for index, rule in enumerate(ruleset.rules):
        blocking = [c for c in rule.criteria if c.method != FUZZY] or list(rule.criteria)
        value_lists = []
        for c in blocking:
            values = record_values(record, c)
            if c.method == FUZZY:
                values = sorted({x[:FUZZY_BLOCK_PREFIX] for x in values})
            value_lists.append(sorted(set(values)))
        for combo in product(*value_lists):
            # Exactly json.dumps([version, index, list(combo)]): keys are stored, so their text never changes.
            raw = f"[{ruleset.version}, {index}, [{', '.join(_quote(x) for x in combo)}]]"
            keys.append((index, hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()))
    return keys


def _pairs(pairs) -> str:
    return ", ".join(f"[{_quote(a)}, {_quote(b)}]" for a, b in pairs)


def fingerprint(record: Record) -> str:
    """The record id: a hash of its normalized content, so a subject seen again is the same source record.

    The hashed text is exactly json.dumps([sorted (type, value) pairs, sorted attribute items]) (ids stay what
    they always were), written out directly because this runs for every subject of every call.
    """
    identities = sorted((t, v) for t, vs in record.identities.items() for v in vs)
    body = f"[[{_pairs(identities)}], [{_pairs(sorted(record.attributes.items()))}]]"
    return "rec_" + hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
