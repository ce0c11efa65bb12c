"""Match rules: identity types and their normalization, rulesets, criteria, blocking keys. Pure functions only."""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from itertools import product
from typing import Any

from rapidfuzz.distance import JaroWinkler

from services.identity import probabilistic as fs
from services.identity.probabilistic import CompareField, MatchModel, Probabilistic
from shared.errors import Violations, quote
from shared.identity_values import normalize_phone

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
    """Criteria AND-ed, or a probabilistic rule: a pair matches when its score reaches the threshold."""

    name: str
    criteria: tuple[Criterion, ...]
    probabilistic: Probabilistic | None = None
    # The trained model of a probabilistic rule (bound when the tenant's config is loaded); None: matches nothing.
    model: MatchModel | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Ruleset:
    """Rules OR-ed; version 0 is the default."""

    version: int
    rules: tuple[Rule, ...]
    custom_attributes: tuple[str, ...] = ()
    created_at: datetime | None = None
    # Rules blocking on the same fields share one block key per value combination (rulesets created since this
    # existed); False: one key per rule (older rulesets keep the keys their records were stored with).
    shared_blocks: bool = False

    def to_json(self) -> str:
        """The stored body."""
        return json.dumps({
            "rules": [{"name": r.name, "criteria": [c.__dict__ for c in r.criteria]}
                      | ({"probabilistic": r.probabilistic.to_dict()} if r.probabilistic else {}) for r in self.rules],
            "custom_attributes": list(self.custom_attributes),
        } | ({"shared_blocks": True} if self.shared_blocks else {}))

    @cached_property
    def blocking(self) -> tuple[tuple[int, Rule, tuple[Criterion, ...]], ...]:
        """(index, rule, criteria it blocks on) per rule: its exact criteria, else its fuzzy ones (by prefix).

        With shared_blocks the criteria are in a canonical order, so rules blocking on the same fields by the same
        methods make the same value combinations."""
        out = []
        for index, rule in enumerate(self.rules):
            blocking = tuple(c for c in rule.criteria if c.method != FUZZY) or rule.criteria
            if self.shared_blocks:
                blocking = tuple(sorted(blocking, key=lambda c: (c.kind, c.name, c.method)))
            out.append((index, rule, blocking))
        return tuple(out)

    @cached_property
    def block_groups(self) -> tuple[str, ...]:
        """Per rule, the text naming the fields and methods it blocks on (its share of the key text, shared_blocks)."""
        return tuple(json.dumps([[c.kind, c.name, c.method] for c in blocking]) for _, _, blocking in self.blocking)

    @cached_property
    def attribute_blocks(self) -> tuple[tuple[tuple[str, tuple[tuple[str, int], ...]], ...],
                                        tuple[tuple[int, int], ...]] | None:
        """With shared_blocks and every rule blocking on attributes only (most rulesets): the distinct groups as (the
        key text before the values, (attribute, EXACT_VALUE/NORMALIZED/PREFIX) per field) and (rule index, group)
        per rule, so block_keys makes each group's key once with no lookups per rule; else None."""
        if not self.shared_blocks or any(r.probabilistic is not None for r in self.rules):
            return None
        groups: dict[str, int] = {}
        made: list[tuple[str, tuple[tuple[str, int], ...]]] = []
        slots: list[tuple[int, int]] = []
        for (index, _, blocking), group in zip(self.blocking, self.block_groups):
            if any(c.kind != "attribute" for c in blocking):
                return None
            if group not in groups:
                groups[group] = len(made)
                made.append((f"[{self.version}, {group}, [", tuple(
                    (c.name, EXACT_VALUE if c.method == EXACT else PREFIX if c.method == FUZZY else NORMALIZED)
                    for c in blocking)))
            slots.append((index, groups[group]))
        return tuple(made), tuple(slots)

    @property
    def probabilistic_rule(self) -> Rule | None:
        """The ruleset's probabilistic rule (there is at most one), or None."""
        return next((r for r in self.rules if r.probabilistic), None)

    def with_model(self, model: MatchModel | None) -> Ruleset:
        """The ruleset with the model bound to its probabilistic rule."""
        if model is None:
            return self
        rules = tuple(Rule(r.name, r.criteria, r.probabilistic, model if r.probabilistic else None)
                      for r in self.rules)
        return Ruleset(self.version, rules, self.custom_attributes, self.created_at, self.shared_blocks)

    @staticmethod
    def from_json(version: int, body: str | dict, created_at: datetime | None) -> Ruleset:
        """The ruleset from its stored body."""
        data = json.loads(body) if isinstance(body, str) else body
        rules = tuple(Rule(r["name"], tuple(Criterion(**c) for c in r["criteria"]),
                           Probabilistic.from_dict(r["probabilistic"]) if r.get("probabilistic") else None)
                      for r in data["rules"])
        return Ruleset(version, rules, tuple(data["custom_attributes"]), created_at, data.get("shared_blocks", False))


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
    rules: list[tuple],
    custom_attributes: list[str],
    types: dict[str, IdentityType],
) -> Ruleset:
    """Builds a ruleset or raises with one violation per bad field.

    Each rule is (name, [(kind, name, method, precision)]) or (name, criteria, probabilistic) where probabilistic
    is None or {"fields": [(kind, name, comparison, thresholds)], "blocking": [[field name, ...]], "threshold": x}.
    """
    v = Violations()
    for i, attribute in enumerate(custom_attributes):
        if not ATTRIBUTE_PATTERN.fullmatch(attribute):
            v.add(f"ruleset.custom_attributes[{i}]", "must match ^[a-z][a-z0-9_]{0,63}$")
    attributes = BUILT_IN_ATTRIBUTES | set(custom_attributes)
    if not rules:
        v.add("ruleset.rules", "at least one rule is required")
    built: list[Rule] = []
    names: set[str] = set()
    probabilistic_rules = 0
    for r, rule in enumerate(rules):
        name, criteria = rule[0], rule[1]
        spec_in = rule[2] if len(rule) > 2 else None
        path = f"ruleset.rules[{r}]"
        name = name or f"rule_{r}"
        if not ATTRIBUTE_PATTERN.fullmatch(name):
            v.add(f"{path}.name", "must match ^[a-z][a-z0-9_]{0,63}$")
        elif name in names:
            v.add(f"{path}.name", f"duplicate rule name {quote(name)}")
        names.add(name)
        if spec_in is not None:
            probabilistic_rules += 1
            if criteria:
                v.add(f"{path}.criteria", "a probabilistic rule has no criteria")
            if probabilistic_rules > 1:
                v.add(f"{path}.probabilistic", "a ruleset has at most one probabilistic rule")
            spec = _validate_probabilistic(v, f"{path}.probabilistic", spec_in, attributes, types)
            built.append(Rule(name, (), spec))
            continue
        if not criteria:
            v.add(f"{path}.criteria", "at least one criterion is required")
        built_criteria = []
        for c, (kind, field_name, method, precision) in enumerate(criteria):
            cpath = f"{path}.criteria[{c}]"
            _validate_field(v, cpath, kind, field_name, attributes, types)
            if method not in (EXACT, EXACT_NORMALIZED, FUZZY):
                v.add(f"{cpath}.method", "must be EXACT, EXACT_NORMALIZED or FUZZY")
            elif method == FUZZY and precision not in THRESHOLDS:
                v.add(f"{cpath}.precision", "FUZZY needs HIGH, MEDIUM or LOW")
            elif method != FUZZY and precision:
                v.add(f"{cpath}.precision", "only FUZZY takes a precision")
            built_criteria.append(Criterion(kind, field_name, method, precision if method == FUZZY else ""))
        built.append(Rule(name, tuple(built_criteria)))
    v.raise_if_any()
    return Ruleset(0, tuple(built), tuple(custom_attributes), shared_blocks=True)


