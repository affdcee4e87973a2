"""Trace ids (``tracing.py``): the W3C ``traceparent`` parser, the OpenTelemetry span
reader, what the ASGI and WSGI doors capture, and the layouts' defaults."""

from __future__ import annotations

import asyncio
import io
import sys
import time
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, Tracer, use_span

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware, KafkaLogWSGIMiddleware
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import LogFormat
from kafka_log_middleware.serializer import build_entry
from kafka_log_middleware.tracing import span_reader, trace_id, traceparent_id
from tests.asgi_driver import http_scope, request
from tests.kafka_helpers import consume, unique_topic
from tests.servers import serve
from tests.test_asgi import buffered, keep_captures_buffered, offline_config, starlette_app
from tests.test_integration import (
    build_request,
    check_and_strip_variable_fields,
    expected_entry,
    items_app,
)

__all__ = ["keep_captures_buffered"]  # the autouse fixture, for this module too

pytestmark = pytest.mark.timeout(60)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HEADER = f"00-{TRACE}-00f067aa0ba902b7-01"
OTHER = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def tracer() -> Tracer:
    """A real SDK tracer (its own provider: the global one is left alone)."""
    return TracerProvider().get_tracer("tests")


# -- traceparent -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (HEADER, TRACE),
        (f"00-{TRACE}-00f067aa0ba902b7-00", TRACE),  # not sampled: still its trace
        (f" {HEADER}\t", TRACE),  # optional whitespace around the value
        # a future version: 55 bytes, or more after a "-", parsed as version 00
        (f"01-{TRACE}-00f067aa0ba902b7-09", TRACE),
        (f"cc-{TRACE}-00f067aa0ba902b7-01-what-the-future-adds", TRACE),
        (f"fe-{TRACE}-00f067aa0ba902b7-01-", TRACE),
        ("", None),
        ("00", None),
        (HEADER[:-1], None),  # too short
        (HEADER + "0", None),  # too long
        (HEADER + "-extra", None),  # version 00 has no extra fields
        (f"01-{TRACE}-00f067aa0ba902b7-01x", None),  # a future version's extra needs "-"
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # version ff is invalid
        (f"0g-{TRACE}-00f067aa0ba902b7-01", None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),  # hex is lowercase
        (f"00-{TRACE[:-1]}z-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-00f067aa0ba902bz-01", None),
        (f"00-{TRACE}-00f067aa0ba902b7-0x", None),
        (f"00-{TRACE}0-0f067aa0ba902b7-01", None),  # a field of the wrong length
        (f"00_{TRACE}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-00f067aa0ba902b7_01", None),
        (f"00-{TRACE[:16]}\u00e9{TRACE[18:]}-00f067aa0ba902b7-01", None),
    ],
)
def test_traceparent(value: str, expected: str | None) -> None:
    raw = value.encode("utf-8")
    assert traceparent_id([(b"host", b"h"), (b"traceparent", raw)]) == expected


def test_traceparent_absent_repeated_or_odd_is_ignored() -> None:
    assert traceparent_id([]) is None
    assert traceparent_id([(b"x-traceparent", HEADER.encode())]) is None
    assert traceparent_id([(b"TraceParent", HEADER.encode())]) == TRACE
    two = [(b"traceparent", HEADER.encode()), (b"traceparent", HEADER.encode())]
    assert traceparent_id(two) is None
    odd: list[Any] = [[(b"traceparent", None)], [None], [(b"traceparent",)], 5]
    for headers in odd:
        assert traceparent_id(headers) is None


# -- the config ------------------------------------------------------------------------


def _config(log_format: LogFormat = "kong3", **changes: Any) -> KafkaLogConfig:
    return KafkaLogConfig(
        bootstrap_servers=("127.0.0.1:9092",), topic="t", log_format=log_format, **changes
    )


@pytest.mark.parametrize(
    ("log_format", "include", "expected"),
    [
        ("kong2", None, False),  # Kong 2.0 had none
        ("kong3", None, True),
        ("kong2", True, True),
        ("kong3", False, False),
    ],
)
def test_trace_ids_default_by_layout(
    log_format: LogFormat, include: bool | None, expected: bool
) -> None:
    config = _config(log_format, include_trace_id=include)
    assert config.trace_ids is expected
    assert (span_reader(config) is not None) is expected


# -- the span reader -------------------------------------------------------------------


