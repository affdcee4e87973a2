"""``Pipeline``: what every front door shares, from captured requests to Kafka.

It owns the config in force, the bounded buffer, one publisher per event loop (made
afresh in a forked worker, and taking over from a loop that ended), the producers,
``stats()``, ``update_config()``, ``aclose()`` and the flush at interpreter exit. A
door only captures a request's facts and puts them into ``buffer``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import weakref
from collections.abc import Mapping
from typing import Any

from . import _log
from .buffer import LogBuffer
from .config import KafkaLogConfig, KafkaLogFields
from .producers import Producer, cache_for_running_loop
from .publisher import DeliveryObserver, Publisher, Resolver
from .tracing import SpanReader, span_reader

_running_loop = asyncio.get_running_loop


def _buffer_for(config: KafkaLogConfig) -> LogBuffer:
    """A buffer bounded as ``config`` says."""
    return LogBuffer(
        config.producer_async_buffering_limits_messages_in_memory,
        config.overflow == "drop_oldest",
    )


class Pipeline:
    """The buffer, publishers and producers behind a middleware, for one config at a time."""

    def __init__(
        self, config: KafkaLogConfig, resolver: Resolver | None = None, threaded: bool = False
    ) -> None:
        self.config = config
        """The configuration in force for new requests."""
        self.span_reader: SpanReader | None = span_reader(config)
        """What a door calls at request entry for the active span's trace id (None: no
        trace ids, or no OpenTelemetry)."""
        self.publisher: Publisher | None = None
        """The publisher of the loop that serves (None until the first start)."""
        self._resolver = resolver
        self._threaded = threaded
        """Fed from other threads than the publisher's (see ``THREADED_ENCODE_DELAY``)."""
        self.buffer = _buffer_for(config)
        """Where a door puts each finished request (``put`` never blocks; replaced in a
        forked worker, so look it up per request)."""
        self._pid = os.getpid()
        self._exit_pid = 0
        """The process whose exit flushes this pipeline (see ``_exit``)."""
        self._parents: Publisher | None = None
        """In a forked child: the parent's publisher (see ``start``)."""
        self.delivery_observers: list[DeliveryObserver] = []
        """Told of every acknowledged batch by each publisher (see ``Publisher.observers``)."""

    def __repr__(self) -> str:
        return f"Pipeline({self.config!r})"

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start a publisher in the running loop (at startup, or with the first request)."""
        old = self.publisher
        if old is not None and old.loop is _running_loop():
            return
        if self._pid != os.getpid():
            # A forked worker starts afresh: its parent's entries are the parent's to send.
            self._pid = os.getpid()
            self.buffer = _buffer_for(self.config)
            if old is not None:
                # Kept, never used: collected here, its tasks would be reported destroyed.
                self._parents = old
                for producer in old.producers():
                    producer.abandon()  # no "unclosed producer" warning for the parent's
            old = self.publisher = None
        if old is not None and old.loop.is_running():
            _log.warn(
                "loop",
                "kafka_log_middleware: serving from a second event loop while the first "
                "still runs; the first loop's publisher is left to it",
            )
            old = None
        if self._exit_pid != os.getpid():
            self._exit_pid = os.getpid()
            _flush_at_exit(self)
        self.publisher = Publisher(
            self.buffer,
            lambda: self.config,
            cache_for_running_loop(),
            self._resolver,
            self._threaded,
        )
        self.publisher.observers = self.delivery_observers
        if old is not None:  # its loop has ended: what it had not sent goes from this one
            self.publisher.take_over(old)
        self.publisher.start()

    async def aclose(self) -> None:
        """Flush pending entries and close producers, within ``shutdown_timeout``."""
        publisher, self.publisher = self.publisher, None
        if publisher is not None and publisher.loop is _running_loop():
            await publisher.close(self.config.shutdown_timeout / 1000)

    def _exit(self) -> None:
        """At interpreter exit: flush what no lifespan shutdown or ``aclose()`` flushed.

        The loop that served is usually closed by then (``asyncio.run``): a fresh one
        takes over the entries not handed to Kafka yet; what its client held is counted
        ``uncertain``, what cannot be delivered within ``shutdown_timeout`` ``shutdown``.
        """
        publisher = self.publisher
        if publisher is None or self._pid != os.getpid() or not self.buffer.pending:
            return  # nothing to flush: whoever runs the loop still closes the publisher
        self.publisher = None
        timeout = self.config.shutdown_timeout / 1000
        loop = publisher.loop
        if loop.is_running():  # still serving from another thread
            future = asyncio.run_coroutine_threadsafe(publisher.close(timeout), loop)
            try:
                future.result(timeout + 1)
            except Exception as exc:
                _log.warn("exit", "kafka_log_middleware: flush at exit failed (%r)", exc)
            return

        async def take_over() -> None:
            self.publisher = publisher
            self.start()  # takes over from the ended loop's publisher
            await self.aclose()

        if loop.is_closed():
            asyncio.run(take_over())
        else:  # stopped, not closed: its own tasks can finish the work
            loop.run_until_complete(publisher.close(timeout))

    # -- runtime control ------------------------------------------------------

    def update_config(self, config: KafkaLogConfig) -> None:
        """Switch to ``config`` for new requests (see the doors' ``update_config``)."""
        self.config = config
        self.span_reader = span_reader(config)
        self.buffer.limit = config.producer_async_buffering_limits_messages_in_memory
        self.buffer.evict_oldest = config.overflow == "drop_oldest"
        publisher = self.publisher
        if publisher is not None and not publisher.loop.is_closed():
            publisher.loop.call_soon_threadsafe(self.buffer.wake)

    def stats(self) -> dict[str, int]:
        """See ``LogBuffer.stats``."""
        return self.buffer.stats()

    def producers(self) -> list[Producer]:
        """The Kafka producers this pipeline currently holds."""
        return [] if self.publisher is None else self.publisher.producers()


def config_of(config: Any, fields: Mapping[str, Any]) -> KafkaLogConfig:
    """The config a door's ``(config=None, **fields)`` arguments give, checked."""
    if config is None:
        return KafkaLogConfig(**fields)
    if fields:
        raise TypeError("give either config or its fields as keywords, not both")
    if not isinstance(config, KafkaLogConfig):
        raise TypeError(f"config must be a KafkaLogConfig, not {type(config).__name__}")
    return config


def update_config_of(
    current: KafkaLogConfig | None,
    config: KafkaLogConfig | None,
    changes: KafkaLogFields,
) -> KafkaLogConfig:
    """The config an ``update_config(config, **changes)`` call asks for, checked."""
    if config is None:
        if current is None:
            raise TypeError("no valid configuration to change: give a whole KafkaLogConfig")
        return current.replace(**changes)
    if changes:
        raise TypeError("give either config or changes as keywords, not both")
    if not isinstance(config, KafkaLogConfig):
        raise TypeError(f"config must be a KafkaLogConfig, not {type(config).__name__}")
    return config


def _flush_at_exit(pipeline: Pipeline) -> None:
    """Register ``pipeline``'s flush at interpreter exit, without keeping it alive."""
    ref = weakref.ref(pipeline)

    def flush() -> None:
        alive = ref()
        if alive is not None:
            alive._exit()

    atexit.register(flush)
