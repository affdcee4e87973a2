"""The hot path: per-request raw facts, captured while the app serves the request.

Nothing here builds the Kong entry: a :class:`CapturedRequest` only records what
the ASGI messages say, with timestamps, and is handed to the buffer when the
response is complete. The serializer turns it into a Kong entry later, in the
background.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING

from .types import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .config import KafkaLogConfig

_perf = time.perf_counter
_wall = time.time


class CapturedRequest:
    """Raw facts of one HTTP request/response, as seen by the middleware.

    Hooks (``route``, ``consumer``, ``custom_fields``, message key, …) receive this
    object in the background; treat it as read-only.
    """

    __slots__ = (
        "_receive",
        "_send",
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
    """True when the server reported ``http.disconnect`` before the response ended."""

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

    async def receive(self) -> Message:
        """Pass ``receive`` through, counting request body bytes and disconnects."""
        message = await self._receive()
        if message["type"] == "http.request":
            self.body_read += len(message.get("body", b""))
        elif message["type"] == "http.disconnect" and not self.t_end:
            self.client_gone = True
        return message

    def send(self, message: Message) -> Awaitable[None]:
        """Pass ``send`` through, recording status, headers, body size and timings.

        A plain function returning the server's awaitable, not a coroutine: the app
        awaits the server's ``send`` directly, without an extra frame per message.
        """
        kind = message["type"]
        if kind == "http.response.body":
            self.body_sent += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.t_end = _perf()
        elif kind == "http.response.start":
            self.t_response = _perf()
            self.status = message["status"]
            self.response_headers = message.get("headers", ())
        elif kind == "http.response.pathsend":
            self.file_path = message["path"]
            self.t_end = _perf()
        return self._send(message)

    def detach(self) -> None:
        """Drop the references to the server's callables once the request is over."""
        if not self.t_end:
            self.t_end = _perf()
        del self._receive, self._send

    def __repr__(self) -> str:
        # Never show headers: they may carry credentials.
        return (
            f"<CapturedRequest {self.scope.get('method')} {self.scope.get('path')!r} "
            f"status={self.status}>"
        )
