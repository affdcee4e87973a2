"""The librdkafka backend (``producer_backend="confluent"``, the ``confluent`` extra).

``confluent_kafka.Producer.produce()`` only queues a message; librdkafka's own threads
batch, send and retry. Delivery reports are served by ``poll(0)`` from the event loop,
so every callback runs on the loop's thread, like aiokafka's. Per entry it costs about
what aiokafka's batch path does (docs/benchmarks.md); part of its work runs on
librdkafka's threads instead of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import confluent_kafka

from . import _log
from .blocking import in_a_thread
from .config import INT32_MAX, KafkaLogConfig
from .oauth import TokenError, TokenSource
from .producers import Failure, Message, OnDone, Producer, Verdict
from .security import OAuthBearer, librdkafka_security

_POLL_INTERVAL = 0.005
"""Seconds between two polls for delivery reports while messages are in flight."""
_IDLE_POLL = 0.25
"""Poll interval with nothing in flight (librdkafka's own events, e.g. errors)."""
_TOKEN_RETRY = 5.0
"""Seconds between two attempts to get a token while there is no valid one."""
_CHUNK = 200
"""Messages queued per ``produce_batch`` call (~0.1 ms of work)."""
_librdkafka_log = logging.getLogger("kafka_log_middleware.librdkafka")


def librdkafka_options(config: KafkaLogConfig) -> dict[str, Any]:
    """librdkafka settings mapped from Kong's names (see the README's table)."""
    limit = config.producer_request_limits_bytes_per_request
    return {
        "bootstrap.servers": ",".join(config.bootstrap_servers),
        "client.id": config.client_id,
        "acks": "all" if config.acks == -1 else config.acks,
        "request.timeout.ms": config.producer_request_timeout,
        "socket.timeout.ms": config.timeout,
        # Like aiokafka's batch expiry: a batch undelivered after `timeout` fails, and the
        # publisher retries it up to producer_request_retries_max_attempts times.
        "message.timeout.ms": config.timeout,
        "connections.max.idle.ms": config.keepalive,
        "retry.backoff.ms": max(config.producer_request_retries_backoff_timeout, 1),
        "batch.size": limit,
        "message.max.bytes": max(limit + 1024, 1000),
        "linger.ms": 2,
        # Our own bound (buffered + in flight) is the real one; never let librdkafka's hit first.
        "queue.buffering.max.messages": config.producer_async_buffering_limits_messages_in_memory
        + config.producer_request_limits_messages_per_request,
        "queue.buffering.max.kbytes": 2097151,
        "enable.idempotence": config.idempotent,
        # Without idempotence every re-send is the publisher's, which knows when one may
        # duplicate an entry (a request that timed out may have been written) and counts
        # it. The idempotent producer needs librdkafka's own retries, which the broker
        # deduplicates, within message.timeout.ms.
        "retries": INT32_MAX if config.idempotent else 0,
        "compression.type": config.compression_type,
        # Java's (and aiokafka's) key hashing, so both backends put a key on one partition.
        "partitioner": "murmur2_random",
        # Connection trouble is reported by our own rate-limited warnings, not per attempt.
        "log_level": 2,
        **librdkafka_security(config.sasl, config.tls),
    }


class ConfluentProducer(Producer):
    """A ``confluent_kafka.Producer`` polled from the event loop."""

    def __init__(self, config: KafkaLogConfig) -> None:
        super().__init__(config)
        self._options = librdkafka_options(config)
        self._producer: Any = None
        self._in_flight = 0
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._client_errors: deque[Any] = deque(maxlen=8)
        """librdkafka's errors (``error_cb``), served by ``poll``."""
        self._fatal: str | None = None
        """The name of a fatal error librdkafka reported: the client must be replaced."""
        auth = config.sasl
        self._tokens = TokenSource(auth) if isinstance(auth, OAuthBearer) else None
        """OAUTHBEARER: fetched here, asynchronously; librdkafka's ``oauth_cb`` only reads it."""
        self._token_retry_at = 0.0

    async def _open(self) -> None:
        if self._tokens is not None:
            await self._tokens.token()  # a TokenError is this attempt's refusal
        if self._producer is None:  # one client across attempts; it reconnects by itself
            options = {**self._options, "error_cb": self._on_error}
            if self._tokens is not None:
                options["oauth_cb"] = self._oauth_token
            self._producer = confluent_kafka.Producer(options, logger=_librdkafka_log)
        self._client_errors.clear()
        if self._tokens is not None:
            self._producer.poll(0)  # serves oauth_cb: the token before the first request
        # Metadata proves the cluster answers; it blocks, so it runs off the loop.
        try:
            await in_a_thread(self._producer.list_topics, None, max(self._backoff, 1.0))
        except Exception:
            self._producer.poll(0)  # serves error_cb: why the connection failed
            raise
        self._poller = asyncio.get_running_loop().create_task(
            self._poll_forever(), name="kafka-log-poll"
        )

    def _on_error(self, error: Any) -> None:
        """librdkafka's ``error_cb`` (served by ``poll``): kept for the refusal's cause; a
        fatal one (the idempotent producer's, say) means a new client."""
        self._client_errors.append(error)
        if error.fatal():
            self._fatal = error.name()

    def _drop_client(self) -> None:
        """See ``Producer._drop_client``: purge the client (its reports say so: queued
        ones not sent, in-flight ones perhaps written) and let go of it."""
        producer, self._producer = self._producer, None
        self._fatal = None
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if producer is not None:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)

    def _oauth_token(self, _settings: str) -> tuple[str, float]:
        assert self._tokens is not None
        return self._tokens.current()

    async def _refusal(self, exc: BaseException) -> str | None:
        """A SASL or TLS refusal among librdkafka's errors for this attempt; a TLS one
        as a probe of ours names it (librdkafka says "certificate verify failed" whether
        the certificate is untrusted, expired or for another host)."""
        if isinstance(exc, TokenError):
            return f"OAUTHBEARER: {exc}"
        for error in reversed(self._client_errors):
            refusal = refusal_of(error)
            if refusal is not None:
                if refusal.startswith("TLS"):
                    return await self._tls_refusal() or refusal
                return refusal
        return await self._tls_refusal()

    async def _poll_forever(self) -> None:
        producer = self._producer
        while True:
            if (
                self._tokens is not None
                and self._tokens.due()
                and time.monotonic() >= self._token_retry_at
            ):
                await self._refresh_token()
            producer.poll(0)
            if self._fatal is not None:
                self.replace_client(f"librdkafka: {self._fatal}")  # cancels this task
                return
            if self._in_flight:
                await asyncio.sleep(_POLL_INTERVAL)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_IDLE_POLL):  # not wait_for: see buffer.wait
                    await self._wake.wait()

    async def _refresh_token(self) -> None:
        """The next OAUTHBEARER token, ready before librdkafka asks for it (at 80 %)."""
        assert self._tokens is not None
        try:
            await self._tokens.token()
        except TokenError as exc:  # expired, and no new one: librdkafka's requests fail
            self._token_retry_at = time.monotonic() + _TOKEN_RETRY
            _log.warn("token", "kafka_log_middleware: no valid token: %s", exc)

    async def send(self, topic: str, messages: list[Message], on_done: OnDone) -> None:
        """Queue ``messages`` in librdkafka (see ``Producer.send``).

        ``produce_batch`` takes a chunk in one call (half the cost of one ``produce``
        per message); librdkafka's partitioner still places each message by its key.
        """
        report = _BatchReport(len(messages), on_done, self)
        self._in_flight += len(messages)
        self._wake.set()
        for start in range(0, len(messages), _CHUNK):
            if start:
                await asyncio.sleep(0)  # requests go first
            chunk = messages[start : start + _CHUNK]
            batch = [{"value": v} if k is None else {"value": v, "key": k} for k, v in chunk]
            try:
                queued = self._producer.produce_batch(topic, batch, on_delivery=report.delivered)
            except Exception as exc:  # whatever it was, librdkafka took none of the chunk
                report.failed(messages[start:], _batch_refusal(exc))
                return
            if queued < len(batch):  # librdkafka marks the ones it refused
                refused = [m for m, d in zip(chunk, batch, strict=True) if "_error" in d]
                report.failed(refused, failure_of(_batch_error(batch), sent=False))

    def withdraw(self) -> list[tuple[str, list[Message], OnDone]]:
        """Purge what librdkafka has not sent yet; its reports say so (nothing returned)."""
        producer = self._producer
        if producer is not None:
            producer.purge(in_queue=True, in_flight=False, blocking=False)
            producer.poll(0)  # the purged messages' reports, now, on this thread
        return []

    async def _shutdown(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.01)
        # flush() would serve the callbacks on another thread; poll here instead.
        while len(producer) and loop.time() < deadline:
            producer.poll(0)
            await asyncio.sleep(_POLL_INTERVAL)
        if len(producer):
            producer.purge()
            producer.poll(0)  # report what was purged
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)


