"""Configs, catalog, learned models, batch, similar items and evaluation through the gRPC server on a real
PostgreSQL; and co-bought items on the Online Retail data (December 2010) checked against the invoices."""

from __future__ import annotations

import csv
import gzip
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2

from personalization.common.v1 import common_pb2
from personalization.recommender.v1 import recommender_service_pb2 as pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from services.gateway.pipeline import interactions_of
from services.recommender.server import Settings, build
from shared.errors import status_details
from shared.runtime import start_built, stop_built
from tailor_cli.demo import events_from_rows
from tests.conftest import SHARED_DATA, tenant_md

PURCHASE = common_pb2.EVENT_TYPE_PURCHASE
VIEW = common_pb2.EVENT_TYPE_PRODUCT_VIEW
RETAIL = SHARED_DATA / "online-retail" / "online_retail_2010-12.csv.gz"


@pytest.fixture(scope="module")
async def servers(database_url):
    """Two replicas on the same database, as in a deployment."""
    settings = Settings(cache_seconds=0.0, cache_items=30, catalog_seconds=0.0, model_check_seconds=0.0,
                        schedule_seconds=0.0)
    started = []
    for _ in range(2):
        built = await build(database_url, settings)
        running, tasks = await start_built(built, port=0)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        started.append((built, running, tasks, channel))
    yield [pb_grpc.RecommenderServiceStub(s[3]) for s in started]
    for built, running, tasks, channel in started:
        await channel.close()
        await stop_built(built, running, tasks, grace=0)


@pytest.fixture
def stub(servers):
    return servers[0]


def value(v) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, str):
        out.string_value = v
    else:
        out.number_value = v
    return out


def item(item_id: str, **attributes) -> pb.Item:
    message = pb.Item(item_id=item_id)
    message.attributes.update(attributes)
    return message


def buy(message: str, who: str, item_id: str, quantity: float = 1.0) -> pb.Interaction:
    return pb.Interaction(message_id=message, unified_individual_id=who, item_id=item_id, type=PURCHASE,
                          quantity=quantity)


async def seed(stub, tenant):
    md = tenant_md(tenant)
    await stub.UpsertItems(pb.UpsertItemsRequest(items=[
        item("shoe1", category="shoes", price=50), item("shoe2", category="shoes", price=80),
        item("hat1", category="hats", price=20), item("hat2", category="hats", price=25),
        item("sock1", category="socks", price=5)]), metadata=md)
    units = {"shoe1": 5, "hat1": 4, "shoe2": 3, "sock1": 2, "hat2": 1}
    await stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=[
        buy(f"o-{i}", "someone", i, u) for i, u in units.items()]), metadata=md)
    # Ten individuals with overlapping baskets, for a learned model. Units are then hat1 14, shoe2 10, shoe1 9,
    # hat2 7, sock1 5.
    baskets = [buy(f"b{n}-{k}", f"u{n}", i) for n in range(10)
               for k, i in enumerate(["shoe1", "shoe2", "hat1", "hat2", "sock1"][n % 3: n % 3 + 3])]
    await stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=baskets), metadata=md)


async def test_a_configured_recommender_filters_diversifies_and_reports_diagnostics(stub, tenant):
    await seed(stub, tenant)
    md = tenant_md(tenant)
    config = pb.RecommenderConfig(
        name="under_60", strategy="top_sellers", count=3,
        include=[pb.Condition(attribute="price", operator=pb.OPERATOR_LESS_THAN, values=[value(60)])],
        diversity=pb.Diversity(attribute="category", max_per_value=1), fallback="most_viewed")
    stored = (await stub.PutRecommender(pb.PutRecommenderRequest(config=config), metadata=md)).config
    assert stored.name == "under_60" and stored.HasField("update_time")
    reply = await stub.Recommend(pb.RecommendRequest(strategy="under_60", diagnostics=True), metadata=md)
    assert [i.item_id for i in reply.items] == ["hat1", "shoe1", "sock1"]
    assert {i.source for i in reply.items} == {"under_60"}
    assert {f.filter: f.removed for f in reply.diagnostics.filters} == {"include[0]": 1}
    assert reply.diagnostics.diversity_removed == 1
    got = (await stub.GetRecommender(pb.GetRecommenderRequest(name="under_60"), metadata=md)).config
    assert got.include[0].values[0].number_value == 60 and got.fallback == "most_viewed"
    listed = await stub.ListRecommenders(pb.ListRecommendersRequest(), metadata=md)
    assert [c.name for c in listed.recommenders] == ["under_60"]


