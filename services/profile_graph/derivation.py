"""The Update and Compute stages every use case shares: what is derived from an individual's events (attributes,
profile objects, consents, affinities, insights, segment memberships) and from an item's (item insights)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from services.profile_graph import domain, insights, reconciliation, segments
from services.profile_graph.affinities import affinity_increments
from services.profile_graph.domain import (
    Config,
    InsightDef,
    NewEvent,
)
from services.profile_graph.ports import Unit
from services.profile_graph.segments import RuleCache
from shared.context import Slices, check_deadline
from shared.log import get_logger

log = get_logger("profile_graph.service")

# Individuals are recomputed in chunks of this size when a definition changes for everyone.
RECOMPUTE_CHUNK = 1_000
ITEM_CHUNK = 500


def _reads_properties(d: InsightDef) -> bool:
    return any(n.startswith("properties.") for n in [d.field, d.dimension] + [c.field for c in d.conditions])


def _since(defs: list[InsightDef], now: datetime) -> datetime | None:
    """Where the events these insights read begin: None when one of them has no window (all time)."""
    windows = [d.window for d in defs]
    return None if any(w is None or not w for w in windows) else now - max(w for w in windows if w is not None)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Derivation:
    """Derives and recomputes, inside a unit of work the caller holds; remembers the items whose insights are stale."""

    def __init__(self, rules: RuleCache | None = None, clock: Callable[[], datetime] = _utcnow,
                 objects_per_type: int = 100):
        self.rules = rules or RuleCache()
        self.clock = clock
        self.objects_per_type = objects_per_type
        self.dirty_items: dict[str, set[str]] = {}

    async def derive(self, unit: Unit, config: Config, events: list[NewEvent], ids: list[str],
                      all_keys: bool = False) -> None:
        """Attributes (per-source values, then the reconciled unified value), profile objects, consents and
        affinities from events."""
        stats = reconciliation.attribute_stats(events)
        if stats:
            await unit.add_attribute_stats(stats)
            touched = {(i, k) for i, k, _, _ in stats}
            candidates = await unit.attribute_stats(sorted({i for i, _ in touched}))
            if not all_keys:
                candidates = {k: v for k, v in candidates.items() if k in touched}
            await unit.write_attributes(ids, reconciliation.reconcile_all(config.recon, candidates))
        objects = reconciliation.latest_objects(events)
        if objects:
            await unit.upsert_objects(objects, self.objects_per_type)
        consents = reconciliation.latest_consents(events)
        if consents:
            await unit.upsert_consents(consents, from_api=False)
        if config.affinity.dimensions and any(config.affinity.weight(e.type) for e in events):
            items = await unit.item_attributes(sorted({i for e in events for i in e.item_ids}),
                                               config.affinity.dimensions)
            increments = affinity_increments(events, items, config.affinity)
            if increments:
                await unit.add_affinities(increments, config.affinity.half_life)

    async def recompute(self, unit: Unit, tenant: str, config: Config, ids: list[str], now: datetime,
                         fresh: list[NewEvent] | None = None, slices: Slices | None = None
                         ) -> dict[str, tuple[list[str], list[str]]]:
        """Recomputes insight values and segment memberships of ids; returns (entered, exited) per individual.

        With fresh (the events just appended, possibly none) insights are updated incrementally from the stored
        partials; without, they are recomputed from the individuals' events and their partials rewritten.
        Memberships are evaluated in slices of a few milliseconds, the event loop yielded between them (slices:
        the caller's, when its deadline must stop the work)."""
        slices = slices or Slices("a recomputation", honour_deadline=False, pause=0.0)
        defs = [d for d in config.insights if d.subject != domain.SUBJECT_ITEM]
        values: dict[str, list[tuple[str, str, float]]] = {}
        if defs:
            if fresh is None:
                values = await self._insights_from_events(unit, defs, ids, now, slices)
                await unit.store_insight_values(ids, values)
            else:
                values = await self._insights_from_partials(unit, defs, fresh, ids, now, slices)
        if not config.segments:
            return {}
        programs = self.rules.programs(tenant, config.segments)
        variables = segments.rule_variables(programs)
        memo: dict = {}
        states = await unit.profile_states(ids, now, variables)
        entered: list[tuple[str, str]] = []
        exited: list[tuple[str, str]] = []
        changes: dict[str, tuple[list[str], list[str]]] = {}
        skipped: dict[str, int] = {}
        for individual_id in ids:
            await slices.tick()
            attributes, current, affinities, consents = states.get(individual_id, ({}, set(), {}, {}))
            insight_map = insights.insight_view(defs, values.get(individual_id, []))
            over: set[str] = set()
            now_in = segments.evaluate_memberships(programs, attributes, insight_map, current, affinities, consents,
                                                   variables, memo, over)
            for name in over:
                skipped[name] = skipped.get(name, 0) + 1
            came = sorted(now_in - current)
            went = sorted(current - now_in)
            if came or went:
                changes[individual_id] = (came, went)
                entered += [(individual_id, s) for s in came]
                exited += [(individual_id, s) for s in went]
        if skipped:
            # Not run on these individuals: their data would take the rule past its evaluation budget.
            log.warning("segment_rule_over_budget", tenant=tenant, individuals=skipped)
        if entered or exited:
            await unit.change_memberships(entered, exited, now)
        return changes

    async def _item_attributes_for(self, unit: Unit, defs: list[InsightDef], rows) -> dict[str, dict]:
        if not any(d.reads_item_attributes for d in defs):
            return {}
        return await unit.item_attributes(sorted({i for r in rows for i in ([r.item_id] + [li[0] for li in r.lines])
                                                  if i}))

    async def _values_from_events(self, unit: Unit, defs: list[InsightDef], ids: list[str], now: datetime,
                                  partials: dict | None, slices: Slices | None = None
                                  ) -> dict[str, dict[str, dict[str, float]]]:
        """individual -> insight -> group -> value from the individuals' events (those inside the longest window when
        all are windowed); fills partials (per time bucket) for the defs kept incrementally when asked."""
        since = _since(defs, now)
        rows = await unit.event_rows(ids, since, any(d.uses_items for d in defs),
                                     any(_reads_properties(d) for d in defs))
        items = await self._item_attributes_for(unit, defs, rows)
        totals: dict[str, dict[str, dict[str, float]]] = {}
        for d in defs:
            if slices is not None:
                await slices.tick()
            merged: dict[tuple[str, str], insights.Partial] = {}
            for (individual, bucket, group), partial in insights.insight_partials(d, rows, items, now,
                                                                                  buckets=True).items():
                if partials is not None and not d.reads_item_attributes:
                    partials[(individual, d.name, group, bucket)] = partial
                merged.setdefault((individual, group), insights.Partial()).merge(partial)
            for (individual, group), value in insights.values_of(d, merged).items():
                totals.setdefault(individual, {}).setdefault(d.name, {})[group] = value
        return totals

    async def _insights_from_events(self, unit: Unit, defs: list[InsightDef], ids: list[str], now: datetime,
                                    slices: Slices | None = None) -> dict[str, list[tuple[str, str, float]]]:
        """The full recompute of ids: every insight from their events, and their partials rebuilt from them."""
        partials: dict[tuple[str, str, str, int], insights.Partial] = {}
        totals = await self._values_from_events(unit, defs, ids, now, partials, slices)
        await unit.write_partials(ids, partials, None)
        return {individual: insights.insight_rows(defs, totals.get(individual, {})) for individual in ids}

    async def _insights_from_partials(self, unit: Unit, defs: list[InsightDef], fresh: list[NewEvent],
                                      ids: list[str], now: datetime, slices: Slices | None = None
                                      ) -> dict[str, list[tuple[str, str, float]]]:
        """The incremental update: the fresh events are merged into the stored partials of their time buckets;
        values are the partials of the buckets wholly inside each window plus the events of the bucket holding the
        window's start that fall after it, read one by one. Sums are exact, so this equals the full recompute.
        Insights reading catalog attributes (item.<attribute>) are recomputed from events, so that they follow
        changes of the catalog as before."""
        kept = [d for d in defs if not d.reads_item_attributes]
        totals = await self._values_from_events(unit, [d for d in defs if d.reads_item_attributes], ids, now,
                                                None, slices) if len(kept) < len(defs) else {}
        edges = {d.name: e for d in kept if d.window and (e := insights.edge(d, now)) is not None}
        stored, previous = await unit.read_partials(ids)
        changed: dict[tuple[str, str, str, int], insights.Partial] = {}
        for d in kept:
            for (individual, bucket, group), partial in insights.insight_partials(d, fresh, {}, now,
                                                                                  buckets=True).items():
                key = (individual, d.name, group, bucket)
                if key in stored:
                    stored[key].merge(partial)
                else:
                    stored[key] = partial
                changed[key] = stored[key]
        await unit.write_partials(ids, changed, {name: e[2] for name, e in edges.items()})
        by_name: dict[str, list[tuple[str, str, int, insights.Partial]]] = {}
        for (individual, name, group, bucket), partial in stored.items():
            by_name.setdefault(name, []).append((individual, group, bucket, partial))
        # Every event after a cutoff is in its bucket's partial, so only individuals with a partial in an edge bucket
        # have events to read one by one.
        edge_ids = sorted({i for name, e in edges.items() for i, _, bucket, _ in by_name.get(name, ()) if bucket == e[2]})
        ranges = sorted({(cutoff, end) for cutoff, end, _ in edges.values()})
        edge_rows = await unit.edge_events(edge_ids, ranges, any(d.uses_items for d in kept),
                                           any(_reads_properties(d) for d in kept)) if edge_ids else []
        for d in kept:
            if slices is not None:
                await slices.tick()
            parts: dict[tuple[str, str], list[insights.Partial]] = {}
            edge = edges.get(d.name)
            for individual, group, bucket, partial in by_name.get(d.name, ()):
                if edge is None or bucket > edge[2]:
                    parts.setdefault((individual, group), []).append(partial)
            if edge is not None:
                inside = [r for r in edge_rows if r.event_time < edge[1]]  # after the cutoff: insight_counts
                for owner_group, partial in insights.insight_partials(d, inside, {}, now).items():
                    parts.setdefault(owner_group, []).append(partial)
            merged = {key: found[0] if len(found) == 1 else insights.merged(found) for key, found in parts.items()}
            for (individual, group), value in insights.values_of(d, merged).items():
                totals.setdefault(individual, {}).setdefault(d.name, {})[group] = value
        values = {individual: insights.insight_rows(defs, totals.get(individual, {})) for individual in ids}
        # Only values that changed are written (most of a batch's individuals keep most of their values).
        await unit.change_insight_values(*insights.insight_changes(values, previous))
        return values

    async def rebuild(self, unit: Unit, tenant: str, config: Config, ids: list[str], now: datetime,
                       slices: Slices | None = None) -> None:
        """Forgets everything derived about ids (except consents set through the API) and derives it again from
        their events, then recomputes insights and memberships."""
        await unit.clear_derived(ids)
        events = await unit.replay_events(ids)
        if events:
            await self.derive(unit, config, events, ids, all_keys=True)
        await self.recompute(unit, tenant, config, ids, now, slices=slices)

    async def recompute_everyone(self, unit: Unit, tenant: str, config: Config, now: datetime, what: str) -> int:
        """Recomputes every individual in chunks; stops (DeadlineExceeded, the transaction rolled back) once the
        caller's deadline has passed."""
        slices = Slices(what)
        after, count = "", 0
        while ids := await unit.individual_ids(after, RECOMPUTE_CHUNK):
            check_deadline(what)
            await self.recompute(unit, tenant, config, ids, now, slices=slices)
            after, count = ids[-1], count + len(ids)
        return count

    async def item_insights(self, unit: Unit, item_ids: list[str]) -> bool:
        config = await unit.config()
        defs = [d for d in config.insights if d.subject == domain.SUBJECT_ITEM]
        if not defs:
            return False
        now = self.clock()
        since = _since(defs, now)
        rows = await unit.item_event_rows(item_ids, since)
        needs_items = any(d.field.startswith("item.") or any(c.field.startswith("item.") for c in d.conditions)
                          for d in defs)
        items = await unit.item_attributes(item_ids) if needs_items else {}
        wanted = set(item_ids)
        values: dict[str, dict[str, float]] = {i: {} for i in item_ids}
        for d in defs:
            for item_id, value in insights.compute_insight(d, rows, items, now, group_by="item_id").items():
                if item_id in wanted:
                    values[item_id][d.name] = value
        for item_id in item_ids:
            for d in defs:
                values[item_id].setdefault(d.name, 0.0)
        await unit.store_item_insights(item_ids, values)
        return True
