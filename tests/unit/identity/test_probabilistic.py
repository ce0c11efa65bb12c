"""Probabilistic rules, pure: levels (one by one, at once, and as Splink's SQL computes them), scores, blocking."""

from __future__ import annotations

import random

import numpy as np
import pytest

from services.identity import matching
from services.identity import probabilistic as fs
from services.identity.matching import Record, Rule, Ruleset
from services.identity.probabilistic import CompareField, MatchModel, Probabilistic
from services.identity.training import _comparison, _table
from tests.bench import _identity_data as data

FIELDS = (CompareField("attribute", "first_name"), CompareField("attribute", "last_name", fs.TEXT, (0.95, 0.8)),
          CompareField("attribute", "date_of_birth", fs.DATE), CompareField("attribute", "city", fs.EXACT),
          CompareField("identity", "email", fs.EMAIL))
SPEC = Probabilistic(FIELDS, (("first_name",), ("last_name", "date_of_birth")), 1.0)
MODEL = MatchModel(1, "p", 0.01, tuple((0.9,) + (0.05,) * (len(f.levels()) - 1) for f in FIELDS),
                   tuple((0.01,) + (0.99,) * (len(f.levels()) - 1) for f in FIELDS))


def record(email=None, **attributes) -> Record:
    return Record({"email": [email]} if email else {}, {k: v for k, v in attributes.items() if v})


def test_levels_are_the_same_one_by_one_and_at_once():
    rng = random.Random(7)
    words = ["jonathan", "jonathon", "john", "smith", "smyth", "1984-01-02", "1984-02-01", "1985-01-02", "x@a.io",
             "x@b.io", "y@a.io", "1984-1-2", "", "jon", "19840102", "19850301"]
    left = [rng.choice(words) or None for _ in range(3000)]
    right = [rng.choice(words) or None for _ in range(3000)]
    for f in FIELDS:
        at_once = fs._column_levels(f, left, right)
        one_by_one = [fs.best_level(f, [a] if a else [], [b] if b else []) for a, b in zip(left, right)]
        assert at_once.tolist() == one_by_one, f


def test_levels_match_splinks_sql_on_fake_1000():
    """Training puts pairs in levels with Splink's SQL, scoring with ours: both must agree on every pair."""
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    rows = data.load_fake_1000()
    records = [Record({t: [v.strip().lower()] for t, v in r.identities}, r.attributes) for r in rows]
    values = [[matching.field_values(r, f) for f in FIELDS] for r in records]
    settings = SettingsCreator(link_type="dedupe_only", comparisons=[_comparison(i, f) for i, f in enumerate(FIELDS)],
                               blocking_rules_to_generate_predictions=[block_on("f0"), block_on("f1")],
                               retain_intermediate_calculation_columns=True)
    db_api = DuckDBAPI()
    linker = Linker(db_api.register(_table(SPEC, [[vs[0] if vs else None for vs in row] for row in values])),
                    settings, log_level=40)
    pairs = linker.inference.predict().as_record_list()
    assert len(pairs) > 1000
    for p in pairs:
        a, b = p["unique_id_l"], p["unique_id_r"]
        theirs = [p[f"gamma_f{i}"] for i in range(len(FIELDS))]
        # Splink numbers levels from the else level up (0 = else, highest = exact); ours from exact down.
        ours = [fs.best_level(f, values[a][i], values[b][i]) for i, f in enumerate(FIELDS)]
        assert [-1 if x == fs.NULL else len(f.levels()) - 1 - x for x, f in zip(ours, FIELDS)] == theirs, (a, b)


def test_the_score_is_the_prior_weight_plus_the_field_weights_and_blanks_weigh_nothing():
    ada = record("ada@x.io", first_name="Ada", last_name="Lovelace", date_of_birth="1815-12-10", city="London")
    typo = record(None, first_name="Adda", last_name="Lovelace", date_of_birth="1815-12-01", city="")
    score, parts = matching.explain_pair(SPEC, MODEL, ada, typo)
    assert [(f.name, level) for f, level, _ in parts] == [
        ("first_name", 1), ("last_name", 0), ("date_of_birth", 1), ("city", fs.NULL), ("email", fs.NULL)]
    assert score == pytest.approx(MODEL.prior_weight + sum(w for _, _, w in parts))
    assert parts[3][2] == parts[4][2] == 0.0
    values = [[matching.field_values(r, f) for f in FIELDS] for r in (ada, typo)]
    at_once = fs.pair_scores(SPEC, MODEL, values, np.array([0]), np.array([1]))
    assert at_once[0] == pytest.approx(score)


