"""The WSGI benchmark app: the same hello-world as ``bench/apps.py``, in Flask (``BENCH_VARIANT``).

``GET /hello/<name>?a=1&b=2`` returns a small JSON body. Variants:

- ``bare``: the Flask app alone.
- ``middleware``: with the ``KafkaLog`` extension (the WSGI door, and the matched rule
  as the route), configured from ``KAFKA_LOG_*``; ``GET /_stats`` returns this worker's
  ``stats()``.
- ``door``: ``KafkaLogWSGIMiddleware`` around ``app.wsgi_app`` alone (no route).

Run: ``BENCH_VARIANT=middleware gunicorn -w 1 bench.flask_apps:app``.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request

from kafka_log_middleware import KafkaLogConfig, KafkaLogWSGIMiddleware
from kafka_log_middleware.flask import KafkaLog

VARIANTS = ("bare", "middleware", "door")


def build(variant: str) -> Flask:
    """The Flask app of ``variant`` (one of ``VARIANTS``)."""
    if variant not in VARIANTS:
        raise ValueError(f"BENCH_VARIANT must be one of {', '.join(VARIANTS)}, not {variant!r}")
    flask = Flask(__name__)

    @flask.get("/hello/<name>")
    def hello(name: str) -> Any:
        args = request.args
        return jsonify(hello=name, a=args.get("a"), b=args.get("b"))

    if variant == "middleware":
        KafkaLog(flask, KafkaLogConfig.from_env())
    elif variant == "door":
        door = KafkaLogWSGIMiddleware(flask.wsgi_app, KafkaLogConfig.from_env())
        flask.wsgi_app = door  # type: ignore[method-assign]
        flask.extensions["kafka_log"] = door
    if variant != "bare":

        @flask.get("/_stats")
        def stats() -> Any:
            return jsonify(KafkaLog.middleware(flask).stats())

    return flask


app = build(os.environ.get("BENCH_VARIANT", "bare"))
