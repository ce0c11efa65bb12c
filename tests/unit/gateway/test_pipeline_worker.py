"""Unit tests of the partition worker on fakes: chunk pipelining, bisection, retries that hold back one individual."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from services.gateway.pipeline.worker import PartitionWorker, Transient, WorkerSettings, chunks_of
from services.gateway.postgres_inbox import InboxRow


def _row(i: int, route: int | None = None, attempts: int = 0, size: int = 0) -> InboxRow:
    event = common_pb2.Event(message_id=f"m{i}", type=common_pb2.EVENT_TYPE_PAGE_VIEW,
                             event_time=timestamp_pb2.Timestamp(seconds=int(time.time())),
                             identities=[common_pb2.Identity(type="device_id", value=f"d{i}")],
                             name="x" * size)
    return InboxRow("t", f"m{i}", i, event.SerializeToString(), attempts, i if route is None else route)


class Refused(grpc.aio.AioRpcError):
    def __init__(self, code=grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(code, None, None, details="refused")


class FakeStore:
    def __init__(self):
        self.processed: list[str] = []
        self.dead: list[tuple[str, str]] = []
        self.retrying: list[str] = []

    async def mark_processed(self, tenant_id, rows):
        self.processed.extend(r.message_id for r in rows)

    async def dead_letter(self, row, reason, error):
        self.dead.append((row.message_id, reason))

    async def retry_later(self, row, reason, error, backoff):
        self.retrying.append(row.message_id)
        return row.attempts + 1

    async def take_bulk(self, partitions, busy, per_pair, live_wait_seconds):
        from services.gateway.postgres_inbox import BulkTake

        return BulkTake([], {}, False)  # no bulk rows unless a test's store has some


class FakePipeline:
    """Identifies by echoing the events; update refuses any chunk holding a poisoned message id."""

    def __init__(self, poison=(), code=grpc.StatusCode.INVALID_ARGUMENT):
        self.poison = set(poison)
        self.code = code
        self.updates = 0
        self.applied: list[str] = []

    async def identify(self, events):
        return events

    async def apply_merges(self, plan):
        pass

    async def update(self, plan, appended=None):
        self.updates += 1
        if any(e.message_id in self.poison for e in plan):
            raise Refused(self.code)
        self.applied.extend(e.message_id for e in plan)
        if appended is not None:
            appended()


def _worker(pipeline, store, **settings) -> PartitionWorker:
    return PartitionWorker("", store, pipeline, WorkerSettings(**settings), worker_id="w")


async def test_bisection_isolates_the_one_poisoned_event_in_a_chunk_of_500_and_applies_the_rest_in_order():
    store, pipeline = FakeStore(), FakePipeline(poison={"m321"})
    rows = [_row(i) for i in range(500)]
    await _worker(pipeline, store, chunk_events=500).process("t", rows)
    assert store.dead == [("m321", "INVALID_ARGUMENT")]
    expected = [f"m{i}" for i in range(500) if i != 321]
    assert pipeline.applied == expected
    assert store.processed == expected
    # log2(500) halvings, not 500 single-event calls.
    assert pipeline.updates <= 2 * 10 + 2


async def test_an_internal_failure_is_retried_later_and_holds_back_only_that_individuals_later_events():
    store, pipeline = FakeStore(), FakePipeline(poison={"m2"}, code=grpc.StatusCode.INTERNAL)
    rows = [_row(0, route=1), _row(1, route=2), _row(2, route=7), _row(3, route=1), _row(4, route=7),
            _row(5, route=3)]
    await _worker(pipeline, store, chunk_events=6, max_attempts=5).process("t", rows)
    assert store.retrying == ["m2"]
    assert store.dead == []
    # m4 shares m2's routing identity: it waits (stays pending) so that identity's events keep their order.
    assert pipeline.applied == ["m0", "m1", "m3", "m5"]
    assert store.processed == ["m0", "m1", "m3", "m5"]


async def test_the_last_allowed_attempt_dead_letters_and_frees_the_individual():
    store, pipeline = FakeStore(), FakePipeline(poison={"m0"}, code=grpc.StatusCode.INTERNAL)
    rows = [_row(0, route=9, attempts=4), _row(1, route=9)]
    await _worker(pipeline, store, max_attempts=5).process("t", rows)
    assert store.dead == [("m0", "INTERNAL")]
    assert pipeline.applied == ["m1"]


async def test_an_unavailable_service_is_not_the_events_fault_and_leaves_everything_pending():
    store, pipeline = FakeStore(), FakePipeline(poison={"m1"}, code=grpc.StatusCode.UNAVAILABLE)
    try:
        await _worker(pipeline, store, chunk_events=2).process("t", [_row(i) for i in range(4)])
        raised = False
    except Transient:
        raised = True
    assert raised
    assert store.dead == [] and store.retrying == []
    assert store.processed == []


async def test_an_oversize_refusal_is_content_and_is_isolated_not_retried_forever():
    store, pipeline = FakeStore(), FakePipeline(poison={"m3"}, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    await _worker(pipeline, store, chunk_events=8).process("t", [_row(i) for i in range(8)])
    assert store.dead == [("m3", "RESOURCE_EXHAUSTED")]
    assert len(store.processed) == 7


def test_chunks_respect_both_the_event_count_and_the_byte_budget():
    rows = [_row(i, size=1000) for i in range(10)]
    by_count = chunks_of(rows, 4, 1 << 20)
    assert [len(c) for c in by_count] == [4, 4, 2]
    by_bytes = chunks_of(rows, 100, 3 * len(rows[0].payload))
    assert [len(c) for c in by_bytes] == [3, 3, 3, 1]
    assert chunks_of([_row(0, size=5000)], 10, 100) == [[_row(0, size=5000)]]


async def test_the_next_chunk_is_identified_while_one_is_updated_and_updates_stay_in_order():
    log: list[str] = []

    class Slow(FakePipeline):
        async def identify(self, events):
            log.append(f"identify {events[0].message_id}")
            return events

        async def update(self, plan, appended=None):
            log.append(f"update {plan[0].message_id} start")
            await asyncio.sleep(0.01)
            log.append(f"update {plan[0].message_id} end")

    class Store(FakeStore):
        async def mark_processed(self, tenant_id, rows):
            log.append(f"mark {rows[0].message_id}")

    await _worker(Slow(), Store(), chunk_events=2).process("t", [_row(i) for i in range(6)])
    assert log == [
        "identify m0", "update m0 start", "identify m2", "update m0 end", "mark m0",
        "update m2 start", "identify m4", "update m2 end", "mark m2",
        "update m4 start", "update m4 end", "mark m4",
    ]


async def test_a_dead_letter_page_stops_before_it_outgrows_a_default_clients_limit():
    from datetime import datetime, timezone

    from personalization.gateway.v1 import gateway_service_pb2 as pb
    from services.gateway.dead_letters import DeadLetters
    from services.gateway.postgres_inbox import DeadLetterRow
    from shared import contract

    big = common_pb2.Event(message_id="x", name="n" * 200_000).SerializeToString()
    now = datetime.now(timezone.utc)
    rows = [DeadLetterRow("t", f"m{i}", big, "INTERNAL", "boom", 5, now, now) for i in range(40)]

    class Store:
        async def list_dead_letters(self, tenant, reason, since, until, after, limit):
            start = 0 if after is None else next(i for i, r in enumerate(rows) if r.message_id == after[1]) + 1
            return rows[start:start + limit]

    letters = DeadLetters(Store())
    page = await letters.list("t", pb.ListDeadLettersRequest(page_size=100))
    assert 0 < len(page.dead_letters) < 40 and page.next_page_token
    assert page.ByteSize() <= contract.MAX_MESSAGE_BYTES
    seen = [d.message_id for d in page.dead_letters]
    while page.next_page_token:
        page = await letters.list("t", pb.ListDeadLettersRequest(page_size=100, page_token=page.next_page_token))
        seen += [d.message_id for d in page.dead_letters]
    assert seen == [r.message_id for r in rows]


async def test_an_event_that_arrives_while_its_tenant_is_busy_is_taken_when_that_work_ends_not_at_the_idle_poll():
    """The NOTIFY of an event that arrives while its tenant's work runs is spent on a take that must skip the busy
    tenant; when that work ends during such a take, the worker still looks again at once (idle poll here: 30 s)."""
    gate = asyncio.Event()

    class Blocking(FakePipeline):
        async def update(self, plan, appended=None):
            if plan[0].message_id == "m1":
                await gate.wait()
            await super().update(plan, appended)

    class Inbox(FakeStore):
        def __init__(self):
            super().__init__()
            self.pending: list[InboxRow] = [_row(1)]

        async def take(self, partitions, busy, per_pair):
            if "t" in busy:
                if self.pending:  # the busy tenant's work ends while this take runs
                    gate.set()
                    while "t" in worker.tasks:
                        await asyncio.sleep(0.001)
                return []
            rows, self.pending = self.pending, []
            return rows

        async def take_more(self, tenant, after, per_pair, bulk=False):
            return []  # this test is about the drain loop's takes: the task takes nothing more itself

    store, pipeline = Inbox(), Blocking()
    worker = _worker(pipeline, store, idle_seconds=30.0, lease_seconds=60.0)
    worker.partitions, worker._renewed_at = [0], time.monotonic()
    draining = asyncio.create_task(worker._drain_loop())
    try:
        while not worker.tasks:
            await asyncio.sleep(0.001)
        store.pending.append(_row(2))
        worker.wake.set()  # what the inbox NOTIFY does
        started = time.monotonic()
        while "m2" not in store.processed and time.monotonic() - started < 5:
            await asyncio.sleep(0.005)
        assert store.processed == ["m1", "m2"]
        assert time.monotonic() - started < 2.0
    finally:
        worker.stopping = True
        worker.wake.set()
        await asyncio.wait_for(draining, 5)


class Backlog(FakeStore):
    """An inbox of one tenant: take_more returns what arrived after each partition's last seq taken."""

    def __init__(self, rows):
        super().__init__()
        self.rows = list(rows)
        self.asked: list[list[tuple[int, int]]] = []

    async def take_more(self, tenant, after, per_pair, bulk=False):
        self.asked.append(after)
        last = dict(after)
        return [r for r in self.rows if r.partition in last and r.seq > last[r.partition]
                and r.message_id not in self.processed][:per_pair]


