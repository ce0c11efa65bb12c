"""The merge sweep: events left unpropagated by a crash apply in order, each run of merges concurrently."""

from __future__ import annotations

import asyncio

import pytest

from personalization.identity.v1 import identity_service_pb2 as identity_pb
from services.gateway.pipeline.apply import MergePropagation, merge_runs

MERGE, UNMERGE = identity_pb.MERGE_EVENT_KIND_MERGE, identity_pb.MERGE_EVENT_KIND_UNMERGE


def test_a_run_follows_chains_to_the_final_survivor_and_groups_by_it():
    assert merge_runs([("a", "b"), ("b", "c"), ("d", "e"), ("f", "c")]) == [{"c": ["a", "b", "f"], "e": ["d"]}]
    assert merge_runs([("b", "c"), ("a", "b")]) == [{"c": ["b", "a"]}]


def test_a_pair_that_would_undo_the_run_starts_the_next_one_so_the_order_holds():
    # b back into a after a into b (an unmerge came between them, already propagated): two runs, in order.
    assert merge_runs([("a", "b"), ("b", "a")]) == [{"b": ["a"]}, {"a": ["b"]}]
    # a merged twice (into b, then, after an unmerge, into c).
    assert merge_runs([("a", "b"), ("a", "c")]) == [{"b": ["a"]}, {"c": ["a"]}]
    assert merge_runs([("a", "a")]) == []


class Recorder:
    """Stands in for the identity service's outbox and the three services a merge reaches."""

    def __init__(self, events):
        self.events = events
        self.calls: list[tuple] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.marked: list[str] = []

    async def ListUnpropagatedMergeEvents(self, request):
        return identity_pb.ListUnpropagatedMergeEventsResponse(merge_events=self.events[:request.page_size])

    async def MarkMergeEventsPropagated(self, request):
        self.marked.extend(request.event_ids)
        return identity_pb.MarkMergeEventsPropagatedResponse()

    async def ListIdentityTypes(self, request):
        return identity_pb.ListIdentityTypesResponse(identity_types=[identity_pb.IdentityType(name="email",
                                                                                                unique=True)])

    async def call(self, kind, request):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        self.calls.append((kind, request))

    async def ReassignIndividual(self, request):
        if hasattr(request, "only_events_with_identities"):
            await self.call("profile", request)

    async def ReassignInteractions(self, request):
        pass


def _event(n: int, kind, survivor: str, other: str) -> identity_pb.MergeEvent:
    return identity_pb.MergeEvent(event_id=str(n), kind=kind, survivor_individual_id=survivor,
                                  other_individual_id=other)


async def test_a_sweep_applies_a_crashs_merges_concurrently_and_an_unmerge_only_after_the_merges_before_it():
    events = [_event(n, MERGE, f"s{n}", f"m{n}") for n in range(20)]
    events.append(_event(20, UNMERGE, "s3", "m3"))
    events[-1].evidence.add(type="email", value="m3@example.com")
    events.append(_event(21, MERGE, "s3", "m3"))
    fake = Recorder(events)
    merges = MergePropagation(fake, fake, fake, fake)  # type: ignore[arg-type]
    assert await merges.sweep(min_age_seconds=0) == 22
    assert fake.marked == [str(n) for n in range(22)]
    assert fake.most_in_flight > 1  # the first twenty went at once
    moves = [(list(r.from_individual_ids), r.to_individual_id) for _, r in fake.calls]
    assert sorted(moves[:20]) == sorted((["m" + str(n)], "s" + str(n)) for n in range(20))
    # The unmerge (s3 back to m3) after every merge before it, then m3's merge again.
    assert moves[20:] == [(["s3"], "m3"), (["m3"], "s3")]


class Failing(Recorder):
    """The profile graph refuses one survivor's merge; the others take longer."""

    async def ReassignIndividual(self, request):
        if request.to_individual_id == "s0":
            raise RuntimeError("the profile graph is restarting")
        await super().ReassignIndividual(request)


async def test_a_failed_merge_marks_nothing_and_leaves_no_merge_running_behind_it():
    fake = Failing([_event(n, MERGE, f"s{n}", f"m{n}") for n in range(5)])
    merges = MergePropagation(fake, fake, fake, fake)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await merges.sweep(min_age_seconds=0)
    assert fake.marked == [] and fake.in_flight == 0
    assert sorted(r.to_individual_id for _, r in fake.calls) == ["s1", "s2", "s3", "s4"]
