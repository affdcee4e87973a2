"""A Flask app (the ``KafkaLog`` extension, so the WSGI door) under real gunicorn, logged
to the real broker: pre-forked workers (``--preload -w 2``), threads (``--threads 4``),
whole entries compared in both layouts, and SIGTERM under load."""

from __future__ import annotations

import asyncio
import http
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.kafka_helpers import consume, unique_topic
from tests.servers import gunicorn
from tests.test_integration import check_and_strip_variable_fields, header_bytes, header_object

pytest.importorskip("flask")
pytest.importorskip("gunicorn")

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

APP = "tests.flask_app:app"
SERVER_HEADERS = {b"date", b"server", b"connection"}  # added by gunicorn, not the app
FLASK_ROUTE = {  # Flask adds HEAD and OPTIONS to a GET rule
    "name": "hello",
    "paths": ["/hello/<name>"],
    "methods": ["GET", "HEAD", "OPTIONS"],
}
Exchanges = dict[int, tuple[httpx.Request, httpx.Response]]


def app_env(bootstrap: str, topic: str, **fields: str) -> dict[str, str]:
    """The Flask app's config, from the environment (``KAFKA_LOG_*``)."""
    env = {"KAFKA_LOG_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_LOG_TOPIC": topic}
    env.update({"KAFKA_LOG_" + name.upper(): value for name, value in fields.items()})
    return env


REDACTED_REQUEST = ("authorization", "proxy-authorization", "cookie")
REDACTED_RESPONSE = ("set-cookie",)
"""The default ``redact_headers`` and ``redact_response_headers``."""


