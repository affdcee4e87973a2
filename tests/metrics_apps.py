"""Apps exposing their metrics, for tests/test_metrics.py under real servers.

``flask_app``: the Flask app of ``tests.flask_app`` (``KafkaLog``, configured from the
environment) with its metrics registered and served at ``/metrics``; under gunicorn with
``PROMETHEUS_MULTIPROC_DIR`` set, in multiprocess mode. ``gunicorn_conf``'s hooks flush
each worker at its exit, update its metrics one last time and write its ``stats()``.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from kafka_log_middleware import metrics
from kafka_log_middleware.flask import KafkaLog
from tests.flask_app import app as flask_app

flask_app.add_url_rule("/metrics", view_func=metrics.flask_view)
flask_metrics = metrics.register(flask_app)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: flush, move the final counts into the metrics, write ``stats()``."""
    middleware = KafkaLog.middleware(flask_app)
    middleware.close()
    if isinstance(flask_metrics, metrics.KafkaLogMultiprocessMetrics):
        flask_metrics.update()
    folder = os.environ["KAFKA_LOG_TEST_STATS"]
    with open(os.path.join(folder, f"{os.getpid()}.json"), "wb") as out:
        out.write(orjson.dumps(middleware.stats()))


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (the documented multiprocess set-up): a dead worker's live gauges go."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
