"""Seeds the fuzzed tenant and another tenant, and drives Hypothesis over every target."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import seed as hypothesis_seed

from personalization.common.v1 import common_pb2
from personalization.identity.v1 import identity_service_pb2 as id_pb
from personalization.identity.v1 import identity_service_pb2_grpc as id_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pg_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pg_grpc
from tailor_cli.demo import apply_config
from tests.fuzz.harness import Fuzzer, LoopThread, Target
from tests.fuzz.wire import MAX_REQUEST_BYTES, Strategies
from tests.internal_auth import tenant_md

# Names the demo configuration declares (insights, segments, points, decisions, identity types, fields).
CONFIG_NAMES = ["spend_30d", "purchases_30d", "big_spenders", "home_banner", "home_recs", "vip_offer", "welcome",
                "top_sellers", "email", "customer_id", "device_id", "phone", "PURCHASE", "VIEW", "name", "price",
                "revenue", "headline", "most_viewed", "als", "insights.spend_30d >= 1.0", "true", "profile.segments"]


async def seed(tenant: str, gateway: str, identity: str, key: str, *, people: int = 3) -> list[str]:
    """Applies the demo configuration, creates a few individuals and items; returns their ids."""
    await apply_config(gateway, key, out=lambda _: None)
    md = tenant_md(tenant)
    async with grpc.aio.insecure_channel(identity) as channel:
        subjects = [id_pb.Subject(identities=[common_pb2.Identity(type="customer_id", value=f"{tenant}-c{i}")])
                    for i in range(people)]
        reply = await id_grpc.IdentityServiceStub(channel).ResolveIdentities(
            id_pb.ResolveIdentitiesRequest(subjects=subjects), metadata=md, timeout=30)
    ids = [r.unified_individual_id for r in reply.resolutions]
    async with grpc.aio.insecure_channel(gateway) as channel:
        items = [pg_pb.Item(item_id=f"{tenant}-sku{i}", name=f"item {i}") for i in range(3)]
        await pg_grpc.ProfileGraphServiceStub(channel).UpsertItems(
            pg_pb.UpsertItemsRequest(items=items), metadata=(("authorization", f"Bearer {key}"),), timeout=30)
    return ids + [f"{tenant}-c{i}" for i in range(people)] + [i.item_id for i in items]


def fuzz_targets(loop: LoopThread, fuzzer: Fuzzer, targets: list[Target], pool: list[str], examples: int,
                 *, check_rows: bool = True, seed: int | None = None, progress=None) -> None:
    """Draws `examples` requests for each target and runs them through fuzzer (failures land in its tally)."""
    strategies = Strategies(pool)
    for target in targets:
        strategy = strategies.message(target.descriptor.input_type)

        @settings(max_examples=examples, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        @given(strategy)
        def one(drawn):
            assume(len(drawn.data) <= MAX_REQUEST_BYTES)
            # Run at once, in this iteration (so target is this one's).
            loop.run(fuzzer.case(target, drawn.data, drawn.strings, check_rows))  # noqa: B023

        (one if seed is None else hypothesis_seed(seed)(one))()  # a seed: the same draws on every run
        if progress is not None:
            progress(target)


class FuzzSession:
    """The in-process suite (no background pipeline worker, so row counts move only by calls), two seeded tenants
    and a Fuzzer aimed at every target, all on a LoopThread."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    def __enter__(self) -> "FuzzSession":
        import os

        from tests.suite import Suite

        before = os.environ.get("TAILOR_GATEWAY_RUN_WORKER")
        os.environ["TAILOR_GATEWAY_RUN_WORKER"] = "0"  # read once, at start (other tests in the process keep theirs)
        self.loop = LoopThread()
        try:
            self.suite = self.loop.run(Suite(self.dsn).start(), timeout=120)
        finally:
            if before is None:
                del os.environ["TAILOR_GATEWAY_RUN_WORKER"]
            else:
                os.environ["TAILOR_GATEWAY_RUN_WORKER"] = before
        self.fuzzer = None
        try:
            run = self.loop.run
            tenant, md = run(self.suite.new_tenant())
            other, other_md = run(self.suite.new_tenant())
            self.addresses = {name: f"127.0.0.1:{port}" for name, port in self.suite.ports.items()}
            gateway, identity = self.addresses["gateway"], self.addresses["identity"]
            mine = run(seed(tenant, gateway, identity, md[0][1].split()[1]), timeout=120)
            theirs = run(seed(other, gateway, identity, other_md[0][1].split()[1]), timeout=120)
            self.pool = CONFIG_NAMES + mine + theirs + [other]
            self.fuzzer = Fuzzer(self.dsn, tenant, other)
            run(self.fuzzer.open())
            self.others_rows = run(self.fuzzer.row_counts(other))
            from tests.fuzz.harness import targets

            self.targets = targets(gateway, self.addresses, md, tenant)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def run(self, examples: int, targets: list[Target] | None = None, progress=None, seed: int | None = None) -> None:
        fuzz_targets(self.loop, self.fuzzer, self.targets if targets is None else targets, self.pool, examples,
                     progress=progress, seed=seed)

    def others_unchanged(self) -> bool:
        return self.loop.run(self.fuzzer.row_counts(self.fuzzer.other_tenant)) == self.others_rows

    def __exit__(self, *exc) -> None:
        if self.fuzzer is not None:
            self.loop.run(self.fuzzer.close())
        self.loop.run(self.suite.stop(), timeout=60)
        self.loop.stop()