def test_a_probabilistic_rule_holds_from_its_threshold_and_never_without_a_model():
    a = record(None, first_name="Ada", last_name="Lovelace")
    b = record(None, first_name="Ada", last_name="Lovelace")
    c = record(None, first_name="Ada", last_name="Babbage")
    rule = Rule("p", (), SPEC, MODEL)
    assert matching.rule_holds(rule, a, b) and not matching.rule_holds(rule, a, c)
    assert not matching.rule_holds(Rule("p", (), SPEC), a, b)
    assert matching.evidence(rule, a, b) == [("attribute:first_name", "ada"), ("attribute:last_name", "lovelace")]


def test_blank_blocking_fields_give_no_block_key_and_the_other_blocking_rules_still_do():
    ruleset = Ruleset(3, (Rule("p", (), SPEC),))
    assert len(matching.block_keys(ruleset, record(None, first_name="Ada", last_name="Lee",
                                                    date_of_birth="1990-01-01"))) == 2
    assert len(matching.block_keys(ruleset, record(None, first_name="Ada", last_name="Lee"))) == 1
    assert matching.block_keys(ruleset, record(None, last_name="Lee")) == []


def test_the_prior_is_the_expected_share_of_matches_among_all_pairs():
    # 100 pairs sure to match (weight +30) and 900 sure not to (-30), among 1,000,000 pairs in all.
    scores = np.array([30.0] * 100 + [-30.0] * 900)
    assert fs.estimate_prior(scores, 0.0, 1e6) == pytest.approx(100 / 1e6, rel=1e-3)


def test_a_ruleset_with_a_probabilistic_rule_round_trips_through_its_stored_body():
    ruleset = Ruleset(2, (Rule("email", (matching.Criterion("identity", "email", matching.EXACT),)), Rule("p", (), SPEC)))
    again = Ruleset.from_json(2, ruleset.to_json(), None)
    assert again == ruleset and again.probabilistic_rule == ruleset.rules[1]


def test_a_level_training_never_saw_weighs_nothing_and_an_unsampled_one_is_bounded():
    model = MatchModel(1, "p", 0.01, ((0.9, 0.0, 0.1),), ((0.0, 0.0, 1.0),))
    assert model.weights()[0][1] == 0.0
    assert model.weights()[0][0] == pytest.approx(np.log2(0.9 / 1e-6))


def test_agreeing_on_a_common_value_weighs_less_than_on_a_rare_one_and_one_persons_value_keeps_the_level_weight():
    # 1,000 records with a first name; prior 0.001, so about 2 records per person: "john" is held by 100 records
    # (many people), "ada" by 2 (one person and a duplicate), "zelda" by 6 (two or three people).
    rows = [[["john"]]] * 100 + [[["ada"]]] * 2 + [[["zelda"]]] * 6 + [[[f"name{i}"]] for i in range(892)]
    spec = Probabilistic((CompareField("attribute", "first_name"),), (("first_name",),), 0.0)
    counts, totals = fs.term_counts(spec, rows)
    assert counts[0] == {"john": 100, "ada": 2, "zelda": 6} and totals == (1000,)
    plain = MatchModel(1, "p", 0.001, ((0.8, 0.1, 0.05, 0.03, 0.02),), ((0.02, 0.01, 0.02, 0.1, 0.85),))
    model = MatchModel(1, "p", 0.001, plain.m, plain.u, counts, totals)
    level = plain.weights()[0][0]
    assert model.exact_weight(0, "john") < level < model.exact_weight(0, "zelda")
    assert model.exact_weight(0, "ada") == model.exact_weight(0, "unseen") == level
    # Real time, ExplainMatch and re-runs all weigh the pair the same way.
    a, b = record(None, first_name="John"), record(None, first_name="john")
    score, parts = matching.explain_pair(spec, model, a, b)
    assert parts[0][2] == model.exact_weight(0, "john")
    values = [[matching.field_values(r, f) for f in spec.fields] for r in (a, b)]
    assert fs.pair_scores(spec, model, values, np.array([0]), np.array([1]))[0] == pytest.approx(score)
    # DATE and EMAIL values are not counted (a person's own date or address is as rare as the person).
    dates = Probabilistic((CompareField("attribute", "date_of_birth", fs.DATE),), (("date_of_birth",),), 0.0)
    assert fs.term_counts(dates, [[["2000-01-01"]]] * 10) == (({},), (0,))


def test_a_model_round_trips_through_its_stored_form_with_its_term_counts():
    model = MatchModel(3, "p", 0.01, ((0.9, 0.1),), ((0.1, 0.9),), ({"x": 4},), (10,))
    again = MatchModel.from_dict(3, model.to_dict())
    assert (again.term_counts, again.term_totals, again.m, again.u) == (({"x": 4},), (10,), model.m, model.u)
    old = {k: v for k, v in model.to_dict().items() if not k.startswith("term_")}
    assert MatchModel.from_dict(3, old).exact_weight(0, "x") == model.weights()[0][0]
