"""The Flask demo app: the FastAPI demo's routes (``app.py``), logged by ``KafkaLog``.

Run it with ``KAFKA_LOG_BOOTSTRAP_SERVERS=127.0.0.1:9092 KAFKA_LOG_TOPIC=kong-log
gunicorn example_app.flask_app:app``; ``scripts/demo --app flask`` does all of it,
broker included. Each gunicorn worker logs (and counts) its own requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, NoReturn

from flask import Flask, Response, current_app, request

from example_app.demo_config import USERS, bearer_consumer, demo_config
from kafka_log_middleware import set_serialize_value
from kafka_log_middleware.flask import KafkaLog

TRUE = frozenset({"1", "true", "yes", "on"})


app = Flask(__name__)


@app.get("/orders/<int:order_id>")
def get_order(order_id: int) -> dict[str, Any]:
    """A path parameter and query arguments."""
    set_serialize_value(request, "order_id", order_id)
    expand = request.args.get("expand", "").lower() in TRUE
    return {"id": order_id, "expand": expand, "items": ["book", "pen"] if expand else []}


@app.post("/orders")
def create_order() -> tuple[dict[str, Any], int]:
    """A request body: counted in ``request.size``."""
    return {"id": 1001, "received": request.get_json()}, 201


@app.get("/me")
def me() -> tuple[dict[str, Any], int]:
    """An Authorization header: logged as ``REDACTED``; the user becomes Kong's consumer."""
    user = USERS.get(request.headers.get("Authorization", ""))
    if user is None:
        return {"detail": "missing or bad token"}, 401
    return user, 200


@app.get("/stream")
def stream() -> Response:
    """A streamed response (a generator): ``response.size`` counts every chunk."""
    chunks = request.args.get("chunks", 5, type=int)

    def body() -> Iterator[bytes]:
        for index in range(chunks):
            yield f"chunk {index}\n".encode()
            time.sleep(0.01)

    return Response(body(), mimetype="text/plain")


@app.get("/boom")
def boom() -> NoReturn:
    """An unhandled exception: Flask answers 500, which is what the entry shows."""
    raise RuntimeError("the demo handler failed on purpose")


@app.get("/_kafka_log/stats")
def stats() -> dict[str, int]:
    """This worker's counters: enqueued == delivered + dropped + uncertain +
    skipped_should_log + pending."""
    return KafkaLog.middleware(current_app).stats()


app.config["KAFKA_LOG"] = demo_config(bearer_consumer)
KafkaLog(app)
