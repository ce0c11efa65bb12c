"""Pipeline workers on a real PostgreSQL and real services: partition leases, poison isolation, dead letters as an
API, and fairness between tenants."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.routing import route_of
from shared.errors import status_details
from tests.conftest import ROOT, tenant_md, wait_for
from tests.suite import Suite


@pytest.fixture
async def suite(database_url, monkeypatch):
    s = await Suite(database_url).start()
    yield s
    await s.stop()


@pytest.fixture
async def bare_suite(database_url, monkeypatch):
    """The five services without an in-process pipeline worker: workers run as separate processes."""
    monkeypatch.setenv("TAILOR_GATEWAY_RUN_WORKER", "false")
    s = await Suite(database_url).start()
    yield s
    await s.stop()


def _event(message_id: str, who: str) -> common_pb2.Event:
    return common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PAGE_VIEW,
                            event_time=timestamp_pb2.Timestamp(seconds=int(time.time()) - 5),
                            identities=[common_pb2.Identity(type="email", value=f"{who}@example.com")])


async def _visible(suite, md, who: str):
    try:
        reply = await suite.gateway.GetProfile(pb.GetProfileRequest(
            individual_id=common_pb2.Identity(type="email", value=f"{who}@example.com"), event_limit=100), metadata=md)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return None
    return reply


async def _backlog(suite, tenant: str, md, prefix: str, count: int, poison_every: int, bulk: bool = False) -> list:
    """count events of 700 people in messages of 1,000, then a poison row every poison_every; the replies."""
    replies = [await suite.gateway.IngestEvents(pb.IngestEventsRequest(
        events=[_event(f"{prefix}{i}", f"{prefix}{i % 700}") for i in range(start, start + 1000)], bulk=bulk),
        metadata=md) for start in range(0, count, 1000)]
    await _poisons(suite.dsn, tenant, [(f"poison-{i}", f"{prefix}{i % 700}") for i in range(0, count, poison_every)],
                   bulk=bulk)
    return replies


async def _poison(dsn: str, tenant: str, message_id: str, who: str, bulk: bool = False) -> None:
    await _poisons(dsn, tenant, [(message_id, who)], bulk)


async def _poisons(dsn: str, tenant: str, rows: list[tuple[str, str]], bulk: bool = False) -> None:
    """Acknowledged rows (message id, person) whose payload the pipeline cannot apply (as a bug or an older gateway
    could leave), inserted at once."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO gateway.inbox (tenant_id, message_id, payload, route, partition, bulk) "
            "VALUES ($1, $2, $3, $4, ((($4::bigint # hashtextextended($1, 0)) % 32) + 32) % 32, $5)",
            [(tenant, message_id, b"\xff\xff\xff not an event", route_of(_event(message_id, who)), bulk)
             for message_id, who in rows])
        await conn.execute("SELECT pg_notify('tailor_inbox', '')")
    finally:
        await conn.close()


async def test_a_poison_event_is_dead_lettered_listed_retried_and_discarded_while_the_rest_is_processed(suite):
    tenant, md = await suite.new_tenant()
    await _poison(suite.dsn, tenant, "bad-1", "ann")
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(
        events=[_event(f"ok-{i}", "ann" if i % 2 else f"p{i}") for i in range(40)]), metadata=md)

    async def dead():
        reply = await suite.gateway.ListDeadLetters(pb.ListDeadLettersRequest(), metadata=md)
        return list(reply.dead_letters)

    [letter] = await wait_for(dead)
    assert letter.message_id == "bad-1" and letter.reason == "INVALID_ARGUMENT" and letter.attempts == 1
    assert letter.HasField("fail_time") and letter.HasField("receive_time")
    ann = await wait_for(lambda: _visible(suite, md, "ann"))
    assert ann is not None
    await wait_for(lambda: _pending_is(suite, md, 0))
    status = await suite.gateway.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=md)
    assert (status.pending_count, status.dead_letter_count) == (0, 1)
    # Ann's 20 good events are all there: the poison held back nobody once it was dead-lettered.
    assert len((await wait_for(lambda: _events_of(suite, md, "ann", 20))).events) == 20

    by_reason = await suite.gateway.ListDeadLetters(pb.ListDeadLettersRequest(
        filter=pb.DeadLetterFilter(reason="INTERNAL")), metadata=md)
    assert list(by_reason.dead_letters) == []
    retried = await suite.gateway.RetryDeadLetters(pb.RetryDeadLettersRequest(message_ids=["bad-1"]), metadata=md)
    assert retried.retried_count == 1
    [again] = await wait_for(dead)
    assert again.message_id == "bad-1"
    discarded = await suite.gateway.DiscardDeadLetters(pb.DiscardDeadLettersRequest(
        filter=pb.DeadLetterFilter(reason="INVALID_ARGUMENT"), all_matching=True), metadata=md)
    assert discarded.discarded_count == 1
    assert await dead() == []


