"""Trace ids: the active OpenTelemetry span's, read on the request path, else the W3C
``traceparent`` header's, parsed in the background; logged as Kong 3.5+'s
``"trace_id": {"w3c": "<32 hex>"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .capture import CapturedRequest
    from .config import KafkaLogConfig

SpanReader = Callable[[], int]
"""Gives the current span's trace id as an int, 0 when no valid span is active."""

_HEX = frozenset(b"0123456789abcdef")
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16


def span_reader(config: KafkaLogConfig) -> SpanReader | None:
    """The request path's reader of the active span's trace id, when ``config`` logs trace
    ids and ``opentelemetry-api`` is installed; None otherwise (called once per config, so
    that the import is never tried per request)."""
    if not config.trace_ids:
        return None
    try:
        from opentelemetry.trace import get_current_span
    except ImportError:
        return None

    def read() -> int:
        try:
            context = get_current_span().get_span_context()
            return context.trace_id if context.is_valid else 0
        except Exception:  # a broken tracing set-up never fails the request
            return 0

    return read


def trace_id(request: CapturedRequest) -> str | None:
    """The request's trace id as 32 lowercase hex digits (the span's, else its
    ``traceparent``'s), or None without a valid one or with trace ids off."""
    if not request.config.trace_ids:
        return None
    if request.trace_id:
        return f"{request.trace_id:032x}"
    return traceparent_id(request.scope.get("headers", ()))


def traceparent_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The trace id of the one ``traceparent`` header in ``headers``, if valid (W3C Trace
    Context level 1); None for none, several, or an invalid one. Never raises."""
    found = None
    try:
        for name, value in headers:
            if len(name) == 11 and name.lower() == b"traceparent":
                if found is not None:
                    return None  # several: which one the caller meant is unknown
                found = value
        return None if found is None else _parse(bytes(found).strip(b" \t"))
    except Exception:
        return None


def _parse(value: bytes) -> str | None:
    # version "-" trace-id "-" parent-id "-" trace-flags: 55 bytes. A future version may
    # append "-" and more, which this version ignores; version 00 must end there.
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    version = value[:2]
    if not _HEX.issuperset(version) or version == b"ff":
        return None
    if len(value) > 55 and (version == b"00" or value[55:56] != b"-"):
        return None
    trace, parent, flags = value[3:35], value[36:52], value[53:55]
    if not _HEX.issuperset(trace + parent + flags):
        return None
    if trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        return None
    return trace.decode("ascii")
