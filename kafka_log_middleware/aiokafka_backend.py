"""The default backend: an ``aiokafka.AIOKafkaProducer`` fed with its batch API.

Each topic has a lane of its own (a queue and a task that exists while the queue is not
empty): aiokafka waits for a topic's metadata, and for the previous batch of a partition
to drain, inside the call that hands it a batch, so a topic that cannot be produced to
(missing, unauthorized, being created) would otherwise hold up every other topic sharing
the producer. A failure to get a topic's metadata fails everything waiting in its lane at
once, so a bad topic costs one metadata wait per attempt, not one per batch.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import operator
import ssl
import weakref
from collections import deque
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasAfterAppendError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RequestTimedOutError,
    SaslAuthenticationFailed,
    UnknownProducerId,
    UnsupportedSaslMechanismError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.sender import SendProduceReqHandler

from . import _log, record_batch
from .config import KafkaLogConfig
from .oauth import TokenError, TokenSource
from .producers import CLOSED, Failure, Message, OnDone, Producer, Verdict
from .record_batch import NativeBatch
from .security import OAuthBearer

_partition_for_key = DefaultPartitioner()
_first = operator.itemgetter(0)
_is_none = functools.partial(operator.is_, None)
_Lane = deque[tuple[list[Message], OnDone]]

_MAYBE_WRITTEN = (
    RequestTimedOutError,  # no answer in time, or the broker waits for replicas
    KafkaConnectionError,  # the connection broke, possibly with the request in flight
    NotEnoughReplicasAfterAppendError,  # written to the leader only
    asyncio.CancelledError,  # in flight when the producer closed
)
"""Errors after which the batch may be in Kafka (aiokafka's idempotence is off)."""
_NEEDS_A_NEW_CLIENT = (
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    UnknownProducerId,
    ProducerFenced,
)
"""Idempotent-producer states no retry on the same client gets out of."""
_SASL_REFUSED = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)


def failure_of(error: BaseException, maybe_written: bool = False) -> Failure:
    """aiokafka's error for a batch, in the producers' vocabulary."""
    maybe_written = maybe_written or isinstance(error, _MAYBE_WRITTEN)
    cause = type(error).__name__
    if isinstance(error, MessageSizeTooLargeError | RecordListTooLargeError):
        verdict = Verdict.SPLIT
    elif isinstance(error, KafkaTimeoutError | TimeoutError | asyncio.CancelledError) or getattr(
        error, "retriable", False
    ):
        verdict = Verdict.RETRY
    else:
        verdict = Verdict.FATAL
    return Failure(verdict, cause, maybe_written)


