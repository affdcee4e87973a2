"""Kafka record batches for aiokafka, built by the native module in one call per batch.

aiokafka's ``BatchBuilder`` takes one Python call per message (``append``) and computes
the batch's CRC-32C in software; ``NativeBatch`` writes the same record format (v2,
uncompressed, no headers, one timestamp per batch) natively and stands in for it:
``send_batch`` queues it like any builder. Without the native module, or with
compression, aiokafka's own builder is used.
"""

from __future__ import annotations

import time

from .native import module as _native
from .producers import Message

HEADER_SIZE = 61
"""Bytes of a record batch before its first record."""


def available(options: dict[str, object]) -> bool:
    """Whether a producer made with these ``AIOKafkaProducer`` options can take
    ``NativeBatch``es: the native module is there, and batches are not compressed."""
    return _native is not None and options.get("compression_type") is None


class NativeBatch:
    """The messages of ``messages[start:]`` that fit ``max_bytes`` (at least one), as a
    record batch; what aiokafka's accumulator and sender use of a ``BatchBuilder``."""

    __slots__ = ("_buffer", "_count", "_records", "_state", "_timestamp")

    def __init__(self, messages: list[Message], start: int, max_bytes: int) -> None:
        self._records: bytes
        self._count: int
        self._records, self._count = _native.records(messages, start, max_bytes)
        self._timestamp = int(time.time() * 1000)
        self._state = (-1, -1, 0)
        """Producer id, epoch and base sequence: set by the idempotent producer."""
        self._buffer: bytes | None = None

    def append(self, **_message: object) -> None:
        """Closed to ``producer.send()``: built whole (aiokafka's "batch is full")."""
        return None

    def close(self) -> None:
        """Already closed (see ``append``)."""

    def closed(self) -> bool:
        return True

    def _set_producer_state(
        self, producer_id: int, producer_epoch: int, base_sequence: int
    ) -> None:
        self._state = (producer_id, producer_epoch, base_sequence)

    def _build(self) -> bytes:
        """The batch's bytes (made once: the producer state is set by then)."""
        if self._buffer is None:
            self._buffer = _native.batch(
                self._records, self._count, self._timestamp, *self._state, False
            )
        return self._buffer

    def size(self) -> int:
        """The batch's size in bytes."""
        return HEADER_SIZE + len(self._records)

    def record_count(self) -> int:
        """How many messages it holds (taken from ``messages``, from ``start`` on)."""
        return self._count
