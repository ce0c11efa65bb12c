"""Probabilistic (Fellegi-Sunter) rules through gRPC on PostgreSQL: training, accuracy against Splink on fake_1000,
re-runs, ExplainMatch, blank fields, model versions in the merge history, and errors."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import struct_pb2

from personalization.common.v1 import common_pb2
from personalization.identity.v1 import identity_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.server import build
from services.identity.service import Settings
from shared.errors import status_details
from tests.bench import _identity_data as data
from tests.conftest import serving, tenant_md

FAKE_ROWS = data.load_fake_1000()


@pytest.fixture(scope="module")
async def server(database_url):
    async with serving(await build(database_url, Settings(config_ttl_seconds=0)), pb_grpc.IdentityServiceStub) as stub:
        yield stub


@pytest.fixture(scope="module")
async def splink_f1():
    """Splink as its tutorials configure it for fake_1000 (tests/bench/identity_vs_splink.py), in this run."""
    from tests.bench.identity_vs_splink import splink_fake_1000

    accuracy, _ = await asyncio.to_thread(splink_fake_1000)
    return accuracy.f1


def subject(identities, attributes=None) -> pb.Subject:
    attrs = struct_pb2.Struct()
    attrs.update(attributes or {})
    return pb.Subject(identities=[common_pb2.Identity(type=t, value=v) for t, v in identities], attributes=attrs)


def rule_pb(rule) -> pb.MatchRule:
    """A rule of tests/bench/_identity_data.py as the proto carries it."""
    name, criteria, spec = (rule + (None,))[:3]
    if spec is None:
        return pb.MatchRule(name=name, criteria=[
            pb.MatchCriterion(**{"identity_type" if kind == "identity" else "attribute": field},
                              method=pb.MatchMethod.Value("MATCH_METHOD_" + method),
                              precision=pb.FuzzyPrecision.Value("FUZZY_PRECISION_" + precision) if precision else 0)
            for kind, field, method, precision in criteria])
    return pb.MatchRule(name=name, probabilistic=pb.ProbabilisticMatch(
        fields=[pb.ComparedField(**{"identity_type" if kind == "identity" else "attribute": field},
                                 comparison=pb.FieldComparison.Value("FIELD_COMPARISON_" + comparison),
                                 fuzzy_thresholds=thresholds)
                for kind, field, comparison, thresholds in spec["fields"]],
        blocking_rules=[pb.BlockingRule(fields=b) for b in spec["blocking"]],
        match_weight_threshold=spec["threshold"]))


async def configure(stub, tenant, rules, custom=()) -> pb.Ruleset:
    await stub.UpsertIdentityType(pb.UpsertIdentityTypeRequest(identity_type=pb.IdentityType(
        name="email", unique=False, normalization=pb.NORMALIZATION_EMAIL)), metadata=tenant_md(tenant))
    reply = await stub.CreateRuleset(pb.CreateRulesetRequest(ruleset=pb.Ruleset(
        rules=[rule_pb(r) for r in rules], custom_attributes=list(custom))), metadata=tenant_md(tenant))
    return reply.ruleset


async def resolve(stub, tenant, subjects, lookup_only=False) -> list[str]:
    reply = await stub.ResolveIdentities(pb.ResolveIdentitiesRequest(subjects=subjects, lookup_only=lookup_only),
                                         metadata=tenant_md(tenant))
    return [r.unified_individual_id for r in reply.resolutions]


async def train(stub, tenant) -> list[pb.TrainMatchModelResponse]:
    return [p async for p in stub.TrainMatchModel(pb.TrainMatchModelRequest(), metadata=tenant_md(tenant))]


async def run(stub, tenant) -> pb.RunRulesetResponse:
    return [p async for p in stub.RunRuleset(pb.RunRulesetRequest(), metadata=tenant_md(tenant))][-1]


async def explain(stub, tenant, left, right, version=0) -> pb.ExplainMatchResponse:
    return await stub.ExplainMatch(pb.ExplainMatchRequest(subjects=[left, right], model_version=version),
                                   metadata=tenant_md(tenant))


def fake_subject(row: data.Row) -> pb.Subject:
    return subject(row.identities, row.attributes)


async def load_train_run(stub, tenant, rules) -> tuple[data.Accuracy, pb.TrainMatchModelResponse, pb.RunRulesetResponse]:
    """fake_1000 resolved in real time, a model trained on it, a re-run; the accuracy of where records end up."""
    await configure(stub, tenant, rules)
    await resolve(stub, tenant, [fake_subject(r) for r in FAKE_ROWS])
    steps = await train(stub, tenant)
    done = await run(stub, tenant)
    found = await resolve(stub, tenant, [subject(r.identities[:1]) for r in FAKE_ROWS], lookup_only=True)
    predicted = {r.record_id: i for r, i in zip(FAKE_ROWS, found)}
    return data.pairwise(predicted, {r.record_id: r.cluster for r in FAKE_ROWS}), steps[-1], done


@pytest.fixture(scope="module")
async def trained(server):
    """A tenant with the probabilistic rule alone, fake_1000 loaded, a model trained and a re-run done."""
    tenant = "t_probabilistic_alone"
    accuracy, done, rerun = await load_train_run(server, tenant, [data.FAKE_PROBABILISTIC])
    return tenant, accuracy, done, rerun


async def test_training_streams_progress_and_stores_a_versioned_model(server, trained):
    tenant, _, done, _ = trained
    assert (done.phase, done.model_version, done.records, done.rule) == ("DONE", 1, 1000, "probabilistic")
    assert done.blocked_pairs > 1000 and 0 < done.prior < 0.05
    model = (await server.GetMatchModel(pb.GetMatchModelRequest(), metadata=tenant_md(tenant))).model
    assert (model.version, model.rule, model.records) == (1, "probabilistic", 1000)
    assert [f.field for f in model.fields] == ["first_name", "last_name", "date_of_birth", "city", "email"]
    assert [lv.level for lv in model.fields[2].levels] == [
        "exact", "one_edit", "within_31_days", "within_366_days", "within_3653_days", "else"]
    exact, disagree = model.fields[1].levels[0], model.fields[1].levels[-1]
    assert exact.weight > 3 > -1 > disagree.weight  # agreeing on a surname is evidence, disagreeing is against


async def test_the_probabilistic_rule_alone_reaches_splinks_f1_on_fake_1000(trained, splink_f1):
    _, accuracy, _, _ = trained
    assert accuracy.f1 >= splink_f1, (accuracy, splink_f1)
    assert accuracy.precision >= 0.95, accuracy
    assert accuracy.f1 >= 0.88, accuracy  # measured 0.907 (Splink: 0.594)


async def test_mixed_with_the_deterministic_rules_it_reaches_splinks_f1_on_fake_1000(server, tenant, splink_f1):
    accuracy, _, _ = await load_train_run(server, tenant, data.FAKE_RULES + [data.FAKE_PROBABILISTIC])
    assert accuracy.f1 >= splink_f1, (accuracy, splink_f1)
    assert accuracy.f1 >= 0.93, accuracy  # measured 0.944; the deterministic rules alone 0.928


async def test_merges_of_a_trained_model_survive_a_rerun(server, trained):
    tenant, accuracy, _, first = trained
    assert first.merged > 0 and first.clusters == accuracy.clusters
    again = await run(server, tenant)
    assert (again.clusters, again.new_ids, again.merged) == (first.clusters, 0, 0)


async def test_real_time_resolution_scores_with_the_model_and_records_its_version(server, trained):
    tenant, _, done, _ = trained
    row = next(r for r in FAKE_ROWS if r.attributes.get("date_of_birth") and len(r.attributes) == 4)
    [stored] = await resolve(server, tenant, [subject(row.identities[:1])], lookup_only=True)
    # A new key seen alone (a new individual), then with the person's attributes: a typo in the first name and the
    # date of birth left blank. The model links it to the stored person, so the two individuals merge.
    [fresh] = await resolve(server, tenant, [subject([("crm_contact_key", "new-1")])])
    changed = dict(row.attributes, first_name=row.attributes["first_name"] + "e")
    del changed["date_of_birth"]
    [again] = await resolve(server, tenant, [subject([("crm_contact_key", "new-1")], changed)])
    assert again == stored != fresh
    reply = await server.ListMergeEvents(pb.ListMergeEventsRequest(unified_individual_id=stored),
                                         metadata=tenant_md(tenant))
    merge = reply.merge_events[0]
    assert (merge.rule, merge.model_version, merge.survivor_individual_id, merge.other_individual_id) == (
        "probabilistic", done.model_version, stored, fresh)


async def test_explain_match_weights_add_up_to_the_score(server, trained):
    tenant, _, done, _ = trained
    a, b = [r for r in FAKE_ROWS if r.cluster == FAKE_ROWS[0].cluster][:2]
    reply = await explain(server, tenant, fake_subject(a), fake_subject(b))
    assert (reply.rule, reply.model_version) == ("probabilistic", done.model_version)
    assert [f.field for f in reply.fields] == ["first_name", "last_name", "date_of_birth", "city", "email"]
    assert reply.score == pytest.approx(reply.prior_weight + sum(f.weight for f in reply.fields))
    assert reply.matched == (reply.score >= reply.match_weight_threshold) and reply.match_weight_threshold == 4
    assert reply.match_probability == pytest.approx(1 / (1 + 2 ** -reply.score))
    model = (await server.GetMatchModel(pb.GetMatchModelRequest(version=done.model_version),
                                        metadata=tenant_md(tenant))).model
    for f, fm in zip(reply.fields, model.fields):
        if f.level_index >= 0:
            assert (f.level, f.weight) == (fm.levels[f.level_index].level, pytest.approx(fm.levels[f.level_index].weight))


async def test_a_blank_field_neither_blocks_nor_causes_a_match(server, trained):
    tenant, _, _, _ = trained
    # Two records blank in every field but the same email: the blanks weigh nothing, the email alone is not enough.
    left = subject([("crm_contact_key", "blank-1"), ("email", "same.person@example.com")])
    right = subject([("crm_contact_key", "blank-2"), ("email", "same.person@example.com")])
    reply = await explain(server, tenant, left, right)
    assert [(f.field, f.level, f.weight) for f in reply.fields[:4]] == [
        ("first_name", "null", 0), ("last_name", "null", 0), ("date_of_birth", "null", 0), ("city", "null", 0)]
    assert reply.score == pytest.approx(reply.prior_weight + reply.fields[4].weight) and not reply.matched
    one, two = await resolve(server, tenant, [left, right])
    assert one != two
    # A blank on one side changes nothing of the score of the others (neither for nor against the pair).
    full = {"first_name": "Ada", "last_name": "Lovelace", "date_of_birth": "1815-12-10"}
    with_city = await explain(server, tenant, subject([("crm_contact_key", "x")], full | {"city": "London"}),
                              subject([("crm_contact_key", "y")], full))
    without = await explain(server, tenant, subject([("crm_contact_key", "x")], full),
                            subject([("crm_contact_key", "y")], full))
    assert with_city.score == pytest.approx(without.score) and with_city.fields[3].level == "null"


async def test_explain_match_refuses_bad_input_and_unknown_models(server, trained, tenant):
    trained_tenant = trained[0]
    one = subject([("crm_contact_key", "a")], {"first_name": "Ada"})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.ExplainMatch(pb.ExplainMatchRequest(subjects=[one]), metadata=tenant_md(trained_tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["subjects"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await explain(server, trained_tenant, one, subject([("nope", "x")]))
    assert [f for f, _ in status_details(info.value)[0]] == ["subjects[1].identities[0].type"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await explain(server, trained_tenant, one, one, version=99)
    assert (info.value.code(), status_details(info.value)[1]) == (grpc.StatusCode.NOT_FOUND, "MATCH_MODEL_NOT_FOUND")
    # A tenant without a probabilistic rule, then with one but no model yet.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await explain(server, tenant, one, one)
    assert (info.value.code(), status_details(info.value)[1]) == (
        grpc.StatusCode.FAILED_PRECONDITION, "NO_PROBABILISTIC_RULE")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await train(server, tenant)
    assert (info.value.code(), status_details(info.value)[1]) == (
        grpc.StatusCode.FAILED_PRECONDITION, "NO_PROBABILISTIC_RULE")
    await configure(server, tenant, [data.FAKE_PROBABILISTIC])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await explain(server, tenant, one, one)
    assert (info.value.code(), status_details(info.value)[1]) == (
        grpc.StatusCode.FAILED_PRECONDITION, "MODEL_NOT_TRAINED")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await train(server, tenant)
    assert (info.value.code(), status_details(info.value)[1]) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                  "TOO_FEW_RECORDS")


async def test_a_bad_probabilistic_rule_is_refused_field_by_field(server, tenant):
    bad = pb.MatchRule(name="p", criteria=[pb.MatchCriterion(attribute="city", method=pb.MATCH_METHOD_EXACT)],
                       probabilistic=pb.ProbabilisticMatch(
                           fields=[pb.ComparedField(attribute="first_name", comparison=pb.FIELD_COMPARISON_TEXT,
                                                    fuzzy_thresholds=[0.8, 0.9]),
                                   pb.ComparedField(attribute="shoe_size", comparison=pb.FIELD_COMPARISON_EXACT),
                                   pb.ComparedField(attribute="city"),
                                   pb.ComparedField(attribute="last_name", comparison=pb.FIELD_COMPARISON_DATE,
                                                    fuzzy_thresholds=[0.9])],
                           blocking_rules=[pb.BlockingRule(fields=["first_name", "dob"]), pb.BlockingRule()]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server.CreateRuleset(pb.CreateRulesetRequest(ruleset=pb.Ruleset(rules=[bad])),
                                   metadata=tenant_md(tenant))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == [
        "ruleset.rules[0].criteria",
        "ruleset.rules[0].probabilistic.fields[0].fuzzy_thresholds",
        "ruleset.rules[0].probabilistic.fields[1].attribute",
        "ruleset.rules[0].probabilistic.fields[2].comparison",
        "ruleset.rules[0].probabilistic.fields[3].fuzzy_thresholds",
        "ruleset.rules[0].probabilistic.blocking_rules[0].fields[1]",
        "ruleset.rules[0].probabilistic.blocking_rules[1].fields",
    ]
    stored = await configure(server, tenant, [data.FAKE_PROBABILISTIC, ("email", [("identity", "email", "EXACT", "")])])
    got = (await server.GetRuleset(pb.GetRulesetRequest(), metadata=tenant_md(tenant))).ruleset
    assert got == stored and got.rules[0].probabilistic.match_weight_threshold == 4
    assert [list(b.fields) for b in got.rules[0].probabilistic.blocking_rules] == [
        ["first_name"], ["last_name"], ["date_of_birth"], ["email"]]


async def test_an_unmerge_of_a_probabilistic_merge_holds_through_a_rerun(server, trained):
    """Runs last in this module: it changes the trained tenant."""
    tenant = trained[0]
    reply = await server.ListMergeEvents(pb.ListMergeEventsRequest(page_size=1000), metadata=tenant_md(tenant))
    merge = next(e for e in reply.merge_events
                 if e.kind == pb.MERGE_EVENT_KIND_MERGE and e.rule == "ruleset_run" and e.model_version == 1)
    undone = await server.Unmerge(pb.UnmergeRequest(unified_individual_id=merge.other_individual_id),
                                  metadata=tenant_md(tenant))
    assert undone.survivor_individual_id == merge.survivor_individual_id
    again = await run(server, tenant)
    assert again.refused >= 1
    for individual in (merge.other_individual_id, merge.survivor_individual_id):
        found = await server.GetIndividual(pb.GetIndividualRequest(unified_individual_id=individual),
                                           metadata=tenant_md(tenant))
        assert found.individual.unified_individual_id == individual
