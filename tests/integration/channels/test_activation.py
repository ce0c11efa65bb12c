"""Activation on a real PostgreSQL with the real profile graph service, a flaky webhook receiver and file sinks."""

from __future__ import annotations

import asyncio
import csv
import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

import services.gateway.activation as activation_module
from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as profile_grpc
from services.gateway.activation import Activations, ActivationSettings
from services.gateway.destinations import WebhookSender, parse_networks
from services.profile_graph.server import build as build_profile_graph
from shared import client
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.runtime import prepare_schema, start_built, stop_built
from tests.conftest import schema_connection, tenant_md, wait_for
from tests.integration.channels.receiver import Receiver

SECRET = "whsec-" + "x" * 26


@pytest.fixture(scope="module")
async def profile_graph(database_url):
    built = await build_profile_graph(database_url)
    running, tasks = await start_built(built)
    channel = client.channel(f"127.0.0.1:{running.port}")
    yield profile_grpc.ProfileGraphServiceStub(channel)
    await channel.close()
    await stop_built(built, running, tasks, grace=0)


@pytest.fixture(scope="module")
async def pool(database_url):
    pool = await prepare_schema(database_url, "gateway", activation_module.__file__)
    yield pool
    await pool.close()


@pytest.fixture
async def activations(pool, profile_graph, tmp_path):
    settings = ActivationSettings(interval_seconds=0.05, export_root=tmp_path, retry_max_seconds=0.05,
                                  webhook_allowed_networks=parse_networks("127.0.0.0/8"))
    a = Activations(pool, profile_graph, settings=settings, sender=WebhookSender(attempts=4, base_delay=0.01))
    yield a
    await a.close()


@pytest.fixture
async def db(database_url):
    async with schema_connection(database_url, "gateway") as conn:
        yield conn


async def set_tier(stub, tenant: str, tiers: dict[str, str], **extra) -> None:
    now = datetime.now(UTC)
    events = []
    for uid, tier in tiers.items():
        event = common_pb2.Event(message_id=uuid.uuid4().hex, type=common_pb2.EVENT_TYPE_PAGE_VIEW,
                                 identities=[common_pb2.Identity(type="email", value=f"{uid}@example.com")])
        event.event_time.FromDatetime(now)
        event.attributes.update({"tier": tier, **extra.get(uid, {})})
        events.append(profile_pb.IndividualEvent(unified_individual_id=uid, event=event))
    await stub.AppendEvents(profile_pb.AppendEventsRequest(events=events), metadata=tenant_md(tenant))


async def gold_segment(stub, tenant: str) -> None:
    await stub.UpsertSegment(profile_pb.UpsertSegmentRequest(segment=profile_pb.Segment(
        name="gold", rule='attributes.tier == "gold"')), metadata=tenant_md(tenant))


async def status(activations: Activations, tenant: str, name: str) -> pb.DeliveryStatus:
    listed, _ = await activations.list_activations(tenant, 0, "")
    return next(a for a in listed if a.name == name).status


def webhook(receiver: Receiver, name: str = "hook", batch_size: int = 20) -> pb.Destination:
    return pb.Destination(name=name, batch_size=batch_size, webhook=pb.WebhookDestination(
        url=receiver.url, secret=receiver.secret))


