"""The bounded buffer and its accounting: exactly ``limit`` entries pending, the next one
dropped as ``buffer_full``; every counter; ``wait()`` waking on the count, a timeout or
``wake()``; and the keys ``stats()`` promises."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any

import pytest

from kafka_log_middleware import _log
from kafka_log_middleware.buffer import DROP_REASONS, LogBuffer
from kafka_log_middleware.capture import CapturedRequest
from tests.scripted import WAIT, captured, config, invariant_problems

pytestmark = pytest.mark.timeout(30)

SETTINGS = config()


def entries(count: int) -> list[CapturedRequest]:
    """``count`` finished requests."""
    return [captured(number, SETTINGS) for number in range(count)]


def counts(buffer: LogBuffer, *names: str) -> dict[str, int]:
    """These counters of ``buffer``, after checking the invariant on all of them."""
    stats = buffer.stats()
    assert not invariant_problems(stats), stats
    return {name: stats[name] for name in names}


async def settle() -> None:
    """Let every task that is ready run (a few loop turns)."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- the bound --------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_exactly_limit_entries_are_accepted_and_the_next_is_dropped(limit: int) -> None:
    """The bound is exact: limit entries pending, the next one counted buffer_full, not kept."""
    buffer = LogBuffer(limit)
    accepted = entries(limit)
    for entry in accepted:
        buffer.put(entry)
    assert counts(buffer, "enqueued", "pending", "buffered", "dropped") == {
        "enqueued": limit,
        "pending": limit,
        "buffered": limit,
        "dropped": 0,
    }
    buffer.put(captured(99, SETTINGS))
    assert counts(buffer, "enqueued", "pending", "buffered", "dropped", "dropped_buffer_full") == {
        "enqueued": limit + 1,
        "pending": limit,
        "buffered": limit,
        "dropped": 1,
        "dropped_buffer_full": 1,
    }
    assert buffer.take(limit + 1) == accepted  # the dropped one was never buffered


def test_the_bound_counts_pending_entries_not_only_buffered_ones() -> None:
    """Entries taken to be sent still count toward the bound until they are settled."""
    buffer = LogBuffer(2)
    for entry in entries(2):
        buffer.put(entry)
    assert len(buffer.take(2)) == 2  # taken to be sent: still pending, still bounded
    buffer.put(captured(2, SETTINGS))
    assert counts(buffer, "pending", "buffered", "dropped_buffer_full") == {
        "pending": 2,
        "buffered": 0,
        "dropped_buffer_full": 1,
    }
    buffer.deliver(1)  # one settled: room for exactly one more
    buffer.put(captured(3, SETTINGS))
    buffer.put(captured(4, SETTINGS))
    names = ("enqueued", "pending", "buffered", "delivered", "dropped_buffer_full")
    assert counts(buffer, *names) == {
        "enqueued": 5,
        "pending": 2,
        "buffered": 1,
        "delivered": 1,
        "dropped_buffer_full": 2,
    }


def test_a_full_buffer_warns_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """An outage fills the buffer with every request: one warning per interval, not per drop."""
    buffer = LogBuffer(1)
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        for entry in entries(4):
            buffer.put(entry)
    warnings = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(warnings) == 1, caplog.records
    assert buffer.full == 3


# -- counters ---------------------------------------------------------------------------