def _in(partition: int, i: int) -> InboxRow:
    row = _row(i)
    return InboxRow(row.tenant_id, row.message_id, row.seq, row.payload, 0, row.route, partition)


async def test_a_busy_tenants_task_takes_its_new_events_itself_identifying_them_while_the_last_chunk_is_updated():
    """Events that arrive while a tenant's chunk is appended are taken by the same task once it is (no wait for the
    task to end and the drain loop's next take), per partition after the last seq taken there, and identified
    during the rest of that update; the order of each partition is kept."""
    calls: list[str] = []
    store = Backlog([])

    class Recording(FakePipeline):
        async def identify(self, events):
            calls.append("identify " + ",".join(e.message_id for e in events))
            return events

        async def update(self, plan, appended=None):
            ids = ",".join(e.message_id for e in plan)
            calls.append("update " + ids)
            if plan[0].message_id == "m1":  # m3 (partition 1) and m4 (partition 2) arrive during the append
                store.rows += [_in(1, 3), _in(2, 4)]
                await asyncio.sleep(0.01)
            await super().update(plan, appended)  # appended: the refill starts
            await asyncio.sleep(0.01)  # the recommender's and the decision service's steps
            calls.append("updated " + ids)

    store.rows = [_in(1, 1), _in(2, 2)]
    pipeline = Recording()
    worker = _worker(pipeline, store, chunk_events=2, lease_seconds=60.0)
    worker.partitions, worker._renewed_at = [1, 2], time.monotonic()
    first = [_in(1, 1)]
    await worker.process("t", first, refill=worker._refill_for("t", first))
    assert pipeline.applied == ["m1", "m2", "m3", "m4"]
    assert store.processed == ["m1", "m2", "m3", "m4"]
    assert calls.index("identify m2,m3") < calls.index("updated m1")  # taken and identified during m1's update
    # Per partition after the last seq taken there (partition 2 from its start), then after m3 and m4.
    assert store.asked == [[(1, 1), (2, 0)], [(1, 3), (2, 4)]]