async def test_bad_configs_are_refused_with_field_paths_and_nothing_is_stored(stub, tenant):
    await seed(stub, tenant)
    md = tenant_md(tenant)
    config = pb.RecommenderConfig(
        name="bad", strategy="top_sellers", count=25, fallback="nowhere",
        include=[pb.Condition(attribute="colour", operator=pb.OPERATOR_EQUALS, values=[value("red")]),
                 pb.Condition(attribute="price", operator=pb.OPERATOR_IN)])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PutRecommender(pb.PutRecommenderRequest(config=config), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == [
        "config.include[0].attribute", "config.include[1].values", "config.count", "config.fallback"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetRecommender(pb.GetRecommenderRequest(name="bad"), metadata=md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_training_streams_progress_and_every_replica_serves_the_new_model(servers, tenant):
    first, second = servers
    await seed(first, tenant)
    md = tenant_md(tenant)
    config = pb.RecommenderConfig(name="for_you", strategy="learned", fallback="top_sellers", parameters=pb.StrategyParameters(
        objective=pb.OBJECTIVE_MAXIMIZE_PURCHASES, factors=4, iterations=5))
    await first.PutRecommender(pb.PutRecommenderRequest(config=config), metadata=md)
    steps = [s async for s in first.TrainRecommender(pb.TrainRecommenderRequest(name="for_you"), metadata=md)]
    assert steps[0].stage == "loading" and steps[-1].stage == "done" and steps[-1].fraction == 1.0
    assert steps[-1].model_version == 1 and steps[-1].individuals == 11
    reply = await second.Recommend(pb.RecommendRequest(strategy="for_you", unified_individual_id="u1", count=3,
                                                       diagnostics=True), metadata=md)
    assert len(reply.items) == 3 and reply.diagnostics.model_version == 1
    stranger = await second.Recommend(pb.RecommendRequest(strategy="for_you", unified_individual_id="nobody",
                                                          count=2), metadata=md)
    assert [(i.item_id, i.source) for i in stranger.items] == [("hat1", "top_sellers"), ("shoe2", "top_sellers")]
    stepped = [s async for s in first.TrainRecommender(pb.TrainRecommenderRequest(name="for_you"), metadata=md)]
    assert stepped[-1].model_version == 2


async def test_batch_streams_recommendations_for_every_individual(stub, tenant):
    await seed(stub, tenant)
    md = tenant_md(tenant)
    request = pb.RecommendBatchRequest(strategy="top_sellers", count=2, exclude_purchased=True, individuals=[
        pb.BatchIndividual(unified_individual_id=f"u{n}") for n in range(10)])
    results = [r async for chunk in stub.RecommendBatch(request, metadata=md) for r in chunk.results]
    assert [r.unified_individual_id for r in results] == [f"u{n}" for n in range(10)]
    assert all(len(r.items) == 2 for r in results)
    assert [i.item_id for i in results[0].items] == ["hat2", "sock1"]  # u0 bought shoe1, shoe2, hat1


async def test_a_compact_batch_sends_each_item_once_and_the_same_answers_as_indexes(stub, tenant):
    await seed(stub, tenant)
    md = tenant_md(tenant)
    people = [pb.BatchIndividual(unified_individual_id=f"u{n}") for n in range(10)]
    full = pb.RecommendBatchRequest(strategy="top_sellers", count=3, exclude_purchased=True, individuals=people,
                                    item_attributes=["category"])
    expected = [[(i.item_id, i.score, i.source, dict(i.attributes)) for i in r.items]
                async for chunk in stub.RecommendBatch(full, metadata=md) for r in chunk.results]
    compact = pb.RecommendBatchRequest()
    compact.CopyFrom(full)
    compact.compact = True
    table: list[pb.RecommendedItem] = []
    answers = []
    async for chunk in stub.RecommendBatch(compact, metadata=md):
        table.extend(chunk.items)
        for r in chunk.results:
            assert not r.items
            answers.append([(table[k].item_id, score, table[k].source, dict(table[k].attributes))
                            for k, score in zip(r.item_indexes, r.scores, strict=True)])
    assert answers == expected and any(expected)
    assert len({(i.item_id, i.source) for i in table}) == len(table)  # each item once
    assert all(i.attributes["category"] for i in table)


async def test_a_batch_says_whether_its_recommenders_read_the_affinities_sent(stub, tenant):
    await seed(stub, tenant)
    md = tenant_md(tenant)
    await stub.PutRecommender(pb.PutRecommenderRequest(config=pb.RecommenderConfig(
        name="boosted", strategy="top_sellers", boosters=[pb.Booster(attribute="category", weight=1.0)])),
        metadata=md)
    await stub.PutRecommender(pb.PutRecommenderRequest(config=pb.RecommenderConfig(
        name="falls_back_to_boosted", strategy="trending", fallback="boosted")), metadata=md)
    said = {}
    for strategy in ("top_sellers", "boosted", "falls_back_to_boosted"):
        for compact in (False, True):
            request = pb.RecommendBatchRequest(strategy=strategy, count=2, compact=compact, individuals=[
                pb.BatchIndividual(unified_individual_id=f"u{n}") for n in range(3)])
            said[strategy, compact] = {chunk.affinities_unused async for chunk in stub.RecommendBatch(
                request, metadata=md)}
    assert said == {("top_sellers", False): {True}, ("top_sellers", True): {True}, ("boosted", False): {False},
                    ("boosted", True): {False}, ("falls_back_to_boosted", False): {False},
                    ("falls_back_to_boosted", True): {False}}


async def test_similar_items_and_evaluation_answer_through_the_server(stub, tenant):
    await seed(stub, tenant)
    md = tenant_md(tenant)
    similar = await stub.SimilarItems(pb.SimilarItemsRequest(item_id="shoe1", count=1), metadata=md)
    assert [i.item_id for i in similar.items] == ["shoe2"]
    metrics = await stub.EvaluateRecommender(pb.EvaluateRecommenderRequest(name="top_sellers", k=3, seed=1),
                                             metadata=md)
    assert metrics.k == 3 and metrics.evaluated_individuals > 0 and 0 <= metrics.precision_at_k <= 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EvaluateRecommender(pb.EvaluateRecommenderRequest(name="top_sellers", k=500,
                                                                     test_fraction=1.5), metadata=md)
    assert [f for f, _ in status_details(info.value)[0]] == ["k", "test_fraction"]


async def test_co_bought_items_for_a_popular_online_retail_item_were_bought_with_it_never_cancelled(stub, tenant):
    md = tenant_md(tenant)
    orders: dict[str, Counter] = defaultdict(Counter)
    with gzip.open(RETAIL, "rt", newline="") as f:
        for row in csv.DictReader(f):
            if not row["InvoiceNo"].startswith("C") and float(row["Quantity"]) > 0:
                orders[row["InvoiceNo"]][row["StockCode"]] += float(row["Quantity"])
    # Every invoice as the pipeline forwards it: the cancellation invoices ("C") are returns, whose lines are no
    # shared basket.
    with gzip.open(RETAIL, "rt", newline="") as f:
        events = events_from_rows(list(csv.DictReader(f)), datetime.now(UTC))
    assert sum(1 for e in events if e.type == common_pb2.EVENT_TYPE_RETURN) == 326
    interactions = [i for e in events for i in interactions_of(f"buyer-{e.message_id}", e)]
    for start in range(0, len(interactions), 10_000):
        await stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=interactions[start:start + 10_000]),
                                      metadata=md)
    popular = (await stub.Recommend(pb.RecommendRequest(strategy="top_sellers", count=1), metadata=md)).items[0]
    cancelled = [e for e in events if e.type == common_pb2.EVENT_TYPE_RETURN]
    # The best seller, and 21527, which was cancelled together with several of its usual companions.
    for anchor in (popular.item_id, "21527"):
        reply = await stub.Recommend(pb.RecommendRequest(strategy="co_bought", anchor_item_id=anchor, count=12),
                                     metadata=md)
        assert len(reply.items) == 12
        together = Counter(code for lines in orders.values() if anchor in lines for code in lines if code != anchor)
        for recommended in reply.items:
            assert together[recommended.item_id] == recommended.score  # invoices shared with the anchor
        assert [i.item_id for i in reply.items][:3] == [code for code, _ in sorted(
            together.items(), key=lambda kv: (-kv[1], kv[0]))][:3]
    also_cancelled = {line.item_id for e in cancelled if "21527" in {li.item_id for li in e.line_items}
                      for line in e.line_items}
    assert len(also_cancelled & {i.item_id for i in reply.items}) >= 3

async def test_a_time_split_evaluation_and_a_tuned_training_answer_through_the_server(stub, tenant):
    md = tenant_md(tenant)
    start = datetime(2025, 3, 1, tzinfo=UTC)
    interactions = []
    for n in range(40):
        basket = [f"i{(n + k) % 12}" for k in range(6)]
        for k, item_id in enumerate(basket):
            line = buy(f"t{n}-{k}", f"p{n}", item_id)
            line.event_time.FromDatetime(start + timedelta(days=k * 6 + n % 3))
            interactions.append(line)
    await stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=interactions), metadata=md)
    cutoff = start + timedelta(days=24)
    request = pb.EvaluateRecommenderRequest(name="top_sellers", k=5, split=pb.EVALUATION_SPLIT_TIME)
    request.cutoff_time.FromDatetime(cutoff)
    metrics = await stub.EvaluateRecommender(request, metadata=md)
    assert metrics.cutoff_time.ToDatetime(tzinfo=UTC) == cutoff and metrics.evaluated_individuals == 40
    with pytest.raises(grpc.aio.AioRpcError) as info:
        request.split = pb.EVALUATION_SPLIT_RANDOM
        await stub.EvaluateRecommender(request, metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["cutoff_time"]

    config = pb.RecommenderConfig(name="tuned", strategy="learned", parameters=pb.StrategyParameters(
        objective=pb.OBJECTIVE_MAXIMIZE_PURCHASES, factors=8, iterations=5, validation_fraction=0.3,
        tuning_budget=duration_pb2.Duration(seconds=2)))
    stored = (await stub.PutRecommender(pb.PutRecommenderRequest(config=config), metadata=md)).config
    assert stored.parameters.tuning_budget.seconds == 2 and stored.parameters.validation_fraction == 0.3
    steps = [s async for s in stub.TrainRecommender(pb.TrainRecommenderRequest(name="tuned"), metadata=md)]
    trials = [s.trial for s in steps if s.stage == "tuning" and s.HasField("trial")]
    assert trials and trials[0].parameters.algorithm == "als" and trials[0].parameters.factors == 8
    done = steps[-1]
    assert done.stage == "done" and done.model_version == 1 and list(done.trials) == trials
    best = max(trials, key=lambda t: (t.precision_at_k, t.ndcg_at_k, -t.number))
    chosen = next(t for t in trials if t.parameters == done.parameters)
    assert best.precision_at_k / 1.02 <= chosen.precision_at_k <= best.precision_at_k


async def test_a_learned_batch_over_ids_with_any_characters_answers_as_recommend_does_in_both_forms(stub, tenant):
    """Training reads the interactions as CSV: ids with commas, quotes, newlines and other characters come back
    whole. The batch's learned heads, masked purchases and fallback answers match Recommend's, member by member, in
    the full and the compact form alike, in request order (an unknown member mixed in goes through the fallback)."""
    md = tenant_md(tenant)
    names = ["plain", 'quo"te', "com,ma", "new\nline", "tab\tand\\slash", "NULL", "ünï 💡", " spaced "]
    people = [f"p-{name}-{n}" for n in range(12) for name in names[n % 3::3]]
    goods = [f"g-{name}" for name in names] + [f"g{n}" for n in range(12)]
    bought = [buy(f"{who}|{k}", who, goods[(n * 7 + k * 3) % len(goods)])
              for n, who in enumerate(people) for k in range(4)]
    await stub.RecordInteractions(pb.RecordInteractionsRequest(interactions=bought), metadata=md)
    await stub.UpsertItems(pb.UpsertItemsRequest(items=[item(g, colour=g[::-1]) for g in goods[::2]]), metadata=md)
    config = pb.RecommenderConfig(name="learned_batch", strategy="learned", fallback="top_sellers",
                                  parameters=pb.StrategyParameters(objective=pb.OBJECTIVE_MAXIMIZE_PURCHASES,
                                                                   factors=4, iterations=5))
    await stub.PutRecommender(pb.PutRecommenderRequest(config=config), metadata=md)
    steps = [s async for s in stub.TrainRecommender(pb.TrainRecommenderRequest(name="learned_batch"), metadata=md)]
    assert steps[-1].individuals == len(people) and steps[-1].items == len({i.item_id for i in bought})
    members = people[:5] + ["someone unknown"] + people[5:]
    expected = []
    for who in members:
        reply = await stub.Recommend(pb.RecommendRequest(strategy="learned_batch", unified_individual_id=who,
                                                         count=4, exclude_purchased=True), metadata=md)
        expected.append([(i.item_id, round(i.score, 5), i.source) for i in reply.items])
    mine = {who: {i.item_id for i in bought if i.unified_individual_id == who} for who in people}
    assert all(len(items) == 4 and not mine[who] & {i for i, _, _ in items}
               for who, items in zip(members, expected) if who in mine)
    assert {s for _, _, s in expected[5]} == {"top_sellers"} and {s for _, _, s in expected[0]} == {"learned_batch"}
    assert {i for items in expected for i, _, _ in items} & {f"g-{name}" for name in names[1:]}
    request = pb.RecommendBatchRequest(strategy="learned_batch", count=4, exclude_purchased=True,
                                       individuals=[pb.BatchIndividual(unified_individual_id=u) for u in members],
                                       item_attributes=["colour"])
    full = [(r.unified_individual_id, [(i.item_id, round(i.score, 5), i.source, dict(i.attributes))
                                       for i in r.items])
            async for chunk in stub.RecommendBatch(request, metadata=md) for r in chunk.results]
    assert [(who, [i[:3] for i in items]) for who, items in full] == list(zip(members, expected))
    assert all(attributes == ({"colour": i[::-1]} if i in goods[::2] else {})
               for _, items in full for i, _, _, attributes in items)
    request.compact = True
    table: list[pb.RecommendedItem] = []
    compact = []
    async for chunk in stub.RecommendBatch(request, metadata=md):
        table.extend(chunk.items)
        compact += [(r.unified_individual_id, [(table[k].item_id, round(s, 5), table[k].source,
                                                dict(table[k].attributes))
                                               for k, s in zip(r.item_indexes, r.scores, strict=True)])
                    for r in chunk.results]
    assert compact == full


async def test_training_without_interactions_fails_its_precondition_and_stores_nothing(stub, tenant):
    md = tenant_md(tenant)
    config = pb.RecommenderConfig(name="empty", strategy="learned",
                                  parameters=pb.StrategyParameters(objective=pb.OBJECTIVE_MAXIMIZE_PURCHASES))
    await stub.PutRecommender(pb.PutRecommenderRequest(config=config), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [s async for s in stub.TrainRecommender(pb.TrainRecommenderRequest(name="empty"), metadata=md)]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(info.value)[1] == "NO_INTERACTIONS"
    reply = await stub.Recommend(pb.RecommendRequest(strategy="empty", unified_individual_id="anyone",
                                                     diagnostics=True), metadata=md)
    assert not reply.items and reply.diagnostics.model_version == 0