def redacted(headers: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``headers`` as the defaults log them: each value of ``names`` as ``"REDACTED"``."""
    for name, value in headers.items():
        if name in names:
            headers[name] = ["REDACTED"] * len(value) if isinstance(value, list) else "REDACTED"
    return headers


def expected_entry(
    request: httpx.Request,
    response: httpx.Response,
    port: int,
    log_format: str,
    route: dict[str, Any] | None = FLASK_ROUTE,
    service: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Kong entry of this exchange, from the bytes on the wire (WSGI servers)."""
    kong3 = log_format == "kong3"
    target = request.url.raw_path.decode()
    request_size = len(f"{request.method} {target} HTTP/1.1\r\n") + header_bytes(
        request.headers.raw
    )
    request_size += 2 + len(request.content)
    app_headers = [(k, v) for k, v in response.headers.raw if k.lower() not in SERVER_HEADERS]
    status = response.status_code
    response_size = len(f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n")
    response_size += header_bytes(app_headers) + 2 + len(response.content)
    entry: dict[str, Any] = {
        "request": {
            "uri": target,
            "url": f"http://127.0.0.1:{port}{target}",
            "querystring": dict(request.url.params),
            "method": request.method,
            "headers": redacted(header_object(request.headers.raw), REDACTED_REQUEST),
            "size": request_size if kong3 else str(request_size),
        },
        "upstream_uri": target,
        "response": {
            "status": status,
            "headers": redacted(header_object(app_headers), REDACTED_RESPONSE),
            "size": response_size if kong3 else str(response_size),
        },
        "client_ip": "127.0.0.1",
    }
    if route is not None:
        entry["route"] = route
    if service is not None:
        entry["service"] = service
    if kong3:
        entry["upstream_status"] = str(status)
        entry["source"] = "upstream"
        entry["workspace_name"] = "default"
    return entry


def hello_request(client: httpx.AsyncClient, n: int) -> httpx.Request:
    return client.build_request("GET", f"/hello/w{n}?n={n}")


def send(
    base_url: str,
    count: int,
    connections: int,
    build: Callable[[httpx.AsyncClient, int], httpx.Request] = hello_request,
) -> Exchanges:
    """``count`` requests (``build(client, n)``, with a query argument ``n``) over up to
    ``connections`` connections at once, by request number."""
    exchanges: Exchanges = {}

    async def send_all() -> None:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

            async def one(n: int) -> None:
                request = build(client, n)
                response = await client.send(request)
                assert response.status_code in (200, 201), response.text
                exchanges[n] = (request, response)

            await asyncio.gather(*(one(n) for n in range(count)))

    asyncio.run(send_all())
    return exchanges


def check_entries(
    bootstrap: str,
    topic: str,
    exchanges: Exchanges,
    base_url: str,
    log_format: str,
    started: float,
    route_of: Callable[[httpx.Request], dict[str, Any] | None] = lambda _: FLASK_ROUTE,
    service: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Exactly one entry per exchange in ``topic``, each the whole expected entry."""
    records = asyncio.run(consume(bootstrap, topic, len(exchanges), timeout=20, settle=1))
    ended = time.time()
    assert len(records) == len(exchanges)
    port = int(base_url.rsplit(":", 1)[1])
    entries = []
    for record in records:
        entry = orjson.loads(record.value)
        entries.append(entry)
        request, response = exchanges[int(entry["request"]["querystring"]["n"])]
        actual = check_and_strip_variable_fields(dict(entry), log_format, started, ended)
        expected = expected_entry(request, response, port, log_format, route_of(request), service)
        assert actual == expected
    numbers = sorted(int(e["request"]["querystring"]["n"]) for e in entries)
    assert numbers == sorted(exchanges)
    return entries


@pytest.mark.parametrize("log_format", ["kong2", "kong3"])
def test_preforked_workers_each_log_their_own_requests(
    kafka_bootstrap: str, log_format: str
) -> None:
    """--preload -w 2: the app (and its middleware) is built before the fork; both
    workers publish, exactly one entry per request, flushed at exit by atexit alone."""
    topic = unique_topic(f"gunicorn-{log_format}")
    env = app_env(kafka_bootstrap, topic, log_format=log_format, producer_async_flush_timeout="20")
    started = time.time()
    with gunicorn(APP, "--preload", "-w", "2", env=env) as (base_url, _):
        exchanges = send(base_url, 120, connections=8)
    entries = check_entries(kafka_bootstrap, topic, exchanges, base_url, log_format, started)
    pids = {e["response"]["headers"]["x-pid"] for e in entries}
    assert len(pids) == 2  # both workers served, and each logged what it served
    for _, response in exchanges.values():
        assert response.headers["x-pid"] in pids


def test_threaded_workers_log_every_request_once(kafka_bootstrap: str) -> None:
    """--threads 4 (gthread): one background publisher fed by four worker threads."""
    topic = unique_topic("gunicorn-threads")
    env = app_env(kafka_bootstrap, topic, producer_async_flush_timeout="20")
    started = time.time()
    with gunicorn(APP, "-w", "1", "--threads", "4", env=env) as (base_url, _):
        exchanges = send(base_url, 160, connections=16)
    entries = check_entries(kafka_bootstrap, topic, exchanges, base_url, "kong2", started)
    threads = {e["response"]["headers"]["x-thread"] for e in entries}
    assert len(threads) > 1  # several worker threads served
    assert len({e["response"]["headers"]["x-pid"] for e in entries}) == 1


def test_sigterm_under_load_delivers_or_counts_every_entry(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGTERM while clients keep sending: each worker stops gracefully, flushes in its
    worker_exit hook within shutdown_timeout, and its final stats account for every
    request it served: delivered, or dropped as shutdown."""
    topic = unique_topic("gunicorn-sigterm")
    env = app_env(
        kafka_bootstrap,
        topic,
        producer_async_flush_timeout="2000",  # entries wait in the buffer at SIGTERM
        shutdown_timeout="3000",
    )
    env["KAFKA_LOG_TEST_STATS"] = str(tmp_path)
    options = ("--preload", "-w", "2", "-c", "tests/gunicorn_conf.py", "--graceful-timeout", "20")
    served = 0
    stop = threading.Event()

    def load(base_url: str) -> None:
        nonlocal served
        with httpx.Client(base_url=base_url, timeout=10) as client:
            n = 0
            while not stop.is_set() and n < 20_000:
                try:
                    response = client.get(f"/hello/load?n={n}")
                except httpx.TransportError:
                    return  # the server is gone
                if response.status_code == 200:
                    served += 1
                n += 1

    with gunicorn(APP, *options, env=env) as (base_url, process):
        clients = [threading.Thread(target=load, args=(base_url,)) for _ in range(4)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while served < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # under load
        assert process.wait(60) == 0
        stop.set()
        for client in clients:
            client.join()
    reports = [orjson.loads(path.read_bytes()) for path in tmp_path.glob("*.json")]
    assert len(reports) == 2, reports  # each worker flushed and reported
    enqueued = sum(r["enqueued"] for r in reports)
    assert enqueued == served > 0
    for stats in reports:
        assert stats["pending"] == 0
        assert stats["enqueued"] == stats["delivered"] + stats["dropped_shutdown"], stats
        assert stats["dropped"] == stats["dropped_shutdown"], stats
    delivered = sum(r["delivered"] for r in reports)
    records = asyncio.run(consume(kafka_bootstrap, topic, delivered, timeout=10, settle=1))
    assert len(records) == delivered
