"""Next best promotion through the gateway with all five services: a bandit point configured through the admin API,
decided, clicked and bought through ingest, and the posteriors and counters moving in DIAGNOSTICS."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from tests.suite import Suite

EMAIL = "bandit@example.com"
WHO = common_pb2.Identity(type="email", value=EMAIL)


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


async def _ingest(suite: Suite, md, event: common_pb2.Event) -> None:
    reply = await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[event]), metadata=md)
    assert reply.acks[0].status == pb.ACK_STATUS_STORED


async def _eventually(check, what: str, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def _decide(suite: Suite, md, *flags) -> pb.Personalization:
    reply = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=WHO, personalization_points=[pb.PointRequest(name="offers")],
        execution_flags=[pb.EXECUTION_FLAG_DIAGNOSTICS, *flags]), metadata=md)
    return reply.personalizations[0]


async def test_outcomes_sent_through_ingest_move_the_posterior_shown_in_diagnostics(suite):
    _, md = await suite.new_tenant()
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="offers", type=decision_pb.POINT_TYPE_MANUAL_CONTENT,
        template=decision_pb.ResponseTemplate(fields=[decision_pb.TemplateField(
            name="headline", type=decision_pb.FIELD_TYPE_STRING)]),
        bandit=decision_pb.BanditConfig(reward=decision_pb.BANDIT_REWARD_CLICK))), metadata=md)
    for name, fallback in (("ten_off", False), ("free_ship", False), ("plain", True)):
        content = struct_pb2.Struct()
        content.update({"headline": name})
        await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
            point_name="offers", name=name, fallback=fallback, content=content)), metadata=md)
    await _ingest(suite, md, common_pb2.Event(message_id="seen", type=common_pb2.EVENT_TYPE_PAGE_VIEW,
                                              event_time=_now(), identities=[WHO]))

    async def known():  # resolved: the trial is then logged for the unified individual that outcomes name
        try:
            return await suite.gateway.GetProfile(pb.GetProfileRequest(individual_id=WHO), metadata=md)
        except grpc.aio.AioRpcError:
            return None

    await _eventually(known, "the individual was never resolved")
    served = await _decide(suite, md)  # recorded: one trial of the offer chosen
    trace = served.explanation.bandit
    assert {a.decision_name for a in trace.arms} == {"ten_off", "free_ship"} and not trace.holdout
    assert served.decision_name == max(trace.arms, key=lambda a: a.sampled).decision_name
    chosen = served.decision_id

    async def arm():
        p = await _decide(suite, md, pb.EXECUTION_FLAG_TEST_MODE)  # TEST_MODE: looking adds no trial
        return next(a for a in p.explanation.bandit.arms if a.decision_id == chosen)

    async def counted(trials: int, successes: int):
        a = await arm()
        return a if (a.trials, a.successes) == (trials, successes) else None

    await _eventually(lambda: counted(1, 0), "the trial never reached the posterior")
    clicked = struct_pb2.Struct()
    clicked.update({"personalization_id": served.personalization_id})
    await _ingest(suite, md, common_pb2.Event(message_id="click-1", type=common_pb2.EVENT_TYPE_CUSTOM, name="click",
                                              event_time=_now(), identities=[WHO], properties=clicked))
    a = await _eventually(lambda: counted(1, 1), "the click never reached the posterior")
    assert (a.alpha, a.beta) == (2.0, 1.0)
    assert 0.0 <= a.sampled <= 1.0
    # A purchase through ingest is credited to the same trial (last touch within the window): its revenue shows.
    await _ingest(suite, md, common_pb2.Event(
        message_id="buy-1", type=common_pb2.EVENT_TYPE_PURCHASE, event_time=_now(), identities=[WHO],
        line_items=[common_pb2.LineItem(item_id="sku-1", quantity=3, unit_price=8.5)]))

    async def paid():
        a = await arm()
        return a if a.revenue == 25.5 else None

    a = await _eventually(paid, "the purchase never reached the offer's counters")
    assert (a.trials, a.successes) == (1, 1)
