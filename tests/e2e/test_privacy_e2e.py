"""The right to be forgotten through the whole suite: an individual seeded through every path is forgotten, and no
table of any schema holds any of their identity values, ids or attribute values afterwards; their identities stay
suppressed until an admin lifts it. Also ExportIndividual, and the CLI's forget and export."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as profile_grpc
from services.gateway import activation as activation_module
from services.gateway.activation import Activations, ActivationSettings
from shared import client
from shared.errors import status_details
from shared.runtime import prepare_schema
from tests.conftest import struct, wait_for

POINT = "hero"
# The forgotten individual's values: raw as sent, and as the identity service normalizes them.
EMAIL = "Zqx.Forget@Example.COM"
EMAIL_NORM = "zqx.forget@example.com"
DEVICE = "dev-zqx-7731"
CUSTOMER = "cust-zqx-5521"
FIRST_NAME = "Zqxandria"
CITY = "Qwertyville-zqx"
ORDER = "order-zqx-901"
NEEDLES = [EMAIL, EMAIL_NORM, DEVICE, CUSTOMER, FIRST_NAME, CITY, ORDER]
TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb", "ARRAY", "USER-DEFINED", "bytea")


def _event(message_id, type_, *identities, attributes=None, properties=None, **fields) -> common_pb2.Event:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    event = common_pb2.Event(message_id=message_id, type=type_, event_time=ts,
                             identities=[common_pb2.Identity(type=t, value=v) for t, v in identities], **fields)
    if attributes:
        event.attributes.update(attributes)
    if properties:
        event.properties.update(properties)
    return event


async def _profile(suite, md, identity_type, value):
    try:
        return await suite.gateway.GetProfile(pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type=identity_type, value=value)), metadata=md)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return None


async def _configure(suite, md) -> dict[str, str]:
    await suite.profile_admin.UpsertInsight(profile_pb.UpsertInsightRequest(insight=profile_pb.Insight(
        name="spend", aggregate=profile_pb.AGGREGATE_SUM, field="revenue",
        event_type=common_pb2.EVENT_TYPE_PURCHASE)), metadata=md)
    await suite.profile_admin.UpsertSegment(profile_pb.UpsertSegmentRequest(segment=profile_pb.Segment(
        name="gold", rule='attributes.tier == "gold"')), metadata=md)
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name=POINT, type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING)]))), metadata=md)
    ids = {}
    for name, fallback in (("a", False), ("b", False), ("normal", True)):
        reply = await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(
            decision=decision_pb.Decision(point_name=POINT, name=name, rule="" if fallback else "false",
                                          fallback=fallback, content=struct({"headline": name}))), metadata=md)
        ids[name] = reply.decision.decision_id
    await suite.decision_admin.UpsertExperiment(decision_pb.UpsertExperimentRequest(
        experiment=decision_pb.Experiment(
            name="hero_test", point_name=POINT, primary_metric=decision_pb.METRIC_CONVERSION,
            cohorts=[decision_pb.Cohort(cohort_id="a", weight_bps=5000, decision_id=ids["a"]),
                     decision_pb.Cohort(cohort_id="b", weight_bps=5000, decision_id=ids["b"])],
            min_participants=300, chance_to_win_threshold=95.0,
            winner_selection=decision_pb.WINNER_SELECTION_MANUAL)), metadata=md)
    await suite.decision_admin.StartExperiment(decision_pb.StartExperimentRequest(name="hero_test"), metadata=md)
    return ids


async def _seed(suite, tenant, md, tmp_path) -> None:
    """The individual through every path: a device visitor and an email subscriber merged by a login, events of
    every type with attributes, consents, profile objects and line items, a decision in an experiment, a click
    outcome, a batch job output and an activation; plus a bystander who must survive the forget."""
    ev = common_pb2
    gold = {"tier": "gold", "first_name": FIRST_NAME, "city": CITY}
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("zqx-1", ev.EVENT_TYPE_PAGE_VIEW, ("device_id", DEVICE), properties={"url": "/zqx"}),
        _event("zqx-2", ev.EVENT_TYPE_PAGE_VIEW, ("email", EMAIL), attributes=gold,
               consents=[ev.Consent(purpose="email_marketing", status=ev.CONSENT_STATUS_GRANTED)]),
        _event("bystander-1", ev.EVENT_TYPE_PURCHASE, ("email", "bystander@example.com"),
               attributes={"tier": "gold", "first_name": "Bea"},
               line_items=[ev.LineItem(item_id="sku-1", quantity=1, unit_price=3)]),
    ]), metadata=md)
    assert await wait_for(lambda: _profile(suite, md, "email", EMAIL))
    assert await wait_for(lambda: _profile(suite, md, "device_id", DEVICE))
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("zqx-3", ev.EVENT_TYPE_LOGIN, ("device_id", DEVICE), ("email", EMAIL), ("customer_id", CUSTOMER)),
        _event("zqx-4", ev.EVENT_TYPE_PRODUCT_VIEW, ("customer_id", CUSTOMER), item_id="sku-1"),
        _event("zqx-5", ev.EVENT_TYPE_ADD_TO_CART, ("customer_id", CUSTOMER), item_id="sku-1"),
        _event("zqx-6", ev.EVENT_TYPE_PURCHASE, ("customer_id", CUSTOMER),
               line_items=[ev.LineItem(item_id="sku-1", quantity=2, unit_price=10.5)],
               profile_objects=[ev.ProfileObject(type="order", object_id=ORDER,
                                                 attributes=struct({"ship_to": CITY}))]),
        _event("zqx-7", ev.EVENT_TYPE_CUSTOM, ("email", EMAIL), name="quiz", properties={"answer": FIRST_NAME}),
    ]), metadata=md)

    async def merged():
        profile = await _profile(suite, md, "device_id", DEVICE)
        return profile if profile and len(profile.events) == 7 and profile.insights.get("spend") else None

    profile = await wait_for(merged)
    assert profile, "the events never reached one merged profile"
    assert "gold" in profile.segments
    who = common_pb2.Identity(type="email", value=EMAIL)
    decided = await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
        individual_id=who, personalization_points=[pb.PointRequest(name=POINT)]), metadata=md)
    served = decided.personalizations[0]
    assert served.experiment_id
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("zqx-8", ev.EVENT_TYPE_EMAIL_CLICK, ("email", EMAIL),
               properties={"personalization_id": served.personalization_id})]), metadata=md)

    job = await suite.gateway.StartBatchJob(pb.StartBatchJobRequest(segment="gold", point_names=[POINT]), metadata=md)

    async def finished():
        reply = await suite.gateway.GetBatchJob(pb.GetBatchJobRequest(job_id=job.job.job_id), metadata=md)
        return reply.job if reply.job.state == pb.BATCH_JOB_STATE_SUCCEEDED else None

    assert (await wait_for(finished)).row_count == 2

    pool = await prepare_schema(suite.dsn, "gateway", activation_module.__file__)
    channel = client.channel(f"127.0.0.1:{suite.ports['profile_graph']}")
    activations = Activations(pool, profile_grpc.ProfileGraphServiceStub(channel),
                              settings=ActivationSettings(interval_seconds=0.05, export_root=tmp_path))
    try:
        await activations.upsert_destination(tenant, pb.Destination(
            name="crm", file=pb.FileDestination(directory="crm", format=pb.FILE_FORMAT_JSONL)))
        await activations.upsert_activation(tenant, pb.Activation(
            name="gold_attrs", destination="crm",
            attributes=pb.AttributesSource(segment="gold", attributes=["first_name", "city"])))
        await activations.run_once(tenant)
    finally:
        await activations.close()
        await channel.close()
        await pool.close()
    assert FIRST_NAME in (tmp_path / "crm" / "gold_attrs.jsonl").read_text()

    async def clicked():
        conn = await asyncpg.connect(suite.dsn)
        try:
            return await conn.fetchval("SELECT count(*) FROM decision.outcomes WHERE tenant_id = $1"
                                       " AND type = 'CLICK'", tenant)
        finally:
            await conn.close()

    assert await wait_for(clicked), "the click never became an outcome"


async def _scan(dsn: str, needles: list[str], schemas: tuple[str, ...] | None = None) -> list[str]:
    """Every (schema.table.column, needle) where a text, json, array or bytea column of any table holds a needle."""
    conn = await asyncpg.connect(dsn)
    try:
        columns = await conn.fetch(
            "SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns AS c"
            " JOIN information_schema.tables AS t USING (table_schema, table_name)"
            " WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND c.data_type = ANY($1::text[])", list(TEXT_TYPES))
        found = []
        for c in columns:
            if schemas and c["table_schema"] not in schemas:
                continue
            name = f'"{c["table_schema"]}"."{c["table_name"]}"'
            column = f'"{c["column_name"]}"'
            for needle in needles:
                if c["data_type"] == "bytea":
                    sql = f"SELECT count(*) FROM {name} WHERE position(convert_to($1, 'UTF8') in {column}) > 0"
                else:
                    sql = f"SELECT count(*) FROM {name} WHERE strpos({column}::text, $1) > 0"
                if await conn.fetchval(sql, needle):
                    found.append(f"{c['table_schema']}.{c['table_name']}.{c['column_name']}: {needle}")
        return found
    finally:
        await conn.close()


async def test_a_forgotten_individual_leaves_no_value_in_any_table_and_stays_suppressed_until_lifted(
        suite, tmp_path):
    tenant, md = await suite.new_tenant()
    await _configure(suite, md)
    await _seed(suite, tenant, md, tmp_path)
    profile = await _profile(suite, md, "email", EMAIL)
    unified_id = profile.unified_individual_id
    individual = await identity_grpc.IdentityServiceStub(suite.channel).GetIndividual(
        identity_pb.GetIndividualRequest(unified_individual_id=unified_id), metadata=md)
    ids = [unified_id, *individual.individual.alias_ids]
    assert len(ids) == 2, "the login merged the device visitor and the subscriber"
    needles = NEEDLES + ids + [f"zqx-{i}" for i in range(1, 9)]
    before = await _scan(suite.dsn, needles)
    assert {f.split(": ")[1] for f in before} == set(needles), "the seed reached every value"

    exported = await suite.gateway.ExportIndividual(pb.ExportIndividualRequest(
        individual_id=common_pb2.Identity(type="device_id", value=DEVICE)), metadata=md)
    document = json.loads(exported.json)
    assert exported.unified_individual_id == unified_id
    assert {"identity", "profile_graph", "recommender", "decision", "gateway"} <= set(document)
    assert len(document["profile_graph"]["events"]) == 8
    assert {r["id_value"] for r in document["identity"]["identities"]} == {EMAIL_NORM, DEVICE, CUSTOMER}
    assert document["profile_graph"]["attributes"] and document["profile_graph"]["profile_objects"]
    assert document["profile_graph"]["consents"] and document["profile_graph"]["memberships"]
    assert document["recommender"]["interactions"] and document["decision"]["decision_log"]
    assert document["decision"]["outcomes"] and document["gateway"]["batch_results"]
    assert document["gateway"]["activation_state"] and document["gateway"]["deliveries"]
    assert {r["message_id"] for r in document["gateway"]["inbox"]} == {f"zqx-{i}" for i in range(1, 9)}
    assert "Bea" not in exported.json and "bystander" not in exported.json

    forgotten = await suite.gateway.ForgetIndividual(pb.ForgetIndividualRequest(
        individual_id=common_pb2.Identity(type="email", value=EMAIL)), metadata=md)
    assert not forgotten.already_forgotten and forgotten.suppressed_identity_count == 3
    assert all(forgotten.erased_rows[s] > 0 for s in ("identity", "profile_graph", "recommender", "decision",
                                                       "gateway")), dict(forgotten.erased_rows)

    assert await _scan(suite.dsn, needles) == []
    assert await _profile(suite, md, "email", EMAIL) is None
    bystander = await _profile(suite, md, "email", "bystander@example.com")
    assert bystander and "gold" in bystander.segments

    again = await suite.gateway.ForgetIndividual(pb.ForgetIndividualRequest(unified_individual_id=unified_id),
                                                 metadata=md)
    assert again.already_forgotten and not any(again.erased_rows.values())
    for who in (pb.ForgetIndividualRequest(individual_id=common_pb2.Identity(type="email", value="nobody@x.org")),
                pb.ForgetIndividualRequest(unified_individual_id="ind_unknown")):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await suite.gateway.ForgetIndividual(who, metadata=md)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await suite.gateway.ExportIndividual(pb.ExportIndividualRequest(
            individual_id=common_pb2.Identity(type="email", value=EMAIL)), metadata=md)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    # Suppression: the forgotten email comes back in an event; it is acknowledged and dropped, unattached.
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("again-1", common_pb2.EVENT_TYPE_PAGE_VIEW, ("email", EMAIL), ("device_id", "dev-new-zqx"),
               attributes={"first_name": FIRST_NAME}),
        _event("marker-1", common_pb2.EVENT_TYPE_PAGE_VIEW, ("email", "marker1@example.com"))]), metadata=md)
    assert await wait_for(lambda: _profile(suite, md, "email", "marker1@example.com"))  # processed in order
    assert await _profile(suite, md, "email", EMAIL) is None
    assert await _profile(suite, md, "device_id", "dev-new-zqx") is None
    assert await _scan(suite.dsn, [EMAIL_NORM, FIRST_NAME, "dev-new-zqx"],
                       schemas=("identity", "profile_graph", "recommender", "decision")) == []

    lifted = await suite.gateway.LiftSuppression(pb.LiftSuppressionRequest(
        identities=[common_pb2.Identity(type="email", value=EMAIL)]), metadata=md)
    assert lifted.lifted_count == 1
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("again-2", common_pb2.EVENT_TYPE_PAGE_VIEW, ("email", EMAIL))]), metadata=md)
    back = await wait_for(lambda: _profile(suite, md, "email", EMAIL))
    assert back and back.unified_individual_id not in ids


async def test_privacy_rpcs_need_the_admin_scope_and_a_target(suite):
    _, decide_only = await suite.new_tenant(scopes=("ingest", "decide"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await suite.gateway.ForgetIndividual(pb.ForgetIndividualRequest(unified_individual_id="ind_x"),
                                             metadata=decide_only)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _, md = await suite.new_tenant()
    for call, request in ((suite.gateway.ForgetIndividual, pb.ForgetIndividualRequest()),
                          (suite.gateway.ExportIndividual, pb.ExportIndividualRequest()),
                          (suite.gateway.LiftSuppression, pb.LiftSuppressionRequest())):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(request, metadata=md)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert status_details(error.value)[0][0][0] in ("individual_id", "identities")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await suite.gateway.ForgetIndividual(pb.ForgetIndividualRequest(
            individual_id=common_pb2.Identity(type="phone", value="not a phone")), metadata=md)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_details(error.value)[0][0][0] == "individual_id.value"


async def test_tailor_export_and_forget_on_the_command_line(suite, tmp_path):
    _, md = await suite.new_tenant()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        _event("cli-1", common_pb2.EVENT_TYPE_PAGE_VIEW, ("email", "cli.zqx@example.com"),
               attributes={"first_name": "Clio"})]), metadata=md)
    assert await wait_for(lambda: _profile(suite, md, "email", "cli.zqx@example.com"))
    common = ["--gateway", f"127.0.0.1:{suite.ports['gateway']}", "--api-key", md[0][1].split(" ", 1)[1],
              "--identity", "email:cli.zqx@example.com"]
    out = tmp_path / "export.json"
    assert (await _tailor("export", *common, "-o", str(out)))[0] == 0
    assert json.loads(out.read_text())["profile_graph"]["attributes"][0]["value"] == "Clio"
    code, _, err = await _tailor("forget", *common)
    assert code == 1 and "--yes" in err
    code, printed, _ = await _tailor("forget", *common, "--yes")
    assert code == 0 and json.loads(printed)["suppressed_identity_count"] == 1
    assert await _profile(suite, md, "email", "cli.zqx@example.com") is None


async def _tailor(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tailor"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()
