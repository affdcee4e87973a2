"""A Starlette gateway: proxies every request to an upstream service with ``httpx`` and
reports the upstream call (``kafka_log_middleware.gateway``), so its entries read like
Kong's: ``upstream_uri``, ``upstream_status``, ``tries``, the upstream's own latency.

``UPSTREAM_URLS=http://127.0.0.1:8001 KAFKA_LOG_BOOTSTRAP_SERVERS=127.0.0.1:9092
KAFKA_LOG_TOPIC=kong-log uvicorn --factory example_app.gateway:create_app``. Several comma-separated
upstreams are tried in order when one refuses the connection, as Kong's balancer
retries; a timeout answers 504, no upstream 502.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from kafka_log_middleware.gateway import upstream

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers a proxy does not forward (RFC 9110 §7.6.1)."""
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
"""Request headers not forwarded: httpx sets these itself for the upstream."""
NOT_RETURNED = HOP_BY_HOP | {"date", "server"}
"""Upstream response headers not returned: the server adds its own ``date`` and
``server``, as nginx's ``proxy_hide_header`` defaults do."""
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def gateway(upstreams: Sequence[str], timeout: float = 10.0) -> Starlette:
    """A Starlette app that forwards each request to the first of ``upstreams`` that
    takes the connection (base URLs such as ``http://10.0.0.5:8080``)."""
    if not upstreams:
        raise ValueError("the gateway needs at least one upstream URL")
    targets = [httpx.URL(url) for url in upstreams]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=timeout) as client:
            app.state.client = client
            yield

    async def proxy(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        uri = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        call = upstream(request, uri)  # the URI sent upstream
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k not in NOT_FORWARDED]
        for target in targets:
            outgoing = client.build_request(
                request.method, target.join(uri), headers=headers, content=body
            )
            with call.attempt(target.host, target.port or 80) as attempt:
                try:
                    response = await client.send(outgoing, stream=True)
                except httpx.ConnectError:
                    attempt.failed()
                    continue  # the next upstream, as Kong's balancer retries
                except httpx.TimeoutException:
                    attempt.failed(504)
                    return PlainTextResponse("upstream timed out\n", status_code=504)
                attempt.received(response.status_code)
            return _forwarded(response)
        return PlainTextResponse("no upstream is reachable\n", status_code=502)

    routes = [Route("/{path:path}", proxy, methods=METHODS)]
    return Starlette(routes=routes, lifespan=lifespan)


def _forwarded(upstream_response: httpx.Response) -> Response:
    """The upstream's response as it came (status, repeated headers, raw body), streamed."""
    response = StreamingResponse(
        upstream_response.aiter_raw(),
        status_code=upstream_response.status_code,
        background=BackgroundTask(upstream_response.aclose),
    )
    response.raw_headers = [
        (name.lower(), value)
        for name, value in upstream_response.headers.raw
        if name.lower().decode("latin-1") not in NOT_RETURNED
    ]
    return response


def create_app() -> KafkaLogMiddleware:
    """The gateway over ``$UPSTREAM_URLS``, logged as configured by ``KAFKA_LOG_*``
    (``uvicorn --factory example_app.gateway:create_app``)."""
    urls = [u.strip() for u in os.environ.get("UPSTREAM_URLS", "").split(",") if u.strip()]
    return KafkaLogMiddleware(gateway(urls or ["http://127.0.0.1:8001"]), KafkaLogConfig.from_env())
