"""The real-Kafka harness itself: session broker, helpers, and stop/start on the same port."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from tests.kafka_helpers import BrokerFactory, consume, create_topic, unique_topic

pytestmark = pytest.mark.kafka


async def _produce(bootstrap: str, topic: str, values: list[bytes], acks: int | str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=acks)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


@pytest.mark.parametrize("acks", [1, -1])
async def test_produce_and_consume(kafka_bootstrap: str, acks: int) -> None:
    topic = unique_topic(f"harness-acks{acks}")
    values = [b"one", b"two", b"three"]
    await _produce(kafka_bootstrap, topic, values, acks)  # auto-creates the topic
    records = await consume(kafka_bootstrap, topic, 3, timeout=30)
    assert [r.value for r in records] == values


async def test_consume_waits_for_topic_and_times_out(kafka_bootstrap: str) -> None:
    topic = unique_topic("harness-multi")
    await create_topic(kafka_bootstrap, topic, partitions=3)
    await create_topic(kafka_bootstrap, topic, partitions=3)  # already exists: accepted
    waiting = asyncio.create_task(consume(kafka_bootstrap, topic, 6, timeout=30))
    await _produce(kafka_bootstrap, topic, [b"%d" % i for i in range(6)], "all")
    assert await consume(kafka_bootstrap, unique_topic("harness-none"), 1, timeout=1.5) == []
    assert sorted(r.value for r in await waiting) == [b"%d" % i for i in range(6)]


def test_factory_broker_restarts_on_same_port(kafka_broker_factory: BrokerFactory) -> None:
    broker = kafka_broker_factory()
    bootstrap = broker.bootstrap_servers  # known before start()
    topic = unique_topic("harness-restart")

    broker.start()
    asyncio.run(_produce(bootstrap, topic, [b"before-stop"], -1))

    broker.stop()
    assert not broker.is_running
    broker.start()
    assert broker.bootstrap_servers == bootstrap
    asyncio.run(_produce(bootstrap, topic, [b"after-restart"], -1))

    broker.kill()  # crash: acknowledged data must survive too
    broker.start()
    records = asyncio.run(consume(bootstrap, topic, 2, timeout=30))
    assert [r.value for r in records] == [b"before-stop", b"after-restart"]