def test_span_reader_reads_the_current_span(tracer: Tracer) -> None:
    read = span_reader(_config())
    assert read is not None
    assert read() == 0
    with tracer.start_as_current_span("outer") as span:
        assert read() == span.get_span_context().trace_id
    assert read() == 0


def test_a_propagated_context_counts_as_a_span() -> None:
    read = span_reader(_config())
    assert read is not None
    context = SpanContext(int(TRACE, 16), 0x00F067AA0BA902B7, is_remote=True)
    with use_span(NonRecordingSpan(context)):
        assert read() == int(TRACE, 16)


def test_without_opentelemetry_there_is_no_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)  # import fails
    assert span_reader(_config()) is None


def test_a_broken_tracing_set_up_gives_no_id(monkeypatch: pytest.MonkeyPatch) -> None:
    import opentelemetry.trace

    def broken() -> Any:
        raise RuntimeError("no context")

    monkeypatch.setattr(opentelemetry.trace, "get_current_span", broken)
    read = span_reader(_config())
    assert read is not None
    assert read() == 0


# -- trace_id(request): the span's, else the header's ----------------------------------


def _captured(headers: list[tuple[bytes, bytes]], span: int = 0, **config: Any) -> Any:
    scope = http_scope("/", headers=[(b"host", b"h"), *headers])
    captured = CapturedRequest(scope, _config(**config))
    captured.trace_id = span
    return captured


def test_the_span_wins_over_the_header() -> None:
    header = [(b"traceparent", HEADER.encode())]
    assert trace_id(_captured(header)) == TRACE
    assert trace_id(_captured(header, int(OTHER, 16))) == OTHER
    assert trace_id(_captured([], 5)) == "0" * 31 + "5"  # always 32 digits
    assert trace_id(_captured([(b"traceparent", b"00-junk")])) is None
    assert trace_id(_captured(header, 5, include_trace_id=False)) is None
    assert trace_id(_captured(header, 5, log_format="kong2")) is None


# -- the ASGI door -----------------------------------------------------------------------


async def test_asgi_door_takes_the_span_around_the_call(tracer: Tracer) -> None:
    middleware = KafkaLogMiddleware(starlette_app(), offline_config(log_format="kong3"))
    with tracer.start_as_current_span("server") as span:
        await request(middleware, http_scope("/hello/ann"))
        expected = f"{span.get_span_context().trace_id:032x}"
    headers = [(b"host", b"h"), (b"traceparent", HEADER.encode())]
    with tracer.start_as_current_span("server") as span:
        await request(middleware, http_scope("/hello/ann", headers=headers))
        winner = f"{span.get_span_context().trace_id:032x}"
    await request(middleware, http_scope("/hello/ann", headers=headers))
    await request(middleware, http_scope("/hello/ann"))
    entries = [build_entry(captured) for captured in buffered(middleware)]
    assert [entry.get("trace_id") for entry in entries] == [
        {"w3c": expected},
        {"w3c": winner},
        {"w3c": TRACE},
        None,
    ]
    await middleware.aclose()


@pytest.mark.parametrize(
    ("changes", "logged"),
    [
        ({"log_format": "kong2"}, False),
        ({"log_format": "kong2", "include_trace_id": True}, True),
        ({"log_format": "kong3", "include_trace_id": False}, False),
    ],
)
async def test_asgi_door_follows_the_config(
    tracer: Tracer, changes: dict[str, Any], logged: bool
) -> None:
    middleware = KafkaLogMiddleware(starlette_app(), offline_config(**changes))
    with tracer.start_as_current_span("server"):
        await request(middleware, http_scope("/hello/ann"))
    [captured] = buffered(middleware)
    assert bool(captured.trace_id) is logged  # no span read when off
    assert ("trace_id" in build_entry(captured)) is logged
    await middleware.aclose()


async def test_update_config_turns_the_span_read_on(tracer: Tracer) -> None:
    middleware = KafkaLogMiddleware(starlette_app(), offline_config())
    middleware.update_config(include_trace_id=True)
    with tracer.start_as_current_span("server"):
        await request(middleware, http_scope("/hello/ann"))
    [captured] = buffered(middleware)
    assert captured.trace_id
    await middleware.aclose()


# -- the WSGI door -----------------------------------------------------------------------