async def _pending_is(suite, md, count: int) -> bool:
    status = await suite.gateway.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=md)
    return status.pending_count == count


async def _events_of(suite, md, who: str, count: int):
    reply = await _visible(suite, md, who)
    return reply if reply is not None and len(reply.events) >= count else None


async def test_dead_letter_requests_are_checked_field_by_field_and_scoped_to_admins(suite):
    _, md = await suite.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.ListDeadLetters(pb.ListDeadLettersRequest(
            filter=pb.DeadLetterFilter(reason="BROKEN", fail_time_from=timestamp_pb2.Timestamp(seconds=100),
                                       fail_time_to=timestamp_pb2.Timestamp(seconds=50)), page_size=-1), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(info.value)[0]] == ["filter.reason", "filter.fail_time_to", "page_size"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.RetryDeadLetters(pb.RetryDeadLettersRequest(), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_details(info.value)[0][0][0] == "message_ids"
    _, ingest_only = await suite.new_tenant(scopes=("ingest",))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.DiscardDeadLetters(pb.DiscardDeadLettersRequest(message_ids=["x"]), metadata=ingest_only)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_tenants_backlog_with_poison_does_not_hold_back_another_tenants_event(suite):
    flood, flood_md = await suite.new_tenant()
    quiet, quiet_md = await suite.new_tenant()
    await _backlog(suite, flood, flood_md, "f", 6000, 100)
    sent = time.monotonic()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[_event("q1", "quiet")]), metadata=quiet_md)
    assert await wait_for(lambda: _visible(suite, quiet_md, "quiet"), timeout=10)
    waited = time.monotonic() - sent
    flood_status = await suite.gateway.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=flood_md)
    # The quiet tenant's event did not wait for the flood's backlog to drain.
    assert flood_status.pending_count > 0, "the flood drained first; the test proves nothing on this machine"
    assert waited < 2.0
    assert await wait_for(lambda: _pending_is(suite, flood_md, 0), timeout=60)
    status = await suite.gateway.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=flood_md)
    assert status.dead_letter_count == 60


async def test_a_tenants_bulk_backlog_waits_behind_live_events_of_every_tenant_and_drains_once_it_stops(suite):
    importer, importer_md = await suite.new_tenant()
    _, live_md = await suite.new_tenant()
    # A backfill (acknowledged at once, applied behind live events) with bulk rows the pipeline cannot apply
    # (bisected out and dead-lettered).
    replies = await _backlog(suite, importer, importer_md, "b", 4000, 400, bulk=True)
    for reply in replies:
        assert {a.status for a in reply.acks} == {pb.ACK_STATUS_STORED}
    status = await suite.gateway.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=importer_md)
    assert status.bulk_pending_count == status.pending_count > 3000
    assert status.oldest_live_pending_seconds == 0

    sent = time.monotonic()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[_event("l1", "live")]), metadata=live_md)
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[_event("own1", "own")]), metadata=importer_md)
    # Another tenant's live event, and the importing tenant's own, do not wait for the bulk backlog.
    assert await wait_for(lambda: _visible(suite, live_md, "live"), timeout=10)
    assert await wait_for(lambda: _visible(suite, importer_md, "own"), timeout=10)
    waited = time.monotonic() - sent
    status = await suite.gateway.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=importer_md)
    assert status.bulk_pending_count > 0, "the backlog drained first; the test proves nothing on this machine"
    assert waited < 3.0
    # With nothing more arriving, the backlog is applied at full speed; the poisoned rows are dead letters.
    assert await wait_for(lambda: _pending_is(suite, importer_md, 0), timeout=90)
    status = await suite.gateway.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=importer_md)
    assert (status.dead_letter_count, status.bulk_pending_count) == (10, 0)
    assert await _events_of(suite, importer_md, "b699", 5)  # b699, b1399, ... b3499: the bulk rows of one person


