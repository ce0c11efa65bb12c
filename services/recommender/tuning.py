"""Tuning: searches the model family, the weighting and each family's hyperparameters within a time budget, on a
validation cut from the tenant's own data by time, and keeps the best by the objective's precision@10.

The search starts from the config's own parameters and known defaults, so the result is never worse on validation
than what the config asked for, then refines the best families with optuna's TPE sampler (seeded). No grpc, no SQL."""

from __future__ import annotations

import logging
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
    NONE,
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
# A searched combination replaces the best known starting point only when it is this much better on validation:
# smaller gains are within the noise of one validation cut, and chasing them overfits it (the more trials a
# budget allows, the more likely one wins there by chance).
SEARCH_MARGIN = 0.02


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
    starts: int = 0  # how many of the trials were known starting points (they come first)

    @property
    def best_trial(self) -> Trial | None:
        """The best starting point, unless a searched trial beats it by more than SEARCH_MARGIN."""
        def key(t: Trial):
            return (t.precision, t.ndcg, -t.number)
        known = [t for t in self.trials[:self.starts] if not t.error]
        searched = [t for t in self.trials[self.starts:] if not t.error]
        best_known = max(known, key=key) if known else None
        best_searched = max(searched, key=key) if searched else None
        if best_known is None or (best_searched is not None
                                  and best_searched.precision > best_known.precision * (1 + SEARCH_MARGIN)):
            return best_searched
        return best_known

    def summary(self) -> dict:
        return {"metric": f"precision_at_{TUNE_K}", "validation": self.validation, "cutoff": self.cutoff,
                "individuals": self.individuals, "best": self.best,
                "trials": [t.__dict__ for t in self.trials]}


def families(n_items: int) -> list[str]:
    """The families worth trying on this catalog (EASE inverts an items x items matrix)."""
    return [ITEM_KNN, ALS, BPR] + ([EASE] if n_items <= learned.EASE_MAX_ITEMS else [])


def _space(family: str, weighting: str) -> dict:
    """The family's search space (optuna distributions by parameter name), the BM25 constants with BM25."""
    from optuna.distributions import CategoricalDistribution as Choice
    from optuna.distributions import FloatDistribution as Real
    from optuna.distributions import IntDistribution as Whole

    space = {
        ALS: {"weighting": Choice(WEIGHTINGS), "factors": Whole(8, 128, log=True),
              "regularization": Real(1e-3, 1e3, log=True), "alpha": Real(0.1, 100.0, log=True),
              "iterations": Whole(5, 40)},
        # BPR reads only which pairs are positive: weighting changes nothing, so it is not searched.
        BPR: {"factors": Whole(16, 128, log=True), "learning_rate": Real(1e-3, 0.2, log=True),
              "regularization": Real(1e-5, 0.1, log=True), "iterations": Whole(20, 200, log=True)},
        ITEM_KNN: {"weighting": Choice(WEIGHTINGS), "neighbours": Whole(5, 2000, log=True)},
        EASE: {"weighting": Choice(WEIGHTINGS), "regularization": Real(1.0, 1e5, log=True)},
    }[family]
    if weighting == BM25:
        space |= {"bm25_k1": Real(0.5, 1000.0, log=True), "bm25_b": Real(0.0, 1.0)}
    return space


def _suggest(trial, family: str) -> dict:
    """One point of the family's space (define-by-run: the BM25 constants only under BM25)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    p: dict = {"algorithm": family, "weighting": NONE}
    space = _space(family, NONE)
    if "weighting" in space:
        p["weighting"] = trial.suggest_categorical("weighting", space["weighting"].choices)
    for name, d in _space(family, p["weighting"]).items():
        if name == "weighting":
            continue
        if isinstance(d, CategoricalDistribution):
            p[name] = trial.suggest_categorical(name, d.choices)
        elif isinstance(d, FloatDistribution):
            p[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
        else:
            p[name] = trial.suggest_int(name, d.low, d.high, log=d.log)
    return p


def _clamped(p: dict) -> dict:
    """A starting point moved inside its family's space (a config may ask for values outside it)."""
    out = dict(p)
    for name, d in _space(p["algorithm"], p.get("weighting", NONE)).items():
        if name in out and hasattr(d, "low"):
            out[name] = type(d.low)(min(max(out[name], d.low), d.high))
    if p["algorithm"] == BPR:
        out["weighting"] = NONE
    return out


def starts(config: Config, n_items: int) -> list[dict]:
    """Where the search begins: the config's own parameters, each family's defaults (cheapest families first) and,
    for ALS, the `implicit` library's own defaults; each inside its space, without repeats."""
    points = [learned.parameters(config)]
    points += [learned.parameters(Config(name="", strategy="", algorithm=f)) for f in (ITEM_KNN, EASE, ALS, BPR)]
    points.append({"algorithm": ALS, "weighting": NONE, "factors": 100, "regularization": 0.01, "alpha": 1.0,
                   "iterations": 15})
    out: list[dict] = []
    for p in points:
        p = _clamped(p)
        if p["algorithm"] in families(n_items) and p not in out:
            out.append(p)
    return out


