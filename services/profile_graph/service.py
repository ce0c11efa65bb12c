"""The profile graph's use cases, wired once over a store: one class per use case (append, reassign, recompute,
reads, live stream, configuration, catalog, insights, segments), sharing the Derivation stage. No gRPC, no SQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from services.profile_graph.catalog import Catalog
from services.profile_graph.configuration import Configuration
from services.profile_graph.definitions import Insights, Segments
from services.profile_graph.derivation import Derivation, _utcnow
from services.profile_graph.ports import Store
from services.profile_graph.reads import EventStream, Reads
from services.profile_graph.segments import RuleCache
from services.profile_graph.updates import AppendEvents, Reassign, Recompute

__all__ = ["ProfileGraph", "_utcnow"]


class ProfileGraph:
    """Every use case of the profile graph over one store (the servicer and the background loops use them)."""

    def __init__(self, store: Store, rules: RuleCache | None = None, *, clock: Callable[[], datetime] = _utcnow,
                 objects_per_type: int = 100):
        derivation = Derivation(rules, clock, objects_per_type)
        self.store = store
        self.derivation = derivation
        self.appends = AppendEvents(store, derivation)
        self.reassignment = Reassign(store, derivation)
        self.recompute = Recompute(store, derivation)
        self.reads = Reads(store, clock)
        self.stream = EventStream(store)
        self.configuration = Configuration(store, derivation)
        self.catalog = Catalog(store)
        self.insights = Insights(store, derivation)
        self.segments = Segments(store, derivation)