async def test_a_flaky_webhook_gets_every_row_once_per_delivery_id_and_an_exit_flips_the_flag(
        activations, profile_graph, tenant, db):
    receiver = await Receiver(SECRET, failure_rate=0.3).start()
    members = [f"u{i:04d}" for i in range(250)]
    await gold_segment(profile_graph, tenant)
    await set_tier(profile_graph, tenant, {uid: "gold" for uid in members})
    await activations.upsert_destination(tenant, webhook(receiver))
    stored = await activations.upsert_activation(tenant, pb.Activation(
        name="gold_members", destination="hook", segment_membership=pb.SegmentMembershipSource(segment="gold")))
    assert stored.name == "gold_members" and stored.HasField("status")

    leader = asyncio.create_task(activations.run())
    try:
        async def all_delivered(total):
            s = await status(activations, tenant, "gold_members")
            return s if s.delivered_rows == total and s.pending_rows == 0 else None

        first = await wait_for(lambda: all_delivered(250))
        assert first is not None, await status(activations, tenant, "gold_members")
        assert len(receiver.table) == 250 and all(row["member"] is True for row in receiver.table.values())

        leaving = members[:40]
        await set_tier(profile_graph, tenant, {uid: "silver" for uid in leaving})
        second = await wait_for(lambda: all_delivered(290))
        assert second is not None, await status(activations, tenant, "gold_members")
    finally:
        leader.cancel()
        await asyncio.gather(leader, return_exceptions=True)
        await receiver.stop()

    # Every delivery recorded is at the receiver with the same rows, each signature verified, batches bounded.
    recorded = {r["delivery_id"]: json.loads(r["rows"]) for r in await db.fetch(
        "SELECT delivery_id, rows::text AS rows FROM deliveries WHERE tenant_id = $1", tenant)}
    assert recorded == receiver.deliveries
    assert receiver.bad_signatures == 0 and receiver.failures > 0
    # Some answers were lost after the rows were stored: those deliveries came again under the same id.
    assert any(count > 1 for count in receiver.arrivals.values())
    assert all(len(rows) <= 20 for rows in recorded.values())
    assert sum(len(rows) for rows in recorded.values()) == 290
    # Upserted by (unified_individual_id, segment): exits flipped to false, no row deleted.
    assert len(receiver.table) == 250
    flags = {key[0]: row["member"] for key, row in receiver.table.items()}
    assert [uid for uid, member in flags.items() if not member] == sorted(leaving)
    assert sum(flags.values()) == 210
    assert second.failed_attempts == 0 and second.lag_seconds == 0 and second.HasField("last_delivery_time")


async def test_a_permanent_4xx_halts_the_activation_until_its_destination_is_upserted_again(
        activations, profile_graph, tenant):
    receiver = await Receiver(SECRET, status_override=400).start()
    try:
        await gold_segment(profile_graph, tenant)
        await set_tier(profile_graph, tenant, {f"p{i}": "gold" for i in range(5)})
        await activations.upsert_destination(tenant, webhook(receiver))
        await activations.upsert_activation(tenant, pb.Activation(
            name="gold_members", destination="hook", segment_membership=pb.SegmentMembershipSource(segment="gold")))
        await activations.run_once(tenant)
        await activations.run_once(tenant)
        halted = await status(activations, tenant, "gold_members")
        assert receiver.calls == 1
        assert (halted.pending_rows, halted.delivered_rows, halted.failed_attempts) == (5, 0, 1)
        assert "HTTP 400" in halted.last_error and halted.lag_seconds > 0

        receiver.status_override = None
        replaced = webhook(receiver)
        replaced.webhook.secret = ""     # write-only: the stored secret is kept
        await activations.upsert_destination(tenant, replaced)
        await activations.run_once(tenant)
        done = await status(activations, tenant, "gold_members")
        assert (done.pending_rows, done.delivered_rows) == (0, 5)
        assert receiver.bad_signatures == 0 and len(receiver.table) == 5
    finally:
        await receiver.stop()


