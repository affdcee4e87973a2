"""A scripted producer for publisher tests without a broker.

``ScriptedProducer`` records each batch the publisher hands over (topic, messages, when,
on which loop) and answers with the outcome a test scripts: delivered (maybe ``resent``),
a ``Failure`` of any verdict, part delivered and part failed, an exception from ``send``,
or no answer yet (held by the "client", or queued where ``withdraw`` takes it back).
Answers come synchronously from ``send`` or, with ``asynchronous``, from a later loop
callback; a test can also answer a held batch itself, at a moment of its choosing.

``Scripted`` makes these producers in place of the real backends (it patches
``producers._make``, so the real ``ProducerCache`` hands them out). ``Rig`` is a publisher
over a fresh buffer with event-driven waits, and an accounting check after every step.
Every wait has a short explicit timeout: a failing test fails, it never hangs.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson

from kafka_log_middleware import producers
from kafka_log_middleware.asgi import ASGIRequest
from kafka_log_middleware.buffer import LogBuffer
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import KafkaLogConfig
from kafka_log_middleware.producers import (
    CLOSED,
    Failure,
    Message,
    OnDone,
    Producer,
    ProducerCache,
    Verdict,
)
from kafka_log_middleware.publisher import Publisher, Resolver, _size
from kafka_log_middleware.types import Message as AsgiMessage
from tests.asgi_driver import http_scope

WAIT = 5.0
"""Longest a test waits for something that should happen at once (a generous bound)."""
QUIET = 0.1
"""How long a test lets the publisher run to show that something does *not* happen."""
CLOSE_TIMEOUT = 0.3
"""``Publisher.close`` timeout when held batches make it wait for the whole of it."""


# -- outcomes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Deliver:
    """Every message delivered; ``resent``: the client re-sent them itself."""

    resent: bool = False


@dataclass(frozen=True)
class Partial:
    """The first ``delivered`` messages delivered, the others failed with ``failure``."""

    delivered: int
    failure: Failure


@dataclass(frozen=True)
class Raise:
    """``send`` raises ``error`` (a backend failing outright)."""

    error: Exception


class Keep(enum.Enum):
    """No answer (yet)."""

    HELD = "held"
    """The client holds the batch: unreported, and ``withdraw`` cannot take it back."""
    QUEUED = "queued"
    """The producer's own queue holds it: ``withdraw`` takes it back."""


Outcome = Deliver | Partial | Failure | Raise | Keep
DELIVER = Deliver()


def fail(verdict: Verdict = Verdict.RETRY, maybe_written: bool = False) -> Failure:
    """A failure of every message of a batch."""
    return Failure(verdict, f"scripted-{verdict.value}", maybe_written)


RETRY = fail(Verdict.RETRY)
RETRY_MAYBE_WRITTEN = fail(Verdict.RETRY, maybe_written=True)


@dataclass(eq=False)
class HandOver:
    """One batch the publisher handed to a producer, and what became of it."""

    topic: str
    messages: list[Message]
    on_done: OnDone
    at: float
    """``time.monotonic()`` when it was handed over."""
    loop: asyncio.AbstractEventLoop
    outcome: Outcome | None = None
    reported: bool = False
    withdrawn: bool = False

    @property
    def ids(self) -> list[int]:
        """The entries' numbers (their ``n`` query argument), in the batch's order."""
        return [entry_id(message) for message in self.messages]


def entry_id(message: Message) -> int:
    """The number a ``Rig`` gave the entry (its ``n`` query argument)."""
    return int(orjson.loads(message[1])["request"]["querystring"]["n"])


Respond = Callable[[HandOver], Outcome]


def in_turn(*outcomes: Outcome, then: Outcome = DELIVER) -> Respond:
    """Answer the hand-overs with ``outcomes`` in order, then always with ``then``."""
    queue = list(outcomes)

    def respond(handover: HandOver) -> Outcome:
        return queue.pop(0) if queue else then

    return respond


def per_batch(*outcomes: Outcome, then: Outcome = DELIVER) -> Respond:
    """Answer the k-th hand-over of the same entries with ``outcomes[k]``, then ``then``."""
    seen: dict[tuple[int, ...], int] = {}

    def respond(handover: HandOver) -> Outcome:
        key = tuple(handover.ids)
        turn = seen[key] = seen.get(key, 0) + 1
        return outcomes[turn - 1] if turn <= len(outcomes) else then

    return respond


