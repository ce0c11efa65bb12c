"""The repository's helper that runs two reads at once (postgres._both): no read is left running."""

from __future__ import annotations

import asyncio

import pytest

from services.identity.postgres import _both


async def test_both_results_come_back_in_order():
    async def later(value: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return value

    assert await _both(later(1, 0.02), later(2, 0)) == (1, 2)


@pytest.mark.parametrize("failing", [0, 1])
async def test_when_one_read_fails_the_other_is_cancelled_before_the_error_comes_back(failing):
    stopped = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            stopped.set()

    async def fail() -> None:
        raise ValueError("read failed")

    reads = [fail(), slow()] if failing == 0 else [slow(), fail()]
    with pytest.raises(ValueError, match="read failed"):
        await asyncio.wait_for(_both(*reads), 1)  # at once, not after the slow read
    assert stopped.is_set()


async def test_a_cancelled_caller_cancels_and_awaits_both_reads():
    stopped: list[int] = []

    async def slow(n: int) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            stopped.append(n)

    task = asyncio.ensure_future(_both(slow(1), slow(2)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(stopped) == [1, 2]
