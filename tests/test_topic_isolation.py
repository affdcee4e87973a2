"""A topic's trouble stays that topic's: entries for a topic that cannot be produced to
(missing on a broker that does not create topics) are retried and then counted, while
the entries for every other topic sharing the producer flow on, also at shutdown; and
hundreds of topics chosen per request all get their entries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from devtools.kafka_broker import KafkaBroker
from kafka_log_middleware import CapturedRequest, KafkaLogConfig, KafkaLogMiddleware
from tests.asgi_driver import http_scope, lifespan, request
from tests.kafka_helpers import consume, create_topic, unique_topic
from tests.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def app() -> Starlette:
    return Starlette(routes=[Route("/{name}", ok)])


@pytest.fixture(scope="module")
def strict_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker that never creates a topic by itself (``auto.create.topics.enable=false``)."""
    broker = KafkaBroker(
        workdir=tmp_path_factory.mktemp("kafka-strict"),
        extra_properties={"auto.create.topics.enable": "false"},
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def routed(base: KafkaLogConfig, topics: dict[str, str]) -> Any:
    """A resolver sending ``/<name>`` to ``topics[name]`` (the base topic otherwise)."""
    configs = {name: base.replace(topic=topic) for name, topic in topics.items()}

    def resolve(captured: CapturedRequest) -> KafkaLogConfig | None:
        return configs.get(captured.scope["path"].strip("/"))

    return resolve


def numbers(records: list[Any]) -> list[int]:
    return sorted(int(orjson.loads(r.value)["request"]["querystring"]["n"]) for r in records)


async def test_a_missing_topic_does_not_hold_up_the_others(
    strict_broker: KafkaBroker, backend: str
) -> None:
    bootstrap = strict_broker.bootstrap_servers
    good = unique_topic("good")
    await create_topic(bootstrap, good)
    base = KafkaLogConfig(
        bootstrap_servers=(bootstrap,),
        topic=good,
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=20,
        timeout=3000,  # each attempt waits this long for the missing topic's metadata
        producer_request_retries_max_attempts=3,
        shutdown_timeout=2000,
    )
    missing = unique_topic("missing")
    middleware = KafkaLogMiddleware(app(), base, config_resolver=routed(base, {"bad": missing}))
    async with lifespan(middleware):
        [producer] = middleware.producers()
        assert await producer.wait_ready(30)
        for n in range(10):
            await request(middleware, http_scope("/bad", query=f"n={n}".encode()))
            await request(middleware, http_scope("/good", query=f"n={n}".encode()))
        # The good topic's entries arrive while the missing topic's still wait for metadata.
        await eventually(lambda: middleware.stats()["delivered"] == 10)
        assert middleware.stats()["pending"] == 10
        # The missing topic's entries are retried, then counted.
        await eventually(lambda: middleware.stats()["pending"] == 0, timeout=60)
        stats = middleware.stats()
        assert stats["delivered"] == 10 and stats["dropped_kafka_error"] == 10, stats
        # At shutdown, entries for the missing topic cannot take their neighbours with them.
        for n in range(10, 20):
            await request(middleware, http_scope("/bad", query=f"n={n}".encode()))
            await request(middleware, http_scope("/good", query=f"n={n}".encode()))
    stats = middleware.stats()
    assert stats["delivered"] == 20 and stats["dropped"] == 20 and stats["pending"] == 0, stats
    assert stats["uncertain"] == 0 and stats["retried"] == 0, stats
    assert numbers(await consume(bootstrap, good, 20, timeout=10)) == list(range(20))


async def test_hundreds_of_new_topics_through_a_resolver(
    kafka_bootstrap: str, backend: str
) -> None:
    """Each request picks its own, new topic (the broker creates it on first use)."""
    base = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=unique_topic("base"),
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=20,
    )
    topics = {f"t{i}": unique_topic(f"many-{i}") for i in range(200)}
    middleware = KafkaLogMiddleware(app(), base, config_resolver=routed(base, topics))
    async with lifespan(middleware):
        for round_ in range(2):
            for name in topics:
                await request(middleware, http_scope(f"/{name}", query=f"n={round_}".encode()))
        await eventually(lambda: middleware.stats()["pending"] == 0, timeout=120)
        stats = middleware.stats()
        assert stats["delivered"] == 400 and stats["dropped"] == 0, stats
        assert len(middleware.producers()) == 1
    sample = list(topics.values())[::40]
    found = await asyncio.gather(*(consume(kafka_bootstrap, t, 2, timeout=10) for t in sample))
    assert [numbers(records) for records in found] == [[0, 1]] * len(sample)
