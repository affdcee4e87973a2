"""The benchmark apps: one Starlette hello-world, logged four ways (``BENCH_VARIANT``).

``GET /hello/{name}?a=1&b=2`` returns a small JSON body. Variants:

- ``bare``: the app alone.
- ``middleware``: wrapped in ``KafkaLogMiddleware(app, KafkaLogConfig.from_env())``, so
  ``KAFKA_LOG_*`` selects broker, topic, backend and serializer. ``GET /_stats`` returns
  the middleware's ``stats()``.
- ``basehttp_send_and_wait``: the usual blog pattern, a ``BaseHTTPMiddleware`` that
  builds a small JSON log record and awaits ``producer.send_and_wait()``.
- ``asgi_send``: a pure ASGI middleware that orjson-encodes a small record and awaits
  ``producer.send()`` per request, without waiting for the delivery.

The hand-made loggers read the broker and topic from the same ``KAFKA_LOG_BOOTSTRAP_SERVERS``
and ``KAFKA_LOG_TOPIC`` variables; their aiokafka producer starts in the app's lifespan.

Run: ``BENCH_VARIANT=middleware uvicorn bench.apps:app``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware

VARIANTS = ("bare", "passthrough", "middleware", "basehttp_send_and_wait", "asgi_send")
logger = logging.getLogger("bench.apps")


async def hello(request: Request) -> JSONResponse:
    """The endpoint under test: a path param, two query args, a small JSON body."""
    params = request.query_params
    return JSONResponse(
        {"hello": request.path_params["name"], "a": params.get("a"), "b": params.get("b")}
    )


def _routes(*extra: Route) -> list[Route]:
    return [Route("/hello/{name}", hello), *extra]


# -- hand-made loggers: one aiokafka producer per process, started in lifespan ----------


class _Kafka:
    """The hand-made loggers' producer and topic (set by the lifespan)."""

    producer: Any = None
    topic = os.environ.get("KAFKA_LOG_TOPIC", "bench")


@contextlib.asynccontextmanager
async def _producer_lifespan(_app: Starlette) -> AsyncIterator[None]:
    servers = os.environ.get("KAFKA_LOG_BOOTSTRAP_SERVERS", "127.0.0.1:9092").split(",")
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    await producer.start()
    _Kafka.producer = producer
    try:
        yield
    finally:
        _Kafka.producer = None
        await producer.stop()


class SendAndWaitLogger(BaseHTTPMiddleware):
    """The blog pattern: log each request with ``await producer.send_and_wait()``."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        record = {
            "method": request.method,
            "path": request.url.path,
            "query": str(request.query_params),
            "status": response.status_code,
            "client": request.client.host if request.client else None,
            "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            "ts": time.time(),
        }
        try:
            await _Kafka.producer.send_and_wait(_Kafka.topic, json.dumps(record).encode())
        except Exception:
            logger.exception("could not log the request to Kafka")
        return response


class SendLogger:
    """A pure ASGI middleware: ``await producer.send()`` per request, delivery not awaited."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record = {
                "method": scope["method"],
                "path": scope["path"],
                "query": scope["query_string"].decode("latin-1"),
                "status": status,
                "client": scope["client"][0] if scope.get("client") else None,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                "ts": time.time(),
            }
            producer = _Kafka.producer
            if producer is not None:
                try:
                    await producer.send(_Kafka.topic, orjson.dumps(record))
                except Exception:
                    logger.exception("could not log the request to Kafka")


class Passthrough:
    """An empty pure ASGI middleware: the floor any middleware layer costs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


# -- the variants ---------------------------------------------------------------------------


def _middleware_app() -> ASGIApp:
    wrapped: list[KafkaLogMiddleware] = []

    async def stats(_request: Request) -> JSONResponse:
        return JSONResponse(wrapped[0].stats())

    starlette = Starlette(routes=_routes(Route("/_stats", stats)))
    middleware = KafkaLogMiddleware(starlette, KafkaLogConfig.from_env())
    wrapped.append(middleware)
    return middleware


def build(variant: str) -> ASGIApp:
    """The ASGI app of ``variant`` (one of ``VARIANTS``)."""
    if variant == "bare":
        return Starlette(routes=_routes())
    if variant == "passthrough":
        return Passthrough(Starlette(routes=_routes()))
    if variant == "middleware":
        return _middleware_app()
    if variant == "basehttp_send_and_wait":
        return Starlette(
            routes=_routes(),
            middleware=[Middleware(SendAndWaitLogger)],
            lifespan=_producer_lifespan,
        )
    if variant == "asgi_send":
        return Starlette(
            routes=_routes(), middleware=[Middleware(SendLogger)], lifespan=_producer_lifespan
        )
    raise ValueError(f"BENCH_VARIANT must be one of {', '.join(VARIANTS)}, not {variant!r}")


AsgiCallable = Callable[[Scope, Receive, Send], Awaitable[None]]
app: AsgiCallable = build(os.environ.get("BENCH_VARIANT", "bare"))
