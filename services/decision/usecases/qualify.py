"""Use case: qualification, one individual or a batch: experiment first, then rules by priority, then the fallback."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from services.decision import bandit, rules
from services.decision.bandit import ArmStats, Choice
from services.decision.cache import ArmCache, CompiledPoint, HoldoutCache, PointCache
from services.decision.domain import Decision, Evaluation, Point, Qualification
from services.decision.usecases.common import MAX_POINTS_PER_QUALIFY, utcnow
from services.decision.validation import decision_not_found, point_not_found
from shared.errors import NotFound, Violations, quote

MAX_INDIVIDUALS_PER_BATCH = 1000
BATCH_YIELD_EVERY = 250  # individuals qualified between yields to the event loop (a few ms of work)


def _check_selections(selections: Sequence[tuple[str, str]], v: Violations, name_path) -> None:
    if not selections:
        v.add("points", "must name at least one point")
    elif len(selections) > MAX_POINTS_PER_QUALIFY:
        v.add("points", f"must name at most {MAX_POINTS_PER_QUALIFY} points")
    for i, (name, _) in enumerate(selections):
        if not name:
            v.add(name_path(i), "must name a point")


def _has_experiment(entries: Sequence[CompiledPoint], forced: Sequence[str]) -> bool:
    return any(entry.experiments and not f for entry, f in zip(entries, forced))


def _needs(entries: Sequence[CompiledPoint], forced: Sequence[str], *, with_experiments: bool):
    """What the rules to evaluate read: the decisions of unforced points, plus experiment targeting if any."""
    needs = rules.merge_needs(rule for entry, f in zip(entries, forced) if not f for _, rule in entry.ordered)
    if with_experiments:
        targeting = [c.targeting for e, f in zip(entries, forced) if not f for c in e.experiments]
        if targeting:
            needs = rules.merge_needs([rules.CompiledRule("", None, needs)] + targeting)
    return needs


def _needs_consent(entries: Sequence[CompiledPoint]) -> bool:
    return any(entry.point.consent_purpose or any(d.consent_purpose for d in entry.by_id.values())
               for entry in entries)


def granted_purposes(profile: Mapping[str, Any]) -> frozenset[str]:
    """The consent purposes a profile has granted (`consents` maps purpose -> true when granted)."""
    consents = profile.get("consents") if profile else None
    if not isinstance(consents, Mapping):
        return frozenset()
    return frozenset(purpose for purpose, granted in consents.items() if granted is True)


def _fallback(entry: CompiledPoint, granted: frozenset[str] | None) -> tuple[Decision | None, tuple[str, ...]]:
    """The highest-priority fallback whose consent purpose is granted, and the purposes that skipped others."""
    if granted is None:
        return entry.fallback, ()
    missing: list[str] = []
    for decision in entry.fallbacks:
        if not decision.consent_purpose or decision.consent_purpose in granted:
            return decision, tuple(missing)
        missing.append(decision.consent_purpose)
    return None, tuple(missing)


def _fallbacks_only(entries: Sequence[CompiledPoint], granted: frozenset[str] | None) -> list[Qualification]:
    """Every point's fallback (over quota), consent permitting; no experiment, no rule."""
    results = []
    for entry in entries:
        purpose = entry.point.consent_purpose
        if purpose and granted is not None and purpose not in granted:
            results.append(Qualification(entry.point, None, [], missing_consents=(purpose,)))
        else:
            fallback, missing = _fallback(entry, granted)
            results.append(Qualification(entry.point, fallback, [], missing_consents=missing))
    return results


Arms = Mapping[str, Mapping[tuple[str, str], ArmStats]]  # point name -> (segment, decision id) -> counters


def _segments(profile: Mapping[str, Any]) -> Sequence[str]:
    segments = profile.get("segments") if profile else None
    return [s for s in segments if isinstance(s, str)] if isinstance(segments, list) else ()


