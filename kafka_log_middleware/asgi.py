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
import logging
import time
from collections.abc import Awaitable
from typing import Any, Unpack

from . import _log
from .buffer import LogBuffer
from .capture import DOOR_KEY, CapturedRequest
from .config import KafkaLogConfig, KafkaLogFields
from .filters import EXCLUDED, excluded
from .native import module as _native
from .pipeline import Pipeline, config_of, update_config_of
from .producers import Producer
from .publisher import Resolver
from .types import ASGIApp, Message, Receive, Scope, Send

_running_loop = asyncio.get_running_loop
_perf = time.perf_counter
_SILENT_SENDS = frozenset({None, "2.0", "2.1", "2.2", "2.3"})
"""ASGI spec versions whose servers discard a send after a disconnect, silently; from
2.4 on, such a send raises ``OSError``, and the middleware watches for it."""
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
        self._pipeline: Pipeline | None = None
        """None only while the configuration is bad (see ``_broken``)."""
        self._broken: Exception | None = None
        """The configuration error, when built inside a server with a bad config."""
        try:
            config = config_of(config, fields)
            if config_resolver is not None and not callable(config_resolver):
                raise TypeError("config_resolver must be callable")
        except (TypeError, ValueError) as exc:
            if not _inside_a_server():
                raise
            self._broken = exc
            _log.logger.error("kafka_log_middleware: not logging, bad configuration: %s", exc)
            return
        self._pipeline = Pipeline(config, config_resolver)

    def __repr__(self) -> str:
        if self._pipeline is None:
            return "KafkaLogMiddleware(<bad configuration>)"
        return f"KafkaLogMiddleware({self._pipeline.config!r})"

    @property
    def config(self) -> KafkaLogConfig:
        """The configuration in force for new requests."""
        if self._pipeline is None:
            raise RuntimeError(f"kafka_log_middleware has no valid configuration: {self._broken}")
        return self._pipeline.config

    # -- the request path -------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        pipeline = self._pipeline
        if kind != "http" or pipeline is None:
            if pipeline is None:
                await self._serve_unlogged(scope, receive, send)
            elif kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        publisher = pipeline.publisher
        if publisher is None or publisher.loop is not _running_loop():
            pipeline.start()
        config = pipeline.config
        if config.exclude_paths and excluded(config.exclude_paths, scope.get("path", "")):
            pipeline.buffer.skip()
            scope[DOOR_KEY] = EXCLUDED  # an inner Django entry does not log it either
            await self.app(scope, receive, send)
            return
        scope[DOOR_KEY] = "asgi"
        if config.native_serializer and NativeASGIRequest is not None:
            request: ASGIRequest = NativeASGIRequest(scope, config, receive, send)
        else:
            request = ASGIRequest(scope, config, receive, send)
        reader = pipeline.span_reader
        if reader is not None:
            request.trace_id = reader()
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
            pipeline.buffer.put(request)

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
        if self._pipeline is not None:
            self._pipeline.start()

    async def aclose(self) -> None:
        """Flush pending entries and close producers, within ``shutdown_timeout``.

        Lifespan shutdown calls this; call it yourself when the server sends no lifespan.
        """
        if self._pipeline is not None:
            await self._pipeline.aclose()

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
        pipeline = self._pipeline
        current = None if pipeline is None else pipeline.config
        config = update_config_of(current, config, changes)
        if pipeline is None:
            self._pipeline = Pipeline(config, self._resolver)
            self._broken = None
        else:
            pipeline.update_config(config)

    def stats(self) -> dict[str, int]:
        """``enqueued``, ``delivered``, ``dropped``, ``uncertain``, ``pending``,
        ``buffered``, ``retried``, ``dropped_<reason>`` and ``skipped`` counts;
        ``enqueued == delivered + dropped + uncertain + skipped_should_log + pending``."""
        if self._pipeline is None:
            return LogBuffer(1).stats()  # nothing logged yet
        return self._pipeline.stats()

    def producers(self) -> list[Producer]:
        """The Kafka producers this middleware currently holds."""
        return [] if self._pipeline is None else self._pipeline.producers()


