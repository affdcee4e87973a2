"""The app of ``bench/soak.py``: a logged Starlette hello-world that also tells its stats.

Configured from ``KAFKA_LOG_*`` (``KafkaLogConfig.from_env``); ``GET /n`` answers every
load request, ``GET /stats`` the middleware's counters (logged too, like any request),
``GET /metrics`` its Prometheus metrics (when ``prometheus_client`` is installed).
Each entry carries ``soak_seq``, the order in which this worker's publisher built it,
so that the benchmark can check that Kafka got them in that order.
Served by uvicorn: ``uvicorn bench.soak_app:make_app --factory``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware


def make_app() -> KafkaLogMiddleware:
    """The logged app; its ``/stats`` reads the middleware wrapping it."""
    middleware: KafkaLogMiddleware

    async def hello(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def stats(_request: Request) -> JSONResponse:
        return JSONResponse(middleware.stats())

    routes = [Route("/n", hello), Route("/stats", stats)]
    exported = importlib.util.find_spec("prometheus_client") is not None
    if exported:
        from kafka_log_middleware import metrics

        routes.append(Route("/metrics", metrics.starlette_endpoint))
    app = Starlette(routes=routes)
    sequence = itertools.count()
    fields = {"soak_seq": lambda _request: (os.getpid(), next(sequence))}
    middleware = KafkaLogMiddleware(app, KafkaLogConfig.from_env(custom_fields=fields))
    if exported:
        metrics.register(middleware)
    return middleware