class _BatchReport:
    """Gathers librdkafka's per-message delivery reports into per-batch ``on_done`` calls.

    One bound method serves as every message's callback: no closure per message.
    """

    __slots__ = ("_delivered", "_failed", "_on_done", "_owner", "_waiting")

    def __init__(self, count: int, on_done: OnDone, owner: ConfluentProducer) -> None:
        self._on_done = on_done
        self._owner = owner
        self._waiting = count
        self._delivered = 0
        self._failed: dict[Any, tuple[Failure, list[Message]]] = {}

    def delivered(self, error: Any, message: Any) -> None:
        """librdkafka's delivery report for one message."""
        if error is None:
            self._delivered += 1
        else:
            # Never given a partition (its topic has no metadata): certainly not sent.
            sent = message.partition() is not None
            group = self._failed.get((error.code(), sent))
            if group is None:
                group = self._failed[error.code(), sent] = (failure_of(error, sent), [])
            group[1].append((message.key(), message.value()))
        self._settle(1)

    def failed(self, messages: list[Message], failure: Failure) -> None:
        """Messages librdkafka would not take."""
        self._failed.setdefault(failure.cause, (failure, []))[1].extend(messages)
        self._settle(len(messages))

    def _settle(self, count: int) -> None:
        self._waiting -= count
        self._owner._in_flight -= count
        if self._waiting:
            return
        if self._delivered:
            self._on_done(self._delivered, [], None, False)
        for failure, messages in self._failed.values():
            self._on_done(0, messages, failure, False)


