"""Kafka unreachable: requests still succeed without waiting, every entry is accounted for,
and what was buffered is delivered once the broker appears (or comes back)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from tests.kafka_helpers import BrokerFactory, consume, unique_topic
from tests.polling import wait_until
from tests.servers import serve

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def balanced(stats: dict[str, int]) -> bool:
    settled = stats["delivered"] + stats["dropped"] + stats["uncertain"]
    return stats["enqueued"] == settled + stats["skipped_should_log"] + stats["pending"]


async def send_requests(base_url: str, numbers: range) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        for n in numbers:
            response = await client.get("/", params={"n": n})
            assert response.status_code == 200 and response.text == "hello"


def request_numbers(records: list[object]) -> list[int]:
    return [
        int(orjson.loads(record.value)["request"]["querystring"]["n"])  # type: ignore[attr-defined]
        for record in records
    ]


def test_requests_succeed_without_a_broker_and_buffered_entries_arrive_later(
    kafka_broker_factory: BrokerFactory, backend: str
) -> None:
    broker = kafka_broker_factory()  # its port is chosen, nothing listens there yet
    topic = unique_topic("late-broker")
    config = KafkaLogConfig(
        bootstrap_servers=(broker.bootstrap_servers,),
        topic=topic,
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=20,
        producer_async_buffering_limits_messages_in_memory=50,
    )
    middleware = KafkaLogMiddleware(Starlette(routes=[Route("/", hello)]), config)
    with serve(middleware) as base_url:
        asyncio.run(send_requests(base_url, range(80)))
        # Every response was served while the producer had never connected: none waited.
        [producer] = middleware.producers()
        assert not producer.ready
        stats = middleware.stats()
        assert stats["enqueued"] == 80 and stats["delivered"] == 0
        assert stats["pending"] == 50 and stats["dropped_buffer_full"] == 30
        assert balanced(stats)

        broker.start()
        wait_until(lambda: middleware.stats()["pending"] == 0)
        stats = middleware.stats()
        assert stats["delivered"] == 50 and stats["dropped"] == 30 and balanced(stats)

    records = asyncio.run(consume(broker.bootstrap_servers, topic, 50, timeout=5, settle=1))
    assert sorted(request_numbers(records)) == list(range(50))  # the first 50, each once


def test_broker_restart_is_recovered_without_reload(
    kafka_broker_factory: BrokerFactory, backend: str
) -> None:
    broker = kafka_broker_factory()
    broker.start()
    topic = unique_topic("restart")
    config = KafkaLogConfig(
        bootstrap_servers=(broker.bootstrap_servers,),
        topic=topic,
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=20,
        timeout=2000,
        producer_request_retries_backoff_timeout=200,
    )
    middleware = KafkaLogMiddleware(Starlette(routes=[Route("/", hello)]), config)
    with serve(middleware) as base_url:
        asyncio.run(send_requests(base_url, range(10)))
        wait_until(lambda: middleware.stats()["delivered"] == 10)
        broker.kill()
        asyncio.run(send_requests(base_url, range(10, 30)))
        assert middleware.stats()["enqueued"] == 30
        broker.start()
        wait_until(lambda: middleware.stats()["pending"] == 0, timeout=90)
        stats = middleware.stats()
        assert stats["delivered"] == 30 and stats["dropped"] == 0, stats

    records = asyncio.run(consume(broker.bootstrap_servers, topic, 30, timeout=5, settle=1))
    assert sorted(request_numbers(records)) == list(range(30))