class ASGIRequest(CapturedRequest):
    """A request's facts, recorded by wrapping the ASGI ``receive`` and ``send``.

    What the client got, as far as a middleware can know it: only the first
    ``http.response.start`` counts (the server refuses another), nothing the app sends
    after the client has gone (an ``http.disconnect`` from ``receive``, or an ``OSError``
    from a spec-2.4 server's ``send``) nor after the last body message.
    """

    __slots__ = ("_receive", "_send", "_watch_sends")

    def __init__(self, scope: Scope, config: KafkaLogConfig, receive: Receive, send: Send) -> None:
        super().__init__(scope, config)
        self._receive = receive
        self._send = send
        asgi = scope.get("asgi")
        self._watch_sends = (asgi.get("spec_version") if asgi else None) not in _SILENT_SENDS

    async def receive(self) -> Message:
        """Pass ``receive`` through, counting request body bytes and disconnects."""
        message = await self._receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            self.body_read += len(body)
            if self.request_body is not None:
                self.request_body.add(body)
        elif message["type"] == "http.disconnect" and not self.t_end:
            self._gone()
        return message

    def _gone(self) -> None:
        # nginx ends the request when it learns the client left.
        self.client_gone = True
        self.t_end = _perf()

    def send(self, message: Message) -> Awaitable[None]:
        """Pass ``send`` through, recording status, headers, body size and timings.

        A plain function returning the server's awaitable, not a coroutine: the app
        awaits the server's ``send`` directly, without an extra frame per message
        (except on spec-2.4 servers, whose ``send`` may raise when the client has gone).
        """
        if self.t_end:  # the client has gone, or the response is complete
            return self._send(message)
        kind = message["type"]
        if kind == "http.response.body":
            body = message.get("body", b"")
            self.body_sent += len(body)
            if self.response_body is not None:
                self.response_body.add(body)
            if not message.get("more_body", False):
                self.t_end = _perf()
        elif kind == "http.response.start":
            if self.status:  # the server refuses a second one
                return self._send(message)
            self.t_response = _perf()
            self.status = message["status"]
            self.response_headers = message.get("headers", ())
        elif kind == "http.response.pathsend":
            self.file_path = message["path"]
            self.t_end = _perf()
        if self._watch_sends:
            return self._watched_send(message)
        return self._send(message)

    async def _watched_send(self, message: Message) -> None:
        """Send; an ``OSError`` means the client has gone and this message never left."""
        try:
            await self._send(message)
        except OSError:
            kind = message["type"]
            if kind == "http.response.body":
                self.body_sent -= len(message.get("body", b""))
            elif kind == "http.response.start":
                self.status, self.t_response, self.response_headers = 0, 0.0, ()
            elif kind == "http.response.pathsend":
                self.file_path = None
            self._gone()
            raise

    def detach(self) -> None:
        """Drop the references to the server's callables once the request is over."""
        self.finish()
        del self._receive, self._send


NativeASGIRequest: Any = None
"""``ASGIRequest``'s compiled twin (``native/src/capture.rs``), when the native module is
installed: the same attributes and ``send``, without their Python frames, and read by
the encoder from its struct; used for configs with ``native_serializer`` on. None
without the module."""

if _native is not None:

    class NativeASGIRequest(_native.AsgiCapture):  # type: ignore[misc, no-redef]
        """An ``ASGIRequest`` whose facts and ``send`` are compiled; the rest is shared."""

        __slots__ = ()
        receive = ASGIRequest.receive
        _gone = ASGIRequest._gone
        _watched_send = ASGIRequest._watched_send
        content_length = CapturedRequest.content_length
        __repr__ = CapturedRequest.__repr__


def _inside_a_server() -> bool:
    """True when called from a running event loop: a server building its app lazily."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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
