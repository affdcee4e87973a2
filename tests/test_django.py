"""Django: the ``settings.MIDDLEWARE`` entry (``kafka_log_middleware.django``), in-process
without a broker (sync and async handlers, settings errors, routes, hooks, streaming,
an outer door), and a Django project under real servers logged to the real broker:
gunicorn (WSGI), uvicorn (ASGI), and the ASGI door around Django's ASGI handler."""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any, Literal

import httpx
import orjson
import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware, set_serialize_value  # noqa: E402
from kafka_log_middleware.django import KafkaLogMiddleware as DjangoMiddleware  # noqa: E402
from kafka_log_middleware.django import authenticated_user, config_from_settings  # noqa: E402
from kafka_log_middleware.gateway import upstream  # noqa: E402
from kafka_log_middleware.security import OAuthBearer  # noqa: E402
from kafka_log_middleware.wsgi import KafkaLogWSGIMiddleware  # noqa: E402
from tests import django_project  # noqa: E402
from tests import test_bodies as bodies  # noqa: E402
from tests.kafka_helpers import consume, unique_topic  # noqa: E402
from tests.oauth_server import logger_token  # noqa: E402
from tests.polling import wait_until  # noqa: E402
from tests.scripted import Scripted  # noqa: E402
from tests.servers import free_port, gunicorn, serve, server_process  # noqa: E402
from tests.test_gunicorn import check_entries, send  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SCRIPTED = {  # nothing connects: scripted producers answer
    "bootstrap_servers": "127.0.0.1:9",
    "topic": "django-logs",
    "producer_async_flush_timeout": 1,
    "producer_request_retries_backoff_timeout": 0,
    "service": {"name": "django-project"},
}
HELLO = {"name": "hello", "paths": ["/hello/<str:name>"]}
ITEMS = {"name": "items", "paths": ["/items/"], "methods": ["GET", "HEAD", "OPTIONS", "POST"]}


def streamed(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter([b"ab", b"cde"]))


def signed_in(request: HttpRequest) -> HttpResponse:
    request.user = SimpleNamespace(  # as auth would set it
        pk=7, is_authenticated=True, get_username=lambda: "ann"
    )
    return HttpResponse(b"hi")


def edited(request: HttpRequest) -> HttpResponse:
    set_serialize_value(request, "request.order_id", 42)
    with upstream(request, "/v1/orders").attempt("10.0.0.5", 8080) as attempt:
        attempt.received(200)
    return HttpResponse(b"ok")


def body_of(request: HttpRequest) -> bytes:
    """The request body; a chunked WSGI one (Django reads none) from wsgi.input."""
    stream = request.META.get("wsgi.input")
    if stream is not None and "CONTENT_LENGTH" not in request.META:
        return bytes(stream.read())
    return bytes(request.body)


def chunks_for(request: HttpRequest, chunks: list[bytes]) -> Any:
    """``chunks`` as the handler wants them (no warning): sync under WSGI, async under ASGI."""
    if "wsgi.input" in request.META:
        return iter(chunks)

    async def each() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return each()


def echo_body(request: HttpRequest) -> HttpResponse:
    return HttpResponse(body_of(request), content_type=request.content_type)


def stream_body(request: HttpRequest) -> StreamingHttpResponse:
    parts = [body_of(request), *(f"part{n};".encode() for n in range(3))]
    return StreamingHttpResponse(chunks_for(request, parts), content_type="text/plain")


def big_body(request: HttpRequest) -> StreamingHttpResponse:
    chunk = b"y" * 1024 * 1024
    return StreamingHttpResponse(chunks_for(request, [chunk] * 50), content_type="text/plain")


urlpatterns = [
    *django_project.urlpatterns,
    *(path(f"{name}", echo_body) for name in ("a-json", "b-text", "c-binary", "d-image")),
    path("e-stream", stream_body),
    path("f-big", big_body),
    path("stream/", streamed, name="stream"),
    path("me/", signed_in, name="me"),
    path("edited/", edited, name="edited"),
]


@pytest.fixture(scope="module", autouse=True)
def configured() -> None:
    if not settings.configured:
        settings.configure(**{**django_project.settings_dict(), "ROOT_URLCONF": __name__})
        django.setup()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with Scripted().installed() as maker:
        yield maker


