"""A broker that hangs (SIGSTOP) under load: entries re-sent after an attempt that may
have reached Kafka are counted as ``retried`` (at-most-once delivery can duplicate them),
entries given up after such an attempt as ``uncertain``, and nothing that may have been
delivered is counted as dropped."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import orjson
import pytest

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from tests.asgi_driver import http_scope, lifespan, request
from tests.exit_app import hello
from tests.kafka_helpers import BrokerFactory, consume, create_topic, unique_topic
from tests.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


async def test_a_hung_broker_s_duplicates_are_counted(
    kafka_broker_factory: BrokerFactory, backend: str
) -> None:
    broker = kafka_broker_factory()
    broker.start()
    topic = unique_topic("hang")
    await create_topic(broker.bootstrap_servers, topic)
    config = KafkaLogConfig(
        bootstrap_servers=(broker.bootstrap_servers,),
        topic=topic,
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=10,
        timeout=2000,  # requests to the hung broker time out: they may have been written
        producer_request_retries_backoff_timeout=200,
    )
    middleware = KafkaLogMiddleware(hello, config)
    assert broker.pid is not None
    sent = 0

    async def load(seconds: float) -> None:
        nonlocal sent
        for _ in range(int(seconds * 100)):
            for _ in range(5):
                await request(middleware, http_scope("/", query=f"n={sent}".encode()))
                sent += 1
            await asyncio.sleep(0.01)

    async with lifespan(middleware):
        [producer] = middleware.producers()
        assert await producer.wait_ready(30)
        await load(1)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            await load(5)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await load(1)
        await eventually(lambda: middleware.stats()["pending"] == 0, timeout=90)
    stats = middleware.stats()
    records = await consume(broker.bootstrap_servers, topic, sent, timeout=20)
    found = Counter(int(orjson.loads(r.value)["request"]["querystring"]["n"]) for r in records)
    duplicates = sum(found.values()) - len(found)
    assert stats["enqueued"] == sent
    assert stats["delivered"] + stats["dropped"] + stats["uncertain"] == sent, stats
    assert stats["retried"] > 0, stats  # requests were in flight when the broker hung
    assert duplicates <= stats["retried"], (duplicates, stats)  # every duplicate is counted
    # What Kafka has was delivered or is uncertain; nothing counted dropped turned up.
    assert stats["delivered"] <= len(found) <= stats["delivered"] + stats["uncertain"], stats
