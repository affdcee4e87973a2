"""``$request_length`` and ``$bytes_sent`` checked byte for byte against a real uvicorn socket.

A raw HTTP/1.1 request goes over TCP to uvicorn (both of its HTTP parsers); the
captured facts must give exactly the bytes sent, and the bytes received minus the
headers uvicorn adds by itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import orjson
import pytest
import uvicorn

from kafka_log_middleware.asgi import ASGIRequest
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import KafkaLogConfig
from kafka_log_middleware.nginx_vars import bytes_sent, request_length
from kafka_log_middleware.serializer import build_entry, encode_entry
from kafka_log_middleware.types import ASGIApp, Receive, Scope, Send

CONFIG = KafkaLogConfig(bootstrap_servers=("127.0.0.1:9092",), topic="t", log_format="kong3")


class Recorder:
    """A minimal stand-in for the middleware: captures each request, keeps the captures."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.captures: list[CapturedRequest] = []
        self.done = threading.Condition()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        capture = ASGIRequest(scope, CONFIG, receive, send)
        try:
            await self.app(scope, capture.receive, capture.send)
        except Exception:
            capture.raised = True
            raise
        finally:
            capture.detach()
            with self.done:
                self.captures.append(capture)
                self.done.notify_all()

    def wait(self, count: int) -> CapturedRequest:
        with self.done:
            assert self.done.wait_for(lambda: len(self.captures) >= count, timeout=10)
            return self.captures[count - 1]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the body unless the path says not to; answers with a known body or raises."""
    if scope["path"] == "/raise":
        raise RuntimeError("boom")
    more = scope["path"] != "/no-read"
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"ok":true}'
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Server(NamedTuple):
    recorder: Recorder
    port: int
    http: str
    """uvicorn's HTTP implementation: ``h11`` or ``httptools`` (its default when installed)."""


@contextmanager
def uvicorn_on_free_port(app: ASGIApp, http: str) -> Iterator[int]:
    """uvicorn (HTTP implementation ``http``) serving ``app`` in a thread; yields its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", http=http, loop="asyncio", log_level="critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module", params=["h11", "httptools"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """uvicorn serving ``app`` behind a :class:`Recorder`, in a thread, on a free port."""
    recorder = Recorder(app)
    with uvicorn_on_free_port(recorder, request.param) as port:
        yield Server(recorder, port, request.param)


def exchange(port: int, raw: bytes, *, head: bool = False) -> bytes:
    """Send ``raw`` and return the complete response, every byte as received."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += _recv(conn)
        head_end = data.index(b"\r\n\r\n") + 4
        fields = dict(_header_lines(data[:head_end]))
        if head:
            return data
        if b"content-length" in fields:
            while len(data) < head_end + int(fields[b"content-length"]):
                data += _recv(conn)
            return data
        while chunk := conn.recv(65536):  # connection: close
            data += chunk
        return data


def _recv(conn: socket.socket) -> bytes:
    chunk = conn.recv(65536)
    assert chunk, "connection closed early"
    return chunk


def _header_lines(block: bytes) -> list[tuple[bytes, bytes]]:
    lines = block.split(b"\r\n")[1:]
    return [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in lines if line)
    ]


def server_added(response: bytes) -> int:
    """Bytes of the ``date`` and ``server`` header lines uvicorn adds to every response."""
    block = response[: response.index(b"\r\n\r\n")]
    lines = [
        line for line in block.split(b"\r\n") if line.lower().startswith((b"date:", b"server:"))
    ]
    assert len(lines) == 2
    return sum(len(line) + 2 for line in lines)


def _check(recorder: Recorder, port: int, raw: bytes, *, head: bool = False) -> CapturedRequest:
    count = len(recorder.captures) + 1
    response = exchange(port, raw, head=head)
    capture = recorder.wait(count)
    assert request_length(capture) == len(raw)
    # $bytes_sent counts what the app sent; the only difference with the bytes received is
    # the server's own headers (uvicorn's `date` and `server`; nginx writes its own too).
    assert bytes_sent(capture) == len(response) - server_added(response)
    return capture