def _validate_field(v: Violations, path: str, kind: str, name: str, attributes: set[str] | frozenset[str],
                    types: dict[str, IdentityType]) -> None:
    if kind == "identity":
        if name not in types:
            v.add(f"{path}.identity_type", f"unknown identity type {quote(name)}")
    elif kind == "attribute":
        if name not in attributes:
            v.add(f"{path}.attribute",
                  f"unknown attribute {quote(name)}: not built in and not in ruleset.custom_attributes")
    else:
        v.add(f"{path}.field", "an identity_type or an attribute is required")


def _validate_probabilistic(v: Violations, path: str, spec: dict, attributes: set[str] | frozenset[str],
                            types: dict[str, IdentityType]) -> Probabilistic:
    fields: list[CompareField] = []
    seen: set[str] = set()
    if not spec["fields"]:
        v.add(f"{path}.fields", "at least one compared field is required")
    elif len(spec["fields"]) > fs.MAX_FIELDS:
        v.add(f"{path}.fields", f"at most {fs.MAX_FIELDS} compared fields, got {len(spec['fields'])}")
    for f, (kind, name, comparison, thresholds) in enumerate(spec["fields"]):
        fpath = f"{path}.fields[{f}]"
        _validate_field(v, fpath, kind, name, attributes, types)
        if name in seen:
            v.add(fpath, f"field {quote(name)} is compared twice")
        seen.add(name)
        if comparison not in fs.COMPARISONS:
            v.add(f"{fpath}.comparison", "must be TEXT, EXACT, DATE or EMAIL")
        thresholds = tuple(float(t) for t in thresholds)
        if thresholds and comparison != fs.TEXT:
            v.add(f"{fpath}.fuzzy_thresholds", "only a TEXT comparison takes fuzzy thresholds")
        elif len(thresholds) > fs.MAX_LEVELS:
            v.add(f"{fpath}.fuzzy_thresholds", f"at most {fs.MAX_LEVELS} thresholds")
        elif any(not 0 < t < 1 for t in thresholds) or any(a <= b for a, b in zip(thresholds, thresholds[1:])):
            v.add(f"{fpath}.fuzzy_thresholds", "must be between 0 and 1 (exclusive), highest first, all different")
        fields.append(CompareField(kind, name, comparison, thresholds))
    blocking = []
    if not spec["blocking"]:
        v.add(f"{path}.blocking_rules", "at least one blocking rule is required (only records sharing its fields' "
                                        "values are compared)")
    elif len(spec["blocking"]) > fs.MAX_BLOCKING_RULES:
        v.add(f"{path}.blocking_rules", f"at most {fs.MAX_BLOCKING_RULES} blocking rules")
    for b, names in enumerate(spec["blocking"]):
        if not names:
            v.add(f"{path}.blocking_rules[{b}].fields", "at least one field is required")
        for n, name in enumerate(names):
            if name not in seen:
                v.add(f"{path}.blocking_rules[{b}].fields[{n}]", f"{quote(name)} is not a compared field of the rule")
        blocking.append(tuple(dict.fromkeys(names)))
    threshold = float(spec["threshold"])
    if not math.isfinite(threshold) or abs(threshold) > 100:
        v.add(f"{path}.match_weight_threshold", "must be a finite number between -100 and 100")
    return Probabilistic(tuple(fields), tuple(blocking), threshold)


