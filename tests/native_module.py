"""The compiled module for its conformance tests: skipped where it is not built, a failure
under CI (``CI=true``), where a quiet skip would hide that the compiled path went untested."""

from __future__ import annotations

import os
from typing import Any

import pytest

from kafka_log_middleware import native


def native_module() -> Any:
    """``kafka_log_middleware_native`` when it speaks this version's protocol; else skips
    the calling test module (fails it under CI)."""
    try:
        import kafka_log_middleware_native as module  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        reason = "kafka_log_middleware_native is not installed (scripts/setup builds it with cargo)"
    else:
        if native.module is not None:
            return module
        reason = (
            f"kafka_log_middleware_native speaks protocol {getattr(module, 'PROTOCOL', None)}, "
            f"this package {native.PROTOCOL}: it was built from another version"
        )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI tests the compiled module, never skips it", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