def test_post_with_body_repeated_headers_and_query(server: Server) -> None:
    recorder, port, _ = server
    body = b'{"item": "caf\xc3\xa9", "n": 12345}'
    raw = (
        b"POST /submit/%%7Eitem?x=1&y=a+b&x HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"User-Agent: raw-socket-test/1.0\r\n"
        b"Accept: */*\r\n"
        b"X-Dup: one\r\n"
        b"x-dup: two\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"\r\n%s" % (port, len(body), body)
    )
    capture = _check(recorder, port, raw)
    entry = build_entry(capture)
    assert entry["request"]["size"] == len(raw)
    assert entry["request"]["uri"] == "/submit/%7Eitem?x=1&y=a+b&x"
    assert entry["request"]["querystring"] == {"x": ["1", True], "y": "a b"}
    assert entry["request"]["headers"]["x-dup"] == ["one", "two"]
    assert entry["response"]["status"] == 201


def test_get_without_body(server: Server) -> None:
    recorder, port, _ = server
    _check(recorder, port, b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")


def test_get_with_query_string(server: Server) -> None:
    recorder, port, _ = server
    raw = b"GET /search?q=kong+log&page=2&empty=&flag HTTP/1.1\r\nHost: localhost\r\n\r\n"
    _check(recorder, port, raw)


def test_body_the_app_does_not_read_still_counts(server: Server) -> None:
    recorder, port, _ = server
    raw = b"PUT /no-read HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
    capture = _check(recorder, port, raw)
    assert capture.body_read < 5


def test_head_sends_no_body(server: Server) -> None:
    recorder, port, _ = server
    _check(recorder, port, b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n", head=True)


def test_app_raised_counts_the_servers_500(server: Server) -> None:
    recorder, port, http = server
    raw = b"GET /raise HTTP/1.1\r\nHost: localhost\r\n\r\n"
    if http == "httptools":
        capture = _check(recorder, port, raw)
    else:
        # uvicorn's h11 protocol sends its 500 without content-length, so h11 frames it
        # chunked. bytes_sent() models the httptools 500 (with "content-length: 21").
        count = len(recorder.captures) + 1
        response = exchange(port, raw)
        capture = recorder.wait(count)
        assert request_length(capture) == len(raw)
        chunked = len(b"transfer-encoding: chunked\r\n") + len(b"15\r\n\r\n0\r\n\r\n")
        content_length = len(b"content-length: 21\r\n")
        assert bytes_sent(capture) == (
            len(response) - server_added(response) - chunked + content_length
        )
    assert capture.raised
    entry: dict[str, Any] = build_entry(capture)
    assert entry["response"]["status"] == 500
    assert entry["source"] == "kong"


SECRET = b"s3cr3t"


def test_absolute_form_target_is_logged_path_only_without_its_credentials(server: Server) -> None:
    recorder, port, http = server
    authority = b"http://user:%s@Example.COM:8080" % SECRET
    raw = b"GET %s/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n" % authority
    count = len(recorder.captures) + 1
    exchange(port, raw)
    capture = recorder.wait(count)
    for layout in ("kong2", "kong3"):
        capture.config = KafkaLogConfig(
            bootstrap_servers=("127.0.0.1:9092",), topic="t", log_format=layout
        )
        data = encode_entry(capture)
        assert SECRET not in data
        assert b"user" not in data
        entry = orjson.loads(data)
        assert entry["request"]["uri"] == entry["upstream_uri"] == "/x?y=1"
        assert entry["request"]["querystring"] == {"y": "1"}
        if layout == "kong2":
            assert data == orjson.dumps(build_entry(capture))
    url = entry["request"]["url"]
    if http == "h11":
        # h11 hands over the whole target: nginx's $host (the request line's) and length.
        assert url == f"http://example.com:{port}/x?y=1"
        assert request_length(capture) == len(raw)
    else:
        # httptools keeps only its path and query: the Host header, the target's bytes unseen.
        assert url == f"http://other.example:{port}/x?y=1"
        assert request_length(capture) == len(raw) - len(authority)
