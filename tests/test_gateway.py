"""``gateway.upstream``: a proxying handler's upstream facts in Kong's fields.

Without a broker: the fields each layout gets from a reported call (times set by hand),
what the doors carry over. Against a real upstream (uvicorn on loopback) and the real
broker: the example gateway (``example_app/gateway.py``) under uvicorn, whole entries
compared, a refused first upstream included.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from example_app.gateway import METHODS, gateway
from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware, set_serialize_value
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import LogFormat
from kafka_log_middleware.gateway import UPSTREAM_KEY, Try, Upstream, upstream
from kafka_log_middleware.serializer import build_entry, encode_entry
from tests.kafka_helpers import consume, unique_topic
from tests.servers import serve
from tests.test_gunicorn import expected_entry as wire_entry
from tests.test_integration import check_and_strip_variable_fields

LAYOUTS: tuple[LogFormat, ...] = ("kong2", "kong3")
T0 = 1000.0
"""The request's ``perf_counter`` at entry in the hand-timed requests."""


def _request(layout: LogFormat, scope_extra: dict[str, Any] | None = None) -> CapturedRequest:
    """A hand-timed GET /orders?x=1 answered 200 at +30 ms, ended at +50 ms."""
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"x=1",
        "headers": [(b"host", b"gw.example")],
        "client": ("10.1.1.1", 5000),
        "server": ("10.0.0.1", 8000),
        **(scope_extra or {}),
    }
    request = CapturedRequest(
        scope, KafkaLogConfig(bootstrap_servers=("k:9092",), topic="t", log_format=layout)
    )
    request.started_at = 1_700_000_000.0
    request.t_start, request.t_response, request.t_end = T0, T0 + 0.030, T0 + 0.050
    request.status = 200
    return request


def _try(ip: str, port: int, sent: float, received: float, status: int, code: int = 0) -> Try:
    current = Try(ip, port)
    current.started_at = 1_700_000_000.0 + sent
    current.t_sent = T0 + sent
    current.t_received = T0 + received if received else 0.0
    current.status, current.code = status, code
    return current


def _reported(uri: str | None, *tries: Try) -> dict[str, Any]:
    record = Upstream()
    record.uri = uri
    record.tries.extend(tries)
    return {UPSTREAM_KEY: record}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_report_keeps_the_app_as_the_upstream(layout: LogFormat) -> None:
    entry = build_entry(_request(layout))
    assert entry["upstream_uri"] == "/orders?x=1"
    assert "tries" not in entry
    assert entry["latencies"]["proxy"] == 30


def test_kong3_one_try_gives_every_upstream_field() -> None:
    one = _try("10.0.0.5", 8080, sent=0.004, received=0.024, status=201)
    entry = build_entry(_request("kong3", _reported("/v1/orders?x=1", one)))
    assert entry["upstream_uri"] == "/v1/orders?x=1"
    assert entry["upstream_status"] == "201"
    assert entry["source"] == "upstream"
    assert entry["latencies"] == {"request": 50, "proxy": 20, "kong": 4, "receive": 26}
    assert entry["tries"] == [
        {"ip": "10.0.0.5", "port": 8080, "balancer_start": 1_700_000_000_004, "balancer_latency": 0}
    ]
    assert entry["response"]["status"] == 200  # what the client got is the gateway's


def test_kong2_has_no_upstream_status_and_kong_includes_receive() -> None:
    one = _try("10.0.0.5", 8080, sent=0.004, received=0.024, status=201)
    entry = build_entry(_request("kong2", _reported("/v1/orders?x=1", one)))
    assert "upstream_status" not in entry and "source" not in entry
    assert entry["latencies"] == {"request": 50, "proxy": 20, "kong": 4 + 26}
    assert len(entry["tries"]) == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tries_before_the_last_carry_their_failure(layout: LogFormat) -> None:
    refused = _try("10.0.0.5", 8080, sent=0.001, received=0, status=0, code=502)
    answered_502 = _try("10.0.0.6", 8080, sent=0.003, received=0.005, status=502)
    last = _try("10.0.0.7", 8080, sent=0.010, received=0.040, status=200)
    entry = build_entry(_request(layout, _reported("/v1", refused, answered_502, last)))
    assert [{k: t[k] for k in ("ip", "state", "code") if k in t} for t in entry["tries"]] == [
        {"ip": "10.0.0.5", "state": "failed", "code": 502},
        {"ip": "10.0.0.6", "state": "next", "code": 502},
        {"ip": "10.0.0.7"},
    ]
    assert entry["latencies"]["proxy"] == 30  # the last try's own time
    if layout == "kong3":
        assert entry["upstream_status"] == "502, 502, 200"  # as nginx lists them
        assert entry["latencies"]["kong"] == 10


