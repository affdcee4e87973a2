"""The publisher's logic against a scripted producer, without a broker: how many attempts,
when a batch or a retry is handed over, which entries go together, and how every entry
is counted (delivered, dropped with which reason, uncertain, retried), down to shutdown
and the exit flush's take-over from a loop that is gone."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest

from kafka_log_middleware import _log, serializer
from kafka_log_middleware import publisher as publisher_module
from kafka_log_middleware.buffer import LogBuffer
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import KafkaLogConfig
from kafka_log_middleware.gateway import upstream
from kafka_log_middleware.producers import SLICE_SECONDS, Verdict
from kafka_log_middleware.publisher import Publisher, Resolver
from kafka_log_middleware.serializer import encode_entry
from tests.scripted import (
    CLOSE_TIMEOUT,
    DELIVER,
    RETRY,
    RETRY_MAYBE_WRITTEN,
    WAIT,
    Clock,
    Deliver,
    HandOver,
    Keep,
    Outcome,
    Partial,
    Raise,
    Respond,
    Rig,
    Scripted,
    always,
    captured,
    config,
    fail,
    in_turn,
    invariant_problems,
    per_batch,
    request_number,
    sorted_batches,
)

pytestmark = pytest.mark.timeout(20)

FATAL = fail(Verdict.FATAL)
TOO_LARGE = fail(Verdict.TOO_LARGE)
SPLIT = fail(Verdict.SPLIT)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    """Scripted producers in place of the real backends, for this test."""
    with Scripted().installed() as maker:
        yield maker


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The publisher's monotonic clock, moved on by the test (flush timer, backoff)."""
    fake = Clock()
    monkeypatch.setattr(publisher_module, "time", fake)
    return fake


@pytest.fixture(params=[False, True], ids=["sync-report", "later-report"])
def reporting(request: pytest.FixtureRequest, scripted: Scripted) -> Scripted:
    """Each way a producer answers: from inside ``send``, or from a later loop callback."""
    scripted.asynchronous = bool(request.param)
    return scripted


# -- attempts -------------------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 2, 4])
async def test_a_retriable_failure_gets_exactly_max_attempts_then_kafka_error(
    reporting: Scripted, max_attempts: int
) -> None:
    """Kong's max_attempts counts attempts, not retries: exactly that many, then kafka_error."""
    reporting.respond = always(RETRY)
    settings = config(
        producer_request_retries_max_attempts=max_attempts,
        producer_request_limits_messages_per_request=3,
    )
    async with Rig(reporting, settings) as rig:
        rig.put(3)
        await rig.settled()
        await rig.quiet()  # no attempt after the last
        assert rig.batches() == [[0, 1, 2]] * max_attempts
        assert rig.counts("dropped", "dropped_kafka_error", "delivered", "retried") == {
            "dropped": 3,
            "dropped_kafka_error": 3,
            "delivered": 0,
            "retried": 0,
        }


async def test_the_last_attempt_may_still_deliver(reporting: Scripted) -> None:
    """The last allowed attempt is made, and its success counts as delivered."""
    reporting.respond = in_turn(RETRY, RETRY, then=DELIVER)
    settings = config(producer_request_retries_max_attempts=3)
    async with Rig(reporting, settings) as rig:
        rig.put(1)
        await rig.settled()
        assert rig.batches() == [[0], [0], [0]]
        assert rig.counts("delivered", "dropped", "retried") == {
            "delivered": 1,
            "dropped": 0,
            "retried": 0,
        }
        assert reporting.delivered_ids() == [0]


async def test_fatal_is_never_retried(reporting: Scripted) -> None:
    """A refusal for good (authorization, bad topic) is dropped at once: retrying cannot help."""
    reporting.respond = always(FATAL)
    settings = config(
        producer_request_retries_max_attempts=10, producer_request_limits_messages_per_request=2
    )
    async with Rig(reporting, settings) as rig:
        rig.put(2)
        await rig.settled()
        await rig.quiet()
        assert rig.batches() == [[0, 1]]
        assert rig.counts("dropped_kafka_error", "dropped") == {
            "dropped_kafka_error": 2,
            "dropped": 2,
        }


async def test_an_entry_over_the_limit_is_handed_over_truncated(scripted: Scripted) -> None:
    """Cut to ``max_entry_bytes`` before it reaches the producer, counted as truncated
    and then delivered; its neighbours go as they are."""
    padding = {"padding": lambda request: "p" * (10_000 if request_number(request) else 10)}
    settings = config(max_entry_bytes=2000, custom_fields=padding)
    async with Rig(scripted, settings) as rig:
        rig.put(2)
        await rig.settled()
        [handover] = rig.handovers()
        small, big = (orjson.loads(value) for _key, value in handover.messages)
        assert rig.batches() == [[0, 1]]
        assert len(handover.messages[1][1]) <= 2000 and small["padding"] == "p" * 10
        assert big["truncated"]["fields"] == ["padding"]
        assert rig.counts("delivered", "truncated", "dropped") == {
            "delivered": 2,
            "truncated": 1,
            "dropped": 0,
        }


async def test_an_entry_even_its_skeleton_over_the_limit_is_dropped_as_too_large(
    scripted: Scripted,
) -> None:
    async with Rig(scripted, config(max_entry_bytes=100)) as rig:
        rig.put(1)
        await rig.settled()
        assert rig.batches() == []
        assert rig.counts("dropped_too_large", "truncated") == {
            "dropped_too_large": 1,
            "truncated": 0,
        }


async def test_too_large_is_dropped_as_too_large_and_not_retried(reporting: Scripted) -> None:
    """An entry over a size limit can never go: dropped once, as too_large."""
    reporting.respond = always(TOO_LARGE)
    async with Rig(reporting, config(producer_request_retries_max_attempts=10)) as rig:
        rig.put(1)
        await rig.settled()
        await rig.quiet()
        assert rig.batches() == [[0]]
        assert rig.counts("dropped_too_large", "dropped") == {"dropped_too_large": 1, "dropped": 1}


def _split_around(big: int, then: Outcome = DELIVER) -> Respond:
    """The broker refuses any batch with entry ``big`` in it as too large (SPLIT, even
    alone, as a broker does); other batches get ``then``."""

    def respond(handover: HandOver) -> Outcome:
        return SPLIT if big in handover.ids else then

    return respond


async def test_a_refused_batch_is_split_until_the_big_entry_is_alone(
    reporting: Scripted,
) -> None:
    """One entry the broker refuses as too large does not take its neighbours with it."""
    reporting.respond = _split_around(3)
    # One attempt only: splitting is not retrying, halves do not use attempts up.
    settings = config(
        producer_request_retries_max_attempts=1, producer_request_limits_messages_per_request=5
    )
    async with Rig(reporting, settings) as rig:
        rig.put(5)
        await rig.settled()
        assert rig.batches()[0] == [0, 1, 2, 3, 4]
        assert sorted_batches(rig.batches()) == sorted_batches(
            [[0, 1, 2, 3, 4], [0, 1], [2, 3, 4], [2], [3, 4], [3], [4]]
        )
        assert rig.counts("delivered", "dropped_too_large", "dropped", "retried") == {
            "delivered": 4,
            "dropped_too_large": 1,
            "dropped": 1,
            "retried": 0,
        }
        assert reporting.delivered_ids() == [0, 1, 2, 4]


async def test_split_halves_keep_the_attempt_number(reporting: Scripted) -> None:
    """A split is not a failed attempt: the halves keep the whole batch's attempts."""
    # Each half that does not hold the big entry fails once, then gets through: with two
    # attempts, that only works if the halves are still at their first attempt.
    retry_once = per_batch(RETRY, then=DELIVER)

    def respond(handover: HandOver) -> Outcome:
        return SPLIT if 1 in handover.ids else retry_once(handover)

    reporting.respond = respond
    settings = config(
        producer_request_retries_max_attempts=2, producer_request_limits_messages_per_request=4
    )
    async with Rig(reporting, settings) as rig:
        rig.put(4)
        await rig.settled()
        assert sorted_batches(rig.batches()) == sorted_batches(
            [[0, 1, 2, 3], [0, 1], [2, 3], [2, 3], [0], [0], [1]]
        )
        assert rig.counts("delivered", "dropped_too_large", "dropped_kafka_error") == {
            "delivered": 3,
            "dropped_too_large": 1,
            "dropped_kafka_error": 0,
        }


