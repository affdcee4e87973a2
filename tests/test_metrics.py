"""Prometheus metrics against the real broker: after a load with deliveries and drops the
scraped values equal ``stats()`` and the latency histogram counts every delivered entry;
under gunicorn with 2 workers in multiprocess mode the aggregated metrics are the sum of
both workers'; the Starlette, Flask and Django views answer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from kafka_log_middleware import KafkaLogMiddleware, metrics
from kafka_log_middleware.pipeline import Pipeline
from tests.asgi_driver import http_scope, request
from tests.kafka_helpers import consume, unique_topic
from tests.servers import gunicorn
from tests.test_asgi import offline_config, starlette_app

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

LOAD = 60


def scraped(registry: CollectorRegistry, topic: str) -> dict[str, float]:
    """The registry's kafka_log samples of ``topic``, named as ``stats()`` names them."""
    values: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.labels.get("topic") != topic:
                continue
            name = sample.name.removeprefix(metrics.PREFIX)
            if "reason" in sample.labels:
                values["dropped_" + sample.labels["reason"]] = sample.value
            elif sample.name == metrics.LATENCY + "_count":
                values["latency_count"] = sample.value
            elif name.endswith("_total") or name in metrics.GAUGES:
                values[name.removesuffix("_total")] = sample.value
    return values


def exported(stats: dict[str, int]) -> dict[str, int]:
    """The stats that have a metric."""
    return {
        key: value
        for key, value in stats.items()
        if key in metrics.COUNTERS or key in metrics.GAUGES or key.startswith("dropped_")
    }


def test_spread_covers_the_span_evenly() -> None:
    assert list(metrics.spread(2, 10.0, 12.0, 20.0)) == [9.5, 8.5]
    assert list(metrics.spread(3, 10.0, 10.0, 11.0)) == [1.0, 1.0, 1.0]


def test_register_refuses_what_has_no_pipeline() -> None:
    with pytest.raises(TypeError, match="give a middleware"):
        metrics.register(object(), CollectorRegistry())


@pytest.mark.kafka
async def test_scraped_metrics_equal_stats_after_deliveries_and_drops(
    kafka_bootstrap: str,
) -> None:
    topic = unique_topic("metrics")
    middleware = KafkaLogMiddleware(
        starlette_app(),
        bootstrap_servers=(kafka_bootstrap,),
        topic=topic,
        producer_async_flush_timeout=50,
        producer_async_buffering_limits_messages_in_memory=10,
    )
    registry = CollectorRegistry()
    metrics.register(middleware, registry)
    for _ in range(3):  # bursts past the bound, then time to deliver
        for _ in range(LOAD // 3):
            await request(middleware, http_scope("/hello/x"))
        for _ in range(200):
            if middleware.stats()["pending"] == 0:
                break
            await asyncio.sleep(0.05)
    stats = middleware.stats()
    assert stats["pending"] == 0 and stats["enqueued"] == LOAD
    assert stats["delivered"] > 0 and stats["dropped_buffer_full"] > 0
    values = scraped(registry, topic)
    assert {key: values[key] for key in exported(stats)} == exported(stats)
    assert values["latency_count"] == stats["delivered"]
    assert (
        registry.get_sample_value(metrics.LATENCY + "_bucket", {"topic": topic, "le": "+Inf"})
        == stats["delivered"]
    )
    records = await consume(kafka_bootstrap, topic, stats["delivered"], settle=1)
    assert len(records) == stats["delivered"]
    await middleware.aclose()


async def test_a_second_pipeline_of_the_same_topic_adds_up() -> None:
    registry = CollectorRegistry()
    one = KafkaLogMiddleware(starlette_app(), offline_config(topic="shared"))
    two = KafkaLogMiddleware(starlette_app(), offline_config(topic="shared"))
    metrics.register(one, registry)
    metrics.register(two, registry)
    await request(one, http_scope("/hello/x"))
    await request(two, http_scope("/hello/x"))
    assert registry.get_sample_value(metrics.PREFIX + "enqueued_total", {"topic": "shared"}) == 2
    await one.aclose()
    await two.aclose()


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_multiprocess_mode_with_two_gunicorn_workers_adds_up_both(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_topic("metrics-mp")
    multiproc, stats_dir = tmp_path / "prometheus", tmp_path / "stats"
    multiproc.mkdir()
    stats_dir.mkdir()
    env = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_LOG_TOPIC": topic,
        "KAFKA_LOG_PRODUCER_ASYNC_FLUSH_TIMEOUT": "50",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "KAFKA_LOG_TEST_STATS": str(stats_dir),
    }
    options = ("-w", "2", "-c", "python:tests.metrics_apps")
    app = "tests.metrics_apps:flask_app"
    with (
        gunicorn(app, *options, env=env) as (base_url, _),
        httpx.Client(base_url=base_url) as client,
    ):
        for _ in range(LOAD):
            client.get("/hello/x", headers={"Connection": "close"})
        scrapes = 0
        while scraped_delivered(client, topic) < LOAD:  # each worker's every second
            scrapes += 1
            assert scrapes < 600, "the workers' metrics never added up to the load"
            time.sleep(0.1)
    scrapes += 1
    workers = [orjson.loads(path.read_bytes()) for path in stats_dir.glob("*.json")]
    assert len(workers) == 2
    total = {key: sum(worker[key] for worker in workers) for key in workers[0]}
    assert total["enqueued"] == total["delivered"] == LOAD + scrapes  # /metrics is logged too
    registry = CollectorRegistry()
    metrics.WorkersCollector(registry, str(multiproc))
    values = scraped(registry, topic)
    counters = {k: v for k, v in exported(total).items() if k not in metrics.GAUGES}
    assert {key: values.get(key, 0) for key in counters} == counters
    assert values["latency_count"] == total["delivered"]
    records = asyncio.run(consume(kafka_bootstrap, topic, LOAD + scrapes, settle=1))
    assert len(records) == LOAD + scrapes


def test_a_scrape_leaves_out_a_metrics_file_a_worker_has_not_sized_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker creates its file, then sizes it: in between (or for good, if it died then)
    the file is empty, which prometheus_client's collector reads as corrupt."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    written = MmapedDict(str(tmp_path / "counter_101.db"))  # type: ignore[no-untyped-call]
    name = metrics.PREFIX + "delivered"
    key = mmap_key(name, name + "_total", ["topic"], ["t"], "")
    written.write_value(key, 7.0, 0.0)  # type: ignore[no-untyped-call]
    written.close()  # type: ignore[no-untyped-call]
    (tmp_path / "counter_102.db").touch()  # the other worker's, not sized yet
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    body, _ = metrics.metrics_response()
    [family] = text_string_to_metric_families(body.decode())
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        (metrics.PREFIX + "delivered_total", {"topic": "t"}, 7.0)
    ]


