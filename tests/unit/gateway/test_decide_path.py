"""Unit tests of GetDecisions' composition on fakes: what runs at once, and what a prefetch may serve."""

from __future__ import annotations

import asyncio

from google.protobuf import struct_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from services.gateway.decide import Decider
from services.gateway.ports import Stubs
from shared import context as ctx


class Fakes:
    """Identity, profile graph, decision service and recommender: a point whose decision recommends `count`
    items of `recommender`; each call is recorded in order, and Qualify can be held until Recommend starts."""

    def __init__(self):
        self.calls: list[str] = []
        self.recommender_name, self.count = "top_sellers", 3
        self.hold_qualify_until_recommend = False
        self.recommend_started = asyncio.Event()
        self.profile_keys: list[str] = []  # what Qualify says the point reads
        self.masks: list[list[str]] = []  # the read mask of each GetProfile
        self.seen: list[dict] = []  # the profile each Qualify got

    async def ResolveIdentities(self, request):
        return identity_pb.ResolveIdentitiesResponse(resolutions=[identity_pb.Resolution(unified_individual_id="i1")])

    async def GetProfile(self, request):
        self.calls.append("profile")
        self.masks.append(list(request.read_mask.paths))
        profile = profile_pb.Profile(segments=["vip"], insights={"spend": 12.0})
        profile.affinities.add(dimension="color", value="red", score=1.0)
        keep = set(request.read_mask.paths)
        for key in ("segments", "insights", "affinities"):
            if key not in keep:
                profile.ClearField(key)
        return profile_pb.GetProfileResponse(profile=profile)

    async def Qualify(self, request):
        self.calls.append("qualify")
        self.seen.append({k: v for k, v in request.profile.items() if v})
        if self.hold_qualify_until_recommend:
            await asyncio.wait_for(self.recommend_started.wait(), 5)
        point = decision_pb.Point(name="recs", point_id="p1", type=decision_pb.POINT_TYPE_RECOMMENDATIONS,
                                  template=decision_pb.ResponseTemplate(item_attributes=["name"]))
        decision = decision_pb.Decision(decision_id="d1", name="top", point_name="recs",
                                        recommendations=decision_pb.RecommendationSpec(
                                            recommender=self.recommender_name, count=self.count))
        self.calls.append("qualified")
        return decision_pb.QualifyResponse(qualifications=[decision_pb.Qualification(point=point, decision=decision)],
                                           profile_keys=self.profile_keys)

    def Recommend(self, request):
        """Like grpc.aio: the call starts at once and returns an awaitable that is not a coroutine."""
        self.calls.append(f"recommend {request.strategy} {request.count}")
        self.recommend_started.set()
        items = []
        for n in range(request.count):
            item = rec_pb.RecommendedItem(item_id=f"{request.strategy}_{n}", score=1.0 / (n + 1), source="rank")
            item.attributes.update({"name": f"Item {n}", "price": 2.0})
            items.append(item)
        answer = asyncio.get_running_loop().create_future()
        answer.set_result(rec_pb.RecommendResponse(items=items))
        return answer


class NoLog:
    async def submit(self, entries):
        pass


class NoQuota:
    async def over_quota(self, tenant, credits):
        return False


def _decider(fakes: Fakes) -> Decider:
    return Decider(Stubs(fakes, fakes, fakes, fakes), NoLog(), NoQuota())


REQUEST = pb.GetDecisionsRequest(individual_id=common_pb2.Identity(type="customer_id", value="c1"),
                                 personalization_points=[pb.PointRequest(name="recs")])


def _items(reply) -> list[dict]:
    return [{k: v for k, v in sorted(s.items())} for s in reply.personalizations[0].data]


async def test_a_points_recommendations_are_fetched_while_it_qualifies_once_its_decision_is_known():
    ctx.tenant_var.set("t1")
    fakes = Fakes()
    decider = _decider(fakes)
    first = await decider.decide(REQUEST)
    assert fakes.calls == ["profile", "qualify", "qualified", "recommend top_sellers 3"]
    fakes.calls.clear()
    fakes.hold_qualify_until_recommend = True  # Qualify answers only once Recommend has started: they overlap
    fakes.recommend_started.clear()
    second = await decider.decide(REQUEST)
    assert fakes.calls == ["profile", "recommend top_sellers 3", "qualify", "qualified"]
    assert _items(second) == _items(first) == [
        {"item_id": f"top_sellers_{n}", "name": f"Item {n}", "score": 1.0 / (n + 1), "source": "rank"}
        for n in range(3)]


