"""asyncpg adapter of the recommender's erase and export: interactions, per-individual histories, model rows."""

from __future__ import annotations

import asyncpg
import numpy as np

from services.recommender.learned import Model
from services.recommender.postgres import lock_individuals
from shared.privacy import erase_rows, export_rows

TABLES = ("interactions", "individual_items", "merged_individuals")

# How each table names the individual (merged-id redirects name it on either side).
_WHERE = {"merged_individuals": "(t.individual_id = ANY($2::text[]) OR t.survivor_id = ANY($2::text[]))"}


def _where(table: str) -> str:
    return _WHERE.get(table, "t.unified_individual_id = ANY($2::text[])")


def without_individuals(model: Model, ids: set[str]) -> Model | None:
    """The model with the rows of these individuals removed; None when it has none of them."""
    rows = [model.row[i] for i in ids if i in model.row]
    if not rows:
        return None
    keep = np.setdiff1d(np.arange(len(model.individuals)), rows)
    if model.factored:
        return Model(model.algorithm, model.individuals[keep], model.items, user_factors=model.user_factors[keep],
                     item_factors=model.item_factors, version=model.version)
    return Model(model.algorithm, model.individuals[keep], model.items, similarity=model.similarity,
                 user_items=model.user_items[keep], version=model.version)


class PostgresPrivacy:
    """Erases and exports an individual's rows in the recommender schema."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def erase(self, tenant: str, ids: list[str]) -> int:
        """Deletes the individuals' interactions, histories and merge redirects (either side) and their rows of trained
        models, in one transaction. Item statistics are aggregates without individual values and stay as they are."""
        async with self.pool.acquire() as conn, conn.transaction():
            # As a reassignment does: no recording for them is half-way meanwhile.
            await lock_individuals(conn, tenant, ids, exclusive=True)
            erased = await erase_rows(conn, [
                f"DELETE FROM {t} AS t WHERE t.tenant_id = $1 AND {_where(t)}" for t in TABLES], tenant, ids)
            models = await conn.fetch(
                "SELECT recommender, version, payload FROM models WHERE tenant_id = $1 FOR UPDATE", tenant)
            for m in models:
                rewritten = without_individuals(Model.from_bytes(bytes(m["payload"]), m["version"]), set(ids))
                if rewritten is not None:
                    await conn.execute(
                        "UPDATE models SET payload = $4 WHERE tenant_id = $1 AND recommender = $2 AND version = $3",
                        tenant, m["recommender"], m["version"], rewritten.to_bytes())
                    erased += 1
        return erased

    async def export(self, tenant: str, ids: list[str]) -> dict[str, list]:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await export_rows(conn, {
                t: f"SELECT to_jsonb(t) - 'tenant_id' AS row FROM {t} AS t"
                   f" WHERE t.tenant_id = $1 AND {_where(t)} ORDER BY 1" for t in TABLES},
                tenant, ids)