def always(outcome: Outcome) -> Respond:
    """Answer every hand-over with ``outcome``."""
    return lambda handover: outcome


# -- the producer ---------------------------------------------------------------------


class ScriptedProducer(Producer):
    """A ``Producer`` without network whose answers the test scripts (see the module doc)."""

    def __init__(self, config: KafkaLogConfig, maker: Scripted) -> None:
        super().__init__(config)
        self.config = config
        self.maker = maker
        self.respond: Respond = maker.respond
        self.asynchronous = maker.asynchronous
        self.handovers: list[HandOver] = []
        self.gate = asyncio.Event()
        """Set: the producer connects (becomes ready)."""
        if maker.ready:
            self.gate.set()
        self.shut_down = False
        self.close_timeout: float | None = None
        """The timeout this producer was closed with (``None``: not closed)."""

    async def _open(self) -> None:
        if self.maker.refusal is not None:
            raise ConnectionRefusedError("the cluster refuses this producer")
        await self.gate.wait()

    async def _refusal(self, exc: BaseException) -> str | None:
        return self.maker.refusal

    async def send(self, topic: str, messages: list[Message], on_done: OnDone) -> None:
        """Record the hand-over and answer it as scripted."""
        handover = HandOver(
            topic, list(messages), on_done, time.monotonic(), asyncio.get_running_loop()
        )
        self.handovers.append(handover)
        outcome = handover.outcome = self.respond(handover)
        self.maker.step()
        if isinstance(outcome, Raise):
            raise outcome.error
        if isinstance(outcome, Keep):
            return
        if self.asynchronous:
            asyncio.get_running_loop().call_soon(self.report, handover, outcome)
        else:
            self.report(handover, outcome)

    def report(self, handover: HandOver, outcome: Outcome) -> None:
        """Report ``handover``'s outcome through its ``on_done`` (once per hand-over)."""
        if handover.reported or handover.withdrawn:
            raise RuntimeError(f"{handover.ids} reported twice")
        handover.reported = True
        messages = handover.messages
        if isinstance(outcome, Deliver):
            handover.on_done(len(messages), [], None, outcome.resent)
        elif isinstance(outcome, Partial):
            done = outcome.delivered
            handover.on_done(done, messages[done:], outcome.failure, False)
        elif isinstance(outcome, Failure):
            handover.on_done(0, messages, outcome, False)
        else:
            raise TypeError(f"cannot report {outcome!r}")
        self.maker.step()

    def withdraw(self) -> list[tuple[str, list[Message], OnDone]]:
        """The queued (``Keep.QUEUED``) batches not reported yet; they are no longer ours."""
        taken = [
            h
            for h in self.handovers
            if h.outcome is Keep.QUEUED and not h.reported and not h.withdrawn
        ]
        for handover in taken:
            handover.withdrawn = True
        return [(h.topic, h.messages, h.on_done) for h in taken]

    def held(self) -> list[HandOver]:
        """Hand-overs not answered yet (held by the client, or queued)."""
        return [h for h in self.handovers if not h.reported and not h.withdrawn and not _raised(h)]

    async def _shutdown(self, timeout: float) -> None:
        # As the backends do: what was never given to the client is reported as such.
        self.shut_down = True
        self.close_timeout = timeout
        for _, messages, on_done in self.withdraw():
            on_done(0, messages, CLOSED, False)


def _raised(handover: HandOver) -> bool:
    return isinstance(handover.outcome, Raise)


class Scripted:
    """Makes ``ScriptedProducer``s in place of the real backends, with these defaults."""

    def __init__(self) -> None:
        self.respond: Respond = always(DELIVER)
        self.ready = True
        """Whether new producers connect at once (else: when their ``gate`` is set)."""
        self.refusal: str | None = None
        """Set: the cluster refuses every connection attempt, for this reason (SASL, TLS)."""
        self.asynchronous = False
        """Whether new producers answer from a later loop callback rather than in ``send``."""
        self.made: list[ScriptedProducer] = []
        self.listeners: list[Callable[[], None]] = []
        """Called after every hand-over and every report."""

    def make(self, config: KafkaLogConfig) -> Producer:
        """``producers._make``'s stand-in."""
        producer = ScriptedProducer(config, self)
        self.made.append(producer)
        return producer

    @contextmanager
    def installed(self) -> Iterator[Scripted]:
        """Let every ``ProducerCache`` make scripted producers while inside."""
        real = producers._make
        producers._make = self.make
        try:
            yield self
        finally:
            producers._make = real

    def step(self) -> None:
        """Tell the listeners that something happened."""
        for listener in list(self.listeners):
            listener()

    def handovers(self) -> list[HandOver]:
        """Every hand-over to every producer made, in order."""
        return sorted((h for p in self.made for h in p.handovers), key=lambda h: h.at)

    def delivered_ids(self) -> list[int]:
        """The entries the producers reported delivered, sorted."""
        ids: list[int] = []
        for h in self.handovers():
            if h.reported and isinstance(h.outcome, Deliver):
                ids += h.ids
            elif h.reported and isinstance(h.outcome, Partial):
                ids += h.ids[: h.outcome.delivered]
        return sorted(ids)


