"""The bounded buffer between the request path and the publisher, and its accounting.

Every captured request is counted as enqueued; from then on it is pending until it is
delivered (acknowledged by Kafka), dropped with a reason, or given up as uncertain (it
may have reached Kafka: its last attempt timed out, or it was in flight at shutdown), or
skipped by the ``should_log`` hook. So at every moment ``enqueued == delivered + dropped +
uncertain + skipped_should_log + pending``. Requests ``exclude_paths`` excludes are
never enqueued: they are only counted (``skipped_exclude_paths``). The bound
applies to pending entries (buffered, being encoded, or handed to Kafka and not yet
acknowledged): memory stays bounded while Kafka is down, and the overflow is counted,
never silent. Past the bound the new entry is refused (``drop_newest``, Kong's), or, with
``evict_oldest``, taken and the publisher told to drop the oldest one not handed to Kafka
yet in its place (``owed``; at most ``limit`` owed at once, beyond which the new one is
refused after all).

Threads: the publisher (its event loop's thread) takes entries and settles them; a door
puts them, from that loop (``put``, ASGI) or from any other thread (``put_threadsafe``,
WSGI workers). Each counter has one writer side: ``enqueued`` and ``full`` the putting
side (under a small lock when several threads put), and so ``skipped_paths``; the rest
the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from . import _log

if TYPE_CHECKING:
    from .capture import CapturedRequest

_monotonic = time.monotonic

DROP_REASONS = (
    "buffer_full",
    "serialize_error",
    "too_large",
    "kafka_error",
    "security",
    "spool_full",
    "spool_corrupt",
    "shutdown",
)
"""Why an entry can be dropped: the buffer bound was reached; building or encoding the
entry failed; it exceeds the size limit even truncated (``max_entry_bytes``), or the
broker's; Kafka rejected it or every delivery attempt failed; the cluster refused our
authentication or TLS; the disk spool was full; it was written to the spool and then
could not be read back (a damaged file); shutdown came first."""


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LogBuffer:
    """A bounded FIFO of captured requests with delivered/dropped/pending counters."""

    __slots__ = (
        "_full_warn_at",
        "_items",
        "_lock",
        "_waiter",
        "_wake_at",
        "_wake_sent",
        "delivered",
        "drops",
        "enqueued",
        "evict_oldest",
        "full",
        "limit",
        "owed",
        "recovered",
        "replayed",
        "retried",
        "settled",
        "skipped_hook",
        "skipped_paths",
        "spool_corrupt",
        "spooled",
        "truncated",
        "uncertain",
    )

    def __init__(self, limit: int, evict_oldest: bool = False) -> None:
        self.limit = limit
        self.evict_oldest = evict_oldest
        """Past the bound, make room by dropping the oldest entry (``drop_oldest``)."""
        self.owed = 0
        """Entries taken past the bound: as many of the oldest are to be dropped."""
        self._items: deque[CapturedRequest] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wake_at = 1
        self._wake_sent = False
        """A thread has already asked the loop to wake the current waiter."""
        self._lock = threading.Lock()
        """Guards ``put_threadsafe``'s count and append; never held across I/O."""
        self._full_warn_at = 0.0
        self.enqueued = 0
        self.full = 0
        """Entries refused at ``put`` because the bound was reached (``buffer_full``)."""
        self.settled = 0
        """Entries delivered, dropped after ``put`` or uncertain: no longer pending."""
        self.delivered = 0
        self.uncertain = 0
        self.retried = 0
        """Entries sent again after an attempt that may have reached Kafka (so they may be
        there twice); informational, not a final state."""
        self.spooled = 0
        """Entries of ours in the disk spool: pending, but not held in memory (so outside
        the bound on entries)."""
        self.replayed = 0
        """Entries delivered from the spool (ours and those recovered); informational."""
        self.recovered = 0
        """Entries a dead process left in the spool, delivered by us: counted enqueued
        (and delivered) when Kafka acknowledges them."""
        self.spool_corrupt = 0
        """Damaged regions of spool files skipped when reading; informational."""
        self.truncated = 0
        """Entries cut to fit the size limit (``max_entry_bytes``); informational: they
        are delivered or dropped like any other."""
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        self.skipped_paths = 0
        """Requests ``exclude_paths`` excluded: never enqueued, only counted."""
        self.skipped_hook = 0
        """Entries the ``should_log`` hook refused: enqueued, then settled unlogged."""

    def __len__(self) -> int:
        return len(self._items)

    @property
    def pending(self) -> int:
        """Entries neither delivered, dropped nor uncertain yet."""
        return self.enqueued + self.recovered - self.full - self.settled

    def put(self, item: CapturedRequest) -> None:
        """Append one entry from the publisher's own loop (the ASGI request path's only
        call); drops it when the bound is reached."""
        self.enqueued += 1
        if self.enqueued - self.full - self.settled - self.spooled > self.limit:
            if not self.evict_oldest or self.owed >= self.limit:
                self._refuse()
                return
            self.owed += 1
            if self.owed == 1:  # once per turn of the publisher, which pays them all
                self._items.append(item)
                self._wake()
                return
        items = self._items
        items.append(item)
        if len(items) >= self._wake_at and self._waiter is not None:
            self._wake()

    def put_threadsafe(self, item: CapturedRequest) -> None:
        """Append one entry from any thread (a WSGI worker's); drops it when the bound is
        reached. Wakes the loop (``call_soon_threadsafe``) only when its publisher waits
        for this entry, once per wait."""
        with self._lock:
            self.enqueued += 1
            owing = refused = False
            waiter = None
            if self.enqueued - self.full - self.settled - self.spooled > self.limit:
                if not self.evict_oldest or self.owed >= self.limit:
                    self.full += 1
                    refused = True
                else:
                    self.owed += 1
                    owing = self.owed == 1  # see put
            if not refused:
                items = self._items
                items.append(item)
                waiter = self._waiter
                if waiter is None or self._wake_sent or (len(items) < self._wake_at and not owing):
                    return
                self._wake_sent = True
        if refused:
            self._warn_full()  # outside the lock: logging does I/O
        elif waiter is not None and not waiter.done():
            # A closed loop raises RuntimeError: whoever takes over looks at the buffer.
            with contextlib.suppress(RuntimeError):
                waiter.get_loop().call_soon_threadsafe(self._wake)

    def skip(self) -> None:
        """Count one request ``exclude_paths`` excluded, from the publisher's own loop."""
        self.skipped_paths += 1

    def skip_threadsafe(self) -> None:
        """Count one request ``exclude_paths`` excluded, from any thread."""
        with self._lock:
            self.skipped_paths += 1

    def skip_by_hook(self) -> None:
        """Count one entry the ``should_log`` hook refused (it is no longer pending)."""
        self.settled += 1
        self.skipped_hook += 1

    def _refuse(self) -> None:
        self.full += 1
        self._warn_full()

    def _warn_full(self) -> None:
        # Kafka is down or slow and every request lands here: count, warn seldom.
        now = _monotonic()
        if now >= self._full_warn_at:
            self._full_warn_at = now + _log.INTERVAL
            _log.logger.warning(
                "kafka_log_middleware: buffer full (%d entries pending), dropping log "
                "entries (%d so far)",
                self.limit,
                self.full,
            )

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, count: int, timeout: float | None) -> None:
        """Wait until at least ``count`` entries are buffered, or ``timeout`` seconds passed."""
        if len(self._items) >= count:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._wake_at = count
        self._wake_sent = False
        self._waiter = waiter
        if len(self._items) >= count:  # put from another thread meanwhile
            self._waiter = None
            return
        # A timer settles the waiter: no asyncio.wait_for, which on Python 3.11 swallows
        # a cancellation that arrives as the waiter completes (and would hang shutdown).
        timer = None if timeout is None else loop.call_later(timeout, _settle, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def wake(self) -> None:
        """Wake a waiting publisher now (at shutdown or on a config change)."""
        self._wake()

    def take_owed(self) -> int:
        """How many of the oldest entries to drop now (``evict_oldest``); resets the debt."""
        with self._lock:
            owed, self.owed = self.owed, 0
        return owed

    def peek(self) -> CapturedRequest | None:
        """The oldest buffered entry, if any."""
        return self._items[0] if self._items else None

    def take(self, count: int) -> list[CapturedRequest]:
        """Remove and return up to ``count`` of the oldest entries (they stay pending)."""
        items = self._items
        return [items.popleft() for _ in range(min(count, len(items)))]

    def drain_all(self) -> list[CapturedRequest]:
        """Remove and return every buffered entry."""
        items = self._items
        # popleft, not clear(): another thread may append meanwhile.
        return [items.popleft() for _ in range(len(items))]

    def deliver(self, count: int) -> None:
        """Count ``count`` entries as acknowledged by Kafka."""
        self.settled += count
        self.delivered += count

    def drop(self, reason: str, count: int) -> None:
        """Count ``count`` entries as dropped for ``reason`` (one of ``DROP_REASONS``)."""
        self.settled += count
        self.drops[reason] += count
        _log.warn(
            "drop:" + reason, "kafka_log_middleware: dropped %d log entries (%s)", count, reason
        )

    def give_up_uncertain(self, count: int) -> None:
        """Count ``count`` entries as given up although they may have reached Kafka."""
        self.settled += count
        self.uncertain += count
        _log.warn(
            "uncertain",
            "kafka_log_middleware: gave up on %d log entries that may or may not have "
            "reached Kafka (their last attempt was not acknowledged)",
            count,
        )

    def count_retried(self, count: int) -> None:
        """Count ``count`` entries sent again after an attempt that may have reached Kafka."""
        self.retried += count

    def count_truncated(self) -> None:
        """Count one entry cut to fit the size limit."""
        self.truncated += 1

    def stats(self) -> dict[str, int]:
        """Counters as a dict; ``enqueued == delivered + dropped + uncertain +
        skipped_should_log + pending``."""
        # Read from any thread while others count: settled counters first, then ``full``,
        # then the buffer's length, then ``enqueued`` (each entry is enqueued before it is
        # buffered, and leaves the buffer before it settles), and derive the totals from
        # the values read, so that the invariant (and buffered <= pending) holds in every
        # snapshot.
        delivered, uncertain, recovered = self.delivered, self.uncertain, self.recovered
        skipped_hook = self.skipped_hook
        drops = dict(self.drops)
        drops["buffer_full"] += self.full
        buffered = len(self._items)
        spooled = self.spooled
        enqueued = self.enqueued + recovered
        skipped_paths = self.skipped_paths
        dropped = sum(drops.values())
        stats = {
            "enqueued": enqueued,
            "delivered": delivered,
            "dropped": dropped,
            "uncertain": uncertain,
            "pending": enqueued - delivered - dropped - uncertain - skipped_hook,
            "buffered": buffered,
            "spooled": spooled,
            "replayed": self.replayed,
            "recovered": recovered,
            "spool_corrupt": self.spool_corrupt,
            "retried": self.retried,
            "truncated": self.truncated,
            "skipped": skipped_paths + skipped_hook,
            "skipped_exclude_paths": skipped_paths,
            "skipped_should_log": skipped_hook,
        }
        for reason, count in drops.items():
            stats["dropped_" + reason] = count
        return stats