def middleware_of(handler: Any) -> DjangoMiddleware:
    """The ``KafkaLogMiddleware`` a handler (or a test client's handler) loaded."""
    node = handler._middleware_chain
    while not isinstance(node, DjangoMiddleware):
        node = getattr(node, "__wrapped__", None) or node.get_response
    return node


def published(scripted: Scripted, middleware: Any, count: int) -> list[Any]:
    wait_until(lambda: middleware.stats()["delivered"] >= count, timeout=20)
    entries = [orjson.loads(m[1]) for h in scripted.handovers() for m in h.messages]
    assert len(entries) == count
    return sorted(entries, key=lambda e: e["request"]["uri"])


# -- the MIDDLEWARE entry, in-process ------------------------------------------------------


def test_the_middleware_logs_routes_from_resolver_match(scripted: Scripted) -> None:
    """Function and class-based views: the view name, /pattern, a CBV's methods."""
    with override_settings(KAFKA_LOG=SCRIPTED):
        client = Client()
        assert client.get("/hello/ann?x=1").json() == {"hello": "ann"}
        assert client.post("/items/", b"abc", content_type="text/plain").status_code == 201
        assert client.get("/nowhere").status_code == 404
        middleware = middleware_of(client.handler)
        hello, items, missing = published(scripted, middleware, 3)
        middleware.close()
    assert hello["route"] == HELLO
    assert hello["request"]["querystring"] == {"x": "1"}
    assert hello["response"]["status"] == 200
    assert hello["service"] == {"name": "django-project"}
    assert items["route"] == ITEMS and items["response"]["status"] == 201
    assert items["request"]["method"] == "POST"
    assert missing["response"]["status"] == 404 and "route" not in missing


def test_the_middleware_logs_the_span_or_traceparent_trace_id(scripted: Scripted) -> None:
    tracer = TracerProvider().get_tracer("tests")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace}-00f067aa0ba902b7-01"
    with override_settings(KAFKA_LOG={**SCRIPTED, "log_format": "kong3"}):
        client = Client()
        with tracer.start_as_current_span("http") as span:
            client.get("/hello/a", HTTP_TRACEPARENT=traceparent)
        client.get("/hello/b", HTTP_TRACEPARENT=traceparent)
        client.get("/hello/c", HTTP_TRACEPARENT="ff" + traceparent[2:])
        middleware = middleware_of(client.handler)
        a, b, c = published(scripted, middleware, 3)
        middleware.close()
    assert a["trace_id"] == {"w3c": f"{span.get_span_context().trace_id:032x}"}
    assert b["trace_id"] == {"w3c": trace}
    assert "trace_id" not in c


