"""The recommender's use cases: record interactions and items, configs, ranking with fallbacks, batch ranking,
similar items, training, evaluation. No grpc, no SQL."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from services.recommender import evaluation, learned, tuning
from services.recommender.cache import ModelCache, Ttl
from services.recommender.config import (
    ANCHORED,
    BOUGHT_BY_YOU_AGAIN,
    BUILT_IN,
    CO_BOUGHT,
    CO_VIEWED,
    DEFAULT_COUNT,
    LEARNED,
    MAX_COUNT,
    MAX_FALLBACK_DEPTH,
    MOST_VIEWED,
    NEW_ARRIVALS,
    RECENTLY_VIEWED,
    REVENUE,
    SIMILAR_ATTRIBUTES,
    TOP_SELLERS,
    TRENDING,
    Config,
    built_in,
    validate_config,
)
from services.recommender.domain import (
    PRODUCT_VIEW,
    PURCHASE,
    Ask,
    BatchAnswers,
    Catalog,
    CatalogItem,
    Diagnostics,
    Interaction,
    Owned,
    Progress,
    RankingSpec,
    Recommended,
    Scored,
    rank_key,
)
from services.recommender.evaluation import RANDOM, SPLITS, TIME, Events, Split
from services.recommender.ports import Repository
from services.recommender.ranking import (
    learned_head,
    learned_heads,
    masked_scores,
    select,
    similar_by_attributes,
    timestamp,
    window_start,
)
from services.recommender.validation import (
    MAX_ID_LENGTH,
    check_id,
    merge_same_key,
    validate_ask,
    validate_interactions,
    validate_items,
)
from shared import paging
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Violations, quote

log = logging.getLogger(__name__)

MAX_BATCH = 100_000
MAX_REASSIGNED = 1_000
BATCH_CHUNK = 500


class Recommender:
    """The recommender's use cases over a repository, with per-tenant caches of rankings, catalog, configs, models."""

    def __init__(
        self,
        repository: Repository,
        *,
        cache_seconds: float = 1.0,
        cache_items: int = 500,
        catalog_seconds: float = 10.0,
        model_check_seconds: float = 5.0,
        seed: int = 42,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.seed = seed
        self.cache_items = cache_items
        self.clock = clock
        self._rankings = Ttl(cache_seconds, clock)
        self._configs = Ttl(cache_seconds, clock)
        self._catalogs = Ttl(catalog_seconds, clock)
        # The last catalog loaded per tenant with its version: an expired catalog is loaded again only when changed.
        self._catalog_versions = Ttl(math.inf, clock)
        self._models = ModelCache(repository, model_check_seconds, clock)

    # ---- writes fed by the gateway ----

    async def record_interactions(self, tenant: str, interactions: list[Interaction]) -> int:
        """Validates, then stores the interactions not seen before; returns how many were new."""
        validate_interactions(interactions)
        if not interactions:
            return 0
        return await self.repository.record(tenant, merge_same_key(interactions))

    async def upsert_items(self, tenant: str, items: list[CatalogItem]) -> int:
        """Validates, then inserts or replaces the items (the last of repeated ids wins)."""
        validate_items(items)
        if not items:
            return 0
        unique = list({item.item_id: item for item in items}.values())
        written = await self.repository.upsert_items(tenant, unique)
        self._catalogs.drop(tenant)
        return written

    async def reassign_interactions(self, tenant: str, from_ids: list[str], to_id: str,
                                    only_first_recorded_for: list[str]) -> int:
        """Moves interactions after a merge (all of the merged ids' to the survivor) or an unmerge (from the survivor,
        those first recorded for the individual split off, back to it), rebuilding every involved history.
        Item statistics are aggregates and stay; trained models see the move at their next training."""
        violations = Violations()
        if not from_ids:
            violations.add("from_individual_ids", "at least one individual is required")
        elif len(from_ids) > MAX_REASSIGNED:
            violations.add("from_individual_ids", f"at most {MAX_REASSIGNED} individuals; got {len(from_ids)}")
        for i, individual in enumerate(from_ids[:MAX_REASSIGNED]):
            check_id(violations, f"from_individual_ids[{i}]", individual)
            if individual and individual == to_id:
                violations.add(f"from_individual_ids[{i}]", "must not be the individual they move to")
        check_id(violations, "to_individual_id", to_id)
        if len(only_first_recorded_for) > MAX_REASSIGNED:
            violations.add("only_first_recorded_for", f"at most {MAX_REASSIGNED} individuals")
        for i, individual in enumerate(only_first_recorded_for[:MAX_REASSIGNED]):
            check_id(violations, f"only_first_recorded_for[{i}]", individual)
        violations.raise_if_any()
        return await self.repository.reassign(tenant, list(dict.fromkeys(from_ids)), to_id,
                                              list(dict.fromkeys(only_first_recorded_for)))

    # ---- configs ----

    async def put_config(self, tenant: str, config: Config) -> Config:
        """Validates against the catalog and the other configs, then stores the config."""
        configs = await self._all_configs(tenant, fresh=True)
        catalog = await self._catalog(tenant)
        validate_config(config, catalog.attribute_names, {n: c for n, c in configs.items() if n != config.name})
        stored = await self.repository.put_config(tenant, config)
        self._configs.drop(tenant)
        return stored

    async def get_config(self, tenant: str, name: str) -> Config:
        config = (await self._all_configs(tenant, fresh=True)).get(name)
        if config is None:
            raise NotFound(f"no recommender named {quote(name)}", reason="RECOMMENDER_NOT_FOUND",
                           metadata={"name": name})
        return config

    async def list_configs(self, tenant: str, page_size: int, page_token: str) -> tuple[list[Config], str]:
        violations = Violations()
        size = paging.page_size(page_size, 100, 1000, violations)
        after = paging.decode_token(page_token, "recommenders", (str,), violations)
        violations.raise_if_any()
        configs = await self._all_configs(tenant, fresh=True)
        names = sorted(n for n in configs if not after or n > after[0])
        return paging.next_page([configs[n] for n in names[:size + 1]], size, "recommenders", lambda c: [c.name])

    async def delete_config(self, tenant: str, name: str) -> None:
        configs = await self._all_configs(tenant, fresh=True)
        if name not in configs:
            raise NotFound(f"no recommender named {quote(name)}", reason="RECOMMENDER_NOT_FOUND",
                           metadata={"name": name})
        users = sorted(c.name for c in configs.values() if c.fallback == name)
        if users:
            raise FailedPrecondition(f"recommenders {', '.join(users)} fall back to {quote(name)}",
                                     reason="RECOMMENDER_IN_USE", metadata={"name": name})
        await self.repository.delete_config(tenant, name)
        self._configs.drop(tenant)
        self._models.drop(tenant, name)

    async def _all_configs(self, tenant: str, fresh: bool = False) -> dict[str, Config]:
        async def load():
            return {c.name: c for c in await self.repository.configs(tenant)}
        if fresh:
            self._configs.drop(tenant)
        return await self._configs.get(tenant, load)

    async def resolve(self, tenant: str, name: str, path: str = "strategy") -> Config:
        """A configured recommender by name, else a built-in strategy; NOT_FOUND otherwise."""
        if not name:
            raise InvalidArgument([(path, "is required: a recommender name or a built-in strategy")])
        config = (await self._all_configs(tenant)).get(name)
        if config is not None:
            return config
        if name in BUILT_IN:
            return built_in(name)
        raise NotFound(f"no recommender or built-in strategy named {quote(name)}", reason="RECOMMENDER_NOT_FOUND",
                       metadata={"name": name, "field": path})

    async def _chain(self, tenant: str, config: Config) -> list[Config]:
        chain = [config]
        while chain[-1].fallback and len(chain) <= MAX_FALLBACK_DEPTH:
            nxt = await self.resolve(tenant, chain[-1].fallback)
            if any(c.name == nxt.name for c in chain):
                break
            chain.append(nxt)
        return chain

    # ---- serving ----

    async def recommend(self, tenant: str, unified_individual_id: str, strategy: str, count: int,
                        exclude_item_ids: Collection[str] = (), exclude_purchased: bool = False,
                        **context) -> list[Recommended]:
        """Up to `count` items (see `explain`), without diagnostics."""
        items, _ = await self.explain(tenant, unified_individual_id, strategy, count, exclude_item_ids,
                                      exclude_purchased, **context)
        return items

    async def explain(
        self,
        tenant: str,
        unified_individual_id: str,
        strategy: str,
        count: int,
        exclude_item_ids: Collection[str] = (),
        exclude_purchased: bool = False,
        *,
        anchor_item_id: str = "",
        cart_item_ids: Collection[str] = (),
        affinities: Iterable[tuple[str, str, float]] = (),
        diagnostics: bool = False,
    ) -> tuple[list[Recommended], Diagnostics | None]:
        """Up to `count` items by descending score; filters apply before the count is cut; fallbacks fill up."""
        affinities = list(affinities)
        validate_ask(count, exclude_item_ids, affinities)
        config = await self.resolve(tenant, strategy)
        chain = await self._chain(tenant, config)
        ask = Ask(
            individual=unified_individual_id,
            count=count or config.count or DEFAULT_COUNT,
            exclude_ids=frozenset(exclude_item_ids),
            exclude_purchased=exclude_purchased,
            anchor=anchor_item_id,
            cart=tuple(cart_item_ids),
            affinities={(a, v): s for a, v, s in affinities},
            diagnostics=Diagnostics() if diagnostics else None,
        )
        if unified_individual_id and any(self._needs_history(c, ask) for c in chain):
            ask.history = {o.item_id: o for o in await self.repository.history(tenant, unified_individual_id)}
        picked: list[Recommended] = []
        for cfg in chain:
            if len(picked) >= ask.count:
                break
            picked += await self._run(tenant, cfg, ask, {p.item_id for p in picked}, ask.count - len(picked))
        return picked, ask.diagnostics

    @staticmethod
    def _needs_history(config: Config, ask: Ask) -> bool:
        return (ask.exclude_purchased or config.exclude_purchased or config.exclude_recently_viewed
                or config.strategy in (BOUGHT_BY_YOU_AGAIN, RECENTLY_VIEWED))

    async def _run(self, tenant: str, config: Config, ask: Ask, taken: set[str], need: int,
                   model: learned.Model | None = None) -> list[Recommended]:
        if ask.diagnostics is not None:
            ask.diagnostics.recommenders.append(config.name)
        catalog = await self._catalog(tenant) if self._needs_catalog(config) else None
        # A learned model scores every item: start from a small head, widen only if the filters eat it.
        limits = ((learned_head(need), self.cache_items, None) if config.strategy == LEARNED
                  else (self.cache_items, None))
        for limit in limits:
            candidates, truncated = await self._candidates(tenant, config, ask, catalog, limit, model)
            counts: dict[str, int] = {}
            chosen, removed = select(config, candidates, ask, catalog, taken, need, counts)
            if len(chosen) >= need or not truncated:
                break  # otherwise the head ran out under the filters but the ranking goes on: widen it
        if ask.diagnostics is not None:
            for name, n in counts.items():
                ask.diagnostics.filters[name] = ask.diagnostics.filters.get(name, 0) + n
            ask.diagnostics.diversity_removed += removed
        return [Recommended(s.item_id, s.score, config.name) for s in chosen]

    @staticmethod
    def _needs_catalog(config: Config) -> bool:
        return bool(config.attributes_used or config.same_category_as_anchor
                    or config.strategy in (NEW_ARRIVALS, SIMILAR_ATTRIBUTES))

    async def item_attributes(self, tenant: str, item_ids: list[str], names: list[str]) -> dict[str, dict]:
        """The named catalog attributes of each item (from the cached catalog; absent attributes left out)."""
        if not names or not item_ids:
            return {}
        catalog = await self._catalog(tenant)
        out = {}
        for item_id in item_ids:
            values = catalog.attributes(item_id)
            out[item_id] = {name: values[name] for name in names if name in values}
        return out

    async def _catalog(self, tenant: str) -> Catalog:
        """The tenant's catalog, at most catalog_seconds old; once that old, its version is checked (one small
        query) and the items are read again only when it changed."""
        async def load():
            version = await self.repository.catalog_version(tenant)
            hit, known = self._catalog_versions.fresh(tenant)
            if hit and known[0] == version:
                return known[1]
            items = await self.repository.items(tenant)
            names = {name for item in items for name in item.attributes}
            catalog = Catalog({item.item_id: item for item in items}, names)
            self._catalog_versions.put(tenant, (version, catalog))  # a change while reading: read again next time
            return catalog
        return await self._catalogs.get(tenant, load)

    async def _ranking(self, tenant: str, spec: RankingSpec, limit: int | None) -> tuple[list[Scored], bool]:
        if limit is None:
            return await self.repository.ranking(tenant, spec, None), False
        ranked = await self._rankings.get((tenant, spec), lambda: self.repository.ranking(tenant, spec, limit))
        return ranked, len(ranked) >= limit

    async def _candidates(self, tenant: str, config: Config, ask: Ask, catalog: Catalog | None, limit: int | None,
                          model: learned.Model | None) -> tuple[list[Scored], bool]:
        """The strategy's ranked candidates (at most `limit`) and whether more exist beyond them."""
        s = config.strategy
        if s == TOP_SELLERS:
            return await self._ranking(tenant, RankingSpec(s, config.window_days, config.by_revenue,
                                                           by_units=config.by_units), limit)
        if s == MOST_VIEWED:
            return await self._ranking(tenant, RankingSpec(s, config.window_days, by_units=config.by_units), limit)
        if s == TRENDING:
            return await self._ranking(tenant, RankingSpec(s, half_life_days=config.half_life_days or 7.0), limit)
        if s == BOUGHT_BY_YOU_AGAIN:
            owned = (ask.history or {}).values() if ask.individual else ()
            return sorted((Scored(o.item_id, o.units) for o in owned if o.units > 0), key=rank_key), False
        if s == RECENTLY_VIEWED:
            since = window_start(config.recent_days)
            owned = (ask.history or {}).values() if ask.individual else ()
            return sorted((Scored(o.item_id, timestamp(o.last_viewed_at)) for o in owned
                           if o.last_viewed_at is not None and o.last_viewed_at >= since), key=rank_key), False
        if s == NEW_ARRIVALS:
            since = window_start(config.max_age_days)
            items = catalog.items.values() if catalog is not None else ()
            return sorted((Scored(i.item_id, timestamp(i.create_time)) for i in items
                           if i.create_time is not None and i.create_time >= since), key=rank_key), False
        if s in (CO_VIEWED, CO_BOUGHT):
            if not ask.anchors:
                return [], False
            kind = PRODUCT_VIEW if s == CO_VIEWED else PURCHASE
            ranked = await self.repository.co_occurring(tenant, ask.anchors, kind, config.session_minutes * 60,
                                                        config.min_support, limit)
            return ranked, limit is not None and len(ranked) >= limit
        if s == SIMILAR_ATTRIBUTES:
            if catalog is None:
                return [], False
            return similar_by_attributes(catalog, ask.anchors, config.similar_attributes), False
        if s == LEARNED:
            return await self._learned_candidates(tenant, config, ask, limit, model)
        return [], False

    async def _learned_candidates(self, tenant, config, ask, limit, model) -> tuple[list[Scored], bool]:
        scores = ask.learned_scores
        if ask.learned_head is not None and limit is not None and limit < self.cache_items:
            return ask.learned_head, True  # the chunk's precomputed head stands for the first, small head
        if model is None:
            model = await self.model(tenant, config.name)
        if model is None:
            return [], False
        if ask.diagnostics is not None:
            ask.diagnostics.model_version = model.version
        if scores is None:
            if ask.anchors and not ask.individual:
                columns = [model.column[a] for a in ask.anchors if a in model.column]
                if not columns:
                    return [], False
                scores = sum(model.similar(c) for c in columns)
                scores[columns] = -np.inf
            else:
                row = model.row.get(ask.individual)
                if row is None:
                    return [], False  # unknown to the model: the fallback chain takes over
                scores = model.scores(np.array([row]))[0]
        n = len(scores) if limit is None else min(limit, len(scores))
        top = learned.top_k(scores, n)
        ids = model.item_ids
        return [Scored(ids[i], float(scores[i])) for i in top.tolist()], n < len(scores)

    # ---- models ----

    async def model(self, tenant: str, name: str) -> learned.Model | None:
        """The newest stored model of a recommender; checked at most every model_check_seconds, swapped in
        the background while the loaded one keeps serving (the first load waits)."""
        return await self._models.get(tenant, name)

    async def train(self, tenant: str, name: str) -> AsyncIterator[Progress]:
        """Trains a new version of a learned recommender and stores it; yields progress, the last has the version.

        With a tuning budget, the family, weighting and hyperparameters are first searched on a time-split
        validation cut of the tenant's interactions (one `tuning` message per trial), then the best is refitted
        on all of them; the trials are stored with the model version."""
        config = await self.get_config(tenant, name)
        if config.strategy != LEARNED:
            raise FailedPrecondition(f"{quote(name)} is a {config.strategy} recommender; only learned ones are trained",
                                     reason="NOT_LEARNED", metadata={"name": name})
        yield Progress("loading", 0.0, "reading interactions")
        tuned: tuning.Result | None = None
        if config.tune_seconds:
            events = await self._events(tenant)
            matrix = await asyncio.to_thread(events.matrix, config.objective)
        else:
            matrix = await self._matrix(tenant, config.objective)
        if matrix.weights.nnz == 0:
            raise FailedPrecondition("the tenant has no interactions to train on", reason="NO_INTERACTIONS")
        sizes = {"individuals": len(matrix.individuals), "items": len(matrix.items),
                 "interactions": matrix.weights.nnz}
        if config.tune_seconds:
            yield Progress("tuning", 0.05, f"searching for {config.tune_seconds:g} s", **sizes)
            started = time.monotonic()

            def searched(on_trial):
                return tuning.tune(config, events, config.tune_seconds, seed=self.seed, on_trial=on_trial)

            async for item in _in_thread(searched):
                if isinstance(item, tuning.Trial):
                    done = min((time.monotonic() - started) / config.tune_seconds, 1.0)
                    yield Progress("tuning", 0.05 + 0.45 * done, f"trial {item.number}: {item.parameters['algorithm']} "
                                   f"P@{tuning.TUNE_K} {item.precision:.4f}", trial=item, **sizes)
                else:
                    tuned = item
            if tuned is not None and tuned.best is None:
                yield Progress("tuning", 0.5, f"too few individuals to validate on ({tuned.individuals}): "
                               f"fitting the configured parameters", **sizes)
        params = tuned.best if tuned is not None and tuned.best is not None else learned.parameters(config)
        base = 0.5 if tuned is not None else 0.1
        yield Progress("fitting", base, f"fitting {params['algorithm']} on {matrix.weights.nnz} pairs", **sizes)
        model = None
        async for item in _in_thread(lambda progress: learned.train(config, matrix, progress, seed=self.seed,
                                                                      params=params)):
            if isinstance(item, learned.Model):
                model = item
            else:
                yield Progress("fitting", base + (0.9 - base) * item, "fitting", **sizes)
        yield Progress("storing", 0.9, "storing the model", **sizes)
        assert model is not None, "learned.train returns the model last"
        payload = await asyncio.to_thread(model.to_bytes)
        summary = {"algorithm": params["algorithm"], "objective": config.objective, "parameters": params,
                   "seed": self.seed, **sizes}
        if tuned is not None:
            summary["tuning"] = tuned.summary()
        version = await self.repository.save_model(tenant, name, payload, summary)
        model.version = version
        self._models.put(tenant, name, model)
        yield Progress("done", 1.0, f"model version {version} stored", model_version=version, parameters=params,
                       trials=tuple(tuned.trials) if tuned is not None else (), **sizes)

    async def _matrix(self, tenant: str, objective: str) -> learned.Matrix:
        events = await self.repository.interaction_events(tenant, revenue=objective == REVENUE)
        return await asyncio.to_thread(events.matrix, objective)

    async def _events(self, tenant: str) -> Events:
        return await self.repository.interaction_events(tenant, times=True)

    async def run_schedule(self) -> int:
        """Trains every learned recommender whose retrain interval has passed (one replica claims each)."""
        trained = 0
        for tenant, name in await self.repository.due_trainings():
            if not await self.repository.claim_training(tenant, name):
                continue
            try:
                async for _ in self.train(tenant, name):
                    pass
                trained += 1
            except Exception:  # one tenant's failure must not stop the others; retried at the next interval
                log.exception("scheduled_training_failed")
        return trained

    # ---- batch, similar items, evaluation ----

    async def recommend_batch(
        self,
        tenant: str,
        strategy: str,
        count: int,
        individuals: list[tuple[str, list[tuple[str, str, float]]]],
        exclude_item_ids: Collection[str] = (),
        exclude_purchased: bool = False,
    ) -> AsyncIterator[BatchAnswers]:
        """Recommendations for many individuals, in chunks in request order. A learned model scores a whole chunk at
        once, in a worker thread, while the chunk before it is answered and sent."""
        violations = Violations()
        if not individuals:
            violations.add("individuals", "at least one individual is required")
        elif len(individuals) > MAX_BATCH:
            violations.add("individuals", f"at most {MAX_BATCH} individuals; got {len(individuals)}")
        for i, (individual, _) in enumerate(individuals[:MAX_BATCH]):
            if not individual or len(individual) > MAX_ID_LENGTH:
                check_id(violations, f"individuals[{i}].unified_individual_id", individual)
        violations.raise_if_any()
        validate_ask(count, exclude_item_ids, ())
        for i, (_, affinities) in enumerate(individuals):
            if affinities:
                validate_ask(0, (), affinities, prefix=f"individuals[{i}].")
        config = await self.resolve(tenant, strategy)
        chain = await self._chain(tenant, config)
        model = await self.model(tenant, config.name) if config.strategy == LEARNED else None
        batch = _Batch(self, tenant, chain, model, count or config.count or DEFAULT_COUNT, frozenset(exclude_item_ids),
                       exclude_purchased)
        chunks = [individuals[start:start + BATCH_CHUNK] for start in range(0, len(individuals), BATCH_CHUNK)]
        pending: asyncio.Future | None = _started(batch.prepare(chunks[0]))
        try:
            for i, chunk in enumerate(chunks):
                assert pending is not None, "each chunk's preparation starts before it is awaited"
                prepared = await pending
                pending = _started(batch.prepare(chunks[i + 1])) if i + 1 < len(chunks) else None
                yield await batch.answer(chunk, prepared)
        finally:
            if pending is not None:
                pending.cancel()

    async def similar_items(self, tenant: str, item_id: str, count: int, strategy: str) -> list[Recommended]:
        """Items like one item, by the named anchor-based or learned recommender (default similar_attributes)."""
        violations = Violations()
        check_id(violations, "item_id", item_id)
        if not 0 <= count <= MAX_COUNT:
            violations.add("count", f"must be between 0 and {MAX_COUNT} (0 means {DEFAULT_COUNT}); got {count}")
        violations.raise_if_any()
        config = await self.resolve(tenant, strategy or SIMILAR_ATTRIBUTES)
        if config.strategy not in ANCHORED + (LEARNED,):
            message = (f"{quote(config.name)} ranks without an anchor item; use {', '.join(ANCHORED)} or a learned "
                       "recommender")
            raise InvalidArgument([("strategy", message)])
        ask = Ask(individual="", count=count or config.count or DEFAULT_COUNT, anchor=item_id,
                  exclude_ids=frozenset([item_id]))
        return await self._run(tenant, config, ask, set(), ask.count)

    async def evaluate(self, tenant: str, name: str, k: int, test_fraction: float, seed: int, *,
                       split: str = RANDOM, cutoff: datetime | None = None) -> tuple[learned.Metrics, float | None]:
        """Ranking quality on held-out interactions: a time split (a cutoff, or the latest `test_fraction` of the
        interactions), leave-last-out, or a random split of the (individual, item) pairs. What each individual had
        in training is excluded from the ranking; a tuned recommender is tuned on the training part only.
        Returns the metrics and the time split's cutoff (seconds since the epoch)."""
        violations = Violations()
        if not 0 <= k <= 100:
            violations.add("k", "must be between 1 and 100 (0 means 10)")
        if not (math.isfinite(test_fraction) and 0 <= test_fraction < 1):
            violations.add("test_fraction", "must be above 0 and below 1 (0 means 0.2)")
        if split not in SPLITS:
            violations.add("split", f"must be one of {', '.join(SPLITS)}")
        if cutoff is not None and split != TIME:
            violations.add("cutoff_time", "is only read by the time split")
        violations.raise_if_any()
        k, test_fraction = k or 10, test_fraction or 0.2
        config = await self.resolve(tenant, name, path="name")
        if config.strategy not in (TOP_SELLERS, MOST_VIEWED, TRENDING, LEARNED):
            raise FailedPrecondition(f"evaluation ranks by popularity or a learned model; {config.strategy} is "
                                     f"neither", reason="NOT_EVALUABLE", metadata={"name": name})
        events = await self._events(tenant)
        if len(events.rows) < 10:
            raise FailedPrecondition("too few interactions to split", reason="NO_INTERACTIONS")
        how = Split(split, test_fraction, cutoff.timestamp() if cutoff is not None else None, seed)

        def run():
            parts = evaluation.split(events, config.objective, how)
            if parts.train.weights.nnz == 0 or parts.test.nnz == 0:
                raise FailedPrecondition("the split leaves no training or no held-out interactions",
                                         reason="EMPTY_SPLIT", metadata={"split": split})
            params = None
            if config.strategy == LEARNED and config.tune_seconds:
                # Tuned on the training part only, judged the way the evaluation judges (the same kind of split;
                # a time split holds out the same span of time before its cutoff as the test holds after it).
                validation = tuning.validation_split(how, parts.cutoff, events.times)
                result = tuning.tune(config, events.subset(parts.train_mask), config.tune_seconds, seed=self.seed,
                                     validation=validation)
                params = result.best
            metrics = evaluation.evaluate(config, parts, k, seed=self.seed, params=params)
            return metrics, parts.cutoff
        return await asyncio.to_thread(run)


def _started(work: Awaitable[Any]) -> asyncio.Future:
    """Starts work at once; an error it ends with is raised where it is awaited (never reported as unretrieved when
    the caller stopped waiting)."""
    future = asyncio.ensure_future(work)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


@dataclass
class _Prepared:
    """What a chunk's answers start from: its ids, the histories read (None when only purchases were), and the
    learned model's heads (None without a model)."""

    ids: list[str]
    histories: dict[str, list[Owned]] | None
    heads: _Heads | None


@dataclass
class _Heads:
    """A chunk's learned heads: which members the model knows, each one's row among the known (`where`), the known
    members' best columns and scores (padded with -1), and the masked (row among the known, column) pairs bought."""

    rows: np.ndarray
    known: np.ndarray
    where: np.ndarray
    columns: np.ndarray
    scores: np.ndarray
    bought_rows: np.ndarray
    bought_columns: np.ndarray


class _Batch:
    """One RecommendBatch call's settings and the work on each of its chunks."""

    def __init__(self, recommender: Recommender, tenant: str, chain: list[Config], model: learned.Model | None,
                 count: int, excluded: frozenset[str], exclude_purchased: bool) -> None:
        config = chain[0]
        self.recommender, self.tenant, self.chain, self.model = recommender, tenant, chain, model
        self.count, self.excluded, self.exclude_purchased = count, excluded, exclude_purchased
        # Nothing but the masked exclusions filters: the head is the answer.
        self.plain = not (config.attributes_used or config.exclude_recently_viewed or config.same_category_as_anchor)
        self.masking = exclude_purchased or config.exclude_purchased
        probe = Ask(individual="x", count=count, exclude_purchased=exclude_purchased)
        self.needs_history = any(recommender._needs_history(c, probe) for c in chain)
        self.excluded_columns = sorted(model.column[x] for x in excluded if x in model.column) if model else []
        # Exclusions are masked already, so a short head is usually enough (the ranking widens if not).
        width = count + 4 if self.plain else 2 * count + 8
        self.width = min(width, len(model.item_ids) - 1) if model is not None else 0

    async def prepare(self, chunk: list[tuple[str, list[tuple[str, str, float]]]]) -> _Prepared:
        """Reads what the chunk's members bought (their whole histories when the chain needs them) and finds their
        learned heads in a worker thread."""
        ids = [individual for individual, _ in chunk]
        repository = self.recommender.repository
        histories = None
        if self.plain and self.model is not None:
            # The head usually is the answer: only what each member bought is read, to mask it; the whole history
            # only for the members the chain must rank further.
            positions, items = await repository.bought_items(self.tenant, ids) if self.masking else ([], [])
        else:
            histories = await repository.histories(self.tenant, ids) if self.needs_history else {}
            pairs = [(k, o.item_id) for k, u in enumerate(ids) for o in histories.get(u, ()) if o.bought]
            positions, items = [k for k, _ in pairs], [item for _, item in pairs]
        if self.model is None or self.width <= 0:
            return _Prepared(ids, histories, None)
        heads = await asyncio.to_thread(self._heads, self.model, ids, positions, items)
        return _Prepared(ids, histories, heads)

    def _heads(self, model: learned.Model, ids: list[str], positions: list[int], items: list[str]) -> _Heads:
        row, column = model.row, model.column
        rows = np.array([row.get(u, -1) for u in ids], dtype=np.int64)
        known = rows >= 0
        where = np.cumsum(known) - 1
        if self.masking and items:
            columns = np.array([column.get(item, -1) for item in items], dtype=np.int64)
            members = np.array(positions, dtype=np.int64)
            keep = (columns >= 0) & known[members]
            bought_rows, bought_columns = where[members[keep]], columns[keep]
        else:
            bought_rows = bought_columns = np.empty(0, dtype=np.int64)
        heads, scores = learned_heads(model, rows[known], self.width, self.excluded_columns, bought_rows,
                                      bought_columns)
        return _Heads(rows, known, where, heads, scores, bought_rows, bought_columns)

    async def answer(self, chunk: list[tuple[str, list[tuple[str, str, float]]]], prepared: _Prepared) -> BatchAnswers:
        """The chunk's answers: the head of each member it suffices for, the chain's pipeline for the others."""
        n, model, ids, h = self.count, self.model, prepared.ids, prepared.heads
        head = np.zeros(len(ids), dtype=bool)
        columns = np.zeros((len(ids), n), dtype=np.int64)
        scores = np.zeros((len(ids), n))
        if h is not None and self.plain and self.width >= n:
            long_enough = np.zeros(len(ids), dtype=bool)
            long_enough[h.known] = h.columns[:, n - 1] >= 0
            head = long_enough
            columns[h.known] = h.columns[:, :n]
            scores[h.known] = h.scores[:, :n]
        further = np.flatnonzero(~head).tolist()
        picked: dict[int, list[Recommended]] = {}
        if further:
            picked = await self._further(chunk, prepared, further)
        return BatchAnswers(ids, head, columns, scores, picked, model.item_ids if model is not None else [],
                            self.chain[0].name, affinities_unused=not any(c.boosters for c in self.chain))

    async def _further(self, chunk, prepared: _Prepared, further: list[int]) -> dict[int, list[Recommended]]:
        """The members the head does not answer, through the same pipeline as Recommend (their learned scores and
        head carried over)."""
        recommender, n, model, h = self.recommender, self.count, self.model, prepared.heads
        histories = prepared.histories
        if histories is None:
            histories = await recommender.repository.histories(
                self.tenant, [prepared.ids[k] for k in further]) if self.needs_history else {}
        learned_scores: dict[int, np.ndarray] = {}
        if h is not None and model is not None:
            known = [k for k in further if h.known[k]]
            if known:
                among = h.where[known]
                place = np.full(len(h.columns), -1, dtype=np.int64)
                place[among] = np.arange(len(known))
                pick = place[h.bought_rows] >= 0
                rows = masked_scores(model, h.rows[known], self.excluded_columns, place[h.bought_rows[pick]],
                                     h.bought_columns[pick])
                learned_scores = dict(zip(known, rows))
        picked = {}
        for k in further:
            individual, affinities = chunk[k]
            ask = Ask(individual=individual, count=n, exclude_ids=self.excluded,
                      exclude_purchased=self.exclude_purchased, affinities={(a, v): s for a, v, s in affinities},
                      history={o.item_id: o for o in histories.get(individual, ())})
            chosen: list[Recommended] = []
            for i, cfg in enumerate(self.chain):
                if len(chosen) >= n:
                    break
                if i == 0 and k in learned_scores and h is not None and model is not None:
                    ask.learned_scores = learned_scores[k]
                    ask.learned_head = [Scored(model.item_ids[c], v) for c, v in
                                        zip(h.columns[h.where[k]].tolist(), h.scores[h.where[k]].tolist()) if c >= 0]
                else:
                    ask.learned_scores = ask.learned_head = None
                chosen += await recommender._run(self.tenant, cfg, ask, {p.item_id for p in chosen}, n - len(chosen),
                                                 model=model if i == 0 else None)
            picked[k] = chosen
        return picked


async def _in_thread(work: Callable[[Callable[[object], None]], object]) -> AsyncIterator[Any]:
    """Runs `work(report)` in a worker thread and yields what it reports as it comes, then what it returns."""
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def report(item: object) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    running = asyncio.ensure_future(asyncio.to_thread(work, report))
    while not running.done():
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({running, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()
    while not queue.empty():
        yield queue.get_nowait()
    yield running.result()
