"""Unit tests of what a batch job reads of its members' profiles, on fakes: affinities only while a recommender that
serves the job reads them (its boosters), and a page served without them by one that does is read and served again."""

from __future__ import annotations

from datetime import datetime, timezone

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from services.gateway.batch import BatchJobs, ProfileKeys
from services.gateway.ports import Stubs
from services.gateway.postgres_batch import Job
from shared import context as ctx


class Fakes:
    """Profile graph, decision service and recommender of a point whose one decision recommends by `boosted` (True:
    the recommender says it reads affinities); every member has the affinity color=red."""

    def __init__(self):
        self.boosted = False
        self.masks: list[list[str]] = []  # the read mask of each GetProfiles
        self.affinities_sent: list[int] = []  # per RecommendBatch: the members sent with affinities

    async def GetProfiles(self, request):
        self.masks.append(sorted(request.read_mask.paths))
        profiles = []
        for _ in request.unified_individual_ids:
            profile = profile_pb.Profile()
            if "affinities" in request.read_mask.paths:
                profile.affinities.add(dimension="color", value="red", score=1.0)
            profiles.append(profile)
        return profile_pb.GetProfilesResponse(profiles=profiles)

    async def QualifyBatch(self, request):
        point = decision_pb.Point(name="recs", point_id="p1", type=decision_pb.POINT_TYPE_RECOMMENDATIONS,
                                  template=decision_pb.ResponseTemplate(item_attributes=["name"]))
        decision = decision_pb.Decision(decision_id="d1", name="top", point_name="recs", fallback=True,
                                        recommendations=decision_pb.RecommendationSpec(recommender="als", count=2))
        return decision_pb.QualifyBatchResponse(
            points=[point], decisions=[decision], qualifications=[decision_pb.BatchQualification(decision_id="d1")],
            results=[decision_pb.BatchResult(unified_individual_id=i.unified_individual_id, qualification_indexes=[0])
                     for i in request.individuals],
            profile_keys=["affinities"], qualify_profile_keys=[])

    async def _stream(self, request):
        self.affinities_sent.append(sum(1 for i in request.individuals if i.affinities))
        response = rec_pb.RecommendBatchResponse(affinities_unused=not self.boosted)
        for n in range(2):
            item = response.items.add(item_id=f"sku-{n}", source="als")
            item.attributes.update({"name": f"Item {n}"})
        for i in request.individuals:
            # A boosted answer says whether the member's affinity reached the recommender.
            response.results.add(unified_individual_id=i.unified_individual_id, item_indexes=[0, 1],
                                 scores=[2.0 if i.affinities else 1.0, 0.5])
        yield response

    def RecommendBatch(self, request, **kwargs):
        return self._stream(request)


class Log:
    async def write(self, groups):
        pass


def _job() -> Job:
    return Job("t1", "job_1", "buyers", ("recs",), "RUNNING", 0, 0, 0, "", "", "",
               datetime.now(timezone.utc), None)


async def test_affinities_are_read_only_while_a_recommender_that_serves_the_job_reads_them():
    ctx.tenant_var.set("t1")
    fakes = Fakes()
    jobs = BatchJobs("", None, Stubs(fakes, fakes, fakes, fakes), Log())
    keys, job = ProfileKeys(), _job()
    members = [f"u{n}" for n in range(3)]
    rows, _ = await jobs.decide_page(members, job, keys)  # the first page reads whole profiles
    assert fakes.masks == [["affinities", "attributes", "consents", "events", "insights", "segments"]]
    assert fakes.affinities_sent == [3]
    rows, _ = await jobs.decide_page(members, job, keys)  # the recommender said it reads none: nothing is read
    assert len(fakes.masks) == 1 and fakes.affinities_sent[-1] == 0
    assert [[item["score"] for item in r.payload["data"]] for r in rows] == [[1.0, 0.5]] * 3

    fakes.boosted = True  # boosters added mid-job: the page is read with affinities and served again
    rows, _ = await jobs.decide_page(members, job, keys)
    assert fakes.masks[1:] == [["affinities"]] and fakes.affinities_sent[-2:] == [0, 3]
    assert [[item["score"] for item in r.payload["data"]] for r in rows] == [[2.0, 0.5]] * 3
    rows, _ = await jobs.decide_page(members, job, keys)  # and so are the pages after it, at once
    assert fakes.masks[2:] == [["affinities"]] and fakes.affinities_sent[-1] == 3
    assert [[item["score"] for item in r.payload["data"]] for r in rows] == [[2.0, 0.5]] * 3