async def test_a_tenants_task_takes_nothing_more_once_the_slots_are_full_or_its_turn_is_over():
    store = Backlog([_in(0, 2)])
    worker = _worker(FakePipeline(), store, concurrency=1, lease_seconds=60.0)
    worker.partitions, worker._renewed_at = [0], time.monotonic()
    worker.tasks["t"] = asyncio.get_running_loop().create_future()  # this tenant's own task fills the one slot
    first = [_in(0, 1)]
    await worker.process("t", first, refill=worker._refill_for("t", first))
    assert store.processed == ["m1"] and store.asked == []
    worker.tasks.clear()
    turned = _worker(FakePipeline(), store, turn_seconds=0.0, lease_seconds=60.0)
    turned.partitions, turned._renewed_at = [0], time.monotonic()
    await asyncio.sleep(0.001)
    await turned.process("t", first, refill=turned._refill_for("t", first))
    assert store.asked == []


async def test_what_a_task_takes_while_a_chunk_is_in_flight_keeps_the_tenant_within_its_take():
    seen: list[int] = []

    class Counting(FakePipeline):
        async def update(self, plan, appended=None):
            seen.append(len(plan))
            await super().update(plan, appended)

    store = Backlog([_in(0, i) for i in range(3, 10)])
    worker = _worker(Counting(), store, tenant_take=3, chunk_events=10, lease_seconds=60.0)
    worker.partitions, worker._renewed_at = [0], time.monotonic()
    first = [_in(0, 1), _in(0, 2)]
    await worker.process("t", first, refill=worker._refill_for("t", first))
    assert seen[:2] == [2, 1]  # 2 in flight, so 1 more; then 1 in flight, so 2 more
    assert store.processed == [f"m{i}" for i in range(1, 10)]


