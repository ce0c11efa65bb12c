"""Use cases of insight and segment definitions, and of segment members and membership changes."""

from __future__ import annotations

from services.profile_graph import domain, segments
from services.profile_graph.derivation import ITEM_CHUNK, Derivation
from services.profile_graph.domain import (
    InsightDef,
    Member,
    MembershipChange,
    SegmentDef,
)
from services.profile_graph.ports import Store
from shared import paging
from shared.context import check_deadline
from shared.errors import InvalidArgument, NotFound, quote


class Insights:
    """UpsertInsight (recomputes every individual, or every item) and ListInsights."""

    def __init__(self, store: Store, derivation: Derivation):
        self.store = store
        self.derivation = derivation
        self.clock = derivation.clock

    async def upsert_insight(self, tenant: str, insight: InsightDef | None) -> InsightDef:
        """Saves an insight definition and recomputes insights and memberships of every individual (and items)."""
        insight = domain.validate_insight(insight)
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=True)
            await unit.save_insight(insight)
            config = await unit.config()
            if insight.subject == domain.SUBJECT_ITEM:
                after = ""
                while ids := await unit.item_ids(after, ITEM_CHUNK):
                    check_deadline("the recomputation of every item for the insight")
                    await self.derivation.item_insights(unit, ids)
                    after = ids[-1]
            else:
                await self.derivation.recompute_everyone(unit, tenant, config, self.clock(),
                                               "the recomputation of every individual for the insight")
        return insight

    async def list_insights(self, tenant: str, size: int, token: str) -> tuple[list[InsightDef], str]:
        """A page of insight definitions by name, and the token of the next page."""
        limit = paging.page_size(size, 100, 1_000)
        after = paging.decode_token(token, "insights", (str,))
        rows = await self.store.list_insights(tenant, after[0] if after else "", limit + 1)
        return paging.next_page(rows, limit, "insights", lambda d: [d.name])


class Segments:
    """UpsertSegment (recomputes every individual's memberships), ListSegments, ListSegmentMembers and
    ListSegmentChanges."""

    def __init__(self, store: Store, derivation: Derivation):
        self.store = store
        self.derivation = derivation
        self.clock = derivation.clock

    async def upsert_segment(self, tenant: str, segment: SegmentDef | None) -> SegmentDef:
        """Compiles and saves a segment (unknown insight or segment references refused), then recomputes
        memberships of every individual."""
        segment = domain.validate_segment_fields(segment)
        async with self.store.unit(tenant) as unit:
            await unit.lock_definitions(exclusive=True)
            config = await unit.config()
            individual = [d for d in config.insights if d.subject != domain.SUBJECT_ITEM]
            program = segments.compile_rule(
                segment.rule, [d.name for d in individual], [s.name for s in config.segments] + [segment.name],
                frozenset(d.name for d in individual if d.dimension))
            self.derivation.rules.put(tenant, segment.name, segment.rule, program)
            await unit.save_segment(segment)
            config = await unit.config()
            await self.derivation.recompute_everyone(unit, tenant, config, self.clock(),
                                           "the recomputation of every individual for the segment")
            count = await unit.member_count(segment.name)
        return SegmentDef(segment.name, segment.description, segment.rule, count)

    async def list_segments(self, tenant: str, size: int, token: str) -> tuple[list[SegmentDef], str]:
        """A page of segments by name with their member counts, and the token of the next page."""
        limit = paging.page_size(size, 100, 1_000)
        after = paging.decode_token(token, "segments", (str,))
        rows = await self.store.list_segments(tenant, after[0] if after else "", limit + 1)
        return paging.next_page(rows, limit, "segments", lambda s: [s.name])

    async def list_members(self, tenant: str, segment: str, size: int, token: str) -> tuple[list[Member], str]:
        """A page of a segment's members ordered by unified id, and the token of the next page."""
        if not segment:
            raise InvalidArgument([("segment", "must not be empty")])
        limit = paging.page_size(size, 1_000, 10_000)
        after = paging.decode_token(token, f"members/{segment}", (str,))
        await self._segment_must_exist(tenant, segment)
        rows = await self.store.list_members(tenant, segment, after[0] if after else "", limit + 1)
        return paging.next_page(rows, limit, f"members/{segment}", lambda m: [m.individual_id])

    async def list_changes(self, tenant: str, segment: str, size: int, token: str
                           ) -> tuple[list[MembershipChange], str]:
        """Entries and exits in the order their transactions began, each listed once its transaction has finished
        (so polling never skips one that commits late); the token always names the last one returned, so a caller
        can poll with it for newer changes."""
        limit = paging.page_size(size, 1_000, 10_000)
        after = paging.decode_token(token, f"changes/{segment}", (int, int))
        if segment:
            await self._segment_must_exist(tenant, segment)
        rows = await self.store.list_changes(tenant, segment, (after[0], after[1]) if after else (0, 0), limit)
        last = rows[-1] if rows else None
        return rows, paging.encode_token(f"changes/{segment}", [last.txid, last.seq]) if last else ""

    async def _segment_must_exist(self, tenant: str, segment: str) -> None:
        if not await self.store.segment_exists(tenant, segment):
            raise NotFound(f"segment {quote(segment)} does not exist", reason="SEGMENT_NOT_FOUND",
                           metadata={"segment": segment})
