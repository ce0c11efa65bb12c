"""Tuning: searches the model family, the weighting and each family's hyperparameters within a time budget, on a
validation cut from the tenant's own data by time, and keeps the best by the objective's precision@10.

The search is optuna's TPE sampler (seeded), started from the config's own parameters and each family's defaults,
so the result is never worse on validation than what the config asked for. No grpc, no SQL."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from services.recommender import learned
from services.recommender.config import (
    ALS,
    BM25,
    BPR,
    DEFAULT_VALIDATION_FRACTION,
    EASE,
    ITEM_KNN,
    WEIGHTINGS,
    Config,
)
from services.recommender.evaluation import LATEST_PER_INDIVIDUAL, TIME, Events, Split, evaluable_rows, evaluate, split

log = logging.getLogger(__name__)

TUNE_K = 10
# A time cut that leaves fewer individuals to judge on than this is too noisy to tell families apart (P@10
# differences between good families are often below 0.01): each individual's latest interactions are held out
# instead. With fewer than MIN_INDIVIDUALS even then, the config's own parameters are used without tuning.
TIME_CUT_INDIVIDUALS = 200
MIN_INDIVIDUALS = 20


@dataclass(frozen=True)
class Trial:
    """One tried combination and how it did on validation."""

    number: int
    parameters: dict
    precision: float
    ndcg: float
    seconds: float
    error: str = ""


@dataclass
class Result:
    """The outcome of a search: the best parameters (None when the data gave no usable validation cut)."""

    best: dict | None
    validation: str
    cutoff: float | None
    individuals: int
    trials: list[Trial] = field(default_factory=list)

    @property
    def best_trial(self) -> Trial | None:
        done = [t for t in self.trials if not t.error]
        return max(done, key=lambda t: (t.precision, t.ndcg, -t.number)) if done else None

    def summary(self) -> dict:
        return {"metric": f"precision_at_{TUNE_K}", "validation": self.validation, "cutoff": self.cutoff,
                "individuals": self.individuals, "best": self.best,
                "trials": [t.__dict__ for t in self.trials]}


def families(n_items: int) -> list[str]:
    """The families worth trying on this catalog (EASE inverts an items x items matrix)."""
    return [ITEM_KNN, ALS, BPR] + ([EASE] if n_items <= learned.EASE_MAX_ITEMS else [])


def _suggest(trial, n_items: int) -> dict:
    """One point of the search space; names are prefixed by family so each family's space is its own."""
    family = trial.suggest_categorical("algorithm", families(n_items))
    p: dict = {"algorithm": family}
    if family == ALS:
        p["weighting"] = trial.suggest_categorical("als_weighting", WEIGHTINGS)
        p["factors"] = trial.suggest_int("als_factors", 8, 128, log=True)
        p["regularization"] = trial.suggest_float("als_regularization", 1e-3, 1e3, log=True)
        p["alpha"] = trial.suggest_float("als_alpha", 0.1, 100.0, log=True)
        p["iterations"] = trial.suggest_int("als_iterations", 5, 40)
    elif family == BPR:
        p["weighting"] = "none"  # BPR reads only which pairs are positive: weighting changes nothing
        p["factors"] = trial.suggest_int("bpr_factors", 16, 128, log=True)
        p["learning_rate"] = trial.suggest_float("bpr_learning_rate", 1e-3, 0.2, log=True)
        p["regularization"] = trial.suggest_float("bpr_regularization", 1e-5, 0.1, log=True)
        p["iterations"] = trial.suggest_int("bpr_iterations", 20, 200, log=True)
    elif family == ITEM_KNN:
        p["weighting"] = trial.suggest_categorical("item_knn_weighting", WEIGHTINGS)
        p["neighbours"] = trial.suggest_int("item_knn_neighbours", 5, 2000, log=True)
    else:
        p["weighting"] = trial.suggest_categorical("ease_weighting", WEIGHTINGS)
        p["regularization"] = trial.suggest_float("ease_regularization", 1.0, 1e5, log=True)
    if p["weighting"] == BM25:
        p["bm25_k1"] = trial.suggest_float(f"{family}_bm25_k1", 0.5, 1000.0, log=True)
        p["bm25_b"] = trial.suggest_float(f"{family}_bm25_b", 0.0, 1.0)
    return p


def _as_trial_params(p: dict) -> dict:
    """A parameter dict as optuna's names (for enqueueing a known starting point)."""
    family = p["algorithm"]
    out = {"algorithm": family}
    for name, value in p.items():
        if name != "algorithm" and not (family == BPR and name == "weighting"):
            out[f"{family}_{name}"] = value
    return out


