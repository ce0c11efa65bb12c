"""Erase and export in the recommender (trained models included) and the decision service, through real servers."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.decision.v1 import decision_service_pb2_grpc as decision_grpc
from personalization.recommender.v1 import recommender_service_pb2 as pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from services.decision.server import build as build_decision
from services.recommender.learned import Model
from services.recommender.server import Settings, build
from shared.errors import status_details
from tests.conftest import schema_connection, serving, tenant_md

PURCHASE = common_pb2.EVENT_TYPE_PURCHASE


@pytest.fixture(scope="module")
async def recommender(database_url):
    settings = Settings(cache_seconds=0.0, cache_items=30, catalog_seconds=0.0, model_check_seconds=0.0,
                        schedule_seconds=0.0)
    async with serving(await build(database_url, settings), pb_grpc.RecommenderServiceStub) as stub:
        yield stub


@pytest.fixture(scope="module")
async def decision(database_url):
    async with serving(await build_decision(database_url), decision_grpc.DecisionServiceStub) as stub:
        yield stub


def buy(message: str, who: str, item_id: str) -> pb.Interaction:
    return pb.Interaction(message_id=message, unified_individual_id=who, item_id=item_id, type=PURCHASE, quantity=1)


async def test_erasing_removes_interactions_histories_and_the_individuals_rows_of_trained_models(
        recommender, database_url, tenant):
    md = tenant_md(tenant)
    items = ["shoe1", "shoe2", "hat1", "hat2", "sock1"]
    await recommender.RecordInteractions(pb.RecordInteractionsRequest(interactions=[
        buy(f"b{n}-{k}", f"u{n}", i) for n in range(10) for k, i in enumerate(items[n % 3: n % 3 + 3])]), metadata=md)
    await recommender.PutRecommender(pb.PutRecommenderRequest(config=pb.RecommenderConfig(
        name="for_you", strategy="learned", fallback="top_sellers", parameters=pb.StrategyParameters(
            objective=pb.OBJECTIVE_MAXIMIZE_PURCHASES, factors=4, iterations=5))), metadata=md)
    [_ async for _ in recommender.TrainRecommender(pb.TrainRecommenderRequest(name="for_you"), metadata=md)]
    exported = json.loads((await recommender.ExportIndividual(pb.ExportIndividualRequest(
        unified_individual_ids=["u1"]), metadata=md)).json)
    assert {r["item_id"] for r in exported["interactions"]} == {"shoe2", "hat1", "hat2"}

    erased = await recommender.EraseIndividual(pb.EraseIndividualRequest(unified_individual_ids=["u1", "u2"]),
                                               metadata=md)

    assert erased.erased_rows == 6 + 6 + 1  # interactions, item histories, one model rewritten
    async with schema_connection(database_url, "recommender") as conn:
        left = await conn.fetchval("SELECT count(*) FROM interactions WHERE tenant_id = $1"
                                   " AND unified_individual_id = ANY($2)", tenant, ["u1", "u2"])
        payload = await conn.fetchval("SELECT payload FROM models WHERE tenant_id = $1", tenant)
    assert left == 0
    model = Model.from_bytes(bytes(payload))
    assert sorted(model.row) == sorted(f"u{n}" for n in range(10) if n not in (1, 2))
    assert model.user_factors.shape[0] == 8
    reply = await recommender.Recommend(pb.RecommendRequest(strategy="for_you", unified_individual_id="u3", count=2),
                                        metadata=md)
    assert len(reply.items) == 2
    assert (await recommender.ExportIndividual(pb.ExportIndividualRequest(unified_individual_ids=["u1"]),
                                               metadata=md)).json == "{}"


async def test_erasing_in_the_decision_service_removes_log_rows_outcomes_and_aliases(decision, database_url, tenant):
    md = tenant_md(tenant)
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    await decision.LogDecisions(decision_pb.LogDecisionsRequest(entries=[
        decision_pb.DecisionLogEntry(personalization_id=f"p-{who}", point_name="hero", unified_individual_id=who,
                                     log_time=now) for who in ("ind_a", "ind_b")]), metadata=md)
    await decision.RecordOutcomes(decision_pb.RecordOutcomesRequest(outcomes=[decision_pb.Outcome(
        outcome_id="o-1", unified_individual_id="ind_a", type=decision_pb.OUTCOME_TYPE_CLICK, time=now,
        personalization_id="p-ind_a")]), metadata=md)
    await decision.ReassignIndividual(decision_pb.ReassignIndividualRequest(
        from_unified_individual_ids=["ind_old"], to_unified_individual_id="ind_a"), metadata=md)
    document = json.loads((await decision.ExportIndividual(decision_pb.ExportIndividualRequest(
        unified_individual_ids=["ind_a"]), metadata=md)).json)
    assert set(document) == {"decision_log", "outcomes", "individual_aliases"}

    erased = await decision.EraseIndividual(decision_pb.EraseIndividualRequest(unified_individual_ids=["ind_a"]),
                                            metadata=md)

    assert erased.erased_rows == 3
    async with schema_connection(database_url, "decision") as conn:
        rows = await conn.fetch("SELECT unified_individual_id FROM decision_log WHERE tenant_id = $1", tenant)
    assert [r["unified_individual_id"] for r in rows] == ["ind_b"]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await decision.EraseIndividual(decision_pb.EraseIndividualRequest(unified_individual_ids=[""]), metadata=md)
    assert status_details(error.value)[0] == [("unified_individual_ids[0]", "must not be empty")]
