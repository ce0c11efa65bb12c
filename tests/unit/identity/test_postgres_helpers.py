"""The repository's helper that runs the first two reads at once (postgres._first_reads): no read is left running."""

from __future__ import annotations

import asyncio

import pytest

from services.identity.ports import QueryRest
from services.identity.postgres import PostgresRepository, _first_reads


async def test_both_results_come_back_in_order():
    async def later(value: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return value

    assert await _first_reads(later(1, 0.02), later(2, 0)) == (1, 2, None)


async def _slow(stopped: asyncio.Event) -> None:
    """A read that takes 10 s unless cancelled; stopped is set when it ends either way."""
    try:
        await asyncio.sleep(10)
    finally:
        stopped.set()


@pytest.mark.parametrize("failing", [0, 1])
async def test_when_one_read_fails_the_other_is_cancelled_before_the_error_comes_back(failing):
    stopped = asyncio.Event()

    async def fail() -> None:
        raise ValueError("read failed")

    reads = [fail(), _slow(stopped)] if failing == 0 else [_slow(stopped), fail()]
    with pytest.raises(ValueError, match="read failed"):
        await asyncio.wait_for(_first_reads(*reads), 1)  # at once, not after the slow read
    assert stopped.is_set()


async def test_a_cancelled_caller_cancels_and_awaits_both_reads():
    stopped: list[int] = []

    async def slow(n: int) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            stopped.append(n)

    task = asyncio.ensure_future(_first_reads(slow(1), slow(2)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(stopped) == [1, 2]


async def test_the_later_share_is_made_while_both_read_and_taken_after_the_snapshot_beside_the_candidates():
    events: list[str] = []
    share = QueryRest(["rec_2"], ["k2"], ["b\x1fk2"])

    async def read(name: str, delay: float) -> str:
        events.append(f"{name} sent")
        await asyncio.sleep(delay)
        events.append(f"{name} in")
        return name

    def make() -> QueryRest:
        events.append("made")
        return share

    async def then(snap, rest) -> None:
        assert (snap, rest) == ("snapshot", share)
        events.append("then")

    got = await _first_reads(read("snapshot", 0.01), read("candidates", 0.05), make, then)
    assert got == ("snapshot", "candidates", share)
    assert events == ["snapshot sent", "candidates sent", "made", "snapshot in", "then", "candidates in"]


async def test_a_failing_later_share_cancels_the_candidates_read_at_once():
    stopped = asyncio.Event()

    async def snapshot() -> str:
        return "snapshot"

    async def then(snap, rest) -> None:
        raise RuntimeError("locked elsewhere")

    with pytest.raises(RuntimeError, match="locked elsewhere"):
        await asyncio.wait_for(_first_reads(snapshot(), _slow(stopped), lambda: QueryRest([], [], []), then), 1)
    assert stopped.is_set()


async def test_no_block_keys_read_no_candidates():
    class Unreachable:
        async def fetch(self, *args):
            raise AssertionError("a read with no keys")

    # (a large call whose first part has no block keys: its later parts' keys come apart)
    assert await PostgresRepository(None)._candidates(Unreachable(), "t1", []) == []  # type: ignore[arg-type]