async def test_the_middleware_is_async_capable(
    scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    """Under Django's async handler the middleware runs as a coroutine; under uvicorn it
    says, once, that only the ASGI door can flush at shutdown there."""
    assert "uvicorn" in sys.modules  # the test servers import it
    with override_settings(KAFKA_LOG=SCRIPTED):
        client = AsyncClient()
        response = await client.get("/hello/bob")
        assert response.status_code == 200
        assert (await client.get("/items/")).status_code == 200
        middleware = middleware_of(client.handler)
        assert middleware.is_async
        entry, _ = await asyncio.to_thread(published, scripted, middleware, 2)
        middleware.close()
    assert entry["route"] == HELLO
    assert entry["request"]["uri"] == "/hello/bob"
    said = [r for r in caplog.records if "under uvicorn" in r.getMessage()]
    assert len(said) == 1 and "KafkaLogMiddleware(get_asgi_application())" in said[0].getMessage()


@pytest.mark.parametrize("handler", ["sync", "async"])
async def test_what_views_report_reaches_the_entry(scripted: Scripted, handler: str) -> None:
    """set_serialize_value() and gateway.upstream() on Django's request (META under
    WSGI, the scope under ASGI) reach the entry, though the middleware keeps a copy."""
    with override_settings(KAFKA_LOG={**SCRIPTED, "log_format": "kong3"}):
        if handler == "sync":
            client: Any = Client()
            await asyncio.to_thread(client.get, "/edited/")
        else:
            client = AsyncClient()
            await client.get("/edited/")
        middleware = middleware_of(client.handler)
        (entry,) = await asyncio.to_thread(published, scripted, middleware, 1)
        middleware.close()
    assert entry["request"]["order_id"] == 42
    assert entry["upstream_uri"] == "/v1/orders"
    assert entry["upstream_status"] == "200"
    assert [t["ip"] for t in entry["tries"]] == ["10.0.0.5"]


def test_a_streamed_response_is_counted_when_closed(scripted: Scripted) -> None:
    with override_settings(KAFKA_LOG=SCRIPTED):
        client = Client()
        response = client.get("/stream/")
        assert b"".join(response.streaming_content) == b"abcde"
        response.close()
        middleware = middleware_of(client.handler)
        (entry,) = published(scripted, middleware, 1)
        middleware.close()
    assert entry["response"]["size"] == str(len("HTTP/1.1 200 OK\r\n") + 40 + 2 + 5)


def test_hooks_as_dotted_paths_and_the_authenticated_user_as_consumer(
    scripted: Scripted,
) -> None:
    settings_value = {**SCRIPTED, "consumer": "kafka_log_middleware.django.authenticated_user"}
    with override_settings(KAFKA_LOG=settings_value):
        client = Client()
        client.get("/me/")
        client.get("/hello/x")
        middleware = middleware_of(client.handler)
        assert middleware._background.pipeline.config.consumer is authenticated_user
        hello, me = published(scripted, middleware, 2)
        middleware.close()
    assert me["consumer"] == {"id": "7", "username": "ann"}
    assert "consumer" not in hello  # nobody signed in


def test_secured_kafka_settings_with_a_token_provider_as_a_dotted_path() -> None:
    """``authentication`` and ``security`` as dicts; the OAUTHBEARER provider imported."""
    value = {
        **SCRIPTED,
        "authentication": {
            "mechanism": "OAUTHBEARER",
            "token_provider": "tests.oauth_server.logger_token",
        },
        "security": {"ssl": True, "ssl_verify": False},
    }
    with override_settings(KAFKA_LOG=value):
        config = config_from_settings()
    assert config.sasl == OAuthBearer(token_provider=logger_token)
    assert config.aiokafka_options()["security_protocol"] == "SASL_SSL"


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (
            {**SCRIPTED, "authentication": {"mechanism": "PLAIN", "user": "u"}},
            "settings.KAFKA_LOG: authentication.password is required for PLAIN",
        ),
        ({**SCRIPTED, "topik": "x"}, "'topik' is no KafkaLogConfig field (did you mean 'topic'?)"),
        ({**SCRIPTED, "topic": "a b"}, "settings.KAFKA_LOG: topic 'a b' is not a legal"),
        ({**SCRIPTED, "consumer": "no.such.hook"}, "consumer: cannot import 'no.such.hook'"),
        ("topic", "settings.KAFKA_LOG must be a dict"),
    ],
)
def test_bad_settings_are_improperly_configured_at_startup(value: Any, named: str) -> None:
    """Django loads its middleware when the handler is made: that is when it fails."""
    with override_settings(KAFKA_LOG=value), pytest.raises(ImproperlyConfigured) as raised:
        WSGIHandler()
    assert named in str(raised.value)


def test_inside_the_wsgi_door_the_middleware_only_adds_the_route(scripted: Scripted) -> None:
    """Wrapped get_wsgi_application() and the MIDDLEWARE entry: one entry, with route."""
    with override_settings(KAFKA_LOG=SCRIPTED):
        app = KafkaLogWSGIMiddleware(WSGIHandler(), KafkaLogConfig(**SCRIPTED))  # type: ignore[arg-type]
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/hello/door",
            "QUERY_STRING": "",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "testserver",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
        }
        statuses: list[str] = []
        result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))  # type: ignore[arg-type, return-value]
        b"".join(result)
        result.close()  # type: ignore[attr-defined]
        (entry,) = published(scripted, app, 1)
        app.close()
    assert statuses == ["200 OK"]
    assert entry["route"] == HELLO


def test_a_path_the_wsgi_door_excludes_is_not_logged_by_the_middleware_either(
    scripted: Scripted,
) -> None:
    """The door marks what it excludes: the MIDDLEWARE entry inside does not log it."""
    with override_settings(KAFKA_LOG=SCRIPTED):
        config = KafkaLogConfig(**SCRIPTED, exclude_paths=["/hello/*"])  # type: ignore[arg-type]
        app = KafkaLogWSGIMiddleware(WSGIHandler(), config)
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/hello/door",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
        }
        statuses: list[str] = []
        result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))  # type: ignore[arg-type, return-value]
        assert b"".join(result) == b'{"hello": "door"}'
        inner = middleware_of(app.app)
        app.close()
    assert statuses == ["200 OK"]
    assert app.stats()["skipped_exclude_paths"] == 1 and app.stats()["enqueued"] == 0
    assert inner.stats()["enqueued"] == inner.stats()["skipped"] == 0
    assert scripted.handovers() == []