def test_every_counter_and_stats_keys() -> None:
    """Each counting call moves exactly its counters; stats() reports them all by name."""
    buffer = LogBuffer(100)
    for entry in entries(10):
        buffer.put(entry)
    assert len(buffer.take(9)) == 9  # to be settled; the last one stays buffered
    buffer.put(captured(10, SETTINGS))
    assert len(buffer.take(1)) == 1  # the should_log hook refuses it
    buffer.deliver(2)
    buffer.drop("kafka_error", 1)
    buffer.drop("too_large", 1)
    buffer.drop("serialize_error", 1)
    buffer.drop("security", 1)
    buffer.drop("shutdown", 1)
    buffer.give_up_uncertain(2)
    buffer.count_retried(4)  # informational: no entry changes state
    buffer.count_truncated()  # informational too
    buffer.skip_by_hook()  # settled, unlogged
    buffer.skip()  # never enqueued: only counted
    buffer.skip_threadsafe()
    assert buffer.stats() == {
        "enqueued": 11,
        "delivered": 2,
        "dropped": 5,
        "uncertain": 2,
        "pending": 1,
        "buffered": 1,
        "spooled": 0,
        "replayed": 0,
        "recovered": 0,
        "spool_corrupt": 0,
        "retried": 4,
        "truncated": 1,
        "skipped": 3,
        "skipped_exclude_paths": 2,
        "skipped_should_log": 1,
        "dropped_buffer_full": 0,
        "dropped_serialize_error": 1,
        "dropped_too_large": 1,
        "dropped_kafka_error": 1,
        "dropped_security": 1,
        "dropped_spool_full": 0,
        "dropped_spool_corrupt": 0,
        "dropped_shutdown": 1,
    }
    assert not invariant_problems(buffer.stats())
    assert list(buffer.stats())[-len(DROP_REASONS) :] == [f"dropped_{r}" for r in DROP_REASONS]


def test_counters_add_up_over_calls() -> None:
    """Every counting call adds to its counters; none replaces them."""
    buffer = LogBuffer(100)
    for entry in entries(10):
        buffer.put(entry)
    buffer.take(10)
    for _ in range(2):
        buffer.deliver(1)
        buffer.drop("kafka_error", 1)
        buffer.give_up_uncertain(2)
        buffer.count_retried(3)
    assert counts(
        buffer, "delivered", "dropped", "dropped_kafka_error", "uncertain", "retried"
    ) == {
        "delivered": 2,
        "dropped": 2,
        "dropped_kafka_error": 2,
        "uncertain": 4,
        "retried": 6,
    }


def test_drops_warn_per_reason_with_count_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    """Each drop reason has a rate limit of its own: one reason's warnings do not hide
    another's; a warning says how many and why, and uncertain entries warn on their own."""
    _log.reset()
    buffer = LogBuffer(100)
    for entry in entries(10):
        buffer.put(entry)
    buffer.take(10)
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        buffer.drop("kafka_error", 2)
        buffer.drop("kafka_error", 1)  # within the interval: suppressed
        buffer.drop("shutdown", 3)
        buffer.give_up_uncertain(4)
    assert [r.getMessage() for r in caplog.records] == [
        "kafka_log_middleware: dropped 2 log entries (kafka_error)",
        "kafka_log_middleware: dropped 3 log entries (shutdown)",
        "kafka_log_middleware: gave up on 4 log entries that may or may not have reached "
        "Kafka (their last attempt was not acknowledged)",
    ]
    _log.reset()


def test_a_fresh_buffer_counts_nothing() -> None:
    """stats() has the keys the README promises, one dropped_* per drop reason."""
    stats = LogBuffer(5).stats()
    assert set(stats.values()) == {0}
    assert set(stats) == {
        "enqueued",
        "delivered",
        "dropped",
        "uncertain",
        "pending",
        "buffered",
        "spooled",
        "replayed",
        "recovered",
        "spool_corrupt",
        "retried",
        "truncated",
        "skipped",
        "skipped_exclude_paths",
        "skipped_should_log",
        *(f"dropped_{reason}" for reason in DROP_REASONS),
    }
    assert set(DROP_REASONS) == {
        "buffer_full",
        "serialize_error",
        "too_large",
        "kafka_error",
        "security",
        "spool_full",
        "spool_corrupt",
        "shutdown",
    }