# -- the captured requests ------------------------------------------------------------


async def _receive() -> AsgiMessage:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: AsgiMessage) -> None:
    pass


def captured(number: int, config: KafkaLogConfig) -> CapturedRequest:
    """A finished GET request numbered ``number`` (its ``n`` query argument)."""
    request = ASGIRequest(http_scope("/", query=f"n={number}".encode()), config, _receive, _send)
    request.status = 200
    request.detach()
    return request


def request_number(request: CapturedRequest) -> int:
    """``number`` of a ``captured`` request (for resolvers)."""
    query: bytes = request.scope["query_string"]
    return int(query.partition(b"=")[2])


def invariant_problems(stats: dict[str, int]) -> list[str]:
    """What is wrong with these counters, if anything (``enqueued == delivered + dropped +
    uncertain + skipped_should_log + pending``, no negative count, drops and skips adding
    up)."""
    problems = []
    settled = stats["delivered"] + stats["dropped"] + stats["uncertain"]
    if stats["enqueued"] != settled + stats["skipped_should_log"] + stats["pending"]:
        problems.append(
            "enqueued != delivered + dropped + uncertain + skipped_should_log + pending"
        )
    if stats["skipped"] != stats["skipped_exclude_paths"] + stats["skipped_should_log"]:
        problems.append("skipped != skipped_exclude_paths + skipped_should_log")
    if any(value < 0 for value in stats.values()):
        problems.append("a negative count")
    if stats["buffered"] > stats["pending"]:
        problems.append("more buffered than pending")
    if stats["dropped"] != sum(v for k, v in stats.items() if k.startswith("dropped_")):
        problems.append("dropped != sum of the dropped_* reasons")
    return [f"{problem}: {stats}" for problem in problems]


# -- the publisher under test ---------------------------------------------------------


