"""A Flask app logged by the ``KafkaLog`` extension, for tests under real gunicorn.

Configured from the environment (``KAFKA_LOG_*``, as ``KafkaLog`` does when
``app.config`` has no ``KAFKA_LOG``). Each response names the worker process and thread
that served it, so tests can tell which worker's entry is which.
"""

from __future__ import annotations

import os
import threading

from flask import Flask, Response, jsonify

from kafka_log_middleware.flask import KafkaLog

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name: str) -> Response:
    response = jsonify({"hello": name})
    response.headers["X-Pid"] = str(os.getpid())
    response.headers["X-Thread"] = str(threading.get_ident())
    return response


KafkaLog(app)