class LaneStore(FakeStore):
    """Live and bulk rows per tenant; take_bulk says how recently each tenant's bulk rows arrived."""

    def __init__(self, live: dict[str, int], bulk: dict[str, int], newest_age: float = 60.0, live_waiting=False):
        super().__init__()
        self.live = {t: [_tenant_row(t, i) for i in range(n)] for t, n in live.items()}
        self.bulk = {t: [_tenant_row(t, 1000 + i) for i in range(n)] for t, n in bulk.items()}
        self.newest_age = newest_age
        self.live_waiting = live_waiting
        self.bulk_takes = 0
        self.refills: list[tuple[str, bool]] = []

    @staticmethod
    def _pending(lane, busy):
        return [r for t, rows in lane.items() if t not in busy for r in rows]

    async def take(self, partitions, busy, per_pair):
        return self._pending(self.live, busy)

    async def take_more(self, tenant, after, per_pair, bulk=False):
        self.refills.append((tenant, bulk))
        return []  # what a task takes itself is tested above; here, what the drain loop starts

    async def take_bulk(self, partitions, busy, per_pair, live_wait_seconds):
        from services.gateway.postgres_inbox import BulkTake

        self.bulk_takes += 1
        rows = self._pending(self.bulk, busy)
        return BulkTake(rows, {r.tenant_id: self.newest_age for r in rows}, self.live_waiting)

    async def mark_processed(self, tenant_id, rows):
        await super().mark_processed(tenant_id, rows)
        for lane in (self.live, self.bulk):
            lane[tenant_id] = [r for r in lane.get(tenant_id, []) if r not in rows]


def _tenant_row(tenant: str, i: int) -> InboxRow:
    row = _row(i)
    return InboxRow(tenant, f"{tenant}-{row.message_id}", row.seq, row.payload, 0, row.route)


class Gated(FakePipeline):
    """Holds every update until released, so the tasks a take started can be looked at."""

    def __init__(self):
        super().__init__()
        self.gate = asyncio.Event()

    async def update(self, plan, appended=None):
        await self.gate.wait()
        await super().update(plan, appended)


async def _leasing(worker: PartitionWorker) -> PartitionWorker:
    worker.partitions = list(range(32))
    worker._renewed_at = time.monotonic()
    return worker