def no_posts(request: Any) -> bool:
    """A ``should_log`` hook, given to ``KAFKA_LOG`` as a dotted path."""
    return bool(request.scope["method"] != "POST")


def test_the_middleware_filters_paths_and_asks_should_log(kafka_bootstrap: str) -> None:
    """exclude_paths against ``request.path``, should_log imported from its dotted path;
    what is logged is the entry an unfiltered twin logs."""
    common = {**SCRIPTED, "bootstrap_servers": kafka_bootstrap, "producer_async_flush_timeout": 20}
    topic, twin_topic = unique_topic("django-filters"), unique_topic("django-filters-twin")
    requests = [
        ("get", "/hello/ann"),
        ("get", "/hello/bob"),
        ("post", "/items/"),
        ("get", "/items/"),
    ]
    middlewares = []
    filters = {"exclude_paths": ["/hello/ann"], "should_log": f"{__name__}.no_posts"}
    for settings_ in ({**common, "topic": topic, **filters}, {**common, "topic": twin_topic}):
        with override_settings(KAFKA_LOG=settings_):
            client = Client()
            for n, (method, url) in enumerate(requests):
                response = getattr(client, method)(url, headers={"x-n": str(n)})
                assert response.status_code in (200, 201)
            middlewares.append(middleware_of(client.handler))
    for middleware in middlewares:
        middleware.close()
    twins = {
        orjson.loads(r.value)["request"]["headers"]["x-n"]: orjson.loads(r.value)
        for r in asyncio.run(consume(kafka_bootstrap, twin_topic, 4))
    }
    records = asyncio.run(consume(kafka_bootstrap, topic, 2, timeout=10, settle=1))
    entries = {
        orjson.loads(r.value)["request"]["headers"]["x-n"]: orjson.loads(r.value) for r in records
    }
    assert set(entries) == {"1", "3"}
    for n, entry in entries.items():
        for each in (entry, twins[n]):
            del each["started_at"], each["latencies"]
        assert entry == twins[n]
    stats = middlewares[0].stats()
    assert (stats["enqueued"], stats["delivered"]) == (3, 2), stats
    assert (stats["skipped_exclude_paths"], stats["skipped_should_log"]) == (1, 1), stats


# -- real servers, the real broker ----------------------------------------------------------


def project_env(bootstrap: str, topic: str, log_format: str = "kong2") -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.django_project",
        "KAFKA_LOG_TEST_BOOTSTRAP": bootstrap,
        "KAFKA_LOG_TEST_TOPIC": topic,
        "KAFKA_LOG_TEST_FORMAT": log_format,
    }


def mixed_request(client: httpx.AsyncClient, n: int) -> httpx.Request:
    if n % 3 == 2:
        return client.build_request("POST", "/items/", params={"n": n}, content=b"x" * n)
    return client.build_request("GET", f"/hello/d{n}?n={n}")


def route_of(request: httpx.Request) -> dict[str, Any]:
    return ITEMS if request.url.path == "/items/" else HELLO


@pytest.mark.kafka
@pytest.mark.parametrize("log_format", ["kong2", "kong3"])
def test_a_django_project_under_gunicorn_logs_through_its_middleware_setting(
    kafka_bootstrap: str, log_format: str
) -> None:
    topic = unique_topic(f"django-gunicorn-{log_format}")
    env = project_env(kafka_bootstrap, topic, log_format)
    started = time.time()
    app = "tests.django_project:wsgi_application"
    with gunicorn(app, "--preload", "-w", "2", env=env) as (base_url, _):
        exchanges = send(base_url, 90, connections=8, build=mixed_request)
    entries = check_entries(
        kafka_bootstrap, topic, exchanges, base_url, log_format, started, route_of,
        service={"name": "django-project"},
    )  # fmt: skip
    assert len({e["response"]["headers"]["x-pid"] for e in entries}) == 2