def _worker_process(dsn: str, suite: Suite, lease: float) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=dsn, TAILOR_PIPELINE_LEASE_SECONDS=str(lease), TAILOR_PIPELINE_PORT="0",
               PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'protos'}", TAILOR_LOG_LEVEL="WARNING")
    for name in ("identity", "profile_graph", "recommender", "decision"):
        env[f"TAILOR_{name.upper()}_ADDR"] = f"127.0.0.1:{suite.ports[name]}"
    return subprocess.Popen([sys.executable, "-m", "services.gateway.pipeline"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_workers(workers: list[subprocess.Popen]) -> None:
    """SIGTERM to the worker processes still running, then a kill for any that does not end within 10 s."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()


async def _owners(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT owner, count(*) AS n FROM gateway.pipeline_partitions "
                                "WHERE lease_until > now() AND owner IS NOT NULL GROUP BY owner")
        return {r["owner"]: r["n"] for r in rows}
    finally:
        await conn.close()


async def test_worker_processes_share_the_partitions_and_a_killed_workers_partitions_move(bare_suite):
    suite = bare_suite
    workers = [_worker_process(suite.dsn, suite, lease=1.0) for _ in range(2)]
    try:
        async def split_evenly():
            owners = await _owners(suite.dsn)
            return owners if sorted(owners.values()) == [16, 16] else None

        owners = await wait_for(split_evenly, timeout=30)
        assert owners, f"partitions never split evenly: {await _owners(suite.dsn)}"
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        started = time.monotonic()

        async def one_owner():
            owners = await _owners(suite.dsn)
            return owners if list(owners.values()) == [32] else None

        assert await wait_for(one_owner, timeout=15), await _owners(suite.dsn)
        moved_after = time.monotonic() - started
        assert moved_after < 5.0
        # Events of every partition are processed by the survivor.
        tenant, md = await suite.new_tenant()
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(
            events=[_event(f"e{i}", f"p{i}") for i in range(200)]), metadata=md)
        assert await wait_for(lambda: _pending_is(suite, md, 0), timeout=30)
    finally:
        _stop_workers(workers)
        await asyncio.sleep(0)


async def _tailor(suite: Suite, md, *argv: str) -> subprocess.CompletedProcess:
    key = dict(md)["authorization"].removeprefix("Bearer ")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'protos'}")
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", "from tailor_cli.cli import main; main()", *argv,
                         "--gateway", f"127.0.0.1:{suite.ports['gateway']}", "--api-key", key],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


async def test_the_cli_lists_and_discards_dead_letters_and_shows_the_pipeline_state(suite):
    tenant, md = await suite.new_tenant()
    await _poison(suite.dsn, tenant, "cli-bad", "cli")

    async def dead():
        return list((await suite.gateway.ListDeadLetters(pb.ListDeadLettersRequest(), metadata=md)).dead_letters)

    assert await wait_for(dead)
    listed = await _tailor(suite, md, "dead-letters", "list", "--reason", "invalid_argument")
    assert listed.returncode == 0, listed.stderr
    assert "cli-bad" in listed.stdout and "INVALID_ARGUMENT" in listed.stdout
    refused = await _tailor(suite, md, "dead-letters", "discard")
    assert refused.returncode == 1 and "message_ids" in refused.stderr
    status = await _tailor(suite, md, "pipeline", "status")
    assert "dead letters 1" in status.stdout, status.stderr
    discarded = await _tailor(suite, md, "dead-letters", "discard", "--all")
    assert discarded.stdout.strip() == "1 dead letters discarded", discarded.stderr
    assert await dead() == []


async def test_merges_the_workers_apply_are_marked_propagated_at_once_so_the_sweepers_queue_stays_empty(suite):
    from personalization.identity.v1 import identity_service_pb2 as identity_pb
    from personalization.identity.v1 import identity_service_pb2_grpc as identity_grpc

    tenant, md = await suite.new_tenant()
    device = [common_pb2.Identity(type="device_id", value=f"dev-{i}") for i in range(20)]
    email = [common_pb2.Identity(type="email", value=f"m{i}@example.com") for i in range(20)]
    ts = timestamp_pb2.Timestamp(seconds=int(time.time()) - 5)
    view = common_pb2.EVENT_TYPE_PAGE_VIEW
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        common_pb2.Event(message_id=f"{kind}-{i}", type=view, event_time=ts, identities=[who])
        for i in range(20) for kind, who in (("d", device[i]), ("e", email[i]))]), metadata=md)
    assert await wait_for(lambda: _pending_is(suite, md, 0))
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        common_pb2.Event(message_id=f"login-{i}", type=common_pb2.EVENT_TYPE_LOGIN, event_time=ts,
                         identities=[device[i], email[i]]) for i in range(20)]), metadata=md)
    assert await wait_for(lambda: _pending_is(suite, md, 0))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{suite.ports['identity']}") as channel:
        identity = identity_grpc.IdentityServiceStub(channel)
        history = await identity.ListMergeEvents(identity_pb.ListMergeEventsRequest(page_size=100),
                                                 metadata=tenant_md(tenant))
        assert len([e for e in history.merge_events if e.kind == identity_pb.MERGE_EVENT_KIND_MERGE]) == 20
        queued = await identity.ListUnpropagatedMergeEvents(
            identity_pb.ListUnpropagatedMergeEventsRequest(min_age_seconds=0), metadata=tenant_md(tenant))
    assert list(queued.merge_events) == []
    for i in range(20):
        reply = await suite.gateway.GetProfile(gw_profile(email[i]), metadata=md)
        assert sorted(e.message_id for e in reply.events) == sorted([f"d-{i}", f"e-{i}", f"login-{i}"])


def gw_profile(identity: common_pb2.Identity) -> pb.GetProfileRequest:
    return pb.GetProfileRequest(individual_id=identity, event_limit=10)


async def test_a_phone_the_identity_service_could_not_parse_is_refused_at_ingest_not_dead_lettered_later(suite):
    _, md = await suite.new_tenant()
    ts = timestamp_pb2.Timestamp(seconds=int(time.time()) - 5)

    def call(message_id: str, phone: str) -> common_pb2.Event:
        return common_pb2.Event(message_id=message_id, type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=ts,
                                identities=[common_pb2.Identity(type="email", value=f"{message_id}@x.io"),
                                            common_pb2.Identity(type="phone", value=phone)])

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[call("ok", "+44 20 7946 0958"),
                                                                        call("bad", "n/a")]), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = status_details(info.value)[0]
    assert field == "events[1].identities[1].value" and "phone" in description and "n/a" not in description
    # A national number takes the identity service's default region, as it will when resolved.
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[call("national", "(415) 555-0100")]), metadata=md)
    assert await wait_for(lambda: _pending_is(suite, md, 0))
    status = await suite.gateway.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=md)
    assert status.dead_letter_count == 0


async def test_a_joining_worker_gets_its_share_at_once_not_after_the_handover_and_a_renewal(bare_suite):
    """With 10 s leases, a worker renews every 3.3 s and a released partition's handover lasts up to 2 s; a joining
    worker is announced and the partitions given to it are freed as soon as the work on them has ended, so the
    split happens within a second of the second worker's first heartbeat (events of the moved partitions would
    otherwise wait seconds)."""
    suite = bare_suite
    first = _worker_process(suite.dsn, suite, lease=10.0)
    second = None
    conn = await asyncpg.connect(suite.dsn)
    try:
        assert await wait_for(lambda: _all_held_by_one(suite.dsn), timeout=30)
        second = _worker_process(suite.dsn, suite, lease=10.0)

        async def joined():
            return await conn.fetchval("SELECT count(*) FROM gateway.pipeline_workers "
                                       "WHERE heartbeat_at > now() - interval '10 seconds'") == 2
        assert await wait_for(joined, timeout=30)
        started = time.monotonic()

        async def split_evenly():
            owners = await _owners(suite.dsn)
            return owners if sorted(owners.values()) == [16, 16] else None

        assert await wait_for(split_evenly, timeout=15), await _owners(suite.dsn)
        assert time.monotonic() - started < 1.5
    finally:
        await conn.close()
        _stop_workers([w for w in (first, second) if w is not None])


async def _all_held_by_one(dsn: str) -> bool:
    return list((await _owners(dsn)).values()) == [32]