async def test_live_rows_are_taken_first_and_bulk_rows_fill_at_most_half_of_the_slots_left():
    store, pipeline = LaneStore(live={"a": 3, "b": 3}, bulk={"c": 5, "d": 5, "e": 5, "f": 5}), Gated()
    worker = await _leasing(_worker(pipeline, store, concurrency=4))
    assert await worker.take_once() == 4
    assert set(worker.tasks) == {"a", "b", "c", "d"} and worker.bulk == {"c", "d"}
    pipeline.gate.set()
    await asyncio.gather(*worker.tasks.values())
    assert worker.bulk == set()
    # With no live work, bulk tenants still take at most half of the slots.
    pipeline.gate.clear()
    assert await worker.take_once() == 2
    assert worker.bulk == {"e", "f"}  # c and d were drained
    pipeline.gate.set()
    await asyncio.gather(*worker.tasks.values())


async def test_a_tenant_still_importing_is_drained_one_chunk_at_a_time_with_pauses_then_at_full_speed():
    store, pipeline = LaneStore(live={}, bulk={"c": 40, "d": 40}, newest_age=0.1), Gated()
    worker = await _leasing(_worker(pipeline, store, concurrency=8, bulk_duty=0.25, tenant_take=10,
                                    bulk_quiet_seconds=2.0))
    began = time.monotonic()
    assert await worker.take_once() == 1  # paced: one chunk in this worker, whatever the tenants
    assert len(worker.bulk) == 1
    assert await worker.take_once() == 0
    await asyncio.sleep(0.1)
    pipeline.gate.set()
    await asyncio.gather(*worker.tasks.values())
    ended = time.monotonic()
    # The chunk took 0.1 s or more; at a duty of a quarter the next waits three times as long after it, and the
    # drain loop wakes for it.
    assert 0.4 <= worker._paced_until - began <= 4 * (ended - began)
    pause = worker._paced_until - time.monotonic()
    assert pause > 0
    assert await worker.take_once() == 0
    assert worker._idle_timeout() <= pause
    takes = store.bulk_takes
    assert await worker.take_once() == 0 and store.bulk_takes == takes  # nothing is asked before the pause ends
    await asyncio.sleep(pause + 0.01)  # asyncio may wake a timer up to its clock resolution early
    assert await worker.take_once() == 1
    await asyncio.gather(*worker.tasks.values())
    # The import stopped (the newest bulk row is older than bulk_quiet_seconds): every bulk slot at once.
    assert store.refills == []  # a paced chunk goes alone
    store.newest_age = 5.0
    store.bulk = {t: [_tenant_row(t, 2000 + i) for i in range(3)] for t in ("c", "d")}
    worker._paced_until = 0
    assert await worker.take_once() == 2 and worker.bulk == {"c", "d"}
    await asyncio.gather(*worker.tasks.values())
    # A task at full speed goes on with its tenant's newer bulk rows (not live ones) for a turn.
    assert sorted(store.refills) == [("c", True), ("d", True)]


async def test_a_live_event_waiting_anywhere_paces_the_bulk_drain_too():
    store, pipeline = LaneStore(live={}, bulk={"c": 5, "d": 5}, newest_age=60.0, live_waiting=True), Gated()
    worker = await _leasing(_worker(pipeline, store, concurrency=8))
    assert await worker.take_once() == 1
    pipeline.gate.set()
    await asyncio.gather(*worker.tasks.values())


async def test_an_empty_bulk_lane_is_looked_at_again_only_after_a_bulk_notify_or_the_poll():
    store, pipeline = LaneStore(live={"a": 2}, bulk={}), FakePipeline()
    worker = await _leasing(_worker(pipeline, store))
    assert await worker.take_once() == 1
    await asyncio.gather(*worker.tasks.values())
    assert store.bulk_takes == 1
    worker._notified(None, 0, "tailor_inbox", "")  # a live store
    await worker.take_once()
    assert store.bulk_takes == 1 and 0 < worker._idle_timeout() <= 1.0
    store.bulk = {"b": [_tenant_row("b", i) for i in range(3)]}
    worker._notified(None, 0, "tailor_inbox", "bulk")
    assert await worker.take_once() == 1 and store.bulk_takes == 2 and worker.bulk == {"b"}
    await asyncio.gather(*worker.tasks.values())