async def test_file_sinks_get_membership_as_csv_and_changed_attributes_as_jsonl(
        activations, profile_graph, tenant, tmp_path):
    await gold_segment(profile_graph, tenant)
    await set_tier(profile_graph, tenant, {"a1": "gold", "a2": "gold", "a3": "silver"},
                   a1={"city": "Oslo"}, a2={"city": "Rome"})
    await activations.upsert_destination(tenant, pb.Destination(
        name="csv_out", file=pb.FileDestination(directory="crm/daily", format=pb.FILE_FORMAT_CSV)))
    await activations.upsert_destination(tenant, pb.Destination(
        name="jsonl_out", batch_size=1, file=pb.FileDestination(directory="crm/attrs", format=pb.FILE_FORMAT_JSONL)))
    await activations.upsert_activation(tenant, pb.Activation(
        name="gold_flags", destination="csv_out", segment_membership=pb.SegmentMembershipSource(segment="gold")))
    await activations.upsert_activation(tenant, pb.Activation(
        name="gold_attrs", destination="jsonl_out",
        attributes=pb.AttributesSource(segment="gold", attributes=["tier", "city"])))
    await activations.run_once(tenant)

    csv_path = tmp_path / "crm" / "daily" / "gold_flags.csv"
    jsonl_path = tmp_path / "crm" / "attrs" / "gold_attrs.jsonl"
    assert read_csv(csv_path) == [["unified_individual_id", "segment", "member"],
                                  ["a1", "gold", "true"], ["a2", "gold", "true"]]
    assert read_jsonl(jsonl_path) == [
        {"unified_individual_id": "a1", "segment": "gold", "tier": "gold", "city": "Oslo"},
        {"unified_individual_id": "a2", "segment": "gold", "tier": "gold", "city": "Rome"}]

    await activations.run_once(tenant)      # nothing changed: nothing appended
    await set_tier(profile_graph, tenant, {"a1": "gold", "a2": "silver"}, a1={"city": "Bergen"})
    await activations.run_once(tenant)
    assert read_csv(csv_path)[3:] == [["a2", "gold", "false"]]
    assert read_jsonl(jsonl_path)[2:] == [
        {"unified_individual_id": "a1", "segment": "gold", "tier": "gold", "city": "Bergen"}]
    attrs = await status(activations, tenant, "gold_attrs")
    assert (attrs.delivered_rows, attrs.pending_rows, attrs.last_error) == (3, 0, "")


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def insert_job(db, tenant: str, job_id: str, schedule: str, state: str, individuals: list[str]) -> None:
    await db.execute(
        "INSERT INTO batch_jobs (tenant_id, job_id, segment, point_names, state, schedule_name, ended_at) "
        "VALUES ($1, $2, 'gold', '{banner}', $3, $4, CASE WHEN $3 = 'SUCCEEDED' THEN now() END)",
        tenant, job_id, state, schedule)
    for uid in individuals:
        await db.execute(
            "INSERT INTO batch_results (tenant_id, job_id, unified_individual_id, point_name, individual_id, "
            "segment_id, point_id, decision_id, personalization_id, payload) "
            "VALUES ($1, $2, $3, 'banner', $3, 'gold', 'pt_1', 'dec_1', $4, $5::jsonb)",
            tenant, job_id, uid, f"pz_{job_id}_{uid}", json.dumps({"headline": f"hi {uid}"}))


async def test_batch_outputs_of_a_schedule_are_sent_once_each_after_their_job_succeeds(
        activations, tenant, db, tmp_path):
    await db.execute("INSERT INTO batch_schedules (tenant_id, name, segment, point_names, cron, next_run_at) "
                     "VALUES ($1, 'nightly', 'gold', '{banner}', '0 3 * * *', now())", tenant)
    await insert_job(db, tenant, "job_a", "nightly", "SUCCEEDED", ["u1", "u2", "u3"])
    await insert_job(db, tenant, "job_b", "nightly", "RUNNING", ["u1", "u4"])
    await insert_job(db, tenant, "job_c", "", "SUCCEEDED", ["u9"])
    await activations.upsert_destination(tenant, pb.Destination(
        name="files", batch_size=2, file=pb.FileDestination(directory="batch", format=pb.FILE_FORMAT_JSONL)))
    await activations.upsert_activation(tenant, pb.Activation(
        name="nightly_out", destination="files", batch_output=pb.BatchOutputSource(schedule_name="nightly")))
    path = tmp_path / "batch" / "nightly_out.jsonl"

    await activations.run_once(tenant)
    await activations.run_once(tenant)
    rows = read_jsonl(path)
    assert [(r["batch_job_id"], r["unified_individual_id"]) for r in rows] == [
        ("job_a", "u1"), ("job_a", "u2"), ("job_a", "u3")]
    assert rows[0]["payload"] == {"headline": "hi u1"} and rows[0]["point_name"] == "banner"

    await db.execute("UPDATE batch_jobs SET state = 'SUCCEEDED', ended_at = now() "
                     "WHERE tenant_id = $1 AND job_id = 'job_b'", tenant)
    await activations.run_once(tenant)
    assert [(r["batch_job_id"], r["unified_individual_id"]) for r in read_jsonl(path)[3:]] == [
        ("job_b", "u1"), ("job_b", "u4")]
    assert (await status(activations, tenant, "nightly_out")).delivered_rows == 5