def scraped_delivered(client: httpx.Client, topic: str) -> float:
    """``kafka_log_entries_delivered_total`` of ``topic`` as ``/metrics`` tells it."""
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if (
                sample.name == metrics.PREFIX + "delivered_total"
                and sample.labels["topic"] == topic
            ):
                return sample.value
    return 0.0


def test_the_starlette_endpoint_answers() -> None:
    app = Starlette(routes=[Route("/metrics", metrics.starlette_endpoint)])
    response = asyncio.run(request(app, http_scope("/metrics")))
    assert response.status == 200
    assert b"\npython_info{" in response.body  # the global registry's


def test_the_flask_view_answers() -> None:
    from flask import Flask

    app = Flask(__name__)
    app.add_url_rule("/metrics", view_func=metrics.flask_view)
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")


DJANGO = """
import django
from django.conf import settings
from django.urls import path
from kafka_log_middleware import metrics

urlpatterns = [path("metrics", metrics.django_view)]
settings.configure(
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=["kafka_log_middleware.django.KafkaLogMiddleware"],
    KAFKA_LOG={"topic": "django-metrics", "bootstrap_servers": ["127.0.0.1:1"]},
    KAFKA_LOG_METRICS=True,
)
django.setup()
from django.test import Client
client = Client()
client.get("/metrics")
response = client.get("/metrics")
print(response.status_code, response["Content-Type"])
print(response.content.decode())
"""


def test_the_django_view_answers_with_the_middleware_registered_by_its_setting() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DJANGO)],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=True,
    )
    status, body = done.stdout.decode().split("\n", 1)
    assert status.startswith("200 text/plain")
    assert 'kafka_log_entries_enqueued_total{topic="django-metrics"} 1.0' in body


def test_pipelines_of_every_door() -> None:
    pipeline = Pipeline(offline_config())
    assert metrics.pipeline_getter(pipeline)() is pipeline
    middleware: Any = KafkaLogMiddleware(starlette_app(), offline_config())
    assert metrics.pipeline_getter(middleware)() is middleware._pipeline
    from flask import Flask

    from kafka_log_middleware.flask import KafkaLog
    from kafka_log_middleware.wsgi import KafkaLogWSGIMiddleware

    wsgi: Any = KafkaLogWSGIMiddleware(Flask(__name__).wsgi_app, offline_config())
    assert metrics.pipeline_getter(wsgi)() is wsgi._background.pipeline
    app = Flask(__name__)
    KafkaLog(app, offline_config())
    flask_pipeline = KafkaLog.middleware(app)._background.pipeline
    assert metrics.pipeline_getter(app)() is flask_pipeline