_MAYBE_WRITTEN = frozenset(
    {
        confluent_kafka.KafkaError._MSG_TIMED_OUT,  # in the queue, or in flight: unknown
        confluent_kafka.KafkaError._TIMED_OUT,
        confluent_kafka.KafkaError._TRANSPORT,
        confluent_kafka.KafkaError._PURGE_INFLIGHT,
        confluent_kafka.KafkaError.REQUEST_TIMED_OUT,
        confluent_kafka.KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    }
)
"""Errors after which the message may be in Kafka (librdkafka's idempotence is off)."""
_TOO_LARGE = frozenset(
    {
        confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
        confluent_kafka.KafkaError.RECORD_LIST_TOO_LARGE,
    }
)
_RETRY = _MAYBE_WRITTEN | {
    confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
    confluent_kafka.KafkaError._QUEUE_FULL,
    confluent_kafka.KafkaError._PURGE_QUEUE,
    confluent_kafka.KafkaError._TIMED_OUT_QUEUE,
}


def failure_of(error: Any, sent: bool = True) -> Failure:
    """librdkafka's error for a message (a ``KafkaError``), in the producers' vocabulary;
    ``sent``: it may have been sent at all."""
    if not isinstance(error, confluent_kafka.KafkaError):
        return Failure(Verdict.FATAL, type(error).__name__)
    code = error.code()
    if code in _TOO_LARGE:
        verdict = Verdict.TOO_LARGE
    elif code in _RETRY or (error.retriable() and not error.fatal()):
        verdict = Verdict.RETRY
    else:
        verdict = Verdict.FATAL
    return Failure(verdict, error.name(), sent and code in _MAYBE_WRITTEN)


def refusal_of(error: Any) -> str | None:
    """What a librdkafka SASL or TLS error means; None for other errors."""
    code = error.code()
    text = error.str().partition(": ")[2] or error.str()  # without the broker's name
    if code == confluent_kafka.KafkaError._AUTHENTICATION:
        return f"SASL authentication failed ({text})"
    if code == confluent_kafka.KafkaError._SSL or "SSL routines" in text:
        return f"TLS handshake failed ({text})"
    return None


def _batch_refusal(exc: BaseException) -> Failure:
    """``produce_batch`` raising: librdkafka took none of the chunk."""
    if isinstance(exc, BufferError):  # its queue is full: later, perhaps
        return Failure(Verdict.RETRY, "BufferError")
    if isinstance(exc, confluent_kafka.KafkaException) and exc.args:
        return failure_of(exc.args[0], sent=False)
    return Failure(Verdict.FATAL, type(exc).__name__)


def _batch_error(batch: list[dict[str, Any]]) -> Any:
    """The first error librdkafka attached to a message it refused in ``produce_batch``."""
    return next((d["_error"] for d in batch if "_error" in d), None)