async def test_bad_input_gets_a_precise_error_and_changes_nothing(activations, profile_graph, tenant):
    await gold_segment(profile_graph, tenant)
    with pytest.raises(InvalidArgument) as info:
        await activations.upsert_destination(tenant, pb.Destination(
            name="hook", webhook=pb.WebhookDestination(url="https://[::1]/hook", secret=SECRET)))
    assert [f for f, _ in info.value.violations] == ["destination.webhook.url"]
    assert "loopback" in info.value.violations[0][1]
    with pytest.raises(InvalidArgument) as info:
        await activations.upsert_destination(tenant, pb.Destination(
            name="hook", webhook=pb.WebhookDestination(url="http://10.0.0.1:9/hook")))
    assert [f for f, _ in info.value.violations] == ["destination.webhook.url", "destination.webhook.secret"]

    with pytest.raises(NotFound) as info:
        await activations.upsert_activation(tenant, pb.Activation(
            name="a", destination="nowhere", segment_membership=pb.SegmentMembershipSource(segment="gold")))
    assert info.value.reason == "DESTINATION_NOT_FOUND"

    await activations.upsert_destination(tenant, pb.Destination(
        name="files", file=pb.FileDestination(directory="x", format=pb.FILE_FORMAT_JSONL)))
    with pytest.raises(NotFound) as info:
        await activations.upsert_activation(tenant, pb.Activation(
            name="a", destination="files", segment_membership=pb.SegmentMembershipSource(segment="platinum")))
    assert info.value.reason == "SEGMENT_NOT_FOUND"
    with pytest.raises(NotFound) as info:
        await activations.upsert_activation(tenant, pb.Activation(
            name="a", destination="files", batch_output=pb.BatchOutputSource(schedule_name="weekly")))
    assert info.value.reason == "BATCH_SCHEDULE_NOT_FOUND"

    destinations, _ = await activations.list_destinations(tenant, 0, "")
    assert [d.name for d in destinations] == ["files"]
    assert (await activations.list_activations(tenant, 0, "")) == ([], "")


async def test_destinations_are_listed_page_by_page_without_secrets_and_per_tenant(activations, tenant):
    for name in ("c_hook", "a_hook", "b_hook"):
        await activations.upsert_destination(tenant, pb.Destination(name=name, webhook=pb.WebhookDestination(
            url="http://127.0.0.1:9/x", secret=SECRET)))
    page, token = await activations.list_destinations(tenant, 2, "")
    assert [d.name for d in page] == ["a_hook", "b_hook"] and token
    rest, last = await activations.list_destinations(tenant, 2, token)
    assert [d.name for d in rest] == ["c_hook"] and last == ""
    assert all(d.webhook.secret == "" and d.batch_size == 100 for d in page + rest)
    assert await activations.list_destinations(tenant + "_other", 0, "") == ([], "")


async def test_two_delivery_loops_on_one_database_elect_one_leader_so_each_delivery_is_sent_once(
        activations, pool, profile_graph, tenant):
    receiver = await Receiver(SECRET).start()
    other = Activations(pool, profile_graph, settings=activations.settings, sender=WebhookSender(base_delay=0.01))
    await gold_segment(profile_graph, tenant)
    await set_tier(profile_graph, tenant, {f"l{i}": "gold" for i in range(60)})
    await activations.upsert_destination(tenant, webhook(receiver, batch_size=5))
    await activations.upsert_activation(tenant, pb.Activation(
        name="gold_members", destination="hook", segment_membership=pb.SegmentMembershipSource(segment="gold")))
    loops = [asyncio.create_task(activations.run()), asyncio.create_task(other.run())]
    try:
        async def delivered():
            s = await status(activations, tenant, "gold_members")
            return s.delivered_rows == 60 and s.pending_rows == 0

        assert await wait_for(delivered)
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await other.close()
        await receiver.stop()
    assert len(receiver.deliveries) == 12 and set(receiver.arrivals.values()) == {1}


async def test_a_crash_between_sending_and_recording_resends_under_the_same_delivery_id(
        activations, profile_graph, tenant, db):
    receiver = await Receiver(SECRET).start()
    await gold_segment(profile_graph, tenant)
    await set_tier(profile_graph, tenant, {f"c{i}": "gold" for i in range(3)})
    await activations.upsert_destination(tenant, webhook(receiver))
    await activations.upsert_activation(tenant, pb.Activation(
        name="gold_members", destination="hook", segment_membership=pb.SegmentMembershipSource(segment="gold")))
    recorded = activations.store.mark_delivered

    async def killed(*args):
        raise RuntimeError("process killed after the receiver answered")

    try:
        activations.store.mark_delivered = killed
        await activations.run_once(tenant)
        activations.store.mark_delivered = recorded
        await activations.run_once(tenant)
    finally:
        await receiver.stop()
    ids = [r["delivery_id"] for r in await db.fetch("SELECT delivery_id FROM deliveries WHERE tenant_id = $1", tenant)]
    assert len(ids) == 1 and receiver.arrivals == {ids[0]: 2}
    assert (await status(activations, tenant, "gold_members")).delivered_rows == 3


