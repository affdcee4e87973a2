"""What the demo apps share: their users, known by bearer token, the hook that logs the
user of a request, and the logging config they start from.

Kept free of framework imports: Django's ``settings.py`` imports it.
"""

from __future__ import annotations

from typing import Any

from kafka_log_middleware import CapturedRequest, KafkaLogConfig
from kafka_log_middleware.config import Hook

USERS = {"Bearer demo-token": {"id": "4b1d3f7e", "username": "alice"}}


def bearer_consumer(request: CapturedRequest) -> dict[str, Any] | None:
    """Kong's ``consumer``: the user whose bearer token the request carried, if any (the
    hook sees the request's headers, as a Kong auth plugin does)."""
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            user = USERS.get(value.decode("latin-1"))
            return dict(user) if user else None
    return None


def demo_config(consumer: Hook) -> KafkaLogConfig:
    """The demos' config, ``consumer`` their hook; ``KAFKA_LOG_*`` variables win."""
    return KafkaLogConfig.from_env(
        bootstrap_servers="127.0.0.1:9092",
        topic="kong-log",
        service={"name": "orders", "protocol": "http"},
        consumer=consumer,
        producer_async_flush_timeout=100,
    )
