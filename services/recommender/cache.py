"""Per-process caches of the recommender: a per-key cache with an age limit, and the loaded trained models."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.recommender import learned
from services.recommender.ports import Repository

log = logging.getLogger(__name__)

# Tenants (or tenant keys) kept in each in-memory cache; the least recently used one is dropped first.
MAX_CACHED_TENANTS = 1_000


class Ttl:
    """A per-key cache with an age limit, one load per key at a time, least recently used dropped first."""

    def __init__(self, seconds: float, clock: Callable[[], float], size: int = MAX_CACHED_TENANTS):
        self.seconds = seconds
        self.clock = clock
        self.size = size
        self._values: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._locks: dict[Any, asyncio.Lock] = {}

    def fresh(self, key) -> tuple[bool, Any]:
        entry = self._values.get(key)
        if entry is None or self.clock() - entry[0] >= self.seconds:
            return False, None
        self._values.move_to_end(key)
        return True, entry[1]

    async def get(self, key, load: Callable[[], Awaitable[Any]]):
        hit, value = self.fresh(key)
        if hit:
            return value
        async with self._locks.setdefault(key, asyncio.Lock()):
            hit, value = self.fresh(key)
            if hit:
                return value
            value = await load()
            self.put(key, value)
            return value

    def put(self, key, value) -> None:
        self._values[key] = (self.clock(), value)
        self._values.move_to_end(key)
        while len(self._values) > self.size:
            evicted, _ = self._values.popitem(last=False)
            self._locks.pop(evicted, None)

    def drop(self, key) -> None:
        self._values.pop(key, None)


@dataclass
class _LoadedModel:
    model: learned.Model | None
    checked_at: float
    refreshing: bool = False


class ModelCache:
    """The loaded model of each (tenant, recommender), with the newest stored version swapped in as it appears."""

    def __init__(self, repository: Repository, check_seconds: float, clock: Callable[[], float]) -> None:
        self.repository = repository
        self.check_seconds = check_seconds
        self.clock = clock
        self._models: dict[tuple[str, str], _LoadedModel] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def get(self, tenant: str, name: str) -> learned.Model | None:
        """The newest stored model of a recommender; checked at most every check_seconds, swapped in
        the background while the loaded one keeps serving (the first load waits)."""
        key = (tenant, name)
        loaded = self._models.get(key)
        if loaded is None:
            async with self._locks.setdefault(key, asyncio.Lock()):
                loaded = self._models.get(key)
                if loaded is None:
                    model = await self._load_newest(tenant, name, None)
                    loaded = self._models[key] = _LoadedModel(model, self.clock())
            return loaded.model
        if self.clock() - loaded.checked_at >= self.check_seconds and not loaded.refreshing:
            loaded.refreshing = True
            asyncio.get_running_loop().create_task(self._refresh(key, loaded))
        return loaded.model

    async def _refresh(self, key: tuple[str, str], loaded: _LoadedModel) -> None:
        try:
            model = await self._load_newest(key[0], key[1], loaded.model)
            self._models[key] = _LoadedModel(model, self.clock())
        except Exception:  # a failed refresh keeps serving the loaded model and tries again later
            log.exception("model_refresh_failed")
            loaded.refreshing = False
            loaded.checked_at = self.clock()

    async def _load_newest(self, tenant: str, name: str, current: learned.Model | None) -> learned.Model | None:
        version = await self.repository.latest_model_version(tenant, name)
        if not version:
            return None
        if current is not None and current.version == version:
            return current
        payload = await self.repository.load_model(tenant, name, version)
        if payload is None:
            return current
        return await asyncio.to_thread(learned.Model.from_bytes, payload, version)

    def put(self, tenant: str, name: str, model: learned.Model) -> None:
        """Serves `model` for the recommender from now on (a model this process has just trained)."""
        self._models[(tenant, name)] = _LoadedModel(model, self.clock())

    def drop(self, tenant: str, name: str) -> None:
        """Forgets the loaded model of a deleted recommender."""
        self._models.pop((tenant, name), None)
