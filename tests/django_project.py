"""A Django project in one module (settings, URLs, views), for tests: in-process and
under real servers (``DJANGO_SETTINGS_MODULE=tests.django_project``; gunicorn serves
``tests.django_project:wsgi_application``, uvicorn ``…:asgi_application``).

``KAFKA_LOG`` comes from ``KAFKA_LOG_TEST_*`` variables, so that each server a test
starts logs to that test's topic; responses name the process that served them.
"""

from __future__ import annotations

import os
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views import View

DEBUG = False
ALLOWED_HOSTS = ["*"]
SECRET_KEY = "test-only"
ROOT_URLCONF = __name__
INSTALLED_APPS: list[str] = []
USE_TZ = True
MIDDLEWARE = ["kafka_log_middleware.django.KafkaLogMiddleware"]
KAFKA_LOG = {
    "bootstrap_servers": os.environ.get("KAFKA_LOG_TEST_BOOTSTRAP", "127.0.0.1:9"),
    "topic": os.environ.get("KAFKA_LOG_TEST_TOPIC", "django"),
    "log_format": os.environ.get("KAFKA_LOG_TEST_FORMAT", "kong2"),
    "producer_async_flush_timeout": 20,
    "service": {"name": "django-project"},
}


def settings_dict() -> dict[str, Any]:
    """These settings, for ``settings.configure()`` in-process."""
    return {name: value for name, value in globals().items() if name.isupper()}


def sized(response: HttpResponse) -> HttpResponse:
    """Name the process; declare the length (no chunked framing from the server)."""
    response["X-Pid"] = str(os.getpid())
    response["Content-Length"] = str(len(response.content))
    return response


def hello(request: HttpRequest, name: str) -> HttpResponse:
    return sized(JsonResponse({"hello": name}))


class Items(View):  # type: ignore[misc]  # Django is untyped here
    def get(self, request: HttpRequest) -> HttpResponse:
        return sized(JsonResponse({"items": []}))

    def post(self, request: HttpRequest) -> HttpResponse:
        return sized(JsonResponse({"received": len(request.body)}, status=201))


urlpatterns = [
    path("hello/<str:name>", hello, name="hello"),
    path("items/", Items.as_view(), name="items"),
]


def __getattr__(name: str) -> Any:
    # The applications are made on demand: each loads the middleware (and its config).
    if name in ("wsgi_application", "asgi_application"):
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
    if name == "wsgi_application":
        from django.core.wsgi import get_wsgi_application

        return get_wsgi_application()
    if name == "asgi_application":
        from django.core.asgi import get_asgi_application

        return get_asgi_application()
    raise AttributeError(name)
