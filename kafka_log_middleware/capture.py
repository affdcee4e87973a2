"""The hot path's record: per-request raw facts, captured while the app serves the request.

Nothing here builds the Kong entry: a :class:`CapturedRequest` only holds what the
request and its response were, with timestamps, and is handed to the buffer when the
response is complete. The serializer turns it into a Kong entry later, in the
background. The facts are protocol-neutral except the request itself, which every door
describes as an ASGI-shaped ``scope``: the ASGI door passes the server's scope, the
WSGI door builds one from a snapshot of the environ (``environ.py``). How a door fills
the rest is its own business (``asgi.py``, ``wsgi.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from .bodies import BodyCopy
from .nginx_vars import declared_length, target, text
from .types import Scope

if TYPE_CHECKING:
    from .config import KafkaLogConfig

_perf = time.perf_counter
_wall = time.time
DOOR_KEY = "kafka_log_middleware.door"
"""Scope/environ key a door sets on each request it logs ("asgi", "wsgi"): an inner
integration (Django's ``MIDDLEWARE`` entry) then only adds what it knows (the route)."""


def request_state(request_or_scope: Any, caller: str) -> MutableMapping[str, Any]:
    """Where the app's code leaves facts for this request's entry: the ASGI scope (of a
    request with ``.scope``, or given) or the WSGI environ (of one with ``.environ``)."""
    state = getattr(request_or_scope, "scope", None)
    if state is None:
        state = getattr(request_or_scope, "environ", request_or_scope)
    if not isinstance(state, MutableMapping):
        raise TypeError(
            f"{caller} needs a request (with .scope or .environ), an ASGI scope or a WSGI environ"
        )
    return state


class CapturedRequest:
    """Raw facts of one HTTP request/response, as seen by the middleware.

    Hooks (``route``, ``consumer``, ``custom_fields``, message key, …) receive this
    object in the background; treat it as read-only.
    """

    __slots__ = (
        "body_read",
        "body_sent",
        "client_gone",
        "config",
        "file_path",
        "raised",
        "request_body",
        "response_body",
        "response_headers",
        "scope",
        "started_at",
        "status",
        "t_end",
        "t_response",
        "t_start",
        "trace_id",
    )

    scope: Scope
    """The request as an ASGI HTTP scope (for WSGI apps, built from the environ)."""
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
    """True when the client left before the response ended (as far as the door can tell)."""
    trace_id: int
    """The trace id of the OpenTelemetry span active at middleware entry; 0 for none."""
    request_body: BodyCopy | None
    """The request body's first bytes (``include_request_body``); None when off."""
    response_body: BodyCopy | None
    """The response body's first bytes (``include_response_body``); None when off."""

    def __init__(self, scope: Scope, config: KafkaLogConfig) -> None:
        self.t_start = _perf()
        self.started_at = _wall()
        self.scope = scope
        self.config = config
        self.status = 0
        self.response_headers = ()
        self.body_sent = 0
        self.body_read = 0
        self.file_path = None
        self.t_response = 0.0
        self.t_end = 0.0
        self.raised = False
        self.client_gone = False
        self.trace_id = 0
        self.request_body = (
            BodyCopy(config.max_request_body_bytes) if config.include_request_body else None
        )
        self.response_body = (
            BodyCopy(config.max_response_body_bytes) if config.include_response_body else None
        )

    def finish(self) -> None:
        """Mark the request over now, unless its end was already recorded."""
        if not self.t_end:
            self.t_end = _perf()

    def content_length(self) -> int | None:
        """The response's ``Content-Length``, if it declared one."""
        for name, value in self.response_headers:
            if len(name) == 14 and name.lower() == b"content-length":
                length = declared_length(value)
                if length is not None:
                    return length
        return None

    def __repr__(self) -> str:
        # Never headers, nor the raw path: both may carry credentials (an absolute-form
        # target's userinfo sits in h11's path).
        path = text(target(self.scope).uri.partition(b"?")[0])
        return f"<CapturedRequest {self.scope.get('method')} {path!r} status={self.status}>"
