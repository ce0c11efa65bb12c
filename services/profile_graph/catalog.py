"""Use cases of the item catalog: upsert, get and list items."""

from __future__ import annotations

from services.profile_graph import domain
from services.profile_graph.domain import (
    Condition,
    Item,
)
from services.profile_graph.items import check_item_attributes, check_item_filters
from services.profile_graph.ports import Store
from shared import paging
from shared.errors import Violations


class Catalog:
    """UpsertItems, GetItems and ListItems."""

    def __init__(self, store: Store):
        self.store = store

    async def upsert_items(self, tenant: str, items: list[Item]) -> int:
        """Inserts or replaces items by id (a later duplicate in the request wins); attribute types are checked
        against the catalog's."""
        v = Violations()
        if len(items) > domain.MAX_ITEMS:
            v.add("items", f"at most {domain.MAX_ITEMS} items per call, got {len(items)}")
            v.raise_if_any()
        for i, item in enumerate(items):
            if not item.item_id:
                v.add(f"items[{i}].item_id", "must not be empty")
        v.raise_if_any()
        new_types = check_item_attributes(items, await self.store.item_types(tenant))
        unique = list({item.item_id: item for item in items}.values())
        if unique:
            await self.store.upsert_items(tenant, unique, new_types)
        return len(items)

    async def get_items(self, tenant: str, ids: list[str]) -> list[Item]:
        """The items found, in request order (each id once); unknown ids are left out."""
        v = Violations()
        if not ids:
            v.add("item_ids", "must name at least one item")
        elif len(ids) > domain.MAX_ITEMS:
            v.add("item_ids", f"at most {domain.MAX_ITEMS} ids per call, got {len(ids)}")
        for i, item_id in enumerate(ids[: domain.MAX_ITEMS]):
            if not item_id:
                v.add(f"item_ids[{i}]", "must not be empty")
        v.raise_if_any()
        wanted = list(dict.fromkeys(ids))
        found = {item.item_id: item for item in await self.store.get_items(tenant, wanted)}
        return [found[i] for i in wanted if i in found]

    async def list_items(self, tenant: str, filters: list[Condition], size: int, token: str
                         ) -> tuple[list[Item], str]:
        """A page of items by id meeting every filter, and the token of the next page."""
        limit = paging.page_size(size, 100, 1_000)
        listing = "items/" + repr([(c.field, c.op, c.value) for c in filters])
        after = paging.decode_token(token, listing, (str,))
        types = await self.store.item_types(tenant)
        check_item_filters(filters, types)
        rows = await self.store.list_items(tenant, filters, types, after[0] if after else "", limit + 1)
        return paging.next_page(rows, limit, listing, lambda item: [item.item_id])