def with_token_provider(config: KafkaLogConfig, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (``aiokafka_options()`` or ``aiokafka_client_options()``) and, for
    OAUTHBEARER, a token provider of this client's own (it keeps and refreshes a token)."""
    auth = config.sasl
    if isinstance(auth, OAuthBearer):
        return {**options, "sasl_oauth_token_provider": _Tokens(TokenSource(auth))}
    return options


def refusal_of(error: BaseException) -> str | None:
    """What a SASL or TLS failure of a connection means; None for other errors."""
    if isinstance(error, TokenError):
        return f"OAUTHBEARER: {error}"
    if isinstance(error, _SASL_REFUSED):
        return f"SASL authentication failed ({error})"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not accepted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed ({error.reason or type(error).__name__})"
    return None


class AiokafkaProducer(Producer):
    """An ``AIOKafkaProducer`` fed through per-topic lanes (see the module docstring).

    ``send`` only queues, so Kafka's pace never holds up the publisher, which keeps
    encoding meanwhile.
    """

    def __init__(self, config: KafkaLogConfig) -> None:
        super().__init__(config)
        self._options = with_token_provider(config, config.aiokafka_options())
        self._ack_timeout_ms = config.producer_request_timeout
        self._native_batches = record_batch.available(self._options)
        """Batches are built natively (``record_batch.py``)."""
        self._batch_bytes = config.producer_request_limits_bytes_per_request
        self._start_guard = self._timeout * (len(config.bootstrap_servers) + 1) + 5.0
        """``start()`` tries each bootstrap server for up to ``timeout``, then fails."""
        self._stopping: set[asyncio.Task[None]] = set()
        """Replaced clients being stopped."""
        self._producer: Any = None
        self._lanes: dict[str, _Lane] = {}
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._maybe_written: weakref.WeakSet[Any] = weakref.WeakSet()
        """aiokafka batches that had an attempt which may have reached Kafka."""
        self._client_errors: deque[BaseException] = deque(maxlen=8)
        """Why aiokafka's connections failed, as it logged them (it raises a generic error)."""

    async def _open(self) -> None:
        _log.tame_client_loggers("aiokafka")
        self._client_errors.clear()
        with _log.our_client(self._client_errors):  # its tasks, started here, inherit it
            producer = AIOKafkaProducer(**self._options)
            # Kong's producer_request_timeout is the produce request's own timeout (how
            # long the broker waits for acks). aiokafka sends its sender's
            # request_timeout_ms there and nowhere else; the client's wait stays `timeout`.
            producer._sender._request_timeout_ms = self._ack_timeout_ms
            _watch_attempts(producer._sender, self._maybe_written)
            try:
                async with asyncio.timeout(self._start_guard):  # aiokafka #759
                    await producer.start()
            except BaseException:
                await _stop_quietly(producer, self._backoff)
                raise
        self._producer = producer

    async def _refusal(self, exc: BaseException) -> str | None:
        """A SASL or TLS refusal among the errors aiokafka logged for this attempt, else
        what a TLS probe finds (a missing client certificate shows as a closed
        connection only)."""
        for error in (exc, *reversed(self._client_errors)):
            refusal = refusal_of(error)
            if refusal is not None:
                return refusal
        return await self._tls_refusal()

    async def send(self, topic: str, messages: list[Message], on_done: OnDone) -> None:
        """Queue ``messages`` in ``topic``'s lane (see ``Producer.send``); never waits."""
        lane = self._lanes.get(topic)
        if lane is None:
            lane = self._lanes[topic] = deque()
            with _log.our_client():
                self._lane_tasks[topic] = asyncio.get_running_loop().create_task(
                    self._drain(topic, lane), name="kafka-log-send"
                )
        lane.append((messages, on_done))

    def withdraw(self) -> list[tuple[str, list[Message], OnDone]]:
        """The batches still waiting in the lanes (not given to aiokafka yet)."""
        taken = [
            (topic, messages, on_done)
            for topic, lane in self._lanes.items()
            for messages, on_done in lane
        ]
        for lane in self._lanes.values():
            lane.clear()
        return taken

    def abandon(self) -> None:
        """See ``Producer.abandon``; aiokafka would report the client as unclosed when it
        is collected, which it cannot be: its sockets close with it."""
        super().abandon()
        if self._producer is not None:
            self._producer._closed = True

    async def _drain(self, topic: str, lane: _Lane) -> None:
        """Hand the lane's batches to aiokafka in order; ends when the lane is empty."""
        try:
            while lane:
                # Taken from the lane only once the metadata is there: until then the
                # batch can still be withdrawn (it has not reached aiokafka).
                try:
                    async with asyncio.timeout(self.guard):
                        partitions = sorted(await self._producer.partitions_for(topic))
                except Exception as exc:  # no metadata in time: the topic's trouble
                    failure = failure_of(exc)
                    while lane:
                        messages, on_done = lane.popleft()
                        on_done(0, messages, failure, False)
                    return
                if lane:
                    messages, on_done = lane.popleft()
                    await self._send_now(topic, partitions, messages, on_done)
        finally:
            if self._lanes.get(topic) is lane:  # not a new lane of a replaced client's
                del self._lanes[topic], self._lane_tasks[topic]

    async def _send_now(
        self, topic: str, partitions: list[int], messages: list[Message], on_done: OnDone
    ) -> None:
        """Hand ``messages`` to aiokafka in batches, one per partition."""
        cluster = self._producer.client.cluster
        available = list(cluster.available_partitions_for_topic(topic) or ())
        # Unkeyed entries stick to one partition per call, as Kafka's sticky partitioner does.
        unkeyed = _partition_for_key(None, partitions, available)
        groups: dict[int, list[Message]] = {unkeyed: messages}
        if not all(map(_is_none, map(_first, messages))):  # looked at in C: mostly no keys
            groups = {}
            for message in messages:
                key = message[0]
                part = unkeyed if key is None else _partition_for_key(key, partitions, available)
                groups.setdefault(part, []).append(message)
        waiting = list(groups.values())
        try:
            for partition, group in groups.items():
                await self._send_partition(topic, partition, group, on_done)
                waiting.pop(0)
        except asyncio.CancelledError:  # a replaced client: the rest was never sent
            for group in waiting[1:]:
                on_done(0, group, CLOSED, False)
            raise

    async def _send_partition(
        self, topic: str, partition: int, group: list[Message], on_done: OnDone
    ) -> None:
        producer = self._producer
        start = 0
        while start < len(group):
            batch = self._batch(producer, group, start)
            end = start + batch.record_count()
            sent = group[start:end]
            try:
                async with asyncio.timeout(self.guard):
                    future = await producer.send_batch(batch, topic, partition=partition)
            except asyncio.CancelledError:
                on_done(0, group[start:], CLOSED, False)
                raise
            except Exception as exc:  # no room in time, or the producer closed
                on_done(0, group[start:], failure_of(exc), False)
                if isinstance(exc, TimeoutError):  # its own wait has a timeout: stuck
                    self.replace_client("no room for a batch")
                return
            queued = _queued_batch(producer, topic, partition, batch)
            future.add_done_callback(_Delivery(self, sent, on_done, queued).report)
            start = end

    def _batch(self, producer: Any, group: list[Message], start: int) -> Any:
        """A batch of ``group[start:]``'s first messages (at least one): natively built
        when it can be, else by aiokafka's ``BatchBuilder``."""
        if self._native_batches:
            return NativeBatch(group, start, self._batch_bytes)
        batch = producer.create_batch()
        for key, value in itertools.islice(group, start, None):
            if batch.append(key=key, value=value, timestamp=None) is None:
                break  # full (the first message is always taken)
        batch.close()
        return batch

    def _drop_client(self) -> None:
        """See ``Producer._drop_client``: the lanes' batches go back (not sent); the
        client is stopped in the background, which reports (or cancels) what it held."""
        producer, self._producer = self._producer, None
        for task in self._lane_tasks.values():
            task.cancel()
        for _, messages, on_done in self.withdraw():
            on_done(0, messages, CLOSED, False)
        self._lanes.clear()
        self._lane_tasks.clear()
        if producer is not None:
            task = asyncio.get_running_loop().create_task(
                _stop_quietly(producer, self.guard), name="kafka-log-replace"
            )
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def _shutdown(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        deadline = loop.time() + max(timeout, 0.01)
        # Let the lanes hand over what they hold; polling briefly at shutdown is simplest.
        while self._lanes and self._producer is not None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        tasks = list(self._lane_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, messages, on_done in self.withdraw():
            on_done(0, messages, CLOSED, False)
        producer, self._producer = self._producer, None
        if producer is not None:
            with _log.our_client():
                await _stop_quietly(producer, max(deadline - loop.time(), 0.01))


class _Delivery:
    """One batch's report to the publisher, once: from aiokafka's future, or, if that
    has not come within the producer's ``guard``, as a failure that may have been
    written (aiokafka #1101: an idempotent producer can wait forever for a broker that is
    gone), after which the client is replaced. An idempotence error (out of sequence, a
    fenced or unknown producer id) also needs a new client, and is retried on it."""

    __slots__ = ("_on_done", "_owner", "_queued", "_sent", "_timer")

    def __init__(
        self, owner: AiokafkaProducer, sent: list[Message], on_done: OnDone, queued: Any
    ) -> None:
        self._owner = owner
        self._sent = sent
        self._on_done: OnDone | None = on_done
        self._queued = queued
        self._timer = asyncio.get_running_loop().call_later(owner.guard, self._expire)

    def report(self, future: asyncio.Future[Any]) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is None:
            return  # reported as expired already
        self._timer.cancel()
        queued = self._queued
        resent = queued is not None and queued in self._owner._maybe_written
        if future.cancelled():
            on_done(0, self._sent, failure_of(asyncio.CancelledError(), resent), False)
            return
        error = future.exception()
        if error is None:
            on_done(len(self._sent), [], None, resent)
        elif isinstance(error, _NEEDS_A_NEW_CLIENT):
            on_done(0, self._sent, Failure(Verdict.RETRY, type(error).__name__, True), False)
            self._owner.replace_client(type(error).__name__)
        else:
            on_done(0, self._sent, failure_of(error, resent), False)

    def _expire(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(0, self._sent, Failure(Verdict.RETRY, "NoDeliveryReport", True), False)
            self._owner.replace_client(f"no delivery report in {self._owner.guard:.0f} s")


def _queued_batch(producer: Any, topic: str, partition: int, builder: Any) -> Any:
    """aiokafka's batch for ``builder``, just queued by ``send_batch``; None if not found.

    ``send_batch`` returns only a future; the batch itself says whether aiokafka re-sent
    it after an uncertain attempt (see ``_watch_attempts``).
    """
    try:
        waiting = producer._message_accumulator._batches.get((topic, partition), ())
        for queued in reversed(waiting):
            if queued._builder is builder:
                return queued
    except (AttributeError, TypeError):
        pass
    return None


def _watch_attempts(sender: Any, marked: weakref.WeakSet[Any]) -> None:
    """Record in ``marked`` the batches aiokafka retries after an attempt that may have
    reached Kafka (it retries by itself until a batch is ``timeout`` old).

    aiokafka has no hook for this: the sender's produce step is replaced, for this
    producer only, by the same steps with a handler that watches its retry decisions.
    Left alone if aiokafka's internals are not the expected ones.
    """
    needed = ("_send_produce_req", "_in_flight", "_muted_partitions")
    if not all(hasattr(sender, name) for name in needed):
        return

    class Handler(SendProduceReqHandler):  # type: ignore[misc]
        def _can_retry(self, error: Any, batch: Any) -> bool:
            if isinstance(error, _MAYBE_WRITTEN):
                marked.add(batch)
            return bool(super()._can_retry(error, batch))

    async def send_produce_req(node_id: int, batches: dict[Any, Any]) -> None:
        # aiokafka's Sender._send_produce_req, with the handler above.
        await Handler(sender, batches).do(node_id)
        sender._in_flight.remove(node_id)
        for tp in batches:
            sender._muted_partitions.remove(tp)

    sender._send_produce_req = send_produce_req


class _Tokens(AbstractTokenProvider):  # type: ignore[misc]
    """aiokafka's token provider over our ``TokenSource`` (asked at each connection)."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def token(self) -> str:
        return await self._source.token()


async def _stop_quietly(producer: Any, timeout: float) -> None:
    """Stop an aiokafka producer within ``timeout`` (it can hang while the broker is down)."""
    try:
        async with asyncio.timeout(max(timeout, 0.01)):  # not wait_for: see LogBuffer.wait
            await producer.stop()
    except Exception as exc:
        _log.warn(
            "close", "kafka_log_middleware: producer did not close cleanly (%s)", type(exc).__name__
        )