@dataclass
class Record:
    """A source record (one distinct subject seen): normalized identities by type and trimmed attributes."""

    identities: dict[str, list[str]]
    attributes: dict[str, str] = field(default_factory=dict)
    # Comparable values per criterion object, computed once per record since matching compares a record many times:
    # id(object) -> (object, values). The object is kept and checked, so a record that outlives a ruleset (the
    # repository's cache of decoded records) never takes the values of another object given the same id.
    values: dict[int, tuple[Any, Any]] = field(default_factory=dict, compare=False, repr=False)
    # Attributes normalized as for EXACT_NORMALIZED and FUZZY, by name, as far as asked for (normalized_value).
    normalized: dict[str, str] | None = field(default=None, compare=False, repr=False)
    # Identities and attributes as the repository sends them (JSON text), encoded once.
    encoded: tuple[str, str] | None = field(default=None, compare=False, repr=False)


def normalized_value(record: Record, name: str) -> str:
    """An attribute as EXACT_NORMALIZED and FUZZY compare it ("" when blank), computed once per record."""
    found = record.normalized
    if found is None:
        found = record.normalized = {}
    value = found.get(name)
    if value is None:
        raw = record.attributes.get(name)
        value = found[name] = normalize_text(raw) if raw else ""
    return value


def _remember(record: Record, key: Any, found: Any) -> Any:
    if len(record.values) >= 64:  # a long-lived record met many rulesets (each config reload makes new objects)
        record.values.clear()
    record.values[id(key)] = (key, found)
    return found


