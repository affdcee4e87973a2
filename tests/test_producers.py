"""The producer cache: equal configs share one producer, a changed config gets its own,
and a producer no config uses any more is flushed and closed (no leaked task or socket)."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any, ClassVar

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


# -- guards against stuck clients ------------------------------------------------------


class _Batch:
    """aiokafka's batch builder, as much of it as the backend uses."""

    def append(self, key: bytes | None, value: bytes, timestamp: None) -> object:
        return object()

    def close(self) -> None:
        pass


class StuckClient:
    """An ``AIOKafkaProducer`` stand-in that takes batches and never reports them unless a
    test settles their futures (as aiokafka #1101's idempotent producer with its broker
    gone)."""

    made: ClassVar[list[StuckClient]] = []

    def __init__(self, **options: Any) -> None:
        self._sender = type("Sender", (), {})()
        self.client = type("Client", (), {})()
        self.client.cluster = type("Cluster", (), {"available_partitions_for_topic": _one})()
        self.futures: list[asyncio.Future[Any]] = []
        self.stopped = False
        StuckClient.made.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def _one(_cluster: Any, _topic: str) -> set[int]:
    return {0}


@pytest.fixture
def stuck_clients(monkeypatch: pytest.MonkeyPatch) -> list[StuckClient]:
    """aiokafka replaced by ``StuckClient``; a guard of ~0.1 s past the client's timeouts."""
    from kafka_log_middleware import aiokafka_backend, producers

    StuckClient.made = []
    monkeypatch.setattr(aiokafka_backend, "AIOKafkaProducer", StuckClient)
    monkeypatch.setattr(producers, "GUARD_MARGIN", 0.1)
    return StuckClient.made


def guarded_config() -> KafkaLogConfig:
    return KafkaLogConfig(
        bootstrap_servers=("127.0.0.1:9",),
        topic="t",
        timeout=10,
        producer_request_timeout=1,
        delivery="at_least_once",
    )


class Reports:
    """A delivery report that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, Any]] = []

    def __call__(self, delivered: int, failed: list[Any], failure: Any, resent: bool) -> None:
        self.calls.append((delivered, len(failed), failure))


async def test_a_batch_never_reported_fails_after_the_guard_and_the_client_is_replaced(
    stuck_clients: list[StuckClient],
) -> None:
    producer = AiokafkaProducer(guarded_config())
    assert await producer.wait_ready(1.0)
    reports = Reports()
    await producer.send("t", [(None, b"one"), (None, b"two")], reports)
    await eventually(lambda: reports.calls != [], timeout=5)
    [(delivered, failed, failure)] = reports.calls
    assert (delivered, failed, failure.verdict.value, failure.maybe_written) == (
        0,
        2,
        "retry",
        True,
    )
    assert failure.cause == "NoDeliveryReport"
    await eventually(lambda: producer.ready and len(stuck_clients) == 2, timeout=5)
    assert producer.replaced == 1
    await eventually(lambda: stuck_clients[0].stopped, timeout=5)
    stuck_clients[0].futures[0].set_result(None)  # the old client's late report is ignored
    await asyncio.sleep(0)
    assert len(reports.calls) == 1
    second = Reports()
    await producer.send("t", [(None, b"three")], second)  # on the new client
    await eventually(lambda: len(stuck_clients[1].futures) == 1, timeout=5)
    stuck_clients[1].futures[0].set_result(None)
    await eventually(lambda: second.calls == [(1, 0, None)], timeout=5)
    await producer.close(1.0)


async def test_an_out_of_sequence_idempotent_client_is_replaced_and_its_batch_retried(
    stuck_clients: list[StuckClient],
) -> None:
    from aiokafka.errors import OutOfOrderSequenceNumber

    producer = AiokafkaProducer(guarded_config())
    assert await producer.wait_ready(1.0)
    reports = Reports()
    await producer.send("t", [(None, b"one")], reports)
    await eventually(lambda: len(stuck_clients[0].futures) == 1, timeout=5)
    stuck_clients[0].futures[0].set_exception(OutOfOrderSequenceNumber())
    await eventually(lambda: reports.calls != [], timeout=5)
    [(_, failed, failure)] = reports.calls
    assert (failed, failure.verdict.value, failure.cause) == (
        1,
        "retry",
        "OutOfOrderSequenceNumber",
    )
    await eventually(lambda: producer.ready and producer.replaced == 1, timeout=5)
    await producer.close(1.0)


@pytest.mark.kafka
async def test_a_fatal_librdkafka_error_replaces_the_client(kafka_bootstrap: str) -> None:
    import confluent_kafka

    from kafka_log_middleware.confluent import ConfluentProducer

    topic = unique_topic("fatal")
    producer = ConfluentProducer(
        KafkaLogConfig(
            bootstrap_servers=(kafka_bootstrap,),
            topic=topic,
            producer_backend="confluent",
            delivery="at_least_once",
        )
    )
    assert await producer.wait_ready(30)
    first = producer._producer
    producer._on_error(
        confluent_kafka.KafkaError(confluent_kafka.KafkaError._FATAL, "injected", fatal=True)
    )
    await eventually(lambda: producer.replaced == 1 and producer.ready, timeout=30)
    assert producer._producer is not first
    reports = Reports()
    await producer.send(topic, [(None, b"after")], reports)
    await eventually(lambda: reports.calls == [(1, 0, None)], timeout=30)
    await producer.close(5.0)
    assert [r.value for r in await consume(kafka_bootstrap, topic, 1)] == [b"after"]