# Control of activations: insights and field mapping, the change feed, pause, delete and the delivery record.

class CountingProfile:
    """The real profile graph stub, counting the calls made through it (which RPCs a refresh needs)."""

    def __init__(self, stub):
        self.stub, self.calls = stub, Counter()

    def __getattr__(self, name):
        method = getattr(self.stub, name)

        def call(*args, **kwargs):
            self.calls[name] += 1
            return method(*args, **kwargs)
        return call


async def test_insights_and_attributes_go_out_under_the_destinations_field_names(
        activations, profile_graph, tenant, tmp_path):
    md = tenant_md(tenant)
    await profile_graph.UpsertInsight(profile_pb.UpsertInsightRequest(insight=profile_pb.Insight(
        name="visits", aggregate=profile_pb.AGGREGATE_COUNT, event_type=common_pb2.EVENT_TYPE_PAGE_VIEW)), metadata=md)
    await gold_segment(profile_graph, tenant)
    await set_tier(profile_graph, tenant, {"m1": "gold"}, m1={"city": "Oslo"})
    await set_tier(profile_graph, tenant, {"m1": "gold", "m2": "gold"})
    await activations.upsert_destination(tenant, pb.Destination(
        name="crm", file=pb.FileDestination(directory="crm", format=pb.FILE_FORMAT_CSV)))
    stored = await activations.upsert_activation(tenant, pb.Activation(
        name="gold_crm", destination="crm",
        attributes=pb.AttributesSource(segment="gold", attributes=["city"], insights=["visits"]),
        field_mapping={"unified_individual_id": "customer_key", "visits": "web_visits"}))
    assert dict(stored.field_mapping) == {"unified_individual_id": "customer_key", "visits": "web_visits"}
    await activations.run_once(tenant)
    assert read_csv(tmp_path / "crm" / "gold_crm.csv") == [
        ["customer_key", "segment", "city", "web_visits"], ["m1", "gold", "Oslo", "2.0"], ["m2", "gold", "", "1.0"]]

    await set_tier(profile_graph, tenant, {"m2": "gold"})     # one more visit: only m2's row goes again
    await activations.run_once(tenant)
    assert read_csv(tmp_path / "crm" / "gold_crm.csv")[3:] == [["m2", "gold", "", "2.0"]]


async def test_field_mappings_and_insight_names_are_checked_field_by_field(activations, profile_graph, tenant):
    await gold_segment(profile_graph, tenant)
    await activations.upsert_destination(tenant, pb.Destination(
        name="files", file=pb.FileDestination(directory="x", format=pb.FILE_FORMAT_JSONL)))
    with pytest.raises(InvalidArgument) as info:
        await activations.upsert_activation(tenant, pb.Activation(
            name="bad", destination="files",
            attributes=pb.AttributesSource(segment="gold", attributes=["tier"], insights=["tier", "9lives"]),
            field_mapping={"nope": "x", "segment": "has space", "tier": "unified_individual_id"}))
    assert sorted(f for f, _ in info.value.violations) == sorted([
        "activation.attributes.insights[0]", "activation.attributes.insights[1]",
        "activation.field_mapping['nope']", "activation.field_mapping['segment']",
        "activation.field_mapping['tier']"])
    assert (await activations.list_activations(tenant, 0, "")) == ([], "")


