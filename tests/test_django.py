"""Django's ASGI handler (no lifespan support) under uvicorn, logged to a real broker."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware  # noqa: E402
from tests.kafka_helpers import consume, unique_topic  # noqa: E402
from tests.servers import serve  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def hello(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse({"hello": name})


urlpatterns = [path("hello/<str:name>", hello)]


def django_application() -> object:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            SECRET_KEY="test-only",
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
        )
        django.setup()
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


def test_django_asgi_requests_are_logged(kafka_bootstrap: str) -> None:
    topic = unique_topic("django")
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,), topic=topic, producer_async_flush_timeout=20
    )
    middleware = KafkaLogMiddleware(django_application(), config)  # type: ignore[arg-type]

    with serve(middleware, lifespan="on") as base_url:
        response = httpx.get(f"{base_url}/hello/django?x=1")
        assert response.status_code == 200 and response.json() == {"hello": "django"}
        assert httpx.get(f"{base_url}/missing").status_code == 404
    # The shutdown the middleware spoke for Django flushed both entries.
    assert middleware.stats()["delivered"] == 2
    records = asyncio.run(consume(kafka_bootstrap, topic, 2, timeout=10))
    entries = sorted((orjson.loads(r.value) for r in records), key=lambda e: e["request"]["uri"])
    assert [e["response"]["status"] for e in entries] == [200, 404]
    assert entries[0]["request"]["uri"] == "/hello/django?x=1"
    assert entries[0]["request"]["querystring"] == {"x": "1"}
    assert "route" not in entries[0]  # no Starlette route; give a `route` hook for Django
