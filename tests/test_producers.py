"""The producer cache: equal configs share one producer, a changed config gets its own,
and a producer no config uses any more is flushed and closed (no leaked task or socket)."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from kafka_log_middleware.aiokafka_backend import AiokafkaProducer
from kafka_log_middleware.producers import ProducerCache, cache_for_running_loop
from tests.asgi_driver import http_scope, lifespan, request
from tests.kafka_helpers import consume, unique_topic
from tests.polling import eventually
from tests.servers import free_port

pytestmark = pytest.mark.timeout(120)


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def app() -> Starlette:
    return Starlette(routes=[Route("/", ok)])


def aiokafka_closed(aio: Any) -> bool:
    """True when an aiokafka producer is stopped: sender task done, no open connection."""
    connections = aio.client._conns.values()
    return bool(
        aio._closed
        and aio._sender.sender_task.done()
        and aio.client._sync_task is None
        and not any(conn.connected() for conn in connections)
    )


@pytest.mark.kafka
async def test_equal_configs_share_a_producer_and_a_changed_config_replaces_it(
    kafka_bootstrap: str,
) -> None:
    topic = unique_topic("producers")
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,), topic=topic, producer_async_flush_timeout=20
    )
    first = KafkaLogMiddleware(app(), config)
    second = KafkaLogMiddleware(app(), KafkaLogConfig(**{**vars(config)}))
    tasks_before = asyncio.all_tasks()
    cache = cache_for_running_loop()
    async with lifespan(first), lifespan(second):
        [shared] = first.producers()
        assert second.producers() == [shared]
        assert shared.refs == 2 and cache.producers() == [shared]
        assert await shared.wait_ready(30)
        assert isinstance(shared, AiokafkaProducer)
        old_aio = shared._producer
        assert old_aio._sender._request_timeout_ms == config.producer_request_timeout
        for middleware in (first, second):
            assert (await request(middleware, http_scope("/"))).status == 200
        await eventually(lambda: first.stats()["delivered"] == second.stats()["delivered"] == 1)

        # A changed producer setting: the first middleware gets a new producer; the old one
        # stays open while the second middleware still uses it.
        first.update_config(producer_request_acks=-1)
        assert (await request(first, http_scope("/"))).status == 200
        await eventually(lambda: first.producers() != [shared])
        [replacement] = first.producers()
        assert replacement is not shared and not shared.closed
        await eventually(lambda: first.stats()["delivered"] == 2)

        # Once the second one switches too, the old producer has no user: flushed and closed.
        second.update_config(first.config)
        assert (await request(second, http_scope("/"))).status == 200
        await eventually(lambda: second.producers() == [replacement])
        await eventually(lambda: shared.closed and aiokafka_closed(old_aio))
        assert cache.producers() == [replacement] and replacement.refs == 2
        await eventually(lambda: second.stats()["delivered"] == 2)
        assert isinstance(replacement, AiokafkaProducer)
        new_aio = replacement._producer

    assert cache.producers() == []
    assert replacement.closed and aiokafka_closed(new_aio)
    assert asyncio.all_tasks() == tasks_before  # no publisher, connector or sender left behind
    records = await consume(kafka_bootstrap, topic, 5, timeout=5)
    assert len(records) == 4


@pytest.mark.kafka
async def test_topic_only_change_keeps_the_producer(kafka_bootstrap: str) -> None:
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=unique_topic("a"),
        producer_async_flush_timeout=20,
    )
    middleware = KafkaLogMiddleware(app(), config)
    async with lifespan(middleware):
        [producer] = middleware.producers()
        middleware.update_config(topic=unique_topic("b"), log_format="kong3")
        await request(middleware, http_scope("/"))
        await eventually(lambda: middleware.stats()["delivered"] == 1)
        assert middleware.producers() == [producer] and not producer.closed


async def test_cache_is_per_event_loop() -> None:
    async def cache_in_new_loop() -> ProducerCache:
        return cache_for_running_loop()

    here = cache_for_running_loop()
    assert cache_for_running_loop() is here
    other = await asyncio.to_thread(asyncio.run, cache_in_new_loop())
    assert other is not here


async def test_release_of_an_unreachable_producer_is_bounded() -> None:
    config = KafkaLogConfig(
        bootstrap_servers=(f"127.0.0.1:{free_port()}",), topic="t", shutdown_timeout=300
    )
    cache = ProducerCache()
    producer = cache.acquire(config)
    assert cache.acquire(config) is producer and producer.refs == 2
    cache.release(producer, 0.3)
    assert not producer.closed
    cache.release(producer, 0.3)
    await asyncio.wait_for(cache.wait_closed(), 5)
    assert producer.closed and cache.producers() == []


def _serve_in_forked_child(middleware: KafkaLogMiddleware, results: Any) -> None:
    async def child() -> dict[str, int]:
        async with lifespan(middleware):
            for _ in range(3):
                await request(middleware, http_scope("/"))
        return middleware.stats()

    results.put(asyncio.run(child()))


@pytest.mark.kafka
def test_forked_worker_gets_its_own_producer_and_buffer(kafka_bootstrap: str) -> None:
    topic = unique_topic("fork")
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,), topic=topic, producer_async_flush_timeout=60000
    )
    middleware = KafkaLogMiddleware(app(), config)
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    async def parent() -> None:
        async with lifespan(middleware):
            await request(middleware, http_scope("/"))
            assert middleware.stats()["pending"] == 1
            # Fork while the parent holds a buffered entry and a live producer.
            child = context.Process(target=_serve_in_forked_child, args=(middleware, results))
            child.start()
            child_stats = await asyncio.to_thread(results.get, True, 60)
            await asyncio.to_thread(child.join, 60)
            assert child.exitcode == 0
            assert child_stats["enqueued"] == child_stats["delivered"] == 3
            assert child_stats["pending"] == 0

    asyncio.run(parent())
    assert middleware.stats()["delivered"] == 1
    records = asyncio.run(consume(kafka_bootstrap, topic, 5, timeout=5))
    assert len(records) == 4  # the parent's entry once, the child's three: no duplicate


@pytest.mark.kafka
async def test_confluent_producer_closes_without_leftovers(kafka_bootstrap: str) -> None:
    from kafka_log_middleware.confluent import ConfluentProducer

    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=unique_topic("confluent"),
        producer_backend="confluent",
        producer_async_flush_timeout=20,
    )
    tasks_before = asyncio.all_tasks()
    middleware = KafkaLogMiddleware(app(), config)
    async with lifespan(middleware):
        [producer] = middleware.producers()
        assert isinstance(producer, ConfluentProducer)
        assert await producer.wait_ready(30)
        await request(middleware, http_scope("/"))
        await eventually(lambda: middleware.stats()["delivered"] == 1)
        poller = producer._poller
        assert poller is not None and not poller.done()
    assert producer.closed and poller.done() and producer._producer is None
    assert asyncio.all_tasks() == tasks_before
