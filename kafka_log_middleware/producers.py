"""Kafka producers, one per distinct producer configuration per process and event loop.

Configs that agree on the producer settings (``KafkaLogConfig.producer_key``) share one
producer, whichever middleware instance uses them. A producer is reference-counted:
when its last user lets go, it is flushed and closed (Kong's original kept every one).
Producers connect in the background and keep retrying, so an app starts and serves
while the broker is unreachable.
"""

from __future__ import annotations

import asyncio
import os
import random
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed
from aiokafka.partitioner import DefaultPartitioner

from . import _log
from .config import KafkaLogConfig

Message = tuple[bytes | None, bytes]
"""An encoded Kafka message: (key, value)."""
OnDone = Callable[[int, list[Message], BaseException | None], None]
"""Delivery report: ``(acknowledged count, failed messages, their error)``."""

SLICE_SECONDS = 0.0005
"""Longest background work runs before it yields to the event loop (requests go first)."""
_RECONNECT_MAX = 5.0
_partition_for_key = DefaultPartitioner()


class MessageTooLarge(Exception):
    """An entry is larger than ``producer_request_limits_bytes_per_request``: never sent."""


class Producer:
    """A Kafka producer shared by the configs with its settings.

    Connects in the background (retrying with backoff), sends batches of encoded
    messages, reports each delivery through a callback, and closes once. Backends
    implement ``_open``, ``send`` and ``_shutdown``.
    """

    def __init__(self, config: KafkaLogConfig) -> None:
        self.key = config.producer_key()
        self.refs = 0
        self.closed = False
        self._servers = ",".join(config.bootstrap_servers)
        self._backoff = max(config.producer_request_retries_backoff_timeout, 50) / 1000
        self._max_size = config.producer_request_limits_bytes_per_request
        self._ready = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "ready" if self.ready else "connecting"
        return f"<{type(self).__name__} {self._servers} {state} refs={self.refs}>"

    @property
    def ready(self) -> bool:
        """True once connected to the cluster."""
        return self._ready.is_set()

    def connect(self) -> None:
        """Start connecting in the background (idempotent)."""
        if self._connector is None and not self.closed:
            self._connector = asyncio.get_running_loop().create_task(
                self._connect(), name="kafka-log-connect"
            )

    async def _connect(self) -> None:
        delay = self._backoff
        while not self.closed:
            try:
                await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warn(
                    "connect",
                    "kafka_log_middleware: cannot reach Kafka at %s (%s); "
                    "retrying, entries stay buffered",
                    self._servers,
                    type(exc).__name__,
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, _RECONNECT_MAX)
                continue
            self._ready.set()
            return

    async def _open(self) -> None:
        """Connect once; raise when the cluster cannot be reached."""
        raise NotImplementedError

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the connection; True when ready."""
        if not self.ready:
            self.connect()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return False
        return True

    async def send(self, topic: str, messages: Sequence[Message], on_done: OnDone) -> None:
        """Hand ``messages`` over for delivery to ``topic``.

        Returns once all are handed over (it never waits on Kafka); ``on_done`` then
        reports every message exactly once (in batches).
        """
        raise NotImplementedError

    def _fitting(self, messages: Sequence[Message], on_done: OnDone) -> list[Message]:
        """The messages within the size limit; the others are reported as too large."""
        limit = self._max_size
        fitting: list[Message] = []
        too_large: list[Message] = []
        for message in messages:
            key, value = message
            size = len(value) + (0 if key is None else len(key))
            (fitting if size <= limit else too_large).append(message)
        if too_large:
            on_done(0, too_large, MessageTooLarge())
        return fitting

    async def close(self, timeout: float) -> None:
        """Flush what was handed over, then close, all within ``timeout`` seconds."""
        self.closed = True
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        await self._shutdown(timeout)

    async def _shutdown(self, timeout: float) -> None:
        raise NotImplementedError


class AiokafkaProducer(Producer):
    """The default backend: an ``aiokafka.AIOKafkaProducer`` fed with its batch API.

    ``send`` only queues: a sender task of its own feeds aiokafka, whose ``send_batch``
    waits while the previous batch of a partition is in flight. So Kafka's pace never
    holds up the publisher, which keeps encoding meanwhile.
    """

    def __init__(self, config: KafkaLogConfig) -> None:
        super().__init__(config)
        self._options = config.aiokafka_options()
        self._ack_timeout = config.producer_request_timeout
        self._producer: Any = None
        self._queue: deque[tuple[str, list[Message], OnDone]] = deque()
        self._queued = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        producer = AIOKafkaProducer(**self._options)
        # Kong's producer_request_timeout is the produce request's own timeout (how long
        # the broker waits for acks). aiokafka sends its sender's request_timeout_ms
        # there and nowhere else; the client's wait stays `timeout`.
        producer._sender._request_timeout_ms = self._ack_timeout
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer, self._backoff)
            raise
        self._producer = producer
        self._sender = asyncio.get_running_loop().create_task(
            self._send_forever(), name="kafka-log-send"
        )

    async def send(self, topic: str, messages: Sequence[Message], on_done: OnDone) -> None:
        """Queue ``messages`` for the sender task (see ``Producer.send``); never waits."""
        fitting = self._fitting(messages, on_done)
        if fitting:
            self._queue.append((topic, fitting, on_done))
            self._queued.set()

    async def _send_forever(self) -> None:
        while True:
            while self._queue:
                topic, messages, on_done = self._queue.popleft()
                try:
                    await self._send_now(topic, messages, on_done)
                except Exception as exc:  # no metadata for the topic in time
                    on_done(0, messages, exc)
            self._queued.clear()
            await self._queued.wait()

    async def _send_now(self, topic: str, messages: list[Message], on_done: OnDone) -> None:
        """Hand ``messages`` to aiokafka in batches, one per partition."""
        producer = self._producer
        partitions = sorted(await producer.partitions_for(topic))
        available = list(producer.client.cluster.available_partitions_for_topic(topic) or ())
        groups: dict[int, list[Message]] = {}
        # Unkeyed entries stick to one partition per call, as Kafka's sticky partitioner does.
        unkeyed = _partition_for_key(None, partitions, available)
        for message in messages:
            key = message[0]
            part = unkeyed if key is None else _partition_for_key(key, partitions, available)
            groups.setdefault(part, []).append(message)
        for partition, group in groups.items():
            await self._send_partition(topic, partition, group, on_done)

    async def _send_partition(
        self, topic: str, partition: int, group: list[Message], on_done: OnDone
    ) -> None:
        producer = self._producer
        start = 0
        while start < len(group):
            batch = producer.create_batch()
            end = start
            while end < len(group):
                key, value = group[end]
                if batch.append(key=key, value=value, timestamp=None) is None:
                    break
                end += 1
            end = max(end, start + 1)  # a batch always takes its first message
            batch.close()
            sent = group[start:end]
            try:
                future = await producer.send_batch(batch, topic, partition=partition)
            except Exception as exc:  # no room in time, or the producer closed
                on_done(0, group[start:], exc)
                return
            future.add_done_callback(_reporter(sent, on_done))
            start = end

    async def _shutdown(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.01)
        # Let the sender hand over what is queued; polling briefly at shutdown is simplest.
        while self._queue and self._sender is not None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        for _, messages, on_done in self._queue:
            on_done(0, messages, ProducerClosed())
        self._queue.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer, max(deadline - loop.time(), 0.01))


def _reporter(sent: list[Message], on_done: OnDone) -> Callable[[asyncio.Future[Any]], None]:
    def report(future: asyncio.Future[Any]) -> None:
        error = asyncio.CancelledError() if future.cancelled() else future.exception()
        if error is None:
            on_done(len(sent), [], None)
        else:
            on_done(0, sent, error)

    return report


async def _stop_quietly(producer: Any, timeout: float) -> None:
    """Stop an aiokafka producer within ``timeout`` (it can hang while the broker is down)."""
    try:
        await asyncio.wait_for(producer.stop(), max(timeout, 0.01))
    except Exception as exc:
        _log.warn(
            "close", "kafka_log_middleware: producer did not close cleanly (%s)", type(exc).__name__
        )


def _make(config: KafkaLogConfig) -> Producer:
    if config.producer_backend == "confluent":
        from .confluent import ConfluentProducer

        return ConfluentProducer(config)
    return AiokafkaProducer(config)


class ProducerCache:
    """The producers of one event loop, keyed by their settings and reference-counted."""

    def __init__(self) -> None:
        self._producers: dict[tuple[Any, ...], Producer] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._producers)

    def producers(self) -> list[Producer]:
        """The open producers (for tests and stats)."""
        return list(self._producers.values())

    def acquire(self, config: KafkaLogConfig) -> Producer:
        """The producer for ``config``, created (and connecting) on first use."""
        key = config.producer_key()
        producer = self._producers.get(key)
        if producer is None:
            producer = self._producers[key] = _make(config)
            producer.connect()
        producer.refs += 1
        return producer

    def release(self, producer: Producer, timeout: float) -> None:
        """Let go of ``producer``; the last release flushes and closes it in the background."""
        producer.refs -= 1
        if producer.refs > 0 or self._producers.get(producer.key) is not producer:
            return
        del self._producers[producer.key]
        task = asyncio.get_running_loop().create_task(
            producer.close(timeout), name="kafka-log-close"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def wait_closed(self) -> None:
        """Wait for the producers being closed."""
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


_caches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProducerCache] = (
    weakref.WeakKeyDictionary()
)
_pid = os.getpid()


def cache_for_running_loop() -> ProducerCache:
    """The producer cache of the running event loop in this process."""
    global _pid
    if os.getpid() != _pid:  # a forked worker must not touch its parent's producers
        _caches.clear()
        _pid = os.getpid()
    loop = asyncio.get_running_loop()
    cache = _caches.get(loop)
    if cache is None:
        cache = _caches[loop] = ProducerCache()
    return cache
