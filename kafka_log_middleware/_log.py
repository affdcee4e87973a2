"""The library's own warnings: the ``kafka_log_middleware`` logger, rate-limited per kind.

A broker that is down for an hour must not produce a warning per request; each kind
of warning is logged at most once per interval, with a count of the ones suppressed.
Messages never include header values, passwords or entry contents.

The Kafka client's own warnings about our producers are folded into the same voice:
records of WARNING and above that its loggers emit on behalf of our producers become one
rate-limited warning of ours (the client's loggers keep everything else, including the
same client's warnings for other producers of the app).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import Iterator

logger = logging.getLogger("kafka_log_middleware")

INTERVAL = 10.0
"""Seconds between two warnings of the same kind."""

_last: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def warn(
    kind: str,
    message: str,
    *args: object,
    exc_info: BaseException | None = None,
    level: int = logging.WARNING,
) -> None:
    """Log a warning of this ``kind`` unless one was logged less than ``INTERVAL`` ago."""
    now = time.monotonic()
    last = _last.get(kind)
    if last is not None and now - last < INTERVAL:
        _suppressed[kind] = _suppressed.get(kind, 0) + 1
        return
    _last[kind] = now
    skipped = _suppressed.pop(kind, 0)
    if skipped:
        message += " (%d similar warnings suppressed)"
        args = (*args, skipped)
    logger.log(level, message, *args, exc_info=exc_info)


def reset() -> None:
    """Forget the rate-limit state (for tests)."""
    _last.clear()
    _suppressed.clear()


# -- the Kafka client's loggers ----------------------------------------------------------

_ours: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "kafka_log_middleware_client", default=False
)
"""Set while our producers run client code; tasks the client starts then inherit it."""
_errors: contextvars.ContextVar[deque[BaseException] | None] = contextvars.ContextVar(
    "kafka_log_middleware_client_errors", default=None
)
"""Where the exceptions the client logs about our producer go (see ``our_client``)."""
_MAX_QUOTE = 300
"""Longest part of a client's log message quoted in our warning."""


@contextlib.contextmanager
def our_client(errors: deque[BaseException] | None = None) -> Iterator[None]:
    """Mark the client code run (and the tasks started) inside as our producers' own;
    ``errors`` then collects the exceptions the client logs (it rarely raises them: aiokafka
    logs why a connection failed and raises a generic error)."""
    token = _ours.set(True)
    sink = _errors.set(errors) if errors is not None else None
    try:
        yield
    finally:
        if sink is not None:
            _errors.reset(sink)
        _ours.reset(token)


class _ClientFilter(logging.Filter):
    """Turns the client's warnings about our producers into our rate-limited one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not _ours.get():
            return True
        sink = _errors.get()
        if sink is not None and isinstance(record.args, tuple):
            sink.extend(arg for arg in record.args if isinstance(arg, BaseException))
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: still ours to fold, not to raise
            text = str(record.msg)
        warn(
            "client:" + record.name.partition(".")[0],
            "kafka_log_middleware: the Kafka client reports: %s",
            text[:_MAX_QUOTE],
        )
        return False


_FILTER = _ClientFilter()


def tame_client_loggers(package: str) -> None:
    """Add the filter to every logger of ``package`` (``aiokafka``) that exists by now.

    Logger filters apply only to records created on that very logger, hence one per
    module logger; modules imported later get theirs at the next producer start.
    """
    manager = logging.Logger.manager
    for name, item in list(manager.loggerDict.items()):
        mine = name == package or name.startswith(package + ".")
        if mine and isinstance(item, logging.Logger) and _FILTER not in item.filters:
            item.addFilter(_FILTER)
