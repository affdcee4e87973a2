"""At-least-once delivery through a partition leader's crash, on a real 3-node cluster.

A topic with replication factor 3 and ``min.insync.replicas=2``; requests keep coming
while the partition's leader is SIGKILLed, a new one elected, and the old one restarted:
every entry reaches Kafka, and duplicates (the idempotent producer should leave none)
are counted and reported.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from devtools.kafka_broker import KafkaCluster
from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from tests.asgi_driver import http_scope, lifespan, request
from tests.kafka_helpers import consume, create_topic, unique_topic
from tests.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

PACE = 0.004
"""Seconds between two requests of the load (~150-200 requests a second in-process)."""


async def ok(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def load(middleware: Any, numbers: range) -> None:
    """Serve one request per number (its ``n`` query argument), paced."""
    for n in numbers:
        response = await request(middleware, http_scope("/orders", query=f"n={n}".encode()))
        assert response.status == 200
        await asyncio.sleep(PACE)


async def test_killing_the_partition_leader_under_load_loses_no_entry(
    kafka_cluster: KafkaCluster, backend: str
) -> None:
    topic = unique_topic(f"failover-{backend}")
    bootstrap = kafka_cluster.bootstrap_servers
    await create_topic(bootstrap, topic, replication_factor=3, configs={"min.insync.replicas": "2"})
    settings = KafkaLogConfig(
        bootstrap_servers=tuple(bootstrap.split(",")),
        topic=topic,
        producer_backend=backend,  # type: ignore[arg-type]
        delivery="at_least_once",
        producer_async_flush_timeout=20,
        shutdown_timeout=30000,
    )
    app = Starlette(routes=[Route("/orders", ok)])
    middleware = KafkaLogMiddleware(app, settings)
    total = 1200
    async with lifespan(middleware):
        await load(middleware, range(0, 300))
        await eventually(lambda: middleware.stats()["delivered"] >= 250, timeout=30)
        leader = kafka_cluster.node(kafka_cluster.leader_of(topic, 0))
        leader.kill()  # SIGKILL, mid-load
        await load(middleware, range(300, 800))
        # The old leader comes back (its start takes a few seconds) while the load goes on.
        await asyncio.gather(asyncio.to_thread(leader.start), load(middleware, range(800, total)))
        await eventually(lambda: middleware.stats()["pending"] == 0, timeout=120)
        stats = middleware.stats()
    assert stats["enqueued"] == stats["delivered"] == total
    assert stats["dropped"] == stats["uncertain"] == 0
    records = await consume(bootstrap, topic, total, timeout=60, settle=1.0)
    numbers = [
        int(orjson.loads(r.value)["request"]["querystring"]["n"]) for r in records if r.value
    ]
    duplicates = len(numbers) - len(set(numbers))
    print(f"failover ({backend}): {total} entries, {duplicates} duplicates, stats {stats}")
    assert sorted(set(numbers)) == list(range(total))  # none lost
    assert duplicates <= stats["retried"]  # every duplicate is one we counted
    assert duplicates == 0  # the idempotent producer: the broker dropped the client's re-sends