def record_values(record: Record, criterion: Criterion) -> list[str]:
    """The record's comparable values for a criterion; blanks are left out, so they never match."""
    if criterion.kind == "attribute":
        if criterion.method == EXACT:
            value = record.attributes.get(criterion.name)
        else:
            value = normalized_value(record, criterion.name)
        return [value] if value else []
    cached = record.values.get(id(criterion))
    if cached is not None and cached[0] is criterion:
        return cached[1]
    return _remember(record, criterion, [x for x in record.identities.get(criterion.name, []) if x])


def field_values(record: Record, compared: CompareField) -> list[str]:
    """The record's values of a compared field: identity values as normalized by their type, attributes normalized
    as for EXACT_NORMALIZED (EMAIL: trimmed and lowercased only); blanks are left out (the null level)."""
    cached = record.values.get(id(compared))
    if cached is not None and cached[0] is compared:
        return cached[1]
    if compared.kind == "identity":
        values = record.identities.get(compared.name, [])
    else:
        raw = record.attributes.get(compared.name, "")
        values = [raw] if raw else []
        values = [x.strip().lower() if compared.comparison == fs.EMAIL else normalize_text(x) for x in values]
    return _remember(record, compared, [x for x in values if x])


def spec_values(record: Record, spec: Probabilistic) -> list[list[str]]:
    """The record's values of every compared field of a probabilistic rule (cached on the record)."""
    cached = record.values.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    return _remember(record, spec, [field_values(record, f) for f in spec.fields])


def explain_pair(spec: Probabilistic, model: MatchModel, left: Record, right: Record
                 ) -> tuple[float, list[tuple[CompareField, int, float]]]:
    """A pair's score (the prior weight plus every field's weight) and, per field, its level (-1: null) and weight."""
    weights = model.weights()
    total = model.prior_weight
    parts = []
    for f, compared in enumerate(spec.fields):
        values, others = field_values(left, compared), field_values(right, compared)
        level = fs.best_level(compared, values, others)
        weight = 0.0 if level == fs.NULL else weights[f][level]
        if level == 0 and f < len(model.term_counts) and model.term_counts[f]:
            weight = fs.exact_value_weight(model, f, values, others)
        total += weight
        parts.append((compared, level, weight))
    return total, parts


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
    """True when every criterion of the rule holds between the two records (exact criteria are checked first); a
    probabilistic rule holds when the pair's score reaches its threshold (never before a model is trained)."""
    if rule.probabilistic is not None:
        return rule.model is not None and \
            explain_pair(rule.probabilistic, rule.model, left, right)[0] >= rule.probabilistic.threshold
    return all(criterion_holds(c, record_values(left, c), record_values(right, c)) for c in _cheap_first(rule))


def evidence(rule: Rule, left: Record, right: Record) -> list[tuple[str, str]]:
    """What a rule matched on, as (field, value of the left record) pairs; attributes are named attribute:<name>."""
    found = []
    if rule.probabilistic is not None:
        for c in rule.probabilistic.fields:
            values, others = field_values(left, c), field_values(right, c)
            if values and not set(values).isdisjoint(others):
                found.append((c.name if c.kind == "identity" else f"attribute:{c.name}", values[0]))
        return found
    for criterion in rule.criteria:
        values = record_values(left, criterion)
        if values:
            label = criterion.name if criterion.kind == "identity" else f"attribute:{criterion.name}"
            found.append((label, values[0]))
    return found


