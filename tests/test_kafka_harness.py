"""The real-Kafka harness itself: session broker, helpers, stop/start on the same port, and
the 3-node cluster (leader failover, rejoining the ISR)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from devtools.kafka_broker import LOOPBACK, KafkaCluster, metadata_brokers
from tests.kafka_helpers import BrokerFactory, consume, create_topic, unique_topic
from tests.polling import eventually, wait_until

pytestmark = pytest.mark.kafka

MIN_ISR_2 = {"min.insync.replicas": "2"}


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


def test_cluster_metadata_lists_every_broker(kafka_cluster: KafkaCluster) -> None:
    nodes = kafka_cluster.nodes
    assert [node.node_id for node in nodes] == [1, 2, 3]
    assert kafka_cluster.bootstrap_servers.split(",") == [node.bootstrap_servers for node in nodes]
    expected = sorted((node.node_id, node.port) for node in nodes)
    for node in nodes:
        listed = metadata_brokers(LOOPBACK, node.port)
        assert sorted((b.node_id, b.port) for b in listed) == expected


def _fully_replicated(cluster: KafkaCluster, topic: str, partition: int = 0) -> bool:
    info = cluster.partition(topic, partition)
    return info is not None and sorted(info.replicas) == sorted(info.isr) == [1, 2, 3]


async def test_cluster_replicated_topic_takes_acks_all(kafka_cluster: KafkaCluster) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    topic = unique_topic("cluster-rf3")
    await create_topic(bootstrap, topic, partitions=2, replication_factor=3, configs=MIN_ISR_2)
    await eventually(lambda: all(_fully_replicated(kafka_cluster, topic, p) for p in (0, 1)))
    values = [b"%d" % i for i in range(4)]
    await _produce(bootstrap, topic, values, "all")
    assert [r.value for r in await consume(bootstrap, topic, 4, timeout=30)] == values


def test_cluster_leader_failover_and_rejoin(kafka_cluster: KafkaCluster) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    topic = unique_topic("cluster-failover")
    asyncio.run(create_topic(bootstrap, topic, replication_factor=3, configs=MIN_ISR_2))
    asyncio.run(_produce(bootstrap, topic, [b"before-kill"], "all"))
    leader = kafka_cluster.leader_of(topic)
    victim = kafka_cluster.node(leader)
    port = victim.port

    victim.kill()

    def failed_over() -> bool:
        info = kafka_cluster.partition(topic)
        return info is not None and info.leader not in (-1, leader) and leader not in info.isr

    wait_until(failed_over)
    asyncio.run(_produce(bootstrap, topic, [b"leader-down"], "all"))  # ISR 2 = min ISR

    victim.start()
    assert victim.port == port
    wait_until(lambda: _fully_replicated(kafka_cluster, topic))
    records = asyncio.run(consume(bootstrap, topic, 2, timeout=30))
    assert [r.value for r in records] == [b"before-kill", b"leader-down"]
