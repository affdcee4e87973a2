"""Compiled encoder of kafka-log-middleware's Kong log entries.

Used by ``kafka_log_middleware.serializer.encode_entry``; not an API of its own.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, final

PROTOCOL: int
"""Version of the calling convention with ``kafka_log_middleware.serializer``."""

@final
class Tables:
    """The constants of ``kafka_log_middleware`` the entry depends on."""

    def __new__(
        cls,
        *,
        reasons: Mapping[int, str],
        tls_versions: Mapping[int, str],
        ciphers: Mapping[int, str],
        server_error_headers: Sequence[tuple[bytes, bytes]],
        server_error_body: int,
        redacted: str,
        server_name: str,
        edits_key: str,
        warn: Callable[[str, Exception], object],
        body_kind: Callable[[bytes | None, tuple[str, ...]], tuple[str, str]],
        body_omitted_type: str,
    ) -> Tables: ...

@final
class Plan:
    """What one config means for the encoder. Raises ValueError for a config whose
    entries only the Python path builds."""

    def __new__(
        cls,
        tables: Tables,
        *,
        kong3: bool,
        redact_headers: Sequence[str],
        redact_response_headers: Sequence[str],
        request_id_header: str | None,
        workspace: str | None,
        workspace_name: str,
        service: Mapping[str, Any] | None,
        route: Callable[[Any], Any] | None,
        route_is_default: bool,
        consumer: Callable[[Any], Any] | None,
        authenticated_entity: Callable[[Any], Any] | None,
        body_content_types: tuple[str, ...],
        redact_body_keys: bool,
    ) -> Plan: ...

class AsgiCapture:
    """The ASGI door's record of one request (``asgi.NativeASGIRequest`` subclasses it):
    ``asgi.ASGIRequest``'s attributes and ``send``, compiled."""

    scope: Any
    config: Any
    started_at: float
    t_start: float
    t_response: float
    t_end: float
    status: Any
    response_headers: Any
    body_sent: int
    body_read: int
    file_path: Any
    raised: bool
    client_gone: bool
    trace_id: Any
    request_body: Any
    response_body: Any

    def __new__(cls, scope: Any, config: Any, receive: Any, send: Any, /) -> AsgiCapture: ...
    @property
    def _receive(self) -> Any: ...
    @property
    def _send(self) -> Any: ...
    @property
    def _watch_sends(self) -> bool: ...
    def send(self, message: Any, /) -> Any:
        """Record the message's facts, then return the server's ``send(message)``."""
    def finish(self) -> None: ...
    def detach(self) -> None: ...

def encode(
    plan: Plan,
    request: Any,
    scope: Any,
    status: Any,
    response_headers: Any,
    body_sent: Any,
    body_read: Any,
    file_path: Any,
    client_gone: Any,
    started_at: Any,
    t_start: Any,
    t_response: Any,
    t_end: Any,
    trace_id: str | None,
    request_body: dict[str, Any] | None,
    response_body: dict[str, Any] | None,
    /,
) -> bytes | tuple[bytes, list[tuple[str, Any]]] | None:
    """The entry's JSON bytes; None: build it in Python instead; or (entry, fields):
    add these (field, value) pairs last, with orjson. The arguments after ``request``
    up to ``t_end`` are its attributes of the same names; ``trace_id`` is the 32 hex
    digits logged as ``{"w3c": ...}`` (``tracing.trace_id``), or None for no field;
    ``request_body`` and ``response_body`` the body fields of each side
    (``bodies.body_fields``), or None."""

def encode_run(
    plan: Plan,
    config: Any,
    requests: list[Any],
    start: int,
    limit: int,
    upstream_key: str,
    trace_id: Callable[[Any], str | None] | None = None,
) -> tuple[list[tuple[None, bytes]], int, object]:
    """The entries of ``requests[start:]`` while each has ``config`` and no upstream
    facts, and fits ``limit`` bytes (bodies written from each side's ``BodyCopy``): the
    messages ``(None, entry)``, their total bytes, and how the request the run stopped
    at goes on: None (``encode_entry`` from the start), its bytes (over ``limit``),
    ``(entry, fields)`` as from ``encode``, or the exception it raised. ``trace_id``:
    ``tracing.trace_id`` when trace ids are on."""

def scope_of(environ: dict[str, Any], /) -> dict[str, Any] | None:
    """``kafka_log_middleware.environ.scope_of(environ)``, the same dict; None: run that
    Python function instead (an environ beyond its fast path: non-ASCII keys or paths,
    values of other types than ``str``, ports that are not plain digits)."""
