"""Training a probabilistic rule's model with Splink on embedded DuckDB (no grpc, no SQL of ours).

u comes from random sampling of record pairs, m from expectation-maximisation over the pairs of each of the rule's
blocking rules (each session estimates the fields outside its blocking rule), and the prior from the pairs the
blocking rules find, taken to be 70% of the true matches (Splink's documented recipe). The comparison levels are
written with Splink's level library so that they put a pair in the same level as probabilistic.level does. The term
counts of the exact levels (probabilistic.term_counts) are ours, taken from all the records.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace

from services.identity import matching
from services.identity.matching import Record, Rule
from services.identity.probabilistic import (
    DATE,
    DATE_DAYS,
    EMAIL,
    EMAIL_THRESHOLD,
    TEXT,
    CompareField,
    MatchModel,
    Probabilistic,
    candidate_pairs,
    estimate_prior,
    local_part,
    pair_scores,
    parse_date,
    term_counts,
)

U_MAX_PAIRS = 1_000_000
SEED = 42
# The share of true matches the blocking rules are taken to find when the prior is estimated from them.
BLOCKING_RECALL = 0.7


class TrainingError(Exception):
    """The records do not allow a model to be trained (too few, or no pair found by any blocking rule)."""

    def __init__(self, message: str, reason: str = "TRAINING_FAILED"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Trained:
    """A trained model (version not yet assigned) and what it was trained on."""

    model: MatchModel
    records: int
    em_sessions: int


def _column(i: int) -> str:
    return f"f{i}"


def _comparison(i: int, compared: CompareField):
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    col = _column(i)
    levels: list = [cll.NullLevel(col), cll.ExactMatchLevel(col)]
    if compared.comparison == TEXT:
        levels += [cll.JaroWinklerLevel(col, t) for t in compared.text_thresholds()]
    elif compared.comparison == DATE:
        levels.append(cll.DamerauLevenshteinLevel(col, 1))
        levels += [cll.AbsoluteDifferenceLevel(f"{col}_days", d) for d in DATE_DAYS]
    elif compared.comparison == EMAIL:
        levels += [cll.ExactMatchLevel(f"{col}_local"), cll.JaroWinklerLevel(col, EMAIL_THRESHOLD)]
    levels.append(cll.ElseLevel())
    return cl.CustomComparison(comparison_levels=levels, output_column_name=col)


def _table(spec: Probabilistic, values: list[list[str | None]]):
    import pyarrow as pa

    columns: dict[str, list] = {"unique_id": list(range(len(values)))}
    for i, compared in enumerate(spec.fields):
        col = [row[i] or None for row in values]
        columns[_column(i)] = col
        if compared.comparison == DATE:
            columns[f"{_column(i)}_days"] = [parse_date(v) if v else None for v in col]
        elif compared.comparison == EMAIL:
            columns[f"{_column(i)}_local"] = [local_part(v) if v else None for v in col]
    types = {k: pa.int64() if k == "unique_id" or k.endswith("_days") else pa.string() for k in columns}
    return pa.table({k: pa.array(v, type=types[k]) for k, v in columns.items()})


def train(rule: str, spec: Probabilistic, values: list[list[str | None]],
          step: Callable[[str], None] = lambda phase: None) -> Trained:
    """Trains the rule's model on one value (or None) per compared field of each record."""
    if len(values) < 10:
        raise TrainingError(f"at least 10 source records are needed to train, the tenant has {len(values)}",
                            "TOO_FEW_RECORDS")
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    index = spec.field_index()
    blocks: list = [block_on(*[_column(index[name]) for name in rule_fields]) for rule_fields in spec.blocking]
    db_api = DuckDBAPI()
    settings = SettingsCreator(
        link_type="dedupe_only", comparisons=[_comparison(i, f) for i, f in enumerate(spec.fields)],
        blocking_rules_to_generate_predictions=blocks, retain_intermediate_calculation_columns=False)
    linker = Linker(db_api.register(_table(spec, values)), settings, log_level=logging.ERROR)
    step("ESTIMATING_PRIOR")
    try:
        linker.training.estimate_probability_two_random_records_match(blocks, recall=BLOCKING_RECALL)
    except Exception as problem:  # noqa: BLE001 - Splink raises plain exceptions for data it cannot use
        raise TrainingError(f"the blocking rules find no pair of records ({type(problem).__name__})",
                            "NO_BLOCKED_PAIRS") from None
    step("ESTIMATING_U")
    linker.training.estimate_u_using_random_sampling(max_pairs=U_MAX_PAIRS, seed=SEED)
    step("ESTIMATING_M")
    sessions = 0
    for block in blocks:
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(block)
            sessions += 1
        except Exception:  # noqa: BLE001 - a blocking rule with no pairs teaches nothing; the others still do
            continue
    if not sessions:
        raise TrainingError("expectation-maximisation found no pairs in any blocking rule", "NO_BLOCKED_PAIRS")
    body = linker.misc.save_model_to_json()
    prior = float(body["probability_two_random_records_match"])
    m, u = [], []
    for comparison in body["comparisons"]:
        levels = [lv for lv in comparison["comparison_levels"] if not lv.get("is_null_level")]
        m.append(tuple(float(lv.get("m_probability") or 0.0) for lv in levels))
        u.append(tuple(float(lv.get("u_probability") or 0.0) for lv in levels))
    return Trained(MatchModel(0, rule, prior, tuple(m), tuple(u)), len(values), sessions)


@dataclass
class TrainingProgress:
    """Progress of a training run, updated by the training thread and read by the streaming use case."""

    phase: str = "LOADING"
    records: int = 0
    blocked_pairs: int = 0


def fit_model(rule: Rule, records: list[Record], max_block: int, progress: TrainingProgress | None = None
              ) -> tuple[MatchModel, dict]:
    """Trains the rule's model on the records (oldest first) and returns it with a summary of the run.

    m and u come from Splink; the prior is then re-estimated over the pairs the rule's blocking rules yield (as a
    re-run compares them), since Splink's estimate from the blocking rules depends on a guess of their recall and
    on how loose they are (measured: 5x too high with single-field blocking on fake_1000, 10x on historical_50k).
    """
    progress = progress or TrainingProgress()
    spec = rule.probabilistic
    assert spec is not None
    started = time.perf_counter()
    progress.records = len(records)
    values = [matching.spec_values(r, spec) for r in records]
    trained = train(rule.name, spec, [[vs[0] if vs else None for vs in row] for row in values],
                    step=lambda phase: setattr(progress, "phase", phase))
    progress.phase = "ESTIMATING_PRIOR"
    groups: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        for _, key in matching._probabilistic_keys(0, 0, spec, record):
            groups[key].append(i)
    a, b = candidate_pairs(groups.values(), max_block)
    progress.blocked_pairs = len(a)
    n = len(records)
    scores = pair_scores(spec, trained.model, values, a, b)
    prior = estimate_prior(scores, trained.model.prior_weight, n * (n - 1) / 2)
    counts, totals = term_counts(spec, values)
    model = replace(trained.model, prior=prior, term_counts=counts, term_totals=totals)
    summary = {"records": n, "blocked_pairs": int(len(a)), "em_sessions": trained.em_sessions,
               "splink_prior": trained.model.prior, "expected_matches": prior * n * (n - 1) / 2,
               "seconds": round(time.perf_counter() - started, 3)}
    return model, summary
