"""An app for tests/test_exit.py, served by ``python -m uvicorn --factory`` in a subprocess.

``KAFKA_LOG_*`` variables configure the middleware; ``EXIT_APP_LIFESPAN=raise`` makes the
app's lifespan raise right after it received the startup message.
"""

from __future__ import annotations

import os

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from kafka_log_middleware.types import Receive, Scope, Send


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        if os.environ.get("EXIT_APP_LIFESPAN") == "raise":
            raise RuntimeError("the app's startup failed after it began")
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def make_app() -> KafkaLogMiddleware:
    """The app uvicorn serves (``tests.exit_app:make_app --factory``)."""
    return KafkaLogMiddleware(hello, KafkaLogConfig.from_env())