async def test_a_partial_failure_retries_exactly_the_failed_entries(reporting: Scripted) -> None:
    """Entries reported delivered are never sent again; the failed ones are."""
    reporting.respond = in_turn(Partial(2, RETRY), then=DELIVER)
    settings = config(producer_request_limits_messages_per_request=4)
    async with Rig(reporting, settings) as rig:
        rig.put(4)
        await rig.settled()
        assert rig.batches() == [[0, 1, 2, 3], [2, 3]]
        assert rig.counts("delivered", "dropped") == {"delivered": 4, "dropped": 0}


async def test_a_producer_that_raises_from_send_is_retried(scripted: Scripted) -> None:
    """A backend that raises is one failed attempt, retried like any other."""
    scripted.respond = in_turn(Raise(RuntimeError("backend broke")), then=DELIVER)
    async with Rig(scripted, config(producer_request_retries_max_attempts=2)) as rig:
        rig.put(1)
        await rig.settled()
        assert rig.batches() == [[0], [0]]
        assert rig.counts("delivered", "dropped", "retried") == {
            "delivered": 1,
            "dropped": 0,
            "retried": 0,
        }


async def test_a_producer_that_always_raises_uses_every_attempt(scripted: Scripted) -> None:
    """A backend that keeps raising ends in kafka_error after the attempts, not in a loop."""
    scripted.respond = always(Raise(RuntimeError("backend broke")))
    async with Rig(scripted, config(producer_request_retries_max_attempts=3)) as rig:
        rig.put(1)
        await rig.settled()
        await rig.quiet()
        assert rig.batches() == [[0], [0], [0]]
        assert rig.counts("dropped_kafka_error", "uncertain") == {
            "dropped_kafka_error": 1,
            "uncertain": 0,
        }


# -- backoff --------------------------------------------------------------------------


async def test_a_retry_waits_for_the_backoff(scripted: Scripted, clock: Clock) -> None:
    """A retry is not handed over before producer_request_retries_backoff_timeout."""
    scripted.respond = in_turn(RETRY, then=DELIVER)
    settings = config(
        producer_request_retries_backoff_timeout=60_000, producer_request_retries_max_attempts=2
    )
    async with Rig(scripted, settings) as rig:
        rig.put(1)
        await rig.handed_over(1)
        await rig.quiet()
        assert len(rig.handovers()) == 1
        clock.advance(50)  # 10 s of the backoff left
        rig.buffer.wake()
        await rig.quiet()
        assert len(rig.handovers()) == 1
        clock.advance(10.001)
        rig.buffer.wake()
        await rig.settled()
        assert rig.batches() == [[0], [0]]
        assert rig.counts("delivered") == {"delivered": 1}


async def test_attempts_are_spaced_by_at_least_the_backoff(scripted: Scripted) -> None:
    """On the real clock, attempts are at least the backoff apart (a lower bound only)."""
    scripted.respond = always(RETRY)
    backoff = 0.03
    settings = config(
        producer_request_retries_backoff_timeout=int(backoff * 1000),
        producer_request_retries_max_attempts=3,
    )
    async with Rig(scripted, settings) as rig:
        rig.put(1)
        await rig.settled()
        times = [h.at for h in rig.handovers()]
        assert len(times) == 3
        # A lower bound the publisher guarantees (never an upper one: the machine is shared).
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert all(gap >= backoff - 1e-6 for gap in gaps), gaps


async def test_a_retry_is_not_delayed_by_the_backoff_at_shutdown(scripted: Scripted) -> None:
    """At shutdown a waiting retry goes at once: the backoff must not eat shutdown_timeout."""
    scripted.respond = in_turn(RETRY, then=DELIVER)
    settings = config(producer_request_retries_backoff_timeout=60_000)
    async with Rig(scripted, settings) as rig:
        rig.put(1)
        await rig.handed_over(1)
        await rig.close()
        assert rig.batches() == [[0], [0]]
        assert rig.counts("delivered", "dropped") == {"delivered": 1, "dropped": 0}


# -- flush timer and batch trigger ----------------------------------------------------


async def test_entries_below_a_batch_wait_for_the_flush_timer(
    scripted: Scripted, clock: Clock
) -> None:
    """Fewer entries than a batch wait for Kong's flush timer, and not longer."""
    settings = config(
        producer_async_flush_timeout=60_000, producer_request_limits_messages_per_request=10
    )
    async with Rig(scripted, settings) as rig:
        rig.put(3)
        await rig.encoded()
        await rig.quiet()
        assert rig.handovers() == []
        clock.advance(50)  # 10 s of the flush timer left
        rig.buffer.wake()
        await rig.quiet()
        assert rig.handovers() == []
        clock.advance(10.001)
        rig.buffer.wake()
        await rig.settled()
        assert rig.batches() == [[0, 1, 2]]


async def test_the_flush_timer_is_a_lower_bound(scripted: Scripted) -> None:
    """On the real clock, an entry below a batch waits at least the flush timer."""
    flush = 0.05
    settings = config(producer_async_flush_timeout=int(flush * 1000))
    async with Rig(scripted, settings) as rig:
        put_at = time.monotonic()
        rig.put(1)
        await rig.settled()
        [handover] = rig.handovers()
        assert handover.at - put_at >= flush - 1e-6


async def test_a_full_batch_goes_at_once_and_close_sends_the_rest(scripted: Scripted) -> None:
    """A full batch does not wait for the flush timer; close does not wait for it either."""
    settings = config(
        producer_async_flush_timeout=60_000, producer_request_limits_messages_per_request=5
    )
    async with Rig(scripted, settings) as rig:
        rig.put(4)
        await rig.encoded()
        await rig.quiet()
        assert rig.handovers() == []  # 4 of 5: waiting for the (long) flush timer
        assert rig.counts("pending", "delivered") == {"pending": 4, "delivered": 0}
        rig.put(1)
        await rig.settled()
        assert rig.batches() == [[0, 1, 2, 3, 4]]
        rig.put(2)
        await rig.encoded()
        await rig.quiet()
        assert len(rig.handovers()) == 1
        await rig.close()
        assert rig.batches() == [[0, 1, 2, 3, 4], [5, 6]]
        assert rig.counts("delivered", "dropped") == {"delivered": 7, "dropped": 0}


async def test_producer_async_false_sends_each_entry_at_once(scripted: Scripted) -> None:
    """producer_async=False: no flush timer, each entry is handed over as it comes."""
    settings = config(producer_async=False, producer_async_flush_timeout=60_000)
    async with Rig(scripted, settings) as rig:
        rig.put(1)
        await rig.settled()
        rig.put(1)
        await rig.settled()
        assert rig.batches() == [[0], [1]]


async def test_producer_async_false_sends_each_entry_alone(scripted: Scripted) -> None:
    """producer_async=False: entries arriving together still go one per hand-over."""
    settings = config(producer_async=False, producer_async_flush_timeout=60_000)
    async with Rig(scripted, settings) as rig:
        rig.put(3)
        await rig.settled()
        assert rig.batches() == [[0], [1], [2]]


# -- outcomes: uncertain and retried --------------------------------------------------


async def test_producer_async_false_gives_each_entry_every_attempt(scripted: Scripted) -> None:
    """Sync mode hands each entry over alone as its first attempt: all attempts are used."""
    scripted.respond = always(RETRY)
    settings = config(
        producer_async=False,
        producer_request_retries_max_attempts=2,
        producer_request_retries_backoff_timeout=1,
    )
    async with Rig(scripted, settings) as rig:
        rig.put(2)
        await rig.settled()
    assert sorted_batches(h.ids for h in rig.handovers()) == [[0], [0], [1], [1]]
    assert rig.buffer.stats()["dropped_kafka_error"] == 2


async def test_a_retry_after_a_maybe_written_attempt_is_counted_retried_once(
    reporting: Scripted,
) -> None:
    """A possible duplicate is counted once per entry, however many uncertain attempts follow."""
    reporting.respond = in_turn(RETRY_MAYBE_WRITTEN, RETRY_MAYBE_WRITTEN, then=Deliver(resent=True))
    settings = config(
        producer_request_retries_max_attempts=5, producer_request_limits_messages_per_request=2
    )
    async with Rig(reporting, settings) as rig:
        rig.put(2)
        await rig.settled()
        assert rig.batches() == [[0, 1]] * 3
        assert rig.counts("delivered", "retried", "uncertain", "dropped") == {
            "delivered": 2,
            "retried": 2,
            "uncertain": 0,
            "dropped": 0,
        }