class _Captures:
    """Stands in for the pipeline's buffer: keeps what the door hands over."""

    def __init__(self) -> None:
        self.items: list[CapturedRequest] = []

    def put_threadsafe(self, item: CapturedRequest) -> None:
        self.items.append(item)


def _hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


@pytest.fixture
def wsgi() -> Iterator[tuple[KafkaLogWSGIMiddleware, _Captures]]:
    middleware = KafkaLogWSGIMiddleware(_hello, offline_config(log_format="kong3"))
    pipeline = middleware._background.started()
    captures = _Captures()
    pipeline.buffer = captures  # type: ignore[assignment]
    yield middleware, captures
    middleware.close()


def _call(middleware: KafkaLogWSGIMiddleware, headers: dict[str, str]) -> None:
    environ: dict[str, Any] = {"wsgi.input": io.BytesIO(b"")}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    body = middleware(environ, lambda status, headers, exc_info=None: lambda data: None)
    assert b"".join(body) == b"hello"
    body.close()  # type: ignore[attr-defined]


def test_wsgi_door_takes_the_span_around_the_call(
    tracer: Tracer, wsgi: tuple[KafkaLogWSGIMiddleware, _Captures]
) -> None:
    middleware, captures = wsgi
    with tracer.start_as_current_span("server") as span:
        _call(middleware, {"traceparent": HEADER})
        winner = f"{span.get_span_context().trace_id:032x}"
    _call(middleware, {"traceparent": HEADER})
    _call(middleware, {"traceparent": f"ff-{TRACE}-00f067aa0ba902b7-01"})
    entries = [build_entry(captured) for captured in captures.items]
    assert [entry.get("trace_id") for entry in entries] == [
        {"w3c": winner},
        {"w3c": TRACE},
        None,
    ]


# -- end to end: uvicorn → Kafka ---------------------------------------------------------


def _traced(app: Any, tracer: Tracer, spans: dict[str, int]) -> Any:
    """An outer ASGI middleware as OpenTelemetry's instrumentation is: a current span
    around the call (here only for requests with ``x-span``), its trace id noted."""

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers", ()))
        if scope["type"] != "http" or b"x-span" not in headers:
            await app(scope, receive, send)
            return
        with tracer.start_as_current_span("http") as span:
            spans[headers[b"x-request-n"].decode()] = span.get_span_context().trace_id
            await app(scope, receive, send)

    return outer


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_trace_ids_end_to_end(kafka_bootstrap: str, tracer: Tracer) -> None:
    topic = unique_topic("tracing")
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=topic,
        log_format="kong3",
        service={"name": "items"},
        producer_async_flush_timeout=50,
    )
    spans: dict[str, int] = {}
    middleware = KafkaLogMiddleware(items_app(), config)
    bad = f"ff-{TRACE}-00f067aa0ba902b7-01"
    # n % 3: 0 a span and a traceparent (the span wins), 1 a traceparent, 2 a bad one
    exchanges: dict[int, tuple[httpx.Request, httpx.Response]] = {}
    started = time.time()
    with serve(_traced(middleware, tracer, spans)) as base_url:
        port = int(base_url.rsplit(":", 1)[1])

        async def send_all() -> None:
            async with httpx.AsyncClient(base_url=base_url) as client:
                for n in range(9):
                    request = build_request(client, n)
                    request.headers["traceparent"] = bad if n % 3 == 2 else HEADER
                    if n % 3 == 0:
                        request.headers["x-span"] = "1"
                    response = await client.send(request)
                    exchanges[n] = (request, response)

        asyncio.run(send_all())
    ended = time.time()
    records = asyncio.run(consume(kafka_bootstrap, topic, 9, timeout=20, settle=1))
    assert len(records) == 9
    for record in records:
        entry = orjson.loads(record.value)
        n = int(entry["request"]["headers"]["x-request-n"])
        request, response = exchanges[n]
        expected = expected_entry(request, response, port, "kong3")
        if n % 3 == 0:
            expected["trace_id"] = {"w3c": f"{spans[str(n)]:032x}"}
            assert expected["trace_id"]["w3c"] != TRACE
        elif n % 3 == 1:
            expected["trace_id"] = {"w3c": TRACE}
        assert check_and_strip_variable_fields(entry, "kong3", started, ended) == expected
        assert list(entry)[-1] == ("trace_id" if n % 3 != 2 else "route")