def test_a_last_try_without_response_is_kong_s_answer() -> None:
    timed_out = _try("10.0.0.5", 8080, sent=0.002, received=0, status=0, code=504)
    entry = build_entry(_request("kong3", _reported(None, timed_out)))
    assert entry["upstream_status"] == "504"
    assert entry["source"] == "kong"
    assert entry["latencies"]["proxy"] == -1
    assert entry["latencies"]["receive"] == 0
    assert entry["upstream_uri"] == "/orders?x=1"  # no uri reported: the request's


@pytest.mark.parametrize(
    ("layout", "expected"), [("kong2", "/v1/orders"), ("kong3", "/v1/orders?x=1")]
)
def test_kong3_re_appends_the_query_to_an_upstream_uri_without_one(
    layout: LogFormat, expected: str
) -> None:
    entry = build_entry(_request(layout, _reported("/v1/orders")))
    assert entry["upstream_uri"] == expected


def test_an_exception_in_an_attempt_fails_it_and_goes_on() -> None:
    record = Upstream()
    with pytest.raises(OSError, match="refused"), record.attempt("10.0.0.5", 80):
        raise OSError("refused")
    with record.attempt("10.0.0.6", 80) as second:
        second.received(204)
    assert [(t.ip, t.outcome()) for t in record.tries] == [("10.0.0.5", 502), ("10.0.0.6", 204)]
    assert second.t_received >= second.t_sent > 0


def test_upstream_takes_a_request_a_scope_or_an_environ_and_is_made_once() -> None:
    scope: dict[str, Any] = {}
    first = upstream(scope, "/a")
    assert upstream(scope) is first and first.uri == "/a"
    environ: dict[str, Any] = {}
    assert upstream(environ, "/b").uri == "/b"
    with pytest.raises(TypeError, match=r"^upstream needs a request"):
        upstream(42)
    with pytest.raises(TypeError, match="uri must be a str, not bytes"):
        upstream(scope, b"/a")  # type: ignore[arg-type]


def test_entries_with_upstream_facts_encode_as_the_python_serializer_builds_them() -> None:
    one = _try("10.0.0.5", 8080, sent=0.004, received=0.024, status=201)
    request = _request("kong3", _reported("/v1", one))
    encoded, built = orjson.loads(encode_entry(request)), build_entry(request)
    encoded["request"].pop("id"), built["request"].pop("id")  # a fresh uuid each time
    assert encoded == built


def test_the_wsgi_door_carries_the_report_from_the_environ() -> None:
    from kafka_log_middleware.buffer import LogBuffer
    from kafka_log_middleware.wsgi import WSGIRequest

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "SERVER_PROTOCOL": "HTTP/1.1"}
    buffer = LogBuffer(10)
    request = WSGIRequest(
        environ,
        KafkaLogConfig(bootstrap_servers=("k:9092",), topic="t"),
        lambda *a: lambda b: None,
        buffer,
    )
    request.start_response("200 OK", [])
    with upstream(environ, "/v1/x").attempt("10.0.0.5", 80) as attempt:
        attempt.received(200)
    request.end()
    assert request.scope[UPSTREAM_KEY].uri == "/v1/x"
    assert build_entry(request)["upstream_uri"] == "/v1/x"


# -- a real upstream, the example gateway, the real broker ---------------------------------

UPSTREAM_DELAY = 0.05
"""The upstream waits this long before its response headers: the entry's proxy time."""