def block_keys(ruleset: Ruleset, record: Record) -> list[tuple[int, str]]:
    """(rule index, block key) pairs: only records sharing a key are compared, so matching never compares all pairs.

    A rule blocks on the values of its exact criteria; a rule with fuzzy criteria only blocks on the first
    FUZZY_BLOCK_PREFIX characters of each fuzzy value. A record blank in a blocking field gets no key for that rule.
    """
    fast = ruleset.attribute_blocks
    if fast is not None:
        return _attribute_keys(fast, record)
    keys: list[tuple[int, str]] = []
    shared: dict[str, list[str]] = {}  # shared_blocks: the keys of each blocking group, made once
    for index, rule, blocking in ruleset.blocking:
        if rule.probabilistic is not None:
            keys += _probabilistic_keys(ruleset.version, index, rule.probabilistic, record)
            continue
        if ruleset.shared_blocks:
            group = ruleset.block_groups[index]
            made = shared.get(group)
            if made is None:
                made = shared[group] = _group_keys(ruleset.version, group, blocking, record)
            keys += [(index, key) for key in made]
            continue
        value_lists = []
        for c in blocking:
            values = record_values(record, c)
            if not values:
                break  # a blank blocking field: no key for this rule
            if c.method == FUZZY:
                values = sorted({x[:FUZZY_BLOCK_PREFIX] for x in values})
            elif len(values) > 1:
                values = sorted(set(values))
            value_lists.append(values)
        else:
            for combo in product(*value_lists):
                # Exactly json.dumps([version, index, list(combo)]): keys are stored, so their text never changes.
                raw = f"[{ruleset.version}, {index}, [{', '.join(map(_quote, combo))}]]"
                keys.append((index, hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()))
    return keys


# How a block field of Ruleset.attribute_blocks takes its value: as sent, normalized, or its normalized prefix.
EXACT_VALUE, NORMALIZED, PREFIX = 0, 1, 2


def _attribute_keys(blocks, record: Record) -> list[tuple[int, str]]:
    """block_keys for Ruleset.attribute_blocks: the same keys as _group_keys makes, one value per field."""
    groups, slots = blocks
    attributes = record.attributes
    made: list[str | None] = []
    for prefix, fields in groups:
        quoted = []
        for name, how in fields:
            if how == EXACT_VALUE:
                value = attributes.get(name)
            else:
                value = normalized_value(record, name)
                if how == PREFIX:
                    value = value[:FUZZY_BLOCK_PREFIX]
            if not value:
                made.append(None)  # a blank blocking field: no key for this group
                break
            quoted.append(_quote(value))
        else:
            made.append(hashlib.blake2b(f"{prefix}{', '.join(quoted)}]]".encode(), digest_size=12).hexdigest())
    return [(index, key) for index, group in slots if (key := made[group]) is not None]


def _group_keys(version: int, group: str, blocking: tuple[Criterion, ...], record: Record) -> list[str]:
    """The keys of one blocking group (shared_blocks): the text names the group's fields, not a rule."""
    value_lists = []
    for c in blocking:
        values = record_values(record, c)
        if not values:
            return []  # a blank blocking field: no key for this group
        if c.method == FUZZY:
            values = sorted({x[:FUZZY_BLOCK_PREFIX] for x in values})
        elif len(values) > 1:
            values = sorted(set(values))
        value_lists.append(values)
    return [hashlib.blake2b(f"[{version}, {group}, [{', '.join(map(_quote, combo))}]]".encode(),
                            digest_size=12).hexdigest() for combo in product(*value_lists)]


def _probabilistic_keys(version: int, index: int, spec: Probabilistic, record: Record) -> list[tuple[int, str]]:
    """A probabilistic rule's keys: one per blocking rule whose fields the record all has (values equal as compared)."""
    fields = spec.field_index()
    values = spec_values(record, spec)
    keys = []
    for b, names in enumerate(spec.blocking):
        value_lists = [values[fields[name]] for name in names]
        if not all(value_lists):
            continue
        if any(len(vs) > 1 for vs in value_lists):
            value_lists = [sorted(set(vs)) for vs in value_lists]
        for combo in product(*value_lists):
            raw = f"[{version}, {index}, {b}, [{', '.join(_quote(x) for x in combo)}]]"
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
