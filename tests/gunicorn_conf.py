"""gunicorn settings for tests: each worker flushes in ``worker_exit`` (the documented
recipe) and, when ``KAFKA_LOG_TEST_STATS`` names a folder, writes its final ``stats()``
there as ``<pid>.json``."""

from __future__ import annotations

import os
from typing import Any

import orjson


def worker_exit(server: Any, worker: Any) -> None:
    from kafka_log_middleware.flask import KafkaLog
    from tests.flask_app import app

    middleware = KafkaLog.middleware(app)
    middleware.close()
    folder = os.environ.get("KAFKA_LOG_TEST_STATS")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.json"), "wb") as out:
            out.write(orjson.dumps(middleware.stats()))
