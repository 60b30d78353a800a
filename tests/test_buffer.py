"""The bounded buffer: capacity holds until commit, FIFO admission, the three flush triggers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from collector.ingest.buffer import BufferClosed, Chunk, IngestBuffer
from collector.ingest.readings import Reason, Rejection


def chunk(n: int) -> Chunk:
    rejected = [Rejection("t", b"x", Reason.INVALID_JSON, "d") for _ in range(n)]
    return Chunk({}, rejected, datetime.now(UTC))


async def test_take_returns_up_to_max_items_in_order():
    buf = IngestBuffer(100)
    chunks = [chunk(3) for _ in range(4)]
    for c in chunks:
        await buf.put(c)
    taken = await buf.take(max_items=7, linger_s=10, idle_s=10)
    assert taken == chunks[:2]
    assert await buf.take(max_items=7, linger_s=0, idle_s=0) == chunks[2:]


async def test_a_chunk_bigger_than_max_items_is_still_taken():
    buf = IngestBuffer(100)
    big = chunk(20)
    await buf.put(big)
    assert await buf.take(max_items=5, linger_s=0, idle_s=0) == [big]


async def test_put_waits_while_full_until_the_writer_releases():
    buf = IngestBuffer(10)
    first = chunk(8)
    await buf.put(first)
    blocked = asyncio.create_task(buf.put(chunk(5)))
    await asyncio.sleep(0.05)
    assert not blocked.done(), "the source must wait while the buffer is full"
    taken = await buf.take(100, 0, 0)
    await asyncio.sleep(0.05)
    assert not blocked.done(), "taken is not committed: capacity is held until release"
    assert buf.depth == 8
    buf.release(taken)
    await asyncio.wait_for(blocked, 1)
    assert buf.depth == 5


async def test_waiting_sources_are_admitted_in_order():
    buf = IngestBuffer(10)
    await buf.put(chunk(10))
    order: list[str] = []

    async def put(name: str, n: int) -> None:
        await buf.put(chunk(n))
        order.append(name)

    big = asyncio.create_task(put("big", 9))
    await asyncio.sleep(0.01)
    small = asyncio.create_task(put("small", 1))
    await asyncio.sleep(0.01)
    buf.release(await buf.take(100, 0, 0))
    await asyncio.wait_for(asyncio.gather(big, small), 1)
    assert order == ["big", "small"]


async def test_a_chunk_larger_than_the_capacity_is_refused_not_admitted():
    """Admitting one would let a single source hold more than the buffer bounds; the
    sources cut their chunks to fit instead (issue 18)."""
    buf = IngestBuffer(5)
    with pytest.raises(ValueError, match="cannot fit"):
        await asyncio.wait_for(buf.put(chunk(50)), 1)
    with pytest.raises(ValueError, match="cannot fit"):
        buf.try_put(chunk(6))
    assert buf.depth == 0
    await asyncio.wait_for(buf.put(chunk(5)), 1)  # exactly the capacity fits
    assert buf.depth == 5


async def test_try_put_takes_only_what_fits_now_and_never_jumps_the_queue():
    buf = IngestBuffer(10)
    assert buf.try_put(chunk(6))
    assert not buf.try_put(chunk(6))  # no room now: the caller answers "busy" at once
    waiting = asyncio.create_task(buf.put(chunk(6)))
    await asyncio.sleep(0)
    assert not buf.try_put(chunk(1))  # room for 1, but a source waits: FIFO
    buf.release(await buf.take(100, 0, 0))
    await asyncio.wait_for(waiting, 1)
    assert buf.depth == 6


async def test_take_waits_for_linger_when_input_keeps_flowing():
    buf = IngestBuffer(1000)
    await buf.put(chunk(1))

    async def trickle() -> None:
        for _ in range(30):
            await asyncio.sleep(0.005)
            await buf.put(chunk(1))

    feeder = asyncio.create_task(trickle())
    started = time.monotonic()
    taken = await buf.take(max_items=1000, linger_s=0.1, idle_s=0.05)
    elapsed = time.monotonic() - started
    await feeder
    assert 0.08 <= elapsed < 0.3
    assert len(taken) > 5


async def test_take_returns_early_when_input_goes_idle():
    buf = IngestBuffer(1000)
    await buf.put(chunk(2))
    started = time.monotonic()
    await buf.take(max_items=1000, linger_s=5, idle_s=0.02)
    assert time.monotonic() - started < 0.5


async def test_take_returns_as_soon_as_max_items_are_queued():
    buf = IngestBuffer(1000)
    await buf.put(chunk(2))
    later = asyncio.create_task(asyncio.sleep(0.02))
    await later
    await buf.put(chunk(10))
    started = time.monotonic()
    taken = await buf.take(max_items=10, linger_s=5, idle_s=5)
    assert time.monotonic() - started < 0.1
    assert sum(c.size for c in taken) == 2  # the next chunk would exceed max_items


async def test_close_drains_then_returns_empty_and_refuses_new_chunks():
    buf = IngestBuffer(100)
    c = chunk(1)
    await buf.put(c)
    buf.close()
    assert await buf.take(100, 5, 5) == [c]
    assert await buf.take(100, 5, 5) == []
    with pytest.raises(BufferClosed):
        await buf.put(chunk(1))


async def test_close_wakes_sources_waiting_for_room():
    buf = IngestBuffer(1)
    await buf.put(chunk(1))
    blocked = asyncio.create_task(buf.put(chunk(1)))
    await asyncio.sleep(0.01)
    buf.close()
    with pytest.raises(BufferClosed):
        await asyncio.wait_for(blocked, 1)


async def test_cancelled_waiter_gives_its_place_back():
    buf = IngestBuffer(2)
    await buf.put(chunk(2))
    blocked = asyncio.create_task(buf.put(chunk(2)))
    await asyncio.sleep(0.01)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    buf.release(await buf.take(10, 0, 0))
    assert buf.depth == 0
    await asyncio.wait_for(buf.put(chunk(2)), 1)


async def test_without_a_linger_take_never_waits_for_a_timer():
    """Group commit (FLUSH_INTERVAL_MS=0): what is queued is taken at once, while with a
    linger the same take sleeps for input to pause."""
    slept: list[float | None] = []
    buffer = IngestBuffer(100)
    real_sleep = buffer._sleep

    async def recording_sleep(seconds: float | None) -> None:
        slept.append(seconds)
        await real_sleep(seconds)

    buffer._sleep = recording_sleep  # type: ignore[method-assign]
    first = chunk(1)
    await buffer.put(first)
    assert await buffer.take(10, 0, 0) == [first]
    assert slept == []
    second = chunk(1)
    await buffer.put(second)
    assert await buffer.take(10, 0.1, 0.005) == [second]
    assert slept and slept[0] is not None and 0 < slept[0] <= 0.005
