"""The background publisher: drains the buffer, builds and encodes Kong entries, sends them.

One task per middleware instance and event loop. It wakes when a batch is full
(``producer_request_limits_messages_per_request``) or when the oldest entry has waited
``producer_async_flush_timeout``, and works in small slices, yielding to the event loop
between them so requests are never held up. Each entry ends delivered or dropped
with a reason (see ``buffer.py``); failed batches are retried with backoff up to
``producer_request_retries_max_attempts`` times.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from . import _log
from .buffer import LogBuffer
from .capture import CapturedRequest
from .config import KafkaLogConfig
from .producers import Message, MessageTooLarge, OnDone, Producer, ProducerCache
from .serializer import encode_entry, message_key

Resolver = Callable[[CapturedRequest], KafkaLogConfig | None]
"""Per-request config choice (e.g. a topic per route); None keeps the request's config."""

SLICE = 16
"""Entries built and encoded between two yields to the event loop (~0.2 ms of work)."""
_READY_POLL = 0.25


@dataclass(eq=False)
class _Use:
    """A producer this publisher holds, with its batches awaiting acknowledgement."""

    producer: Producer
    grace: float
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Retry:
    use: _Use
    topic: str
    messages: list[Message]
    attempt: int
    due: float


class Publisher:
    """Moves captured requests from a ``LogBuffer`` to Kafka, in the background."""

    def __init__(
        self,
        buffer: LogBuffer,
        current_config: Callable[[], KafkaLogConfig],
        cache: ProducerCache,
        resolver: Resolver | None = None,
    ) -> None:
        self.buffer = buffer
        self.loop = asyncio.get_running_loop()
        self._config = current_config
        self._cache = cache
        self._resolver = resolver
        self._uses: dict[tuple[Any, ...], _Use] = {}
        self._retries: deque[_Retry] = deque()
        self._stopping = False
        self._accounting_closed = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the background task and begin connecting the current config's producer."""
        if self._task is None:
            self._use(self._config())
            self._task = self.loop.create_task(self._run(), name="kafka-log-publisher")

    @property
    def running(self) -> bool:
        """True while the task runs and no shutdown was asked."""
        return self._task is not None and not self._task.done() and not self._stopping

    def producers(self) -> list[Producer]:
        """The producers this publisher holds."""
        return [use.producer for use in self._uses.values()]

    async def close(self, timeout: float) -> None:
        """Send what is buffered, wait for acknowledgements, close producers; at most ``timeout`` s.

        What is still pending when the time is up is counted as dropped (``shutdown``).
        """
        deadline = time.monotonic() + timeout
        self._stopping = True
        self.buffer.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), max(timeout, 0.001))
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
        self._accounting_closed = True
        self.buffer.drain_all()
        self._retries.clear()
        if self.buffer.pending:
            self.buffer.drop("shutdown", self.buffer.pending)

    def _in_flight(self) -> int:
        return sum(use.in_flight for use in self._uses.values())

    # -- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wait_for_work()
            if self._stopping and not self.buffer and not self._retries:
                return
            await self._send_due_retries()
            if self.buffer:
                await self._publish(self._batch_size(self._config()))

    def _batch_size(self, config: KafkaLogConfig) -> int:
        return config.producer_request_limits_messages_per_request if config.producer_async else 1

    async def _wait_for_work(self) -> None:
        """Sleep until a batch is full, the oldest entry is due, or a retry is due.

        Producers of configs no longer in force are released while waiting.
        """
        while not self._stopping:
            config = self._config()
            self._sweep(config)
            retry_in = self._retries[0].due - time.monotonic() if self._retries else None
            if retry_in is not None and retry_in <= 0:
                return
            wake_in = _earliest(retry_in, self._release_in(config))
            head = self.buffer.peek()
            if head is None:
                await self.buffer.wait(1, wake_in)
                continue
            batch = self._batch_size(config)
            flush_in = config.producer_async_flush_timeout / 1000 - (
                time.perf_counter() - head.t_end
            )
            if not config.producer_async or len(self.buffer) >= batch or flush_in <= 0:
                return
            await self.buffer.wait(batch, _earliest(flush_in, wake_in))

    async def _publish(self, count: int) -> None:
        """Take up to ``count`` entries, build and encode them in slices, hand them over."""
        entries = self.buffer.take(count)
        # Entries mostly share one config object: group by it, resolve producers once.
        by_config: dict[int, tuple[KafkaLogConfig, list[Message]]] = {}
        for index, request in enumerate(entries):
            if index and index % SLICE == 0:
                await asyncio.sleep(0)
            encoded = self._encode(request)
            if encoded is None:
                continue
            config, message = encoded
            group = by_config.get(id(config))
            if group is None:
                group = by_config[id(config)] = (config, [])
            group[1].append(message)
        del entries
        sends: dict[tuple[int, str], tuple[_Use, list[Message]]] = {}
        for config, messages in by_config.values():
            use = self._use(config)
            send = sends.setdefault((id(use), config.topic), (use, []))
            send[1].extend(messages)
        for (_, topic), (use, messages) in sends.items():
            await self._hand_over(use, topic, messages, 1)

    def _encode(self, request: CapturedRequest) -> tuple[KafkaLogConfig, Message] | None:
        try:
            if self._resolver is not None:
                chosen = self._resolver(request)
                if chosen is not None:
                    request.config = chosen
            value = encode_entry(request)
            return request.config, (message_key(request), value)
        except Exception as exc:
            self.buffer.drop("serialize_error", 1)
            _log.warn(
                "serialize",
                "kafka_log_middleware: could not build a log entry (%s)",
                type(exc).__name__,
            )
            return None

    async def _hand_over(
        self, use: _Use, topic: str, messages: list[Message], attempt: int
    ) -> None:
        """Give ``messages`` to the producer once it is connected; failures are retried."""
        producer = use.producer
        while not await producer.wait_ready(_READY_POLL):
            if self._stopping:
                return  # still pending: counted as dropped (shutdown) by close()
        use.in_flight += len(messages)
        use.last_used = time.monotonic()
        on_done = self._on_done_for(use, topic, attempt)
        try:
            await producer.send(topic, messages, on_done)
        except Exception as exc:  # no metadata for the topic, or the producer closed
            on_done(0, messages, exc)

    def _on_done_for(self, use: _Use, topic: str, attempt: int) -> OnDone:
        def on_done(acked: int, messages: list[Message], error: BaseException | None) -> None:
            use.in_flight -= acked + len(messages)
            if self._accounting_closed:
                return
            if acked:
                self.buffer.deliver(acked)
            if not messages:
                return
            if isinstance(error, MessageSizeTooLargeError) and len(messages) > 1:
                # The broker refuses the whole batch; split it, as Kafka's Java client does,
                # so one oversized entry does not take its neighbours down with it.
                half = len(messages) // 2
                now = time.monotonic()
                for part in (messages[half:], messages[:half]):
                    self._retries.appendleft(_Retry(use, topic, part, attempt, now))
                use.in_flight += len(messages)
                self.buffer.wake()
                return
            config = self._config()
            if (
                _retriable(error)
                and attempt < config.producer_request_retries_max_attempts
                and not self._stopping
            ):
                due = time.monotonic() + config.producer_request_retries_backoff_timeout / 1000
                self._retries.append(_Retry(use, topic, messages, attempt + 1, due))
                use.in_flight += len(messages)  # still this producer's to deliver
                self.buffer.wake()
                return
            reason = "too_large" if isinstance(error, MessageTooLarge) else "kafka_error"
            self.buffer.drop(reason, len(messages))
            _log.warn(
                "deliver",
                "kafka_log_middleware: Kafka delivery failed after %d attempt(s): %s",
                attempt,
                type(error).__name__,
            )

        return on_done

    async def _send_due_retries(self) -> None:
        now = time.monotonic()
        while self._retries and (self._retries[0].due <= now or self._stopping):
            retry = self._retries.popleft()
            retry.use.in_flight -= len(retry.messages)
            await self._hand_over(retry.use, retry.topic, retry.messages, retry.attempt)

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
            if any(r.use is use for r in self._retries):
                continue
            del self._uses[key]
            self._cache.release(use.producer, config.shutdown_timeout / 1000)


def _retriable(error: BaseException | None) -> bool:
    return bool(getattr(error, "retriable", False)) or isinstance(error, KafkaTimeoutError)


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return b if a is None else a
    return min(a, b)