async def test_the_change_feed_drives_membership_and_the_whole_segment_is_read_only_to_reconcile(
        pool, profile_graph, tenant, tmp_path):
    counting = CountingProfile(profile_graph)
    settings = ActivationSettings(interval_seconds=0.05, export_root=tmp_path, reconcile_seconds=3600.0)
    activations = Activations(pool, counting, settings=settings)
    try:
        await gold_segment(profile_graph, tenant)
        await set_tier(profile_graph, tenant, {f"f{i}": "gold" for i in range(5)})
        await activations.upsert_destination(tenant, pb.Destination(
            name="files", file=pb.FileDestination(directory="feed", format=pb.FILE_FORMAT_CSV)))
        await activations.upsert_activation(tenant, pb.Activation(
            name="gold_feed", destination="files", segment_membership=pb.SegmentMembershipSource(segment="gold")))
        path = tmp_path / "feed" / "gold_feed.csv"
        counting.calls.clear()
        await activations.run_once(tenant)      # the first pass compares the whole segment
        assert counting.calls["ListSegmentMembers"] >= 1
        assert [r[0] for r in read_csv(path)[1:]] == [f"f{i}" for i in range(5)]

        await set_tier(profile_graph, tenant, {"f0": "silver", "f9": "gold"})
        await set_tier(profile_graph, tenant, {"f9": "silver", "f8": "gold"})   # f9 in and out: nothing to send
        counting.calls.clear()
        await activations.run_once(tenant)
        assert counting.calls["ListSegmentMembers"] == 0 and counting.calls["ListMembershipChanges"] >= 1
        assert read_csv(path)[6:] == [["f8", "gold", "true"], ["f0", "gold", "false"]]
        await activations.run_once(tenant)
        assert len(read_csv(path)) == 8

        # A reconciliation that finds what the feed already sent sends nothing more.
        object.__setattr__(activations, "settings", ActivationSettings(
            interval_seconds=0.05, export_root=tmp_path, reconcile_seconds=0.0))
        counting.calls.clear()
        await activations.run_once(tenant)
        assert counting.calls["ListSegmentMembers"] >= 1 and len(read_csv(path)) == 8
    finally:
        await activations.close()


async def test_a_paused_activation_sends_nothing_and_catches_up_when_resumed(activations, profile_graph, tenant,
                                                                             tmp_path):
    await gold_segment(profile_graph, tenant)
    await set_tier(profile_graph, tenant, {"p1": "gold"})
    await activations.upsert_destination(tenant, pb.Destination(
        name="files", file=pb.FileDestination(directory="p", format=pb.FILE_FORMAT_CSV)))
    await activations.upsert_activation(tenant, pb.Activation(
        name="gold_p", destination="files", segment_membership=pb.SegmentMembershipSource(segment="gold")))
    path = tmp_path / "p" / "gold_p.csv"
    await activations.run_once(tenant)
    paused = await activations.set_activation_paused(tenant, "gold_p", True)
    assert paused.paused and paused.name == "gold_p"
    await set_tier(profile_graph, tenant, {"p2": "gold"})
    await activations.run_once(tenant)
    assert [r[0] for r in read_csv(path)[1:]] == ["p1"]
    # Upserting the same activation again keeps it paused (the flag is not part of the configuration).
    again = await activations.upsert_activation(tenant, pb.Activation(
        name="gold_p", destination="files", segment_membership=pb.SegmentMembershipSource(segment="gold")))
    assert again.paused
    assert not (await activations.set_activation_paused(tenant, "gold_p", False)).paused
    await activations.run_once(tenant)
    assert [r[0] for r in read_csv(path)[1:]] == ["p1", "p2"]


async def test_a_paused_destination_queues_deliveries_and_sends_them_in_order_when_resumed(
        activations, profile_graph, tenant, tmp_path):
    await gold_segment(profile_graph, tenant)
    await set_tier(profile_graph, tenant, {"q1": "gold", "q2": "gold"})
    await activations.upsert_destination(tenant, pb.Destination(
        name="files", batch_size=1, file=pb.FileDestination(directory="q", format=pb.FILE_FORMAT_CSV)))
    assert (await activations.set_destination_paused(tenant, "files", True)).paused
    await activations.upsert_activation(tenant, pb.Activation(
        name="gold_q", destination="files", segment_membership=pb.SegmentMembershipSource(segment="gold")))
    await activations.run_once(tenant)
    waiting = await status(activations, tenant, "gold_q")
    assert (waiting.pending_rows, waiting.delivered_rows) == (2, 0)
    assert not (tmp_path / "q" / "gold_q.csv").exists()
    listed, _ = await activations.list_destinations(tenant, 0, "")
    assert [d.paused for d in listed] == [True]
    await activations.set_destination_paused(tenant, "files", False)
    await activations.run_once(tenant)
    assert [r[0] for r in read_csv(tmp_path / "q" / "gold_q.csv")[1:]] == ["q1", "q2"]
    assert (await status(activations, tenant, "gold_q")).delivered_rows == 2


