"""The demo's views: the FastAPI demo's routes (``example_app/app.py``) in Django."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views import View
from django.views.decorators.http import require_GET

from example_app.demo_config import USERS
from example_app.django_project import middleware
from kafka_log_middleware import set_serialize_value

TRUE = frozenset({"1", "true", "yes", "on"})
AnyView = Callable[..., HttpResponse]


def get_only(view: AnyView) -> AnyView:
    """Django's ``require_GET`` (405 for other methods), typed: Django ships no hints."""
    allowed: AnyView = require_GET(view)
    return allowed


@get_only
def get_order(request: HttpRequest, order_id: int) -> HttpResponse:
    """A path parameter and query arguments."""
    set_serialize_value(request, "order_id", order_id)
    expand = request.GET.get("expand", "").lower() in TRUE
    items = ["book", "pen"] if expand else []
    return JsonResponse({"id": order_id, "expand": expand, "items": items})


class Orders(View):  # type: ignore[misc]  # Django is untyped here
    """A class-based view: the entry's ``route.methods`` are the ones it implements."""

    def post(self, request: HttpRequest) -> HttpResponse:
        """A request body: counted in ``request.size``."""
        try:
            body: Any = json.loads(request.body)
        except ValueError:
            return JsonResponse({"detail": "the body is not JSON"}, status=400)
        return JsonResponse({"id": 1001, "received": body}, status=201)


@get_only
def me(request: HttpRequest) -> HttpResponse:
    """An Authorization header: logged as ``REDACTED``; the user becomes Kong's consumer."""
    user = USERS.get(request.headers.get("Authorization", ""))
    if user is None:
        return JsonResponse({"detail": "missing or bad token"}, status=401)
    return JsonResponse(user)


@get_only
def stream(request: HttpRequest) -> HttpResponse:
    """A streamed response (a generator): ``response.size`` counts every chunk."""
    text = request.GET.get("chunks", "")
    chunks = int(text) if text.isdigit() else 5
    # Under ASGI (asgi.py) Django streams an async iterator without a warning.
    body = _async_chunks(chunks) if hasattr(request, "scope") else _chunks(chunks)
    return StreamingHttpResponse(body, content_type="text/plain")


def _chunks(count: int) -> Iterator[bytes]:
    for index in range(count):
        yield f"chunk {index}\n".encode()
        time.sleep(0.01)


async def _async_chunks(count: int) -> AsyncIterator[bytes]:
    for index in range(count):
        yield f"chunk {index}\n".encode()
        await asyncio.sleep(0.01)


@get_only
def boom(request: HttpRequest) -> HttpResponse:
    """An unhandled exception: Django answers 500, which is what the entry shows."""
    raise RuntimeError("the demo view failed on purpose")


@get_only
def stats(request: HttpRequest) -> HttpResponse:
    """This process's counters: enqueued == delivered + dropped + uncertain +
    skipped_should_log + pending."""
    return JsonResponse(middleware.stats())
