"""aiokafka helpers for tests that talk to a real broker (see ``conftest.kafka_bootstrap``)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tls import Certificates

__all__ = [
    "PASSWORD",
    "USER",
    "BrokerFactory",
    "SecuredKafka",
    "consume",
    "create_topic",
    "topic_partitions",
    "unique_topic",
]

# What the ``kafka_broker_factory`` fixture yields: kwargs go to ``KafkaBroker(...)``.
BrokerFactory = Callable[..., KafkaBroker]

USER, PASSWORD = "alice", "alice-s3cret-password"
"""The SASL user of the ``secured_kafka`` broker (PLAIN and SCRAM)."""


@dataclasses.dataclass(frozen=True)
class SecuredKafka:
    """The ``secured_kafka`` broker (``SecuredListeners``) and the certificates its
    listeners use."""

    broker: KafkaBroker
    certs: Certificates


_ILLEGAL_TOPIC_CHARS = re.compile(r"[^a-zA-Z0-9._-]+")


def unique_topic(prefix: str) -> str:
    """A fresh, legal topic name such as ``prefix-1f2e3d4c5b6a`` (illegal chars become ``-``)."""
    clean = _ILLEGAL_TOPIC_CHARS.sub("-", prefix).strip("-") or "t"
    return f"{clean[:200]}-{uuid.uuid4().hex[:12]}"


async def topic_partitions(admin: Any, topic: str) -> list[int] | None:
    """Partition ids of ``topic`` once every partition has a leader, else ``None``.

    Uses an all-topics Metadata request, which (unlike a request naming the topic) never makes
    the broker auto-create it.
    """
    for entry in await admin.describe_topics():
        if entry["topic"] != topic:
            continue
        if entry["error_code"] != 0:
            return None
        parts = entry["partitions"]
        if not parts or any(p["leader"] < 0 for p in parts):
            return None
        return sorted(int(p["partition"]) for p in parts)
    return None


async def _wait_for_topic(admin: Any, topic: str, deadline: float) -> list[int] | None:
    while True:
        try:
            parts = await topic_partitions(admin, topic)
        except KafkaError:
            parts = None
        if parts is not None or time.monotonic() >= deadline:
            return parts
        await asyncio.sleep(0.2)


async def create_topic(
    bootstrap: str,
    topic: str,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create ``topic`` and wait until all its partitions have leaders.

    ``configs``: topic configs such as ``{"min.insync.replicas": "2"}``. An already existing
    topic is accepted as is.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        new = NewTopic(topic, partitions, replication_factor, topic_configs=dict(configs or {}))
        try:
            resp = await admin.create_topics([new])
        except TopicAlreadyExistsError:
            resp = None
        for err in getattr(resp, "topic_errors", ()):
            code = int(err[1])
            if code not in (0, TopicAlreadyExistsError.errno):
                message = err[2] if len(err) > 2 else ""
                raise for_code(code)(f"creating topic {topic!r} failed: {message}")
        if await _wait_for_topic(admin, topic, time.monotonic() + 30.0) is None:
            raise TimeoutError(f"topic {topic!r} has no leaders 30 s after creation")
    finally:
        await admin.close()


async def consume(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 30.0,
    settle: float = 0.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the earliest offset of every partition until ``count`` records arrived.

    ``settle``: then read on for this long, so that a test can show there are no more
    (for records written before the call, as when the producers have stopped, a second
    is plenty: they are fetched at once).

    No consumer group is used (manual assignment + seek to beginning), so nothing is committed.
    If the topic does not exist yet, waits for it (it is never auto-created by this call).
    Returns whatever arrived when ``timeout`` expires; may return more than ``count``.
    """
    deadline = time.monotonic() + timeout
    records: list[ConsumerRecord[bytes, bytes]] = []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        parts = await _wait_for_topic(admin, topic, deadline)
    finally:
        await admin.close()
    if parts is None:
        return records
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        settling = False
        while True:
            now = time.monotonic()
            if len(records) >= count and not settling:
                settling = True  # count reached: read on for ``settle`` more at most
                deadline = min(deadline, now + settle)
            remaining = deadline - now
            if remaining <= 0:
                break
            batch = await consumer.getmany(timeout_ms=max(1, int(min(remaining, 1.0) * 1000)))
            for tp_records in batch.values():
                records.extend(tp_records)
    finally:
        await consumer.stop()
    return records