@pytest.mark.parametrize("last", [RETRY, FATAL, TOO_LARGE], ids=lambda f: f.verdict.value)
async def test_given_up_after_a_maybe_written_attempt_is_uncertain(
    reporting: Scripted, last: Outcome
) -> None:
    """Once an attempt may have reached Kafka, giving up is uncertain, never dropped."""
    # The attempt in the middle fails plainly: what the first may have written stays so.
    reporting.respond = in_turn(RETRY_MAYBE_WRITTEN, RETRY, then=last)
    settings = config(producer_request_retries_max_attempts=3)
    async with Rig(reporting, settings) as rig:
        rig.put(1)
        await rig.settled()
        assert rig.batches() == [[0], [0], [0]]
        assert rig.counts("uncertain", "dropped", "retried", "delivered") == {
            "uncertain": 1,
            "dropped": 0,
            "retried": 1,
            "delivered": 0,
        }


async def test_a_maybe_written_last_attempt_is_uncertain_and_not_retried(
    reporting: Scripted,
) -> None:
    """An uncertain last attempt is uncertain, and retried counts only actual re-sends."""
    reporting.respond = in_turn(RETRY, then=RETRY_MAYBE_WRITTEN)
    async with Rig(reporting, config(producer_request_retries_max_attempts=2)) as rig:
        rig.put(1)
        await rig.settled()
        await rig.quiet()
        assert rig.batches() == [[0], [0]]
        assert rig.counts("uncertain", "dropped", "retried") == {
            "uncertain": 1,
            "dropped": 0,
            "retried": 0,
        }


async def test_a_delivery_the_client_resent_counts_retried(reporting: Scripted) -> None:
    """A delivery the client itself re-sent may be a duplicate: counted retried."""
    reporting.respond = in_turn(Deliver(resent=True), then=DELIVER)
    settings = config(producer_request_limits_messages_per_request=3)
    async with Rig(reporting, settings) as rig:
        rig.put(3)
        await rig.settled()
        rig.put(3)
        await rig.settled()
        assert rig.batches() == [[0, 1, 2], [3, 4, 5]]
        assert rig.counts("delivered", "retried") == {"delivered": 6, "retried": 3}


async def test_split_halves_of_a_maybe_written_batch_count_retried_once(
    reporting: Scripted,
) -> None:
    """Halves of a batch that may be written count retried once, not again per split."""
    # The whole batch, then its first half, are refused after a possible write.
    maybe_split = fail(Verdict.SPLIT, maybe_written=True)
    wanted = {(0, 1, 2, 3), (0, 1)}

    def respond(handover: HandOver) -> Outcome:
        return maybe_split if tuple(handover.ids) in wanted else DELIVER

    reporting.respond = respond
    settings = config(producer_request_limits_messages_per_request=4)
    async with Rig(reporting, settings) as rig:
        rig.put(4)
        await rig.settled()
        assert sorted_batches(rig.batches()) == [[0], [0, 1], [0, 1, 2, 3], [1], [2, 3]]
        assert rig.counts("delivered", "retried", "uncertain") == {
            "delivered": 4,
            "retried": 4,
            "uncertain": 0,
        }


# -- a cluster that refuses the producer (SASL, TLS) ------------------------------------