def _matches(decision: Decision, rule, ctx, granted: frozenset[str] | None, missing_consents: list[str],
             evaluations: list[Evaluation]) -> bool:
    """Whether the decision's rule matches, recording its evaluation; a decision whose consent purpose the
    individual has not granted is skipped (and the purpose noted as missing)."""
    if granted is not None and decision.consent_purpose and decision.consent_purpose not in granted:
        missing_consents.append(decision.consent_purpose)
        evaluations.append(Evaluation(decision.decision_id, decision.name, False,
                                      f"consent {quote(decision.consent_purpose)} not granted"))
        return False
    matched, error = rules.evaluate(rule, ctx)
    evaluations.append(Evaluation(decision.decision_id, decision.name, matched, error))
    return matched


def _bandit_pick(
    entry: CompiledPoint, ctx, unified_id: str, granted: frozenset[str] | None, missing_consents: list[str],
    arms: Mapping[tuple[str, str], ArmStats], segments: Sequence[str], rng: random.Random,
) -> tuple[Decision | None, list[Evaluation], Choice | None]:
    """A bandit point's winner: every rule is evaluated, and Thompson sampling chooses among the decisions that
    match (consent permitting). None (the caller serves the fallback) in the holdout or when nothing matches."""
    config = entry.point.bandit
    assert config is not None
    segment = bandit.segment_of(config, segments)
    if bandit.in_holdout(config, entry.point.name, unified_id, rng):
        return None, [], Choice("", False, (), segment, holdout=True)
    evaluations: list[Evaluation] = []
    offers = [decision.decision_id for decision, rule in entry.ordered
              if _matches(decision, rule, ctx, granted, missing_consents, evaluations)]
    if not offers:
        return None, evaluations, None
    stats = {decision_id: s for (seg, decision_id), s in arms.items() if seg == segment}
    choice = bandit.choose(offers, stats, config, rng)
    return entry.by_id[choice.decision_id], evaluations, replace(choice, segment=segment)


def _qualify_one(
    entries: Sequence[CompiledPoint], forced: Sequence[str], ctx, unified_id: str, now: datetime | None,
    granted: frozenset[str] | None = None, arms: Arms | None = None, segments: Sequence[str] = (),
    rng: random.Random | None = None, *, holdout: bool = False,
) -> list[Qualification]:
    """One individual's qualifications: experiments first, then rules by priority, then the fallback.

    The point's running experiments are tried in order (layer, then name); the first that places the individual
    in a cohort takes them (a point serves one decision). An individual of the tenant's holdout gets each point's
    fallback only: no experiment, no rule.

    granted (None: no point or decision asks for consent) is the set of consent purposes the individual granted:
    a point whose purpose is missing serves nothing, and a decision whose purpose is missing is skipped (its
    evaluation says why). A point that requires authentication serves an unknown individual (no unified id) only
    its fallback, with no experiment and no rule.
    """
    results = []
    for entry, forced_id in zip(entries, forced):
        if forced_id:
            results.append(Qualification(entry.point, entry.by_id[forced_id], []))
            continue
        purpose = entry.point.consent_purpose
        if purpose and granted is not None and purpose not in granted:
            results.append(Qualification(entry.point, None, [], missing_consents=(purpose,)))
            continue
        if entry.point.requires_authentication and not unified_id:
            fallback, missing = _fallback(entry, granted)
            results.append(Qualification(entry.point, fallback, [], missing_consents=missing,
                                         authentication_required=True))
            continue
        if holdout:
            fallback, missing = _fallback(entry, granted)
            results.append(Qualification(entry.point, fallback, [], missing_consents=missing, holdout=True))
            continue
        missing_consents: list[str] = []
        assignment = None
        cohort_decision = None
        for compiled in entry.experiments if unified_id else ():
            if now is None or compiled.experiment.expired(now):
                continue
            candidate = compiled.assign(unified_id, ctx)
            cohort = candidate.cohort
            if cohort is None:
                assignment = assignment or candidate  # reported (why not in it) unless another takes them
                continue
            decision = None if cohort.fall_through else entry.by_id.get(cohort.decision_id)
            if decision is not None and granted is not None and decision.consent_purpose \
                    and decision.consent_purpose not in granted:
                # Not exposed to a cohort whose decision needs a consent the individual has not given.
                missing_consents.append(decision.consent_purpose)
                continue
            assignment, cohort_decision = candidate, decision
            break
        if cohort_decision is not None:
            results.append(Qualification(entry.point, cohort_decision, [], assignment))
            continue
        if entry.point.bandit is not None:
            winner, evaluations, choice = _bandit_pick(entry, ctx, unified_id, granted, missing_consents,
                                                       (arms or {}).get(entry.point.name, {}), segments,
                                                       rng or random.Random())
            if winner is None:
                winner, missing = _fallback(entry, granted)
                missing_consents.extend(missing)
            results.append(Qualification(entry.point, winner, evaluations, assignment,
                                         missing_consents=tuple(dict.fromkeys(missing_consents)), bandit=choice))
            continue
        evaluations = []
        winner = next((decision for decision, rule in entry.ordered
                       if _matches(decision, rule, ctx, granted, missing_consents, evaluations)), None)
        if winner is None:
            winner, missing = _fallback(entry, granted)
            missing_consents.extend(missing)
        results.append(Qualification(entry.point, winner, evaluations, assignment,
                                     missing_consents=tuple(dict.fromkeys(missing_consents))))
    return results


