"""The compiled-point cache of the decision service: points with compiled rules, per (tenant, name)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.decision import experiments as exp
from services.decision import rules
from services.decision.bandit import ArmStats
from services.decision.domain import Decision, Holdout, Point
from services.decision.experiments import CompiledExperiment, Experiment
from services.decision.ports import Repository

MAX_CACHED_POINTS = 100_000


@dataclass(frozen=True)
class CompiledPoint:
    """A point ready to qualify: rules compiled, decisions in evaluation order."""

    point: Point
    ordered: tuple[tuple[Decision, rules.CompiledRule], ...]
    fallback: Decision | None
    by_id: Mapping[str, Decision]
    needs: Mapping[str, frozenset[str] | None]
    experiments: tuple[CompiledExperiment, ...] = ()  # the running ones, in the order they claim individuals
    fallbacks: tuple[Decision, ...] = ()  # every live fallback, by priority (the first whose consent is granted wins)
    profile_keys: frozenset[str] = frozenset(rules.PROFILE_DEFAULTS)  # what qualifying and serving it read
    qualify_keys: frozenset[str] = frozenset(rules.PROFILE_DEFAULTS)  # what qualifying it reads (no boosters)


def profile_keys(point: Point, decisions: Sequence[Decision], needs: Mapping[str, frozenset[str] | None],
                 serving: bool = True) -> frozenset[str]:
    """The profile's top-level keys a point reads: its rules' and experiments' (all when one reads the profile as a
    whole), consents when it or a decision asks for consent, segments for a bandit, and with serving affinities when
    a decision recommends (the recommender's boosters take them)."""
    if "profile" in needs and needs["profile"] is rules.ALL:
        return frozenset(rules.PROFILE_DEFAULTS)
    keys = set(needs.get("profile") or ())
    if point.consent_purpose or any(d.consent_purpose for d in decisions):
        keys.add("consents")
    if point.bandit is not None:
        keys.add("segments")
    if serving and any(d.content is None for d in decisions):
        keys.add("affinities")
    return frozenset(keys)


def compile_point(
    point: Point, decisions: Sequence[Decision], experiments: Sequence[Experiment] = ()
) -> CompiledPoint:
    """Orders a point's live decisions (descending priority, ties by name) and compiles their rules."""
    decisions = [d for d in decisions if not d.archived]
    ordered = sorted(decisions, key=lambda d: (-d.priority, d.name))
    regular = []
    for d in ordered:
        if d.fallback:
            continue
        try:
            regular.append((d, rules.compile_rule(d.rule)))
        except rules.RuleError as error:  # saved rules compiled; this one no longer does (a library upgrade)
            regular.append((d, rules.broken_rule(d.rule, str(error))))
    fallbacks = [d for d in ordered if d.fallback]
    compiled_experiments = tuple(exp.compile_experiment(e) for e in sorted(experiments, key=exp.experiment_order))
    extra = [c.targeting for c in compiled_experiments]
    needs = rules.merge_needs([rule for _, rule in regular] + extra)
    return CompiledPoint(
        point=point,
        ordered=tuple(regular),
        fallback=fallbacks[0] if fallbacks else None,
        by_id={d.decision_id: d for d in decisions},
        needs=needs,
        experiments=compiled_experiments,
        fallbacks=tuple(fallbacks),
        profile_keys=profile_keys(point, decisions, needs),
        qualify_keys=profile_keys(point, decisions, needs, serving=False),
    )


class PointCache:
    """Compiled points per (tenant, name), reloaded from the repository when older than ttl seconds.

    Upserts in this process invalidate at once; changes made through other replicas show within ttl.
    Unknown points are cached too, so a client asking for one cannot make every request hit the database.
    """

    def __init__(self, repo: Repository, ttl: float, clock=time.monotonic):
        self.repo = repo
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[tuple[str, str], tuple[CompiledPoint | None, float]] = {}
        self._loading: dict[tuple[str, tuple[str, ...]], asyncio.Future] = {}

    def invalidate(self, tenant: str, name: str) -> None:
        self._entries.pop((tenant, name), None)

    async def get_many(self, tenant: str, names: Sequence[str]) -> dict[str, CompiledPoint | None]:
        """The compiled points of the names (None for an unknown name), with one query for all stale ones."""
        now = self.clock()
        found: dict[str, CompiledPoint | None] = {}
        stale: list[str] = []
        for name in names:
            hit = self._entries.get((tenant, name))
            if hit is not None and now - hit[1] < self.ttl:
                found[name] = hit[0]
            elif name not in stale:
                stale.append(name)
        if stale:
            found.update(await self._load(tenant, tuple(sorted(stale))))
        return found

    async def _load(self, tenant: str, names: tuple[str, ...]) -> dict[str, CompiledPoint | None]:
        key = (tenant, names)
        pending = self._loading.get(key)
        if pending is not None:  # concurrent requests for the same stale points share one query
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            loaded = await self.repo.load_points_with_experiments(tenant, names)
            stamp = self.clock()
            result: dict[str, CompiledPoint | None] = {}
            if len(self._entries) > MAX_CACHED_POINTS:  # bounded, even against clients naming random points
                self._entries.clear()
            for name in names:
                entry = compile_point(*loaded[name]) if name in loaded else None
                self._entries[(tenant, name)] = (entry, stamp)
                result[name] = entry
            future.set_result(result)
            return result
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            del self._loading[key]


class ArmCache:
    """Each bandit point's offer counters per (tenant, point name), reloaded when older than ttl seconds.

    The counters live in the database (every replica writes them); a cached copy a second or two old only delays
    what the posteriors learn, as Thompson sampling with batched updates does anyway. One query loads every stale
    point of a request; a warm request costs none.
    """

    def __init__(self, repo: Repository, ttl: float, clock=time.monotonic):
        self.repo = repo
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[tuple[str, str], tuple[Mapping[tuple[str, str], ArmStats], float]] = {}

    async def get_many(self, tenant: str, names: Sequence[str]) -> dict[str, Mapping[tuple[str, str], ArmStats]]:
        """The counters of the points, by (segment, decision id)."""
        now = self.clock()
        found: dict[str, Mapping[tuple[str, str], ArmStats]] = {}
        stale = []
        for name in names:
            hit = self._entries.get((tenant, name))
            if hit is not None and now - hit[1] < self.ttl:
                found[name] = hit[0]
            else:
                stale.append(name)
        if stale:
            loaded = await self.repo.arm_stats(tenant, sorted(set(stale)))
            stamp = self.clock()
            if len(self._entries) > MAX_CACHED_POINTS:
                self._entries.clear()
            for name, stats in loaded.items():
                self._entries[(tenant, name)] = (stats, stamp)
                found[name] = stats
        return found


class HoldoutCache:
    """Each tenant's holdout, reloaded from the repository when older than ttl seconds.

    SetHoldout in this process invalidates at once; a change made through another replica shows within ttl.
    """

    def __init__(self, repo: Repository, ttl: float, clock=time.monotonic):
        self.repo = repo
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, tuple[Holdout, float]] = {}

    def invalidate(self, tenant: str) -> None:
        self._entries.pop(tenant, None)

    async def get(self, tenant: str) -> Holdout:
        hit = self._entries.get(tenant)
        if hit is not None and self.clock() - hit[1] < self.ttl:
            return hit[0]
        holdout = await self.repo.get_holdout(tenant)
        if len(self._entries) > MAX_CACHED_POINTS:
            self._entries.clear()
        self._entries[tenant] = (holdout, self.clock())
        return holdout
