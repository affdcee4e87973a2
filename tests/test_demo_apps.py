"""The demo apps beside the FastAPI one: the Flask app (``example_app/flask_app.py``) and
the Django project (``example_app/django_project``) answer the demo's requests
(``devtools.demo.REQUESTS``) and log them with their routes, consumer and
``set_serialize_value`` edits, through scripted producers (no broker).

The Django project runs in a child interpreter: a process configures Django once, and
``tests/test_django.py`` configures its own project.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("flask")
pytest.importorskip("django")

from flask import Flask

from devtools.demo import REQUESTS, STATS_PATH, DemoRequest
from kafka_log_middleware.flask import KafkaLog
from tests.polling import wait_until
from tests.scripted import Scripted, invariant_problems

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
ENV = {
    "KAFKA_LOG_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing connects: scripted producers
    "KAFKA_LOG_TOPIC": "demo-apps",
    "KAFKA_LOG_PRODUCER_ASYNC_FLUSH_TIMEOUT": "1",
}
STATUSES = [200, 201, 200, 401, 200, 500, 404]
"""What the demo's requests get, in order (the FastAPI demo's answers too)."""
ALICE = {"id": "4b1d3f7e", "username": "alice"}
FLASK_ROUTES = {"/orders/42": "get_order", "/orders": "create_order", "/me": "me"}
DJANGO_ROUTES = {"/orders/42": "order", "/orders": "orders", "/me": "me"}
Entry = dict[str, Any]


def logged(scripted: Scripted) -> list[Entry]:
    """The entries handed to the scripted producers."""
    return [orjson.loads(m[1]) for h in scripted.handovers() for m in h.messages]


def check_entries(entries: list[Entry], routes: dict[str, str]) -> None:
    """The demo's points, one entry per request (the stats request's too)."""
    assert len(entries) == len(REQUESTS) + 1
    by_answer = {
        (e["request"]["method"], e["request"]["uri"], e["response"]["status"]): e for e in entries
    }
    order = by_answer["GET", "/orders/42?expand=true&tag=a&tag=b", 200]
    assert order["order_id"] == 42
    assert order["request"]["querystring"] == {"expand": "true", "tag": ["a", "b"]}
    assert order["service"] == {"name": "orders", "protocol": "http"}
    signed_in = by_answer["GET", "/me", 200]
    assert signed_in["consumer"] == ALICE
    assert signed_in["request"]["headers"]["authorization"] == "REDACTED"
    assert "consumer" not in by_answer["GET", "/me", 401]
    assert int(by_answer["GET", "/stream", 200]["response"]["size"]) > len(b"chunk 0\n" * 5)
    assert "route" not in by_answer["GET", "/no-such-page", 404]
    for (method, uri, _), entry in by_answer.items():
        path = uri.partition("?")[0]
        if path in routes:
            assert entry["route"]["name"] == routes[path], (method, uri)
    assert {e["route"]["name"] for e in entries if "route" in e} >= {"boom", "stream"}


def check_stats(stats: dict[str, int]) -> None:
    """The stats endpoint's counters, read after the demo's requests ended."""
    assert stats["enqueued"] == len(REQUESTS)
    assert not invariant_problems(stats), stats


# -- Flask, in-process -------------------------------------------------------------------


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with Scripted().installed() as maker:
        yield maker


@pytest.fixture
def flask_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """``example_app.flask_app.app``, imported afresh under the test's environment."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("example_app.flask_app", None)
    app: Flask = importlib.import_module("example_app.flask_app").app
    yield app
    KafkaLog.middleware(app).close()
    sys.modules.pop("example_app.flask_app", None)


def test_the_flask_app_answers_and_logs_the_demo_requests(
    flask_app: Flask, scripted: Scripted
) -> None:
    middleware = KafkaLog.middleware(flask_app)
    assert middleware.config.topic == "demo-apps"
    client = flask_app.test_client()
    statuses = [
        client.open(
            r.path, method=r.method, headers=r.headers, json=r.json, buffered=True
        ).status_code
        for r in REQUESTS
    ]
    assert statuses == STATUSES
    stats = client.get(STATS_PATH, buffered=True).json
    assert stats is not None
    check_stats(stats)
    wait_until(lambda: middleware.stats()["delivered"] == len(REQUESTS) + 1, timeout=20)
    check_entries(logged(scripted), FLASK_ROUTES)


