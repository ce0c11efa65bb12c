"""Bandit points through the decision service's gRPC server on real PostgreSQL: configuration, choices, trials and
rewards in the shared counters (exactly once, also under concurrency), and tenant isolation."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from personalization.decision.v1 import decision_service_pb2 as pb
from services.decision import bandit
from shared.errors import status_details
from tests.conftest import struct, tenant_md

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(value)
    return t


def banner(**bandit) -> pb.Point:
    return pb.Point(name="banner", type=pb.POINT_TYPE_MANUAL_CONTENT,
                    template=pb.ResponseTemplate(fields=[pb.TemplateField(name="headline", type=pb.FIELD_TYPE_STRING)]),
                    bandit=pb.BanditConfig(**bandit))


async def setup(stub, tenant, **bandit) -> dict[str, str]:
    md = tenant_md(tenant)
    await stub.UpsertPoint(pb.UpsertPointRequest(point=banner(**(bandit or {"reward": pb.BANDIT_REWARD_CLICK}))),
                           metadata=md)
    ids = {}
    for name, rule, fallback in (("ten_off", "", False), ("free_ship", "", False), ("never", "false", False),
                                 ("default", "", True)):
        d = await stub.UpsertDecision(pb.UpsertDecisionRequest(decision=pb.Decision(
            point_name="banner", name=name, rule=rule, fallback=fallback, content=struct({"headline": name}))),
            metadata=md)
        ids[name] = d.decision.decision_id
    return ids


async def serve(stub, tenant, who: str, pid: str, at: datetime = T0) -> pb.Qualification:
    """Qualify, then log the row as the gateway does for a bandit choice."""
    md = tenant_md(tenant)
    reply = await stub.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="banner")],
                                                 unified_individual_id=who), metadata=md)
    q = reply.qualifications[0]
    await stub.LogDecisions(pb.LogDecisionsRequest(entries=[pb.DecisionLogEntry(
        personalization_id=pid, point_name="banner", decision_id=q.decision.decision_id, unified_individual_id=who,
        log_time=ts(at), bandit_trial=q.HasField("bandit") and not q.bandit.holdout,
        bandit_segment=q.bandit.segment)]), metadata=md)
    return q


async def arms(db, tenant) -> dict[str, tuple]:
    rows = await db.fetch("SELECT decision_id, segment, trials, clicks, conversions, revenue, revenue_sq "
                          "FROM bandit_arms WHERE tenant_id = $1", tenant)
    return {r["decision_id"]: tuple(r)[1:] for r in rows}


async def test_a_bandit_point_is_stored_listed_and_chooses_among_matching_offers(server, tenant):
    ids = await setup(server, tenant, reward=pb.BANDIT_REWARD_REVENUE, min_offer_share=0.05, holdout_share=0.1,
                      segments=["vip"], attribution_window=duration_pb2.Duration(seconds=86400))
    listed = await server.ListPoints(pb.ListPointsRequest(), metadata=tenant_md(tenant))
    config = listed.points[0].bandit
    assert (config.reward, config.min_offer_share, config.holdout_share, list(config.segments),
            config.attribution_window.seconds) == (pb.BANDIT_REWARD_REVENUE, 0.05, 0.1, ["vip"], 86400)
    config = bandit.BanditConfig(holdout_share=0.1)
    ours = next(f"u{n}" for n in range(100) if not bandit.in_holdout(config, "banner", f"u{n}", random.Random()))
    held = next(f"u{n}" for n in range(100) if bandit.in_holdout(config, "banner", f"u{n}", random.Random()))
    reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="banner")] * 2,
                                                   unified_individual_id=ours), metadata=tenant_md(tenant))
    q = reply.qualifications[0]
    assert not q.bandit.holdout
    assert [a.decision_name for a in q.bandit.arms] == ["free_ship", "ten_off"]
    assert [e.decision_name for e in q.evaluations] == ["free_ship", "never", "ten_off"]
    assert q.decision.decision_id in (ids["ten_off"], ids["free_ship"])
    assert all(a.alpha == 1 and a.beta == 1 and a.trials == 0 and a.value_kappa == 1 for a in q.bandit.arms)
    reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="banner")],
                                                   unified_individual_id=held), metadata=tenant_md(tenant))
    q = reply.qualifications[0]
    assert q.bandit.holdout and not q.bandit.arms and q.decision.decision_id == ids["default"]


async def test_bad_bandit_configuration_is_invalid_argument_naming_each_field(server, tenant, db):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.UpsertPoint(pb.UpsertPointRequest(point=banner(min_offer_share=0.6, segments=["VIP"])),
                                 metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == [
        "point.bandit.reward", "point.bandit.min_offer_share", "point.bandit.segments[0]"]
    assert await db.fetchval("SELECT count(*) FROM points WHERE tenant_id = $1", tenant) == 0


async def test_trials_clicks_and_revenue_reach_the_shared_counters_once(server, tenant, db):
    ids = await setup(server, tenant)
    md = tenant_md(tenant)
    q = await serve(server, tenant, "u1", "p1")
    chosen = q.decision.decision_id
    assert chosen in (ids["ten_off"], ids["free_ship"])
    assert await arms(db, tenant) == {chosen: ("", 1, 0, 0, 0.0, 0.0)}
    click = pb.Outcome(outcome_id="c1", unified_individual_id="u1", type=pb.OUTCOME_TYPE_CLICK,
                       time=ts(T0 + timedelta(minutes=1)), personalization_id="p1")
    await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[click]), metadata=md)
    again = pb.Outcome(outcome_id="c2", unified_individual_id="u1", type=pb.OUTCOME_TYPE_CLICK,
                       time=ts(T0 + timedelta(minutes=2)), personalization_id="p1")
    await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[click, again]), metadata=md)
    for n, revenue in enumerate((30.0, 12.5)):
        await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[pb.Outcome(
            outcome_id=f"buy{n}", unified_individual_id="u1", type=pb.OUTCOME_TYPE_PURCHASE,
            time=ts(T0 + timedelta(minutes=5 + n)), revenue=revenue, item_ids=["sku"])]), metadata=md)
    assert await arms(db, tenant) == {chosen: ("", 1, 1, 1, 42.5, 42.5 ** 2)}
    row = await db.fetchrow("SELECT bandit_segment, bandit_clicks, bandit_conversions, bandit_revenue "
                            "FROM decision_log WHERE tenant_id = $1 AND personalization_id = 'p1'", tenant)
    assert tuple(row) == ("", 2, 2, 42.5)


async def test_purchases_credit_the_last_trial_within_the_window_and_merged_identities(server, tenant, db):
    await setup(server, tenant, reward=pb.BANDIT_REWARD_CONVERSION,
                attribution_window=duration_pb2.Duration(seconds=3600))
    md = tenant_md(tenant)
    first = await serve(server, tenant, "anon", "p1", T0)
    second = await serve(server, tenant, "anon", "p2", T0 + timedelta(minutes=10))
    await server.ReassignIndividual(pb.ReassignIndividualRequest(from_unified_individual_ids=["anon"],
                                                                 to_unified_individual_id="known"), metadata=md)
    await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[
        pb.Outcome(outcome_id="b1", unified_individual_id="known", type=pb.OUTCOME_TYPE_PURCHASE,
                   time=ts(T0 + timedelta(minutes=20)), revenue=10.0),
        pb.Outcome(outcome_id="late", unified_individual_id="known", type=pb.OUTCOME_TYPE_PURCHASE,
                   time=ts(T0 + timedelta(hours=3)), revenue=99.0)]), metadata=md)
    rows = await db.fetch("SELECT personalization_id, bandit_conversions, bandit_revenue FROM decision_log "
                          "WHERE tenant_id = $1 ORDER BY personalization_id", tenant)
    assert [tuple(r) for r in rows] == [("p1", 0, 0.0), ("p2", 1, 10.0)]
    counters = await arms(db, tenant)
    assert counters[second.decision.decision_id][3] == 1
    assert sum(c[1] for c in counters.values()) == 2 and sum(c[3] for c in counters.values()) == 1
    assert first.decision.decision_id in counters


async def test_a_purchase_recorded_late_for_a_merged_away_individual_credits_the_survivors_trial(
        server, tenant, db):
    await setup(server, tenant, reward=pb.BANDIT_REWARD_CONVERSION,
                attribution_window=duration_pb2.Duration(seconds=3600))
    md = tenant_md(tenant)
    await server.ReassignIndividual(pb.ReassignIndividualRequest(from_unified_individual_ids=["device"],
                                                                 to_unified_individual_id="customer"), metadata=md)
    served = await serve(server, tenant, "customer", "p1", T0)
    # The purchase was identified before the merge (as "device") and recorded after the trial.
    await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[pb.Outcome(
        outcome_id="b1", unified_individual_id="device", type=pb.OUTCOME_TYPE_PURCHASE,
        time=ts(T0 + timedelta(minutes=5)), revenue=10.0)]), metadata=md)
    row = await db.fetchrow("SELECT bandit_conversions, bandit_revenue FROM decision_log "
                            "WHERE tenant_id = $1 AND personalization_id = 'p1'", tenant)
    assert tuple(row) == (1, 10.0)
    assert (await arms(db, tenant))[served.decision.decision_id][3] == 1


async def test_concurrent_trials_and_outcomes_lose_no_update(server, tenant, db):
    ids = await setup(server, tenant)
    md = tenant_md(tenant)
    chosen = ids["ten_off"]

    async def trial(n: int) -> None:
        await server.LogDecisions(pb.LogDecisionsRequest(entries=[pb.DecisionLogEntry(
            personalization_id=f"p{n}", point_name="banner", decision_id=chosen, unified_individual_id=f"u{n}",
            log_time=ts(T0), bandit_trial=True)]), metadata=md)

    async def click(n: int) -> None:
        await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[pb.Outcome(
            outcome_id=f"c{n}", unified_individual_id=f"u{n}", type=pb.OUTCOME_TYPE_CLICK,
            time=ts(T0 + timedelta(seconds=1)), personalization_id=f"p{n}")]), metadata=md)

    await asyncio.gather(*(trial(n) for n in range(60)))
    await asyncio.gather(*(click(n) for n in range(60)), *(click(n) for n in range(0, 60, 2)))
    assert (await arms(db, tenant))[chosen][:3] == ("", 60, 60)


async def test_a_tenant_sees_only_its_own_posteriors(server, db):
    a, b = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}"
    ids_a = await setup(server, a)
    await setup(server, b)
    for n in range(5):
        await serve(server, a, f"u{n}", f"pa{n}")
    # Tenant b's click naming tenant a's personalization credits nothing anywhere.
    await server.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[pb.Outcome(
        outcome_id="x", unified_individual_id="u0", type=pb.OUTCOME_TYPE_CLICK, time=ts(T0 + timedelta(seconds=1)),
        personalization_id="pa0")]), metadata=tenant_md(b))
    assert sum(c[2] for c in (await arms(db, a)).values()) == 0
    assert await arms(db, b) == {}
    reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="banner")]), metadata=tenant_md(b))
    assert all(arm.trials == 0 for arm in reply.qualifications[0].bandit.arms)
    # Tenant a's counters show in its choices once the cached copy is reloaded (TAILOR_DECISION_CACHE_SECONDS).
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        reply = await server.Qualify(pb.QualifyRequest(points=[pb.PointSelection(name="banner")]),
                                     metadata=tenant_md(a))
        if sum(arm.trials for arm in reply.qualifications[0].bandit.arms) == 5:
            break
        assert asyncio.get_running_loop().time() < deadline, "tenant a's trials never showed"
        await asyncio.sleep(0.2)
    assert {arm.decision_id for arm in reply.qualifications[0].bandit.arms} == {ids_a["ten_off"], ids_a["free_ship"]}