def upstream_app() -> Starlette:
    """The upstream service: echoes what reached it, after ``UPSTREAM_DELAY``, streamed."""

    async def echo(request: Request) -> Response:
        await asyncio.sleep(UPSTREAM_DELAY)
        seen = orjson.dumps(
            {
                "uri": request.url.path + "?" + request.url.query,
                "body": (await request.body()).decode(),
            }
        )

        async def chunks() -> AsyncIterator[bytes]:
            yield seen[:5]
            yield seen[5:]

        headers = {"x-upstream": "1", "content-length": str(len(seen))}
        response = StreamingResponse(chunks(), status_code=201, headers=headers)
        response.raw_headers.append((b"set-cookie", b"a=1"))
        response.raw_headers.append((b"set-cookie", b"b=2"))
        return response

    return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def expected_entry(
    request: httpx.Request, response: httpx.Response, ports: tuple[int, int, int], layout: str
) -> dict[str, Any]:
    """The gateway's entry for this exchange, from the bytes on the wire; ``ports``: the
    gateway's, the refusing upstream's, the answering upstream's."""
    port, refused, answering = ports
    route = {"name": "proxy", "paths": ["/{path:path}"], "methods": sorted(METHODS)}
    entry = wire_entry(request, response, port, layout, route)
    entry["tries"] = [
        {"ip": "127.0.0.1", "port": refused, "state": "failed", "code": 502},
        {"ip": "127.0.0.1", "port": answering},
    ]
    if layout == "kong3":
        entry["upstream_status"] = "502, 201"
    return entry


def strip_variable_fields(entry: dict[str, Any], layout: str, started: float, ended: float) -> None:
    """Check the fields that vary per run (times, ids, balancer starts), then remove them."""
    latencies = entry["latencies"]
    assert latencies["proxy"] >= UPSTREAM_DELAY * 1000  # the upstream's own wait, at least
    if layout == "kong3":
        parts = latencies["kong"] + latencies["proxy"] + latencies["receive"]
        assert parts <= latencies["request"] + 2
    check_and_strip_variable_fields(entry, layout, started, ended)
    for one in entry["tries"]:
        assert int(started * 1000) - 1 <= one.pop("balancer_start") <= int(ended * 1000) + 1
        assert one.pop("balancer_latency") == 0


@pytest.mark.kafka
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_example_gateway_logs_kong_s_upstream_facts(
    kafka_bootstrap: str, layout: LogFormat, refused_port: int
) -> None:
    topic = unique_topic(f"gateway-{layout}")
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=topic,
        log_format=layout,
        producer_async_flush_timeout=50,
    )
    exchanges = []
    started = time.time()
    with serve(upstream_app()) as upstream_url:
        upstream_port = int(upstream_url.rsplit(":", 1)[1])
        urls = [f"http://127.0.0.1:{refused_port}", upstream_url]
        app = KafkaLogMiddleware(gateway(urls), config)
        with serve(app) as base_url:
            port = int(base_url.rsplit(":", 1)[1])
            with httpx.Client(base_url=base_url) as client:
                for n in range(3):
                    request = client.build_request(
                        "POST", f"/orders/{n}?n={n}", content=b"x" * n, headers={"x-n": str(n)}
                    )
                    exchanges.append((request, client.send(request)))
    ended = time.time()
    for request, response in exchanges:
        assert response.status_code == 201
        assert orjson.loads(response.content)["uri"] == request.url.raw_path.decode()
        assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    records = asyncio.run(consume(kafka_bootstrap, topic, len(exchanges)))
    entries = {
        orjson.loads(r.value)["request"]["headers"]["x-n"]: orjson.loads(r.value) for r in records
    }
    assert len(records) == len(exchanges) == len(entries)
    for request, response in exchanges:
        entry = entries[request.headers["x-n"]]
        strip_variable_fields(entry, layout, started, ended)
        ports = (port, refused_port, upstream_port)
        assert entry == expected_entry(request, response, ports, layout)
    assert app.stats()["delivered"] == len(exchanges)


def test_set_serialize_value_and_the_report_meet_in_one_entry() -> None:
    scope: dict[str, Any] = {}
    with upstream(scope, "/v1").attempt("10.0.0.5", 80) as attempt:
        attempt.received(200)
    set_serialize_value(scope, "upstream_uri", "/edited")  # edits win, as in Kong
    request = _request("kong3", scope)
    assert build_entry(request)["upstream_uri"] == "/edited"