# -- Django, in a child interpreter --------------------------------------------------------


@pytest.fixture(scope="module")
def django_run() -> dict[str, Any]:
    """What ``run_django_project`` reports from a child interpreter."""
    child = subprocess.run(
        [sys.executable, "-c", "import tests.test_demo_apps as t; t.run_django_project()"],
        cwd=REPO,
        capture_output=True,
        timeout=50,
        check=False,
    )
    assert child.returncode == 0, child.stderr.decode(errors="replace")
    report: dict[str, Any] = orjson.loads(child.stdout.splitlines()[-1])
    return report


def test_the_django_project_answers_and_logs_the_demo_requests(
    django_run: dict[str, Any],
) -> None:
    """Through the MIDDLEWARE entry (Django's test client: the WSGI handler)."""
    run = django_run["entry"]
    assert run["statuses"] == STATUSES
    check_stats(run["stats"])
    check_entries(run["entries"], DJANGO_ROUTES)
    (orders,) = (e for e in run["entries"] if e["request"]["uri"] == "/orders")
    methods = ["OPTIONS", "POST"]  # those the class-based view implements
    assert orders["route"] == {"name": "orders", "paths": ["/orders"], "methods": methods}


def test_the_django_projects_asgi_application_logs_through_the_asgi_door(
    django_run: dict[str, Any],
) -> None:
    """``asgi.py``: the door logs (and its counters are the stats endpoint's); the
    MIDDLEWARE entry adds the route."""
    run = django_run["door"]
    assert run["statuses"] == STATUSES
    check_stats(run["stats"])
    check_entries(run["entries"], DJANGO_ROUTES)


def run_django_project() -> None:
    """In a child interpreter: the demo's requests to the Django project through Django's
    test client, then through ``asgi.py``; prints what each answered and logged (JSON)."""
    os.environ.update(ENV, DJANGO_SETTINGS_MODULE="example_app.django_project.settings")
    import django
    from django.test.utils import setup_test_environment

    django.setup()
    setup_test_environment()  # allows the test client's host
    with Scripted().installed() as scripted:
        entry = _through_the_test_client(scripted)
    with Scripted().installed() as scripted:
        door = asyncio.run(_through_the_asgi_door(scripted))
    sys.stdout.write(orjson.dumps({"entry": entry, "door": door}).decode() + "\n")


def _through_the_test_client(scripted: Scripted) -> dict[str, Any]:
    from django.test import Client

    from example_app.django_project import middleware

    client = Client(raise_request_exception=False)
    statuses = [_django_send(client, r) for r in REQUESTS]
    stats = client.get(STATS_PATH).json()
    wait_until(lambda: middleware.stats()["delivered"] == len(REQUESTS) + 1, timeout=20)
    return {"statuses": statuses, "stats": stats, "entries": logged(scripted)}


def _django_send(client: Any, request: DemoRequest) -> int:
    body = orjson.dumps(request.json) if request.json is not None else b""
    response = client.generic(
        request.method,
        request.path,
        body,
        content_type="application/json",
        headers=request.headers,
    )
    if response.streaming:  # read to the end: the client closes it then (the entry ends)
        b"".join(response.streaming_content)
    status: int = response.status_code
    return status


async def _through_the_asgi_door(scripted: Scripted) -> dict[str, Any]:
    import httpx

    from example_app.django_project import asgi

    door = asgi.application
    transport = httpx.ASGITransport(app=door)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        statuses = [
            (await client.request(r.method, r.path, headers=r.headers, json=r.json)).status_code
            for r in REQUESTS
        ]
        stats = (await client.get(STATS_PATH)).json()
    for _ in range(400):
        if door.stats()["delivered"] == len(REQUESTS) + 1:
            break
        await asyncio.sleep(0.05)
    await door.aclose()
    return {"statuses": statuses, "stats": stats, "entries": logged(scripted)}
