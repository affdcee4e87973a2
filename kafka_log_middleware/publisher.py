"""The background publisher: drains the buffer, builds and encodes Kong entries, sends them.

One task per middleware instance and event loop. Captured requests are encoded soon
after they arrive (every ``ENCODE_AT`` entries or ``ENCODE_DELAY``), in small slices
that yield to the event loop, into an outbox of bytes per producer and topic. So the
buffer of captured requests stays small even while Kafka is down: what waits is compact
bytes that the garbage collector need not scan. An outbox is handed to its producer,
once connected, when it holds a batch (``producer_request_limits_messages_per_request``)
or its oldest entry has waited ``producer_async_flush_timeout`` (Kong's flush timer).
Each entry ends delivered, dropped with a reason, or uncertain (see ``buffer.py``), or
is skipped unbuilt when the ``should_log`` hook refuses it;
failed batches are retried with backoff up to ``producer_request_retries_max_attempts``
times. A retry after an attempt that may have reached Kafka may duplicate its entries:
those are counted as ``retried``, and entries given up after such an attempt as
``uncertain``, never as dropped. The encoded bytes held (outboxes, retries, in flight)
are bounded by ``buffer_max_bytes``; ``delivery="at_least_once"`` retries without a
limit (backing off up to ``_RETRY_BACKOFF_MAX``) and holds entries for a producer the
cluster refuses instead of dropping them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from . import _log, filters, truncation
from .buffer import LogBuffer
from .capture import CapturedRequest
from .config import KafkaLogConfig
from .producers import (
    CLOSED,
    SLICE_SECONDS,
    Failure,
    Message,
    Producer,
    ProducerCache,
    Verdict,
)
from .serializer import encode_entry, encode_run, message_key, rest_of_run
from .spooling import Replay, Spooling

Resolver = Callable[[CapturedRequest], KafkaLogConfig | None]
"""Per-request config choice (e.g. a topic per route); None keeps the request's config."""
DeliveryObserver = Callable[[str, int, float, float], None]
"""Told of each acknowledged batch, in the delivery report: its topic, how many of its
entries were delivered, and the oldest and newest response-end times (``perf_counter``)
of its entries (see ``metrics.py``)."""

_CHUNK = 8
"""Entries encoded between two looks at the clock, at first; then adapted (``_chunk``)."""
_CHUNK_MAX = 64
"""The most entries encoded between two looks at the clock (~0.15 ms of plain ones)."""
ENCODE_AT = 32
"""Buffered entries that wake the publisher to encode them."""
ENCODE_DELAY = 0.01
"""Longest a captured request waits in the buffer before it is encoded, in seconds."""
THREADED_ENCODE_AT = 1024
THREADED_ENCODE_DELAY = 0.05
"""The same for a publisher fed from other threads (the WSGI door's workers): each wake
of its loop hands the GIL over and back, which costs far more than a turn of a loop the
request path runs in, so it wakes 20 times a second at most under load."""
_READY_POLL = 0.25
"""How often an outbox waiting for its producer's connection looks again, in seconds."""
_RETRY_BACKOFF_MAX = 5.0
"""Longest wait between two attempts past ``producer_request_retries_max_attempts``
(``at_least_once``), in seconds."""


