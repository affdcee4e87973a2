"""The hot path: per-request raw facts, captured while the app serves the request.

Nothing here builds the Kong entry: a :class:`CapturedRequest` only records what
the ASGI messages say, with timestamps, and is handed to the buffer when the
response is complete. The serializer turns it into a Kong entry later, in the
background.

The facts are what the client got, as far as a middleware can know it: only the first
``http.response.start`` counts (the server refuses another), nothing the app sends
after the client has gone (an ``http.disconnect`` from ``receive``, or an ``OSError``
from a spec-2.4 server's ``send``) nor after the last body message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING

from .nginx_vars import target, text
from .types import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .config import KafkaLogConfig

_perf = time.perf_counter
_wall = time.time
_SILENT_SENDS = frozenset({None, "2.0", "2.1", "2.2", "2.3"})
"""ASGI spec versions whose servers discard a send after a disconnect, silently; from
2.4 on, such a send raises ``OSError``, and the middleware watches for it."""


class CapturedRequest:
    """Raw facts of one HTTP request/response, as seen by the middleware.

    Hooks (``route``, ``consumer``, ``custom_fields``, message key, …) receive this
    object in the background; treat it as read-only.
    """

    __slots__ = (
        "_receive",
        "_send",
        "_watch_sends",
        "body_read",
        "body_sent",
        "client_gone",
        "config",
        "file_path",
        "raised",
        "response_headers",
        "scope",
        "started_at",
        "status",
        "t_end",
        "t_response",
        "t_start",
    )

    scope: Scope
    """The ASGI scope (or, for WSGI apps, the environ) of the request."""
    config: KafkaLogConfig
    """The configuration in force when the request started."""
    started_at: float
    """Wall clock at middleware entry, seconds since the epoch (nginx's start time)."""
    t_start: float
    """``time.perf_counter()`` at middleware entry."""
    t_response: float
    """``perf_counter()`` when the response started; 0.0 if it never did."""
    t_end: float
    """``perf_counter()`` when the last body byte was sent (or the request ended)."""
    status: int
    """Response status sent by the app; 0 if the app sent none."""
    response_headers: Iterable[tuple[bytes, bytes]]
    """Raw response header pairs as the app sent them."""
    body_sent: int
    """Response body bytes the app sent (the server omits them for HEAD)."""
    file_path: str | None
    """Path given by ``http.response.pathsend``; its size is the body size."""
    body_read: int
    """Request body bytes the app read."""
    raised: bool
    """True when the app raised an exception."""
    client_gone: bool
    """True when the client left before the response ended (``http.disconnect`` from
    ``receive``, an ``OSError`` from ``send``, or the request cancelled)."""

    def __init__(self, scope: Scope, config: KafkaLogConfig, receive: Receive, send: Send) -> None:
        self.t_start = _perf()
        self.started_at = _wall()
        self.scope = scope
        self.config = config
        self._receive = receive
        self._send = send
        self.status = 0
        self.response_headers = ()
        self.body_sent = 0
        self.body_read = 0
        self.file_path = None
        self.t_response = 0.0
        self.t_end = 0.0
        self.raised = False
        self.client_gone = False
        asgi = scope.get("asgi")
        self._watch_sends = (asgi.get("spec_version") if asgi else None) not in _SILENT_SENDS

    async def receive(self) -> Message:
        """Pass ``receive`` through, counting request body bytes and disconnects."""
        message = await self._receive()
        if message["type"] == "http.request":
            self.body_read += len(message.get("body", b""))
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
            self.body_sent += len(message.get("body", b""))
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
        if not self.t_end:
            self.t_end = _perf()
        del self._receive, self._send

    def __repr__(self) -> str:
        # Never headers, nor the raw path: both may carry credentials (an absolute-form
        # target's userinfo sits in h11's path).
        path = text(target(self.scope).uri.partition(b"?")[0])
        return f"<CapturedRequest {self.scope.get('method')} {path!r} status={self.status}>"