@pytest.mark.kafka
def test_a_django_project_under_uvicorn_logs_through_its_middleware_setting(
    kafka_bootstrap: str,
) -> None:
    """Django's ASGI handler: the middleware runs as a coroutine."""
    topic = unique_topic("django-uvicorn")
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "tests.django_project:asgi_application",
        "--port", str(port), "--lifespan", "off", "--log-level", "warning",
    ]  # fmt: skip
    started = time.time()
    with server_process(command, port, project_env(kafka_bootstrap, topic)) as (base_url, uv):
        exchanges = send(base_url, 60, connections=8, build=mixed_request)
        uv.terminate()
        # uvicorn stops gracefully, then ends itself with the signal it got (-15).
        assert uv.wait(60) in (0, -15)
    check_entries(
        kafka_bootstrap, topic, exchanges, base_url, "kong2", started, route_of,
        service={"name": "django-project"},
    )  # fmt: skip


@pytest.mark.kafka
def test_the_asgi_door_around_django_logs_once_with_the_route(kafka_bootstrap: str) -> None:
    """Django's ASGI handler (no lifespan) wrapped in the ASGI door, with the MIDDLEWARE
    entry too: the door logs, the middleware adds the route name."""
    from django.core.asgi import get_asgi_application

    topic = unique_topic("django-asgi-door")
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,), topic=topic, producer_async_flush_timeout=20
    )
    middleware = KafkaLogMiddleware(get_asgi_application(), config)
    with serve(middleware, lifespan="on") as base_url:
        response = httpx.get(f"{base_url}/hello/django?x=1")
        assert response.status_code == 200 and response.json() == {"hello": "django"}
        assert httpx.get(f"{base_url}/missing").status_code == 404
    # The shutdown the middleware spoke for Django flushed both entries.
    assert middleware.stats()["delivered"] == 2
    records = asyncio.run(consume(kafka_bootstrap, topic, 3, timeout=5))
    entries = sorted((orjson.loads(r.value) for r in records), key=lambda e: e["request"]["uri"])
    assert [e["response"]["status"] for e in entries] == [200, 404]
    assert entries[0]["request"]["uri"] == "/hello/django?x=1"
    assert entries[0]["route"] == HELLO
    assert "route" not in entries[1]


# -- bodies (include_request_body / include_response_body) on every Django door -----------


@pytest.mark.kafka
@pytest.mark.parametrize("door", ["middleware", "wsgi_door"])
def test_bodies_under_wsgi(kafka_bootstrap: str, door: str) -> None:
    """The MIDDLEWARE entry alone, and the WSGI door around Django: the same bodies."""
    topic = unique_topic(f"django-bodies-{door}")
    settings_ = {"bootstrap_servers": kafka_bootstrap, "topic": topic, **bodies.BODIES}
    with override_settings(KAFKA_LOG=settings_):
        handler = WSGIHandler()
        app: Any = handler
        if door == "wsgi_door":
            app = KafkaLogWSGIMiddleware(handler, KafkaLogConfig(**settings_))
        transport = httpx.WSGITransport(app=app)
        with httpx.Client(transport=transport, base_url="http://django", timeout=60) as client:
            bodies.send_all(client)
        (app if door == "wsgi_door" else middleware_of(handler)).close()
    bodies.check_entries(bodies.consumed(kafka_bootstrap, topic, 6), 524288)


@pytest.mark.kafka
@pytest.mark.parametrize("door", ["middleware", "asgi_door"])
def test_bodies_under_asgi(kafka_bootstrap: str, door: str) -> None:
    """Django's ASGI handler under uvicorn: its MIDDLEWARE entry, and the ASGI door."""
    from django.core.handlers.asgi import ASGIHandler

    topic = unique_topic(f"django-bodies-{door}")
    settings_ = {"bootstrap_servers": kafka_bootstrap, "topic": topic, **bodies.BODIES}
    with override_settings(KAFKA_LOG=settings_):
        handler = ASGIHandler()
        app: Any = handler
        if door == "asgi_door":
            app = KafkaLogMiddleware(handler, KafkaLogConfig(**settings_))
        lifespan: Literal["on", "off"] = "on" if door == "asgi_door" else "off"
        with serve(app, lifespan=lifespan) as url, httpx.Client(base_url=url, timeout=60) as client:
            bodies.send_all(client)
        if door == "middleware":
            middleware_of(handler).close()
    bodies.check_entries(bodies.consumed(kafka_bootstrap, topic, 6), 524288)