def _next_chunk(size: int, taken: int, seconds: float) -> int:
    """The next chunk's size, after ``taken`` entries (of ``size`` asked) took ``seconds``:
    doubled (up to ``_CHUNK_MAX``) while a full chunk takes under a quarter of a slice,
    halved (down to 1) when one takes over half, so that plain entries go in long native
    runs and heavy ones (large bodies) still let the loop in as often as a slice says."""
    if seconds > SLICE_SECONDS / 2:
        return max(size // 2, 1)
    if taken == size and seconds < SLICE_SECONDS / 4:
        return min(size * 2, _CHUNK_MAX)
    return size


def _size(messages: list[Message]) -> int:
    """The bytes ``messages`` hold (keys and values), as the byte bound counts them."""
    return sum(len(value) + (0 if key is None else len(key)) for key, value in messages)


def _at_least_once(config: KafkaLogConfig) -> bool:
    return config.delivery == "at_least_once"


@dataclass(eq=False)
class _Use:
    """A producer this publisher holds, with its batches awaiting acknowledgement."""

    producer: Producer
    grace: float
    in_flight: int = 0
    """Entries handed to the producer and not reported yet."""
    last_used: float = field(default_factory=time.monotonic)
    parked: list[_Parked] = field(default_factory=list)
    """Entries for the spool that wait for this producer's older batches to settle, so
    that the spool gets them in the order they were built (see ``Publisher._park``)."""


@dataclass(eq=False)
class _Parked:
    """Entries on their way to the spool, and where they stand in build order."""

    order: float
    box: _Outbox
    messages: list[Message]
    maybe_written: bool


@dataclass(eq=False)
class _Outbox:
    """Encoded entries for one producer, topic and delivery policy, waiting for a batch or
    the flush timer; its ``config`` (the first of its entries') says how they travel."""

    use: _Use
    config: KafkaLogConfig
    messages: list[Message] = field(default_factory=list)
    size: int = 0
    """The bytes of ``messages`` (see ``_size``)."""
    since: float = 0.0
    first_end: float = 0.0
    """The response-end time of the oldest of ``messages`` (for the latency metric)."""
    last_end: float = 0.0
    """That of the newest (two floats: a tuple would be rebuilt for every entry)."""

    @property
    def ends(self) -> tuple[float, float]:
        """The oldest and newest response-end times of ``messages``."""
        return self.first_end, self.last_end

    def take(self) -> tuple[list[Message], int]:
        """All of ``messages`` and their bytes, leaving the outbox empty."""
        messages, size = self.messages, self.size
        self.messages, self.size = [], 0
        return messages, size


@dataclass(eq=False)
class _Retry:
    box: _Outbox
    """Where the messages came from: their producer, topic and delivery policy."""
    messages: list[Message]
    attempt: int
    due: float
    maybe_written: bool = False
    """An earlier attempt may have reached Kafka (and the entries are counted retried)."""
    order: float = 0.0
    """Where the messages stand in build order (``_Attempt.order``)."""
    span: float = 1.0
    ends: tuple[float, float] = (0.0, 0.0)
    """See ``_Outbox.ends``."""


class _Attempt:
    """One hand-over's delivery report (an ``OnDone``), knowing what it reports on: the
    outbox the messages came from, the attempt's number, and ``written_before``: an
    earlier attempt may have reached Kafka (so they are counted as retried already)."""

    __slots__ = (
        "box", "count", "ends", "number", "order", "publisher", "size", "span", "written_before"
    )  # fmt: skip

    def __init__(
        self,
        publisher: Publisher,
        box: _Outbox,
        number: int,
        written: bool,
        messages: list[Message],
        order: tuple[float, float],
        ends: tuple[float, float],
        size: int | None = None,
    ) -> None:
        self.publisher = publisher
        self.box = box
        self.number = number
        self.written_before = written
        self.order, self.span = order
        """Build order: batches are numbered as first handed over (halves of a split
        batch share its number's span), so that what goes to the spool keeps the order."""
        self.ends = ends
        """See ``_Outbox.ends``."""
        self.count = len(messages)
        """Messages not reported yet."""
        self.size = _size(messages) if size is None else size
        """Their bytes (see ``Publisher._held``)."""

    def __call__(
        self, delivered: int, failed: list[Message], failure: Failure | None, resent: bool
    ) -> None:
        self.publisher._reported(self, delivered, failed, failure, resent)


class Publisher:
    """Moves captured requests from a ``LogBuffer`` to Kafka, in the background."""

    def __init__(
        self,
        buffer: LogBuffer,
        current_config: Callable[[], KafkaLogConfig],
        cache: ProducerCache,
        resolver: Resolver | None = None,
        threaded: bool = False,
    ) -> None:
        self.buffer = buffer
        self.loop = asyncio.get_running_loop()
        self._encode_at = THREADED_ENCODE_AT if threaded else ENCODE_AT
        self._encode_delay = THREADED_ENCODE_DELAY if threaded else ENCODE_DELAY
        self._config = current_config
        self._cache = cache
        self._resolver = resolver
        self._uses: dict[tuple[Any, ...], _Use] = {}
        self._outboxes: dict[tuple[int, str], _Outbox] = {}
        self._retries: deque[_Retry] = deque()
        self._held = 0
        """Bytes of the encoded entries held: in outboxes, retries, parked or in flight."""
        self._chunk = _CHUNK
        """Entries the next chunk takes from the buffer (see ``_next_chunk``)."""
        self._order = 0.0
        """The last batch number given (see ``_Attempt.order``)."""
        self._spooling: Spooling | None = None
        """The disk spool, once a config in force has ``overflow="spool"``."""
        self._stopping = False
        self._accounting_closed = False
        self._task: asyncio.Task[None] | None = None
        self.observers: list[DeliveryObserver] = []
        """Told of every acknowledged batch (the pipeline's list, shared)."""

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the background task and begin connecting the current config's producer."""
        if self._task is None:
            self._use(self._config())
            self._spooling_for(self._config())
            self._task = self.loop.create_task(self._run(), name="kafka-log-publisher")

    def producers(self) -> list[Producer]:
        """The producers this publisher holds."""
        return [use.producer for use in self._uses.values()]

    async def close(self, timeout: float) -> None:
        """Send what is buffered, wait for acknowledgements, close producers; at most ``timeout`` s.

        What is still pending when the time is up is counted: as ``uncertain`` when it may
        have reached Kafka (handed to the client, unacknowledged), else as dropped
        (``shutdown``).
        """
        deadline = time.monotonic() + timeout
        self._stopping = True
        self.buffer.wake()
        if self._task is not None:
            try:
                async with asyncio.timeout(max(timeout, 0.001)):  # see LogBuffer.wait
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            except Exception as exc:
                _log.warn(
                    "publisher", "kafka_log_middleware: publisher failed: %s", type(exc).__name__
                )
        # Acknowledgements arrive as callbacks; polling briefly at shutdown keeps it simple.
        while self._in_flight() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self._give_up_pending()
        remaining = max(deadline - time.monotonic(), 0.1)
        for use in self._uses.values():
            self._cache.release(use.producer, remaining)
        self._uses.clear()
        await self._cache.wait_closed()

    def _give_up_pending(self) -> None:
        self._stopping = True
        for use in self._uses.values():
            for _, messages, on_done in use.producer.withdraw():
                on_done(0, messages, CLOSED, False)  # never sent: counted dropped below
        if self._spooling is not None:
            self._spill_all(self._spooling)
        self._accounting_closed = True
        maybe_written = self._in_flight() + sum(
            len(retry.messages) for retry in self._retries if retry.maybe_written
        )
        self.buffer.drain_all()
        self._outboxes.clear()
        self._retries.clear()
        self._held = 0
        if maybe_written:
            self.buffer.give_up_uncertain(maybe_written)
        left = self.buffer.pending - self.buffer.spooled  # those on disk stay pending there
        if left:
            self.buffer.drop("shutdown", left)

    def _spill_all(self, spooling: Spooling) -> None:
        """At shutdown: what is pending in memory and not with a client goes to the spool
        (the captured requests encoded first), which is then synced and let go of."""
        older: list[_Parked] = []  # in build order: what failed or waits, then the rest
        for use in self._uses.values():
            older += use.parked
            use.parked = []
        for retry in self._retries:
            if retry.maybe_written:
                self.buffer.count_retried(len(retry.messages))
            older.append(_Parked(retry.order, retry.box, retry.messages, False))
        self._retries.clear()
        for entries in sorted(older, key=lambda entries: entries.order):
            self._spill(entries.box, entries.messages)
        for box in self._outboxes.values():
            if box.messages:
                self._spill(box, box.take()[0])
        for request in self.buffer.drain_all():
            encoded = self._encode(request)
            if encoded is not None:
                spooling.add(encoded[0].topic, [encoded[1]])
        spooling.close()

    def take_over(self, old: Publisher) -> None:
        """Send from this loop what ``old``, whose event loop is gone, had not sent yet.

        Its outboxes, retries and the batches its producers had not given their clients
        are taken over; what those clients hold may reach Kafka or not: ``uncertain``.
        The buffer is shared already.
        """
        for use in old._uses.values():
            for _, messages, on_done in use.producer.withdraw():
                use.in_flight -= len(messages)
                attempt = cast(_Attempt, on_done)  # every report we hand out is one
                box = self._outbox(attempt.box.config)
                self._retries.append(
                    _Retry(
                        box,
                        messages,
                        attempt.number,
                        0.0,
                        attempt.written_before,
                        ends=attempt.ends,
                    )
                )
            use.producer.abandon()
            for entries in use.parked:
                box = self._outbox(entries.box.config)
                self._retries.append(_Retry(box, entries.messages, 1, 0.0, entries.maybe_written))
        old._accounting_closed = True
        for old_box in old._outboxes.values():
            if old_box.messages:
                box = self._outbox(old_box.config)
                self._retries.append(
                    _Retry(box, old_box.messages, 1, 0.0, False, ends=old_box.ends)
                )
        for retry in old._retries:
            box = self._outbox(retry.box.config)
            self._retries.append(
                _Retry(
                    box, retry.messages, retry.attempt, 0.0, retry.maybe_written, ends=retry.ends
                )
            )
        if old._spooling is not None:  # the same process: its spool and locks are ours
            self._spooling, old._spooling = old._spooling, None
        self._held += sum(_size(retry.messages) for retry in self._retries)
        in_flight = old._in_flight()
        old._outboxes.clear()
        old._retries.clear()
        old._uses.clear()
        if in_flight:
            self.buffer.give_up_uncertain(in_flight)

    def _in_flight(self) -> int:
        return sum(use.in_flight for use in self._uses.values())

    # -- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wait_for_work()
            if self.buffer.owed:
                self._evict(self.buffer.take_owed(), 0, self._config().buffer_max_bytes)
            if self.buffer:
                await self._encode_buffered()
            await self._send_due_retries()
            await self._flush_outboxes()
            spooling = self._spooling
            if spooling is not None:
                for use in self._uses.values():
                    self._unpark(use)
                await spooling.step(self._stopping)
                await self._replay(spooling)
            if self._stopping and not self.buffer and not self._waiting() and _spooled(spooling):
                return

    def _waiting(self) -> list[_Use]:
        """The producers that encoded entries or retries are waiting for."""
        uses = [box.use for box in self._outboxes.values() if box.messages]
        return uses + [retry.box.use for retry in self._retries]

    async def _wait_for_work(self) -> None:
        """Sleep until entries are to be encoded, or an outbox or a retry is due.

        Producers of configs no longer in force are released while waiting. At shutdown,
        only a producer still connecting is waited for (``close`` bounds that).
        """
        if self._stopping:
            unready = [use for use in self._waiting() if not use.producer.ready]
            if unready and len(unready) == len(self._waiting()) and self._spooling is None:
                await unready[0].producer.wait_ready(_READY_POLL)
            elif self._spooling is not None and self._spooling.replaying is not None:
                await asyncio.sleep(0.01)  # its report comes from the client
            return
        while not self._stopping:
            if self.buffer.owed:
                return
            config = self._config()
            self._sweep(config)
            now = time.monotonic()
            spool_due = self._spool_due_in(config, now)
            if spool_due is not None and spool_due <= 0:
                return
            timers = [self._release_in(config), spool_due]
            head = self.buffer.peek()
            if head is not None:
                encode_in = min(self._encode_delay, head.config.producer_async_flush_timeout / 1000)
                encode_in -= time.perf_counter() - head.t_end
                if encode_in <= 0 or len(self.buffer) >= self._encode_at:
                    return
                timers.append(encode_in)
            for box in self._outboxes.values():
                due = self._due_in(box, now)
                if due is not None and due <= 0:
                    return
                timers.append(due)
            for retry in self._retries:
                if not retry.box.use.producer.ready:
                    if self._drops_refused(retry.box):
                        return
                    timers.append(_READY_POLL)
                elif retry.due <= now:
                    return
                else:
                    timers.append(retry.due - now)
            waits = [t for t in timers if t is not None]
            # An empty buffer wakes on its first entry, to start that entry's encode timer.
            count = 1 if head is None else self._encode_at
            await self.buffer.wait(count, min(waits) if waits else None)

    def _spool_due_in(self, config: KafkaLogConfig, now: float) -> float | None:
        """Seconds until the spool has work (see ``Spooling.due_in``); None without one."""
        spooling = self._spooling_for(config)
        if spooling is None:
            return None
        return spooling.due_in(now, self._may_replay(self._use(config)))

    def _spooling_for(self, config: KafkaLogConfig) -> Spooling | None:
        """The spool, made when the config in force is the first to ask for one."""
        if self._spooling is None and config.overflow == "spool":
            self._spooling = Spooling(self.buffer, config)
        return self._spooling

    def _may_replay(self, use: _Use) -> bool:
        """Spooled entries may go to ``use``'s producer: it is connected, and nothing of
        its own (older) waits in memory or in flight."""
        return (
            use.producer.ready
            and not use.in_flight
            and not use.parked
            and not any(retry.box.use is use for retry in self._retries)
            and not any(box.use is use and box.messages for box in self._outboxes.values())
        )

    async def _replay(self, spooling: Spooling) -> None:
        """Hand the spool's next batch to the current config's producer, when it may go."""
        if self._stopping or not spooling.can_replay(time.monotonic()):
            return
        use = self._use(self._config())
        if not self._may_replay(use):
            return
        batch = await spooling.read()
        if batch is None:
            return
        report = Replay(spooling, batch)
        topics: dict[str, list[Message]] = {}
        for topic, message in batch.records:
            topics.setdefault(topic, []).append(message)
        use.last_used = time.monotonic()
        for topic, messages in topics.items():
            try:
                await use.producer.send(topic, messages, report)
            except Exception as exc:  # a backend failing outright: the batch goes again
                report(0, messages, Failure(Verdict.RETRY, type(exc).__name__), False)

    def _to_disk(self, box: _Outbox) -> bool:
        """Whether ``box``'s new entries go to the spool rather than to memory: entries
        are there already (order), or its producer's entries wait for a retry."""
        spooling = self._spooling
        return (
            spooling is not None
            and box.config.overflow == "spool"
            and (
                spooling.active
                or bool(box.use.parked)
                or any(retry.box.use is box.use for retry in self._retries)
            )
        )

    def _spills(self, box: _Outbox) -> bool:
        """Whether ``box``'s entries may go to the spool."""
        return self._spooling is not None and box.config.overflow == "spool"

    def _spill(self, box: _Outbox, messages: list[Message]) -> None:
        """Move ``messages`` (held in memory) to the spool."""
        assert self._spooling is not None
        self._held -= _size(messages)
        self._spooling.add(box.config.topic, messages)

    def _next_order(self) -> float:
        """A place in build order after every batch handed over so far."""
        self._order += 1
        return self._order

    def _park(self, box: _Outbox, messages: list[Message], order: float, written: bool) -> None:
        """Send ``messages`` (held in memory) to the spool once no batch of their producer
        is in flight: a batch in flight may yet fail, and the spool must get it first."""
        box.use.parked.append(_Parked(order, box, messages, written))
        self._unpark(box.use)

    def _unpark(self, use: _Use) -> None:
        """Spool what ``use`` parked, in build order, when nothing of it is in flight."""
        if use.in_flight or not use.parked:
            return
        parked, use.parked = use.parked, []
        parked.sort(key=lambda entries: entries.order)
        for entries in parked:
            self._spill(entries.box, entries.messages)
        self.buffer.wake()

    def _park_new(self, box: _Outbox, message: Message) -> None:
        """Park a newly built entry (see ``_park``), after everything handed over and
        after what its outbox holds (built before it)."""
        parked = box.use.parked
        if box.messages:
            parked.append(_Parked(self._next_order(), box, box.take()[0], False))
        last = parked[-1] if parked else None
        if last is not None and last.order == self._order and last.box is box:
            last.messages.append(message)
        else:
            parked.append(_Parked(self._next_order(), box, [message], False))

    def _due_in(self, box: _Outbox, now: float) -> float | None:
        """Seconds until ``box`` is to be handed over (<= 0: now); None when empty."""
        if not box.messages:
            return None
        if not box.use.producer.ready:
            if self._drops_refused(box):
                return 0.0
            if self._spills(box):
                return box.since + box.config.spool_sync_interval / 1000 - now  # see flush
            return _READY_POLL
        config = box.config
        batch = config.producer_request_limits_messages_per_request
        if not config.producer_async or len(box.messages) >= batch:
            return 0.0
        return box.since + config.producer_async_flush_timeout / 1000 - now

    async def _encode_buffered(self) -> None:
        """Build and encode the buffered entries into the outboxes, a time slice at a time.

        Slices are bounded in time, not in entries: under load the loop runs many
        requests between two slices, and a fixed small count would fall behind. Runs of
        plain entries (see ``_runs``) are encoded in one native call each.
        """
        now = time.monotonic()
        left = len(self.buffer)  # not those arriving meanwhile: outboxes get their turn
        last_config: KafkaLogConfig | None = None
        box: _Outbox | None = None
        to_disk = False
        limit = -1  # the entry limit of last_config's runs; -1: no runs
        clock = time.perf_counter
        slice_end = clock() + SLICE_SECONDS
        bound = self._config().buffer_max_bytes
        while left > 0 and self.buffer:
            started = clock()
            chunk = self.buffer.take(self._chunk)
            left -= len(chunk)
            index = 0
            while index < len(chunk):
                request = chunk[index]
                config = request.config
                if config is not last_config or box is None:  # mostly one config: look up once
                    last_config = config
                    box, to_disk, limit = self._destination(config)
                rest: object = None
                if limit >= 0:
                    run = encode_run(chunk, index, config, limit)
                    if run is None:  # no native plan for this config: per entry, this slice
                        limit = -1
                    else:
                        messages, size, rest = run
                        if messages:
                            last = chunk[index + len(messages) - 1]
                            if self._held + size <= bound:
                                self._add_run(box, messages, size, request, last, now)
                            else:  # at the bound: each on its own (dropped, or room made)
                                for message, of in zip(messages, chunk[index:], strict=False):
                                    self._place(box, of, message, False, bound, now)
                            index += len(messages)
                            if index == len(chunk):
                                break
                            request = chunk[index]
                index += 1
                encoded = self._encode(request, rest)
                if encoded is None:
                    continue
                config, message = encoded
                if config is not last_config:
                    last_config = config
                    box, to_disk, limit = self._destination(config)
                self._place(box, request, message, to_disk, bound, now)
            ended = clock()
            self._chunk = _next_chunk(self._chunk, len(chunk), ended - started)
            if ended >= slice_end:
                await asyncio.sleep(0)
                slice_end = clock() + SLICE_SECONDS

    def _destination(self, config: KafkaLogConfig) -> tuple[_Outbox, bool, int]:
        """Where ``config``'s entries go: its outbox, whether to the spool instead
        (``_to_disk``), and the entry limit of its runs (-1: no runs, see ``_runs``)."""
        box = self._outbox(config)
        to_disk = self._to_disk(box)
        return box, to_disk, config.entry_limit if self._runs(config) and not to_disk else -1

    def _runs(self, config: KafkaLogConfig) -> bool:
        """Whether ``config``'s entries may be encoded in runs (``serializer.encode_run``):
        no hook decides per entry here, and messages have no key."""
        return (
            self._resolver is None
            and config.should_log is None
            and config.key is None
            and config.key_query_arg is None
        )

    def _add_run(
        self,
        box: _Outbox,
        messages: list[Message],
        size: int,
        first: CapturedRequest,
        last: CapturedRequest,
        now: float,
    ) -> None:
        """Add a run of entries (``first`` to ``last``) that fits the byte bound to ``box``."""
        self._held += size
        if not box.messages:
            box.since = now
            box.first_end = first.t_end
        box.last_end = last.t_end
        box.messages += messages
        box.size += size

    def _place(
        self,
        box: _Outbox,
        request: CapturedRequest,
        message: Message,
        to_disk: bool,
        bound: int,
        now: float,
    ) -> None:
        """Put one encoded entry in ``box``, or in the spool; past the byte bound, make
        room or drop it (see ``_made_room``)."""
        config = box.config
        size = len(message[1]) + (0 if message[0] is None else len(message[0]))
        if self._held + size > bound:
            to_disk = to_disk or (self._spooling is not None and config.overflow == "spool")
            if not to_disk and not self._made_room(size, bound, config):
                return
        if to_disk:
            assert self._spooling is not None
            if (box.use.in_flight or box.use.parked) and self._held + size <= bound:
                self._held += size
                self._park_new(box, message)
            else:
                self._spooling.add(config.topic, [message])
            return
        self._held += size
        if not box.messages:
            box.since = now
            box.first_end = request.t_end
        box.last_end = request.t_end
        box.messages.append(message)
        box.size += size

    def _made_room(self, size: int, bound: int, config: KafkaLogConfig) -> bool:
        """Past the byte bound: True when the oldest entries made room for ``size`` more
        bytes (``drop_oldest``); else the new entry is dropped (``buffer_full``)."""
        if config.overflow == "drop_oldest":
            self._evict(0, size, bound)
            if self._held + size <= bound:
                return True
        self.buffer.drop("buffer_full", 1)
        return False

    def _evict(self, count: int, room: int, bound: int) -> None:
        """Drop at least ``count`` of the oldest entries not handed to Kafka, and more
        until ``room`` bytes fit under ``bound``: retries first (the oldest), then
        outboxes, then captured requests (``buffer_full``; possibly written: uncertain)."""

        def done() -> bool:
            return count <= 0 and self._held + room <= bound

        while self._retries and not done():
            retry = self._retries[0]
            message = retry.messages.pop(0)
            if not retry.messages:
                self._retries.popleft()
            self._held -= _size([message])
            count -= 1
            if retry.maybe_written:
                self.buffer.give_up_uncertain(1)
            else:
                self.buffer.drop("buffer_full", 1)
        for box in sorted(self._outboxes.values(), key=lambda b: b.since):
            taken = 0
            while taken < len(box.messages) and not done():
                size = _size([box.messages[taken]])
                self._held -= size
                box.size -= size
                taken += 1
                count -= 1
            if taken:
                del box.messages[:taken]
                self.buffer.drop("buffer_full", taken)
        if count > 0:
            taken = len(self.buffer.take(count))
            if taken:
                self.buffer.drop("buffer_full", taken)

    def _outbox(self, config: KafkaLogConfig) -> _Outbox:
        use = self._use(config)
        key = (id(use), config.topic, *_delivery(config))
        box = self._outboxes.get(key)
        if box is None:
            box = self._outboxes[key] = _Outbox(use, config)
        return box

    async def _flush_outboxes(self) -> None:
        """Hand over every outbox that is due (all of them, at shutdown) and connected."""
        now = time.monotonic()
        for key, box in list(self._outboxes.items()):
            due = self._due_in(box, now)
            if due is None:
                del self._outboxes[key]
            elif box.use.parked and self._spills(box):  # they follow what is parked
                self._park(box, box.take()[0], self._next_order(), False)
            elif box.use.producer.ready and (due <= 0 or self._stopping):
                messages, size = box.take()
                if box.config.producer_async:
                    await self._hand_over(box, messages, 1, False, box.ends, size=size)
                else:  # Kong's sync mode: each entry on its own
                    for message in messages:
                        await self._hand_over(box, [message], 1, False, box.ends)
            elif self._drops_refused(box):
                self._refused(box.take()[0], False)
            elif self._spills(box) and (
                self._stopping or now - box.since >= box.config.spool_sync_interval / 1000
            ):
                # Waiting for a connection: on disk after a sync interval (or at shutdown),
                # so that a crash loses no more than that.
                self._park(box, box.take()[0], self._next_order(), False)

    def _encode(
        self, request: CapturedRequest, rest: object = None
    ) -> tuple[KafkaLogConfig, Message] | None:
        """The request's config and message; None when it is skipped or dropped. ``rest``:
        what a run that stopped at it left (``serializer.rest_of_run``)."""
        if request.config.should_log is not None and not filters.should_log(request):
            self.buffer.skip_by_hook()
            return None
        try:
            if self._resolver is not None:
                chosen = self._resolver(request)
                if chosen is not None:
                    request.config = chosen
            value = encode_entry(request) if rest is None else rest_of_run(request, rest)
            config = request.config
            plain = config.key is None and config.key_query_arg is None
            key = None if plain else message_key(request)
            room = config.entry_limit - (0 if key is None else len(key))
            if len(value) > room:
                fitted = self._fitted(value, room, config)
                if fitted is None:
                    return None
                value = fitted
            return config, (key, value)
        except Exception as exc:
            self.buffer.drop("serialize_error", 1)
            _log.warn(
                "serialize",
                "kafka_log_middleware: could not build a log entry (%s)",
                type(exc).__name__,
            )
            return None

    def _fitted(self, value: bytes, room: int, config: KafkaLogConfig) -> bytes | None:
        """An entry over the size limit, truncated to ``room`` bytes; dropped (``too_large``)
        only if even its keys and numbers take more."""
        fitted = truncation.fit(value, room)
        if fitted is None:
            self.buffer.drop("too_large", 1)
            return None
        self.buffer.count_truncated()
        _log.warn(
            "truncated",
            "kafka_log_middleware: a log entry of %d bytes was over the %d-byte limit "
            "(max_entry_bytes); its longest values were cut (counted as truncated)",
            len(value),
            config.entry_limit,
        )
        return fitted

    async def _hand_over(
        self,
        box: _Outbox,
        messages: list[Message],
        attempt: int,
        written_before: bool,
        ends: tuple[float, float],
        order: tuple[float, float] | None = None,
        size: int | None = None,
    ) -> None:
        """Give ``messages`` to their (connected) producer; failures are retried.
        ``order``: theirs in build order (see ``_Attempt.order``); None: the next.
        ``size``: their bytes, when known."""
        use = box.use
        use.in_flight += len(messages)
        use.last_used = time.monotonic()
        if order is None:
            order = (self._next_order(), 1.0)
        on_done = _Attempt(self, box, attempt, written_before, messages, order, ends, size)
        try:
            await use.producer.send(box.config.topic, messages, on_done)
        except Exception as exc:  # a backend failing outright: count, never lose
            on_done(0, messages, Failure(Verdict.RETRY, type(exc).__name__), False)

    def _reported(
        self,
        attempt: _Attempt,
        delivered: int,
        failed: list[Message],
        failure: Failure | None,
        resent: bool,
    ) -> None:
        attempt.box.use.in_flight -= delivered + len(failed)
        if self._accounting_closed:
            return
        # What was delivered leaves the byte bound; what failed is held until it settles.
        reported = delivered + len(failed)
        failed_size = _size(failed) if failed else 0
        if reported >= attempt.count:
            delivered_size = attempt.size - failed_size
        else:  # part of a batch (librdkafka reports per message): the batch's mean
            delivered_size = delivered * attempt.size // max(attempt.count, 1)
        attempt.count -= reported
        attempt.size -= delivered_size + failed_size
        self._held -= delivered_size
        if delivered:
            self.buffer.deliver(delivered)
            if resent and not attempt.written_before:  # the client re-sent them itself
                self.buffer.count_retried(delivered)
            for observe in self.observers:
                observe(attempt.box.config.topic, delivered, *attempt.ends)
        if failed and failure is not None:
            self._failed(attempt, failed, failure)
        self._unpark(attempt.box.use)

    def _failed(self, report: _Attempt, messages: list[Message], failure: Failure) -> None:
        """Retry, split or give up ``messages``, which ``report``'s attempt failed to deliver."""
        box, attempt, written_before, ends = (
            report.box,
            report.number,
            report.written_before,
            report.ends,
        )
        maybe_written = written_before or failure.maybe_written
        newly_uncertain = len(messages) if maybe_written and not written_before else 0
        verdict = failure.verdict
        if verdict is Verdict.SPLIT and len(messages) > 1:
            # The broker refuses the whole batch; split it, as Kafka's Java client does,
            # so one oversized entry does not take its neighbours down with it.
            half = len(messages) // 2
            now = time.monotonic()
            span = report.span / 2
            for part, order in (
                (messages[half:], report.order + span),
                (messages[:half], report.order),
            ):
                self._retries.appendleft(
                    _Retry(box, part, attempt, now, maybe_written, order, span, ends)
                )
            self._requeued(newly_uncertain)
            return
        config = box.config
        attempts = config.producer_request_retries_max_attempts
        if verdict is Verdict.RETRY and self._spills(box):
            # Replayed in order once Kafka takes entries again, after older batches.
            self._park(box, messages, report.order, maybe_written)
            self._requeued(newly_uncertain)
            return
        if (
            verdict is Verdict.RETRY
            and (attempt < attempts or _at_least_once(config))
            and not self._stopping
        ):
            backoff = config.producer_request_retries_backoff_timeout / 1000
            if attempt >= attempts:  # at_least_once goes on, ever more slowly
                backoff = min(
                    max(backoff, 0.05) * 2 ** min(attempt - attempts, 16), _RETRY_BACKOFF_MAX
                )
            due = time.monotonic() + backoff
            self._retries.append(
                _Retry(
                    box, messages, attempt + 1, due, maybe_written, report.order, report.span, ends
                )
            )
            self._requeued(newly_uncertain)
            return
        self._held -= _size(messages)
        if maybe_written:
            self.buffer.give_up_uncertain(len(messages))
        elif verdict in (Verdict.TOO_LARGE, Verdict.SPLIT):
            self.buffer.drop("too_large", len(messages))
        elif verdict is Verdict.RETRY and self._stopping:
            self.buffer.drop("shutdown", len(messages))
        else:
            self.buffer.drop("kafka_error", len(messages))
        _log.warn(
            "deliver",
            "kafka_log_middleware: Kafka delivery failed after %d attempt(s): %s",
            attempt,
            failure.cause,
        )

    def _drops_refused(self, box: _Outbox) -> bool:
        """Whether ``box``'s entries are to be dropped as ``security`` now: its producer
        is refused by the cluster, and its delivery is at most once (at least once, they
        wait within the bounds for the cluster to accept it)."""
        return box.use.producer.refused is not None and not _at_least_once(box.config)

    def _refused(self, messages: list[Message], maybe_written: bool) -> None:
        """Entries for a producer the cluster refuses (see ``Producer.refused``)."""
        self._held -= _size(messages)
        if maybe_written:  # an earlier attempt, before the refusals, may have reached Kafka
            self.buffer.give_up_uncertain(len(messages))
        else:
            self.buffer.drop("security", len(messages))  # warns; the producer named the cause

    def _requeued(self, retried: int) -> None:
        """Messages go again: ``retried`` of them after an attempt that may have reached Kafka."""
        if retried:
            self.buffer.count_retried(retried)
        self.buffer.wake()

    async def _send_due_retries(self) -> None:
        now = time.monotonic()
        waiting: deque[_Retry] = deque()
        while self._retries:
            retry = self._retries.popleft()
            producer = retry.box.use.producer
            if not producer.ready and self._drops_refused(retry.box):
                self._refused(retry.messages, retry.maybe_written)
                continue
            if not producer.ready and self._stopping and self._spills(retry.box):
                if retry.maybe_written:
                    self.buffer.count_retried(len(retry.messages))
                # No connection to wait for now.
                self._park(retry.box, retry.messages, retry.order or self._next_order(), False)
                continue
            if not producer.ready or (retry.due > now and not self._stopping):
                waiting.append(retry)
                continue
            await self._hand_over(
                retry.box,
                retry.messages,
                retry.attempt,
                retry.maybe_written,
                retry.ends,
                (retry.order, retry.span) if retry.order else None,
            )
        waiting.extend(self._retries)  # those added meanwhile
        self._retries = waiting

    # -- producers --------------------------------------------------------------

    def _use(self, config: KafkaLogConfig) -> _Use:
        key = config.producer_key()
        use = self._uses.get(key)
        if use is None or use.producer.closed:
            current = self._config()
            grace = (
                current.producer_async_flush_timeout
                if key == current.producer_key()
                else config.keepalive
            ) / 1000
            use = self._uses[key] = _Use(self._cache.acquire(config), grace)
        return use

    def _release_in(self, config: KafkaLogConfig) -> float | None:
        """Seconds until a producer of a config no longer in force may be released."""
        current = config.producer_key()
        now = time.monotonic()
        waits = [
            use.last_used + use.grace - now for key, use in self._uses.items() if key != current
        ]
        return max(min(waits), 0.01) if waits else None

    def _sweep(self, config: KafkaLogConfig) -> None:
        """Let go of producers no config in force uses any more (the cache closes them)."""
        current = config.producer_key()
        if current not in self._uses and not self._stopping:
            self._use(config)
        now = time.monotonic()
        for key, use in list(self._uses.items()):
            if key == current or use.in_flight or now - use.last_used < use.grace:
                continue
            if any(r.box.use is use for r in self._retries) or any(
                box.use is use and box.messages for box in self._outboxes.values()
            ):
                continue
            del self._uses[key]
            self._cache.release(use.producer, config.shutdown_timeout / 1000)


def _spooled(spooling: Spooling | None) -> bool:
    """Nothing waits to be written to the spool, nor is being replayed from it."""
    return spooling is None or (not spooling.waiting and spooling.replaying is None)


def _delivery(config: KafkaLogConfig) -> tuple[Any, ...]:
    """The fields that say how a config's entries travel: entries differing here never
    share an outbox, so each config's own policy applies to its entries."""
    return (
        config.delivery,
        config.producer_async,
        config.producer_async_flush_timeout,
        config.producer_request_limits_messages_per_request,
        config.producer_request_retries_max_attempts,
        config.producer_request_retries_backoff_timeout,
    )
