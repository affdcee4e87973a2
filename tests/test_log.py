"""The library's own warnings: one logger, rate-limited per kind, never carrying secrets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kafka_log_middleware import KafkaLogConfig, _log
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.serializer import build_entry
from tests.asgi_driver import http_scope


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

    captured = CapturedRequest(scope, config, receive, send)
    caplog.set_level("WARNING", logger="kafka_log_middleware")
    entry = build_entry(captured)
    assert "consumer" not in entry
    assert entry["request"]["headers"]["authorization"] == "REDACTED"
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "ValueError" in text and "secret" not in text
    assert "secret" not in repr(captured)