class Qualifier:
    """Qualifies individuals for a tenant's points."""

    def __init__(self, cache: PointCache, holdouts: HoldoutCache, now=utcnow, arms: ArmCache | None = None,
                 rng: random.Random | None = None):
        self.cache = cache
        self.holdouts = holdouts
        self.now = now
        self.arms = arms
        self.rng = rng or random.Random()

    async def _arms(self, tenant: str, entries: Sequence[CompiledPoint], forced: Sequence[str]) -> Arms:
        """The offer counters of the bandit points to qualify (none are read for forced points)."""
        names = [e.point.name for e, f in zip(entries, forced) if e.point.bandit is not None and not f]
        return await self.arms.get_many(tenant, names) if names and self.arms is not None else {}

    async def one(
        self,
        tenant: str,
        selections: Sequence[tuple[str, str]],
        profile: Mapping[str, Any],
        context: Mapping[str, Any],
        unified_id: str = "",
        *,
        fallback_only: bool = False,
    ) -> list[Qualification]:
        """For each (point name, forced decision id or ""), the experiment cohort, the winner and the rules evaluated.

        With fallback_only, every point serves its fallback decision (or nothing) and no rule is evaluated.

        The point's running experiments are evaluated first: an individual in a cohort gets the cohort's decision,
        and the control cohort with fall-through (or anyone outside the experiments) gets the normal decisions. An
        individual of the tenant's holdout gets each point's fallback only.
        """
        v = Violations()
        _check_selections(selections, v, lambda i: f"points[{i}].name")
        v.raise_if_any()
        entries = await self._compiled_points(tenant, selections, lambda i: f"points[{i}].name")
        if fallback_only:
            return _fallbacks_only(entries, granted_purposes(profile) if _needs_consent(entries) else None)
        forced = [f for _, f in selections]
        needs = _needs(entries, forced, with_experiments=bool(unified_id))
        ctx = rules.activation(needs, {"profile": profile, "context": context})
        now = self.now() if unified_id and _has_experiment(entries, forced) else None
        granted = granted_purposes(profile) if _needs_consent(entries) else None
        arms = await self._arms(tenant, entries, forced)
        holdout = bool(unified_id) and (await self.holdouts.get(tenant)).holds(unified_id)
        return _qualify_one(entries, forced, ctx, unified_id, now, granted, arms,
                            _segments(profile) if arms else (), self.rng, holdout=holdout)

    async def batch(
        self,
        tenant: str,
        point_names: Sequence[str],
        context: Mapping[str, Any],
        individuals: Sequence[tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], Mapping[str, Any] | None]],
        *,
        fallback_only: bool = False,
    ) -> tuple[list[Point], list[list[Qualification]]]:
        """Qualify for many (unified id, profile[, own context]) sharing points and a context: the points, then per
        individual (in order) exactly what qualify() returns for them. An individual with its own context is
        evaluated against it instead of the shared one (batch jobs build each member's context from its profile).

        The points, their compiled rules and the context's conversion to CEL are done once; per individual only
        the keys of the profile the rules read are converted. The event loop is yielded to every few hundred
        individuals so a big batch does not stall real-time requests served by the same process.
        """
        selections = [(name, "") for name in point_names]
        v = Violations()
        _check_selections(selections, v, lambda i: f"points[{i}]")
        if not individuals:
            v.add("individuals", "must name at least one individual")
        elif len(individuals) > MAX_INDIVIDUALS_PER_BATCH:
            v.add("individuals", f"must name at most {MAX_INDIVIDUALS_PER_BATCH} individuals")
        else:
            for i, individual in enumerate(individuals):
                if not individual[0]:
                    v.add(f"individuals[{i}].unified_individual_id", "is required")
        v.raise_if_any()
        entries = await self._compiled_points(tenant, selections, lambda i: f"points[{i}]")
        points = [entry.point for entry in entries]
        if fallback_only:
            consent = _needs_consent(entries)
            return points, [_fallbacks_only(entries, granted_purposes(individual[1]) if consent else None)
                            for individual in individuals]
        forced = [""] * len(entries)
        needs = _needs(entries, forced, with_experiments=True)
        activation = rules.BatchActivation(needs, context)
        now = self.now() if _has_experiment(entries, forced) else None
        consent = _needs_consent(entries)
        arms = await self._arms(tenant, entries, forced)
        holdout = await self.holdouts.get(tenant)
        if not needs and now is None and not consent and all(e.point.bandit is None for e in entries):
            # No rule or experiment reads anything of an individual, no consent or bandit applies: everyone qualifies
            # alike but for the holdout, so each answer is worked out once and shared (nobody changes them).
            alike = {held: _qualify_one(entries, forced, activation.with_profile({}), individuals[0][0], None, None,
                                        arms, (), self.rng, holdout=held) for held in (False, True)}
            return points, [alike[holdout.holds(individual[0])] for individual in individuals]
        results = []
        for i, individual in enumerate(individuals):
            if i and i % BATCH_YIELD_EVERY == 0:
                await asyncio.sleep(0)
            unified_id, profile = individual[0], individual[1]
            own_context = individual[2] if len(individual) > 2 else None
            ctx = (activation.with_profile(profile) if own_context is None
                   else rules.activation(needs, {"profile": profile, "context": own_context}))
            results.append(_qualify_one(entries, forced, ctx, unified_id, now,
                                        granted_purposes(profile) if consent else None, arms,
                                        _segments(profile) if arms else (), self.rng,
                                        holdout=holdout.holds(unified_id)))
        return points, results

    async def profile_keys(self, tenant: str, names: Sequence[str], *, serving: bool = True) -> frozenset[str]:
        """The profile keys qualifying and (serving) serving these known points read (CompiledPoint.profile_keys
        and qualify_keys, computed when their configuration is loaded); unknown names add nothing."""
        compiled = await self.cache.get_many(tenant, names)
        return frozenset().union(*(entry.profile_keys if serving else entry.qualify_keys
                                   for entry in compiled.values() if entry is not None))

    async def _compiled_points(
        self, tenant: str, selections: Sequence[tuple[str, str]], name_path
    ) -> list[CompiledPoint]:
        """The compiled points of the selections, in order; unknown or archived points and forced decisions that
        do not exist are NOT_FOUND."""
        compiled = await self.cache.get_many(tenant, [name for name, _ in selections])
        entries: list[CompiledPoint] = []
        for i, (name, forced) in enumerate(selections):
            entry = compiled[name]
            if entry is None:
                raise point_not_found(name, name_path(i))
            if entry.point.archived:
                raise NotFound(f"{name_path(i)}: point {quote(name)} is archived", reason="POINT_ARCHIVED",
                               metadata={"point": name})
            if forced and forced not in entry.by_id:
                raise decision_not_found(name, forced, f"points[{i}].decision_id")
            entries.append(entry)
        return entries