async def test_entries_for_a_producer_the_cluster_refuses_are_dropped_security(
    scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused on every one of the attempts: the entries are dropped (``security``), not
    held until the buffer fills; once the cluster accepts the producer, entries go out."""
    _log.reset()
    scripted.refusal = "SASL authentication failed (invalid credentials)"
    async with Rig(scripted, config(producer_request_retries_max_attempts=2)) as rig:
        with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
            rig.put(3)
            await rig.until(lambda: rig.counts("dropped_security")["dropped_security"] == 3)
        assert rig.handovers() == []
        assert rig.counts("dropped", "pending") == {"dropped": 3, "pending": 0}
        assert "refuses the connection: SASL authentication failed" in caplog.text
        scripted.refusal = None  # the credentials are fixed on the cluster's side
        await rig.until(lambda: scripted.made[0].ready)
        assert scripted.made[0].refused is None
        rig.put(2)
        await rig.until(lambda: rig.counts("delivered")["delivered"] == 2)
        assert rig.counts("dropped_security")["dropped_security"] == 3


async def test_entries_wait_while_refusals_are_within_the_attempts(scripted: Scripted) -> None:
    """Fewer refusals in a row than the attempts: nothing dropped yet, entries stay held."""
    scripted.refusal = "TLS handshake failed"
    async with Rig(scripted, config(producer_request_retries_max_attempts=1000)) as rig:
        rig.put(3)
        await rig.encoded()
        await rig.quiet()
        assert rig.counts("dropped", "pending") == {"dropped": 0, "pending": 3}


# -- shutdown -------------------------------------------------------------------------


async def test_at_shutdown_entries_never_handed_over_are_dropped_shutdown(
    scripted: Scripted,
) -> None:
    """Entries Kafka never got (buffered or in an outbox) are dropped as shutdown."""
    scripted.ready = False  # the producer never connects
    settings = config(producer_request_limits_messages_per_request=2)
    async with Rig(scripted, settings) as rig:
        rig.put(3)
        await rig.encoded()
        await rig.quiet()
        rig.put(1)  # still buffered, not even encoded, when the close begins
        await rig.close(0.3)
        assert rig.handovers() == []
        assert rig.counts("dropped_shutdown", "dropped", "uncertain", "pending") == {
            "dropped_shutdown": 4,
            "dropped": 4,
            "uncertain": 0,
            "pending": 0,
        }


async def test_at_shutdown_unreported_entries_are_uncertain_and_late_reports_ignored(
    reporting: Scripted,
) -> None:
    """What the client holds unacknowledged is uncertain; a report after close changes nothing."""
    reporting.respond = always(Keep.HELD)
    settings = config(producer_request_limits_messages_per_request=3)
    async with Rig(reporting, settings) as rig:
        rig.put(3)
        await rig.handed_over(1)
        assert rig.counts("pending") == {"pending": 3}
        await rig.close(0.3)
        after_close = rig.stats()
        assert rig.counts("uncertain", "dropped", "pending") == {
            "uncertain": 3,
            "dropped": 0,
            "pending": 0,
        }
        [held] = rig.producer.held()
        rig.producer.report(held, DELIVER)  # the client answers after all: too late
        assert rig.stats() == after_close
        assert rig.producer.shut_down


async def test_at_shutdown_entries_withdrawn_from_the_producer_are_dropped_shutdown(
    scripted: Scripted,
) -> None:
    """Entries withdrawn from the producer never reached Kafka: dropped as shutdown."""
    scripted.respond = always(Keep.QUEUED)
    settings = config(producer_request_limits_messages_per_request=3)
    async with Rig(scripted, settings) as rig:
        rig.put(3)
        await rig.handed_over(1)
        await rig.close(0.3)
        [handover] = rig.handovers()
        assert handover.withdrawn
        assert rig.counts("dropped_shutdown", "uncertain", "pending") == {
            "dropped_shutdown": 3,
            "uncertain": 0,
            "pending": 0,
        }


async def test_at_shutdown_each_kind_of_pending_entry_is_counted_its_way(
    scripted: Scripted,
) -> None:
    """Every pending state at once, on two producers: each entry lands in its own bucket."""
    # Per batch: held by the client (uncertain), queued in the producer (withdrawn:
    # dropped), failed after a possible write and then held on the retry (uncertain),
    # and, on a second producer that never connects, never handed over (dropped).
    answers: dict[tuple[int, ...], list[Outcome]] = {
        (0, 1): [Keep.HELD],
        (2, 3): [Keep.QUEUED],
        (4, 5): [RETRY_MAYBE_WRITTEN, Keep.HELD],
    }

    def respond(handover: HandOver) -> Outcome:
        return answers[tuple(handover.ids)].pop(0)

    scripted.respond = respond
    settings = config(
        producer_request_limits_messages_per_request=2,
        producer_request_retries_backoff_timeout=60_000,
    )
    elsewhere = settings.replace(timeout=20_000)  # other producer settings: its own producer

    def resolve(request: CapturedRequest) -> KafkaLogConfig | None:
        return elsewhere if request_number(request) >= 6 else None

    async with Rig(scripted, settings, resolver=resolve) as rig:
        for count in (1, 2, 3):
            rig.put(2)  # one batch at a time
            await rig.handed_over(count)
        scripted.ready = False
        rig.put(2)
        await rig.encoded()
        await rig.until(lambda: len(scripted.made) == 2)
        await rig.close(0.3)
        assert rig.batches() == [[0, 1], [2, 3], [4, 5], [4, 5]]
        assert rig.counts(
            "uncertain", "dropped_shutdown", "dropped", "retried", "delivered", "pending"
        ) == {
            "uncertain": 4,
            "dropped_shutdown": 4,
            "dropped": 4,
            "retried": 2,
            "delivered": 0,
            "pending": 0,
        }


async def test_close_waits_for_a_held_batch_that_is_reported_before_its_timeout(
    scripted: Scripted,
) -> None:
    """close waits for what the client holds: an acknowledgement in time is delivered."""
    scripted.respond = always(Keep.HELD)
    settings = config(producer_request_limits_messages_per_request=2)
    async with Rig(scripted, settings) as rig:
        rig.put(2)
        await rig.handed_over(1)
        closing = asyncio.create_task(rig.close(WAIT))
        await rig.quiet()
        assert not closing.done()  # waiting for the acknowledgement
        [held] = rig.producer.held()
        rig.producer.report(held, DELIVER)
        await closing
        assert rig.counts("delivered", "uncertain", "dropped", "pending") == {
            "delivered": 2,
            "uncertain": 0,
            "dropped": 0,
            "pending": 0,
        }
        # The producer is closed with what is left of close's timeout.
        timeout = rig.producer.close_timeout
        assert timeout is not None and 0.1 <= timeout <= WAIT, timeout


async def test_close_gives_up_at_its_timeout_and_still_gives_the_producer_0_1_s_to_close(
    scripted: Scripted,
) -> None:
    """A batch never acknowledged is uncertain at the deadline; the producer's close still
    gets at least 0.1 s, though close's own time is up."""
    scripted.respond = always(Keep.HELD)
    settings = config(producer_request_limits_messages_per_request=2)
    async with Rig(scripted, settings) as rig:
        rig.put(2)
        await rig.handed_over(1)
        await rig.close(0.3)
        assert rig.counts("uncertain", "dropped", "delivered", "pending") == {
            "uncertain": 2,
            "dropped": 0,
            "delivered": 0,
            "pending": 0,
        }
        assert rig.producer.shut_down
        assert rig.producer.close_timeout == 0.1


# -- readiness ------------------------------------------------------------------------


async def test_entries_wait_for_the_producer_to_connect(scripted: Scripted) -> None:
    """Nothing is handed to a producer before it connects; everything goes once it does."""
    scripted.ready = False
    settings = config(producer_request_limits_messages_per_request=2)
    async with Rig(scripted, settings) as rig:
        rig.put(3)
        await rig.encoded()
        await rig.quiet()
        assert rig.handovers() == []
        assert rig.counts("pending", "buffered", "dropped") == {
            "pending": 3,
            "buffered": 0,
            "dropped": 0,
        }
        rig.producer.gate.set()
        await rig.settled()
        assert sorted(i for batch in rig.batches() for i in batch) == [0, 1, 2]
        assert scripted.delivered_ids() == [0, 1, 2]


# -- producers of configs no longer in force ------------------------------------------


async def test_a_config_change_starts_the_new_producer_connecting_before_any_request(
    scripted: Scripted,
) -> None:
    """The new config's producer is acquired (and connects) at the change, not at its
    first entry."""
    settings = config(producer_async_flush_timeout=60_000)  # the old producer's grace: 60 s
    async with Rig(scripted, settings) as rig:
        rig.config = settings.replace(bootstrap_servers="127.0.0.1:10")
        rig.buffer.wake()  # as Pipeline.update_config does
        await rig.until(lambda: len(scripted.made) == 2 and scripted.made[1].ready)
        first, second = scripted.made
        assert second.config.bootstrap_servers == ("127.0.0.1:10",)
        assert rig.publisher.producers() == [first, second]
        assert rig.handovers() == []


async def test_the_old_config_s_producer_is_released_once_its_grace_has_passed(
    scripted: Scripted, clock: Clock
) -> None:
    """After a config change, the old producer is kept for its grace (the flush timeout of
    the config it served), then released and closed with shutdown_timeout."""
    settings = config(producer_async_flush_timeout=60_000, shutdown_timeout=2500)
    async with Rig(scripted, settings) as rig:
        rig.config = settings.replace(bootstrap_servers="127.0.0.1:10")
        rig.buffer.wake()
        await rig.until(lambda: len(scripted.made) == 2)
        first, second = scripted.made
        clock.advance(50)  # 10 s of the grace left
        rig.buffer.wake()
        await rig.quiet()
        assert rig.publisher.producers() == [first, second]
        assert not first.closed
        clock.advance(10.001)
        rig.buffer.wake()
        await rig.until(lambda: first.shut_down)
        assert rig.publisher.producers() == [second]
        assert first.close_timeout == 2.5
        assert not second.closed


async def test_the_old_producer_is_released_after_its_grace_with_no_request_to_wake_it(
    scripted: Scripted,
) -> None:
    """A publisher with nothing else to do wakes by itself when an old producer's grace
    ends (on the real clock: no entry, no wake-up after the change)."""
    settings = config(producer_async_flush_timeout=300)  # the old producer's grace: 0.3 s
    # The new config's own grace is long: the wake-up must be for the old producer.
    new = settings.replace(bootstrap_servers="127.0.0.1:10", producer_async_flush_timeout=60_000)
    async with Rig(scripted, settings) as rig:
        rig.config = new
        rig.buffer.wake()
        await rig.until(lambda: len(scripted.made) == 2)
        first, second = scripted.made
        await rig.until(lambda: first.shut_down)
        assert rig.publisher.producers() == [second]
        assert rig.handovers() == []


async def test_an_idle_publisher_sleeps_until_its_next_timer_without_polling(
    scripted: Scripted,
) -> None:
    """With nothing to send, the publisher sleeps until an entry comes or, while an old
    producer is kept, until its grace ends: it does not wake up meanwhile to look again."""
    settings = config(producer_async_flush_timeout=60_000)
    async with Rig(scripted, settings) as rig:
        await rig.quiet()
        reads = rig.config_reads
        await rig.quiet()
        assert rig.config_reads == reads  # only the config in force: nothing to wait for
        # The new config's grace is short: only an old producer's grace is waited for.
        rig.config = settings.replace(
            bootstrap_servers="127.0.0.1:10", producer_async_flush_timeout=1
        )
        rig.buffer.wake()
        await rig.until(lambda: len(scripted.made) == 2)
        await rig.quiet()
        reads = rig.config_reads
        await rig.quiet()
        assert rig.config_reads == reads  # the old producer's grace: 60 s
        assert len(rig.publisher.producers()) == 2


async def test_the_producer_of_the_config_in_force_is_never_released(
    scripted: Scripted, clock: Clock
) -> None:
    """However long it idles, the config in force keeps its one producer."""
    async with Rig(scripted, config()) as rig:
        rig.put(1)
        await rig.settled()
        clock.advance(3600)  # far past its grace and its keepalive
        rig.buffer.wake()
        await rig.quiet()
        rig.put(1)
        await rig.settled()
        assert rig.batches() == [[0], [1]]
        assert rig.publisher.producers() == [rig.producer]  # one made, never let go
        assert not rig.producer.closed


async def test_an_old_producer_is_kept_while_its_batch_is_unreported(
    scripted: Scripted, clock: Clock
) -> None:
    """Entries in flight keep an old producer past its grace; it goes once they are reported."""
    scripted.respond = always(Keep.HELD)
    settings = config()
    async with Rig(scripted, settings) as rig:
        rig.put(1)
        await rig.handed_over(1)
        rig.config = settings.replace(bootstrap_servers="127.0.0.1:10")
        clock.advance(3600)
        rig.buffer.wake()
        await rig.until(lambda: len(scripted.made) == 2)
        await rig.quiet()
        first, second = scripted.made
        assert rig.publisher.producers() == [first, second]
        assert not first.closed
        [held] = first.held()
        first.report(held, DELIVER)
        await rig.until(lambda: first.shut_down)  # no wake-up needed
        assert rig.publisher.producers() == [second]
        assert rig.counts("delivered", "uncertain", "pending") == {
            "delivered": 1,
            "uncertain": 0,
            "pending": 0,
        }


async def test_an_old_producer_is_kept_while_its_outbox_holds_entries(
    scripted: Scripted, clock: Clock
) -> None:
    """Entries encoded for an old producer that has not connected yet keep it past its
    grace; once it connects they go through it, and then it is released."""
    scripted.ready = False
    settings = config()
    async with Rig(scripted, settings) as rig:
        rig.put(2)
        await rig.encoded()
        scripted.ready = True  # the new config's producer connects at once
        rig.config = settings.replace(bootstrap_servers="127.0.0.1:10")
        clock.advance(3600)
        rig.buffer.wake()
        await rig.until(lambda: len(scripted.made) == 2)
        await rig.quiet()
        first, second = scripted.made
        assert rig.publisher.producers() == [first, second]
        assert not first.closed
        first.gate.set()
        await rig.until(lambda: first.shut_down)
        assert [h.ids for h in first.handovers] == [[0, 1]]
        assert second.handovers == []
        assert rig.counts("delivered", "dropped", "pending") == {
            "delivered": 2,
            "dropped": 0,
            "pending": 0,
        }


async def test_a_retry_waiting_keeps_its_old_producer_and_an_idle_one_after_it_still_goes(
    scripted: Scripted, clock: Clock
) -> None:
    """A retry waiting for a producer no config in force uses keeps it; the sweep goes on
    to release an idle one that comes after it."""
    settings = config()
    # Entry 0 goes through a producer whose retry waits 600 s; entry 1 through another.
    waiting = settings.replace(
        bootstrap_servers="127.0.0.1:10", producer_request_retries_backoff_timeout=600_000
    )
    idle = settings.replace(bootstrap_servers="127.0.0.1:11")
    retry_once = per_batch(RETRY, then=DELIVER)
    scripted.respond = lambda handover: retry_once(handover) if handover.ids == [0] else DELIVER

    def resolve(request: CapturedRequest) -> KafkaLogConfig | None:
        return waiting if request_number(request) == 0 else idle

    async with Rig(scripted, settings, resolver=resolve) as rig:
        rig.put(2)
        await rig.handed_over(2)
        current, kept, released = scripted.made
        assert [kept.config.bootstrap_servers, released.config.bootstrap_servers] == [
            ("127.0.0.1:10",),
            ("127.0.0.1:11",),
        ]
        clock.advance(61)  # past their grace (keepalive: 60 s), not the 600 s backoff
        rig.buffer.wake()
        await rig.until(lambda: released.shut_down)
        assert rig.publisher.producers() == [current, kept]
        assert not kept.closed
        clock.advance(540)  # the retry is due
        rig.buffer.wake()
        await rig.settled()
        assert [h.ids for h in kept.handovers] == [[0], [0]]
        clock.advance(61)
        rig.buffer.wake()
        await rig.until(lambda: kept.shut_down)
        assert rig.publisher.producers() == [current]
        assert rig.counts("delivered", "dropped") == {"delivered": 2, "dropped": 0}


async def test_every_idle_resolver_producer_is_released_once_its_keepalive_has_passed(
    scripted: Scripted, clock: Clock
) -> None:
    """A producer only resolver configs used is kept idle for its keepalive, then released;
    the producer of the config in force, which comes first, does not stop the sweep."""
    settings = config(shutdown_timeout=1500)
    chosen = {
        0: settings.replace(bootstrap_servers="127.0.0.1:10", keepalive=30_000),
        1: settings.replace(bootstrap_servers="127.0.0.1:11", keepalive=30_000),
    }

    def resolve(request: CapturedRequest) -> KafkaLogConfig | None:
        return chosen[request_number(request)]

    async with Rig(scripted, settings, resolver=resolve) as rig:
        rig.put(2)
        await rig.settled()
        current, one, two = scripted.made
        clock.advance(25)  # 5 s of the keepalive left
        rig.buffer.wake()
        await rig.quiet()
        assert rig.publisher.producers() == [current, one, two]
        clock.advance(5.001)
        rig.buffer.wake()
        await rig.until(lambda: one.shut_down and two.shut_down)
        assert rig.publisher.producers() == [current]
        assert (one.close_timeout, two.close_timeout) == (1.5, 1.5)
        assert not current.closed


# -- routing and encoding -------------------------------------------------------------


async def test_resolver_topics_share_the_producer_with_an_outbox_each(
    scripted: Scripted,
) -> None:
    """Two topics with the same producer settings: one producer, an outbox (batch) per topic."""
    settings = config(topic="even", producer_request_limits_messages_per_request=3)
    odd = settings.replace(topic="odd")

    def resolve(request: CapturedRequest) -> KafkaLogConfig | None:
        return odd if request_number(request) % 2 else None

    async with Rig(scripted, settings, resolver=resolve) as rig:
        rig.put(6)
        await rig.settled()
        assert len(scripted.made) == 1
        by_topic = sorted((h.topic, h.ids) for h in rig.handovers())
        assert by_topic == [("even", [0, 2, 4]), ("odd", [1, 3, 5])]
        assert rig.counts("delivered") == {"delivered": 6}


async def test_a_resolver_config_with_other_producer_settings_gets_its_own_producer(
    scripted: Scripted,
) -> None:
    """A resolver config with other producer settings gets a producer of its own."""
    settings = config(producer_request_limits_messages_per_request=2)
    acks_all = settings.replace(producer_request_acks=-1)

    def resolve(request: CapturedRequest) -> KafkaLogConfig | None:
        return acks_all if request_number(request) >= 2 else None

    async with Rig(scripted, settings, resolver=resolve) as rig:
        rig.put(4)
        await rig.settled()
        assert [p.config.acks for p in scripted.made] == [1, -1]
        assert [[h.ids for h in p.handovers] for p in scripted.made] == [[[0, 1]], [[2, 3]]]


async def test_a_resolver_config_s_retry_policy_applies_to_its_entries(
    scripted: Scripted,
) -> None:
    """A resolver config's retry policy is that config's, not the current one's."""
    scripted.respond = always(RETRY)
    settings = config(producer_request_retries_max_attempts=3)
    once = settings.replace(topic="audit", producer_request_retries_max_attempts=1)

    def resolve(request: CapturedRequest) -> KafkaLogConfig | None:
        return once if request_number(request) == 1 else None

    async with Rig(scripted, settings, resolver=resolve) as rig:
        rig.put(2)
        await rig.settled()
        assert sorted_batches(rig.batches()) == [[0], [0], [0], [1]]
        assert rig.counts("dropped_kafka_error") == {"dropped_kafka_error": 2}


async def test_a_resolver_config_s_flush_timer_and_batch_apply_to_its_entries(
    scripted: Scripted,
) -> None:
    """Entries of one topic under two policies wait each for their own batch and timer."""
    settings = config(
        producer_async_flush_timeout=60_000, producer_request_limits_messages_per_request=100
    )
    pairs = settings.replace(producer_request_limits_messages_per_request=2)
    prompt = settings.replace(producer_async_flush_timeout=1)
    chosen = {1: pairs, 2: pairs, 3: prompt}

    def resolve(request: CapturedRequest) -> KafkaLogConfig | None:
        return chosen.get(request_number(request))

    async with Rig(scripted, settings, resolver=resolve) as rig:
        rig.put(4)
        await rig.handed_over(2)
        await rig.quiet()
        assert sorted_batches(rig.batches()) == [[1, 2], [3]]  # 0 waits for 60 s or close
        await rig.close()
        assert rig.batches()[-1] == [0]
        assert {h.topic for h in rig.handovers()} == {"logs"}
        assert rig.counts("delivered") == {"delivered": 4}


async def test_an_entry_that_cannot_be_encoded_is_dropped_serialize_error(
    scripted: Scripted,
) -> None:
    """An entry that cannot be built (a hook's value, the resolver) is serialize_error."""
    settings = config(producer_request_limits_messages_per_request=2)
    unencodable = settings.replace(custom_fields={"bad": lambda request: {1, 2}})

    def resolve(request: CapturedRequest) -> KafkaLogConfig | None:
        if request_number(request) == 3:
            raise LookupError("the resolver fails too")
        return None

    async with Rig(scripted, settings, resolver=resolve) as rig:
        rig.put(1)
        rig.put(1, config=unencodable)
        rig.put(2)  # entry 3: the resolver raises
        await rig.until(lambda: rig.buffer.stats()["dropped"] == 2)
        await rig.close()
        assert rig.batches() == [[0, 2]]
        assert rig.counts("dropped_serialize_error", "delivered", "pending") == {
            "dropped_serialize_error": 2,
            "delivered": 2,
            "pending": 0,
        }


@pytest.mark.parametrize(
    ("keyed", "key"),
    [
        ({}, None),
        ({"key_query_arg": "n"}, b"0"),
        ({"key": lambda request: f"k{request_number(request)}"}, b"k0"),
    ],
    ids=["no-key", "key_query_arg", "key-hook"],
)
async def test_the_message_key_is_none_unless_key_or_key_query_arg_is_configured(
    scripted: Scripted, keyed: dict[str, Any], key: bytes | None
) -> None:
    """Without key or key_query_arg, no key; with either, the one message_key computes."""
    async with Rig(scripted, config(**keyed)) as rig:
        rig.put(1)
        await rig.settled()
        [handover] = rig.handovers()
        assert [message_key for message_key, _ in handover.messages] == [key]


async def test_plain_entries_go_in_native_runs_and_keep_their_build_order(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries of one config are encoded a run at a time (one native call each); one that
    only the Python path builds (a gateway's upstream facts) keeps its place."""
    runs: list[int] = []
    encode_run = serializer.encode_run

    def counted(*args: Any) -> Any:
        run = encode_run(*args)
        runs.append(-1 if run is None else len(run[0]))
        return run

    monkeypatch.setattr(publisher_module, "encode_run", counted)
    settings = config(producer_request_limits_messages_per_request=12)
    async with Rig(scripted, settings) as rig:
        rig.put(5)
        rig.put(1, edit=lambda request: upstream(request, "/upstream"))
        rig.put(6)
        await rig.settled()
        [handover] = rig.handovers()
        assert handover.ids == list(range(12))
        entries = [orjson.loads(value) for _, value in handover.messages]
        assert [entry["upstream_uri"] for entry in entries].count("/upstream") == 1
        assert entries[5]["upstream_uri"] == "/upstream"
    if serializer._native is None:
        assert set(runs) == {-1}  # no native module: each entry on its own
    else:
        assert sum(runs) == 11 and max(runs) >= 3, runs


# -- take-over by the exit flush ------------------------------------------------------

Step = Callable[[Rig], Awaitable[None]]


def ended_loop_publisher(
    scripted: Scripted,
    settings: KafkaLogConfig,
    buffer: LogBuffer,
    fill: Step,
    resolver: Resolver | None = None,
) -> Publisher:
    """The publisher of a loop that ran ``fill`` and ended, as ``asyncio.run``'s does:
    not closed, with whatever ``fill`` left in it."""

    async def serve() -> Publisher:
        rig = Rig(scripted, settings, buffer=buffer, resolver=resolver)
        rig.start()
        try:
            await fill(rig)
        finally:
            rig.stop_checking()
        return rig.publisher

    return asyncio.run(serve())


async def _settle(rig: Rig) -> None:
    await rig.settled()


def taken_over(
    scripted: Scripted,
    settings: KafkaLogConfig,
    buffer: LogBuffer,
    old: Publisher,
    then: Step = _settle,
) -> None:
    """In a new loop, a publisher takes over what ``old`` left, then runs ``then`` (by
    default: until every entry is settled) and closes."""

    async def take_over() -> None:
        rig = Rig(scripted, settings, buffer=buffer)
        rig.publisher.take_over(old)
        async with rig:  # starts the publisher: nothing is sent before then's first await
            await then(rig)

    asyncio.run(take_over())


def test_take_over_sends_what_a_gone_loop_left_and_counts_what_its_client_held(
    scripted: Scripted,
) -> None:
    """The exit flush sends what a gone loop left; what its client held is uncertain."""
    # The first loop ends (as asyncio.run's does) with entries in every state: held by
    # its producer's client, queued in its producer, waiting for a retry, in an outbox.
    answers: dict[tuple[int, ...], Outcome] = {(0, 1): Keep.HELD, (2, 3): Keep.QUEUED}
    scripted.respond = lambda handover: answers.get(tuple(handover.ids), RETRY)
    settings = config(
        producer_request_limits_messages_per_request=2,
        producer_async_flush_timeout=60_000,
        producer_request_retries_backoff_timeout=60_000,
        producer_request_retries_max_attempts=2,
    )
    buffer = LogBuffer(100)
    loops: list[asyncio.AbstractEventLoop] = []

    async def fill(rig: Rig) -> None:
        loops.append(asyncio.get_running_loop())
        for count in (1, 2, 3):
            rig.put(2)  # one batch at a time
            await rig.handed_over(count)
        rig.put(1)  # waits for a batch or the (long) flush timer
        await rig.encoded()

    old = ended_loop_publisher(scripted, settings, buffer, fill)
    first = scripted.made[0]
    assert [h.ids for h in first.handovers] == [[0, 1], [2, 3], [4, 5]]
    assert buffer.stats()["pending"] == 7
    # Entries 4 and 5 failed their first attempt of two: their last one fails too.
    scripted.respond = lambda handover: RETRY if handover.ids == [4, 5] else DELIVER

    after_take_over: dict[str, int] = {}

    async def settle(rig: Rig) -> None:
        loops.append(asyncio.get_running_loop())
        after_take_over.update(buffer.stats())
        # At once: neither the 60 s backoff nor the flush timer holds them up.
        await rig.settled()

    taken_over(scripted, settings, buffer, old, settle)
    assert not invariant_problems(after_take_over), after_take_over
    assert after_take_over["uncertain"] == 2  # what the old client held: 0 and 1
    assert len(scripted.made) == 2
    assert first.closed  # abandoned: its loop is gone, nothing may use it again
    second = scripted.made[1]
    assert sorted_batches(h.ids for h in second.handovers) == [[2, 3], [4, 5], [6]]
    assert all(h.loop is loops[1] for h in second.handovers)
    assert [h.withdrawn for h in first.handovers] == [False, True, False]
    [held] = first.held()
    first.report(held, DELIVER)  # the old client answers after all: already counted
    stats = buffer.stats()
    assert not invariant_problems(stats), stats
    assert {
        k: stats[k] for k in ("delivered", "uncertain", "dropped_kafka_error", "dropped", "pending")
    } == {"delivered": 3, "uncertain": 2, "dropped_kafka_error": 2, "dropped": 2, "pending": 0}


def test_taken_over_entries_for_a_producer_that_never_connects_are_counted_at_close(
    scripted: Scripted,
) -> None:
    """Taken over, unsendable: a retry that may be written is uncertain, the rest shutdown."""
    # The old loop leaves two retries: one after an attempt that may have reached Kafka.
    answers: dict[tuple[int, ...], Outcome] = {(0, 1): RETRY_MAYBE_WRITTEN, (2, 3): RETRY}
    scripted.respond = lambda handover: answers[tuple(handover.ids)]
    settings = config(
        producer_request_limits_messages_per_request=2,
        producer_request_retries_backoff_timeout=60_000,
    )
    buffer = LogBuffer(100)

    async def fill(rig: Rig) -> None:
        for count in (1, 2):
            rig.put(2)
            await rig.handed_over(count)

    old = ended_loop_publisher(scripted, settings, buffer, fill)
    scripted.ready = False  # the exit flush cannot reach Kafka

    async def close(rig: Rig) -> None:
        await rig.close(0.3)

    taken_over(scripted, settings, buffer, old, close)
    assert len(scripted.made) == 2 and scripted.made[1].handovers == []
    stats = buffer.stats()
    assert not invariant_problems(stats), stats
    assert {
        k: stats[k] for k in ("uncertain", "dropped_shutdown", "dropped", "retried", "pending")
    } == {"uncertain": 2, "dropped_shutdown": 2, "dropped": 2, "retried": 2, "pending": 0}


def test_a_taken_over_withdrawn_batch_keeps_its_config_s_retry_policy(
    scripted: Scripted,
) -> None:
    """At the exit flush, a withdrawn batch is retried as its own config says."""
    settings = config(producer_request_retries_max_attempts=3)
    once = settings.replace(topic="audit", producer_request_retries_max_attempts=1)
    scripted.respond = always(Keep.QUEUED)
    buffer = LogBuffer(100)

    async def fill(rig: Rig) -> None:
        rig.put(1)
        await rig.handed_over(1)

    old = ended_loop_publisher(scripted, settings, buffer, fill, resolver=lambda request: once)
    scripted.respond = always(RETRY)

    taken_over(scripted, settings, buffer, old)
    assert [h.topic for h in scripted.made[1].handovers] == ["audit"]  # one attempt, not 3


@pytest.mark.parametrize(
    "next_failure", [RETRY, RETRY_MAYBE_WRITTEN], ids=["then-plain", "then-maybe-written"]
)
def test_a_withdrawn_batch_that_may_be_written_is_uncertain_after_take_over(
    scripted: Scripted, next_failure: Outcome
) -> None:
    """A batch withdrawn from the old producer keeps what its earlier attempt may have
    written: given up in the new loop, uncertain (not dropped), and counted retried once."""
    # The old loop: attempt 1 may have reached Kafka, attempt 2 waits in the producer's queue.
    scripted.respond = in_turn(RETRY_MAYBE_WRITTEN, Keep.QUEUED)
    settings = config(
        producer_request_limits_messages_per_request=2, producer_request_retries_max_attempts=3
    )
    buffer = LogBuffer(100)

    async def fill(rig: Rig) -> None:
        rig.put(2)
        await rig.handed_over(2)

    old = ended_loop_publisher(scripted, settings, buffer, fill)
    assert buffer.stats()["retried"] == 2
    # The new loop: attempts 2 and 3 (the last) fail.
    scripted.respond = in_turn(next_failure, RETRY)

    taken_over(scripted, settings, buffer, old)
    assert [h.ids for h in scripted.made[1].handovers] == [[0, 1], [0, 1]]
    stats = buffer.stats()
    assert not invariant_problems(stats), stats
    assert {k: stats[k] for k in ("uncertain", "dropped", "retried", "delivered", "pending")} == {
        "uncertain": 2,
        "dropped": 0,
        "retried": 2,
        "delivered": 0,
        "pending": 0,
    }


def test_entries_taken_over_from_an_old_outbox_get_every_attempt(scripted: Scripted) -> None:
    """Entries the old loop had only encoded were never attempted: the new loop gives them
    all producer_request_retries_max_attempts."""
    settings = config(producer_async_flush_timeout=60_000, producer_request_retries_max_attempts=2)
    buffer = LogBuffer(100)

    async def fill(rig: Rig) -> None:
        rig.put(1)  # waits for the (long) flush timer
        await rig.encoded()

    old = ended_loop_publisher(scripted, settings, buffer, fill)
    scripted.respond = always(RETRY)

    taken_over(scripted, settings, buffer, old)
    first, second = scripted.made
    assert first.handovers == []
    assert [h.ids for h in second.handovers] == [[0], [0]]
    stats = buffer.stats()
    assert not invariant_problems(stats), stats
    assert {k: stats[k] for k in ("dropped_kafka_error", "dropped", "uncertain", "pending")} == {
        "dropped_kafka_error": 1,
        "dropped": 1,
        "uncertain": 0,
        "pending": 0,
    }


# -- the byte bound and the overflow policy ---------------------------------------------


def _entry_bytes() -> int:
    """About the size of one encoded entry of these tests (they differ in a digit or two)."""
    return len(encode_entry(captured(10, config())))


async def test_past_the_byte_bound_new_entries_are_dropped_buffer_full(scripted: Scripted) -> None:
    """``drop_newest`` (Kong's): what would go over ``buffer_max_bytes`` is refused and
    counted; what was held is delivered, and the bytes held go back to zero."""
    scripted.respond = always(Keep.HELD)  # in flight, unacknowledged: still held
    bound = 4 * _entry_bytes() + 10
    async with Rig(scripted, config(buffer_max_bytes=bound)) as rig:
        rig.put(9)
        await rig.until(lambda: rig.counts("dropped")["dropped"] == 5)
        assert rig.counts("dropped_buffer_full", "pending") == {
            "dropped_buffer_full": 5,
            "pending": 4,
        }
        assert 0 < rig.publisher._held <= bound
        for handover in rig.producer.held():
            rig.producer.report(handover, DELIVER)
        await rig.settled()
        assert sorted(i for h in rig.handovers() for i in h.ids) == [0, 1, 2, 3]
        assert rig.counts("delivered")["delivered"] == 4


async def test_drop_oldest_makes_room_with_the_oldest_entries_not_yet_handed_over(
    scripted: Scripted,
) -> None:
    """Past the byte bound, ``drop_oldest`` drops the oldest waiting entries (counted
    ``buffer_full``) so that the newest go out."""
    scripted.ready = False  # nothing is handed over: everything waits in the outbox
    bound = 4 * _entry_bytes() + 10
    settings = config(buffer_max_bytes=bound, overflow="drop_oldest")
    async with Rig(scripted, settings) as rig:
        rig.put(9)
        await rig.encoded()
        assert rig.counts("dropped_buffer_full", "pending") == {
            "dropped_buffer_full": 5,
            "pending": 4,
        }
        assert rig.publisher._held <= bound
        rig.producer.gate.set()
        await rig.settled()
        assert scripted.delivered_ids() == [5, 6, 7, 8]


async def test_drop_oldest_past_the_count_bound_keeps_the_newest(scripted: Scripted) -> None:
    """The entry bound with ``drop_oldest``: the newest are taken, the oldest dropped in
    their place by the publisher's next turn; pending never stays above the bound. Past
    twice the bound before that turn, new ones are refused after all."""
    scripted.ready = False
    settings = config(producer_async_buffering_limits_messages_in_memory=5, overflow="drop_oldest")
    async with Rig(scripted, settings) as rig:
        rig.put(8)
        await rig.until(lambda: rig.counts("pending")["pending"] == 5)
        assert rig.counts("dropped_buffer_full")["dropped_buffer_full"] == 3
        rig.put(12)  # 8 to 19: 5 owed at most, the rest refused
        await rig.until(lambda: rig.counts("pending")["pending"] == 5)
        assert rig.counts("dropped_buffer_full")["dropped_buffer_full"] == 15
        rig.producer.gate.set()
        await rig.settled()
        assert scripted.delivered_ids() == [8, 9, 10, 11, 12]


async def test_drop_newest_past_the_count_bound_keeps_the_oldest(scripted: Scripted) -> None:
    scripted.ready = False
    settings = config(producer_async_buffering_limits_messages_in_memory=5)
    async with Rig(scripted, settings) as rig:
        rig.put(12)
        assert rig.counts("dropped_buffer_full", "pending") == {
            "dropped_buffer_full": 7,
            "pending": 5,
        }
        rig.producer.gate.set()
        await rig.settled()
        assert scripted.delivered_ids() == list(range(5))


# -- at least once -------------------------------------------------------------------


async def test_at_least_once_retries_past_max_attempts_until_delivered(
    reporting: Scripted,
) -> None:
    """No entry is given up for a retriable failure: attempts go on past
    ``producer_request_retries_max_attempts`` (backing off) until Kafka takes them."""
    reporting.respond = in_turn(*[RETRY] * 5, then=DELIVER)
    settings = config(
        delivery="at_least_once",
        producer_request_retries_max_attempts=2,
        producer_request_retries_backoff_timeout=1,
    )
    async with Rig(reporting, settings) as rig:
        rig.put(1)
        await rig.settled()
        assert rig.batches() == [[0]] * 6
        assert rig.counts("delivered", "dropped") == {"delivered": 1, "dropped": 0}


async def test_at_least_once_still_drops_what_kafka_refuses_for_good(scripted: Scripted) -> None:
    scripted.respond = always(FATAL)
    async with Rig(scripted, config(delivery="at_least_once")) as rig:
        rig.put(2)
        await rig.settled()
        assert rig.counts("dropped_kafka_error")["dropped_kafka_error"] == 2


async def test_at_least_once_holds_entries_for_a_refused_producer(scripted: Scripted) -> None:
    """A cluster refusing our credentials: at least once, the entries wait (within the
    bounds) instead of being dropped as ``security``, and go once it accepts."""
    scripted.refusal = "SASL authentication failed (invalid credentials)"
    settings = config(delivery="at_least_once", producer_request_retries_max_attempts=1)
    async with Rig(scripted, settings) as rig:
        rig.put(3)
        await rig.until(lambda: scripted.made[0].refused is not None)
        await rig.quiet()
        assert rig.counts("dropped", "pending") == {"dropped": 0, "pending": 3}
        scripted.refusal = None
        await rig.settled()
        assert scripted.delivered_ids() == [0, 1, 2]


# -- the disk spool (overflow="spool") ---------------------------------------------------


def spooling(directory: Any, **changes: Any) -> KafkaLogConfig:
    """At least once with the spool in ``directory``, synced every 20 ms."""
    changes.setdefault("spool_sync_interval", 20)
    return config(delivery="at_least_once", overflow="spool", spool_dir=str(directory), **changes)


def spool_files(directory: Any) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.suffix == ".seg")


async def test_entries_for_an_unconnected_producer_are_spooled_then_replayed_in_order(
    scripted: Scripted, tmp_path: Any
) -> None:
    scripted.ready = False
    async with Rig(scripted, spooling(tmp_path)) as rig:
        rig.put(5)
        await rig.until(lambda: rig.counts("spooled")["spooled"] == 5)
        assert rig.publisher._held == 0  # not in memory: on disk (once synced)
        await rig.until(lambda: spool_files(tmp_path) != [])
        rig.put(3)  # behind them, on disk too (order)
        await rig.until(lambda: rig.counts("spooled")["spooled"] == 8)
        rig.producer.gate.set()
        await rig.settled()
        assert [i for h in rig.handovers() for i in h.ids] == list(range(8))
        assert rig.counts("delivered", "replayed", "spooled", "dropped") == {
            "delivered": 8,
            "replayed": 8,
            "spooled": 0,
            "dropped": 0,
        }
        rig.put(2)  # the spool is empty again: straight to Kafka
        await rig.settled()
        assert rig.counts("replayed")["replayed"] == 8
    assert spool_files(tmp_path) == []


async def test_a_failed_batch_is_spooled_and_what_follows_keeps_its_place(
    scripted: Scripted, tmp_path: Any
) -> None:
    scripted.respond = in_turn(RETRY, RETRY, then=DELIVER)
    async with Rig(
        scripted, spooling(tmp_path, producer_request_limits_messages_per_request=3)
    ) as rig:
        rig.put(3)
        await rig.until(lambda: rig.counts("spooled")["spooled"] == 3)
        rig.put(3)
        await rig.settled()
        delivered = [i for h in rig.handovers() if h.outcome == DELIVER for i in h.ids]
        assert delivered == list(range(6))
        assert rig.counts("delivered", "dropped", "replayed")["dropped"] == 0


async def test_batches_failing_out_of_order_reach_the_spool_in_build_order(
    scripted: Scripted, tmp_path: Any
) -> None:
    """The later of two batches in flight fails first, entries are built meanwhile, the
    earlier batch fails last (a client timing them out, or replaced): the spool, and Kafka
    after it, still get every entry in the order it was built."""
    scripted.respond = in_turn(Keep.HELD, Keep.HELD, then=DELIVER)
    settings = spooling(tmp_path, producer_request_limits_messages_per_request=3)
    async with Rig(scripted, settings) as rig:
        rig.put(3)
        await rig.handed_over(1)
        rig.put(3)
        await rig.handed_over(2)
        first, second = rig.producer.held()
        rig.producer.report(second, RETRY)
        rig.put(3)
        await rig.quiet()
        # Held in memory behind the batch still in flight, not on disk ahead of it.
        assert rig.counts("spooled", "delivered") == {"spooled": 0, "delivered": 0}
        rig.producer.report(first, RETRY)
        await rig.settled()
        delivered = [i for h in rig.handovers() if h.outcome == DELIVER for i in h.ids]
        assert delivered == list(range(9))
        assert rig.counts("replayed", "dropped") == {"replayed": 9, "dropped": 0}


async def test_at_shutdown_with_kafka_down_entries_are_spooled_and_a_later_process_sends_them(
    scripted: Scripted, tmp_path: Any
) -> None:
    scripted.ready = False
    async with Rig(scripted, spooling(tmp_path, spool_sync_interval=60000)) as rig:
        rig.put(4)
        await rig.encoded()
        await rig.close(CLOSE_TIMEOUT)
        assert rig.counts("spooled", "pending", "dropped") == {
            "spooled": 4,
            "pending": 4,  # on disk: neither delivered nor lost
            "dropped": 0,
        }
    scripted.ready = True
    async with Rig(scripted, spooling(tmp_path)) as rig:  # as after a restart
        await rig.until(lambda: rig.counts("recovered")["recovered"] == 4, timeout=20)
        assert rig.counts("enqueued", "delivered", "recovered", "pending") == {
            "enqueued": 4,
            "delivered": 4,
            "recovered": 4,
            "pending": 0,
        }
    assert spool_files(tmp_path) == []


async def test_a_full_spool_drops_the_newest_as_spool_full(
    scripted: Scripted, tmp_path: Any
) -> None:
    scripted.ready = False
    entry = _entry_bytes()
    async with Rig(scripted, spooling(tmp_path, spool_max_bytes=4096)) as rig:
        rig.put(20)
        await rig.until(lambda: rig.counts("dropped_spool_full")["dropped_spool_full"] > 0)
        stats = rig.counts("spooled", "dropped_spool_full")
        assert stats["spooled"] + stats["dropped_spool_full"] == 20
        assert stats["spooled"] <= 4096 // entry
        rig.producer.gate.set()
        await rig.settled()
        assert scripted.delivered_ids() == list(range(stats["spooled"]))


@pytest.mark.parametrize("damage", ["bit-flip", "torn-tail"])
async def test_a_damaged_spool_file_is_skipped_counted_and_the_rest_replayed(
    scripted: Scripted, tmp_path: Any, damage: str
) -> None:
    scripted.ready = False
    async with Rig(scripted, spooling(tmp_path)) as rig:
        rig.put(5)
        await rig.encoded()
        await rig.until(lambda: rig.counts("spooled")["spooled"] == 5)
        await rig.close(CLOSE_TIMEOUT)
    [segment] = spool_files(tmp_path)
    path = tmp_path / segment
    data = bytearray(path.read_bytes())
    if damage == "bit-flip":
        data[len(data) // 2] ^= 0xFF  # in the third record
        lost = [2]
    else:
        del data[-10:]  # the last record cut short, as by a crash mid-write
        lost = [4]
    path.write_bytes(bytes(data))
    scripted.ready = True
    async with Rig(scripted, spooling(tmp_path)) as rig:
        await rig.until(lambda: rig.counts("recovered")["recovered"] == 4, timeout=20)
        assert rig.counts("spool_corrupt", "delivered")["spool_corrupt"] == 1
    delivered = sorted(i for h in scripted.handovers() if h.reported for i in h.ids)
    assert delivered == sorted(set(range(5)) - set(lost))


def test_chunks_grow_while_cheap_and_shrink_when_a_chunk_holds_the_loop_too_long() -> None:
    """Entries taken between two looks at the clock: doubled while a full chunk takes
    under a quarter of a slice (up to the cap), halved when one takes over half (down to
    one entry), left alone in between or when the buffer had fewer to give."""
    grow = SLICE_SECONDS / 8
    shrink = SLICE_SECONDS * 0.75
    between = SLICE_SECONDS / 3
    cap = publisher_module._CHUNK_MAX
    size = publisher_module._CHUNK
    sizes = []
    for _ in range(5):
        size = publisher_module._next_chunk(size, size, grow)
        sizes.append(size)
    assert sizes == [16, 32, 64, cap, cap]
    assert publisher_module._next_chunk(16, 3, grow) == 16  # a short chunk tells nothing
    assert publisher_module._next_chunk(16, 16, between) == 16
    sizes = []
    for _ in range(8):
        size = publisher_module._next_chunk(size, 1, shrink)
        sizes.append(size)
    assert sizes == [32, 16, 8, 4, 2, 1, 1, 1]


async def test_entries_slow_to_build_are_taken_one_at_a_time(scripted: Scripted) -> None:
    """An entry that takes most of a slice to build (here a hook sleeping 0.4 ms) brings
    the chunk down to one entry, so the loop gets a turn after each."""

    def slow(request: CapturedRequest) -> str:
        time.sleep(SLICE_SECONDS * 0.8)
        return "built"

    settings = config(custom_fields={"slow": slow})
    async with Rig(scripted, settings) as rig:
        rig.put(40)
        await rig.settled()
        assert rig.publisher._chunk == 1
        assert rig.counts("delivered") == {"delivered": 40}
