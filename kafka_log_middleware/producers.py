"""Kafka producers, one per distinct producer configuration per process and event loop.

Configs that agree on the producer settings (``KafkaLogConfig.producer_key``) share one
producer, whichever middleware instance uses them. A producer is reference-counted:
when its last user lets go, it is flushed and closed (Kong's original kept every one).
Producers connect in the background and keep retrying, so an app starts and serves
while the broker is unreachable.
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _log, tls_probe
from .config import KafkaLogConfig
from .security import HIDDEN, SaslAuthentication

Message = tuple[bytes | None, bytes]
"""An encoded Kafka message: (key, value)."""

SLICE_SECONDS = 0.0005
"""Longest background work runs before it yields to the event loop (requests go first)."""
GUARD_MARGIN = 5.0
"""Seconds a client's wait may exceed its own timeouts before it is called stuck."""
_RECONNECT_MAX = 5.0
_MAX_CAUSE = 300
"""Longest client message quoted in a warning."""


def secrets_of(config: KafkaLogConfig) -> tuple[str, ...]:
    """The config's secrets: never to appear in what we log."""
    secrets = []
    authentication = config.sasl
    if isinstance(authentication, SaslAuthentication):
        secrets.append(authentication.password)
    elif authentication is not None and authentication.client_secret is not None:
        secrets.append(authentication.client_secret)
    tls = config.tls
    if tls is not None and tls.keyfile_password is not None:
        secrets.append(tls.keyfile_password)
    if config.redaction_key is not None:
        secrets.append(config.redaction_key.decode("utf-8", "replace"))
    return tuple(secret for secret in secrets if secret)


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` (a client's message, to be logged) with any of ``secrets`` hidden."""
    for secret in secrets:
        text = text.replace(secret, HIDDEN)
    return text[:_MAX_CAUSE]


class Verdict(enum.Enum):
    """What the publisher should do with messages a producer could not deliver."""

    RETRY = "retry"
    """Not delivered this time; another attempt may succeed."""
    SPLIT = "split"
    """The broker refused the batch as too large: retry it in halves."""
    TOO_LARGE = "too_large"
    """Each of these messages alone exceeds a size limit: it can never be delivered."""
    FATAL = "fatal"
    """Refused for good (authorization, invalid topic, …)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a producer could not deliver some messages, in words every backend shares."""

    verdict: Verdict
    cause: str
    """The client's name for the error (for warnings; never message contents)."""
    maybe_written: bool = False
    """An attempt may have reached Kafka (a request timed out or a connection broke with
    it in flight): the messages may be there, and another attempt may duplicate them."""


OnDone = Callable[[int, list[Message], Failure | None, bool], None]
"""Delivery report: ``(delivered count, failed messages, why they failed, resent)``;
``resent``: the client itself re-sent the delivered ones after an attempt that may have
reached Kafka, so they may be there twice."""

CLOSED = Failure(Verdict.RETRY, "ProducerClosed")
"""Messages a producer never handed to its client before it closed."""


class Producer:
    """A Kafka producer shared by the configs with its settings.

    Connects in the background (retrying with backoff), sends batches of encoded
    messages, reports each delivery through a callback, and closes once. Backends
    implement ``_open``, ``send``, ``withdraw`` and ``_shutdown``.
    """

    def __init__(self, config: KafkaLogConfig) -> None:
        self.key = config.producer_key()
        self.replaced = 0
        """Clients replaced because they were stuck (see ``replace_client``)."""
        self.refs = 0
        self.closed = False
        self._servers = ",".join(config.bootstrap_servers)
        self._first_server = config.bootstrap_servers[0]
        self._tls = config.tls
        self._timeout = config.timeout / 1000
        self._ack_timeout = config.producer_request_timeout / 1000
        self._backoff = max(config.producer_request_retries_backoff_timeout, 50) / 1000
        self._ready = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None
        self._attempts = config.producer_request_retries_max_attempts
        self._secrets = secrets_of(config)
        self.refused: str | None = None
        """Why the cluster refuses this producer (authentication or TLS), once it did on
        ``producer_request_retries_max_attempts`` connection attempts in a row: its entries
        are then dropped (``security``) instead of held. None once connected."""

    def __repr__(self) -> str:
        state = "closed" if self.closed else "ready" if self.ready else "connecting"
        return f"<{type(self).__name__} {self._servers} {state} refs={self.refs}>"

    @property
    def ready(self) -> bool:
        """True once connected to the cluster."""
        return self._ready.is_set()

    def connect(self) -> None:
        """Start connecting in the background (idempotent)."""
        if self._connector is None and not self.closed:
            self._connector = asyncio.get_running_loop().create_task(
                self._connect(), name="kafka-log-connect"
            )

    async def _connect(self) -> None:
        delay = self._backoff
        refusals = 0
        while not self.closed:
            try:
                await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                refusal = await self._refusal(exc)
                if refusal is not None:
                    refusal = scrub(refusal, self._secrets)
                refusals = refusals + 1 if refusal is not None else 0
                if refusal is None:
                    _log.warn(
                        "connect",
                        "kafka_log_middleware: cannot reach Kafka at %s (%s); "
                        "retrying, entries stay buffered",
                        self._servers,
                        type(exc).__name__,
                    )
                else:
                    if refusals >= self._attempts:
                        self.refused = refusal
                    _log.warn(
                        "refused",
                        "kafka_log_middleware: Kafka at %s refuses the connection: %s; %s",
                        self._servers,
                        refusal,
                        "retrying; its entries are dropped (security) until it accepts"
                        if self.refused
                        else "retrying, entries stay buffered",
                    )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, _RECONNECT_MAX)
                continue
            self.refused = None
            self._ready.set()
            return

    @property
    def guard(self) -> float:
        """Seconds any one wait on the client may take before we call it stuck: twice its
        own ``timeout`` and the produce request's, and a margin (aiokafka #1101, #759:
        some of its waits have no end of their own)."""
        return 2 * self._timeout + self._ack_timeout + GUARD_MARGIN

    def replace_client(self, why: str) -> None:
        """The client is stuck (a wait past ``guard``) or in a fatal state (idempotence
        out of sequence, a fatal librdkafka error): connect a new one. The backend has
        reported, or reports, what the old one held (``_drop_client``)."""
        if self.closed or not self.ready:
            return
        self.replaced += 1
        self._ready.clear()
        _log.warn(
            "replace",
            "kafka_log_middleware: the Kafka client for %s is stuck (%s); replacing it",
            self._servers,
            why,
        )
        self._drop_client()
        self._connector = None
        self.connect()

    def _drop_client(self) -> None:
        """Let go of the current client (closing it in the background); report what it
        held that was not reported yet as not delivered."""

    async def _open(self) -> None:
        """Connect once; raise when the cluster cannot be reached."""
        raise NotImplementedError

    async def _refusal(self, exc: BaseException) -> str | None:
        """Why the last connection attempt (which raised ``exc``) was refused, when the
        cluster refused its authentication or TLS; None for any other failure."""
        return None

    async def _tls_refusal(self) -> str | None:
        """Why the first broker refuses our TLS, by a probe of our own (``tls_probe``);
        None without TLS, or when it accepts."""
        return await tls_probe.settings_refusal(self._first_server, self._tls, self._timeout)

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the connection; True when ready."""
        if not self.ready:
            self.connect()
            try:
                async with asyncio.timeout(timeout):  # not wait_for: see LogBuffer.wait
                    await self._ready.wait()
            except TimeoutError:
                return False
        return True

    async def send(self, topic: str, messages: list[Message], on_done: OnDone) -> None:
        """Hand ``messages`` over for delivery to ``topic``.

        Returns once all are handed over (it never waits on Kafka); ``on_done`` then
        reports every message exactly once (in batches). It raises only before reporting
        any of them (the publisher then counts them all as not delivered). Each message
        fits the config's ``entry_limit`` (the publisher truncates those that do not).
        """
        raise NotImplementedError

    def withdraw(self) -> list[tuple[str, list[Message], OnDone]]:
        """Take back the messages not handed to the client yet (returned, not reported).

        A backend that cannot take them back reports them as not delivered instead
        (librdkafka's purge). What is in flight stays there: it may reach Kafka.
        """
        return []

    def abandon(self) -> None:
        """Let go of a producer whose event loop has ended: it can neither send nor be
        closed there any more. What its client holds stays unreported (``uncertain``)."""
        self.closed = True

    async def close(self, timeout: float) -> None:
        """Flush what was handed over, then close, all within ``timeout`` seconds."""
        self.closed = True
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        await self._shutdown(timeout)

    async def _shutdown(self, timeout: float) -> None:
        raise NotImplementedError


def _make(config: KafkaLogConfig) -> Producer:
    if config.producer_backend == "confluent":
        from .confluent import ConfluentProducer

        return ConfluentProducer(config)
    from .aiokafka_backend import AiokafkaProducer

    return AiokafkaProducer(config)


class ProducerCache:
    """The producers of one event loop, keyed by their settings and reference-counted."""

    def __init__(self) -> None:
        self._producers: dict[tuple[Any, ...], Producer] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._producers)

    def producers(self) -> list[Producer]:
        """The open producers (for tests and stats)."""
        return list(self._producers.values())

    def acquire(self, config: KafkaLogConfig) -> Producer:
        """The producer for ``config``, created (and connecting) on first use."""
        key = config.producer_key()
        producer = self._producers.get(key)
        if producer is None:
            producer = self._producers[key] = _make(config)
            producer.connect()
        producer.refs += 1
        return producer

    def release(self, producer: Producer, timeout: float) -> None:
        """Let go of ``producer``; the last release flushes and closes it in the background."""
        producer.refs -= 1
        if producer.refs > 0 or self._producers.get(producer.key) is not producer:
            return
        del self._producers[producer.key]
        task = asyncio.get_running_loop().create_task(
            producer.close(timeout), name="kafka-log-close"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def wait_closed(self) -> None:
        """Wait for the producers being closed."""
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


_caches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProducerCache] = (
    weakref.WeakKeyDictionary()
)
_pid = os.getpid()


def cache_for_running_loop() -> ProducerCache:
    """The producer cache of the running event loop in this process."""
    global _pid
    if os.getpid() != _pid:  # a forked worker must not touch its parent's producers
        _caches.clear()
        _pid = os.getpid()
    loop = asyncio.get_running_loop()
    cache = _caches.get(loop)
    if cache is None:
        cache = _caches[loop] = ProducerCache()
    return cache
