"""The optional compiled module (``kafka-log-middleware-native``), when it is installed
and speaks this version's calling convention; else None, and the Python paths run."""

from __future__ import annotations

from typing import Any

PROTOCOL = 10
"""The calling convention this package expects (``PROTOCOL`` in native/src/lib.rs)."""

try:
    import kafka_log_middleware_native as _module  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the installation
    _module = None  # type: ignore[assignment, unused-ignore]

module: Any = _module if getattr(_module, "PROTOCOL", None) == PROTOCOL else None
"""The module, or None when missing or built from another version of this package."""
