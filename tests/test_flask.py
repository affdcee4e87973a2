"""The Flask extension without a broker (scripted producers): ``KafkaLog(app)`` and
``init_app`` for factories, ``app.config["KAFKA_LOG"]``, errors naming the field, the
``url_rule`` as the route, ``set_serialize_value(request, …)``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

flask = pytest.importorskip("flask")

from flask import Flask, Request, request  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from kafka_log_middleware import InvalidConfig, KafkaLogWSGIMiddleware, set_serialize_value  # noqa: E402
from kafka_log_middleware.flask import KafkaLog  # noqa: E402
from tests.polling import wait_until  # noqa: E402
from tests.scripted import Scripted, config  # noqa: E402

pytestmark = pytest.mark.timeout(30)

SETTINGS = {
    "bootstrap_servers": "127.0.0.1:9",
    "topic": "flask-logs",
    "producer_async_flush_timeout": 1,
    "producer_request_retries_backoff_timeout": 0,
}


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with Scripted().installed() as maker:
        yield maker


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    """Apps whose middleware is closed after the test."""
    made: list[Flask] = []
    yield made
    for app in made:
        KafkaLog.middleware(app).close()


def make_app(apps: list[Flask], **app_config: Any) -> Flask:
    app = Flask("t")
    app.config.update(app_config)

    @app.get("/hello/<name>")
    def hello(name: str) -> dict[str, str]:
        set_serialize_value(request, "who", name)
        return {"hello": name}

    apps.append(app)
    return app


def get(app: Flask, path: str) -> Any:
    """GET ``path``; buffered, so the response is read and closed (the entry ends)."""
    return app.test_client().get(path, buffered=True)


def published(scripted: Scripted, app: Flask, count: int) -> list[Any]:
    middleware = KafkaLog.middleware(app)
    wait_until(lambda: middleware.stats()["delivered"] >= count, timeout=20)
    return [orjson.loads(m[1]) for h in scripted.handovers() for m in h.messages]


def test_kafka_log_app_reads_app_config_and_logs_the_url_rule(
    scripted: Scripted, apps: list[Flask]
) -> None:
    app = make_app(apps, KAFKA_LOG=SETTINGS)
    KafkaLog(app)
    assert isinstance(app.extensions["kafka_log"], KafkaLogWSGIMiddleware)
    assert app.wsgi_app is app.extensions["kafka_log"]
    assert get(app, "/hello/ann?x=1").json == {"hello": "ann"}
    assert get(app, "/nowhere").status_code == 404
    hello, missing = sorted(published(scripted, app, 2), key=lambda e: e["request"]["uri"])
    assert hello["route"] == {
        "name": "hello",
        "paths": ["/hello/<name>"],
        "methods": ["GET", "HEAD", "OPTIONS"],
    }
    assert hello["who"] == "ann"
    assert hello["request"]["uri"] == "/hello/ann?x=1"
    assert hello["request"]["querystring"] == {"x": "1"}
    assert hello["response"]["status"] == 200
    assert {h.topic for h in scripted.handovers()} == {"flask-logs"}
    assert missing["response"]["status"] == 404 and "route" not in missing


def test_the_span_or_traceparent_trace_id_is_logged(scripted: Scripted, apps: list[Flask]) -> None:
    tracer = TracerProvider().get_tracer("tests")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    app = make_app(apps, KAFKA_LOG={**SETTINGS, "log_format": "kong3"})
    KafkaLog(app)
    with tracer.start_as_current_span("http") as span:
        app.test_client().get("/hello/a", headers=headers, buffered=True)
    app.test_client().get("/hello/b", headers=headers, buffered=True)
    app.test_client().get("/hello/c", headers={"traceparent": "00-" + "0" * 32}, buffered=True)
    a, b, c = sorted(published(scripted, app, 3), key=lambda e: e["request"]["uri"])
    assert a["trace_id"] == {"w3c": f"{span.get_span_context().trace_id:032x}"}
    assert b["trace_id"] == {"w3c": trace}
    assert "trace_id" not in c


def test_the_app_s_own_request_class_keeps_working_and_records_the_route(
    scripted: Scripted, apps: list[Flask]
) -> None:
    """The route comes from a subclass of ``app.request_class``: the app's own class
    (set before ``init_app``) stays in charge of everything else."""

    class AppRequest(Request):
        max_content_length = 4

    app = make_app(apps, KAFKA_LOG=SETTINGS)
    app.request_class = AppRequest
    KafkaLog(app)
    assert issubclass(app.request_class, AppRequest) and app.request_class is not AppRequest
    assert app.request_class.__name__ == "AppRequest"
    response = app.test_client().post("/hello/big", data=b"12345", buffered=True)
    assert response.status_code in (405, 413)  # the app's limit or its methods, not ours
    assert get(app, "/hello/ok").status_code == 200
    entries = sorted(published(scripted, app, 2), key=lambda e: e["request"]["method"])
    assert entries[0]["route"]["name"] == "hello"  # GET /hello/ok
    assert entries[1]["request"]["method"] == "POST"


def test_init_app_suits_an_application_factory(scripted: Scripted, apps: list[Flask]) -> None:
    """One extension object, several apps, each with its own middleware and config."""
    kafka_log = KafkaLog()

    def create_app(topic: str) -> Flask:
        app = make_app(apps, KAFKA_LOG={**SETTINGS, "topic": topic})
        kafka_log.init_app(app)
        return app

    first, second = create_app("first"), create_app("second")
    assert KafkaLog.middleware(first) is not KafkaLog.middleware(second)
    get(first, "/hello/a")
    get(second, "/hello/b")
    published(scripted, first, 1)
    published(scripted, second, 1)
    assert sorted(h.topic for h in scripted.handovers()) == ["first", "second"]


def test_a_config_given_to_the_extension_wins_over_app_config(
    scripted: Scripted, apps: list[Flask]
) -> None:
    app = make_app(apps, KAFKA_LOG={"topic": "ignored"})
    KafkaLog(app, config(topic="given"))
    assert KafkaLog.middleware(app).config.topic == "given"


def test_without_app_config_the_environment_configures(
    monkeypatch: pytest.MonkeyPatch, apps: list[Flask]
) -> None:
    monkeypatch.setenv("KAFKA_LOG_BOOTSTRAP_SERVERS", "k1:9092")
    monkeypatch.setenv("KAFKA_LOG_TOPIC", "from-env")
    app = make_app(apps)
    KafkaLog(app)
    assert KafkaLog.middleware(app).config.topic == "from-env"


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        (
            {**SETTINGS, "topik": "x"},
            "topik",
            r"'topik' is no KafkaLogConfig field \(did you mean 'topic'\?\)",
        ),
        ({**SETTINGS, "topic": "a b"}, "topic", "not a legal Kafka topic name"),
        ("topic=x", 'app.config["KAFKA_LOG"]', "must be a dict of KafkaLogConfig fields"),
        (
            {**SETTINGS, "authentication": {"mechanism": "SCRAM-SHA-1", "user": "u"}},
            "authentication",
            "SCRAM-SHA-1",
        ),
        (
            {**SETTINGS, "security": {"ssl": True, "cafile": "/no/such/ca.pem"}},
            "security",
            "/no/such/ca.pem",
        ),
    ],
)
def test_a_bad_app_config_raises_at_init_naming_the_field(
    settings: Any, field: str, message: str
) -> None:
    app = Flask("bad")
    app.config["KAFKA_LOG"] = settings
    with pytest.raises(InvalidConfig, match=message) as raised:
        KafkaLog(app)
    assert raised.value.field == field
    assert str(raised.value).startswith('app.config["KAFKA_LOG"]')
    assert "kafka_log" not in app.extensions


def test_init_app_twice_is_refused(apps: list[Flask]) -> None:
    app = make_app(apps, KAFKA_LOG=SETTINGS)
    KafkaLog(app)
    with pytest.raises(RuntimeError, match="already set up"):
        KafkaLog(app)