async def test_deleting_an_activation_drops_its_deliveries_and_frees_its_destination(
        activations, profile_graph, tenant, db):
    await gold_segment(profile_graph, tenant)
    await set_tier(profile_graph, tenant, {"d1": "gold", "d2": "gold"})
    await activations.upsert_destination(tenant, pb.Destination(
        name="files", file=pb.FileDestination(directory="d", format=pb.FILE_FORMAT_CSV)))
    await activations.upsert_activation(tenant, pb.Activation(
        name="gold_d", destination="files", segment_membership=pb.SegmentMembershipSource(segment="gold")))
    await activations.set_destination_paused(tenant, "files", True)
    await activations.run_once(tenant)
    with pytest.raises(FailedPrecondition) as info:
        await activations.delete_destination(tenant, "files")
    assert info.value.reason == "DESTINATION_IN_USE"
    assert await activations.delete_activation(tenant, "gold_d") == 1     # one undelivered delivery of two rows
    for table, column in (("deliveries", "activation"), ("activation_state", "activation"), ("activations", "name")):
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1 AND {column} = 'gold_d'",
                                 tenant) == 0
    await activations.delete_destination(tenant, "files")
    assert await activations.list_destinations(tenant, 0, "") == ([], "")
    for call in (activations.delete_destination(tenant, "files"), activations.delete_activation(tenant, "gold_d"),
                 activations.set_activation_paused(tenant, "gold_d", True),
                 activations.set_destination_paused(tenant + "_other", "files", True)):
        with pytest.raises(NotFound):
            await call


async def test_deliveries_are_listed_newest_first_with_every_failed_attempt(activations, profile_graph, tenant):
    receiver = await Receiver(SECRET, status_override=503).start()
    try:
        await gold_segment(profile_graph, tenant)
        await set_tier(profile_graph, tenant, {"r1": "gold", "r2": "gold", "r3": "gold"})
        await activations.upsert_destination(tenant, webhook(receiver, batch_size=1))
        await activations.upsert_activation(tenant, pb.Activation(
            name="gold_r", destination="hook", segment_membership=pb.SegmentMembershipSource(segment="gold")))
        await activations.run_once(tenant)
        await asyncio.sleep(0.1)                  # past the retry delay (retry_max_seconds is 0.05)
        await activations.run_once(tenant)
        pending, _ = await activations.list_deliveries(tenant, "gold_r", pb.DELIVERY_STATE_PENDING, 0, "")
        assert len(pending) == 3
        oldest = pending[-1]
        assert len(oldest.failed_attempts) == 2 and all("503" in a.error for a in oldest.failed_attempts)
        assert oldest.failed_attempts[0].attempt_time.ToDatetime() <= oldest.failed_attempts[1].attempt_time.ToDatetime()
        assert oldest.HasField("next_attempt_time") and not oldest.HasField("deliver_time")

        receiver.status_override = None
        await asyncio.sleep(0.1)
        await activations.run_once(tenant)
        first, token = await activations.list_deliveries(tenant, "gold_r", pb.DELIVERY_STATE_UNSPECIFIED, 2, "")
        rest, last = await activations.list_deliveries(tenant, "gold_r", pb.DELIVERY_STATE_UNSPECIFIED, 2, token)
        assert token and last == "" and len(first) == 2 and len(rest) == 1
        assert [d.delivery_id for d in first + rest] == [d.delivery_id for d in pending]
        assert all(d.state == pb.DELIVERY_STATE_DELIVERED and d.HasField("deliver_time") for d in first + rest)
        assert len(rest[0].failed_attempts) == 2                # the history stays after success
        assert await activations.list_deliveries(tenant, "gold_r", pb.DELIVERY_STATE_FAILED, 0, "") == ([], "")
    finally:
        await receiver.stop()
    with pytest.raises(InvalidArgument) as info:
        await activations.list_deliveries(tenant, "gold_r", 9, -1, "garbage!")
    assert [f for f, _ in info.value.violations] == ["state", "page_size", "page_token"]
    with pytest.raises(NotFound):
        await activations.list_deliveries(tenant, "nope", 0, 0, "")
