"""The batch matcher finds what checking each pair one by one finds, in the same order (fake_1000's records)."""

from __future__ import annotations

from collections import defaultdict

from services.identity import matching
from services.identity.batch_matching import BATCH, STORED, BatchMatcher, batch_matches
from services.identity.matching import BUILT_IN_TYPES, Record
from tests.bench import _identity_data as data


def _records(rows) -> list[Record]:
    out = []
    for row in rows:
        identities: dict[str, list[str]] = defaultdict(list)
        for t, v in row.identities:
            identities[t].append(v.strip().lower() if t == "email" else v)
        out.append(Record(dict(identities), dict(row.attributes)))
    return out


def _one_by_one(ruleset, records, stored):
    """The matches as resolving one subject at a time finds them: each block key's records in order, first rule
    that holds per record."""
    blocks: dict[str, list[tuple[tuple[int, int], Record]]] = defaultdict(list)
    for n, record in enumerate(stored):
        for _, key in matching.block_keys(ruleset, record):
            blocks[key].append(((STORED, n), record))
    out = []
    for n, record in enumerate(records):
        keys = matching.block_keys(ruleset, record)
        matched: dict[tuple[int, int], str] = {}
        for index, key in keys:
            rule = ruleset.rules[index]
            for ref, other in blocks.get(key, ()):
                if ref not in matched and matching.rule_holds(rule, record, other):
                    matched[ref] = rule.name
        out.append([(src, j, name) for (src, j), name in matched.items()])
        for _, key in keys:
            blocks[key].append(((BATCH, n), record))
    return out


def test_a_batch_matches_exactly_what_one_by_one_checks_match_in_the_same_order():
    types = dict(BUILT_IN_TYPES)
    types["email"] = matching.IdentityType("email", False, matching.EMAIL)
    ruleset = matching.validate_ruleset(data.FAKE_RULES, [], types)
    records = _records(data.load_fake_1000())
    # A record with two emails: the fuzzy email rule compares every pair of values.
    records.append(Record({"crm_contact_key": ["two"], "email": ["nobody@example.org", records[5].identities.get(
        "email", ["x@y.z"])[0].replace(".", "-", 1)]}, {}))
    stored, batch = records[:600], records[600:]
    expected = _one_by_one(ruleset, batch, stored)
    found = batch_matches(ruleset, batch, [matching.block_keys(ruleset, r) for r in batch], stored,
                          [frozenset(k for _, k in matching.block_keys(ruleset, r)) for r in stored])
    got = []
    for matches in found:
        seen: dict[tuple[int, int], str] = {}
        for src, j, rule in matches:
            seen.setdefault((src, j), rule.name)
        got.append([(src, j, name) for (src, j), name in seen.items()])
    assert sum(map(len, expected)) > 300  # the data has matches of every kind: stored, in-batch, fuzzy
    assert {name for m in expected for _, _, name in m} == {name for name, _ in data.FAKE_RULES}
    assert got == expected
    # Matched a run of subjects at a time (the plan's parts), the runs together are the whole.
    matcher = BatchMatcher(ruleset, batch, [matching.block_keys(ruleset, r) for r in batch], stored,
                           [frozenset(k for _, k in matching.block_keys(ruleset, r)) for r in stored])
    assert matcher.matches(0, 1) + matcher.matches(1, 137) + matcher.matches(137, len(batch)) == found


def test_a_record_kept_across_rulesets_never_takes_values_of_an_object_given_the_id_of_a_freed_one():
    # The repository keeps decoded records between calls; each config reload makes new criterion objects, and
    # CPython gives a new object the id of a freed one.
    record = Record({"crm_contact_key": ["k"]}, {"first_name": "Ada", "last_name": "Lovelace"})
    first = matching.Criterion("attribute", "first_name", matching.FUZZY, "HIGH")
    assert matching.record_values(record, first) == ["ada"]
    del first
    for _ in range(1000):
        other = matching.Criterion("attribute", "last_name", matching.FUZZY, "HIGH")
        assert matching.record_values(record, other) == ["lovelace"]