def _clamped(p: dict) -> dict:
    """A starting point moved inside the search space (a config may ask for values outside it)."""
    bounds = {"factors": (8, 128), "iterations": (5, 200), "neighbours": (5, 2000), "alpha": (0.1, 100.0),
              "learning_rate": (1e-3, 0.2), "bm25_k1": (0.5, 1000.0), "bm25_b": (0.0, 1.0)}
    reg = {ALS: (1e-3, 1e3), BPR: (1e-5, 0.1), EASE: (1.0, 1e5)}
    out = dict(p)
    for name, value in p.items():
        low, high = reg.get(p["algorithm"], (0, math.inf)) if name == "regularization" else bounds.get(name, (None,) * 2)
        if low is not None:
            out[name] = type(value)(min(max(value, low), high))
    if p["algorithm"] == ALS:
        out["iterations"] = min(out["iterations"], 40)
    if p["algorithm"] == BPR:
        out["iterations"] = max(out["iterations"], 20)
    return out


def tune(config: Config, events: Events, budget_seconds: float, *, seed: int = 42, validation: Split | None = None,
         on_trial: Callable[[Trial], None] | None = None) -> Result:
    """Searches for `budget_seconds` (checked between trials) on a validation cut of `events`: by default the latest
    `validation_fraction` of the interactions by time, or, when that leaves too few individuals to judge on, the
    latest `validation_fraction` of each individual's items. Offline evaluation passes its own kind of split, so
    the search is judged the way its result will be."""
    import optuna

    fraction = config.validation_fraction or DEFAULT_VALIDATION_FRACTION
    how = validation or Split(TIME, fraction=fraction)
    parts = split(events, config.objective, how)
    kind = how.kind
    if validation is None and len(evaluable_rows(parts)) < TIME_CUT_INDIVIDUALS:
        kind = LATEST_PER_INDIVIDUAL
        parts = split(events, config.objective, Split(kind, fraction=fraction))
    individuals = len(evaluable_rows(parts))
    result = Result(None, kind, parts.cutoff, individuals)
    if individuals < MIN_INDIVIDUALS:
        return result
    n_items = len(events.items)
    trials: dict[int, Trial] = {}
    deadline = time.monotonic() + budget_seconds

    def objective(trial) -> float:
        p = _suggest(trial, n_items)
        started = time.perf_counter()
        try:
            m = evaluate(config, parts, TUNE_K, seed=seed, params=p, deadline=deadline)
            t = Trial(trial.number, p, m.precision, m.ndcg, round(time.perf_counter() - started, 3))
        except learned.OverBudget:
            # The budget ran out during this fit: it is stopped between iterations and the search ends.
            t = Trial(trial.number, p, 0.0, 0.0, round(time.perf_counter() - started, 3), "over budget")
            trial.study.stop()
        except (ArithmeticError, ValueError, np.linalg.LinAlgError, MemoryError) as error:
            # A combination that cannot be fitted on this data (a singular matrix, too little memory) loses.
            log.warning("tuning_trial_failed", exc_info=True)
            t = Trial(trial.number, p, 0.0, 0.0, round(time.perf_counter() - started, 3), type(error).__name__)
        trials[trial.number] = t
        if on_trial is not None:
            on_trial(t)
        return t.precision + 1e-6 * t.ndcg  # nDCG breaks ties of precision

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The config's own parameters first, then each family's defaults, cheapest families first.
    starts = [learned.parameters(config)] + [
        learned.parameters(Config(name="", strategy="", algorithm=f)) for f in (EASE, ITEM_KNN, ALS, BPR)]
    seen = []
    for start in starts:
        start = _clamped(start)
        if start["algorithm"] in families(n_items) and start not in seen:
            seen.append(start)
    with warnings.catch_warnings():
        # multivariate/group TPE (a joint model per family's subspace) is marked experimental by optuna.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # The known starting points stand for TPE's random start-up trials, so it models from the first of its own.
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=len(seen) + 1, multivariate=True,
                                             group=True)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for start in seen:
            study.enqueue_trial(_as_trial_params(start), skip_if_exists=True)
        study.optimize(objective, timeout=max(budget_seconds, 0.001), gc_after_trial=False)
    result.trials = [trials[n] for n in sorted(trials)]
    best = result.best_trial
    result.best = best.parameters if best is not None else None
    return result