class Rig:
    """A publisher over a fresh buffer, with scripted producers (``async with``, in a loop).

    Checks the accounting after every hand-over and every report; closes the publisher
    on exit (within ``CLOSE_TIMEOUT``), whatever the test did.
    """

    def __init__(
        self,
        scripted: Scripted,
        config: KafkaLogConfig,
        *,
        resolver: Resolver | None = None,
        buffer: LogBuffer | None = None,
    ) -> None:
        self.scripted = scripted
        self.config = config
        limit = config.producer_async_buffering_limits_messages_in_memory
        evict_oldest = config.overflow == "drop_oldest"
        self.buffer = buffer if buffer is not None else LogBuffer(limit, evict_oldest)
        self.cache = ProducerCache()
        self.publisher = Publisher(self.buffer, self._config_in_force, self.cache, resolver)
        self.config_reads = 0
        """How often the publisher asked for the config in force (each time it wakes up)."""
        self.violations: list[str] = []
        self.closed = False
        self._changed = asyncio.Event()
        self._next = 0

    async def __aenter__(self) -> Rig:
        self.start()
        return self

    def start(self) -> None:
        """Start the publisher and the accounting checks (``async with`` does it)."""
        self.scripted.listeners.append(self._step)
        self.publisher.start()

    def stop_checking(self) -> None:
        """Stop the checks after every step (``async with`` does it on exit)."""
        if self._step in self.scripted.listeners:
            self.scripted.listeners.remove(self._step)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if not self.closed:
                await self.close(CLOSE_TIMEOUT)
        finally:
            self.stop_checking()
        if kind is None:
            self.check()

    def _config_in_force(self) -> KafkaLogConfig:
        self.config_reads += 1
        return self.config

    def _step(self) -> None:
        self.violations += invariant_problems(self.buffer.stats())
        for box in self.publisher._outboxes.values():
            if box.size != _size(box.messages):
                self.violations.append(
                    f"an outbox counts {box.size} bytes, holds {_size(box.messages)}"
                )
        self._changed.set()

    # -- driving ------------------------------------------------------------------

    def put(
        self,
        count: int = 1,
        config: KafkaLogConfig | None = None,
        edit: Callable[[CapturedRequest], object] | None = None,
    ) -> list[int]:
        """Capture ``count`` more requests (numbered on from the last; each given to
        ``edit`` first); their numbers."""
        numbers = list(range(self._next, self._next + count))
        self._next += count
        for number in numbers:
            request = captured(number, config or self.config)
            if edit is not None:
                edit(request)
            self.buffer.put(request)
        self._step()
        return numbers

    async def close(self, timeout: float = WAIT) -> None:
        """Close the publisher (bounded, even if it misbehaves)."""
        self.closed = True
        await asyncio.wait_for(self.publisher.close(timeout), timeout + WAIT)
        task = self.publisher._task
        if task is not None and not task.cancelled() and task.exception() is not None:
            self.violations.append(f"the publisher's task failed: {task.exception()!r}")
        self._step()

    # -- looking ------------------------------------------------------------------

    @property
    def producer(self) -> ScriptedProducer:
        """The one producer made (fails if there is not exactly one)."""
        [producer] = self.scripted.made
        return producer

    def handovers(self) -> list[HandOver]:
        """Every hand-over so far, in order."""
        return self.scripted.handovers()

    def batches(self) -> list[list[int]]:
        """The entries of every hand-over so far, in order."""
        return [h.ids for h in self.handovers()]

    def stats(self) -> dict[str, int]:
        """The buffer's counters, after checking them."""
        self.check()
        return self.buffer.stats()

    def counts(self, *names: str) -> dict[str, int]:
        """Only these counters (for exact comparisons that name what matters)."""
        stats = self.stats()
        return {name: stats[name] for name in names}

    def check(self) -> None:
        """Fail on any accounting problem seen so far, or now (the bytes held included:
        none once nothing is pending)."""
        problems = self.violations + invariant_problems(self.buffer.stats())
        held = self.publisher._held
        if held < 0 or (held and not self.buffer.pending):
            problems.append(f"{held} bytes held with {self.buffer.pending} entries pending")
        assert not problems, problems

    async def until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until ``condition()`` holds: woken by every hand-over and report (and every
        few ms, for what the publisher does on its own); fails after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            left = deadline - loop.time()
            assert left > 0, f"not reached within {timeout} s; stats {self.buffer.stats()}"
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.02))
        self.check()

    async def handed_over(self, count: int, timeout: float = WAIT) -> None:
        """Wait until there have been ``count`` hand-overs in all."""
        await self.until(lambda: len(self.handovers()) >= count, timeout)

    async def settled(self, timeout: float = WAIT) -> None:
        """Wait until no entry is pending."""
        await self.until(lambda: self.buffer.pending == 0, timeout)

    async def encoded(self, timeout: float = WAIT) -> None:
        """Wait until the buffer is empty (every entry encoded into an outbox, or dropped)."""
        await self.until(lambda: len(self.buffer) == 0, timeout)

    async def quiet(self, seconds: float = QUIET) -> None:
        """Let the publisher run a while (to show that something does not happen)."""
        await asyncio.sleep(seconds)
        self.check()


def sorted_batches(batches: Iterable[list[int]]) -> list[list[int]]:
    """Batches in a canonical order (for comparing them as a multiset)."""
    return sorted(batches)


class Clock:
    """``time`` for the publisher module, with a monotonic clock the test can move on.

    Only ``monotonic`` is moved (flush timer, backoff); ``perf_counter`` (the encode
    delay) stays real.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        """The real monotonic clock plus the test's advances."""
        return time.monotonic() + self.offset

    @staticmethod
    def perf_counter() -> float:
        """The real ``perf_counter``."""
        return time.perf_counter()

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``."""
        self.offset += seconds


def config(**changes: Any) -> KafkaLogConfig:
    """A config for scripted producers (nothing connects): flush at once, no backoff."""
    fields: dict[str, Any] = {
        "bootstrap_servers": ("127.0.0.1:9",),
        "topic": "logs",
        "producer_async_flush_timeout": 1,
        "producer_request_retries_backoff_timeout": 0,
    }
    return KafkaLogConfig(**{**fields, **changes})
