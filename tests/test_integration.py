"""End to end: concurrent requests through uvicorn → exactly one Kong entry each in Kafka."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from tests.kafka_helpers import consume, unique_topic
from tests.servers import serve

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

REQUESTS = 240
REASONS = {200: "OK", 201: "Created"}
SERVER_HEADERS = {b"date", b"server"}  # added by uvicorn itself, invisible to any middleware


async def get_item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"]})


async def create_item(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": len(body)}, status_code=201)


def items_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/items/{item_id}", get_item, name="item"),
            Route("/items", create_item, methods=["POST"], name="create"),
        ]
    )


def build_request(client: httpx.AsyncClient, n: int) -> httpx.Request:
    headers = {"x-request-n": str(n), "authorization": f"Bearer secret-{n}"}
    if n % 3 == 2:
        return client.build_request(
            "POST", "/items", params={"n": n}, content=b"x" * n, headers=headers
        )
    return client.build_request("GET", f"/items/{n}?n={n}&tag=a&tag=b&flag", headers=headers)


def header_object(raw: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw:
        key, text = name.decode().lower(), value.decode()
        if key in out:
            previous = out[key]
            out[key] = [*previous, text] if isinstance(previous, list) else [previous, text]
        else:
            out[key] = text
    return out


def header_bytes(raw: list[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + 2 + len(value) + 2 for name, value in raw)


def expected_entry(
    request: httpx.Request, response: httpx.Response, port: int, log_format: str
) -> dict[str, Any]:
    """The Kong entry for this exchange, computed from the bytes on the wire."""
    kong3 = log_format == "kong3"
    target = request.url.raw_path.decode()
    body = request.content
    request_size = len(f"{request.method} {target} HTTP/1.1\r\n") + header_bytes(
        request.headers.raw
    )
    request_size += 2 + len(body)
    app_headers = [(k, v) for k, v in response.headers.raw if k.lower() not in SERVER_HEADERS]
    status = response.status_code
    response_size = len(f"HTTP/1.1 {status} {REASONS[status]}\r\n") + header_bytes(app_headers)
    response_size += 2 + len(response.content)
    n = int(request.headers["x-request-n"])
    headers = header_object(request.headers.raw)
    headers["authorization"] = "REDACTED"
    querystring: dict[str, Any] = {"n": str(n)}
    if request.method == "GET":
        querystring.update({"tag": ["a", "b"], "flag": True})
        route = {"name": "item", "paths": ["/items/{item_id}"], "methods": ["GET", "HEAD"]}
    else:
        route = {"name": "create", "paths": ["/items"], "methods": ["POST"]}
    entry: dict[str, Any] = {
        "request": {
            "uri": target,
            "url": f"http://127.0.0.1:{port}{target}",
            "querystring": querystring,
            "method": request.method,
            "headers": headers,
            "size": request_size if kong3 else str(request_size),
        },
        "upstream_uri": target,
        "response": {
            "status": status,
            "headers": header_object(app_headers),
            "size": response_size if kong3 else str(response_size),
        },
        "route": route,
        "service": {"name": "items"},
        "client_ip": "127.0.0.1",
    }
    if kong3:
        entry["upstream_status"] = str(status)
        entry["source"] = "upstream"
        entry["workspace_name"] = "default"
    return entry


def check_and_strip_variable_fields(
    entry: dict[str, Any], log_format: str, started: float, ended: float
) -> dict[str, Any]:
    """Check the fields that vary per run (times, ids), then remove them for comparison."""
    latencies = entry.pop("latencies")
    expected_keys = {"request", "proxy", "kong"} | ({"receive"} if log_format == "kong3" else set())
    assert set(latencies) == expected_keys
    assert all(isinstance(v, int) and v >= 0 for v in latencies.values())
    assert latencies["request"] >= latencies["proxy"]
    started_at = entry.pop("started_at")
    assert isinstance(started_at, int)
    assert int(started * 1000) - 1 <= started_at <= int(ended * 1000) + 1
    if log_format == "kong3":
        assert re.fullmatch(r"[0-9a-f]{32}", entry["request"].pop("id"))
    return entry


@pytest.mark.parametrize("log_format", ["kong2", "kong3"])
def test_concurrent_requests_each_yield_exactly_one_matching_entry(
    kafka_bootstrap: str, log_format: str, backend: str
) -> None:
    topic = unique_topic(f"integration-{log_format}")
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=topic,
        log_format=log_format,  # type: ignore[arg-type]
        service={"name": "items"},
        producer_async_flush_timeout=50,
        producer_backend=backend,  # type: ignore[arg-type]
    )
    middleware = KafkaLogMiddleware(items_app(), config)
    exchanges: dict[int, tuple[httpx.Request, httpx.Response]] = {}
    started = time.time()
    with serve(middleware) as base_url:
        port = int(base_url.rsplit(":", 1)[1])

        async def send_all() -> None:
            limits = httpx.Limits(max_connections=32)
            async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:

                async def one(n: int) -> None:
                    request = build_request(client, n)
                    response = await client.send(request)
                    assert response.status_code in (200, 201)
                    exchanges[n] = (request, response)

                await asyncio.gather(*(one(n) for n in range(REQUESTS)))

        asyncio.run(send_all())
    ended = time.time()
    stats = middleware.stats()
    assert stats["enqueued"] == stats["delivered"] == REQUESTS
    assert stats["dropped"] == stats["pending"] == 0

    records = asyncio.run(consume(kafka_bootstrap, topic, REQUESTS, timeout=10, settle=1))
    assert len(records) == REQUESTS
    seen: set[int] = set()
    for record in records:
        assert record.key is None
        entry = orjson.loads(record.value)
        n = int(entry["request"]["headers"]["x-request-n"])
        assert n not in seen
        seen.add(n)
        request, response = exchanges[n]
        actual = check_and_strip_variable_fields(entry, log_format, started, ended)
        assert actual == expected_entry(request, response, port, log_format)
    assert seen == set(range(REQUESTS))