def test_take_peek_and_drain_all_keep_the_order() -> None:
    """Entries leave in arrival order (Kong's order), and leaving does not settle them."""
    buffer = LogBuffer(10)
    items = entries(5)
    for entry in items:
        buffer.put(entry)
    assert buffer.peek() is items[0]
    assert buffer.take(2) == items[:2]
    assert buffer.peek() is items[2] and len(buffer) == 3 and bool(buffer)
    assert buffer.drain_all() == items[2:]
    assert buffer.peek() is None and len(buffer) == 0 and not buffer
    assert buffer.take(3) == []
    assert counts(buffer, "pending") == {"pending": 5}  # taken or drained: still pending


# -- wait() -----------------------------------------------------------------------------


async def test_wait_returns_at_once_when_enough_are_buffered() -> None:
    """A wait already satisfied does not block."""
    buffer = LogBuffer(10)
    for entry in entries(2):
        buffer.put(entry)
    await asyncio.wait_for(buffer.wait(2, None), WAIT)


async def test_wait_wakes_on_the_count_th_entry_not_before() -> None:
    """The publisher sleeps until its count is buffered: no wake-up per entry."""
    buffer = LogBuffer(10)
    waiter = asyncio.create_task(buffer.wait(3, None))
    try:
        await settle()
        for entry in entries(2):
            buffer.put(entry)
            await settle()
            assert not waiter.done()
        buffer.put(captured(2, SETTINGS))
        await asyncio.wait_for(waiter, WAIT)
    finally:
        waiter.cancel()


async def test_a_dropped_entry_does_not_wake_the_waiter() -> None:
    """An entry dropped at the bound is not buffered, so it wakes nobody."""
    buffer = LogBuffer(1)
    buffer.put(captured(0, SETTINGS))
    waiter = asyncio.create_task(buffer.wait(2, None))
    try:
        await settle()
        buffer.put(captured(1, SETTINGS))  # over the bound: dropped, not buffered
        await settle()
        assert not waiter.done()
        buffer.wake()
        await asyncio.wait_for(waiter, WAIT)
    finally:
        waiter.cancel()


async def test_wait_times_out_quietly() -> None:
    """A wait's timeout returns normally and leaves no waiter behind."""
    buffer = LogBuffer(10)
    await asyncio.wait_for(buffer.wait(1, 0.01), WAIT)  # returns, does not raise
    assert len(buffer) == 0
    buffer.put(captured(0, SETTINGS))  # no waiter left behind to wake
    await asyncio.wait_for(buffer.wait(1, None), WAIT)


async def test_wake_ends_a_wait_early() -> None:
    """wake() (shutdown, a config change) ends a wait with nothing buffered."""
    buffer = LogBuffer(10)
    waiter = asyncio.create_task(buffer.wait(1, None))
    try:
        await settle()
        assert not waiter.done()
        buffer.wake()
        await asyncio.wait_for(waiter, WAIT)
        assert len(buffer) == 0
    finally:
        waiter.cancel()


# -- put_threadsafe(): WSGI worker threads ----------------------------------------------


def put_from_threads(buffer: LogBuffer, threads: int, each: int) -> None:
    """``threads`` threads, each putting ``each`` entries at once (started together)."""
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for entry in entries(each):
            buffer.put_threadsafe(entry)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_threads_putting_at_once_lose_no_count() -> None:
    """Eight threads racing: every entry enqueued, the bound exact, the rest buffer_full."""
    buffer = LogBuffer(5_000)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show
    try:
        put_from_threads(buffer, threads=8, each=1_000)
    finally:
        sys.setswitchinterval(switch)
    assert counts(buffer, "enqueued", "pending", "buffered", "dropped_buffer_full") == {
        "enqueued": 8_000,
        "pending": 5_000,
        "buffered": 5_000,
        "dropped_buffer_full": 3_000,
    }


