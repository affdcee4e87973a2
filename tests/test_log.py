"""The library's own warnings: one logger, rate-limited per kind, never carrying secrets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware, _log
from kafka_log_middleware.asgi import ASGIRequest
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.serializer import build_entry
from tests.asgi_driver import http_scope, lifespan, request
from tests.exit_app import hello
from tests.polling import eventually


@pytest.fixture(autouse=True)
def fresh_rate_limits() -> Iterator[None]:
    _log.reset()
    yield
    _log.reset()


def test_warnings_are_rate_limited_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="kafka_log_middleware")
    for _ in range(5):
        _log.warn("a", "first kind")
    _log.warn("b", "second kind")
    assert [r.getMessage() for r in caplog.records] == ["first kind", "second kind"]
    assert {r.name for r in caplog.records} == {"kafka_log_middleware"}


def test_suppressed_warnings_are_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level("WARNING", logger="kafka_log_middleware")
    monkeypatch.setattr(_log, "INTERVAL", 0.0)
    _log.warn("a", "once")
    monkeypatch.setattr(_log, "INTERVAL", 3600.0)
    _log.warn("a", "again")
    _log.warn("a", "again")
    monkeypatch.setattr(_log, "INTERVAL", 0.0)
    _log.warn("a", "later")
    assert caplog.records[-1].getMessage() == "later (2 similar warnings suppressed)"


def test_a_failing_hook_warning_carries_no_request_data(caplog: pytest.LogCaptureFixture) -> None:
    secret = "Bearer very-secret-token"

    def leaky_hook(request: CapturedRequest) -> None:
        raise ValueError(f"cannot parse {request.scope['headers']}")

    config = KafkaLogConfig(bootstrap_servers=("h:1",), topic="t", consumer=leaky_hook)
    scope = http_scope(headers=[(b"host", b"h"), (b"authorization", secret.encode())])

    async def receive() -> dict[str, str]:
        return {"type": "http.disconnect"}

    async def send(message: object) -> None:
        pass

    captured = ASGIRequest(scope, config, receive, send)
    caplog.set_level("WARNING", logger="kafka_log_middleware")
    entry = build_entry(captured)
    assert "consumer" not in entry
    assert entry["request"]["headers"]["authorization"] == "REDACTED"
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "ValueError" in text and "secret" not in text
    assert "secret" not in repr(captured)


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_during_an_outage_our_warnings_are_the_voice(
    kafka_broker_factory: Any, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's own warnings about our producer are folded into one rate-limited
    warning of ours; the same client's warnings for the app's own producers pass."""
    caplog.set_level("WARNING")
    broker = kafka_broker_factory()
    broker.start()
    config = KafkaLogConfig(
        bootstrap_servers=(broker.bootstrap_servers,),
        topic="outage",
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=10,
        timeout=1000,
        shutdown_timeout=500,
    )
    middleware = KafkaLogMiddleware(hello, config)
    async with lifespan(middleware):
        await request(middleware, http_scope("/"))
        await eventually(lambda: middleware.stats()["delivered"] == 1)
        broker.kill()
        _log.reset()
        caplog.clear()
        for _ in range(80):  # 4 s of requests while the broker is gone
            await request(middleware, http_scope("/"))
            await asyncio.sleep(0.05)
        ours = [r for r in caplog.records if r.name == "kafka_log_middleware"]
        clients = [r for r in caplog.records if r.name != "kafka_log_middleware"]
        assert clients == [], [(r.name, r.getMessage()) for r in clients]
        assert len(ours) <= 10, [r.getMessage() for r in ours]
        if backend == "aiokafka":  # it had things to say: they came through us
            assert any("the Kafka client reports" in r.getMessage() for r in ours)
        # The app's own aiokafka producer is not ours: its warnings are its own.
        caplog.clear()
        other = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        with pytest.raises(KafkaConnectionError):
            await other.start()
        await other.stop()
        assert any(r.name.startswith("aiokafka") for r in caplog.records)