def regularization_ladder(trials: list[Trial]) -> list[dict]:
    """The best factored starting point at every decade strictly inside its family's regularization range, the
    decades it was not tried at. Regularization moves a factored model's quality more than any other parameter, by
    orders of magnitude that depend on the tenant's data, so one pass along it tells the sampler where to look."""
    factored = [t for t in trials if not t.error and t.parameters["algorithm"] in learned.FACTORED]
    if not factored:
        return []
    best = max(factored, key=lambda t: (t.precision, t.ndcg, -t.number)).parameters
    d = _space(best["algorithm"], best.get("weighting", NONE))["regularization"]
    low, high = int(np.floor(np.log10(d.low))) + 1, int(np.ceil(np.log10(d.high))) - 1
    tried = [t.parameters for t in trials]
    out = []
    for power in range(low, high + 1):
        p = best | {"regularization": float(10.0 ** power)}
        if p not in tried and not np.isclose(p["regularization"], best["regularization"]):
            out.append(p)
    return out


def validation_split(how: Split, cutoff: float | None, times: np.ndarray) -> Split:
    """The validation cut for tuning inside an evaluation split `how` (cutoff: the evaluation's): the same kind of
    split within the training part. For a time split it holds out the same span of time before the cutoff as the
    test holds after it, so that the model is chosen for the horizon it is judged on (a fraction of the
    interactions would be a longer or shorter span wherever activity is uneven over the year); when that span
    would take more than half of the training time, the training part's latest `how.fraction` instead."""
    if how.kind != TIME or cutoff is None or not len(times):
        return Split(how.kind, how.fraction, None, how.seed)
    first, last = float(times.min()), float(times.max())
    horizon = last - cutoff
    if horizon <= 0 or cutoff - horizon <= first + (cutoff - first) / 2:
        return Split(TIME, how.fraction, None, how.seed)
    return Split(TIME, how.fraction, cutoff - horizon, how.seed)


def tune(config: Config, events: Events, budget_seconds: float, *, seed: int = 42, validation: Split | None = None,
         on_trial: Callable[[Trial], None] | None = None) -> Result:
    """Searches for `budget_seconds` on a validation cut of `events`: by default the latest `validation_fraction`
    of the interactions by time, or, when that leaves too few individuals to judge on, the latest
    `validation_fraction` of each individual's items. Offline evaluation passes its own kind of split, so the
    search is judged the way its result will be.

    First every starting point is tried, then the best factored one along its regularization (regularization_ladder);
    then the rest of the budget goes to optuna's TPE sampler inside the two
    best families (two trials of the leading family for one of the runner-up). The budget is checked between
    trials and between ALS/BPR iterations."""
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
    deadline = time.monotonic() + budget_seconds
    stopped = False

    def run(p: dict) -> Trial:
        nonlocal stopped
        started = time.perf_counter()
        number = len(result.trials)
        try:
            m = evaluate(config, parts, TUNE_K, seed=seed, params=p, deadline=deadline)
            t = Trial(number, p, m.precision, m.ndcg, round(time.perf_counter() - started, 3))
        except learned.OverBudget:
            # The budget ran out during this fit: it is stopped between iterations and the search ends.
            t = Trial(number, p, 0.0, 0.0, round(time.perf_counter() - started, 3), "over budget")
            stopped = True
        except (ArithmeticError, ValueError, np.linalg.LinAlgError, MemoryError) as error:
            # A combination that cannot be fitted on this data (a singular matrix, too little memory) loses.
            log.warning("tuning_trial_failed", exc_info=True)
            t = Trial(number, p, 0.0, 0.0, round(time.perf_counter() - started, 3), type(error).__name__)
        result.trials.append(t)
        if on_trial is not None:
            on_trial(t)
        return t

    def score(t: Trial) -> float:
        return t.precision + 1e-6 * t.ndcg  # nDCG breaks ties of precision

    def out_of_time() -> bool:
        return stopped or time.monotonic() >= deadline

    for p in starts(config, n_items):
        if out_of_time():
            break
        run(p)
    result.starts = len(result.trials)
    for p in regularization_ladder(result.trials):
        if out_of_time():
            break
        run(p)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best_of: dict[str, float] = {}
    for t in result.trials:
        if not t.error:
            best_of[t.parameters["algorithm"]] = max(best_of.get(t.parameters["algorithm"], -1.0), score(t))
    leaders = sorted(best_of, key=lambda f: -best_of[f])[:2]
    studies = {}
    with warnings.catch_warnings():
        # multivariate/group TPE (a joint model of the family's parameters) is marked experimental by optuna.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for n, family in enumerate(leaders):
            sampler = optuna.samplers.TPESampler(seed=seed + n, n_startup_trials=1, multivariate=True, group=True)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            for t in result.trials:
                if t.parameters["algorithm"] == family and not t.error:
                    known = {k: v for k, v in t.parameters.items() if k != "algorithm"}
                    space = _space(family, known.get("weighting", NONE))
                    study.add_trial(optuna.trial.create_trial(
                        params={k: v for k, v in known.items() if k in space},
                        distributions={k: d for k, d in space.items() if k in known}, value=score(t)))
            studies[family] = study
        turn = 0
        while leaders and not out_of_time():
            ranked = sorted(leaders, key=lambda f: -best_of[f])
            family = ranked[0] if turn % 3 != 2 or len(ranked) == 1 else ranked[1]
            turn += 1
            study = studies[family]
            trial = study.ask()
            t = run(_suggest(trial, family))
            study.tell(trial, score(t))
            if not t.error:
                best_of[family] = max(best_of[family], score(t))
    best = result.best_trial
    result.best = best.parameters if best is not None else None
    return result
