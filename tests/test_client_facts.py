"""The entry says what the client got, through a real uvicorn (both parsers) and a real
broker: only the response start the server accepted counts, an answer after the client
has gone is a 499, and a streamed body the client abandoned counts only what was sent
before the middleware learned of the disconnect."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from kafka_log_middleware.types import Receive, Scope, Send
from tests.kafka_helpers import consume, unique_topic
from tests.polling import wait_until
from tests.servers import serve

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

CHUNK = b"x" * 65536
STREAM = 50 * 1024 * 1024
"""What the streaming app sends in all (the client reads about 1 MB of it)."""


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/twice``: two response starts; ``/late``: answers after the client has gone;
    ``/stream``: 50 MB, watching for the disconnect as Starlette does, sending on."""
    assert scope["type"] == "http"
    path = scope["path"]
    await receive()  # the (empty) request body
    if path == "/late":
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"too late"})
        return
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    if path == "/twice":
        with pytest.raises(RuntimeError):  # the server refuses it
            await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"created"})
        return
    watcher = asyncio.ensure_future(receive())  # learns of the disconnect, as Starlette's
    for _ in range(STREAM // len(CHUNK)):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await asyncio.sleep(0)  # where a real app reads its next chunk
    await send({"type": "http.response.body", "body": b""})
    await watcher


@pytest.fixture(params=["h11", "httptools"])
def served(request: pytest.FixtureRequest, kafka_bootstrap: str) -> Iterator[tuple[int, Any]]:
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=unique_topic(f"client-{request.param}"),
        producer_async_flush_timeout=20,
        log_format="kong3",
    )
    middleware = KafkaLogMiddleware(app, config)
    with serve(middleware, http=request.param) as base_url:
        yield int(base_url.rsplit(":", 1)[1]), middleware


def entry(middleware: KafkaLogMiddleware, bootstrap: str) -> dict[str, Any]:
    wait_until(lambda: middleware.stats()["enqueued"] == 1)
    wait_until(lambda: middleware.stats()["delivered"] == 1)
    [record] = asyncio.run(consume(bootstrap, middleware.config.topic, 1, timeout=10))
    result: dict[str, Any] = orjson.loads(record.value)
    return result


def connect(port: int, path: str) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
    return conn


def test_only_the_response_start_the_server_accepted_counts(
    served: tuple[int, KafkaLogMiddleware], kafka_bootstrap: str
) -> None:
    port, middleware = served
    with connect(port, "/twice") as conn:
        assert conn.recv(65536).startswith(b"HTTP/1.1 201 Created\r\n")
    logged = entry(middleware, kafka_bootstrap)
    assert logged["response"]["status"] == 201 and logged["upstream_status"] == "201"


def test_an_answer_after_the_client_has_gone_is_a_499(
    served: tuple[int, KafkaLogMiddleware], kafka_bootstrap: str
) -> None:
    port, middleware = served
    with connect(port, "/late") as conn:
        time.sleep(0.2)  # the app is waiting for the disconnect
        conn.shutdown(socket.SHUT_RDWR)
    logged = entry(middleware, kafka_bootstrap)
    assert logged["response"] == {"status": 499, "headers": {}, "size": 0}
    assert logged["upstream_status"] == "" and logged["latencies"]["proxy"] == -1


def test_an_abandoned_stream_counts_what_was_sent_before_the_client_left(
    served: tuple[int, KafkaLogMiddleware], kafka_bootstrap: str
) -> None:
    port, middleware = served
    received = 0
    with connect(port, "/stream") as conn:
        while received < 1024 * 1024:
            chunk = conn.recv(65536)
            assert chunk
            received += len(chunk)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    logged = entry(middleware, kafka_bootstrap)
    assert logged["response"]["status"] == 201  # what was sent, as nginx logs it
    # The client got ~1 MB; what the kernel buffers held on top is a few MB at most, far
    # from the 50 MB the app went on sending after the disconnect.
    assert received <= logged["response"]["size"] < STREAM // 4
