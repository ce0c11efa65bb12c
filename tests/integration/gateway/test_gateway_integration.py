"""The gateway on a real PostgreSQL and a real gRPC server: keys, scopes, ingest durability and deduplication."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from shared.errors import status_details
from tests.suite import Suite


@pytest.fixture
async def suite(database_url, monkeypatch):
    # Only the gateway: the worker stays off so the inbox can be inspected as ingest left it.
    monkeypatch.setenv("TAILOR_GATEWAY_RUN_WORKER", "false")
    s = await Suite(database_url).start(domain=False)
    yield s
    await s.stop()


def _events(*ids, minutes_ago=1):
    ts = timestamp_pb2.Timestamp(seconds=int(time.time()) - 60 * minutes_ago)
    return [common_pb2.Event(message_id=i, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=ts,
                             identities=[common_pb2.Identity(type="device_id", value=f"dev-{i}")]) for i in ids]


async def _inbox(dsn, tenant):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT message_id, payload FROM gateway.inbox WHERE tenant_id = $1 ORDER BY seq",
                                tenant)
    finally:
        await conn.close()


async def test_ingest_stores_events_and_a_resent_batch_is_acknowledged_as_duplicates(suite):
    tenant, md = await suite.new_tenant()
    first = await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=_events("a", "b")), metadata=md)
    assert [a.status for a in first.acks] == [pb.ACK_STATUS_STORED, pb.ACK_STATUS_STORED]
    again = await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=_events("b", "c", "c")), metadata=md)
    assert [(a.message_id, a.status) for a in again.acks] == [
        ("b", pb.ACK_STATUS_DUPLICATE), ("c", pb.ACK_STATUS_STORED), ("c", pb.ACK_STATUS_DUPLICATE)]
    rows = await _inbox(suite.dsn, tenant)
    assert [r["message_id"] for r in rows] == ["a", "b", "c"]
    assert common_pb2.Event.FromString(rows[0]["payload"]).identities[0].value == "dev-a"


async def test_a_malformed_event_fails_the_batch_with_field_paths_and_stores_nothing(suite):
    tenant, md = await suite.new_tenant()
    events = _events("x", "y")
    events[1].ClearField("event_time")
    events[1].identities[0].value = ""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(info.value)
    assert [f for f, _ in violations] == ["events[1].event_time", "events[1].identities[0].value"]
    assert await _inbox(suite.dsn, tenant) == []


async def test_skip_invalid_stores_the_valid_events_and_answers_each_invalid_one_with_its_violations(suite):
    tenant, md = await suite.new_tenant()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=_events("old")), metadata=md)
    events = _events("good", "bad", "old", "good2", "bad2")
    events[1].ClearField("event_time")
    events[1].identities[0].value = ""
    events[4].type = common_pb2.EVENT_TYPE_PURCHASE  # a purchase of no item
    reply = await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events, skip_invalid=True, bulk=True),
                                             metadata=md)
    assert [(a.message_id, a.status) for a in reply.acks] == [
        ("good", pb.ACK_STATUS_STORED), ("bad", pb.ACK_STATUS_REJECTED), ("old", pb.ACK_STATUS_DUPLICATE),
        ("good2", pb.ACK_STATUS_STORED), ("bad2", pb.ACK_STATUS_REJECTED)]
    assert [(v.field, v.description) for v in reply.acks[1].violations] == [
        ("events[1].event_time", "is required"), ("events[1].identities[0].value", "is required")]
    assert [v.field for v in reply.acks[4].violations] == ["events[4].line_items"]
    assert [a.violations for a in reply.acks if a.status != pb.ACK_STATUS_REJECTED] == [[], [], []]
    assert [r["message_id"] for r in await _inbox(suite.dsn, tenant)] == ["old", "good", "good2"]


async def test_skip_invalid_with_every_event_invalid_stores_nothing_and_a_bad_batch_is_still_refused(suite):
    tenant, md = await suite.new_tenant()
    events = _events("x")
    events[0].ClearField("identities")
    reply = await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events, skip_invalid=True), metadata=md)
    assert [(a.message_id, a.status, [v.field for v in a.violations]) for a in reply.acks] == [
        ("x", pb.ACK_STATUS_REJECTED, ["events[0].identities"])]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(skip_invalid=True), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["events"]
    assert await _inbox(suite.dsn, tenant) == []


async def test_the_stream_counts_what_it_stored_and_lists_the_duplicates(suite):
    tenant, md = await suite.new_tenant()

    async def messages():
        for batch in (("s1", "s2"), ("s2", "s3")):
            yield pb.StreamIngestEventsRequest(events=_events(*batch))

    reply = await suite.gateway.StreamIngestEvents(messages(), metadata=md)
    assert (reply.stored_count, reply.duplicate_count) == (3, 1)
    assert [(a.message_id, a.status) for a in reply.acks] == [("s2", pb.ACK_STATUS_DUPLICATE)]
    assert len(await _inbox(suite.dsn, tenant)) == 3


async def test_a_stream_with_skip_invalid_stores_the_valid_events_and_lists_each_rejection_by_message(suite):
    tenant, md = await suite.new_tenant()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=_events("seen")), metadata=md)

    async def messages():
        first = _events("v1", "no-time", "seen")
        first[1].ClearField("event_time")
        yield pb.StreamIngestEventsRequest(events=first, skip_invalid=True)
        all_bad = _events("no-ids")
        all_bad[0].ClearField("identities")
        yield pb.StreamIngestEventsRequest(events=all_bad, skip_invalid=True)
        # Repeats only of an event stored before the stream: two messages are written at once, so of a repeat
        # across them either copy may be the one stored first.
        yield pb.StreamIngestEventsRequest(events=_events("v2", "seen"), skip_invalid=True)

    reply = await suite.gateway.StreamIngestEvents(messages(), metadata=md)
    assert (reply.stored_count, reply.duplicate_count, reply.rejected_count) == (2, 2, 2)
    assert [(a.message_index, a.message_id, a.status, [v.field for v in a.violations]) for a in reply.acks] == [
        (0, "no-time", pb.ACK_STATUS_REJECTED, ["events[1].event_time"]),
        (0, "seen", pb.ACK_STATUS_DUPLICATE, []),
        (1, "no-ids", pb.ACK_STATUS_REJECTED, ["events[0].identities"]),
        (2, "seen", pb.ACK_STATUS_DUPLICATE, [])]
    assert sorted(r["message_id"] for r in await _inbox(suite.dsn, tenant)) == ["seen", "v1", "v2"]


async def test_a_stream_stores_each_persons_events_in_the_order_it_sent_them(suite):
    # The inbox's order (seq) is the order the pipeline applies one person's events in: a message written beside
    # an earlier one holding the same people would interleave with it.
    tenant, md = await suite.new_tenant()
    sent = [[f"o{m}-{n}" for n in range(400)] for m in range(12)]

    def person(message_id: str) -> str:
        return f"p{int(message_id.split('-')[1]) % 50}"

    async def messages():
        for ids in sent:
            events = _events(*ids)
            for event in events:
                event.identities[0].value = person(event.message_id)
            yield pb.StreamIngestEventsRequest(events=events)

    reply = await suite.gateway.StreamIngestEvents(messages(), metadata=md)
    assert reply.stored_count == 12 * 400
    stored = [r["message_id"] for r in await _inbox(suite.dsn, tenant)]
    in_order = [i for ids in sent for i in ids]
    for who in {person(i) for i in in_order}:
        assert [i for i in stored if person(i) == who] == [i for i in in_order if person(i) == who], who


async def test_calls_without_a_key_are_unauthenticated(suite):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=_events("a")))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status_details(info.value)[1] == "API_KEY_MISSING"


async def test_a_key_without_the_scope_is_permission_denied_for_ingest_and_admin_passthrough(suite):
    _, md = await suite.new_tenant(scopes=("decide",))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=_events("a")), metadata=md)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.decision_admin.ListPoints(decision_pb.ListPointsRequest(), metadata=md)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert status_details(info.value)[1] == "SCOPE_MISSING"


async def test_admin_creates_lists_and_revokes_keys_and_a_revoked_key_is_refused(suite):
    _, admin = await suite.new_tenant(scopes=("admin",))
    created = await suite.gateway.CreateApiKey(
        pb.CreateApiKeyRequest(display_name="ingest-bot", scopes=[pb.SCOPE_INGEST]), metadata=admin)
    md = (("authorization", f"Bearer {created.secret}"),)
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=_events("k1")), metadata=md)
    listed = await suite.gateway.ListApiKeys(pb.ListApiKeysRequest(page_size=1), metadata=admin)
    assert len(listed.api_keys) == 1 and listed.next_page_token
    page2 = await suite.gateway.ListApiKeys(pb.ListApiKeysRequest(page_token=listed.next_page_token),
                                            metadata=admin)
    assert [k.display_name for k in page2.api_keys] == ["ingest-bot"]
    assert not any(created.secret in str(k) for k in page2.api_keys)
    await suite.gateway.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=created.api_key.key_id), metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=_events("k2")), metadata=md)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_keys_are_stored_only_as_hashes(suite):
    _, md = await suite.new_tenant()
    secret = md[0][1].split(" ", 1)[1]
    conn = await asyncpg.connect(suite.dsn)
    try:
        stored = await conn.fetch("SELECT secret_hash::text AS h, key_id FROM gateway.api_keys")
    finally:
        await conn.close()
    assert stored and all(secret not in r["h"] and secret.split("_", 2)[2] not in r["h"] for r in stored)


async def test_revoking_an_unknown_key_is_not_found(suite):
    _, admin = await suite.new_tenant(scopes=("admin",))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.RevokeApiKey(pb.RevokeApiKeyRequest(key_id="nope"), metadata=admin)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_bad_message_ends_the_stream_with_its_index_and_earlier_messages_stay_stored(suite):
    tenant, md = await suite.new_tenant()

    async def messages():
        lenient = _events("ok1", "ok2", "skipped")  # skip_invalid holds for its own message only
        lenient[2].ClearField("event_time")
        yield pb.StreamIngestEventsRequest(events=lenient, skip_invalid=True)
        bad = _events("bad1")
        bad[0].ClearField("event_time")
        yield pb.StreamIngestEventsRequest(events=bad)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.StreamIngestEvents(messages(), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["events[0].event_time"]
    assert "stream message 1" in info.value.details()
    assert [r["message_id"] for r in await _inbox(suite.dsn, tenant)] == ["ok1", "ok2"]


async def test_a_store_that_loses_a_deadlock_to_a_concurrent_store_of_the_same_ids_is_run_again(suite):
    tenant, md = await suite.new_tenant()
    events = _events("dl-a", "dl-b")
    # This session checks for deadlocks only after 30 s (the gateway's after PostgreSQL's 1 s), so the gateway's
    # store is always the one rolled back, however late a loaded machine schedules its backend.
    conn = await asyncpg.connect(suite.dsn, server_settings={"deadlock_timeout": "30s"})
    try:
        async with conn.transaction():
            # Another store holds "dl-b" and will want "dl-a": the gateway's store takes "dl-a", waits on "dl-b", and
            # its deadlock check fires first, so it is the one PostgreSQL rolls back.
            insert = ("INSERT INTO gateway.inbox (tenant_id, message_id, payload, route, partition) "
                      "VALUES ($1, $2, $3, 0, 0)")
            await conn.execute(insert, tenant, "dl-b", events[1].SerializeToString())
            call = asyncio.ensure_future(
                suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events), metadata=md, timeout=30))
            waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                       "AND datname = current_database() AND pid <> pg_backend_pid()")
            deadline = time.monotonic() + 20
            while not await conn.fetchval(waiting):  # until the gateway's store waits on "dl-b"
                assert time.monotonic() < deadline and not call.done()
                await asyncio.sleep(0.02)
            await conn.execute(insert, tenant, "dl-a", events[0].SerializeToString())
        reply = await call
    finally:
        await conn.close()
    # The rolled-back store ran again after the other committed: both ids are acknowledged, as duplicates now.
    assert [(a.message_id, a.status) for a in reply.acks] == [
        ("dl-a", pb.ACK_STATUS_DUPLICATE), ("dl-b", pb.ACK_STATUS_DUPLICATE)]
    assert sorted(r["message_id"] for r in await _inbox(suite.dsn, tenant)) == ["dl-a", "dl-b"]
