"""``KafkaLogMiddleware``: pure ASGI middleware that logs every HTTP request to Kafka.

The request path only records raw facts (``capture.py``) and appends them to a
bounded buffer; it never awaits Kafka and never fails because of it. Websocket
scopes pass through untouched. Lifespan startup starts the publisher (and the
producer's connection); lifespan shutdown flushes and closes, within
``shutdown_timeout``. Apps that do not speak lifespan (Django's ASGI handler) get it
spoken for them; servers that send none still work: the publisher starts with the
first request, and ``await middleware.aclose()`` flushes — or, if nobody does, the
interpreter's exit does, within ``shutdown_timeout``.

A bad configuration raises at construction, except when the middleware is built inside
a running server (Starlette's ``add_middleware`` builds it lazily, on the first ASGI
call): raising there would take the app down. Then lifespan startup fails with the
error, and without lifespan the app is served unlogged, with a loud error per interval.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import weakref
from collections.abc import Mapping
from typing import Any, Unpack

from . import _log
from .buffer import LogBuffer
from .capture import CapturedRequest
from .config import KafkaLogConfig, KafkaLogFields
from .producers import Producer, cache_for_running_loop
from .publisher import Publisher, Resolver
from .types import ASGIApp, Message, Receive, Scope, Send

_running_loop = asyncio.get_running_loop
_LIFESPAN_ENDS = frozenset(
    {"lifespan.startup.failed", "lifespan.shutdown.complete", "lifespan.shutdown.failed"}
)


class KafkaLogMiddleware:
    """Publish a Kong-format log entry to Kafka for every HTTP request ``app`` serves.

    Give either a ``KafkaLogConfig`` or its fields as keywords. ``config_resolver``
    may choose another config per request (for example a topic per route); it runs
    in the background with the captured request.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: KafkaLogConfig | None = None,
        *,
        config_resolver: Resolver | None = None,
        **fields: Unpack[KafkaLogFields],
    ) -> None:
        self.app = app
        self._resolver = config_resolver
        self._publisher: Publisher | None = None
        self._pid = os.getpid()
        self._exit_pid = 0
        """The process whose exit flushes this middleware (see ``_exit``)."""
        self._broken: Exception | None = None
        """The configuration error, when built inside a server with a bad config."""
        try:
            config = _config_of(config, fields)
            if config_resolver is not None and not callable(config_resolver):
                raise TypeError("config_resolver must be callable")
        except (TypeError, ValueError) as exc:
            if not _inside_a_server():
                raise
            self._broken = exc
            _log.logger.error("kafka_log_middleware: not logging, bad configuration: %s", exc)
            config = None
        self._config: KafkaLogConfig = config  # type: ignore[assignment]
        limit = config.producer_async_buffering_limits_messages_in_memory if config else 1
        self._buffer = LogBuffer(limit)

    def __repr__(self) -> str:
        if self._broken is not None:
            return "KafkaLogMiddleware(<bad configuration>)"
        return f"KafkaLogMiddleware({self._config!r})"

    @property
    def config(self) -> KafkaLogConfig:
        """The configuration in force for new requests."""
        if self._broken is not None:
            raise RuntimeError(f"kafka_log_middleware has no valid configuration: {self._broken}")
        return self._config

    # -- the request path -------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" or self._broken is not None:
            if self._broken is not None:
                await self._serve_unlogged(scope, receive, send)
            elif kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        publisher = self._publisher
        if publisher is None or publisher.loop is not _running_loop():
            self._start()
        request = CapturedRequest(scope, self._config, receive, send)
        try:
            await self.app(scope, request.receive, request.send)
        except asyncio.CancelledError:
            request.client_gone = True
            raise
        except BaseException:
            request.raised = True
            raise
        finally:
            request.detach()
            self._buffer.put(request)

    async def _serve_unlogged(self, scope: Scope, receive: Receive, send: Send) -> None:
        """With a bad configuration: fail the server's startup, or serve without logging."""
        error = f"kafka_log_middleware: bad configuration: {self._broken}"
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup: the server exits on the answer
            await send({"type": "lifespan.startup.failed", "message": error})
            return
        _log.warn("broken", "%s; requests are served, not logged", error, level=logging.ERROR)
        await self.app(scope, receive, send)

    # -- lifecycle ------------------------------------------------------------

    def _start(self) -> None:
        """Start a publisher in the running loop (at startup, or with the first request)."""
        old = self._publisher
        if old is not None and old.loop is _running_loop():
            return
        if self._pid != os.getpid():
            # A forked worker starts afresh: its parent's entries are the parent's to send.
            self._pid = os.getpid()
            self._buffer = LogBuffer(
                self._config.producer_async_buffering_limits_messages_in_memory
            )
            old = self._publisher = None
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
        self._publisher = Publisher(
            self._buffer, lambda: self._config, cache_for_running_loop(), self._resolver
        )
        if old is not None:  # its loop has ended: what it had not sent goes from this one
            self._publisher.take_over(old)
        self._publisher.start()

    def _exit(self) -> None:
        """At interpreter exit: flush what no lifespan shutdown or ``aclose()`` flushed.

        The loop that served is usually closed by then (``asyncio.run``): a fresh one
        takes over the entries not handed to Kafka yet; what its client held is counted
        ``uncertain``, what cannot be delivered within ``shutdown_timeout`` ``shutdown``.
        """
        publisher, self._publisher = self._publisher, None
        if publisher is None or self._pid != os.getpid() or not self._buffer.pending:
            return
        timeout = self._config.shutdown_timeout / 1000
        loop = publisher.loop
        if loop.is_running():  # still serving from another thread
            future = asyncio.run_coroutine_threadsafe(publisher.close(timeout), loop)
            try:
                future.result(timeout + 1)
            except Exception as exc:
                _log.warn("exit", "kafka_log_middleware: flush at exit failed (%r)", exc)
            return

        async def take_over() -> None:
            self._publisher = publisher
            self._start()  # takes over from the ended loop's publisher
            await self.aclose()

        if loop.is_closed():
            asyncio.run(take_over())
        else:  # stopped, not closed: its own tasks can finish the work
            loop.run_until_complete(publisher.close(timeout))

    async def aclose(self) -> None:
        """Flush pending entries and close producers, within ``shutdown_timeout``.

        Lifespan shutdown calls this; call it yourself when the server sends no lifespan.
        """
        publisher, self._publisher = self._publisher, None
        if publisher is not None and publisher.loop is _running_loop():
            await publisher.close(self._config.shutdown_timeout / 1000)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = False

        async def lifespan_receive() -> Message:
            nonlocal received
            received = True
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._start()
            return message

        async def lifespan_send(message: Message) -> None:
            if message["type"] in _LIFESPAN_ENDS:
                await self.aclose()
            await send(message)

        try:
            await self.app(scope, lifespan_receive, lifespan_send)
        except asyncio.CancelledError:
            raise
        except BaseException:
            if received:
                await self.aclose()
                raise
        if not received:
            # The app does not speak lifespan (e.g. Django's ASGIHandler): speak it for it.
            await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- runtime control ------------------------------------------------------

    def update_config(
        self, config: KafkaLogConfig | None = None, **changes: Unpack[KafkaLogFields]
    ) -> None:
        """Switch to a new config (or the current one with ``changes``) for new requests.

        Requests already captured keep the config they started with. A producer that no
        config in force uses any more is flushed and closed. A middleware built with a
        bad configuration starts logging once given a whole valid ``config``.
        """
        if config is None:
            if self._broken is not None:
                raise TypeError("no valid configuration to change: give a whole KafkaLogConfig")
            config = self._config.replace(**changes)
        elif changes:
            raise TypeError("give either config or changes as keywords, not both")
        elif not isinstance(config, KafkaLogConfig):
            raise TypeError(f"config must be a KafkaLogConfig, not {type(config).__name__}")
        self._config = config
        self._broken = None
        self._buffer.limit = config.producer_async_buffering_limits_messages_in_memory
        publisher = self._publisher
        if publisher is not None and not publisher.loop.is_closed():
            publisher.loop.call_soon_threadsafe(self._buffer.wake)

    def stats(self) -> dict[str, int]:
        """``enqueued``, ``delivered``, ``dropped``, ``uncertain``, ``pending``,
        ``buffered``, ``retried`` and ``dropped_<reason>`` counts;
        ``enqueued == delivered + dropped + uncertain + pending``."""
        return self._buffer.stats()

    def producers(self) -> list[Producer]:
        """The Kafka producers this middleware currently holds."""
        return [] if self._publisher is None else self._publisher.producers()


