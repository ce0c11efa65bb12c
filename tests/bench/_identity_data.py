"""The labelled Splink data sets as identity subjects, the bench's ruleset, and pairwise accuracy figures."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "external-data" / "splink-datasets"
FAKE_1000 = DATA / "fake_1000.csv"
HIST_50K = DATA / "historical_figures_with_errors_50k.parquet"


@dataclass(frozen=True)
class Row:
    """One labelled record: its id, true cluster, identities and attributes."""

    record_id: str
    cluster: str
    identities: list[tuple[str, str]]
    attributes: dict[str, str]


def _clean(value) -> str:
    return "" if value is None else str(value).strip()


def load_fake_1000() -> list[Row]:
    """fake_1000: first_name, surname, dob, city, email; each record keyed by a crm_contact_key."""
    rows = []
    with FAKE_1000.open(newline="") as f:
        for r in csv.DictReader(f):
            identities = [("crm_contact_key", f"fake-{r['unique_id']}")]
            if _clean(r["email"]):
                identities.append(("email", r["email"]))
            attributes = {"first_name": _clean(r["first_name"]), "last_name": _clean(r["surname"]),
                          "date_of_birth": _clean(r["dob"]), "city": _clean(r["city"])}
            rows.append(Row(r["unique_id"], r["cluster"], identities, {k: v for k, v in attributes.items() if v}))
    return rows


def load_hist_50k() -> list[Row]:
    """historical_figures_with_errors_50k: names, dob, birth place, postcode, gender, occupation."""
    import pyarrow.parquet as pq

    table = pq.read_table(HIST_50K).to_pylist()
    rows = []
    for r in table:
        attributes = {"first_name": _clean(r["first_name"]), "last_name": _clean(r["surname"]),
                      "full_name": _clean(r["full_name"]), "date_of_birth": _clean(r["dob"]),
                      "birth_place": _clean(r["birth_place"]), "postal_code": _clean(r["postcode_fake"]),
                      "gender": _clean(r["gender"]), "occupation": _clean(r["occupation"])}
        rows.append(Row(r["unique_id"], r["cluster"], [("crm_contact_key", f"hist-{r['unique_id']}")],
                        {k: v for k, v in attributes.items() if v}))
    return rows


# The rulesets the bench (and the accuracy test) configure, as (name, [(kind, field, method, precision)]).
# In fake_1000 email is made a searchable (not unique) type and matched by rules like any other field.
FAKE_RULES = [
    ("email", [("identity", "email", "EXACT_NORMALIZED", "")]),
    ("email_typo", [("identity", "email", "FUZZY", "HIGH")]),
    ("dob_and_last_name", [("attribute", "date_of_birth", "EXACT", ""), ("attribute", "last_name", "FUZZY", "LOW")]),
    ("dob_and_first_name", [("attribute", "date_of_birth", "EXACT", ""),
                            ("attribute", "first_name", "FUZZY", "LOW")]),
    ("names", [("attribute", "first_name", "FUZZY", "MEDIUM"), ("attribute", "last_name", "FUZZY", "MEDIUM")]),
    ("dob_and_city", [("attribute", "date_of_birth", "EXACT", ""), ("attribute", "city", "FUZZY", "LOW")]),
]
HIST_RULES = [
    ("names_and_dob_typo", [("attribute", "last_name", "EXACT_NORMALIZED", ""),
                            ("attribute", "first_name", "EXACT_NORMALIZED", ""),
                            ("attribute", "date_of_birth", "FUZZY", "HIGH")]),
    ("dob_and_names", [("attribute", "date_of_birth", "EXACT", ""), ("attribute", "first_name", "FUZZY", "LOW"),
                       ("attribute", "last_name", "FUZZY", "LOW")]),
    ("names_and_postcode", [("attribute", "first_name", "EXACT_NORMALIZED", ""),
                            ("attribute", "last_name", "EXACT_NORMALIZED", ""),
                            ("attribute", "postal_code", "FUZZY", "MEDIUM")]),
    ("names_and_birth_place", [("attribute", "first_name", "EXACT_NORMALIZED", ""),
                               ("attribute", "last_name", "EXACT_NORMALIZED", ""),
                               ("attribute", "birth_place", "FUZZY", "MEDIUM")]),
    ("surname_and_postcode", [("attribute", "last_name", "EXACT_NORMALIZED", ""),
                              ("attribute", "postal_code", "EXACT_NORMALIZED", "")]),
]
HIST_CUSTOM_ATTRIBUTES = ["occupation"]


@dataclass(frozen=True)
class Accuracy:
    """Pairwise figures of a clustering against the truth."""

    precision: float
    recall: float
    f1: float
    clusters: int
    true_clusters: int


def _pairs(counter: Counter) -> int:
    return sum(n * (n - 1) // 2 for n in counter.values())


def pairwise(predicted: dict[str, str], truth: dict[str, str]) -> Accuracy:
    """Pairwise precision, recall and F1 of predicted (record -> cluster) against truth (record -> cluster)."""
    both = Counter((predicted[r], truth[r]) for r in truth)
    tp = _pairs(both)
    predicted_pairs = _pairs(Counter(predicted[r] for r in truth))
    true_pairs = _pairs(Counter(truth.values()))
    precision = tp / predicted_pairs if predicted_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Accuracy(precision, recall, f1, len(set(predicted.values())), len(set(truth.values())))


def _probabilistic(fields, blocking, threshold=None) -> dict:
    return {"fields": [(kind, name, comparison, []) for kind, name, comparison in fields],
            "blocking": blocking, "threshold": 4.0 if threshold is None else threshold}


# The probabilistic rules of the bench and the tests: the fields each data set has, compared by their kind, and
# blocking rules loose enough to find nearly every true pair (the model weighs what the blocking lets through).
FAKE_PROBABILISTIC = ("probabilistic", [], _probabilistic(
    [("attribute", "first_name", "TEXT"), ("attribute", "last_name", "TEXT"), ("attribute", "date_of_birth", "DATE"),
     ("attribute", "city", "EXACT"), ("identity", "email", "EMAIL")],
    [["first_name"], ["last_name"], ["date_of_birth"], ["email"]]))
HIST_PROBABILISTIC = ("probabilistic", [], _probabilistic(
    [("attribute", "first_name", "TEXT"), ("attribute", "last_name", "TEXT"), ("attribute", "date_of_birth", "DATE"),
     ("attribute", "postal_code", "TEXT"), ("attribute", "birth_place", "EXACT"), ("attribute", "occupation", "EXACT")],
    [["first_name", "last_name"], ["last_name", "date_of_birth"], ["first_name", "date_of_birth"], ["postal_code"]]))
