"""The demo's users, known by their bearer token, and the hook that logs them.

Kept free of Django imports: ``settings.py`` imports the hook.
"""

from __future__ import annotations

from typing import Any

from kafka_log_middleware import CapturedRequest

USERS = {"Bearer demo-token": {"id": "4b1d3f7e", "username": "alice"}}


def bearer_consumer(request: CapturedRequest) -> dict[str, Any] | None:
    """Kong's ``consumer``: the user whose bearer token the request carried, if any (the
    hook sees the request's headers, as a Kong auth plugin does)."""
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            user = USERS.get(value.decode("latin-1"))
            return dict(user) if user else None
    return None