def _config_of(config: Any, fields: Mapping[str, Any]) -> KafkaLogConfig:
    if config is None:
        return KafkaLogConfig(**fields)
    if fields:
        raise TypeError("give either config or its fields as keywords, not both")
    if not isinstance(config, KafkaLogConfig):
        raise TypeError(f"config must be a KafkaLogConfig, not {type(config).__name__}")
    return config


def _inside_a_server() -> bool:
    """True when called from a running event loop: a server building its app lazily."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _flush_at_exit(middleware: KafkaLogMiddleware) -> None:
    """Register ``middleware``'s flush at interpreter exit, without keeping it alive."""
    ref = weakref.ref(middleware)

    def flush() -> None:
        alive = ref()
        if alive is not None:
            alive._exit()

    atexit.register(flush)


def find_middleware(app: Any) -> KafkaLogMiddleware | None:
    """The ``KafkaLogMiddleware`` inside ``app``'s middleware stack, if any.

    For apps that added it with ``app.add_middleware(...)`` (Starlette builds the stack
    on the first call, so look after startup).
    """
    seen: set[int] = set()
    node = app
    while node is not None and id(node) not in seen:
        if isinstance(node, KafkaLogMiddleware):
            return node
        seen.add(id(node))
        node = getattr(node, "middleware_stack", None) or getattr(node, "app", None)
    return None
