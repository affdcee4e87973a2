"""The pipeline every door shares, without a broker (scripted producers): the arguments a
door takes, one publisher per event loop, a forked worker starting afresh, a config
change, ``aclose`` and the flush at exit."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from kafka_log_middleware import KafkaLogConfig
from kafka_log_middleware.pipeline import Pipeline, config_of, update_config_of
from tests.polling import eventually
from tests.scripted import Scripted, captured, config

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with Scripted().installed() as maker:
        yield maker


# -- the arguments a door takes ---------------------------------------------------------


def test_config_of_takes_a_config_or_its_fields_not_both() -> None:
    settings = config()
    assert config_of(settings, {}) is settings
    assert config_of(None, {"bootstrap_servers": "k:9092", "topic": "t"}).topic == "t"
    with pytest.raises(TypeError, match="either config or its fields"):
        config_of(settings, {"topic": "t"})
    with pytest.raises(TypeError, match="not dict"):
        config_of({"topic": "t"}, {})


def test_update_config_of_replaces_or_changes_the_current_config() -> None:
    current = config()
    other = config(topic="other")
    assert update_config_of(current, other, {}) is other
    assert update_config_of(current, None, {"topic": "x"}).topic == "x"
    with pytest.raises(TypeError, match="either config or changes"):
        update_config_of(current, other, {"topic": "x"})
    with pytest.raises(TypeError, match="no valid configuration to change"):
        update_config_of(None, None, {"topic": "x"})
    with pytest.raises(ValueError, match=r"^topic"):
        update_config_of(current, None, {"topic": "a b"})


# -- publishers per loop ----------------------------------------------------------------


async def test_one_publisher_per_loop_and_entries_reach_the_producer(scripted: Scripted) -> None:
    pipeline = Pipeline(config())
    pipeline.start()
    first = pipeline.publisher
    pipeline.start()  # same loop: nothing new
    assert pipeline.publisher is first is not None
    for number in range(3):
        pipeline.buffer.put(captured(number, pipeline.config))
    await eventually(lambda: pipeline.stats()["delivered"] == 3)
    assert pipeline.producers() == scripted.made
    await pipeline.aclose()
    assert pipeline.publisher is None and pipeline.stats()["pending"] == 0


def test_a_loop_that_ended_is_taken_over_by_the_next(scripted: Scripted) -> None:
    scripted.ready = False  # nothing goes in the first loop
    pipeline = Pipeline(config())

    async def serve() -> None:
        pipeline.start()
        pipeline.buffer.put(captured(0, pipeline.config))

    asyncio.run(serve())
    assert pipeline.stats()["pending"] == 1
    scripted.ready = True

    async def next_loop() -> None:
        pipeline.start()
        await eventually(lambda: pipeline.stats()["delivered"] == 1)
        await pipeline.aclose()

    asyncio.run(next_loop())
    assert scripted.made[0].closed  # abandoned with its loop


async def test_a_forked_worker_starts_with_its_own_buffer(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = Pipeline(config())
    pipeline.buffer.put(captured(0, pipeline.config))  # the parent's: never started here
    monkeypatch.setattr(os, "getpid", lambda: -1)
    pipeline.start()
    assert pipeline.stats()["enqueued"] == 0
    await pipeline.aclose()


# -- runtime control --------------------------------------------------------------------


async def test_a_config_change_applies_to_new_requests_and_the_bound(scripted: Scripted) -> None:
    pipeline = Pipeline(config(producer_async_buffering_limits_messages_in_memory=5))
    changed = config(topic="other", producer_async_buffering_limits_messages_in_memory=1)
    pipeline.update_config(changed)
    assert pipeline.config is changed
    pipeline.buffer.put(captured(0, pipeline.config))
    pipeline.buffer.put(captured(1, pipeline.config))
    assert pipeline.stats()["dropped_buffer_full"] == 1
    await pipeline.aclose()


def test_the_exit_flush_sends_what_an_ended_loop_left(scripted: Scripted) -> None:
    scripted.ready = False
    pipeline = Pipeline(config())

    async def serve() -> None:
        pipeline.start()
        for number in range(2):
            pipeline.buffer.put(captured(number, pipeline.config))

    asyncio.run(serve())
    scripted.ready = True
    pipeline._exit()  # what atexit calls
    stats = pipeline.stats()
    assert (stats["delivered"], stats["pending"]) == (2, 0), stats
    assert pipeline.publisher is None


def test_repr_shows_the_config() -> None:
    settings = KafkaLogConfig(bootstrap_servers=("k:9092",), topic="t")
    assert repr(Pipeline(settings)) == f"Pipeline({settings!r})"
