"""The library's own warnings: the ``kafka_log_middleware`` logger, rate-limited per kind.

A broker that is down for an hour must not produce a warning per request; each kind
of warning is logged at most once per interval, with a count of the ones suppressed.
Messages never include header values, passwords or entry contents.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("kafka_log_middleware")

INTERVAL = 10.0
"""Seconds between two warnings of the same kind."""

_last: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def warn(kind: str, message: str, *args: object, exc_info: BaseException | None = None) -> None:
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
    logger.warning(message, *args, exc_info=exc_info)


def reset() -> None:
    """Forget the rate-limit state (for tests)."""
    _last.clear()
    _suppressed.clear()
