"""Filters: ``exclude_paths`` (its grammar, its refusals, from the environment, the path it
is matched against) and ``should_log``; against the real broker through the ASGI door and
the Flask extension over the WSGI door, each entry of a logged request compared whole
with the entry an unfiltered twin middleware gives for the same request."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kafka_log_middleware import (
    InvalidConfig,
    KafkaLogConfig,
    KafkaLogMiddleware,
    KafkaLogWSGIMiddleware,
    _log,
)
from kafka_log_middleware.capture import DOOR_KEY, CapturedRequest
from kafka_log_middleware.environ import request_path
from kafka_log_middleware.filters import EXCLUDED, path_test
from kafka_log_middleware.flask import KafkaLog
from kafka_log_middleware.types import Message, Receive, Scope, Send
from tests.asgi_driver import http_scope, lifespan, request
from tests.kafka_helpers import consume, unique_topic
from tests.scripted import Rig, Scripted, invariant_problems, request_number
from tests.scripted import config as scripted_config
from tests.test_integration import check_and_strip_variable_fields

pytestmark = pytest.mark.timeout(120)

PATTERNS = ("/health", "/static/**", "/v*/status", "/metrics*")
MATCHES = {
    "/health": True,
    "/health/": False,  # exact means exact
    "/healthz": False,
    "/Health": False,  # case-sensitive
    "/static/": True,
    "/static/app.js": True,
    "/static/css/site.css": True,
    "/static": False,  # below /static/, not /static itself
    "/staticx/a": False,
    "/v1/status": True,
    "/v/status": True,
    "/v1/x/status": False,  # * stays within one segment
    "/v1/status/x": False,
    "/metrics": True,
    "/metrics-old": True,
    "/metrics/x": False,
    "/": False,
    "": False,
}


def made(**fields: Any) -> KafkaLogConfig:
    return KafkaLogConfig(bootstrap_servers=("k:9092",), topic="t", **fields)


@pytest.mark.parametrize(("path", "excluded"), MATCHES.items())
def test_the_grammar(path: str, excluded: bool) -> None:
    test = path_test(PATTERNS)
    assert test is not None and test(path) is excluded


def test_exact_paths_compile_to_a_set_lookup_and_none_to_nothing() -> None:
    config = made(exclude_paths=["/a", "/b"])
    test = config.exclude_paths.test  # type: ignore[attr-defined]
    assert test.__self__ == frozenset({"/a", "/b"})
    assert path_test(()) is None
    assert config.exclude_paths == ("/a", "/b") and "exclude_paths=('/a', '/b')" in repr(config)
    assert config == config.replace(exclude_paths=("/a", "/b", "/a"))  # duplicates go
    rebuilt = made(exclude_paths=("/a", "/b"))
    assert hash(rebuilt) == hash(config)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/health", "exclude_paths must be a list of paths, not str"),
        (["health"], "exclude_paths: 'health' must start with '/' (a path, e.g. '/health')"),
        ([""], "exclude_paths must not be empty"),
        ([5], "exclude_paths must be a string, not int"),
        (["/x?a=1"], "exclude_paths: '/x?a=1': paths are matched without the query string"),
        (["/x#top"], "exclude_paths: '/x#top': paths are matched without the query string"),
        (["/a/**/b"], "exclude_paths: '/a/**/b': '**' only as the last segment"),
        (["/a**"], "exclude_paths: '/a**': '**' only as the last segment"),
        (["/a/***"], "exclude_paths: '/a/***': '**' only as the last segment"),
    ],
)
def test_bad_patterns_are_refused_naming_the_field(value: Any, message: str) -> None:
    with pytest.raises(InvalidConfig, match="^" + re.escape(message)):
        made(exclude_paths=value)


async def _async_hook(request: CapturedRequest) -> bool:
    return True


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (True, "should_log must be a function or None, not bool"),
        (_async_hook, "should_log must be a plain function"),
        (lambda a, b: True, "should_log must take one argument"),
    ],
)
def test_bad_should_log_hooks_are_refused(hook: Any, message: str) -> None:
    with pytest.raises(InvalidConfig, match="^" + re.escape(message)) as refused:
        made(should_log=hook)
    assert refused.value.field == "should_log"


def test_from_env(caplog: pytest.LogCaptureFixture) -> None:
    base = {"KAFKA_LOG_BOOTSTRAP_SERVERS": "k:9092", "KAFKA_LOG_TOPIC": "t"}

    def paths(raw: str) -> tuple[str, ...]:
        env = {**base, "KAFKA_LOG_EXCLUDE_PATHS": raw}
        return tuple(KafkaLogConfig.from_env(environ=env).exclude_paths)

    assert paths(" /health, /static/** ,,") == ("/health", "/static/**")
    assert paths('["/a,b", "/c"]') == ("/a,b", "/c")  # JSON, for a path with a comma
    assert paths("") == ()
    for raw, message in [
        ("[1]", "KAFKA_LOG_EXCLUDE_PATHS: expected paths separated by commas, or a JSON list"),
        ("[/x", "KAFKA_LOG_EXCLUDE_PATHS: expected paths separated by commas, or a JSON list"),
        ("health", "KAFKA_LOG_EXCLUDE_PATHS: exclude_paths: 'health' must start with '/'"),
    ]:
        with pytest.raises(InvalidConfig, match="^" + re.escape(message)):
            paths(raw)
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        env = {**base, "KAFKA_LOG_SHOULD_LOG": "myapp.only_errors"}
        assert KafkaLogConfig.from_env(environ=env).should_log is None
    assert "KAFKA_LOG_SHOULD_LOG is ignored: should_log is a function" in caplog.text


def test_the_wsgi_path_is_the_whole_path_decoded_as_asgi_decodes_it() -> None:
    assert request_path({"SCRIPT_NAME": "/api", "PATH_INFO": "/health"}) == "/api/health"
    assert request_path({"PATH_INFO": "/caf\xc3\xa9"}) == "/café"  # PEP 3333: bytes as latin-1
    assert request_path({}) == "/"


# -- against the real broker ----------------------------------------------------------------


def by_n(records: list[Any], started: float, ended: float) -> dict[int, dict[str, Any]]:
    """The entries by their ``x-n`` request header, their times checked and removed."""
    entries: dict[int, dict[str, Any]] = {}
    for record in records:
        entry = check_and_strip_variable_fields(orjson.loads(record.value), "kong2", started, ended)
        n = int(entry["request"]["headers"]["x-n"])
        assert n not in entries
        entries[n] = entry
    return entries


async def text(request: Request) -> PlainTextResponse:
    status = 500 if request.url.path == "/boom" else 200
    return PlainTextResponse(request.url.path, status_code=status)


def starlette_app() -> Starlette:
    paths = ("/health", "/static/{rest:path}", "/v1/status", "/items/{n}", "/boom", "/healthz")
    return Starlette(routes=[Route(path, text) for path in paths])


ASGI_REQUESTS = [  # path, query, excluded
    ("/health", b"", True),
    ("/health", b"full=1", True),  # the query plays no part
    ("/items/1", b"", False),
    ("/static/app.js", b"", True),
    ("/static/css/site.css", b"", True),
    ("/static", b"", False),
    ("/v1/status", b"", True),
    ("/healthz", b"", False),
    ("/boom", b"", False),
    ("/items/2", b"a=1", False),
]


async def test_excluded_paths_through_the_asgi_door_are_served_and_never_logged(
    kafka_bootstrap: str,
) -> None:
    fields: dict[str, Any] = {
        "bootstrap_servers": (kafka_bootstrap,),
        "producer_async_flush_timeout": 20,
    }
    config = KafkaLogConfig(topic=unique_topic("filters"), exclude_paths=PATTERNS, **fields)
    twin_config = KafkaLogConfig(topic=unique_topic("filters-twin"), **fields)
    filtered = KafkaLogMiddleware(starlette_app(), config)
    twin = KafkaLogMiddleware(starlette_app(), twin_config)
    started = time.time()
    async with lifespan(filtered), lifespan(twin):
        for n, (path, query, _) in enumerate(ASGI_REQUESTS):
            headers = [(b"host", b"testserver"), (b"x-n", str(n).encode())]
            served = [
                await request(middleware, http_scope(path, query=query, headers=headers))
                for middleware in (filtered, twin)
            ]
            assert [(r.status, r.body) for r in served] == [(served[1].status, served[1].body)] * 2
    ended = time.time()
    logged = {n for n, (_, _, excluded) in enumerate(ASGI_REQUESTS) if not excluded}
    twins = by_n(
        await consume(kafka_bootstrap, twin_config.topic, len(ASGI_REQUESTS)), started, ended
    )
    records = await consume(kafka_bootstrap, config.topic, len(logged), timeout=10, settle=1)
    entries = by_n(records, started, ended)
    assert set(entries) == logged
    assert entries == {n: twins[n] for n in logged}  # whole entries, as if unfiltered
    stats = filtered.stats()
    excluded = len(ASGI_REQUESTS) - len(logged)
    assert (stats["enqueued"], stats["delivered"], stats["dropped"]) == (
        len(logged),
        len(logged),
        0,
    )
    assert (stats["skipped"], stats["skipped_exclude_paths"]) == (excluded, excluded)
    assert stats["skipped_should_log"] == 0 and not invariant_problems(stats), stats


def only_errors(request: CapturedRequest) -> bool:
    if request.scope["path"] == "/raise":
        raise RuntimeError("a bug in the hook")
    return request.status >= 500


async def test_should_log_decides_in_the_background_and_a_raising_hook_logs(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=unique_topic("should-log"),
        producer_async_flush_timeout=20,
        should_log=only_errors,
    )
    app = Starlette(routes=[Route(p, text) for p in ("/items/{n}", "/boom", "/raise")])
    middleware = KafkaLogMiddleware(app, config)
    paths = ["/items/1", "/boom", "/items/2", "/raise", "/boom", "/raise", "/items/3"]
    _log.reset()
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        async with lifespan(middleware):
            for n, path in enumerate(paths):
                headers = [(b"host", b"testserver"), (b"x-n", str(n).encode())]
                await request(middleware, http_scope(path, headers=headers))
    records = await consume(kafka_bootstrap, config.topic, 4, timeout=10, settle=1)
    logged = sorted(
        (int(e["request"]["headers"]["x-n"]), e["request"]["uri"], e["response"]["status"])
        for e in map(orjson.loads, (r.value for r in records))
    )
    assert logged == [(1, "/boom", 500), (3, "/raise", 200), (4, "/boom", 500), (5, "/raise", 200)]
    raised = [r.getMessage() for r in caplog.records if "should_log" in r.getMessage()]
    assert raised == ["should_log hook raised RuntimeError; entry logged"]  # once per 10 s
    stats = middleware.stats()
    assert (stats["enqueued"], stats["delivered"], stats["pending"]) == (7, 4, 0)
    assert (stats["skipped"], stats["skipped_should_log"], stats["dropped"]) == (3, 3, 0)
    assert not invariant_problems(stats), stats
    _log.reset()


def flask_app(**fields: Any) -> Flask:
    app = Flask("filters")

    @app.get("/health")
    @app.get("/metrics")
    @app.get("/items/<n>")
    def item(n: str = "") -> tuple[str, int]:
        return "ok", 200

    @app.get("/missing")
    def missing() -> tuple[str, int]:
        return "no", 404

    @app.get("/boom")
    def boom() -> tuple[str, int]:
        return "boom", 500

    KafkaLog(app, **fields)
    return app


FLASK_REQUESTS = [  # mount point (SCRIPT_NAME), path, logged
    ("", "/health", False),  # excluded
    ("", "/items/1", True),
    ("/api", "/health", True),  # the whole path is /api/health
    ("/api", "/metrics", False),  # excluded: /api/metrics
    ("", "/metrics", True),
    ("", "/missing", False),  # should_log: no 4xx
    ("", "/boom", True),
]


def test_the_flask_extension_filters_through_the_wsgi_door(kafka_bootstrap: str) -> None:
    fields: dict[str, Any] = {
        "bootstrap_servers": (kafka_bootstrap,),
        "producer_async_flush_timeout": 20,
    }
    topic, twin_topic = unique_topic("flask-filters"), unique_topic("flask-filters-twin")
    app = flask_app(
        topic=topic,
        exclude_paths=("/health", "/api/metrics"),
        should_log=lambda request: not 400 <= request.status < 500,
        **fields,
    )
    twin = flask_app(topic=twin_topic, **fields)
    started = time.time()
    for n, (mount, path, _) in enumerate(FLASK_REQUESTS):
        for each in (app, twin):
            base_url = f"http://localhost{mount}/"
            each.test_client().get(path, base_url=base_url, headers={"x-n": str(n)}).close()
    for each in (app, twin):
        KafkaLog.middleware(each).close()
    ended = time.time()
    logged = {n for n, (_, _, kept) in enumerate(FLASK_REQUESTS) if kept}
    count = len(FLASK_REQUESTS)
    twins = by_n(asyncio.run(consume(kafka_bootstrap, twin_topic, count)), started, ended)
    records = asyncio.run(consume(kafka_bootstrap, topic, len(logged), timeout=10, settle=1))
    entries = by_n(records, started, ended)
    assert set(entries) == logged
    assert entries == {n: twins[n] for n in logged}
    stats = KafkaLog.middleware(app).stats()
    assert (stats["enqueued"], stats["delivered"]) == (count - 2, len(logged)), stats
    assert (stats["skipped_exclude_paths"], stats["skipped_should_log"]) == (2, 1), stats
    assert stats["skipped"] == 3 and not invariant_problems(stats), stats


# -- the doors serve an excluded request untouched; the publisher asks should_log first -----


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with Scripted().installed() as maker:
        yield maker


async def test_the_asgi_door_hands_an_excluded_request_the_servers_own_callables(
    scripted: Scripted,
) -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan: the door speaks it
        seen.append((scope.get(DOOR_KEY), receive, send))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = KafkaLogMiddleware(app, scripted_config(exclude_paths=["/health"]))

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    async with lifespan(middleware):
        await middleware(http_scope("/health"), receive, send)
        await middleware(http_scope("/items"), receive, send)
    assert seen[0] == (EXCLUDED, receive, send)  # untouched, only marked for an inner door
    assert seen[1][0] == "asgi" and seen[1][1:] != (receive, send)
    stats = middleware.stats()
    assert (stats["enqueued"], stats["delivered"], stats["skipped_exclude_paths"]) == (1, 1, 1)


def test_the_wsgi_door_returns_an_excluded_requests_response_itself_and_counts_per_thread(
    scripted: Scripted,
) -> None:
    body = [b"ok"]
    calls: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(start_response)
        start_response("200 OK", [])
        return body

    middleware = KafkaLogWSGIMiddleware(app, scripted_config(exclude_paths=["/health"]))

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/health", "wsgi.input": io.BytesIO()}
    assert middleware(environ, start_response) is body
    assert calls == [start_response] and environ[DOOR_KEY] == EXCLUDED

    def serve_many() -> None:
        for _ in range(500):
            middleware({"PATH_INFO": "/health"}, start_response)

    threads = [threading.Thread(target=serve_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    middleware.close()
    stats = middleware.stats()
    assert (stats["skipped_exclude_paths"], stats["enqueued"]) == (2001, 0), stats


async def test_should_log_runs_before_the_resolver_and_the_sum_holds(scripted: Scripted) -> None:
    """Refused entries are never built, nor given to ``config_resolver``; the Rig checks
    the accounting after every step."""
    resolved: list[int] = []

    def resolver(request: CapturedRequest) -> KafkaLogConfig | None:
        resolved.append(request_number(request))
        return None

    settings = scripted_config(should_log=lambda request: request_number(request) % 3 == 0)
    async with Rig(scripted, settings, resolver=resolver) as rig:
        rig.put(10)
        await rig.settled()
        assert [n for batch in rig.batches() for n in batch] == [0, 3, 6, 9] == resolved
        assert rig.counts("enqueued", "delivered", "skipped_should_log", "pending") == {
            "enqueued": 10,
            "delivered": 4,
            "skipped_should_log": 6,
            "pending": 0,
        }