async def test_a_prefetch_for_a_decision_that_no_longer_wins_is_not_served():
    ctx.tenant_var.set("t1")
    fakes = Fakes()
    decider = _decider(fakes)
    await decider.decide(REQUEST)
    fakes.recommender_name, fakes.count = "trending", 2  # the point's decision changed since
    fakes.calls.clear()
    reply = await decider.decide(REQUEST)
    assert fakes.calls[-1] == "recommend trending 2"
    assert [row["item_id"] for row in _items(reply)] == ["trending_0", "trending_1"]
    assert reply.personalizations[0].decision_name == "top"


async def test_items_missing_an_attribute_the_template_names_get_null_as_before():
    from services.gateway.personalize import item_rows, item_structs, struct

    item = rec_pb.RecommendedItem(item_id="a", score=0.5, source="rank")
    item.attributes.update({"name": "A", "tags": ["x", "y"], "dims": {"w": 1.0}})
    names = ["name", "tags", "dims", "missing"]
    assert item_structs([item], names) == [struct(row) for row in item_rows([item], names)]
    assert item_structs([item], names)[0].fields["missing"].WhichOneof("kind") == "null_value"
    assert isinstance(item_structs([item], names)[0], struct_pb2.Struct)


FULL = ["affinities", "attributes", "consents", "events", "insights", "segments"]


async def test_the_profile_is_read_with_only_the_keys_the_points_read_once_they_are_known():
    ctx.tenant_var.set("t1")
    fakes = Fakes()
    fakes.profile_keys = ["affinities", "segments", "some_context_key"]
    decider = _decider(fakes)
    await decider.decide(REQUEST)
    await decider.decide(REQUEST)
    assert [sorted(m) for m in fakes.masks] == [FULL, ["affinities", "segments"]]
    assert set(fakes.seen[1]) == {"segments", "affinities"}


async def test_points_that_read_more_after_a_change_are_asked_again_with_what_they_read_now():
    ctx.tenant_var.set("t1")
    fakes = Fakes()
    fakes.profile_keys = ["affinities", "segments"]
    decider = _decider(fakes)
    await decider.decide(REQUEST)
    await decider.decide(REQUEST)
    fakes.profile_keys = ["affinities", "insights", "segments"]  # a rule now reads insights
    fakes.calls.clear()
    await decider.decide(REQUEST)
    assert [c for c in fakes.calls if not c.startswith("recommend")] == [
        "profile", "qualify", "qualified", "profile", "qualify", "qualified"]
    assert sorted(fakes.masks[-1]) == ["affinities", "insights", "segments"]
    assert fakes.seen[-1]["insights"] == {"spend": 12.0}
    await decider.decide(REQUEST)
    assert sorted(fakes.masks[-1]) == ["affinities", "insights", "segments"]
    fakes.profile_keys = []  # an older decision service says nothing: the whole profile again
    await decider.decide(REQUEST)
    await decider.decide(REQUEST)
    assert sorted(fakes.masks[-1]) == FULL


def test_a_batch_pages_log_rows_equal_the_rows_log_entry_builds_for_each_member():
    from google.protobuf import timestamp_pb2

    from services.gateway.personalize import Decided, Individual, batch_log_groups, log_entry

    now = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    shared = pb.DecisionContext(channel="batch")
    recs = decision_pb.Qualification(point=decision_pb.Point(point_id="p1", name="recs"),
                                     decision=decision_pb.Decision(decision_id="d1", name="top"))
    tested = decision_pb.Qualification(point=recs.point, decision=recs.decision, experiment=decision_pb.ExperimentAssignment(
        experiment_id="e1", cohort_id="a", in_experiment=True))
    pairs = [(Individual(f"u{n}", {}, shared if n < 3 else pb.DecisionContext(channel="batch", anchor_id=f"sku-{n}")),
              Decided(tested if n % 2 else recs, f"pid{n}", data=[{"item_id": f"sku-{n}-{k}"} for k in range(n)]))
             for n in range(5)]
    expected = [log_entry(i, d, struct_pb2.Struct(), request_id="job_1", stage_ms={}, log_time=now,
                          batch_job_id="job_1") for i, d in pairs]
    groups = batch_log_groups(pairs, request_id="job_1", log_time=now, batch_job_id="job_1")
    rows = []
    for group in groups:  # each row as the decision service reads it: the group's shared fields and the row's own
        for row in group.rows:
            entry = decision_pb.DecisionLogEntry()
            entry.CopyFrom(group.shared)
            entry.personalization_id, entry.unified_individual_id = row.personalization_id, row.unified_individual_id
            entry.item_ids[:] = row.item_ids
            rows.append(entry)
    rows.sort(key=lambda r: r.personalization_id)
    assert rows == expected
    assert len(groups) == 4  # u0 and u2 share a qualification and the shared context
    assert [list(r.item_ids) for r in rows][:3] == [[], ["sku-1-0"], ["sku-2-0", "sku-2-1"]]
    assert [r.cohort_id for r in rows] == ["", "a", "", "a", ""] and rows[3].anchor_id == "sku-3"