def test_threads_putting_past_the_bound_with_evict_oldest_owe_at_most_the_bound() -> None:
    """``drop_oldest`` from racing threads: entries past the bound are taken and owed (the
    publisher drops as many of the oldest), up to the bound; the rest refused, none lost."""
    buffer = LogBuffer(1_000, evict_oldest=True)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        put_from_threads(buffer, threads=8, each=500)
    finally:
        sys.setswitchinterval(switch)
    assert counts(buffer, "enqueued", "pending", "buffered", "dropped_buffer_full") == {
        "enqueued": 4_000,
        "pending": 2_000,  # the bound, and as many owed
        "buffered": 2_000,
        "dropped_buffer_full": 2_000,
    }
    assert buffer.take_owed() == 1_000
    assert buffer.take_owed() == 0


class CountedWakes:
    """Counts the wakes a buffer asks of the running loop from other threads."""

    def __init__(self, buffer: LogBuffer) -> None:
        self.loop = asyncio.get_running_loop()
        self.real = self.loop.call_soon_threadsafe
        self.buffer = buffer
        self.count = 0

    def __enter__(self) -> CountedWakes:
        def counting(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
            if callback == self.buffer._wake:
                self.count += 1
            return self.real(callback, *args, **kwargs)

        self.loop.call_soon_threadsafe = counting  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe = self.real  # type: ignore[method-assign]


async def test_a_put_from_another_thread_wakes_the_waiting_loop_once() -> None:
    """The loop is woken through call_soon_threadsafe when its count is reached, once."""
    buffer = LogBuffer(100)
    with CountedWakes(buffer) as wakes:
        waiter = asyncio.create_task(buffer.wait(2, None))
        try:
            await settle()
            await asyncio.to_thread(put_from_threads, buffer, 1, 1)
            await settle()
            assert not waiter.done() and wakes.count == 0  # below the count: no wake
            await asyncio.to_thread(put_from_threads, buffer, 1, 3)
            await asyncio.wait_for(waiter, WAIT)
            assert wakes.count == 1  # the 2nd entry woke it; the 3rd and 4th asked nothing
        finally:
            waiter.cancel()


async def test_no_wake_is_asked_while_the_publisher_is_not_waiting() -> None:
    """Entries put while the publisher works cost no cross-thread wake at all."""
    buffer = LogBuffer(100)
    with CountedWakes(buffer) as wakes:
        await asyncio.to_thread(put_from_threads, buffer, 4, 25)
    assert wakes.count == 0 and len(buffer) == 100
    await asyncio.wait_for(buffer.wait(100, None), WAIT)  # already there: no wait


async def test_stats_read_from_another_thread_always_add_up() -> None:
    """Snapshots taken while threads put and the loop settles keep the invariant."""
    buffer = LogBuffer(1_000)
    done = threading.Event()
    problems: list[dict[str, int]] = []

    def watch() -> None:
        while not done.is_set():
            stats = buffer.stats()
            if invariant_problems(stats):
                problems.append(stats)

    watcher = threading.Thread(target=watch)
    watcher.start()
    producer = asyncio.create_task(asyncio.to_thread(put_from_threads, buffer, 4, 2_000))
    try:
        while not producer.done() or len(buffer):
            taken = buffer.take(50)
            half = len(taken) // 2
            buffer.deliver(half)
            buffer.drop("kafka_error", len(taken) - half)
            await asyncio.sleep(0)
    finally:
        await producer
        done.set()
        watcher.join()
    assert problems == []
    stats = counts(buffer, "enqueued", "pending", "buffered")
    assert stats == {"enqueued": 8_000, "pending": 0, "buffered": 0}


def test_drain_all_keeps_what_another_thread_appends_meanwhile() -> None:
    """drain_all takes what was there; an entry appended during it stays buffered."""
    buffer = LogBuffer(100_000)
    first = entries(50_000)
    for entry in first:
        buffer.put(entry)
    late = threading.Thread(target=put_from_threads, args=(buffer, 1, 100))
    late.start()
    drained = buffer.drain_all()
    late.join()
    assert len(drained) + len(buffer) == 50_100
    assert drained[: len(first)] == first
