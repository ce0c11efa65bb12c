"""The merge sweeper: repairs, after a crash, merges and unmerges the identity service made but nobody applied."""

from __future__ import annotations

import grpc

from services.gateway.pipeline.apply import SWEEP_PAGE, MergePropagation
from services.gateway.postgres import GatewayStore
from shared import context as ctx
from shared import db
from shared.leader import lead
from shared.log import get_logger

log = get_logger("gateway.pipeline")

SWEEPER_LOCK = "tailor-merge-sweeper"
# Pages of one tenant's queue applied per pass before the next tenant's turn: a tenant whose crash left a large
# queue does not hold back the repair of the others (the next pass starts at once while any queue is left).
PAGES_PER_TURN = 10


class MergeSweeper:
    """One leader per database re-applies, tenant by tenant, merges and unmerges left unpropagated.

    The worker that applies a merge marks it propagated at once, so in steady state the queue is empty; only a
    crash between resolving and reassigning leaves work here."""

    def __init__(self, dsn: str, store: GatewayStore, merges: MergePropagation, *, interval_seconds: float = 5.0):
        self.dsn = dsn
        self.store = store
        self.merges = merges
        self.interval_seconds = interval_seconds

    async def sweep_all(self, min_age_seconds: float | None = None) -> tuple[int, bool]:
        """One pass over the tenants, over the merges and unmerges at least min_age_seconds old (by default the
        interval: the workers apply the newer ones themselves): returns how many it applied, and whether any
        tenant's queue still holds more (its turn ended first)."""
        min_age = self.interval_seconds if min_age_seconds is None else min_age_seconds
        swept, more = 0, False
        for tenant_id in await self.store.tenant_ids():
            ctx.tenant_var.set(tenant_id)
            ctx.request_id_var.set(ctx.new_request_id())
            ctx.deadline_var.set(None)
            try:
                # After a crash the queue can hold a chunk's worth of merges or more, and every one of them is a
                # person split across two profiles until it is applied: up to PAGES_PER_TURN pages at once.
                for _ in range(PAGES_PER_TURN):
                    done = await self.merges.sweep(min_age)
                    swept += done
                    if done < SWEEP_PAGE:
                        break
                else:
                    more = True
            except grpc.aio.AioRpcError as error:
                log.warning("merge_sweep_failed", tenant=tenant_id, code=error.code().name)
        if swept:
            log.info("merge_sweep_repaired", merges=swept)
        return swept, more

    async def run(self) -> None:
        async def step() -> bool:
            return (await self.sweep_all())[1]

        with db.all_tenants():  # every tenant's merge outbox
            await lead(self.dsn, SWEEPER_LOCK, step, idle_seconds=self.interval_seconds)
