"""Batch parity with real time, consent enforcement and points that require authentication, through the gateway with
all five services: per-member context in batch, batch rows in the decision log, cron firing on a controlled clock,
consent granted and withdrawn in decide, batch and activation."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from services.gateway.activation import Activations
from services.gateway.batch import BatchJobs
from shared.errors import status_details
from tests.conftest import struct, wait_for
from tests.suite import Suite

GRANTED, DENIED = common_pb2.CONSENT_STATUS_GRANTED, common_pb2.CONSENT_STATUS_DENIED


def _background(suite: Suite, kind):
    gateway_built = suite._running[-1][0]
    return next(job.__self__ for job in gateway_built.background if isinstance(getattr(job, "__self__", None), kind))


def _event(message_id: str, customer: str, type_=common_pb2.EVENT_TYPE_PAGE_VIEW, *, seconds_ago: float = 0,
           consents=(), **fields) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.now(timezone.utc) - timedelta(seconds=seconds_ago))
    event = common_pb2.Event(message_id=message_id, type=type_, event_time=ts,
                             identities=[common_pb2.Identity(type="customer_id", value=customer)],
                             consents=[common_pb2.Consent(purpose=p, status=s) for p, s in consents], **fields)
    event.attributes.update({"club": "yes"})
    return event


def _buy(message_id: str, customer: str, *items: str, seconds_ago: float = 0) -> common_pb2.Event:
    return _event(message_id, customer, common_pb2.EVENT_TYPE_PURCHASE, seconds_ago=seconds_ago,
                  line_items=[common_pb2.LineItem(item_id=i, quantity=1, unit_price=10.0) for i in items])


async def _club(suite: Suite, md, events: list[common_pb2.Event], members: int) -> dict[str, str]:
    """A segment `club` of everyone the events name; returns customer -> unified id once all are in."""
    await suite.profile_admin.UpsertSegment(profile_pb.UpsertSegmentRequest(segment=profile_pb.Segment(
        name="club", rule='has(attributes.club) && attributes.club == "yes"')), metadata=md)
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events), metadata=md)

    async def everyone():
        page = await suite.profile_admin.ListSegmentMembers(profile_pb.ListSegmentMembersRequest(segment="club"),
                                                            metadata=md)
        status = await suite.gateway.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=md)
        return len(page.members) == members and status.pending_count == 0

    assert await wait_for(everyone, 60), "the events never put everyone in the segment"
    ids = {}
    for customer in sorted({e.identities[0].value for e in events}):
        reply = await suite.gateway.GetProfile(pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type="customer_id", value=customer)), metadata=md)
        ids[customer] = reply.unified_individual_id
    return ids


async def _content_point(suite: Suite, md, name: str, decisions: list[decision_pb.Decision], **point) -> None:
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name=name, type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]), **point)),
        metadata=md)
    for decision in decisions:
        decision.point_name = name
        await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision), metadata=md)


def _content(name: str, headline: str, **fields) -> decision_pb.Decision:
    return decision_pb.Decision(name=name, content=struct({"headline": headline}), **fields)


async def _finished(suite: Suite, md, job_id: str) -> pb.BatchJob:
    async def done():
        reply = await suite.gateway.GetBatchJob(pb.GetBatchJobRequest(job_id=job_id), metadata=md)
        return reply.job if reply.job.state in (pb.BATCH_JOB_STATE_SUCCEEDED, pb.BATCH_JOB_STATE_FAILED) else None

    job = await wait_for(done, 60)
    assert job is not None and job.state == pb.BATCH_JOB_STATE_SUCCEEDED, job
    return job


async def _rows(suite: Suite, md, job_id: str) -> dict[tuple[str, str], pb.BatchResultRow]:
    listed = await suite.gateway.ListBatchResults(pb.ListBatchResultsRequest(job_id=job_id), metadata=md)
    return {(r.unified_individual_id, r.point_name): r for r in listed.rows}


async def _decide(suite: Suite, md, customer: str, *points: str) -> list[pb.Personalization]:
    reply = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=common_pb2.Identity(type="customer_id", value=customer),
        personalization_points=[pb.PointRequest(name=p) for p in points],
        execution_flags=[pb.EXECUTION_FLAG_DIAGNOSTICS]), metadata=md)
    return list(reply.personalizations)


async def test_a_batch_job_builds_each_members_context_recommends_and_logs_its_decisions_as_batch(suite):
    _, md = await suite.new_tenant()
    await suite.profile_admin.UpsertItems(profile_pb.UpsertItemsRequest(items=[
        profile_pb.Item(item_id=f"sku-{i}", name=f"Item {i}") for i in range(1, 10)]), metadata=md)
    ids = await _club(suite, md, [
        _buy("b1", "cart_owner", "sku-1", "sku-2", seconds_ago=30),
        _event("c1", "cart_owner", common_pb2.EVENT_TYPE_ADD_TO_CART, item_id="sku-9", seconds_ago=20),
        _event("v1", "viewer", common_pb2.EVENT_TYPE_PRODUCT_VIEW, item_id="sku-5", seconds_ago=10),
        _buy("b2", "buyer", "sku-9", "sku-5", "sku-1"),
        _buy("b3", "buyer2", "sku-9", "sku-5"),
    ], members=4)
    await _content_point(suite, md, "cart_banner", [
        _content("your_cart", "Your cart is waiting", priority=10, rule="size(context.cart_item_ids) > 0"),
        _content("viewed", "Still thinking?", priority=5, rule='context.anchor_type == "product"'),
        _content("hello", "Hello", fallback=True)])
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="email_recs", type=decision_pb.POINT_TYPE_RECOMMENDATIONS,
        template=decision_pb.ResponseTemplate(item_attributes=["name"]))), metadata=md)
    await rec_grpc.RecommenderServiceStub(suite.channel).PutRecommender(rpb_put := rec_pb.PutRecommenderRequest(
        config=rec_pb.RecommenderConfig(name="best_sellers", strategy="top_sellers", context_filter=rec_pb.ContextFilter(
            exclude_anchor=True, exclude_cart=True))), metadata=md)
    assert rpb_put.config.name == "best_sellers"
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name="email_recs", name="best", fallback=True,
        recommendations=decision_pb.RecommendationSpec(recommender="best_sellers", count=5))), metadata=md)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await suite.gateway.StartBatchJob(pb.StartBatchJobRequest(
            segment="club", point_names=["cart_banner"], context_sources=[pb.BATCH_CONTEXT_SOURCE_UNSPECIFIED]),
            metadata=md)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(refused.value)[0]] == ["context_sources[0]"]

    started = await suite.gateway.StartBatchJob(pb.StartBatchJobRequest(
        segment="club", point_names=["cart_banner", "email_recs"],
        context_sources=[pb.BATCH_CONTEXT_SOURCE_LAST_CART, pb.BATCH_CONTEXT_SOURCE_RECENTLY_VIEWED]), metadata=md)
    assert list(started.job.context_sources) == [pb.BATCH_CONTEXT_SOURCE_LAST_CART,
                                                 pb.BATCH_CONTEXT_SOURCE_RECENTLY_VIEWED]
    job = await _finished(suite, md, started.job.job_id)
    assert (job.processed_count, job.row_count) == (4, 8)
    rows = await _rows(suite, md, job.job_id)
    headlines = {c: rows[(u, "cart_banner")].payload["data"][0]["headline"] for c, u in ids.items()}
    assert headlines == {"cart_owner": "Your cart is waiting", "viewer": "Still thinking?", "buyer": "Hello",
                         "buyer2": "Hello"}
    recs = {c: [item["item_id"] for item in rows[(u, "email_recs")].payload["data"]] for c, u in ids.items()}
    assert all(recs.values()), recs
    assert "sku-9" in recs["viewer"] and "sku-9" not in recs["cart_owner"]  # the cart is excluded, as online
    assert "sku-5" not in recs["viewer"]  # and the anchor
    # Shaped alike whether a member's items came by Recommend (an anchor: viewer) or by the batch stream (buyer).
    for customer in ("viewer", "buyer"):
        assert all(item["name"].startswith("Item ") and item["source"] == "best_sellers" and item["score"] > 0
                   for item in rows[(ids[customer], "email_recs")].payload["data"])

    # Real time with the same context serves the same content.
    reply = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=common_pb2.Identity(type="customer_id", value="cart_owner"),
        personalization_points=[pb.PointRequest(name="cart_banner")],
        context=pb.DecisionContext(cart_item_ids=["sku-9"])), metadata=md)
    assert reply.personalizations[0].decision_id == rows[(ids["cart_owner"], "cart_banner")].decision_id

    async def logged():
        page = await suite.decision_admin.ListDecisionLog(decision_pb.ListDecisionLogRequest(page_size=100),
                                                          metadata=md)
        return [e for e in page.entries if e.batch_job_id == job.job_id]

    entries = await wait_for(lambda: _enough(logged, 8))
    assert len(entries) == 8
    assert {(e.unified_individual_id, e.point_name) for e in entries} == set(rows)
    assert all(e.channel == "batch" and e.request_id == job.job_id for e in entries)
    assert {e.personalization_id for e in entries} == {r.personalization_id for r in rows.values()}
    viewer_recs = next(e for e in entries if e.unified_individual_id == ids["viewer"] and e.point_name == "email_recs")
    assert list(viewer_recs.item_ids) == recs["viewer"]  # what attribution credits; the payload is the batch row
    assert viewer_recs.anchor_id == "sku-5"


async def _enough(check, count: int):
    found = await check()
    return found if len(found) >= count else None


async def test_a_schedule_fires_when_the_controlled_clock_reaches_its_cron_time(suite):
    _, md = await suite.new_tenant()
    await _club(suite, md, [_event("p1", "one"), _event("p2", "two")], members=2)
    await _content_point(suite, md, "banner", [_content("hello", "Hello", fallback=True)])
    worker: BatchJobs = _background(suite, BatchJobs)
    clock = datetime(2030, 1, 1, 1, 0, tzinfo=timezone.utc)
    original = worker.now
    worker.now = lambda: clock
    try:
        upserted = await suite.gateway.UpsertBatchSchedule(pb.UpsertBatchScheduleRequest(schedule=pb.BatchSchedule(
            name="nightly", segment="club", point_names=["banner"], cron="0 3 * * *", enabled=True,
            context_sources=[pb.BATCH_CONTEXT_SOURCE_LAST_PURCHASE])), metadata=md)
        assert upserted.schedule.next_run_time.ToDatetime(tzinfo=timezone.utc) == clock.replace(hour=3)
        await asyncio.sleep(1.5)  # the leader looks for due schedules every second
        listed = await suite.gateway.ListBatchJobs(pb.ListBatchJobsRequest(), metadata=md)
        assert list(listed.jobs) == []  # 01:00: not due yet

        clock = datetime(2030, 1, 1, 3, 0, 1, tzinfo=timezone.utc)

        async def fired():
            jobs = await suite.gateway.ListBatchJobs(pb.ListBatchJobsRequest(), metadata=md)
            return list(jobs.jobs)

        jobs = await wait_for(fired)
        assert [(j.schedule_name, list(j.context_sources)) for j in jobs] == [
            ("nightly", [pb.BATCH_CONTEXT_SOURCE_LAST_PURCHASE])]
        job = await _finished(suite, md, jobs[0].job_id)
        assert (job.processed_count, job.row_count) == (2, 2)
        schedules = await suite.gateway.ListBatchSchedules(pb.ListBatchSchedulesRequest(), metadata=md)
        assert schedules.schedules[0].next_run_time.ToDatetime(tzinfo=timezone.utc) == datetime(
            2030, 1, 2, 3, 0, tzinfo=timezone.utc)
        await asyncio.sleep(1.5)
        again = await suite.gateway.ListBatchJobs(pb.ListBatchJobsRequest(), metadata=md)
        assert len(again.jobs) == 1  # fired once for 03:00
    finally:
        worker.now = original


async def test_consent_withdrawn_serves_the_fallback_on_the_next_request_in_decide_batch_and_activation(
        suite, tmp_path):
    tenant, md = await suite.new_tenant()
    ids = await _club(suite, md, [
        _event("g1", "grants", consents=[("marketing", GRANTED), ("personalization", GRANTED)]),
        _event("n1", "never"),
        _event("d1", "denies", consents=[("marketing", DENIED)]),
    ], members=3)
    await _content_point(suite, md, "offers", [
        _content("personal_offer", "20% off for you", priority=10, consent_purpose="marketing"),
        _content("generic", "Welcome", fallback=True)])
    await _content_point(suite, md, "for_you", [_content("picked", "Picked for you", fallback=True)],
                         consent_purpose="personalization")

    served = {c: [(p.decision_name, [d.code for d in p.diagnostics]) for p in await _decide(suite, md, c, "offers",
                                                                                              "for_you")]
              for c in ids}
    missing = pb.DIAGNOSTIC_CODE_CONSENT_MISSING
    assert served == {"grants": [("personal_offer", []), ("picked", [])],
                      "never": [("generic", [missing]), ("", [missing])],
                      "denies": [("generic", [missing]), ("", [missing])]}
    explained = (await _decide(suite, md, "never", "offers"))[0]
    assert [(r.decision_name, r.matched, r.error) for r in explained.explanation.rules] == [
        ("personal_offer", False, "consent 'marketing' not granted")]

    activations: Activations = _background(suite, Activations)
    # The suite's export root is shared by every test: set before the upsert wakes the gateway's own pass.
    activations.sink.root = tmp_path.resolve()
    await suite.gateway.UpsertDestination(pb.UpsertDestinationRequest(destination=pb.Destination(
        name="crm", file=pb.FileDestination(directory="crm", format=pb.FILE_FORMAT_JSONL))), metadata=md)
    await suite.gateway.UpsertActivation(pb.UpsertActivationRequest(activation=pb.Activation(
        name="club_flags", destination="crm", consent_purpose="marketing",
        segment_membership=pb.SegmentMembershipSource(segment="club"))), metadata=md)
    await activations.run_once(tenant)

    def exported():
        """The distinct rows written, in order (delivery is at least once: the leader may send one too)."""
        rows = [json.loads(line) for path in sorted((tmp_path / "crm").iterdir())
                for line in path.read_text().splitlines()]
        return list(dict.fromkeys((r["unified_individual_id"], r["member"]) for r in rows))

    assert exported() == [(ids["grants"], True)]

    # Withdrawal: the next request after the event is processed gets the fallback, and activation sends an exit.
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("g2", "grants", consents=[("marketing", DENIED)])]), metadata=md)

    async def withdrawn():
        profile = await suite.gateway.GetProfile(pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type="customer_id", value="grants")), metadata=md)
        return any(c.purpose == "marketing" and c.status == DENIED for c in profile.consents)

    assert await wait_for(withdrawn)
    after = await _decide(suite, md, "grants", "offers", "for_you")
    assert [(p.decision_name, [d.code for d in p.diagnostics]) for p in after] == [
        ("generic", [missing]), ("picked", [])]
    await activations.run_once(tenant)
    assert exported() == [(ids["grants"], True), (ids["grants"], False)]

    started = await suite.gateway.StartBatchJob(pb.StartBatchJobRequest(
        segment="club", point_names=["offers", "for_you"]), metadata=md)
    job = await _finished(suite, md, started.job.job_id)
    rows = await _rows(suite, md, job.job_id)
    assert {c: (rows[(u, "offers")].payload["decision_name"], rows[(u, "for_you")].decision_id != "")
            for c, u in ids.items()} == {"grants": ("generic", True), "never": ("generic", False),
                                         "denies": ("generic", False)}
    assert rows[(ids["never"], "for_you")].payload["diagnostics"][0]["code"] == "DIAGNOSTIC_CODE_CONSENT_MISSING"


async def test_a_point_that_requires_authentication_serves_unknown_individuals_only_its_fallback(suite):
    _, md = await suite.new_tenant()
    await _club(suite, md, [_event("k1", "known")], members=1)
    await _content_point(suite, md, "member_area", [
        _content("members", "Welcome back", priority=10),
        _content("public", "Sign in for more", fallback=True)], requires_authentication=True)
    await _content_point(suite, md, "members_only", [_content("secret", "Members only")],
                         requires_authentication=True)
    known = await _decide(suite, md, "known", "member_area")
    assert [(p.decision_name, list(p.diagnostics)) for p in known] == [("members", [])]
    stranger = await _decide(suite, md, "stranger", "member_area", "members_only")
    codes = [(p.decision_name, [d.code for d in p.diagnostics]) for p in stranger]
    assert codes == [
        ("public", [pb.DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL, pb.DIAGNOSTIC_CODE_AUTHENTICATION_REQUIRED]),
        ("", [pb.DIAGNOSTIC_CODE_UNKNOWN_INDIVIDUAL, pb.DIAGNOSTIC_CODE_AUTHENTICATION_REQUIRED])]
    assert "nothing was served" in stranger[1].diagnostics[1].message
    assert list(stranger[0].explanation.rules) == []  # no rule ran for the unknown individual


async def test_a_bad_consent_purpose_is_refused_with_the_field_named(suite):
    _, md = await suite.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
            name="p", type=decision_pb.POINT_TYPE_MANUAL_CONTENT, consent_purpose="Not A Purpose")), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["point.consent_purpose"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.UpsertActivation(pb.UpsertActivationRequest(activation=pb.Activation(
            name="a", destination="d", consent_purpose="x y", segment_membership=pb.SegmentMembershipSource(
                segment="s"))), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["activation.consent_purpose"]

